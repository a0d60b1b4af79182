//! Errors as JS sees them: an `Error` with a stable `code`, the HTTP `status` when there was one,
//! and the details a caller needs to act (`currentEpoch`, `expectedSeq`, `retryAfterMs`...).
//!
//! The JS layer turns codes into classes (`StaleEpochError`, `SequenceGapError`,
//! `StreamClosedError`...) so `instanceof` works; the codes are the contract between the two.

use alloc::string::String;
use js_sys::Object;
use wasm_bindgen::JsValue;

use crate::js;

pub const NOT_FOUND: &str = "NOT_FOUND";
pub const GONE: &str = "GONE";
pub const CONFLICT: &str = "CONFLICT";
pub const SEQUENCE_CONFLICT: &str = "SEQUENCE_CONFLICT";
pub const STREAM_CLOSED: &str = "STREAM_CLOSED";
pub const STALE_EPOCH: &str = "STALE_EPOCH";
pub const SEQUENCE_GAP: &str = "SEQUENCE_GAP";
pub const BAD_REQUEST: &str = "BAD_REQUEST";
pub const INVALID_OFFSET: &str = "INVALID_OFFSET";
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
pub const FORBIDDEN: &str = "FORBIDDEN";
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
pub const LEASE_HELD: &str = "LEASE_HELD";
pub const UNEXPECTED_STATUS: &str = "UNEXPECTED_STATUS";
pub const NETWORK_ERROR: &str = "NETWORK_ERROR";
pub const PARSE_ERROR: &str = "PARSE_ERROR";
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
pub const NOT_SUPPORTED: &str = "NOT_SUPPORTED";
pub const ABORTED: &str = "ABORTED";
/// The stream was deleted and created again at its URL: a reader's offset means nothing there.
pub const STREAM_REPLACED: &str = "STREAM_REPLACED";

/// A client error: `new Error(message)` with `name`, `code` and, if known, `status`.
pub fn new(code: &str, message: &str, status: Option<u16>) -> js_sys::Error {
    let err = js_sys::Error::new(message);
    err.set_name("DurableStreamError");
    let obj: &Object = err.as_ref();
    js::set(obj, "code", code);
    if let Some(status) = status {
        js::set(obj, "status", status);
    }
    err
}

/// Adds a detail field to an error.
pub fn with(err: js_sys::Error, key: &str, value: impl Into<JsValue>) -> js_sys::Error {
    js::set(err.as_ref(), key, value);
    err
}

/// An `INVALID_ARGUMENT` error, thrown before any request is made.
pub fn invalid(message: &str) -> JsValue {
    new(INVALID_ARGUMENT, message, None).into()
}

/// True when `err` is the client's own abort (cancel or signal), not a failure.
pub fn is_abort(err: &JsValue) -> bool {
    let name = js::get_string(err, "name");
    name.as_deref() == Some("AbortError") || js::get_string(err, "code").as_deref() == Some(ABORTED)
}

/// Joins pieces into one message without `format!` (keeps `core::fmt` out of the wasm).
pub fn msg(parts: &[&str]) -> String {
    parts.concat()
}
