//! Small HTTP helpers shared by the edge and the Durable Object: errors, headers, bodies, time.

use edgestream::headers as h;
use edgestream::ProtocolError;
use futures_util::StreamExt;
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

/// The total length of the header names and values, measured in JS in three calls rather than
/// by iterating the headers into Rust (a call and two string copies per header). Header values
/// are byte strings, so their length in UTF-16 units is their length in bytes.
pub fn header_bytes(headers: &Headers) -> usize {
    let pairs = js_sys::Array::from(headers.as_ref());
    // Each pair joins as "name,value": one comma per header.
    let joined = pairs.join("").length() as usize;
    joined.saturating_sub(pairs.length() as usize)
}

/// A header's value, treating a runtime error as absent.
pub fn header(headers: &Headers, name: &str) -> Option<String> {
    headers.get(name).ok().flatten()
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
}

impl BodyRefusal {
    /// The response that refuses the request.
    pub fn response(&self) -> Result<Response> {
        match self {
            BodyRefusal::TooLarge(e) => error(e),
            BodyRefusal::Busy => unavailable("too many large writes in progress; retry"),
        }
    }
}

/// Reads a request body completely, refusing it as soon as it grows past `max` bytes, so a
/// huge or endless body cannot exhaust the isolate's memory, or as soon as holding it would
/// take the bodies the isolate holds past their budget (`held` keeps its share until dropped).
pub async fn read_body(
    req: &mut Request,
    max: u64,
    held: &mut Held,
) -> Result<std::result::Result<Vec<u8>, BodyRefusal>> {
    if let Some(len) =
        header(req.headers(), h::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > max {
            return Ok(Err(BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge {
                limit: max,
            })));
        }
        if held.grow(len) {
            // The runtime enforces the declared length, so the body can be read in one call:
            // one wait instead of one per chunk, which matters when the event loop is busy.
            return Ok(Ok(req.bytes().await?));
        }
        // Read and thrown away, not held: a client still sending its body when the answer
        // comes sees its connection reset instead of the 503 it could retry on.
        if let Ok(mut stream) = req.stream() {
            discard(&mut stream, 0).await;
        }
        return Ok(Err(BodyRefusal::Busy));
    }
    let mut body = Vec::new();
    let Ok(mut stream) = req.stream() else {
        // No body at all.
        return Ok(Ok(body));
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let refusal = if (body.len() + chunk.len()) as u64 > max {
            BodyRefusal::TooLarge(ProtocolError::PayloadTooLarge { limit: max })
        } else if !held.grow(chunk.len() as u64) {
            BodyRefusal::Busy
        } else {
            body.extend_from_slice(&chunk);
            continue;
        };
        drop(body);
        // Answering before the body has been read leaves a streamed (chunked) upload half
        // sent, and a proxy in front of us may then wedge the client's keep-alive
        // connection. Discard the rest, up to a bound, so the refusal arrives on a clean one.
        discard(&mut stream, chunk.len() as u64).await;
        return Ok(Err(refusal));
    }
    Ok(Ok(body))
}

/// Reads the rest of a body and throws it away, up to [`DRAIN_LIMIT`] bytes in all.
async fn discard(stream: &mut worker::ByteStream, mut discarded: u64) {
    while discarded < DRAIN_LIMIT {
        match stream.next().await {
            Some(Ok(chunk)) => discarded += chunk.len() as u64,
            _ => break,
        }
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
