//! Settings from `[vars]` in wrangler.toml (or `--var` on the command line).

use worker::Env;

/// Server settings. Every field has a default so a bare deployment works.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a long-poll waits for data before answering 204.
    pub long_poll_timeout_ms: u64,
    /// Largest append body accepted; larger ones get 413.
    pub max_append_bytes: u64,
    /// How long an SSE response stays open before the server closes it (clients reconnect).
    pub sse_connection_ms: u64,
    /// How long a live SSE response may send nothing before it is sent a comment line. workerd
    /// learns that a reader hung up only when something is written to it; until then the
    /// reader holds its socket on the stream's object, and a sliding TTL counts it as reading.
    pub sse_heartbeat_ms: u64,
    /// How far a live SSE reader may fall behind (bytes written but not yet taken by its
    /// connection) before it is served catch-up pages, which wait for it, instead of frames.
    pub sse_backlog_bytes: u64,
    /// How far a `live=ws` client that sends receipts may fall behind (bytes sent past its
    /// last receipt) before its socket is closed with 1012 and it resumes from its offset; for
    /// a client that sends none, how much one connection carries past what it got on connecting.
    pub ws_backlog_bytes: u64,
    /// Whether `live=ws` handshakes may agree to `permessage-deflate` with clients that offer it
    /// (browsers and undici always do). Off by default: workerd keeps a full zlib deflate and
    /// inflate state for every compressed socket, most of what an idle reader costs, and the
    /// small JSON and binary messages of a stream gain little from it. See `DECLINE_COMPRESSION`
    /// in edge/ws.rs and docs/websocket.md.
    pub ws_compression: bool,
    /// How fast one `live=ws` socket may send append frames (`WS_APPEND_BURST` at once, then
    /// `WS_APPEND_RATE` a second): see [`crate::wsproto::AppendRate`].
    pub ws_append_rate: crate::wsproto::AppendRate,
    /// How many live readers one stream holds at once: SSE readers and parked long-polls (each
    /// an internal socket on the stream's object) and `live=ws` sockets. A new one past it is
    /// answered 503 before anything is held; catch-up reads are not counted.
    pub max_live_readers: u64,
    /// How many bytes of request bodies (appends, creates with a body, and WebSocket append
    /// frames waiting in a stream object's line) an isolate holds
    /// at once; a request that would take it past them is answered 503 with `Retry-After`
    /// (one body alone always goes through). At twice `max_append_bytes`, as by default, the
    /// largest body fits beside others; below that it goes through only alone. See
    /// [`crate::intake`].
    pub body_budget_bytes: u64,
    /// How long a request body may send nothing before it is refused with 408: a paused upload
    /// would otherwise hold its share of `body_budget_bytes` for as long as its connection
    /// stays open, and a few of them would refuse every other write in the isolate.
    pub body_idle_ms: u64,
    /// `Access-Control-Allow-Origin` value(s): `*` or a comma-separated list of origins.
    pub cors_origins: String,
    /// Whether subscriptions may call `http://localhost` / `127.0.0.x` webhooks (development).
    pub webhook_allow_localhost: bool,
    /// How long one webhook delivery (the request and its reply) may take before it counts as
    /// failed and is retried with backoff.
    pub webhook_timeout_ms: u64,
    /// How long a subscription's deliveries (webhook posts, wake events) may go on failing
    /// before it stops retrying them; new data or a `PUT` of it tries again.
    pub delivery_give_up_ms: u64,
    /// How many existing streams the registry links per call for a new channel or subscription:
    /// each is a call between objects, which Cloudflare counts against a per-request limit, so a larger
    /// tree is linked over several calls.
    pub links_per_call: u64,
    /// How many pages of a new subscription's pattern, or of the streams below a new channel
    /// (`links_per_call` streams each, one call to the registry per page), one invocation of
    /// the subscription or channel links: its PUT, then each alarm, each going on from where
    /// the last stopped. So linking any number of
    /// streams stays within Cloudflare's per-invocation subrequest limit.
    pub link_pages_per_invocation: u64,
    /// How long an idempotent producer's state is kept after its last append: past it, the
    /// producer is treated as new, as the protocol allows.
    pub producer_ttl_ms: u64,
    /// Whether shared caches may keep reads (`Cache-Control: public`): only while access is
    /// open. With `AUTH_SECRET` set, reads are `private`, so no CDN hands one reader's data to
    /// another who may not read it.
    pub shared_reads: bool,
    /// How often the registry rotates the webhook signing key by itself (ms; `None`: only
    /// when an operator asks, `POST /v1/stream/__ds/keys/rotate`).
    pub key_rotation_ms: Option<u64>,
    /// The overlap of those rotations (see [`crate::subscription::keys::rotate`]).
    pub key_rotation_overlap_ms: u64,
    /// Tests only: streams whose path contains this fail their first call of each kind to
    /// other objects (see [`crate::fault`]). Unset in production.
    pub fault_marker: Option<String>,
}

