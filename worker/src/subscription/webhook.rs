//! Webhook targets: which URLs a subscription may call (SSRF rules), and how a delivery is
//! signed.

use std::net::{Ipv4Addr, Ipv6Addr};

use edgestream::subscription::SubscriptionError;
use worker::Url;

/// Checks a webhook URL: `https://` to a public host, or, when `allow_localhost` is set (local
/// development), `http(s)://localhost` and `http(s)://127.0.0.x`. Private, link-local,
/// loopback and other local addresses are refused when the URL names them (an IP literal in
/// any spelling, or `localhost`); a host name is not resolved here, so one whose DNS points at
/// such an address (`127.0.0.1.nip.io`) is not caught here (on Cloudflare a Worker's `fetch`
/// goes out over the public internet, not into the network it runs in).
pub fn validate_url(raw: &str, allow_localhost: bool) -> Result<Url, SubscriptionError> {
    let reject = SubscriptionError::WebhookUrlRejected;
    let url = Url::parse(raw).map_err(|_| reject("webhook url is not a valid URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(reject("webhook url must not carry credentials"));
    }
    let scheme = url.scheme();
    if scheme != "https" && scheme != "http" {
        return Err(reject("webhook url must use https"));
    }
    let local_dev = match url.host() {
        Some(worker::url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                true
            } else if d.ends_with(".local") || d.ends_with(".internal") || !d.contains('.') {
                return Err(reject("webhook url must name a public host"));
            } else {
                false
            }
        }
        Some(worker::url::Host::Ipv4(ip)) => {
            let o = ip.octets();
            if o[0] == 127 && o[1] == 0 && o[2] == 0 {
                true
            } else if !is_public_v4(ip) {
                return Err(reject(
                    "webhook url must not target a private or local address",
                ));
            } else {
                false
            }
        }
        Some(worker::url::Host::Ipv6(ip)) => {
            if !is_public_v6(ip) {
                return Err(reject(
                    "webhook url must not target a private or local address",
                ));
            }
            false
        }
        None => return Err(reject("webhook url has no host")),
    };
    if local_dev {
        if !allow_localhost {
            return Err(reject("localhost webhooks are disabled on this server"));
        }
        return Ok(url);
    }
    if scheme != "https" {
        return Err(reject("webhook url must use https"));
    }
    Ok(url)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        // carrier-grade NAT 100.64.0.0/10
        || (o[0] == 100 && (64..128).contains(&o[1]))
        // IETF protocol assignments 192.0.0.0/24
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // benchmarking 198.18.0.0/15, reserved 240.0.0.0/4
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || o[0] >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // The IPv4 address in two segments.
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Addresses that carry an IPv4 address reach it: judged by that address. NAT64's
    // well-known prefix 64:ff9b::/96, and 6to4 2002::/16 (the address in segments 1 and 2).
    // IPv4-translated ::ffff:0:0/96 (SIIT) likewise.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return is_public_v4(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(v4(s[1], s[2]));
    }
    let first = s[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // IPv4-compatible ::/96 (deprecated)
        || s[..6] == [0; 6]
        // NAT64 for local use 64:ff9b:1::/48, discard-only 100::/64, Teredo 2001::/32 (an
        // obfuscated IPv4 address behind a relay)
        || (first == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || s[..4] == [0x100, 0, 0, 0]
        || (first == 0x2001 && s[1] == 0)
        // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 (deprecated),
        // documentation 2001:db8::/32
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x2001 && s[1] == 0x0db8))
}

/// The `Webhook-Signature` header value for a body signed at `timestamp` (Unix seconds).
pub fn signature_header(timestamp: i64, kid: &str, signature: &str) -> String {
    format!("t={timestamp},kid={kid},ed25519={signature}")
}

/// The bytes that are signed: `<timestamp>.<raw body>`.
pub fn signed_message(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(raw: &str, allow: bool) -> Result<(), &'static str> {
        validate_url(raw, allow).map(|_| ()).map_err(|e| e.code())
    }

    #[test]
    fn public_https_is_accepted() {
        assert!(code("https://hooks.example.com/x", false).is_ok());
        assert!(code("https://93.184.216.34/hook", false).is_ok());
        assert!(code("https://[2606:4700::6810:84e5]/hook", false).is_ok());
        // NAT64 and 6to4 addresses of a public IPv4 address reach that public address.
        assert!(code("https://[64:ff9b::5db8:d822]/hook", false).is_ok());
        assert!(code("https://[2002:5db8:d822::1]/hook", false).is_ok());
        assert!(code("https://[::ffff:0:5db8:d822]/hook", false).is_ok());
    }

    #[test]
    fn plain_http_to_public_hosts_is_refused() {
        assert_eq!(
            code("http://hooks.example.com/x", true),
            Err("WEBHOOK_URL_REJECTED")
        );
    }

    #[test]
    fn private_and_local_targets_are_refused() {
        for url in [
            "http://10.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://192.168.1.1/",
            "https://172.16.0.5/",
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.1.1/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            // IPv6 addresses that carry a private or local IPv4 address, and local ranges
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[64:ff9b::127.0.0.1]/",
            "https://[64:ff9b::10.1.2.3]/",
            "https://[64:ff9b:1::5db8:d822]/",
            "https://[::ffff:0:a9fe:a9fe]/",
            "https://[::ffff:0:127.0.0.1]/",
            "https://[::ffff:0:a00:1]/",
            "https://[2002:c0a8:0101::1]/",
            "https://[2002:7f00:1::]/",
            "https://[::10.0.0.1]/",
            "https://[::5db8:d822]/",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "https://[100::1]/",
            "https://[fec0::1]/",
            "https://192.0.0.8/",
            "https://intranet/",
            "https://printer.local/",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert_eq!(code(url, true), Err("WEBHOOK_URL_REJECTED"), "{url}");
        }
    }

    #[test]
    fn other_spellings_of_local_addresses_are_refused() {
        // The URL parser reads these hosts as the addresses they spell (WHATWG: short,
        // decimal, hexadecimal and octal IPv4, a trailing dot), so none is a public name.
        for url in [
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://0/",
            "https://169.254.169.254./",
            "https://0xa9fea9fe/",
            "https://[::ffff:7f00:1]/",
            "https://[0:0:0:0:0:0:0:1]/",
            "https://LOCALHOST/",
            "https://localhost./",
            "https://a.b.localhost/",
            "https://metadata.google.internal/",
            "https://10.0.0.1:443@example.com/",
            "file:///etc/passwd",
            "data:text/plain,x",
        ] {
            assert_eq!(code(url, false), Err("WEBHOOK_URL_REJECTED"), "{url}");
        }
    }

    #[test]
    fn localhost_only_when_allowed() {
        for url in [
            "http://localhost:8080/hook",
            "http://127.0.0.1:9000/webhook",
            "http://127.0.0.7/",
        ] {
            assert!(code(url, true).is_ok(), "{url}");
            assert_eq!(code(url, false), Err("WEBHOOK_URL_REJECTED"), "{url}");
        }
    }

    #[test]
    fn signature_layout() {
        assert_eq!(
            signature_header(1700000000, "ds_k", "c2ln"),
            "t=1700000000,kid=ds_k,ed25519=c2ln"
        );
        assert_eq!(signed_message(12, b"{}"), b"12.{}".to_vec());
    }
}
