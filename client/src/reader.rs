//! Following a stream: a catch-up read first (cacheable by CDNs), then live mode over SSE,
//! long-poll or WebSocket, resuming from the last offset after every disconnection.
//!
//! The reader only moves its offset forward when the server has said where a batch ends
//! (`Stream-Next-Offset`, or a control event), so a dropped connection never produces a gap or
//! a duplicate: data that arrived without its control event is dropped and read again.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::{string::String, vec, vec::Vec};
use core::cell::RefCell;

use edgestream::headers::{self, ContentType};
use edgestream::sse::Control;
use edgestream::ws::{self, ServerMessage};
use js_sys::{Function, Object, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{AbortController, ReadableStreamDefaultReader};

use crate::backoff::RetryPolicy;
use crate::batch::{self, Position};
use crate::http::{self, Dynamic, Failure, Request};
use crate::offset::{self, Start};
use crate::sse::{self, Event, SseReader};
use crate::{error, js};

/// How the reader follows the stream once it has caught up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Catch up and stop.
    Off,
    /// SSE, falling back to long-poll when SSE connections keep ending early.
    Auto,
    Sse,
    LongPoll,
    WebSocket,
}

impl Live {
    fn parse(value: &JsValue) -> Result<Live, JsValue> {
        if value.is_undefined() || value.is_null() || value.as_bool() == Some(true) {
            return Ok(Live::Auto);
        }
        if value.as_bool() == Some(false) {
            return Ok(Live::Off);
        }
        match value.as_string().as_deref() {
            Some("auto") => Ok(Live::Auto),
            Some("sse") => Ok(Live::Sse),
            Some("long-poll") => Ok(Live::LongPoll),
            Some("ws") => Ok(Live::WebSocket),
            _ => Err(error::invalid(
                "live must be false, true, 'auto', 'sse', 'long-poll' or 'ws'",
            )),
        }
    }
}

/// Which kind of request comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    CatchUp,
    Sse,
    LongPoll,
    WebSocket,
}

/// An SSE connection ended sooner than this counts as "short".
const SHORT_SSE_MS: f64 = 1_000.0;
/// After this many short SSE connections in a row, `auto` and `sse` readers use long-poll.
const SHORT_SSE_LIMIT: u32 = 3;
/// A long-poll answered with nothing sooner than this did not wait for data (a proxy, or a
/// server that times out at once): the next one is paced by the retry backoff.
const SHORT_POLL_MS: f64 = 100.0;
/// An SSE connection that brings nothing this long (three of edgestream's 15 s heartbeats) has
/// died without closing, as behind a proxy or a network that drops it silently: reconnect.
const SSE_IDLE_MS: f64 = 45_000.0;
/// A read or long-poll unanswered this long (servers answer a long-poll within about 30 s, a
/// read at once) is sent again.
const POLL_IDLE_MS: f64 = 65_000.0;
/// A WebSocket quiet this long is pinged (`ws::PING`); one silent as long again is given up.
const WS_QUIET_MS: f64 = 20_000.0;

/// Calls a JS function when dropped: a timer called off however its scope ends.
struct CallOff(js_sys::Function);

impl Drop for CallOff {
    fn drop(&mut self) {
        let _ = self.0.call0(&JsValue::UNDEFINED);
    }
}

struct SseConn {
    reader: ReadableStreamDefaultReader,
    parser: SseReader,
    opened_at: f64,
    /// Data arrived on this connection (control events alone do not count: a proxy that cuts
    /// connections short lets the server's first control event through every time).
    delivered: bool,
    /// Events parsed and not yet taken: one batch is taken at a time, so the reader's
    /// position is never past what the application has.
    pending: alloc::vec::IntoIter<Event>,
}

struct WsConn {
    socket: JsValue,
    parts: Vec<Vec<u8>>,
    /// Data arrived on this connection (as for [`SseConn`]: a control message alone does not
    /// count).
    delivered: bool,
    /// The subprotocol the server chose, once the socket is open.
    protocol: Option<String>,
    /// The handshake succeeded. A socket that closes before it opened was refused, or never
    /// reached the server: a browser does not say which, nor the status.
    opened: bool,
    /// The position of the last receipt sent (under [`ws::RECEIPTS`]).
    receipted: Option<u64>,
}

/// Under [`ws::RECEIPTS`], how much the reader hands on between two receipts. The server closes
/// a socket that falls `WS_BACKLOG_BYTES` (at least 256 KiB) behind its receipts; a receipt is
/// sent as the application takes each batch, so a reader that stops taking them stops the server
/// from queueing more for it.
const RECEIPT_EVERY: u64 = 64 * 1024;

struct Inner {
    url: String,
    live: Live,
    phase: Phase,
    json: Option<bool>,
    content_type: Option<String>,
    dynamic: Dynamic,
    policy: RetryPolicy,
    pos: Position,
    /// The stream's `Stream-Incarnation`, from the caller (`incarnation`, saved with an offset)
    /// or the first response that named one. Offsets are byte positions that a stream deleted
    /// and created again reuses, so a response naming another one ends the reader.
    incarnation: Option<String>,
    status: u16,
    started: bool,
    done: bool,
    cancelled: bool,
    /// The tab was hidden and the current request was aborted to pause reading.
    paused: bool,
    emitted_any: bool,
    short_sse: u32,
    /// Long-polls in a row that came back at once with nothing.
    short_polls: u32,
    /// Consecutive failures of live connections (reset by any successful batch).
    failures: u32,
    /// A request or connection failed and the reader waits to try again: from the failure until
    /// the next response or connection, which an application shows as "reconnecting".
    retrying: bool,
    controller: Option<AbortController>,
    sse: Option<SseConn>,
    ws: Option<WsConn>,
    ready: VecDeque<Object>,
    headers_sent: Vec<(String, String)>,
    params_sent: Vec<(String, String)>,
    unlisten_hidden: Option<Function>,
    _on_hidden: Option<Closure<dyn FnMut()>>,
}

