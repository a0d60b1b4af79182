//! The security and CORS headers every response carries, errors included.
//!
//! Whoever makes a response decorates it: the edge its own, the stream object the ones it
//! answers (it sees the client's `Origin`, which the edge forwards). A response fetched from an
//! object has immutable headers; decorating it again at the edge would cost a copy, or a thrown
//! and caught exception with a long stack trace, on every forwarded request.

use worker::{Headers, Response, Result};

use crate::config::Config;
use crate::http;
use edgestream::headers as h;

/// The header whose presence says a response is decorated already.
const MARKER: &str = "cross-origin-resource-policy";

/// Adds the headers to `resp`, copying it first only if its headers are immutable.
pub fn decorate(resp: Response, config: &Config, origin: Option<&str>) -> Result<Response> {
    if resp.status_code() == 101 || resp.headers().has(MARKER).unwrap_or(false) {
        return Ok(resp);
    }
    match set_headers(resp.headers(), config, origin) {
        Ok(()) => Ok(resp),
        Err(_) => {
            // Fetched from elsewhere without decoration: copy, then decorate.
            let resp = http::mutable(resp)?;
            set_headers(resp.headers(), config, origin)?;
            Ok(resp)
        }
    }
}

fn set_headers(headers: &Headers, config: &Config, origin: Option<&str>) -> Result<()> {
    headers.set(MARKER, "cross-origin")?;
    headers.set("x-content-type-options", "nosniff")?;
    if let Some(allowed) = allowed_origin(config, origin) {
        headers.set("access-control-allow-origin", &allowed)?;
        if allowed != "*" {
            headers.append("vary", "Origin")?;
        }
    }
    headers.set("access-control-expose-headers", h::CORS_EXPOSE_HEADERS)
}

/// `*`, or the request's origin when it is on the configured list.
fn allowed_origin(config: &Config, origin: Option<&str>) -> Option<String> {
    if config.cors_origins.trim() == "*" {
        return Some("*".into());
    }
    let origin = origin?;
    config
        .cors_origins
        .split(',')
        .map(str::trim)
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then(|| origin.to_string())
}