impl Config {
    pub const DEFAULT_LONG_POLL_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_APPEND_BYTES: u64 = 16 * 1024 * 1024;
    pub const DEFAULT_SSE_CONNECTION_MS: u64 = 60_000;
    /// Fifteen seconds: under the idle timeouts of common proxies, and a write per reader
    /// that costs the isolate next to nothing.
    pub const DEFAULT_SSE_HEARTBEAT_MS: u64 = 15_000;
    /// One catch-up page: a reader further behind is better served by catch-up reads, which
    /// wait for it, than by live frames queued in the edge's memory.
    pub const DEFAULT_SSE_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;
    /// Two catch-up pages: a client handed a page at its handshake, which then receives more
    /// before its first receipt arrives, is not cut off.
    pub const DEFAULT_WS_BACKLOG_BYTES: u64 = 8 * 1024 * 1024;
    /// A thousand frames at once, as many as may wait in line.
    pub const DEFAULT_WS_APPEND_BURST: u64 = 1000;
    /// Half of what one stream applies a second on this project's 2-core machine, so a socket
    /// sending as fast as it may still leaves room for everyone else.
    pub const DEFAULT_WS_APPEND_RATE: u64 = 500;
    /// Ten thousand: ten times the fan-out the benchmark measures. An append reaches each
    /// `live=ws` reader in about 27 µs of the object's thread (a quarter of a second for this
    /// many), and each idle reader costs workerd 140 to 200 KB locally.
    pub const DEFAULT_MAX_LIVE_READERS: u64 = 10_000;
    /// Two of the largest appends by default: a quarter of the 128 MB an isolate has on
    /// Cloudflare, which each body takes more than once (the request's buffer, then wasm's copy).
    pub const DEFAULT_BODY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;
    /// Twenty seconds: a client still sending never goes that long without a byte arriving.
    pub const DEFAULT_BODY_IDLE_MS: u64 = 20_000;
    /// Ten seconds: a webhook answers at once and does its work after (or calls back).
    pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    /// A day: an endpoint down for a night is still retried until it is back, and one gone for
    /// good costs about 1,440 attempts at the capped one-minute delay, not one a minute for ever.
    pub const DEFAULT_DELIVERY_GIVE_UP_MS: u64 = 24 * 3_600_000;
    /// Half the free plan's 1,000 calls to Cloudflare services per request.
    pub const DEFAULT_LINKS_PER_CALL: u64 = 500;
    /// 100 pages, 50,000 streams at the default page: a tenth of the free plan's 1,000 calls
    /// per invocation, and a PUT answered within a few hundred calls' time.
    pub const DEFAULT_LINK_PAGES_PER_INVOCATION: u64 = 100;
    /// Seven days, the protocol's recommendation: a producer idle for a week starts afresh.
    pub const DEFAULT_PRODUCER_TTL_MS: u64 = 7 * 24 * 3_600_000;

    /// The settings, read from `env` once per isolate: `[vars]` cannot change while an isolate
    /// lives (a new deployment starts new isolates), and reading them costs JS calls. A setting
    /// given a value it cannot take is logged once per isolate, with the value used instead.
    pub fn from_env(env: &Env) -> Config {
        thread_local! {
            static CACHED: std::cell::OnceCell<Config> = const { std::cell::OnceCell::new() };
        }
        CACHED.with(|cell| {
            cell.get_or_init(|| {
                let mut vars = Vars {
                    env,
                    problems: Vec::new(),
                };
                let config = Config::read(&mut vars);
                for problem in vars.problems {
                    worker::console_warn!("edgestream: setting {problem}");
                }
                config
            })
            .clone()
        })
    }