/// A stream reader. JS calls `next()` until it resolves to `undefined`.
#[wasm_bindgen]
pub struct Reader {
    inner: Rc<RefCell<Inner>>,
}

#[wasm_bindgen]
impl Reader {
    /// Options: `url`, `offset`, `live`, `json`, `headers`, `params`, `retry`, `pauseWhenHidden`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: &JsValue) -> Result<Reader, JsValue> {
        let url = js::get_string(options, "url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| error::invalid("url is required"))?;
        let offset_value = js::get(options, "offset");
        let offset_text = if offset_value.is_undefined() || offset_value.is_null() {
            None
        } else {
            Some(
                offset_value
                    .as_string()
                    .ok_or_else(|| error::invalid("offset must be a string"))?,
            )
        };
        let start = Start::parse(offset_text.as_deref())
            .map_err(|e| JsValue::from(error::new(error::INVALID_OFFSET, e.message(), None)))?;
        let live = Live::parse(&js::get(options, "live"))?;
        let incarnation = js::opt(options, "incarnation", "string")?.and_then(|v| v.as_string());
        let retry = js::get(options, "retry");
        let mut policy = RetryPolicy::from_js(&retry)?;
        // A live reader keeps reconnecting through an outage of any length, as EventSource
        // does, unless the caller set a budget; a one-off read gives up after the default one.
        let max_retries = js::get(&retry, "maxRetries");
        let budget_set = !max_retries.is_undefined() && !max_retries.is_null();
        if live != Live::Off && !budget_set {
            policy.max_retries = RetryPolicy::FOREVER;
        }
        let inner = Rc::new(RefCell::new(Inner {
            url,
            live,
            phase: Phase::CatchUp,
            json: js::opt(options, "json", "boolean")?.and_then(|v| v.as_bool()),
            content_type: None,
            dynamic: Dynamic::from_options(options),
            policy,
            pos: Position {
                offset: String::from(start.as_param()),
                ..Position::default()
            },
            incarnation,
            status: 0,
            started: false,
            done: false,
            cancelled: false,
            paused: false,
            emitted_any: false,
            short_sse: 0,
            short_polls: 0,
            failures: 0,
            retrying: false,
            controller: None,
            sse: None,
            ws: None,
            ready: VecDeque::new(),
            headers_sent: Vec::new(),
            params_sent: Vec::new(),
            unlisten_hidden: None,
            _on_hidden: None,
        }));
        // Nothing to catch up on: wait for new data straight away, unless the stream's type is
        // still to learn. SSE and WebSocket responses do not carry it, so a JSON stream would be
        // read as bytes; a `now` GET answers at once with the type and the tail. A long-poll
        // always starts with that GET: one that times out (204) carries no type, and only comes
        // after the whole timeout, while an SSE or WebSocket reader's first batch (upToDate)
        // comes at once.
        let kind_known = inner.borrow().json.is_some() && live != Live::LongPoll;
        if start == Start::Now && live != Live::Off && kind_known {
            inner.borrow_mut().go_live();
        }
        if js::opt(options, "pauseWhenHidden", "boolean")?.and_then(|v| v.as_bool()) != Some(false)
        {
            let weak = Rc::downgrade(&inner);
            let on_hidden = Closure::<dyn FnMut()>::new(move || {
                if let Some(inner) = weak.upgrade() {
                    if let Ok(mut s) = inner.try_borrow_mut() {
                        s.pause();
                    }
                }
            });
            let unlisten = js::es_on_hidden(on_hidden.as_ref().unchecked_ref());
            let mut s = inner.borrow_mut();
            s.unlisten_hidden = Some(unlisten);
            s._on_hidden = Some(on_hidden);
        }
        Ok(Reader { inner })
    }

    /// The next batch, or `undefined` once the stream is closed (or the reader cancelled, or
    /// caught up with `live: false`). Rejects with a typed error on a permanent failure.
    pub fn next(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let result = next_batch(&inner).await;
            if result.is_err() {
                inner.borrow_mut().finish();
            }
            result
        })
    }

    /// Stops reading: aborts the request in flight and ends iteration.
    pub fn cancel(&self) {
        let mut s = self.inner.borrow_mut();
        s.cancelled = true;
        s.finish();
    }

    /// What JS reads of the reader, in one call (one export and one glue function instead of
    /// a getter each, which cost the package about half a kilobyte): `offset`, `cursor`,
    /// `upToDate`, `closed`, `status`, `retrying`, `incarnation`, `contentType`, `mode`,
    /// `headersSent` and `paramsSent`, as the methods below give them.
    pub fn state(&self) -> Object {
        let o = Object::new();
        js::set(&o, "offset", self.offset());
        js::set(&o, "cursor", self.cursor());
        js::set(&o, "upToDate", self.up_to_date());
        js::set(&o, "closed", self.closed());
        js::set(&o, "status", self.status());
        js::set(&o, "retrying", self.retrying());
        js::set(&o, "incarnation", self.incarnation());
        js::set(&o, "contentType", self.content_type());
        js::set(&o, "mode", self.mode());
        js::set(&o, "headersSent", self.headers_sent());
        js::set(&o, "paramsSent", self.params_sent());
        o
    }
}

