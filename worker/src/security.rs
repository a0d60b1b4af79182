//! The security and CORS headers every response carries, errors included.
//!
//! Whoever makes a response decorates it: the edge its own, the stream object the ones it
//! answers (it sees the client's `Origin`, which the edge forwards). A response fetched from an
//! object has immutable headers; decorating it again at the edge would cost a copy, or a thrown
//! and caught exception with a long stack trace, on every forwarded request. The edge passes
//! such a response back as the runtime gave it once [`decorated`] confirms it, in one call.

use wasm_bindgen::prelude::wasm_bindgen;
use worker::worker_sys::web_sys;
use worker::{Headers, Response, Result};

use crate::config::Config;
use crate::http;
use edgestream::headers as h;

/// The header whose presence says a response is decorated already.
const MARKER: &str = "cross-origin-resource-policy";
const ALLOW_ORIGIN: &str = "access-control-allow-origin";

#[wasm_bindgen(inline_js = "export function decoratedFor(resp, allowed) {
    if (resp.status === 101) return true;
    const headers = resp.headers;
    return headers.has('cross-origin-resource-policy')
        && headers.get('access-control-allow-origin') === (allowed ?? null);
}")]
extern "C" {
    #[wasm_bindgen(js_name = decoratedFor)]
    fn decorated_for(resp: &web_sys::Response, allowed: Option<&str>) -> bool;
}

/// Whether `resp`, fetched from an object, carries the headers [`decorate`] would give it for
/// `origin` (what `decorate` checks before it changes anything), so that it can be passed on
/// untouched.
pub fn decorated(resp: &web_sys::Response, config: &Config, origin: Option<&str>) -> bool {
    decorated_for(resp, allowed_origin(config, origin).as_deref())
}

/// Whether responses depend on the request's `Origin`: only when `CORS_ORIGINS` lists
/// origins. With `*` the header need not be read at all.
pub fn by_origin(config: &Config) -> bool {
    !any_origin(config)
}

/// Adds the headers to `resp`, copying it first only if its headers are immutable.
///
/// A response the object decorated for the same origin passes untouched. One it decorated for
/// no origin (the edge's own requests to it, a live read's page, carry none) gets its CORS
/// header redone when the allowed origin differs, which only happens with `CORS_ORIGINS` set.
pub fn decorate(resp: Response, config: &Config, origin: Option<&str>) -> Result<Response> {
    if resp.status_code() == 101 {
        return Ok(resp);
    }
    let allowed = allowed_origin(config, origin);
    let decorated = resp.headers().has(MARKER).unwrap_or(false);
    if decorated && http::header(resp.headers(), ALLOW_ORIGIN) == allowed {
        return Ok(resp);
    }
    // With a list of origins, what a response says about CORS depends on the request's
    // `Origin`, even when it allows none: a shared cache must not hand a copy made for no
    // origin (or another) to a listed one, whose browser would then refuse it.
    let by_origin = by_origin(config);
    let set = |headers: &Headers| {
        if !decorated {
            set_headers(headers)?;
        }
        set_cors(headers, allowed.as_deref(), by_origin)
    };
    http::edit_headers(resp, set)
}

fn set_headers(headers: &Headers) -> Result<()> {
    headers.set(MARKER, "cross-origin")?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("access-control-expose-headers", h::CORS_EXPOSE_HEADERS)
}

fn set_cors(headers: &Headers, allowed: Option<&str>, by_origin: bool) -> Result<()> {
    match allowed {
        Some(allowed) => headers.set(ALLOW_ORIGIN, allowed)?,
        None => headers.delete(ALLOW_ORIGIN)?,
    }
    // Read only with a list: every response is decorated, and `*` never varies.
    if by_origin && !varies_by_origin(headers) {
        headers.append("vary", "Origin")?;
    }
    Ok(())
}

fn varies_by_origin(headers: &Headers) -> bool {
    http::header(headers, "vary").is_some_and(|v| {
        v.split(',')
            .any(|f| f.trim().eq_ignore_ascii_case("origin"))
    })
}

/// Whether every origin is allowed (`CORS_ORIGINS` is `*`).
fn any_origin(config: &Config) -> bool {
    config.cors_origins.trim() == "*"
}

/// `*`, or the request's origin when it is on the configured list.
fn allowed_origin(config: &Config, origin: Option<&str>) -> Option<String> {
    if any_origin(config) {
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
