//! The reserved subscription APIs under `/v1/stream/__ds/`: durable cursors over sets of
//! streams that wake workers by signed webhook or by a wake event on a pull-wake stream.
//!
//! - [`object`]: `SubscriptionObject`, one Durable Object per subscription (its cursors, wake
//!   generation, lease, webhook retries).
//! - [`registry`]: `RegistryObject`, one Durable Object that lists streams and subscription
//!   links, so patterns can be backfilled and new streams find their subscriptions; it also
//!   holds the webhook signing keys.
//! - [`keys`]: the signing keys over time: which signs now, which are published, and what a
//!   rotation (`POST /v1/stream/__ds/keys/rotate`) changes.
//! - [`webhook`]: SSRF rules and the signature header; keys and tokens come from
//!   [`crate::crypto`].
//!
//! Streams tell their subscriptions about appends themselves (`notify`), so appends never pass
//! through the registry.

pub mod keys;
pub mod object;
pub mod registry;
pub mod webhook;

use edgestream::subscription::{StreamsPage, SubscriptionError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Result, Stub, Url};

use crate::config::Config;
use crate::http::{self, header};
use crate::intake;

/// The public origin of the request, passed to objects so URLs they hand out are absolute.
pub const X_ORIGIN: &str = "x-edgestream-origin";
/// The subscription id, passed to its object.
pub const X_SUBSCRIPTION: &str = "x-edgestream-subscription";

/// The registry is a single object.
const REGISTRY_NAME: &str = "registry";

pub fn registry_stub(env: &Env) -> Result<Stub> {
    env.durable_object("REGISTRY")?
        .id_from_name(REGISTRY_NAME)?
        .get_stub()
}

pub fn subscription_stub(env: &Env, id: &str) -> Result<Stub> {
    env.durable_object("SUBSCRIPTIONS")?
        .id_from_name(id)?
        .get_stub()
}

pub fn stream_stub(env: &Env, path: &str) -> Result<Stub> {
    env.durable_object("STREAMS")?
        .id_from_name(path)?
        .get_stub()
}

/// What an internal request's JSON body says it is about (most name a stream or a
/// subscription); the rest of the body is never read for a log line.
#[derive(serde::Deserialize)]
struct About {
    id: Option<String>,
    path: Option<String>,
}

/// What a log line about a failed request to the registry or a subscription names, as the
/// stream object's do ([`http::described`]): its method and path, never its query, and, since
/// that path is only an operation (`/internal/stream-created`, `/create`), the subscription it
/// is about (`X_SUBSCRIPTION`, or the body's `id`) and the stream (the body's `path`).
pub fn described(req: &worker::web_sys::Request, body: &[u8]) -> String {
    let about = serde_json::from_slice::<About>(body).ok();
    let (id, path) = about.map_or((None, None), |a| (a.id, a.path));
    let id = req.headers().get(X_SUBSCRIPTION).ok().flatten().or(id);
    let mut line = http::described(req);
    if let Some(id) = id {
        line.push_str(&format!(" (subscription {id})"));
    }
    if let Some(path) = path {
        line.push_str(&format!(" (stream {path})"));
    }
    line
}

/// Calls an object's internal operation with a JSON body; answers the status and JSON reply.
pub async fn call<B: Serialize, R: DeserializeOwned>(
    stub: &Stub,
    op: &str,
    body: &B,
) -> Result<(u16, Option<R>)> {
    let bytes = serde_json::to_vec(body).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(&bytes[..]).into()));
    let req = Request::new_with_init(&format!("https://edgestream/internal/{op}"), &init)?;
    let mut resp = stub.fetch_with_request(req).await?;
    let status = resp.status_code();
    let reply = resp.bytes().await?;
    Ok((status, serde_json::from_slice(&reply).ok()))
}

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(value.to_string().into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

/// A subscription error as the protocol shapes it: `{"error": {"code", "message"}}`.
pub fn error(e: SubscriptionError) -> Result<Response> {
    json(
        e.status(),
        &serde_json::json!({ "error": { "code": e.code(), "message": e.message() } }),
    )
}

/// A subscription id: what clients may choose (it names a Durable Object and appears in URLs).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether `rest` (the path after `__ds/`) is one of the routes that carry a wake token of
/// their own instead of an admin token: `POST subscriptions/<id>/{callback,ack,release}`. It
/// splits the path exactly as [`route`] does, so no other route (a stream link whose path
/// ends in `/ack`, say) can pass for one.
/// Answers the subscription id such a route names.
pub fn uses_wake_token<'a>(method: &Method, rest: &'a str) -> Option<&'a str> {
    let (id, action) = rest.strip_prefix("subscriptions/")?.split_once('/')?;
    (*method == Method::Post && matches!(action, "callback" | "ack" | "release")).then_some(id)
}