/// The reader's state, for [`Reader::state`] and the browser tests.
impl Reader {
    pub fn offset(&self) -> String {
        self.inner.borrow().pos.offset.clone()
    }
    pub fn cursor(&self) -> Option<String> {
        self.inner.borrow().pos.cursor.clone()
    }
    pub fn up_to_date(&self) -> bool {
        self.inner.borrow().pos.up_to_date
    }
    pub fn closed(&self) -> bool {
        self.inner.borrow().pos.closed
    }
    pub fn done(&self) -> bool {
        self.inner.borrow().done
    }
    /// The HTTP status of the last response.
    pub fn status(&self) -> u16 {
        self.inner.borrow().status
    }
    /// A request or connection failed, and the reader waits to try again.
    pub fn retrying(&self) -> bool {
        self.inner.borrow().retrying
    }
    /// The stream's incarnation (`Stream-Incarnation`), once a response named it.
    pub fn incarnation(&self) -> Option<String> {
        self.inner.borrow().incarnation.clone()
    }
    pub fn content_type(&self) -> Option<String> {
        self.inner.borrow().content_type.clone()
    }
    /// The live transport in use: `catch-up`, `sse`, `long-poll` or `ws`.
    pub fn mode(&self) -> String {
        String::from(match self.inner.borrow().phase {
            Phase::CatchUp => "catch-up",
            Phase::Sse => "sse",
            Phase::LongPoll => "long-poll",
            Phase::WebSocket => "ws",
        })
    }
    /// The caller's dynamic headers as sent on the last request (`{ name: value }`).
    pub fn headers_sent(&self) -> Object {
        js::pairs_to_object(&self.inner.borrow().headers_sent)
    }
    /// The caller's dynamic query parameters as sent on the last request.
    pub fn params_sent(&self) -> Object {
        js::pairs_to_object(&self.inner.borrow().params_sent)
    }
}

/// A reader dropped without `cancel()` (its handle was collected, read partly or not to its
/// end) stops too: its `visibilitychange` listener would outlive the closure it calls, which
/// then throws on every hide, and its live connection would stay open for nobody.
impl Drop for Inner {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Inner {
    /// Tab hidden: abort the live request; the loop waits for the tab to return.
    fn pause(&mut self) {
        if self.done || self.phase == Phase::CatchUp {
            return;
        }
        self.paused = true;
        self.drop_connections();
    }

