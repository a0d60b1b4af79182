//! The few host facilities the client needs, bound so they work in browsers, workers and Node 20.
//!
//! `fetch`, timers and `document` are reached through `globalThis` rather than `window`, so the
//! same wasm runs in a page, a web worker and Node. The WebSocket and visibility helpers are small
//! JS shims because their callbacks are easiest to turn into promises on the JS side.

use alloc::{string::String, vec::Vec};
use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(inline_js = r#"
// A header or param map's [name, value] pairs: an iterable's (Headers, Map, URLSearchParams, an
// array of pairs as fetch takes), else the object's own entries; null if they are not all pairs.
export function es_pairs(map) {
  let iterable = false;
  try { iterable = typeof map[Symbol.iterator] === 'function'; } catch {}
  const pairs = iterable ? Array.from(map) : Object.entries(map);
  return pairs.every((p) => Array.isArray(p) && p.length === 2) ? pairs : null;
}
export function es_fetch(f, url, init, ms) {
  // A page's HTTP cache keeps catch-up pages for a minute, and a stream deleted and created
  // again reuses their offsets: revalidate each read (a 304 when unchanged) instead. Only where
  // there is a page (Cloudflare Workers refuse the option).
  if (init.method === 'GET' && has_page()) {
    init.cache = 'no-cache';
    // A live request is held, maybe for minutes: over HTTP/1.1, where a page has 6 connections
    // to a host, one waiting for a connection must not go before an append or a catch-up.
    if (/[?&]live=/.test(url)) init.priority = 'low';
  }
  // The caller's fetch if given (called as a plain function: bind a service binding's), else the
  // global one; async, so that one which throws fails as one that rejects.
  const go = async () => (f ? f(url, init) : globalThis.fetch(url, init));
  if (!ms) return go();
  // No response within `ms`: the connection may have died without closing. The request is
  // aborted through a signal of its own (the caller's aborts it too) and fails as a lost
  // connection does, not as a cancel, so that it is retried.
  const own = new AbortController();
  const outer = init.signal;
  const cancel = () => own.abort(outer.reason);
  outer?.aborted ? cancel() : outer?.addEventListener('abort', cancel);
  init.signal = own.signal;
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => { reject(Object.assign(new Error(`no response in ${ms} ms`), { late: 1 })); own.abort(); }, ms); });
  return Promise.race([go(), late]).finally(() => { clearTimeout(timer); outer?.removeEventListener('abort', cancel); });
}
function has_page() {
  // Deno's location getter throws unless it was started with --location.
  try { return typeof location !== 'undefined'; } catch { return false; }
}
export function es_redact(text, params, headers) {
  // See `http::redact`.
  for (const v of Object.values(params).concat(Object.values(headers))) if (v.length > 7) text = text.split(v).join('***');
  return text.replace(/([?&])([^=&#\s]*)=(?:[^&#\s"'<>):]|:(?!\s|$))*/g, (all, sep, name) => (/token|key|secret|pass|sig|auth|cred|jwt|sess/i.test(name) || Object.hasOwn(params, name) ? sep + name + '=***' : all));
}
export function es_quiet(p) { if (p && typeof p.catch === 'function') p.catch(() => {}); }
export function es_text(v) { return String(v); }
export function es_release(res, limit) {
  // Reads a body we will not use to its end, or cancels it once past `limit` bytes.
  const body = res.body;
  if (!body || body.locked) return;
  if (Number(res.headers.get('content-length')) > limit) return es_quiet(body.cancel());
  const r = body.getReader();
  let n = 0;
  const step = (c) => { if (c.done) return; n += c.value.byteLength; return n > limit ? r.cancel() : r.read().then(step); };
  es_quiet(r.read().then(step));
}
export function es_body(res, signal) {
  // Node's fetch can leave arrayBuffer() of a gzip body pending for good when the request is
  // aborted during the read: the abort ends the wait here.
  return Promise.race([res.arrayBuffer(), new Promise((_, no) => signal?.aborted ? no() : signal?.addEventListener('abort', no))]);
}
export function es_sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    // Every sleep is a wait before trying again: the network coming back (a page's or worker's
    // `online`) ends it, rather than the backoff, which may have grown to seconds in the outage.
    const g = typeof globalThis.addEventListener === 'function' ? globalThis : null;
    const done = () => { clearTimeout(timer); if (signal) signal.removeEventListener('abort', done); if (g) g.removeEventListener('online', done); resolve(); };
    // Capped where timers overflow: a longer delay (a retry policy's) would fire at once.
    const timer = setTimeout(done, Math.min(ms, 2147483647));
    if (signal) signal.addEventListener('abort', done, { once: true });
    if (g) g.addEventListener('online', done, { once: true });
  });
}
export function es_retry(f, ms, signal) {
  const gate = typeof f === 'function' && f();
  return gate instanceof Promise ? gate : es_sleep(ms, signal);
}
export function es_read_within(reader, ms) {
  // A read that brings nothing for `ms` cancels the body: the connection died without closing.
  let timer;
  const idle = new Promise((_, reject) => { timer = setTimeout(() => { es_quiet(reader.cancel()); reject(new Error(`no data for ${ms} ms`)); }, ms); });
  return Promise.race([reader.read(), idle]).finally(() => clearTimeout(timer));
}
export function es_abort_after(controller, ms) {
  const timer = setTimeout(() => controller.abort(), ms);
  return () => clearTimeout(timer);
}
const doc = () => (typeof document !== 'undefined' && document && typeof document.addEventListener === 'function' ? document : null);
export function es_hidden() { const d = doc(); return !!d && d.visibilityState === 'hidden'; }
export function es_when_visible(signal) {
  return new Promise((resolve) => {
    const d = doc();
    if (!d || d.visibilityState !== 'hidden' || (signal && signal.aborted)) return resolve();
    const done = () => {
      if (d.visibilityState === 'hidden' && !(signal && signal.aborted)) return;
      d.removeEventListener('visibilitychange', done);
      if (signal) signal.removeEventListener('abort', done);
      resolve();
    };
    d.addEventListener('visibilitychange', done);
    if (signal) signal.addEventListener('abort', done, { once: true });
  });
}
export function es_on_hidden(callback) {
  const d = doc();
  if (!d) return () => {};
  const f = () => { if (d.visibilityState === 'hidden') callback(); };
  d.addEventListener('visibilitychange', f);
  return () => d.removeEventListener('visibilitychange', f);
}
export function es_ws_open(url, protocols, ping, pong, quietMs) {
  const WS = globalThis.WebSocket;
  if (typeof WS !== 'function') return null;
  const socket = new WS(url, protocols.split(','));
  socket.binaryType = 'arraybuffer';
  const queue = [];
  let waiter = null;
  const push = (item) => { if (waiter) { const w = waiter; waiter = null; w(item); } else queue.push(item); };
  // A socket quiet for `quietMs` is sent `ping` (edgestream's server answers `pong` at once);
  // one that stays silent as long after the ping died without closing, and is given up. Timed
  // from the ping, so that a timer firing late (a throttled tab, a sleep) pings before it gives up.
  let seen = Date.now();
  let pingedAt = 0;
  const beat = setInterval(() => {
    const now = Date.now();
    if (pingedAt && now - pingedAt >= quietMs) { end(); try { socket.close(4000); } catch {} push({ kind: 'close', code: 1006, reason: 'no answer to ping' }); }
    else if (!pingedAt && now - seen >= quietMs) { pingedAt = now; try { socket.send(ping); } catch {} }
  }, quietMs / 4);
  const end = () => clearInterval(beat);
  socket.onopen = () => { seen = Date.now(); push({ kind: 'open' }); };
  socket.onmessage = (e) => {
    seen = Date.now();
    pingedAt = 0;
    if (e.data === pong) return;
    push(typeof e.data === 'string' ? { kind: 'text', data: e.data } : { kind: 'binary', data: new Uint8Array(e.data) });
  };
  // Node's WebSocket fires no close event after a refused handshake: the beat ends here too.
  socket.onerror = () => { end(); push({ kind: 'error' }); };
  socket.onclose = (e) => { end(); push({ kind: 'close', code: e.code, reason: e.reason }); };
  return {
    get protocol() { return socket.protocol; },
    next() { return queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => { waiter = r; }); },
    send(text) { try { socket.send(text); } catch {} },
    close() { end(); try { socket.close(1000); } catch {} push({ kind: 'close', code: 1000, reason: 'closed by client' }); },
  };
}
"#)]
extern "C" {
    /// `f(url, init)` (`globalThis.fetch` when `f` is undefined), failed as a lost connection
    /// if there is no response within `ms` (0: no limit).
    #[wasm_bindgen(catch)]
    pub fn es_fetch(f: &JsValue, url: &str, init: &Object, ms: f64) -> Result<Promise, JsValue>;
    /// The `[name, value]` pairs of a header or param map (an object), or `None` when it is an
    /// iterable that gives anything else.
    pub fn es_pairs(map: &JsValue) -> Option<js_sys::Array>;
    /// Marks a promise we do not await as handled (its rejection after a cancel is expected).
    pub fn es_quiet(promise: &Promise);
    pub fn es_release(response: &web_sys::Response, limit: u32);
    /// `response.arrayBuffer()` (which returns a rejected promise rather than throw), rejected
    /// when `signal` aborts, whether or not the read ends.
    pub fn es_body(response: &web_sys::Response, signal: Option<&web_sys::AbortSignal>) -> Promise;
    /// `text` with secrets hidden (see `http::redact`).
    pub fn es_redact(text: &str, params: &Object, headers: &Object) -> String;
    /// `String(value)`.
    pub fn es_text(value: &JsValue) -> String;
    /// Resolves after `ms`, or at once when `signal` aborts or the network comes back (`online`).
    pub fn es_sleep(ms: f64, signal: Option<&web_sys::AbortSignal>) -> Promise;
    /// Calls `f` (if a function): the promise it returns, else `es_sleep(ms, signal)`.
    pub fn es_retry(f: &JsValue, ms: f64, signal: Option<&web_sys::AbortSignal>) -> Promise;
    /// `reader.read()`, rejected (and the body cancelled) when nothing comes for `ms`.
    pub fn es_read_within(reader: &web_sys::ReadableStreamDefaultReader, ms: f64) -> Promise;
    /// Aborts `controller` after `ms`; returns the function that calls it off.
    pub fn es_abort_after(controller: &web_sys::AbortController, ms: f64) -> Function;
    /// True in a page whose tab is hidden.
    pub fn es_hidden() -> bool;
    /// Resolves when the page is visible again (or `signal` aborts).
    pub fn es_when_visible(signal: Option<&web_sys::AbortSignal>) -> Promise;
    /// Calls `callback` whenever the page becomes hidden; returns the function that unregisters it.
    pub fn es_on_hidden(callback: &Function) -> Function;
    /// Opens a WebSocket offering `protocols` (comma-separated) and returns
    /// `{ protocol, next(), send(text), close() }` (`protocol`: the one the server chose), or
    /// null where there is no WebSocket. Quiet for `quiet_ms`, it is sent `ping` (a `pong` in
    /// answer is not handed on); silent as long again, it is closed as broken.
    #[wasm_bindgen(catch)]
    pub fn es_ws_open(
        url: &str,
        protocols: &str,
        ping: &str,
        pong: &str,
        quiet_ms: f64,
    ) -> Result<JsValue, JsValue>;
}

