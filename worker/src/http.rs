//! Small HTTP helpers shared by the edge and the Durable Object: errors, headers, bodies, time.

use edgestream::headers as h;
use edgestream::ProtocolError;
use wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::web_sys;
use worker::{Headers, Request, Response, ResponseBody, Result};

use crate::intake::Held;

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

/// A short plain-text response.
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

/// How much of a refused streamed body is read and thrown away before the refusal is sent.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Why a request body was not read.
#[derive(Debug)]
pub enum BodyRefusal {
    /// Larger than `max` (413).
    TooLarge(ProtocolError),
    /// The isolate holds as many bodies as it may ([`Held`]): 503 with `Retry-After`.
    Busy,
    /// Malformed on the wire (a bad chunked encoding) or cut off by its client: 400, since
    /// the same request sent again fails the same way.
    Unreadable,
    /// Nothing arrived for the body's idle time (`BODY_IDLE_TIMEOUT_MS`): 408.
    Stalled,
}

impl BodyRefusal {
    /// The response that refuses the request.
    pub fn response(&self) -> Result<Response> {
        match self {
            BodyRefusal::TooLarge(e) => error(e),
            BodyRefusal::Busy => unavailable("too many large writes in progress; retry"),
            BodyRefusal::Unreadable => text(400, "the request body could not be read"),
            BodyRefusal::Stalled => text(408, "the request body stopped arriving"),
        }
    }
}

/// A declared body up to this size is reserved whole and read in one call: one wait instead
/// of one per chunk, which matters for small appends when the event loop is busy. A larger one
/// is counted as its bytes arrive, so a client that declares a large body and sends it slowly
/// holds only what it has sent.
const READ_WHOLE_BYTES: u64 = crate::intake::SMALL_BODY_BYTES;

/// Reads a request body completely, refusing it as soon as it grows past `max` bytes, so a
/// huge or endless body cannot exhaust the isolate's memory, or as soon as holding it would
/// take the bodies the isolate holds past their budget (`held` keeps its share until dropped),
/// or once nothing of it arrives for `idle_ms`, so a paused upload gives its share back.
pub async fn read_body(
    req: &mut Request,
    max: u64,
    held: &mut Held,
    idle_ms: u64,
) -> Result<std::result::Result<Vec<u8>, BodyRefusal>> {
    let declared =
        header(req.headers(), h::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max {
            return Ok(Err(BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge {
                limit: max,
            })));
        }
        if len <= READ_WHOLE_BYTES && held.grow(len) {
            return Ok(match whole_body(req.inner(), idle_ms).await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => {
                    held.release();
                    Err(BodyRefusal::Stalled)
                }
                Err(e) => Err(unreadable(&e, held)),
            });
        }
    }
    let Some(stream) = req.inner().body() else {
        // No body at all.
        return Ok(Ok(Vec::new()));
    };
    let reader: web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    // The chunks stay in JS until the end, so wasm memory takes one copy of the exact size.
    let mut chunks: Vec<js_sys::Uint8Array> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let refusal = match within(idle_ms, next_chunk(&reader)).await {
            Some(Ok(Some(chunk))) => {
                let len = u64::from(chunk.length());
                total += len;
                if total > max {
                    BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge { limit: max })
                } else if !held.grow(len) {
                    BodyRefusal::Busy
                } else {
                    chunks.push(chunk);
                    continue;
                }
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => return Ok(Err(unreadable(&e, held))),
            None => BodyRefusal::Stalled,
        };
        drop(chunks);
        held.release();
        if matches!(refusal, BodyRefusal::Stalled) {
            let _ = reader.cancel();
        } else {
            // Answering before the body has been read leaves the upload half sent: the client
            // may see its connection reset instead of the answer, and a proxy in front of us may
            // wedge its keep-alive connection. Discard the rest, up to a bound, so the answer
            // arrives.
            discard(&reader, total, idle_ms).await;
        }
        return Ok(Err(refusal));
    }
    // `total <= max`, which a wasm allocation can hold.
    let mut body = vec![0u8; total as usize];
    let mut at = 0;
    for chunk in &chunks {
        let len = chunk.length() as usize;
        chunk.copy_to(&mut body[at..at + len]);
        at += len;
    }
    Ok(Ok(body))
}

#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "export function bodyWithin(req, ms) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, ms, null);
        req.arrayBuffer().then(
            (buffer) => {
                clearTimeout(timer);
                resolve(new Uint8Array(buffer));
            },
            (e) => {
                clearTimeout(timer);
                reject(e);
            },
        );
    });
}")]
extern "C" {
    #[wasm_bindgen(catch, js_name = bodyWithin)]
    fn body_within(
        req: &web_sys::Request,
        ms: f64,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
}

/// A request's whole body, or `None` if it has not all arrived within `idle_ms`. The wait, the
/// timer and the copy out of the runtime's buffer are one call from Rust, instead of a future
/// racing a [`worker::Delay`] (a wasm closure, a timer set and cleared through the glue, and
/// the array buffer wrapped in a second call).
async fn whole_body(req: &web_sys::Request, idle_ms: u64) -> Result<Option<Vec<u8>>> {
    let read = body_within(req, idle_ms as f64)?;
    let body = wasm_bindgen_futures::JsFuture::from(read).await?;
    if body.is_null() {
        return Ok(None);
    }
    Ok(Some(body.unchecked_into::<js_sys::Uint8Array>().to_vec()))
}

/// A body that failed to arrive: logged, and its share of the budget given back.
fn unreadable(e: &worker::Error, held: &mut Held) -> BodyRefusal {
    worker::console_warn!("request body unreadable: {e}");
    held.release();
    BodyRefusal::Unreadable
}

/// The next chunk of a body, or `None` at its end. A body cut off by its client is an error,
/// never an end, so a part of an append is never taken for all of it.
async fn next_chunk(
    reader: &web_sys::ReadableStreamDefaultReader,
) -> Result<Option<js_sys::Uint8Array>> {
    let read = wasm_bindgen_futures::JsFuture::from(reader.read()).await?;
    let done = js_sys::Reflect::get(&read, &JsValue::from_str("done"))?;
    if done.as_bool() != Some(false) {
        return Ok(None);
    }
    let value = js_sys::Reflect::get(&read, &JsValue::from_str("value"))?;
    value
        .dyn_into::<js_sys::Uint8Array>()
        .map(Some)
        .map_err(|_| worker::Error::RustError("request body chunk is not bytes".into()))
}

/// Reads the rest of a body and throws it away, up to [`DRAIN_LIMIT`] bytes in all, until it
/// ends or pauses for `idle_ms`.
async fn discard(reader: &web_sys::ReadableStreamDefaultReader, mut discarded: u64, idle_ms: u64) {
    while discarded < DRAIN_LIMIT {
        match within(idle_ms, next_chunk(reader)).await {
            Some(Ok(Some(chunk))) => discarded += u64::from(chunk.length()),
            _ => break,
        }
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