    fn drop_connections(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
        if let Some(conn) = self.sse.take() {
            js::es_quiet(&conn.reader.cancel());
        }
        if let Some(ws) = self.ws.take() {
            let close = js::get(&ws.socket, "close");
            if let Some(f) = close.dyn_ref::<Function>() {
                let _ = f.call0(&ws.socket);
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        // Failed for good, or cancelled: no longer trying again.
        self.retrying = false;
        self.drop_connections();
        self.ready.clear();
        if let Some(unlisten) = self.unlisten_hidden.take() {
            let _ = unlisten.call0(&JsValue::UNDEFINED);
        }
        self._on_hidden = None;
    }

    fn is_json(&self) -> bool {
        self.json.unwrap_or_else(|| {
            self.content_type
                .as_deref()
                .and_then(|ct| ContentType::parse_stored(ct).ok())
                .is_some_and(|ct| ct.is_json())
        })
    }

    /// Checks the incarnation a response names against the one the reader reads (learning it
    /// from the first that names one). A server that names none is taken at its word.
    fn same_stream(&mut self, response: &web_sys::Response) -> Result<(), JsValue> {
        let Some(named) = http::header(response, headers::STREAM_INCARNATION) else {
            return Ok(());
        };
        match &self.incarnation {
            Some(known) if *known != named => {
                let text = error::msg(&[
                    &self.url,
                    " was deleted and created again: its offsets are not this reader's",
                ]);
                Err(error::new(error::STREAM_REPLACED, &text, None).into())
            }
            Some(_) => Ok(()),
            None => {
                self.incarnation = Some(named);
                Ok(())
            }
        }
    }

    /// Applies a position the server reported and decides whether the batch is worth handing
    /// out: it has data, it is the first, or it changes `upToDate` or `closed`.
    fn accept(&mut self, data: batch::Data<'_>, next: Position) -> Result<(), JsValue> {
        if !offset::is_usable(&next.offset) {
            return Err(batch::parse_error("server sent an unusable offset"));
        }
        // Offsets only grow: a server that answers an offset past its end with its tail (as the
        // reference server does) holds a shorter stream than the one the offset was read in,
        // most likely one deleted and created again. Refused, as edgestream's server refuses it.
        let at = self.pos.offset.as_str();
        if at != "-1" && at != "now" && next.offset.as_str() < at {
            return Err(error::new(
                error::INVALID_OFFSET,
                "the stream ends before this offset",
                None,
            )
            .into());
        }
        let has_data = !data.is_empty();
        let changed = next.up_to_date != self.pos.up_to_date || next.closed != self.pos.closed;
        let first = !self.emitted_any;
        let cursor = next.cursor.clone().or_else(|| self.pos.cursor.clone());
        let next = Position { cursor, ..next };
        if has_data || changed || first {
            // Built before the position moves: data that cannot be read is not skipped.
            let obj = batch::to_js(data, self.is_json(), &next)?;
            if let Some(incarnation) = &self.incarnation {
                js::set(&obj, "incarnation", incarnation.as_str());
            }
            self.emitted_any = true;
            self.ready.push_back(obj);
        }
        self.pos = next;
        self.failures = 0;
        self.retrying = false;
        if self.pos.closed {
            self.done = true;
        }
        Ok(())
    }

    /// What to do after the reader caught up.
    fn go_live(&mut self) {
        self.phase = match self.live {
            Live::Off => {
                self.done = true;
                Phase::CatchUp
            }
            Live::Auto | Live::Sse => {
                if self.short_sse >= SHORT_SSE_LIMIT {
                    Phase::LongPoll
                } else {
                    Phase::Sse
                }
            }
            Live::LongPoll => Phase::LongPoll,
            Live::WebSocket => Phase::WebSocket,
        };
    }

    fn query(&self, live: Option<&str>) -> Vec<(String, String)> {
        let mut q = vec![(String::from("offset"), self.pos.offset.clone())];
        if let Some(live) = live {
            q.push((String::from("live"), String::from(live)));
            if let Some(cursor) = &self.pos.cursor {
                q.push((String::from("cursor"), cursor.clone()));
            }
        }
        q
    }

    fn new_controller(&mut self) -> Option<web_sys::AbortSignal> {
        let c = http::controller()?;
        let signal = c.signal();
        self.controller = Some(c);
        Some(signal)
    }
}

/// Where a response says the stream stands.
fn position_from(response: &web_sys::Response, fallback: &str) -> Position {
    let h = |name| http::header(response, name);
    Position {
        offset: h(headers::STREAM_NEXT_OFFSET).unwrap_or_else(|| String::from(fallback)),
        cursor: h(headers::STREAM_CURSOR),
        up_to_date: headers::is_true(h(headers::STREAM_UP_TO_DATE).as_deref()),
        closed: headers::is_true(h(headers::STREAM_CLOSED).as_deref()),
    }
}

/// Waits while the page is hidden, and clears the pause flag. `cancel()` ends the wait (through
/// the reader's abort controller), so a pending `next()` does not outlive the reader.
async fn wait_if_paused(inner: &Rc<RefCell<Inner>>) {
    loop {
        let signal = {
            let mut s = inner.borrow_mut();
            let hidden = s.phase != Phase::CatchUp && s._on_hidden.is_some() && js::es_hidden();
            let wait = (s.paused || hidden) && !s.cancelled && !s.done;
            s.paused = false;
            if !wait {
                return;
            }
            s.new_controller()
        };
        let _ = js::wait(js::es_when_visible(signal.as_ref())).await;
    }
}

/// Sleeps before reconnecting after a failure; errors once the retries are used up.
async fn back_off(
    inner: &Rc<RefCell<Inner>>,
    cause: JsValue,
    retry_after: Option<f64>,
) -> Result<(), JsValue> {
    let (delay, signal) = {
        let mut s = inner.borrow_mut();
        s.failures = s.failures.saturating_add(1);
        if s.failures > s.policy.max_retries {
            return Err(cause);
        }
        s.retrying = true;
        let delay = s
            .policy
            .delay_ms(s.failures, js_sys::Math::random(), retry_after);
        (delay, s.new_controller())
    };
    js::sleep(delay, signal.as_ref()).await;
    Ok(())
}

async fn next_batch(inner: &Rc<RefCell<Inner>>) -> Result<JsValue, JsValue> {
    loop {
        {
            let mut s = inner.borrow_mut();
            if let Some(b) = s.ready.pop_front() {
                return Ok(b.into());
            }
            if s.done || s.cancelled {
                s.finish();
                return Ok(JsValue::UNDEFINED);
            }
        }
        wait_if_paused(inner).await;
        if inner.borrow().cancelled {
            continue;
        }
        let phase = inner.borrow().phase;
        match phase {
            Phase::CatchUp | Phase::LongPoll => poll(inner, phase).await?,
            Phase::Sse => sse_step(inner).await?,
            Phase::WebSocket => ws_step(inner).await?,
        }
    }
}

/// Waits before retry `attempt` of a request, saying meanwhile that the reader is retrying.
async fn wait_to_retry(
    inner: &Rc<RefCell<Inner>>,
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<f64>,
    signal: Option<&web_sys::AbortSignal>,
) {
    inner.borrow_mut().retrying = true;
    let delay = policy.delay_ms(attempt, js_sys::Math::random(), retry_after);
    js::sleep(delay, signal).await;
}

/// Sends a reader's request until a response comes that is not worth retrying, saying meanwhile
/// that the reader is retrying (an application shows it). `attempt` counts the retries of the
/// caller's request. `None`: the reader was cancelled.
async fn send_live(
    inner: &Rc<RefCell<Inner>>,
    req: &Request<'_>,
    policy: &RetryPolicy,
    signal: Option<&web_sys::AbortSignal>,
    attempt: &mut u32,
) -> Result<Option<http::Sent>, JsValue> {
    // A first failed connection goes again at once, counted as no retry (see `http::send`).
    let mut quick = *attempt == 0;
    loop {
        let failed = match http::send_once(req, signal).await {
            Ok(sent) => {
                let mut s = inner.borrow_mut();
                s.status = sent.status;
                s.headers_sent = sent.headers_sent.clone();
                s.params_sent = sent.params_sent.clone();
                if !crate::backoff::is_retryable_status(sent.status) {
                    return Ok(Some(sent));
                }
                Ok(sent)
            }
            Err(Failure::Aborted) => return Ok(None),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Network(_)) if quick => {
                quick = false;
                continue;
            }
            Err(Failure::Network(e) | Failure::Unsent(e)) => Err(e),
        };
        *attempt += 1;
        let retry_after = match &failed {
            Ok(sent) => http::header(&sent.response, headers::RETRY_AFTER)
                .and_then(|v| crate::backoff::retry_after_ms(&v, js_sys::Date::now())),
            Err(_) => None,
        };
        if *attempt > policy.max_retries {
            return Err(match failed {
                Ok(sent) => http::status_error("GET", req.url, &sent).await,
                Err(e) => e,
            });
        }
        if let Ok(sent) = &failed {
            http::release_body(&sent.response);
        }
        wait_to_retry(inner, policy, *attempt, retry_after, signal).await;
        if signal.is_some_and(|s| s.aborted()) {
            return Ok(None);
        }
    }
}

/// One catch-up or long-poll request, retried on transient failures.
async fn poll(inner: &Rc<RefCell<Inner>>, phase: Phase) -> Result<(), JsValue> {
    let (url, query, dynamic, policy, signal, short) = {
        let mut s = inner.borrow_mut();
        let live = (phase == Phase::LongPoll).then_some("long-poll");
        let q = s.query(live);
        let signal = s.new_controller();
        let short = if live.is_some() { s.short_polls } else { 0 };
        (s.url.clone(), q, s.dynamic.clone(), s.policy, signal, short)
    };
    if short > 0 {
        let delay = policy.delay_ms(short, js_sys::Math::random(), None);
        js::sleep(delay, signal.as_ref()).await;
        if signal.as_ref().is_some_and(|s| s.aborted()) {
            return Ok(());
        }
    }
    // Called off once the request is answered; should it fire first, the request is aborted and
    // the next poll sends it again. The answer's body is not timed: up to about 512 KB, which a
    // slow link can take longer than this to bring, and then again on every try.
    let watchdog = inner
        .borrow()
        .controller
        .as_ref()
        .map(|c| CallOff(js::es_abort_after(c, POLL_IDLE_MS)));
    let sent_at = js_sys::Date::now();
    let req = Request::get(&url, query, &dynamic);
    // Failures count on across the polls the watchdog starts again, as an SSE connection's do,
    // so that `max_retries` is reached in an outage however long the backoff.
    let mut attempt = inner.borrow().failures;
    let sent = send_live(inner, &req, &policy, signal.as_ref(), &mut attempt).await;
    drop(watchdog);
    inner.borrow_mut().failures = attempt;
    let Some(sent) = sent? else {
        return Ok(());
    };
    let status = sent.status;
    // First: a refusal of an offset saved in a stream since created again says so.
    inner.borrow_mut().same_stream(&sent.response)?;
    if status != 200 && status != 204 {
        return Err(http::status_error("GET", &url, &sent).await);
    }
    let body = if status == 200 {
        match js::wait(js::es_body(&sent.response, signal.as_ref())).await {
            Ok(buf) => Some(Uint8Array::new(&buf)),
            Err(e) => {
                // The body broke off: nothing was consumed, so the next poll sends the same
                // request again, with a new watchdog.
                if signal.as_ref().is_some_and(|s| s.aborted()) {
                    return Ok(());
                }
                attempt += 1;
                if attempt > policy.max_retries {
                    let (p, h) = (&sent.params_sent, &sent.headers_sent);
                    return Err(http::network_error("GET", &url, &e, p, h).into());
                }
                inner.borrow_mut().failures = attempt;
                wait_to_retry(inner, &policy, attempt, None, signal.as_ref()).await;
                return Ok(());
            }
        }
    } else {
        http::release_body(&sent.response);
        None
    };
    let mut s = inner.borrow_mut();
    if s.content_type.is_none() && status == 200 {
        s.content_type = http::header(&sent.response, headers::CONTENT_TYPE);
    }
    // A page with no Stream-Next-Offset is refused as an unusable offset: read from where it
    // began, it would be read again, and again. A long-poll's 204 may leave it out.
    let fallback = if status == 204 {
        s.pos.offset.clone()
    } else {
        String::new()
    };
    let mut next = position_from(&sent.response, &fallback);
    if status == 204 {
        // A long-poll that timed out: nothing new, and the reader is at the tail.
        next.up_to_date = true;
    }
    s.started = true;
    let empty = body.as_ref().is_none_or(|b| b.length() == 0);
    s.short_polls =
        if phase == Phase::LongPoll && empty && js_sys::Date::now() - sent_at < SHORT_POLL_MS {
            s.short_polls.saturating_add(1)
        } else {
            0
        };
    let data = body.map_or(batch::Data::Parts(&[]), batch::Data::Bytes);
    s.accept(data, next)?;
    if phase == Phase::CatchUp && s.pos.up_to_date && !s.done {
        s.go_live();
    }
    Ok(())
}

/// Opens an SSE connection if needed and reads until it yields a batch or ends.
async fn sse_step(inner: &Rc<RefCell<Inner>>) -> Result<(), JsValue> {
    if inner.borrow().sse.is_none() {
        let (url, query, dynamic, policy, signal) = {
            let mut s = inner.borrow_mut();
            let q = s.query(Some("sse"));
            let signal = s.new_controller();
            (s.url.clone(), q, s.dynamic.clone(), s.policy, signal)
        };
        let req = Request {
            headers: vec![("accept", String::from("text/event-stream"))],
            ..Request::get(&url, query, &dynamic)
        };
        // Retries are counted per connection: one that opens has shown the server is back.
        let mut attempt = 0;
        let Some(sent) = send_live(inner, &req, &policy, signal.as_ref(), &mut attempt).await?
        else {
            return Ok(());
        };
        if sent.status != 200 {
            return Err(http::status_error("GET", &url, &sent).await);
        }
        inner.borrow_mut().same_stream(&sent.response)?;
        let is_sse = http::header(&sent.response, headers::CONTENT_TYPE)
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        let body = sent.response.body();
        let (true, Some(body)) = (is_sse, body) else {
            // Not an event stream (a proxy, or a server without SSE): follow by long-poll.
            let _ = http::cancel_body(&sent.response);
            let mut s = inner.borrow_mut();
            s.short_sse = SHORT_SSE_LIMIT;
            s.phase = Phase::LongPoll;
            return Ok(());
        };
        let encoding = sse::encoding_of(
            http::header(&sent.response, headers::STREAM_SSE_DATA_ENCODING).as_deref(),
        );
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        inner.borrow_mut().retrying = false;
        inner.borrow_mut().sse = Some(SseConn {
            reader,
            parser: SseReader::new(encoding),
            opened_at: js_sys::Date::now(),
            delivered: false,
            pending: Vec::new().into_iter(),
        });
    }
    {
        // Events already parsed come first.
        let mut s = inner.borrow_mut();
        take_events(&mut s)?;
        if !s.ready.is_empty() || s.done {
            return Ok(());
        }
    }
    let Some(reader) = inner.borrow().sse.as_ref().map(|c| c.reader.clone()) else {
        return Ok(());
    };
    let chunk = js::wait(js::es_read_within(&reader, SSE_IDLE_MS)).await;
    if let Some((cause, retry_ms)) = on_sse_chunk(inner, chunk)? {
        back_off(inner, cause, retry_ms).await?;
    }
    Ok(())
}

/// Takes parsed SSE events until one makes a batch (or the stream ends).
fn take_events(s: &mut Inner) -> Result<(), JsValue> {
    while s.ready.is_empty() && !s.done {
        let (parts, control) = match s.sse.as_mut().and_then(|c| c.pending.next()) {
            Some(Event::Batch { parts, control }) => (parts, control),
            Some(Event::Failed { status, message }) => {
                // The stream is gone: end here, or (another status) reconnect from the offset.
                stream_error(s, "SSE ", status, &message)?;
                break;
            }
            None => break,
        };
        if parts.iter().any(|p| !p.is_empty()) {
            if let Some(conn) = s.sse.as_mut() {
                conn.delivered = true;
            }
        }
        let Control {
            next_offset,
            cursor,
            up_to_date,
            closed,
        } = control;
        s.accept(
            batch::Data::Parts(&parts),
            Position {
                offset: next_offset,
                cursor,
                up_to_date,
                closed,
            },
        )?;
        if s.done {
            s.drop_connections();
        }
    }
    if s.sse.as_ref().is_some_and(|c| c.delivered) {
        s.short_sse = 0;
    }
    Ok(())
}

/// Handles one read from an SSE body; returns a reason to back off before reconnecting.
#[allow(clippy::type_complexity)]
fn on_sse_chunk(
    inner: &Rc<RefCell<Inner>>,
    chunk: Result<JsValue, JsValue>,
) -> Result<Option<(JsValue, Option<f64>)>, JsValue> {
    let mut s = inner.borrow_mut();
    if s.done || s.cancelled || s.paused {
        return Ok(None);
    }
    let ended = match &chunk {
        Ok(result) => js::get_bool(result, "done").unwrap_or(true),
        Err(_) => true,
    };
    if !ended {
        let value = chunk
            .map(|r| js::get(&r, "value"))
            .unwrap_or(JsValue::UNDEFINED);
        let bytes = js::body_bytes(&value).unwrap_or_default();
        let events = match s.sse.as_mut() {
            Some(conn) => conn.parser.push(&bytes),
            None => return Ok(None),
        };
        let events = events.map_err(|e| batch::parse_error(e.message()))?;
        if let Some(conn) = s.sse.as_mut() {
            conn.pending = events.into_iter();
        }
        take_events(&mut s)?;
        return Ok(None);
    }
    // The connection ended (servers close SSE about once a minute, or it broke): resume from
    // the last offset. Connections that keep ending at once without data suggest a buffering
    // proxy; each is followed by a backoff, so a proxy that lets control events through cannot
    // turn the reader into a busy loop. One that broke (a read error: a network that drops, not
    // a response that ended) says nothing of a proxy, and is backed off from without counting.
    let broke = chunk.is_err();
    let conn = s.sse.take();
    let lived = conn
        .as_ref()
        .map(|c| js_sys::Date::now() - c.opened_at)
        .unwrap_or(0.0);
    let delivered = conn.as_ref().is_some_and(|c| c.delivered);
    let retry_ms = conn.as_ref().and_then(|c| c.parser.retry_ms());
    let short = lived < SHORT_SSE_MS && !delivered;
    if !short {
        s.short_sse = 0;
        return Ok(None);
    }
    if !broke {
        s.short_sse += 1;
        if s.short_sse >= SHORT_SSE_LIMIT {
            s.phase = Phase::LongPoll;
            return Ok(None);
        }
    }
    let cause = match chunk {
        Err(e) => http::network_error("GET", &s.url, &e, &s.params_sent, &s.headers_sent).into(),
        Ok(_) => error::new(error::NETWORK_ERROR, "SSE connection closed early", None).into(),
    };
    Ok(Some((cause, retry_ms.map(f64::from))))
}

/// `http(s)://` to `ws(s)://`.
fn ws_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        error::msg(&["wss://", rest])
    } else if let Some(rest) = url.strip_prefix("http://") {
        error::msg(&["ws://", rest])
    } else {
        String::from(url)
    }
}

