//! One request to the server: URL and headers built fresh each time (so header and parameter
//! functions can refresh tokens), sent with `fetch`, retried with backoff when the failure is
//! transient, and turned into a typed error when it is not.

use alloc::{string::String, vec, vec::Vec};
use edgestream::headers;
use js_sys::{Array, Object};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortController, AbortSignal, Response};

use crate::backoff::{self, RetryPolicy};
use crate::{error, js};

/// Caller-supplied headers and query parameters: an object whose values are strings or
/// (async) functions, or a function returning such an object. Evaluated before every request.
/// `fetch` is the caller's `fetch` (a service binding's, a test double, a proxy), if any.
#[derive(Clone, Default)]
pub struct Dynamic {
    pub headers: JsValue,
    pub params: JsValue,
    pub fetch: JsValue,
}

impl Dynamic {
    pub fn from_options(options: &JsValue) -> Dynamic {
        Dynamic {
            headers: js::get(options, "headers"),
            params: js::get(options, "params"),
            fetch: js::get(options, "fetch"),
        }
    }
}

/// Evaluates a header or parameter map (`what`: "headers" or "params") to name/value pairs.
/// Values that are `undefined` or `null` are left out, so a function can decide per request
/// whether to send a header; a value that is not a string, number or boolean is refused, naming
/// it, rather than sent as `[object Object]`.
///
/// A function of the caller's whose promise rejects (a token service that is down) fails with
/// [`Failure::Unsent`], which is retried as a network failure is; one that throws, or a value
/// that is not allowed, fails with [`Failure::Fatal`].
pub async fn resolve_map(source: &JsValue, what: &str) -> Result<Vec<(String, String)>, Failure> {
    let mut value = call_given(source).await?;
    let mut out = Vec::new();
    if value.is_undefined() || value.is_null() {
        return Ok(out);
    }
    if !value.is_object() {
        return Err(Failure::Fatal(error::invalid(
            "headers and params must be objects",
        )));
    }
    // `Headers`, a `Map` or `URLSearchParams` (whose own properties are not its entries, so
    // `Object.entries` would silently drop them all), or an array of `[name, value]` pairs (as
    // `fetch` takes headers): its pairs. Anything else iterable must give pairs too.
    let Some(pairs) = js::es_pairs(&value) else {
        return Err(Failure::Fatal(error::invalid(&error::msg(&[
            what,
            " given as an array (or another iterable) must hold [name, value] pairs",
        ]))));
    };
    for pair in pairs.iter() {
        let pair: Array = pair.unchecked_into();
        let name = js::to_text(&pair.get(0));
        value = call_given(&pair.get(1)).await?;
        if value.is_undefined() || value.is_null() {
            continue;
        }
        if value.as_string().is_none() && value.as_f64().is_none() && value.as_bool().is_none() {
            return Err(Failure::Fatal(error::invalid(&error::msg(&[
                what,
                ".",
                &name,
                " must be a string, number or boolean (or a function returning one)",
            ]))));
        }
        out.push((name, js::to_text(&value)));
    }
    Ok(out)
}

/// A value the caller gave, or what it returns or resolves to if it is a function. A function
/// that throws is a bug of the caller's, refused at once; a promise that rejects (a token
/// service that is down) is a failure to try again.
async fn call_given(value: &JsValue) -> Result<JsValue, Failure> {
    let Some(f) = value.dyn_ref::<js_sys::Function>() else {
        return Ok(value.clone());
    };
    let called = f.call0(&JsValue::UNDEFINED).map_err(|e| {
        let why = js::get_string(&e, "message").unwrap_or_else(|| js::to_text(&e));
        let msg = error::msg(&["a headers or params function threw: ", &why]);
        Failure::Fatal(
            error::with(error::new(error::INVALID_ARGUMENT, &msg, None), "cause", e).into(),
        )
    })?;
    js::settle(called).await.map_err(Failure::Unsent)
}

/// `base` with `params` appended as a query string (keeping any query `base` already has), in
/// order of name: PROTOCOL §10.1 asks clients to, so that every client's URL for one read of a
/// stream is the same CDN cache key. Parameters of one name keep their order.
pub fn with_query(base: &str, params: &mut [(String, String)]) -> String {
    sort_by_name(params);
    let (without_fragment, fragment) = base.split_once('#').unwrap_or((base, ""));
    let mut url = String::from(without_fragment);
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in params.iter() {
        url.push(sep);
        url.push_str(&String::from(js_sys::encode_uri_component(k)));
        url.push('=');
        url.push_str(&String::from(js_sys::encode_uri_component(v)));
        sep = '&';
    }
    if base.contains('#') {
        url.push('#');
    }
    url.push_str(fragment);
    url
}