/// Routes `/v1/stream/__ds/<rest>` from the edge.
pub async fn route(
    req: Request,
    url: &Url,
    rest: &str,
    env: &Env,
    config: &Config,
) -> Result<Response> {
    let origin = url.origin().ascii_serialization();
    if rest == "jwks.json" {
        if req.method() != Method::Get && req.method() != Method::Head {
            return http::not_allowed("GET, HEAD, OPTIONS");
        }
        return jwks(&req, env).await;
    }
    // The signing keys' schedule and its rotation (admin; the edge has checked the token).
    if let ("keys", Method::Get) | ("keys/rotate", Method::Post) = (rest, req.method()) {
        let registry = registry_stub(env)?;
        let resp = forward(req, &registry, rest, &[], &origin, None, config).await?;
        if rest == "keys/rotate" && resp.status_code() == 200 {
            // This isolate's copy of the key set lacks the fresh key: ask again.
            JWKS.with(|c| c.replace(None));
        }
        return Ok(resp);
    }
    match rest {
        "keys" => return http::not_allowed("GET, OPTIONS"),
        "keys/rotate" => return http::not_allowed("POST, OPTIONS"),
        _ => {}
    }
    let Some(rest) = rest.strip_prefix("subscriptions/") else {
        return http::text(404, "not found");
    };
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_id(id) {
        return error(SubscriptionError::InvalidRequest(
            "subscription id must be 1-200 characters of letters, digits, - _ . :",
        ));
    }
    let method = req.method();
    let (op, path) = match (action, &method) {
        ("", Method::Put) => ("create", None),
        ("", Method::Get) => {
            // Refused here, before any object is asked, and passed on as checked.
            let pairs: Vec<_> = url.query_pairs().collect();
            let page = match StreamsPage::from_query(pairs.iter().map(|(k, v)| (&**k, &**v))) {
                Ok(page) => page,
                Err(e) => return error(e),
            };
            let stub = subscription_stub(env, id)?;
            let mut query = vec![("limit", page.limit.to_string())];
            query.extend(page.after.map(|after| ("streams_after", after)));
            return forward(req, &stub, "get", &query, &origin, Some(id), config).await;
        }
        ("", Method::Delete) => ("delete", None),
        ("streams", Method::Post) => ("add-streams", None),
        ("callback", Method::Post) => ("callback", None),
        ("claim", Method::Post) => ("claim", None),
        ("ack", Method::Post) => ("ack", None),
        ("release", Method::Post) => ("release", None),
        (a, Method::Delete) if a.starts_with("streams/") => {
            let encoded = &a["streams/".len()..];
            match percent_decode(encoded) {
                Some(path) => ("remove-stream", Some(path)),
                None => {
                    return error(SubscriptionError::InvalidRequest(
                        "stream path is not valid UTF-8",
                    ))
                }
            }
        }
        ("", _) => return http::not_allowed("PUT, GET, DELETE, OPTIONS"),
        ("streams" | "callback" | "claim" | "ack" | "release", _) => {
            return http::not_allowed("POST, OPTIONS")
        }
        _ => return http::text(404, "not found"),
    };
    let stub = subscription_stub(env, id)?;
    let query: Vec<_> = path.into_iter().map(|path| ("path", path)).collect();
    forward(req, &stub, op, &query, &origin, Some(id), config).await
}