/// Opens a WebSocket if needed and reads frames until one completes a batch or the socket closes.
///
/// Binary messages carry data of non-JSON streams; text messages are the core's
/// [`ServerMessage`]s: a JSON stream's data, a control that ends a batch, or both in one. Under
/// the subprotocols the reader offers ([`ws::RECEIPTS`], [`ws::COMBINED`]), a binary message's
/// header may hold its batch's control too, and under [`ws::RECEIPTS`] the reader sends
/// receipts. Browsers cannot set headers on a WebSocket, so only `params` are sent.
async fn ws_step(inner: &Rc<RefCell<Inner>>) -> Result<(), JsValue> {
    if inner.borrow().ws.is_none() {
        let (url, query, params_src) = {
            let s = inner.borrow();
            (s.url.clone(), s.query(Some("ws")), s.dynamic.params.clone())
        };
        let mut params = match http::resolve_map(&params_src, "params").await {
            Ok(params) => params,
            // A function of the caller's failed: tried again after a backoff, as a failed
            // connection is.
            Err(Failure::Unsent(e)) => {
                return back_off(inner, http::unsent_error("GET", &url, &e), None).await
            }
            Err(Failure::Fatal(e) | Failure::Network(e)) => return Err(e),
            Err(Failure::Aborted) => return Ok(()),
        };
        {
            // Cancelled (or the tab hidden) while the caller's params were resolved (a token
            // fetch): no socket is opened for a reader that stopped.
            let s = inner.borrow();
            if s.cancelled || s.done || s.paused {
                return Ok(());
            }
        }
        http::drop_reserved(&mut params);
        let mut q = query;
        // A socket's handshake headers cannot be read, so the server is told which incarnation
        // the reader reads in, and refuses another (see `why_refused`).
        if let Some(incarnation) = inner.borrow().incarnation.clone() {
            q.push((String::from(ws::INCARNATION_PARAM), incarnation));
        }
        q.extend_from_slice(&params);
        let full = ws_url(&http::with_query(&url, &mut q));
        let offered = error::msg(&[ws::RECEIPTS, ",", ws::COMBINED]);
        let socket = js::es_ws_open(&full, &offered, ws::PING, ws::PONG, WS_QUIET_MS)?;
        if socket.is_null() || socket.is_undefined() {
            return Err(error::new(
                error::NOT_SUPPORTED,
                "live: 'ws' needs a WebSocket implementation (globalThis.WebSocket)",
                None,
            )
            .into());
        }
        inner.borrow_mut().params_sent = params;
        inner.borrow_mut().ws = Some(WsConn {
            socket,
            parts: Vec::new(),
            delivered: false,
            protocol: None,
            opened: false,
            receipted: None,
        });
    }
    let Some(socket) = inner.borrow().ws.as_ref().map(|c| c.socket.clone()) else {
        return Ok(());
    };
    let next = js::get(&socket, "next");
    let Some(next) = next.dyn_ref::<Function>() else {
        return Ok(());
    };
    let frame = js::settle(next.call0(&socket)?).await?;
    let refused = inner.borrow().ws.as_ref().is_some_and(|c| !c.opened);
    if let Some(cause) = on_ws_frame(inner, &frame)? {
        if refused {
            why_refused(inner).await?;
        }
        back_off(inner, cause, None).await?;
    }
    Ok(())
}