/// Sorts `params` by name, stably, in place (an insertion sort: a handful of parameters, and
/// less code in the wasm than the standard library's sort).
fn sort_by_name(params: &mut [(String, String)]) {
    for i in 1..params.len() {
        let mut j = i;
        while j > 0 && params[j - 1].0 > params[j].0 {
            params.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// `text` as an error message may show it: the value of a query parameter named as one of the
/// caller's `params`, or whose name looks like a credential's (`token`, `access_token`, `api_key`,
/// `X-Amz-Signature`, `sig`, `password`, …), is `***`, and so is any of the caller's header and
/// param values (of 8 bytes or more) wherever it appears (an error body that echoes the request).
#[inline(never)]
pub fn redact(text: &str, params: &[(String, String)], headers: &[(String, String)]) -> String {
    js::es_redact(
        text,
        &js::pairs_to_object(params),
        &js::pairs_to_object(headers),
    )
}

/// Whether `text` contains `word`, ignoring ASCII case (bytewise: no `str` searcher in the wasm).
fn mentions(text: &str, word: &[u8]) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// What to send.
pub struct Request<'a> {
    pub method: &'static str,
    pub url: &'a str,
    /// Protocol query parameters (`offset`, `live`, `cursor`); the caller's come after them.
    pub query: Vec<(String, String)>,
    /// Protocol headers; the caller's dynamic headers are added first and these win.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<JsValue>,
    pub dynamic: &'a Dynamic,
    /// An attempt without a response this long (ms; 0: no limit) is aborted and fails as a
    /// lost connection does: a connection can die without closing, and its request then hangs.
    pub timeout_ms: f64,
    /// Called (if a function) when an attempt failed and the request waits to be sent again,
    /// so that a producer can say it is retrying, as a reader does; a promise it returns is
    /// waited for instead of the backoff.
    pub on_retry: JsValue,
}

impl<'a> Request<'a> {
    /// A read of `url` with the protocol's `query`, no headers of the protocol's own.
    pub fn get(url: &'a str, query: Vec<(String, String)>, dynamic: &'a Dynamic) -> Self {
        Request {
            method: "GET",
            url,
            query,
            headers: Vec::new(),
            body: None,
            dynamic,
            timeout_ms: 0.0,
            on_retry: JsValue::UNDEFINED,
        }
    }
}

/// Query parameters the client sets itself; a caller's parameter of the same name is dropped.
const RESERVED_PARAMS: [&str; 4] = ["offset", "live", "cursor", "incarnation"];

/// Drops the caller's parameters that the client sets itself.
pub fn drop_reserved(params: &mut Vec<(String, String)>) {
    params.retain(|(k, _)| !RESERVED_PARAMS.contains(&k.as_str()));
}

/// A response with its status, and the headers and parameters actually sent (for diagnostics).
pub struct Sent {
    pub response: Response,
    pub status: u16,
    pub headers_sent: Vec<(String, String)>,
    pub params_sent: Vec<(String, String)>,
    /// The request went out more than once: an earlier attempt may have landed.
    pub replayed: bool,
}

/// Why a single attempt failed.
pub enum Failure {
    /// The caller cancelled (or the tab was hidden and the request was paused).
    Aborted,
    /// No response: connection refused, reset, DNS... (the `NETWORK_ERROR` to give up with).
    Network(JsValue),
    /// Nothing was sent: a headers or params function's promise rejected. Retried like a
    /// network failure, but whatever the method, as nothing can have landed.
    Unsent(JsValue),
    /// An error before anything was sent (bad arguments, a headers function that throws).
    Fatal(JsValue),
}

/// A caller's headers or params function failed for a request to `url`: the `NETWORK_ERROR`
/// to give up with, naming it, with its error as `cause`.
pub fn unsent_error(method: &str, url: &str, cause: &JsValue) -> JsValue {
    failed(
        method,
        url,
        ": a headers or params function failed: ",
        cause,
        &[],
        &[],
    )
    .into()
}

/// Sends one attempt of `req`, aborting when `signal` does.
pub async fn send_once(req: &Request<'_>, signal: Option<&AbortSignal>) -> Result<Sent, Failure> {
    let named = |f: Failure| match f {
        Failure::Unsent(e) => Failure::Unsent(unsent_error(req.method, req.url, &e)),
        other => other,
    };
    let mut dynamic_headers = resolve_map(&req.dynamic.headers, "headers")
        .await
        .map_err(named)?;
    let mut params = resolve_map(&req.dynamic.params, "params")
        .await
        .map_err(named)?;
    // What is reported as sent is what was sent: the caller's reserved parameters are dropped,
    // and a protocol header replaces the caller's of the same name, in any case.
    drop_reserved(&mut params);
    dynamic_headers.retain(|(k, _)| !req.headers.iter().any(|(p, _)| p.eq_ignore_ascii_case(k)));
    let mut query = req.query.clone();
    query.extend_from_slice(&params);
    let url = with_query(req.url, &mut query);
    let header_obj = web_sys::Headers::new().map_err(Failure::Fatal)?;
    for (k, v) in dynamic_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(req.headers.iter().map(|(k, v)| (*k, v)))
    {
        header_obj.set(k, v).map_err(|_| {
            Failure::Fatal(error::invalid(
                "headers: a name or value is not valid in HTTP",
            ))
        })?;
    }
    let init = Object::new();
    js::set(&init, "method", req.method);
    js::set(&init, "headers", header_obj);
    if let Some(body) = &req.body {
        js::set(&init, "body", body.clone());
    }
    if let Some(signal) = signal {
        js::set(&init, "signal", signal.clone());
    }
    let network = |e: JsValue| {
        let e = network_error(req.method, req.url, &e, &params, &dynamic_headers);
        Failure::Network(e.into())
    };
    let promise = js::es_fetch(&req.dynamic.fetch, &url, &init, req.timeout_ms).map_err(network)?;
    match js::wait(promise).await {
        Ok(value) => {
            let response: Response = value.unchecked_into();
            let status = response.status();
            Ok(Sent {
                response,
                status,
                headers_sent: dynamic_headers,
                params_sent: params,
                replayed: false,
            })
        }
        Err(e) => {
            if signal.is_some_and(|s| s.aborted()) || error::is_abort(&e) {
                Err(Failure::Aborted)
            } else {
                Err(network(e))
            }
        }
    }
}

/// Sends `req`, retrying network failures and retryable statuses per `policy`. Returns the first
/// response that is not retryable (which may be an error status for the caller to interpret).
pub async fn send(
    req: &Request<'_>,
    policy: &RetryPolicy,
    signal: Option<&AbortSignal>,
) -> Result<Sent, JsValue> {
    let mut attempt: u32 = 0;
    // Whether an earlier attempt went out (a retryable status, a failed connection): not after
    // a headers function failed, when nothing did.
    let mut sent_before = false;
    // Whether a first failed connection may still go again at once (see below).
    let mut quick = true;
    loop {
        // Checked before every attempt, a retry after a status as after a failed connection:
        // a `fetch` that does not watch the signal must not keep a cancelled request going.
        if signal.is_some_and(|s| s.aborted()) {
            return Err(aborted());
        }
        let failure = match send_once(req, signal).await {
            Ok(sent) if !backoff::is_retryable_status(sent.status) => {
                return Ok(Sent {
                    replayed: sent_before,
                    ..sent
                })
            }
            Ok(sent) => {
                if attempt >= policy.max_retries {
                    return Err(status_error(req.method, req.url, &sent).await);
                }
                sent_before = true;
                let ra = header(&sent.response, headers::RETRY_AFTER)
                    .and_then(|v| backoff::retry_after_ms(&v, js_sys::Date::now()));
                attempt += 1;
                release_body(&sent.response);
                retrying(
                    req,
                    policy.delay_ms(attempt, js_sys::Math::random(), ra),
                    signal,
                )
                .await;
                continue;
            }
            Err(f) => f,
        };
        let unsent = matches!(failure, Failure::Unsent(_));
        match failure {
            Failure::Aborted => return Err(aborted()),
            Failure::Fatal(e) => return Err(e),
            Failure::Network(e) | Failure::Unsent(e) => {
                // A POST may have landed before its connection failed: sent again, it could land
                // twice. Only a producer's, which the server deduplicates, is sent again, and a
                // close without data: closing a closed stream that way is answered 204.
                let has = |name: &str| req.headers.iter().any(|(k, _)| *k == name);
                let replayable = unsent
                    || req.method != "POST"
                    || has(headers::PRODUCER_ID)
                    || (req.body.is_none() && has(headers::STREAM_CLOSED));
                // The request's first connection to fail before any answer goes again once, at
                // once, counted as no retry: a keep-alive connection that the server closed as
                // the request went out fails so (workerd closes an idle one after 5 s, Node's
                // `fetch` reuses one for 4 s), though the server never saw the request.
                // `on_retry` is told, so that a producer knows the batch may have landed. Not an
                // attempt unanswered for `timeout_ms`: that one waits its backoff.
                let fresh = !unsent
                    && js::get(&js::get(&e, "cause"), "late").is_undefined()
                    && core::mem::take(&mut quick);
                if !replayable || (attempt >= policy.max_retries && !fresh) {
                    return Err(e);
                }
                sent_before |= !unsent;
                let delay_ms = if fresh {
                    0.0
                } else {
                    attempt += 1;
                    policy.delay_ms(attempt, js_sys::Math::random(), None)
                };
                retrying(req, delay_ms, signal).await;
            }
        }
    }
}

/// Tells `req.on_retry` that `req` is to be retried, and waits before it is: for the promise
/// `on_retry` returned, if it did (a producer's batch waiting for another to get through an
/// outage), else `delay_ms`.
async fn retrying(req: &Request<'_>, delay_ms: f64, signal: Option<&AbortSignal>) {
    let _ = js::wait(js::es_retry(&req.on_retry, delay_ms, signal)).await;
}

/// The error for a cancelled operation.
pub fn aborted() -> JsValue {
    error::new(error::ABORTED, "the operation was cancelled", None).into()
}

/// A `NETWORK_ERROR` naming what failed and why, with the caller's `params` and `headers` (as
/// sent) hidden (see [`redact`]).
pub fn network_error(
    method: &str,
    url: &str,
    cause: &JsValue,
    params: &[(String, String)],
    headers: &[(String, String)],
) -> js_sys::Error {
    failed(method, url, ": network error: ", cause, params, headers)
}

/// A `NETWORK_ERROR` for `method url`, saying `what` and why, with `cause`.
fn failed(
    method: &str,
    url: &str,
    what: &str,
    cause: &JsValue,
    params: &[(String, String)],
    headers: &[(String, String)],
) -> js_sys::Error {
    let why = js::get_string(cause, "message").unwrap_or_else(|| js::to_text(cause));
    let detail = js::get(cause, "cause");
    let detail = js::get_string(&detail, "message")
        .or_else(|| js::get_string(&detail, "code"))
        .unwrap_or_default();
    let mut parts = vec![method, " ", url, what, why.as_str()];
    if !detail.is_empty() {
        parts.extend_from_slice(&[" (", detail.as_str(), ")"]);
    }
    let text = redact(&error::msg(&parts), params, headers);
    error::with(
        error::new(error::NETWORK_ERROR, &text, None),
        "cause",
        cause.clone(),
    )
}

/// A response header by (lowercase) name.
pub fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).ok().flatten()
}

