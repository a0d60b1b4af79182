//! Small HTTP helpers shared by the edge and the Durable Object: errors, headers, response
//! bodies, time. Request bodies are read in `intake.rs`, within the isolate's budget.

use edgestream::headers as h;
use edgestream::ProtocolError;
use wasm_bindgen::JsValue;
use worker::worker_sys::web_sys;
use worker::{Headers, Request, Response, ResponseBody, Result};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// Unix seconds now, the unit of a token's expiry.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// A random `u32` (cursor jitter, instance ids). Not for secrets.
pub fn random_u32() -> u32 {
    (js_sys::Math::random() * f64::from(u32::MAX)) as u32
}

/// The runtime's request as a `worker::Request`, without building its `cf` object, which
/// `Request::from` reads eagerly and nothing here uses. Building it was the largest single cost
/// of a small request at the edge in a CPU profile (a JSON parse per request under wrangler dev).
pub fn request_without_cf(req: web_sys::Request) -> Request {
    thread_local! {
        /// `{ value: undefined }`, made once per isolate rather than once per request.
        static UNDEFINED_VALUE: js_sys::Object = {
            let descriptor = js_sys::Object::new();
            let _ = js_sys::Reflect::set(
                &descriptor,
                &"value".into(),
                &wasm_bindgen::JsValue::UNDEFINED,
            );
            descriptor
        };
    }
    // An own property shadows the prototype's getter; if the runtime refuses, `cf` is built.
    UNDEFINED_VALUE.with(|descriptor| {
        let _ = js_sys::Reflect::define_property(&req, &"cf".into(), descriptor);
    });
    Request::from(req)
}

/// A mutable copy of `source`, made by the runtime in one call rather than header by header.
pub fn copy_headers(source: &Headers) -> Result<Headers> {
    Ok(Headers(web_sys::Headers::new_with_headers(&source.0)?))
}

/// The prefix of the headers the edge and the objects tell each other things with. The edge
/// removes those a client sent from what it forwards (`edge::forward`), so that only the edge
/// sets them.
pub const INTERNAL_PREFIX: &str = "x-edgestream-";

#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "export function headerBytes(headers) {
    let n = 0;
    for (const [name, value] of headers) n += name.length + value.length;
    return n;
}")]
extern "C" {
    #[wasm_bindgen(catch, js_name = headerBytes)]
    fn header_bytes_js(headers: &web_sys::Headers) -> std::result::Result<u32, JsValue>;
}

/// The total length of the header names and values, summed in JS in one call rather than by
/// iterating the headers into Rust (a call and two string copies per header). Header values
/// are byte strings, so their length in UTF-16 units is their length in bytes.
pub fn header_bytes(headers: &Headers) -> Result<usize> {
    Ok(header_bytes_js(&headers.0)? as usize)
}

#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "export function headerValues(headers, names) {
    let out = '';
    for (const name of names.split(',')) {
        const value = headers.get(name);
        out += (value === null ? '\\0' : value) + '\\n';
    }
    return out;
}")]
extern "C" {
    #[wasm_bindgen(catch, js_name = headerValues)]
    fn header_values_js(
        headers: &web_sys::Headers,
        names: &str,
    ) -> std::result::Result<String, JsValue>;
}

/// The values of the headers `names`, in order, read in one call from Rust rather than one per
/// header; a runtime error reads as all absent, as in [`header`]. A header value never holds a
/// NUL or a line feed (the runtime refuses them), so the values come back one per line, with
/// a NUL for a header that is absent.
pub fn header_values<const N: usize>(headers: &Headers, names: [&str; N]) -> [Option<String>; N] {
    let Ok(values) = header_values_js(&headers.0, &names.join(",")) else {
        return std::array::from_fn(|_| None);
    };
    let mut values = values.split('\n');
    std::array::from_fn(|_| {
        values
            .next()
            .filter(|v| *v != "\0")
            .map(|v| without_ows(v).to_string())
    })
}

/// A header's value, treating a runtime error as absent.
pub fn header(headers: &Headers, name: &str) -> Option<String> {
    headers
        .get(name)
        .ok()
        .flatten()
        .map(|v| match without_ows(&v) {
            trimmed if trimmed.len() == v.len() => v,
            trimmed => trimmed.to_string(),
        })
}

/// A field value without the optional whitespace (spaces and tabs) around it, which RFC 9112
/// (§5.1) says is no part of the value. workerd drops the leading whitespace but keeps the
/// trailing, so `Producer-Seq: 1 ` would otherwise be refused and `Producer-Id: p ` would be
/// another producer than `p`, though both name the same value to every HTTP intermediary.
pub fn without_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// Whether a header value held bytes that are not UTF-8. The runtime decodes header bytes as
/// UTF-8 and turns each invalid sequence into U+FFFD, so a browser's `writer-é` and `writer-è`
/// (sent as the Latin-1 bytes E9 and E8) both arrive as `writer-\u{FFFD}`.
pub fn decoded_lossily(value: &str) -> bool {
    value.contains(char::REPLACEMENT_CHARACTER)
}

