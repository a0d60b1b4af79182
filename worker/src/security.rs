//! The security and CORS headers every response carries, errors included.
//!
//! Whoever makes a response decorates it: the edge its own, the stream object the ones it
//! answers (it sees the client's `Origin`, which the edge forwards). A response fetched from an
//! object has immutable headers; decorating it again at the edge would cost a copy, or a thrown
//! and caught exception with a long stack trace, on every forwarded request. The edge passes
//! such a response back as the runtime gave it once [`Cors::decorated`] confirms it, in one
//! call.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::worker_sys::web_sys;
use worker::{Headers, Response, Result};

use crate::config::Config;
use crate::http;
use edgestream::headers as h;

/// What one request's responses say about CORS, worked out once from the request's `Origin`
/// (read only when responses depend on it: see [`Cors::of`]).
pub struct Cors {
    /// `Access-Control-Allow-Origin`: `*`, the request's origin when listed, or none.
    allowed: Option<String>,
    /// Responses vary by `Origin` (`CORS_ORIGINS` lists origins).
    by_origin: bool,
}

impl Cors {
    /// The CORS answer for a request with these headers. With `CORS_ORIGINS` = `*` no response
    /// depends on the request's `Origin`, so it is not read at all.
    pub fn of(headers: &Headers, config: &Config) -> Cors {
        if any_origin(config) {
            return Cors {
                allowed: Some("*".into()),
                by_origin: false,
            };
        }
        Cors {
            allowed: http::header(headers, "origin").filter(|o| listed(config, o)),
            by_origin: true,
        }
    }

    /// Whether `resp`, fetched from an object, carries the headers [`Cors::decorate`] would
    /// give it (what `decorate` checks before it changes anything), so that it can be passed
    /// on untouched.
    pub fn decorated(&self, resp: &web_sys::Response) -> bool {
        decorated_for(resp, self.allowed.as_deref())
    }

    /// Adds the headers to `resp`, copying it first only if its headers are immutable.
    ///
    /// A response the object decorated for the same origin passes untouched. One it decorated
    /// for no origin (the edge's own requests to it, a live read's page, carry none) gets its
    /// CORS header redone when the allowed origin differs, which only happens with
    /// `CORS_ORIGINS` set. With a list of origins, what a response says about CORS depends on
    /// the request's `Origin`, even when it allows none: a shared cache must not hand a copy
    /// made for no origin (or another) to a listed one, whose browser would then refuse it, so
    /// it varies by `Origin`.
    pub fn decorate(&self, resp: Response) -> Result<Response> {
        if resp.status_code() == 101 {
            return Ok(resp);
        }
        let set = |headers: &Headers| {
            EXPOSE
                .with(|expose| {
                    decorate_headers(&headers.0, self.allowed.as_deref(), self.by_origin, expose)
                })
                .map_err(worker::Error::from)
        };
        http::edit_headers(resp, set)
    }
}

#[wasm_bindgen(inline_js = "function decoratedAs(headers, allowed) {
    return headers.has('cross-origin-resource-policy')
        && headers.get('access-control-allow-origin') === (allowed ?? null);
}
export function decoratedFor(resp, allowed) {
    return resp.status === 101 || decoratedAs(resp.headers, allowed);
}
export function decorateHeaders(headers, allowed, byOrigin, expose) {
    if (decoratedAs(headers, allowed)) return;
    if (!headers.has('cross-origin-resource-policy')) {
        headers.set('cross-origin-resource-policy', 'cross-origin');
        headers.set('x-content-type-options', 'nosniff');
        headers.set('access-control-expose-headers', expose);
    }
    if (allowed == null) headers.delete('access-control-allow-origin');
    else headers.set('access-control-allow-origin', allowed);
    // Read only with a list: every response is decorated, and `*` never varies.
    if (byOrigin && !(headers.get('vary') ?? '').split(',').some((f) => f.trim().toLowerCase() === 'origin')) {
        headers.append('vary', 'Origin');
    }
}")]
extern "C" {
    #[wasm_bindgen(js_name = decoratedFor)]
    fn decorated_for(resp: &web_sys::Response, allowed: Option<&str>) -> bool;

    /// All of [`Cors::decorate`]'s work on `headers` in one call from Rust rather than one per
    /// header: nothing when they are decorated for `allowed` already; throws, having changed
    /// nothing, when they are immutable.
    #[wasm_bindgen(catch, js_name = decorateHeaders)]
    fn decorate_headers(
        headers: &web_sys::Headers,
        allowed: Option<&str>,
        by_origin: bool,
        expose: &JsValue,
    ) -> std::result::Result<(), JsValue>;
}

thread_local! {
    /// `Access-Control-Expose-Headers`, made a JS string once per isolate.
    static EXPOSE: JsValue = JsValue::from_str(h::CORS_EXPOSE_HEADERS);
}

/// Whether every origin is allowed (`CORS_ORIGINS` is `*`).
fn any_origin(config: &Config) -> bool {
    config.cors_origins.trim() == "*"
}

/// Whether `origin` is on the configured list (`CORS_ORIGINS`).
fn listed(config: &Config, origin: &str) -> bool {
    config
        .cors_origins
        .split(',')
        .map(str::trim)
        .any(|o| o.eq_ignore_ascii_case(origin))
}