    fn read(vars: &mut Vars) -> Config {
        let max_append_bytes = vars.number(
            "MAX_APPEND_BYTES",
            Self::DEFAULT_MAX_APPEND_BYTES,
            // SQLite rows are capped at 2 MB, but appends are split across rows; the cap here
            // bounds the memory one request may pin in the object.
            (1, 64 * 1024 * 1024),
        );
        let key_rotation_overlap_ms = vars.number(
            "KEY_ROTATION_OVERLAP_MS",
            crate::subscription::keys::DEFAULT_OVERLAP_MS as u64,
            (1, crate::subscription::keys::MAX_OVERLAP_MS as u64),
        );
        // Off unless set. At least twice the overlap: each fresh key then signs before the next
        // rotation (one sooner would withdraw it unused, and the old key would sign for ever),
        // and at most two keys are published at once.
        let key_rotation_ms = match vars.text("KEY_ROTATION_MS") {
            Some(text) if !matches!(text.trim(), "" | "0") => Some(vars.number(
                "KEY_ROTATION_MS",
                0,
                (
                    (2 * key_rotation_overlap_ms).max(1000),
                    10 * 365 * 24 * 3_600_000,
                ),
            ))
            .filter(|ms| *ms > 0),
            _ => None,
        };
        Config {
            // Under 100 ms, every waiting client would poll again in a tight loop.
            long_poll_timeout_ms: vars.number(
                "LONG_POLL_TIMEOUT_MS",
                Self::DEFAULT_LONG_POLL_TIMEOUT_MS,
                (100, 600_000),
            ),
            max_append_bytes,
            // Under a second, the first catch-up page could miss the deadline, and a reader
            // be sent nothing, every time.
            sse_connection_ms: vars.number(
                "SSE_CONNECTION_MS",
                Self::DEFAULT_SSE_CONNECTION_MS,
                (1000, 3_600_000),
            ),
            sse_heartbeat_ms: vars.number(
                "SSE_HEARTBEAT_MS",
                Self::DEFAULT_SSE_HEARTBEAT_MS,
                (100, 3_600_000),
            ),
            sse_backlog_bytes: vars.number(
                "SSE_BACKLOG_BYTES",
                Self::DEFAULT_SSE_BACKLOG_BYTES,
                (1, 64 * 1024 * 1024),
            ),
            // Clients send a receipt at least every 64 KiB they read: well under the floor.
            ws_backlog_bytes: vars.number(
                "WS_BACKLOG_BYTES",
                Self::DEFAULT_WS_BACKLOG_BYTES,
                (256 * 1024, 256 * 1024 * 1024),
            ),
            ws_compression: vars.flag("WS_COMPRESSION"),
            ws_append_rate: crate::wsproto::AppendRate {
                // A frame costs one more per 64 KiB: a smaller burst would refuse the largest
                // append a socket may send every time, however long it waited.
                burst: vars.number(
                    "WS_APPEND_BURST",
                    Self::DEFAULT_WS_APPEND_BURST,
                    (1 + max_append_bytes / (64 * 1024), 1_000_000),
                ),
                per_second: vars.number(
                    "WS_APPEND_RATE",
                    Self::DEFAULT_WS_APPEND_RATE,
                    (1, 1_000_000),
                ),
            },
            max_live_readers: vars.number(
                "MAX_LIVE_READERS",
                Self::DEFAULT_MAX_LIVE_READERS,
                (1, 1_000_000),
            ),
            body_budget_bytes: vars.number(
                "BODY_BUDGET_BYTES",
                Self::DEFAULT_BODY_BUDGET_BYTES,
                (1, 1024 * 1024 * 1024),
            ),
            body_idle_ms: vars.number(
                "BODY_IDLE_TIMEOUT_MS",
                Self::DEFAULT_BODY_IDLE_MS,
                (100, 10 * 60 * 1000),
            ),
            cors_origins: vars
                .text("CORS_ORIGINS")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "*".into()),
            webhook_allow_localhost: vars.flag("WEBHOOK_ALLOW_LOCALHOST"),
            webhook_timeout_ms: vars.number(
                "WEBHOOK_TIMEOUT_MS",
                Self::DEFAULT_WEBHOOK_TIMEOUT_MS,
                (1, 300_000),
            ),
            // At least a second, the first retry's delay; at most a year.
            delivery_give_up_ms: vars.number(
                "DELIVERY_GIVE_UP_MS",
                Self::DEFAULT_DELIVERY_GIVE_UP_MS,
                (1000, 365 * 24 * 3_600_000),
            ),
            links_per_call: vars.number(
                "LINKS_PER_CALL",
                Self::DEFAULT_LINKS_PER_CALL,
                (1, 100_000),
            ),
            // Below the paid plan's 10,000 calls per invocation, with room for the rest.
            link_pages_per_invocation: vars.number(
                "LINK_PAGES_PER_INVOCATION",
                Self::DEFAULT_LINK_PAGES_PER_INVOCATION,
                (1, 9_000),
            ),
            // Ten years: beyond that, keeping the state is what the deployment wants.
            producer_ttl_ms: vars.number(
                "PRODUCER_TTL_MS",
                Self::DEFAULT_PRODUCER_TTL_MS,
                (1, 3650 * 24 * 3_600_000),
            ),
            key_rotation_ms,
            key_rotation_overlap_ms,
            shared_reads: !crate::auth::required(vars.env),
            fault_marker: vars.text("FAULT_MARKER").filter(|v| !v.trim().is_empty()),
        }
    }
}