/// A handshake failed before the socket opened: the same read over plain HTTP (whose body is
/// not taken) learns whether the stream is missing, gone, not allowed or not readable at the
/// reader's offset (then the reader ends, as over HTTP), or is there (then it reconnects).
/// Retrying a refusal would never end while live readers retry without limit.
async fn why_refused(inner: &Rc<RefCell<Inner>>) -> Result<(), JsValue> {
    let (url, query, params, fetch, with_headers, signal) = {
        let mut s = inner.borrow_mut();
        let signal = s.new_controller();
        let with_headers = !s.dynamic.headers.is_undefined() && !s.dynamic.headers.is_null();
        (
            s.url.clone(),
            s.query(None),
            s.dynamic.params.clone(),
            s.dynamic.fetch.clone(),
            with_headers,
            signal,
        )
    };
    // As the socket was sent: with the caller's params, and none of its headers (a socket
    // carries none). With them, a read authorized by a header would pass where the socket is
    // refused, and the reader would retry a refusal for ever.
    let dynamic = Dynamic {
        headers: JsValue::UNDEFINED,
        params,
        fetch,
    };
    let req = Request::get(&url, query, &dynamic);
    // Unreachable, or answering 5xx: the backoff that follows covers it.
    let Ok(sent) = http::send_once(&req, signal.as_ref()).await else {
        return Ok(());
    };
    let status = sent.status;
    if (400..500).contains(&status) && !crate::backoff::is_retryable_status(status) {
        // Read before the connections are dropped: that aborts this request's body too.
        let error = http::status_error("GET", &url, &sent).await;
        inner.borrow_mut().drop_connections();
        if with_headers && status == 401 {
            let text = js::get_string(&error, "message").unwrap_or_default();
            let hint = " (a WebSocket carries no headers: give credentials in params)";
            js::set(error.unchecked_ref(), "message", error::msg(&[&text, hint]));
        }
        return Err(error);
    }
    // A stream that is there may be another one: a socket cannot show its handshake's headers.
    let same = inner.borrow_mut().same_stream(&sent.response);
    let _ = http::cancel_body(&sent.response);
    same
}

