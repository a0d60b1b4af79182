//! Single operations on a stream: create (PUT), head (HEAD), append and close (POST), delete.
//! Each resolves to a plain object with what the response said, or rejects with a typed error.

use alloc::{string::String, vec::Vec};
use edgestream::channel::STREAM_CHANNEL;
use edgestream::headers;
use edgestream::offset::OffsetError;
use edgestream::ReadFrom;
use js_sys::{Object, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

use crate::backoff::RetryPolicy;
use crate::http::{self, Dynamic, Request, Sent};
use crate::{error, js};

/// Options every operation takes: `url`, `headers`, `params`, `retry`, `signal`.
struct Common {
    url: String,
    dynamic: Dynamic,
    policy: RetryPolicy,
    signal: Option<web_sys::AbortSignal>,
    /// `timeoutMs`: see [`Request::timeout_ms`]. Set by the producer, whose requests can be
    /// sent again safely.
    timeout_ms: f64,
    /// `onRetry`: see [`Request::on_retry`].
    on_retry: JsValue,
}

impl Common {
    fn from_js(options: &JsValue) -> Result<Common, JsValue> {
        let url = js::get_string(options, "url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| error::invalid("url is required"))?;
        let signal = js::get(options, "signal");
        let signal = if signal.is_undefined() || signal.is_null() {
            None
        } else {
            Some(signal.unchecked_into::<web_sys::AbortSignal>())
        };
        Ok(Common {
            url,
            dynamic: Dynamic::from_options(options),
            policy: RetryPolicy::from_js(&js::get(options, "retry"))?,
            signal,
            timeout_ms: js::get_f64(options, "timeoutMs").unwrap_or(0.0),
            on_retry: js::get(options, "onRetry"),
        })
    }

    async fn send(
        &self,
        method: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Option<JsValue>,
    ) -> Result<Sent, JsValue> {
        let req = Request {
            method,
            url: &self.url,
            query: Vec::new(),
            headers,
            body,
            dynamic: &self.dynamic,
            timeout_ms: self.timeout_ms,
            on_retry: self.on_retry.clone(),
        };
        http::send(&req, &self.policy, self.signal.as_ref()).await
    }
}

fn body_of(options: &JsValue) -> Result<Option<JsValue>, JsValue> {
    let body = js::get(options, "body");
    if body.is_undefined() || body.is_null() {
        return Ok(None);
    }
    if body.is_string()
        || body.is_instance_of::<js_sys::Uint8Array>()
        || body.is_instance_of::<js_sys::ArrayBuffer>()
    {
        return Ok(Some(body));
    }
    if js_sys::ArrayBuffer::is_view(&body) {
        return Ok(js::body_bytes(&body).map(|b| js::bytes_to_js(&b).into()));
    }
    Err(error::invalid(
        "body must be a string, Uint8Array or ArrayBuffer",
    ))
}

fn header_text(sent: &Sent, name: &str) -> Option<String> {
    http::header(&sent.response, name)
}

/// `replayed: true` when the request went out more than once: an earlier attempt may have
/// landed, and this answer is to the repeat.
fn replayed(out: &Object, sent: &Sent) {
    if sent.replayed {
        js::set(out, "replayed", true);
    }
}

fn sent_info(out: &Object, sent: &Sent) {
    js::set(out, "headersSent", js::pairs_to_object(&sent.headers_sent));
    js::set(out, "paramsSent", js::pairs_to_object(&sent.params_sent));
}

/// The fork headers of a create: `forkedFrom` (the source's path on the server, which the JS
/// layer resolves from the URL or path it was given and checks), `forkOffset` (an offset a server issued) and `forkSubOffset` (an
/// integer). Either of the last two without `forkedFrom` is refused, as the server would.
fn fork_headers(options: &JsValue, hdrs: &mut Vec<(&'static str, String)>) -> Result<(), JsValue> {
    let from = js::opt(options, "forkedFrom", "string")?.and_then(|v| v.as_string());
    let offset = js::opt(options, "forkOffset", "string")?.and_then(|v| v.as_string());
    let sub = js::get(options, "forkSubOffset");
    let sub = if sub.is_undefined() || sub.is_null() {
        None
    } else {
        Some(safe_integer(&sub, "forkSubOffset")?)
    };
    let Some(from) = from else {
        if offset.is_some() || sub.is_some() {
            return Err(error::invalid(
                "forkOffset and forkSubOffset need forkedFrom",
            ));
        }
        return Ok(());
    };
    hdrs.push((headers::STREAM_FORKED_FROM, from));
    if let Some(offset) = offset {
        // An offset the source's server issued: `-1` and `now` are read positions, not points
        // in a stream (omit forkOffset to fork at the source's tail).
        match ReadFrom::parse(&offset) {
            Ok(ReadFrom::At(_)) | Err(OffsetError::Unrecognised) => {}
            _ => {
                return Err(error::invalid(
                    "forkOffset must be an offset the server issued (not -1 or now)",
                ))
            }
        }
        hdrs.push((headers::STREAM_FORK_OFFSET, offset));
    }
    if let Some(sub) = sub {
        hdrs.push((headers::STREAM_FORK_SUB_OFFSET, js::u64_text(sub)));
    }
    Ok(())
}

/// PUT: creates the stream, or confirms it exists with the same configuration.
/// Options: `contentType`, `ttlSeconds`, `expiresAt`, `closed`, `channel`, `body`, and for a
/// fork `forkedFrom`, `forkOffset`, `forkSubOffset`.
#[wasm_bindgen(js_name = createStream)]
pub fn create_stream(options: JsValue) -> Promise {
    future_to_promise(async move {
        let common = Common::from_js(&options)?;
        let mut hdrs = Vec::new();
        if let Some(ct) = js::opt(&options, "contentType", "string")?.and_then(|v| v.as_string()) {
            hdrs.push((headers::CONTENT_TYPE, ct));
        }
        if let Some(ttl) = js::opt(&options, "ttlSeconds", "number")?.and_then(|v| v.as_f64()) {
            if !js::whole_up_to(ttl, headers::MAX_TTL_SECONDS as f64) {
                return Err(error::invalid(
                    "ttlSeconds must be a whole number of seconds >= 0",
                ));
            }
            hdrs.push((headers::STREAM_TTL, js::u64_text(ttl as u64)));
        }
        if let Some(at) = js::opt(&options, "expiresAt", "string")?.and_then(|v| v.as_string()) {
            // The server validates the timestamp (and says why it refuses one).
            hdrs.push((headers::STREAM_EXPIRES_AT, at));
        }
        if js::opt(&options, "closed", "boolean")?.and_then(|v| v.as_bool()) == Some(true) {
            hdrs.push((headers::STREAM_CLOSED, String::from("true")));
        }
        if js::opt(&options, "channel", "boolean")?.and_then(|v| v.as_bool()) == Some(true) {
            hdrs.push((STREAM_CHANNEL, String::from("true")));
        }
        fork_headers(&options, &mut hdrs)?;
        let body = body_of(&options)?;
        let sent = common.send("PUT", hdrs, body).await?;
        if sent.status != 200 && sent.status != 201 {
            return Err(http::status_error("PUT", &common.url, &sent).await);
        }
        let out = described(&sent);
        // A 200 after an earlier attempt that may have landed cannot tell whether that attempt
        // created the stream: `created` stays false, and `replayed` says it is not known.
        js::set(&out, "created", sent.status == 201);
        replayed(&out, &sent);
        http::release_body(&sent.response);
        Ok(out.into())
    })
}

/// HEAD: the stream's tail offset, type, expiry and whether it is closed.
#[wasm_bindgen(js_name = headStream)]
pub fn head_stream(options: JsValue) -> Promise {
    future_to_promise(async move {
        let common = Common::from_js(&options)?;
        let sent = common.send("HEAD", Vec::new(), None).await?;
        if sent.status != 200 {
            return Err(http::status_error("HEAD", &common.url, &sent).await);
        }
        let out = described(&sent);
        if let Some(ttl) =
            header_text(&sent, headers::STREAM_TTL).and_then(|t| headers::parse_decimal(t.trim()))
        {
            js::set(&out, "ttlSeconds", ttl as f64);
        }
        if let Some(at) = header_text(&sent, headers::STREAM_EXPIRES_AT) {
            js::set(&out, "expiresAt", at);
        }
        if let Some(etag) = header_text(&sent, headers::ETAG) {
            js::set(&out, "etag", etag);
        }
        http::release_body(&sent.response);
        Ok(out.into())
    })
}

/// What a PUT's or HEAD's answer says of the stream: its status, tail offset, type and whether
/// it is closed.
fn described(sent: &Sent) -> Object {
    let out = Object::new();
    js::set(&out, "status", sent.status);
    if let Some(o) = header_text(sent, headers::STREAM_NEXT_OFFSET) {
        js::set(&out, "offset", o);
    }
    if let Some(ct) = header_text(sent, headers::CONTENT_TYPE) {
        js::set(&out, "contentType", ct);
    }
    js::set(
        &out,
        "closed",
        headers::is_true(header_text(sent, headers::STREAM_CLOSED).as_deref()),
    );
    out
}

/// DELETE.
#[wasm_bindgen(js_name = deleteStream)]
pub fn delete_stream(options: JsValue) -> Promise {
    future_to_promise(async move {
        let common = Common::from_js(&options)?;
        let sent = common.send("DELETE", Vec::new(), None).await?;
        // Sent more than once, a 404 (or a 410: soft-deleted, as a stream with forks is) is
        // taken as an earlier attempt's success, whose answer was lost: the client cannot tell
        // it from a stream that was not there, and either way it is gone.
        let gone = sent.replayed && matches!(sent.status, 404 | 410);
        if !(200..300).contains(&sent.status) && !gone {
            return Err(http::status_error("DELETE", &common.url, &sent).await);
        }
        let out = Object::new();
        js::set(&out, "status", sent.status);
        replayed(&out, &sent);
        http::release_body(&sent.response);
        Ok(out.into())
    })
}

/// An idempotent producer's identity on one request.
struct ProducerTuple {
    id: String,
    epoch: u64,
    seq: u64,
}

fn safe_integer(value: &JsValue, what: &str) -> Result<u64, JsValue> {
    match value.as_f64() {
        Some(n) if js::whole_up_to(n, headers::MAX_SAFE_INTEGER as f64) => Ok(n as u64),
        _ => Err(error::invalid(&error::msg(&[
            what,
            " must be an integer from 0 to 2^53-1",
        ]))),
    }
}

fn producer_of(options: &JsValue) -> Result<Option<ProducerTuple>, JsValue> {
    let p = js::get(options, "producer");
    if p.is_undefined() || p.is_null() {
        return Ok(None);
    }
    let id = js::get_string(&p, "id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| error::invalid("producer.id must be a non-empty string"))?;
    Ok(Some(ProducerTuple {
        id,
        epoch: safe_integer(&js::get(&p, "epoch"), "producer.epoch")?,
        seq: safe_integer(&js::get(&p, "seq"), "producer.seq")?,
    }))
}

/// POST: appends `body`; with `close: true` also closes the stream (the body may then be empty).
/// Options: `body`, `contentType`, `seq` (`Stream-Seq`), `close`, `producer: { id, epoch, seq }`,
/// `leaseTtl` (the writer lease, for a producer; a request with it may have no body).
///
/// Resolves to `{ status, offset, closed, duplicate, producerEpoch, producerSeq, leaseExpiresAt }`.
/// A producer append the server already has (204) is a success with `duplicate: true`. A request
/// without data never reports a duplicate: servers answer every such request with 204, so it
/// says nothing.
#[wasm_bindgen(js_name = appendStream)]
pub fn append_stream(options: JsValue) -> Promise {
    future_to_promise(async move {
        let common = Common::from_js(&options)?;
        let close = js::opt(&options, "close", "boolean")?.and_then(|v| v.as_bool()) == Some(true);
        let body = body_of(&options)?;
        let empty = match &body {
            None => true,
            Some(b) => js::body_bytes(b).is_none_or(|v| v.is_empty()),
        };
        let mut hdrs = Vec::new();
        if !(empty && close) {
            let ct = js::opt(&options, "contentType", "string")?
                .and_then(|v| v.as_string())
                .unwrap_or_else(|| String::from(headers::DEFAULT_CONTENT_TYPE));
            hdrs.push((headers::CONTENT_TYPE, ct));
        }
        let seq = js::get(&options, "seq");
        if !seq.is_undefined() && !seq.is_null() {
            let seq = js::to_text(&seq);
            headers::parse_stream_seq(&seq).map_err(|e| error::invalid(e.message()))?;
            hdrs.push((headers::STREAM_SEQ, seq));
        }
        let producer = producer_of(&options)?;
        if let Some(p) = &producer {
            hdrs.push((headers::PRODUCER_ID, p.id.clone()));
            hdrs.push((headers::PRODUCER_EPOCH, js::u64_text(p.epoch)));
            hdrs.push((headers::PRODUCER_SEQ, js::u64_text(p.seq)));
        }
        if close {
            hdrs.push((headers::STREAM_CLOSED, String::from("true")));
        }
        // Checked by the producer (`lease.ttlSeconds`); the server refuses anything else.
        if let Some(ttl) = js::get(&options, "leaseTtl").as_f64() {
            hdrs.push((headers::STREAM_LEASE_TTL, js::u64_text(ttl as u64)));
        }
        // An empty append is sent as is: the server refuses it (400) with its own words.
        let body = if empty && close {
            None
        } else {
            body.or_else(|| Some(JsValue::from_str("")))
        };
        let sent = common.send("POST", hdrs, body).await?;
        let status = sent.status;
        let closed = headers::is_true(header_text(&sent, headers::STREAM_CLOSED).as_deref());
        if !(200..300).contains(&status) {
            return Err(http::status_error("POST", &common.url, &sent).await);
        }
        let out = Object::new();
        js::set(&out, "status", status);
        if let Some(o) = header_text(&sent, headers::STREAM_NEXT_OFFSET) {
            js::set(&out, "offset", o);
        }
        js::set(&out, "closed", closed);
        // A request without data (a close or a lease alone) is answered 204 however often it is
        // sent, so only a data append can be reported as a duplicate. A caller may send the
        // producer headers itself (`headers`), as the protocol allows.
        let producer_request = producer.is_some()
            || sent
                .headers_sent
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(headers::PRODUCER_ID));
        js::set(
            &out,
            "duplicate",
            producer_request && status == 204 && !empty,
        );
        if let Some(at) = header_text(&sent, headers::STREAM_LEASE_EXPIRES_AT) {
            js::set(&out, "leaseExpiresAt", at);
        }
        // Sent more than once, so a duplicate may be this request's own earlier attempt.
        replayed(&out, &sent);
        if let Some(e) =
            header_text(&sent, headers::PRODUCER_EPOCH).and_then(|v| http::parse_int(&v))
        {
            js::set(&out, "producerEpoch", e as f64);
        }
        if let Some(s) = header_text(&sent, headers::PRODUCER_SEQ).and_then(|v| http::parse_int(&v))
        {
            js::set(&out, "producerSeq", s as f64);
        }
        sent_info(&out, &sent);
        http::release_body(&sent.response);
        Ok(out.into())
    })
}

/// Checks retry options (`maxRetries`, `initialDelayMs`, `maxDelayMs`, `multiplier`); throws an
/// `INVALID_ARGUMENT` error naming the bad option.
#[wasm_bindgen(js_name = validateRetryOptions)]
pub fn validate_retry_options(options: &JsValue) -> Result<(), JsValue> {
    RetryPolicy::from_js(options).map(|_| ())
}