/// The `[vars]` being read, and what was wrong with them.
struct Vars<'a> {
    env: &'a Env,
    problems: Vec<String>,
}

impl Vars<'_> {
    /// A setting's text: a `[vars]` string or `--var`, or a TOML number or boolean written
    /// without quotes, which wrangler binds as a JSON number or boolean (`Env::var` takes only
    /// strings, so `LONG_POLL_TIMEOUT_MS = 5000` was silently the default).
    fn text(&self, name: &str) -> Option<String> {
        let value = js_sys::Reflect::get(self.env, &name.into()).ok()?;
        if value.is_undefined() || value.is_null() {
            None
        } else if let Some(text) = value.as_string() {
            Some(text)
        } else if let Some(n) = value.as_f64() {
            Some(n.to_string())
        } else if let Some(b) = value.as_bool() {
            Some(b.to_string())
        } else {
            Some(String::from("(not text, a number or a boolean)"))
        }
    }

    /// A number setting within `(least, most)`: see [`bounded`].
    fn number(&mut self, name: &str, default: u64, (least, most): (u64, u64)) -> u64 {
        let Some(text) = self.text(name) else {
            return default;
        };
        let (value, problem) = bounded(&text, default, least, most);
        if let Some(problem) = problem {
            self.problems
                .push(format!("{name}={} {problem}", shown(&text)));
        }
        value
    }

    /// A switch: only `true` (in any case) turns it on; what is neither `true` nor `false` is
    /// logged.
    fn flag(&mut self, name: &str) -> bool {
        let Some(text) = self.text(name) else {
            return false;
        };
        let on = edgestream::headers::is_true(Some(&text));
        if !on && !text.trim().eq_ignore_ascii_case("false") {
            self.problems.push(format!(
                "{name}={} is neither true nor false; using false",
                shown(&text)
            ));
        }
        on
    }
}

/// A setting's value as a log line shows it: quoted, and cut short.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(40).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("{cut:?}{more}")
}

/// The value a number setting takes, and why it is not the one given, if it is not: one that
/// is 0 or does not parse falls back to `default`, and one out of `least..=most` is taken at
/// the bound it passed (digits past `u64` count as large).
fn bounded(text: &str, default: u64, least: u64, most: u64) -> (u64, Option<String>) {
    match setting_number(text) {
        None => (
            default,
            Some(format!(
                "is not a whole number above 0; using the default, {default}"
            )),
        ),
        Some(n) if n < least => (least, Some(format!("is under {least}; using {least}"))),
        Some(n) if n > most => (most, Some(format!("is over {most}; using {most}"))),
        Some(n) => (n, None),
    }
}

/// A number setting: `None` for 0 or what does not parse; digits past `u64` are as large as can
/// be, so the setting's cap applies, as it does to any large value.
fn setting_number(text: &str) -> Option<u64> {
    let text = text.trim();
    let n = text.parse::<u64>().ok().or_else(|| {
        let digits = text.strip_prefix('+').unwrap_or(text);
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(u64::MAX)
    })?;
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::{bounded, setting_number, shown};

    #[test]
    fn numbers() {
        assert_eq!(setting_number(" 300000 "), Some(300_000));
        assert_eq!(setting_number("99999999999999999999"), Some(u64::MAX));
        assert_eq!(setting_number("+99999999999999999999"), Some(u64::MAX));
        for default in ["", "0", "-1", "abc", "1e3", "1.5", "+", "++1"] {
            assert_eq!(setting_number(default), None, "{default:?}");
        }
    }

    #[test]
    fn bounds_and_what_is_logged() {
        assert_eq!(bounded("5000", 30_000, 100, 600_000), (5000, None));
        assert_eq!(bounded(" 5000 ", 30_000, 100, 600_000), (5000, None));
        for bad in ["", " ", "0", "-1", "1e3", "1.5", "abc"] {
            assert_eq!(
                bounded(bad, 30_000, 100, 600_000),
                (
                    30_000,
                    Some("is not a whole number above 0; using the default, 30000".into())
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            bounded("1", 30_000, 100, 600_000),
            (100, Some("is under 100; using 100".into()))
        );
        assert_eq!(
            bounded("99999999999999999999", 30_000, 100, 600_000),
            (600_000, Some("is over 600000; using 600000".into()))
        );
        assert_eq!(shown("1e3"), "\"1e3\"");
        assert_eq!(shown(&"9".repeat(50)), format!("{:?}…", "9".repeat(40)));
    }
}