/// Handles one WebSocket event; returns a reason to back off before reconnecting.
fn on_ws_frame(inner: &Rc<RefCell<Inner>>, frame: &JsValue) -> Result<Option<JsValue>, JsValue> {
    let mut s = inner.borrow_mut();
    if s.done || s.cancelled || s.paused {
        return Ok(None);
    }
    match js::get_string(frame, "kind").as_deref() {
        Some("open") => {
            if let Some(c) = s.ws.as_mut() {
                c.protocol = js::get_string(&c.socket, "protocol");
                c.opened = true;
            }
            s.retrying = false;
            Ok(None)
        }
        Some("binary") => {
            let bytes = js::body_bytes(&js::get(frame, "data")).unwrap_or_default();
            // The server chose a subprotocol: binary messages have a header.
            let protocol = s.ws.as_ref().and_then(|c| c.protocol.as_deref());
            let combined = protocol.is_some_and(ws::combines);
            let (control, payload) = if combined {
                let (control, payload) = ws::parse_binary(&bytes)
                    .map_err(|_| batch::parse_error("WebSocket binary message has a bad header"))?;
                (control, payload.to_vec())
            } else {
                (None, bytes)
            };
            if let Some(c) = s.ws.as_mut() {
                c.parts.push(payload);
            }
            if let Some(control) = control {
                end_batch(&mut s, control)?;
            }
            Ok(None)
        }
        Some("text") => {
            let text = js::get_string(frame, "data").unwrap_or_default();
            let message = ServerMessage::parse(&text).map_err(|e| {
                batch::parse_error(&error::msg(&["WebSocket message: ", e.message()]))
            })?;
            let control = match message {
                ServerMessage::Data { items, control } => {
                    if let Some(c) = s.ws.as_mut() {
                        c.parts.push(items.as_bytes().to_vec());
                    }
                    control
                }
                ServerMessage::Control(control) => Some(control),
                ServerMessage::Error {
                    status,
                    message,
                    for_append: false,
                } => return stream_error(&mut s, "WebSocket ", status, &message),
                ServerMessage::Error { .. } | ServerMessage::Other => None,
            };
            if let Some(control) = control {
                end_batch(&mut s, control)?;
            }
            Ok(None)
        }
        _ => {
            // Closed or failed: resume from the last control frame's offset.
            let conn = s.ws.take();
            // A socket that brought data made progress, however short it lived: the server
            // ends a long catch-up every few MiB so that the client reads before it sends more.
            if conn.as_ref().is_some_and(|c| c.delivered) {
                s.failures = 0;
                return Ok(None);
            }
            // The close code says why (1006: the connection broke; 1011: the server failed).
            let code = js::get(frame, "code").as_f64().unwrap_or(1006.0);
            let reason = js::get_string(frame, "reason").unwrap_or_default();
            let text = error::msg(&[
                "WebSocket ",
                &s.url,
                " closed (",
                &js::u64_text(code as u64),
                "): ",
                &reason,
            ]);
            let text = http::redact(&text, &s.params_sent, &s.headers_sent);
            let cause = error::new(error::NETWORK_ERROR, &text, None);
            Ok(Some(error::with(cause, "closeCode", code).into()))
        }
    }
}