/// Reads `obj[key]`, or `undefined` when `obj` is not an object.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Sets `obj[key] = value` on an object the client created.
pub fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

/// Reads a string property, if present and a string.
pub fn get_string(obj: &JsValue, key: &str) -> Option<String> {
    get(obj, key).as_string()
}

/// Reads a number property, if present and a number.
pub fn get_f64(obj: &JsValue, key: &str) -> Option<f64> {
    get(obj, key).as_f64()
}

/// A caller's option: `None` when absent (`undefined` or `null`), INVALID_ARGUMENT naming it
/// when its `typeof` is not `kind`, so a mistyped option is never silently ignored.
pub fn opt(obj: &JsValue, key: &str, kind: &str) -> Result<Option<JsValue>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        Ok(None)
    } else if v.js_typeof().as_string().as_deref() == Some(kind) {
        Ok(Some(v))
    } else {
        Err(crate::error::invalid(&[key, " must be a ", kind].concat()))
    }
}

/// Reads a boolean property; `None` when absent or not a boolean.
pub fn get_bool(obj: &JsValue, key: &str) -> Option<bool> {
    get(obj, key).as_bool()
}

/// Awaits `value` if it is a promise (or any thenable); returns it as is otherwise.
pub async fn settle(value: JsValue) -> Result<JsValue, JsValue> {
    if get(&value, "then").is_function() {
        JsFuture::from(Promise::resolve(&value)).await
    } else {
        Ok(value)
    }
}