/// `Stream-Seq`'s value, where an empty value counts as none: the protocol's values are
/// opaque strings that order writers, and an empty header orders nothing (as the reference
/// server takes it).
pub fn stream_seq(value: Option<String>) -> Option<String> {
    value.filter(|seq| !seq.is_empty())
}

/// What a log line about a failed request names: its method and path, never its query, which
/// may carry a token (`?token=`).
pub fn described(req: &web_sys::Request) -> String {
    let url = worker::Url::parse(&req.url());
    let path = url.as_ref().map_or("(no URL)", |url| url.path());
    format!("{} {path}", req.method())
}

/// A short plain-text response.
/// 405 with the `Allow` header RFC 9110 §15.5.6 requires: the methods `allow` names.
pub fn not_allowed(allow: &str) -> Result<Response> {
    let resp = text(405, "method not allowed")?;
    resp.headers().set("allow", allow)?;
    Ok(resp)
}

pub fn text(status: u16, message: &str) -> Result<Response> {
    let mut body = message.to_string();
    body.push('\n');
    let headers = Headers::new();
    headers.set(h::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    headers.set(h::CACHE_CONTROL, "no-store")?;
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

/// The response for a protocol refusal: status, short text, and the headers it carries.
pub fn error(e: &ProtocolError) -> Result<Response> {
    let resp = text(e.status(), &e.message())?;
    for (name, value) in e.headers() {
        resp.headers().set(name, &value)?;
    }
    Ok(resp)
}

/// A 503 asking the client to retry, for transient failures inside the platform.
pub fn unavailable(message: &str) -> Result<Response> {
    let resp = text(503, message)?;
    resp.headers().set(h::RETRY_AFTER, "1")?;
    Ok(resp)
}

/// Copies a response (fetched responses have immutable headers) into one whose headers can be
/// changed, keeping its status and body.
pub fn mutable(resp: Response) -> Result<Response> {
    let status = resp.status_code();
    let source = resp.headers().clone();
    let (_, body) = resp.into_parts();
    rebuild(status, &source, body)
}

/// Applies `edit` to `resp`'s headers, copying the response first only if they are immutable
/// (fetched from elsewhere).
pub fn edit_headers(resp: Response, edit: impl Fn(&Headers) -> Result<()>) -> Result<Response> {
    if edit(resp.headers()).is_ok() {
        return Ok(resp);
    }
    let resp = mutable(resp)?;
    edit(resp.headers())?;
    Ok(resp)
}

/// A fresh response with `status`, a copy of `source`'s headers, and `body`.
pub fn rebuild(status: u16, source: &Headers, body: ResponseBody) -> Result<Response> {
    let headers = copy_headers(source)?;
    Ok(Response::builder()
        .with_status(status)
        .with_headers(headers)
        .body(body))
}

/// Reads a response body whole as one `ArrayBuffer`, then copies it into wasm memory at once.
/// `Response::bytes` gathers it chunk by chunk into a growing `Vec` across awaits: with many
/// readers catching up at once, each would hold a page or two of wasm memory while it waits,
/// and wasm memory never shrinks.
pub async fn response_bytes(resp: &Response) -> Result<Vec<u8>> {
    match resp.body() {
        ResponseBody::Stream(stream) => {
            let whole = web_sys::Response::new_with_opt_readable_stream(Some(stream))?;
            let buffer = wasm_bindgen_futures::JsFuture::from(whole.array_buffer()?).await?;
            Ok(js_sys::Uint8Array::new(&buffer).to_vec())
        }
        ResponseBody::Body(bytes) => Ok(bytes.clone()),
        ResponseBody::Empty => Ok(Vec::new()),
    }
}

/// `work`'s output, or `None` if `ms` pass first (`work` is then dropped).
pub async fn within<T>(ms: u64, work: impl std::future::Future<Output = T>) -> Option<T> {
    let timeout = worker::Delay::from(std::time::Duration::from_millis(ms));
    match futures_util::future::select(std::pin::pin!(work), timeout).await {
        futures_util::future::Either::Left((out, _)) => Some(out),
        futures_util::future::Either::Right(_) => None,
    }
}

/// All values of a query parameter, decoded.
pub fn query_values(url: &worker::Url, name: &str) -> Vec<String> {
    url.query_pairs()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The single value of a query parameter (the first, if repeated).
pub fn query_value(url: &worker::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