thread_local! {
    /// The key set as the registry last answered it, when (Unix ms), and its `max-age`
    /// (seconds).
    static JWKS: std::cell::RefCell<Option<(Vec<u8>, i64, i64)>> = const { std::cell::RefCell::new(None) };
}

/// `GET /v1/stream/__ds/jwks.json`, which anyone may ask: answered from the isolate's copy
/// for as long as the registry's answer says any cache may keep it (5 minutes, or until the
/// next retired key goes: [`keys::Schedule::max_age_s`]), so that strangers' requests do not
/// all reach the registry, the one object every create and delete in the deployment also calls.
async fn jwks(req: &Request, env: &Env) -> Result<Response> {
    let now = http::now_ms();
    let kept = JWKS
        .with(|c| c.borrow().clone())
        .filter(|(_, at, max_age)| now - at < max_age * 1000);
    let (body, at, max_age) = match kept {
        Some(kept) => kept,
        None => {
            let mut init = RequestInit::new();
            init.with_method(Method::Get);
            let ask = Request::new_with_init("https://edgestream/jwks", &init)?;
            let mut resp = registry_stub(env)?.fetch_with_request(ask).await?;
            if resp.status_code() != 200 {
                return Ok(resp);
            }
            let max_age = header(resp.headers(), "cache-control")
                .and_then(|v| {
                    v.split(',')
                        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<i64>().ok())
                })
                .map_or(keys::JWKS_MAX_AGE_S, |s| s.clamp(1, keys::JWKS_MAX_AGE_S));
            let body = resp.bytes().await?;
            JWKS.with(|c| c.replace(Some((body.clone(), now, max_age))));
            (body, now, max_age)
        }
    };
    let headers = Headers::new();
    headers.set("content-type", "application/jwk-set+json")?;
    headers.set("cache-control", &format!("public, max-age={max_age}"))?;
    // A copy kept here is as old as the time since it was fetched (RFC 9111 §5.1).
    headers.set("age", &((now - at).max(0) / 1000).to_string())?;
    if req.method() == Method::Head {
        headers.set("content-length", &body.len().to_string())?;
        return Ok(Response::empty()?.with_headers(headers));
    }
    Ok(Response::from_bytes(body)?.with_headers(headers))
}

/// Decodes `%XX` escapes (a path may arrive encoded, slashes included).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits: `from_str_radix` alone would also take a sign (`%+f`).
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Passes a client request to an object's operation, with the origin and id as headers and
/// the operation's own `query` (what the edge has checked, never the client's query as sent).
async fn forward(
    mut req: Request,
    stub: &Stub,
    op: &str,
    query: &[(&str, String)],
    origin: &str,
    id: Option<&str>,
    config: &Config,
) -> Result<Response> {
    // Counted with the isolate's bodies, but never refused: these are at most 1 MiB.
    let mut held = intake::Held::new(u64::MAX);
    let body =
        match intake::read_body(&mut req, 1024 * 1024, &mut held, config.body_idle_ms).await? {
            Ok(body) => body,
            Err(refusal) => return refusal.response(),
        };
    let headers = Headers::new();
    headers.set(X_ORIGIN, origin)?;
    if let Some(id) = id {
        headers.set(X_SUBSCRIPTION, id)?;
    }
    if let Some(auth) = header(req.headers(), "authorization") {
        headers.set("authorization", &auth)?;
    }
    let mut target = Url::parse(&format!("https://edgestream/{op}"))?;
    if !query.is_empty() {
        target.query_pairs_mut().extend_pairs(query);
    }
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    if !body.is_empty() {
        init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    }
    stub.fetch_with_request(Request::new_with_init(target.as_str(), &init)?)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("sub-1"));
        assert!(valid_id("pull-1700000000000"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(201)));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("manual%2Fb").as_deref(), Some("manual/b"));
        assert_eq!(percent_decode("a/b").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%-1"), None);
    }
}