/// `[name, value]` pairs as an object.
#[inline(never)]
pub fn pairs_to_object(pairs: &[(String, String)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs {
        set(&o, k, v.as_str());
    }
    o
}

/// A value as text: strings as they are, everything else through `String(value)`.
pub fn to_text(value: &JsValue) -> String {
    // Not `String::from(JsString::from(value))`: that cast does not convert, and throws for
    // anything but a string (a number in `headers`, `params` or `seq`).
    value.as_string().unwrap_or_else(|| es_text(value))
}

/// Awaits a promise.
pub async fn wait(promise: Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(promise).await
}

/// Sleeps `ms`, cut short when `signal` aborts.
pub async fn sleep(ms: f64, signal: Option<&web_sys::AbortSignal>) {
    let _ = wait(es_sleep(ms, signal)).await;
}

/// A fresh `Uint8Array` holding `bytes`.
pub fn bytes_to_js(bytes: &[u8]) -> js_sys::Uint8Array {
    js_sys::Uint8Array::from(bytes)
}

/// The bytes of a `Uint8Array`, `ArrayBuffer` or string (UTF-8).
pub fn body_bytes(value: &JsValue) -> Option<Vec<u8>> {
    if let Some(s) = value.as_string() {
        return Some(s.into_bytes());
    }
    if let Some(a) = value.dyn_ref::<js_sys::Uint8Array>() {
        return Some(a.to_vec());
    }
    if let Some(b) = value.dyn_ref::<js_sys::ArrayBuffer>() {
        return Some(js_sys::Uint8Array::new(b).to_vec());
    }
    if js_sys::ArrayBuffer::is_view(value) {
        let buffer = get(value, "buffer");
        let offset = get_f64(value, "byteOffset").unwrap_or(0.0) as u32;
        let len = get_f64(value, "byteLength").unwrap_or(0.0) as u32;
        let b = buffer.dyn_into::<js_sys::ArrayBuffer>().ok()?;
        return Some(js_sys::Uint8Array::new_with_byte_offset_and_length(&b, offset, len).to_vec());
    }
    None
}

/// Decimal text of a non-negative integer, without `core::fmt` (which would add kilobytes).
pub fn u64_text(mut n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[i..].iter().map(|&d| d as char).collect()
}

/// True when `n` is a whole number from 0 to `max` (at most 2^64): `n.fract() == 0.0` and the
/// bounds, without `f64::fract`, which only std has.
pub fn whole_up_to(n: f64, max: f64) -> bool {
    n >= 0.0 && n <= max && n as u64 as f64 == n
}

#[cfg(test)]
mod tests {
    use super::{u64_text, whole_up_to};

    #[test]
    fn whole_numbers() {
        assert!(whole_up_to(0.0, 10.0));
        assert!(whole_up_to(-0.0, 10.0));
        assert!(whole_up_to(10.0, 10.0));
        assert!(whole_up_to(
            9_007_199_254_740_991.0,
            9_007_199_254_740_991.0
        ));
        assert!(!whole_up_to(10.5, 20.0));
        assert!(!whole_up_to(0.25, 20.0));
        assert!(!whole_up_to(11.0, 10.0));
        assert!(!whole_up_to(-1.0, 10.0));
        assert!(!whole_up_to(f64::NAN, 10.0));
        assert!(!whole_up_to(f64::INFINITY, f64::MAX));
        assert!(!whole_up_to(f64::NEG_INFINITY, 10.0));
    }

    #[test]
    fn decimal_text() {
        assert_eq!(u64_text(0), "0");
        assert_eq!(u64_text(7), "7");
        assert_eq!(u64_text(1234567890), "1234567890");
        assert_eq!(u64_text(u64::MAX), "18446744073709551615");
    }
}