/// A control ends the socket's batch: its data parts become a batch at the control's position.
/// Under [`ws::RECEIPTS`], the server hears how far the reader has got.
fn end_batch(s: &mut Inner, control: Control) -> Result<(), JsValue> {
    let parts = match s.ws.as_mut() {
        Some(c) => {
            if c.parts.iter().any(|p| !p.is_empty()) {
                c.delivered = true;
            }
            send_receipt(c, &control.next_offset);
            core::mem::take(&mut c.parts)
        }
        None => Vec::new(),
    };
    s.accept(
        batch::Data::Parts(&parts),
        Position {
            offset: control.next_offset,
            cursor: control.cursor,
            up_to_date: control.up_to_date,
            closed: control.closed,
        },
    )?;
    if s.done {
        s.drop_connections();
    }
    Ok(())
}

/// Tells the server the reader has everything before `offset`, when the socket takes receipts
/// and the reader has moved [`RECEIPT_EVERY`] since the last one (or sent none yet).
fn send_receipt(conn: &mut WsConn, offset: &str) {
    if conn.protocol.as_deref() != Some(ws::RECEIPTS) {
        return;
    }
    let Ok(position) = edgestream::Offset::parse(offset).map(edgestream::Offset::position) else {
        return;
    };
    if conn
        .receipted
        .is_some_and(|last| position.saturating_sub(last) < RECEIPT_EVERY)
    {
        return;
    }
    conn.receipted = Some(position);
    let send = js::get(&conn.socket, "send");
    if let Some(f) = send.dyn_ref::<Function>() {
        let _ = f.call1(
            &conn.socket,
            &JsValue::from_str(&ws::receipt_message(offset)),
        );
    }
}

/// An error about the stream, sent before the server ends the socket (or, as an `error` event,
/// the SSE response): a stream that is gone ends the reader with the error a read would get;
/// anything else is a reason to reconnect, from the reader's offset.
fn stream_error(
    s: &mut Inner,
    transport: &str,
    status: u16,
    message: &str,
) -> Result<Option<JsValue>, JsValue> {
    s.drop_connections();
    let status_text = js::u64_text(u64::from(status));
    let text = error::msg(&[transport, &s.url, ": ", message, " (", &status_text, ")"]);
    let text = http::redact(&text, &s.params_sent, &s.headers_sent);
    let code = match status {
        404 => error::NOT_FOUND,
        410 => error::GONE,
        401 => error::UNAUTHORIZED,
        403 => error::FORBIDDEN,
        // Asking again would only be refused again.
        400 => error::BAD_REQUEST,
        _ => {
            return Ok(Some(
                error::new(error::NETWORK_ERROR, &text, Some(status)).into(),
            ))
        }
    };
    Err(error::new(code, &text, Some(status)).into())
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn websocket_urls() {
        assert_eq!(ws_url("http://h/v1/stream/a?x=1"), "ws://h/v1/stream/a?x=1");
        assert_eq!(ws_url("https://h/a"), "wss://h/a");
        assert_eq!(ws_url("ws://h/a"), "ws://h/a");
    }
}