/// A body up to this size is read to its end rather than cancelled (see [`release_body`]).
const DRAIN_LIMIT: u32 = 64 * 1024;

/// Releases a body that should be short (an answer to a write or a HEAD, a long-poll's 204, an
/// error's text) and that we will not read: it is read to its end in the background, and
/// cancelled once past [`DRAIN_LIMIT`] bytes (or at once if its length says so). A cancelled
/// or unread body, even an empty one, is an aborted request to a browser (`net::ERR_ABORTED` in
/// its network log) and can cost the connection; and a body the server compresses has no length
/// to tell that it is empty.
pub fn release_body(response: &Response) {
    js::es_release(response, DRAIN_LIMIT);
}

/// Cancels a body that may be long or never end (a catch-up page, an event stream).
pub fn cancel_body(response: &Response) -> Option<()> {
    let body = response.body()?;
    js::es_quiet(&body.cancel());
    Some(())
}

/// The body as text, or empty when it cannot be read.
pub async fn text(response: &Response) -> String {
    match response.text() {
        Ok(p) => js::wait(p)
            .await
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Turns an error status into a typed error. 409s are told apart by their headers: a closed
/// stream, a producer sequence gap, or a plain conflict.
pub async fn status_error(method: &str, url: &str, sent: &Sent) -> JsValue {
    let (response, status) = (&sent.response, sent.status);
    let body = text(response).await;
    let body = body.trim();
    let short: String = body.chars().take(200).collect();
    let status_text = crate::js::u64_text(u64::from(status));
    let message = |what: &str| {
        let mut parts = vec![
            method,
            " ",
            url,
            ": ",
            what,
            " (",
            status_text.as_str(),
            ")",
        ];
        if !short.is_empty() {
            parts.extend_from_slice(&[": ", short.as_str()]);
        }
        redact(&error::msg(&parts), &sent.params_sent, &sent.headers_sent)
    };
    let err = match status {
        // A PUT creates: its 404 is a fork's source that is not there, unless the URL is not a
        // stream server's at all.
        404 if method == "PUT" => error::new(
            error::NOT_FOUND,
            &message("fork source not found (or no stream server at this URL)"),
            Some(status),
        ),
        404 => error::new(error::NOT_FOUND, &message("stream not found"), Some(status)),
        410 => error::new(error::GONE, &message("stream was deleted"), Some(status)),
        400 => {
            // A read's offset, or a fork's (a PUT's only offsets).
            let code = if matches!(method, "GET" | "PUT") && mentions(&short, b"offset") {
                error::INVALID_OFFSET
            } else {
                error::BAD_REQUEST
            };
            error::new(code, &message("bad request"), Some(status))
        }
        401 => error::new(error::UNAUTHORIZED, &message("unauthorized"), Some(status)),
        403 => match header(response, headers::PRODUCER_EPOCH).and_then(|v| parse_int(&v)) {
            Some(epoch) => error::with(
                error::new(
                    error::STALE_EPOCH,
                    &message("producer epoch is stale"),
                    Some(status),
                ),
                "currentEpoch",
                epoch as f64,
            ),
            None => error::new(error::FORBIDDEN, &message("forbidden"), Some(status)),
        },
        409 => {
            let closed = headers::is_true(header(response, headers::STREAM_CLOSED).as_deref());
            let expected =
                header(response, headers::PRODUCER_EXPECTED_SEQ).and_then(|v| parse_int(&v));
            let received =
                header(response, headers::PRODUCER_RECEIVED_SEQ).and_then(|v| parse_int(&v));
            if closed {
                let err = error::new(
                    error::STREAM_CLOSED,
                    &message("stream is closed"),
                    Some(status),
                );
                match header(response, headers::STREAM_NEXT_OFFSET) {
                    Some(o) => error::with(err, "finalOffset", o),
                    None => err,
                }
            } else if let (Some(expected), Some(received)) = (expected, received) {
                let err = error::new(
                    error::SEQUENCE_GAP,
                    &message("producer sequence gap"),
                    Some(status),
                );
                let err = error::with(err, "expectedSeq", expected as f64);
                error::with(err, "receivedSeq", received as f64)
            } else if mentions(&short, b"seq") {
                error::new(
                    error::SEQUENCE_CONFLICT,
                    &message("sequence conflict"),
                    Some(status),
                )
            } else {
                error::new(error::CONFLICT, &message("conflict"), Some(status))
            }
        }
        413 => error::new(
            error::PAYLOAD_TOO_LARGE,
            &message("payload too large"),
            Some(status),
        ),
        423 => {
            let mut err = error::new(error::LEASE_HELD, &message("lease held"), Some(status));
            if let Some(at) = header(response, headers::STREAM_LEASE_EXPIRES_AT) {
                err = error::with(err, "leaseExpiresAt", at);
            }
            // The JS layer makes `retryAfterMs` of `Retry-After` (seconds), the wait as the
            // server counts it: `leaseExpiresAt` is on the server's clock, and a client clock
            // that runs ahead took it as passed, so a standby polled without pause.
            match header(response, headers::RETRY_AFTER) {
                Some(s) => error::with(err, "retryAfter", s),
                None => err,
            }
        }
        _ => error::new(
            error::UNEXPECTED_STATUS,
            &message("unexpected status"),
            Some(status),
        ),
    };
    err.into()
}

/// A producer integer header (0..=2^53-1).
pub fn parse_int(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || t.len() > 16 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<u64>()
        .ok()
        .filter(|&v| v <= headers::MAX_SAFE_INTEGER)
}

/// An `AbortController`, or `None` where the host has none.
pub fn controller() -> Option<AbortController> {
    AbortController::new().ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_int, sort_by_name};
    use alloc::{string::String, vec::Vec};

    #[test]
    fn params_go_in_order_of_name_keeping_the_order_of_one_name() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (String::from(*k), String::from(*v)))
                .collect()
        };
        let mut params = pairs(&[
            ("offset", "o"),
            ("live", "long-poll"),
            ("cursor", "7"),
            ("tag", "b"),
            ("a", "1"),
            ("tag", "a"),
        ]);
        sort_by_name(&mut params);
        let want = pairs(&[
            ("a", "1"),
            ("cursor", "7"),
            ("live", "long-poll"),
            ("offset", "o"),
            ("tag", "b"),
            ("tag", "a"),
        ]);
        assert_eq!(params, want);
        sort_by_name(&mut []);
    }

    #[test]
    fn producer_integers() {
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int(" 42 "), Some(42));
        assert_eq!(parse_int("9007199254740991"), Some(9007199254740991));
        assert_eq!(parse_int("9007199254740992"), None);
        assert_eq!(parse_int("-1"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("1e3"), None);
    }
}
