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
    /// How many existing streams the registry links per call for a new channel or subscription:
    /// each is a call between objects, which Cloudflare counts against a per-request limit, so a larger
    /// tree is linked over several calls.
    pub links_per_call: u64,
    /// How long an idempotent producer's state is kept after its last append: past it, the
    /// producer is treated as new, as the protocol allows.
    pub producer_ttl_ms: u64,
    /// Whether shared caches may keep reads (`Cache-Control: public`): only while access is
    /// open. With `AUTH_SECRET` set, reads are `private`, so no CDN hands one reader's data to
    /// another who may not read it.
    pub shared_reads: bool,
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
    /// Two of the largest appends by default: a quarter of the 128 MB an isolate has on
    /// Cloudflare, which each body takes more than once (the request's buffer, then wasm's copy).
    pub const DEFAULT_BODY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;
    /// Twenty seconds: a client still sending never goes that long without a byte arriving.
    pub const DEFAULT_BODY_IDLE_MS: u64 = 20_000;
    /// Ten seconds: a webhook answers at once and does its work after (or calls back).
    pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    /// Half the free plan's 1,000 calls to Cloudflare services per request.
    pub const DEFAULT_LINKS_PER_CALL: u64 = 500;
    /// Seven days, the protocol's recommendation: a producer idle for a week starts afresh.
    pub const DEFAULT_PRODUCER_TTL_MS: u64 = 7 * 24 * 3_600_000;

    /// The settings, read from `env` once per isolate: `[vars]` cannot change while an isolate
    /// lives (a new deployment starts new isolates), and reading them costs JS calls.
    pub fn from_env(env: &Env) -> Config {
        thread_local! {
            static CACHED: std::cell::OnceCell<Config> = const { std::cell::OnceCell::new() };
        }
        CACHED.with(|cell| cell.get_or_init(|| Config::read(env)).clone())
    }

    fn read(env: &Env) -> Config {
        let number = |name: &str, default: u64, max: u64| -> u64 {
            env.var(name)
                .ok()
                .and_then(|v| setting_number(&v.to_string()))
                .map_or(default, |v| v.min(max))
        };
        Config {
            long_poll_timeout_ms: number(
                "LONG_POLL_TIMEOUT_MS",
                Self::DEFAULT_LONG_POLL_TIMEOUT_MS,
                600_000,
            ),
            // SQLite rows are capped at 2 MB, but appends are split across rows; the cap here
            // bounds the memory one request may pin in the object.
            max_append_bytes: number(
                "MAX_APPEND_BYTES",
                Self::DEFAULT_MAX_APPEND_BYTES,
                64 * 1024 * 1024,
            ),
            // Under a second, the first catch-up page could miss the deadline, and a reader
            // be sent nothing, every time.
            sse_connection_ms: number(
                "SSE_CONNECTION_MS",
                Self::DEFAULT_SSE_CONNECTION_MS,
                3_600_000,
            )
            .max(1000),
            sse_heartbeat_ms: number(
                "SSE_HEARTBEAT_MS",
                Self::DEFAULT_SSE_HEARTBEAT_MS,
                3_600_000,
            )
            .max(100),
            sse_backlog_bytes: number(
                "SSE_BACKLOG_BYTES",
                Self::DEFAULT_SSE_BACKLOG_BYTES,
                64 * 1024 * 1024,
            ),
            // Clients send a receipt at least every 64 KiB they read: well under the floor.
            ws_backlog_bytes: number(
                "WS_BACKLOG_BYTES",
                Self::DEFAULT_WS_BACKLOG_BYTES,
                256 * 1024 * 1024,
            )
            .max(256 * 1024),
            ws_compression: env
                .var("WS_COMPRESSION")
                .map(|v| edgestream::headers::is_true(Some(v.to_string().trim())))
                .unwrap_or(false),
            ws_append_rate: crate::wsproto::AppendRate {
                burst: number("WS_APPEND_BURST", Self::DEFAULT_WS_APPEND_BURST, 1_000_000),
                per_second: number("WS_APPEND_RATE", Self::DEFAULT_WS_APPEND_RATE, 1_000_000),
            },
            body_budget_bytes: number(
                "BODY_BUDGET_BYTES",
                Self::DEFAULT_BODY_BUDGET_BYTES,
                1024 * 1024 * 1024,
            ),
            body_idle_ms: number(
                "BODY_IDLE_TIMEOUT_MS",
                Self::DEFAULT_BODY_IDLE_MS,
                10 * 60 * 1000,
            )
            .max(100),
            cors_origins: env
                .var("CORS_ORIGINS")
                .map(|v| v.to_string())
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "*".into()),
            webhook_allow_localhost: env
                .var("WEBHOOK_ALLOW_LOCALHOST")
                .map(|v| edgestream::headers::is_true(Some(v.to_string().trim())))
                .unwrap_or(false),
            webhook_timeout_ms: number(
                "WEBHOOK_TIMEOUT_MS",
                Self::DEFAULT_WEBHOOK_TIMEOUT_MS,
                300_000,
            ),
            links_per_call: number("LINKS_PER_CALL", Self::DEFAULT_LINKS_PER_CALL, 100_000),
            // Ten years: beyond that, keeping the state is what the deployment wants.
            producer_ttl_ms: number(
                "PRODUCER_TTL_MS",
                Self::DEFAULT_PRODUCER_TTL_MS,
                3650 * 24 * 3_600_000,
            ),
            shared_reads: !crate::auth::required(env),
            fault_marker: env
                .var("FAULT_MARKER")
                .map(|v| v.to_string())
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }
}

/// A number setting: `None` (the default) for 0 or what does not parse; digits past `u64` are
/// as large as can be, so the setting's cap applies, as it does to any large value.
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
    use super::setting_number;

    #[test]
    fn numbers() {
        assert_eq!(setting_number(" 300000 "), Some(300_000));
        assert_eq!(setting_number("99999999999999999999"), Some(u64::MAX));
        assert_eq!(setting_number("+99999999999999999999"), Some(u64::MAX));
        for default in ["", "0", "-1", "abc", "1e3", "1.5", "+", "++1"] {
            assert_eq!(setting_number(default), None, "{default:?}");
        }
    }
}
