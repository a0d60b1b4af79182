//! Live reads held at the edge: long-poll and SSE.
//!
//! The edge, not the Durable Object, holds each reader's open response. It subscribes to the
//! object over an internal WebSocket that the object accepts with the hibernation API, so an
//! object with thousands of open readers sleeps between appends. Catch-up ranges the object can
//! answer at once come back as plain pages; the edge relays them and subscribes again.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use edgestream::cursor;
use edgestream::headers::{self as h, ContentType, LiveMode, SseEncoding};
use edgestream::sse::{self, Control, TextPieces};
use edgestream::stream::{CacheScope, Expiry};
use edgestream::{json, Offset, ReadFrom};
use futures_util::future::{select, Either};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use worker::web_sys::{self, WorkerGlobalScope};
use worker::{Delay, Headers, Method, Request, RequestInit, Response, ResponseBody, Result, Stub};

use super::object_url;
use crate::config::Config;
use crate::frame::{self, Frame};
use crate::http::{self, header, now_ms, random_u32};
use crate::path::StreamName;
use crate::pipe::{body_pipe, BodyWriter};
use crate::reply::{self, ReadReply, X_AT_TAIL, X_CONTENT_TYPE, X_INSTANCE};
use crate::socket::{self, Socket, SocketEvent};
use crate::wsproto;

/// How the object answered a subscription.
pub(super) enum Subscription {
    /// Over HTTP: a page of data that was already there, or an error.
    Page(Response),
    /// Upgraded: frames will follow.
    Live(LiveSocket),
}

pub(super) struct LiveSocket {
    pub(super) socket: Socket,
    /// Where the reader starts (the tail, for `offset=now`).
    pub(super) start: Offset,
    pub(super) content_type: String,
    instance: String,
    closed: bool,
    /// The stream is a channel: its responses say so (`Stream-Channel: true`).
    channel: bool,
    /// The stream's TTL or expiry, which bounds how long its pages may be cached.
    expiry: Expiry,
    /// An SSE reader at the tail, sent no empty backlog frame: the edge writes the control
    /// event that frame would have made ([`X_AT_TAIL`]).
    at_tail: bool,
}

fn offset_token(from: ReadFrom) -> String {
    match from {
        ReadFrom::Start => "-1".into(),
        ReadFrom::Now => "now".into(),
        ReadFrom::At(o) => o.to_string(),
    }
}

/// Asks the stream's object for a live subscription at `from`: a page over HTTP when data is
/// already waiting (or on error), else an upgraded internal socket.
pub(super) async fn subscribe(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    mode: LiveMode,
    extra: &[(&str, &str)],
) -> Result<Subscription> {
    subscribe_until(stub, name, from, mode, extra, None).await
}

/// [`subscribe`], abandoned when `signal` aborts (the request's, when its client goes away):
/// the object's page read is cancelled, and the call fails inside the abort event, since the
/// runtime delivers no answer to a request whose client went away.
pub(super) async fn subscribe_until(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    mode: LiveMode,
    extra: &[(&str, &str)],
    signal: Option<&web_sys::AbortSignal>,
) -> Result<Subscription> {
    let resp = ask_object(stub, name, from, mode, extra, signal).await?;
    if resp.status_code() != 101 {
        return Ok(Subscription::Page(resp));
    }
    let meta = resp.headers();
    let start = header(meta, h::STREAM_NEXT_OFFSET).and_then(|v| Offset::parse(&v).ok());
    let content_type =
        header(meta, X_CONTENT_TYPE).unwrap_or_else(|| h::DEFAULT_CONTENT_TYPE.into());
    let instance = header(meta, X_INSTANCE).unwrap_or_default();
    let closed = h::is_closed(header(meta, h::STREAM_CLOSED).as_deref());
    let at_tail = header(meta, X_AT_TAIL).is_some();
    let channel = is_channel(meta);
    let expiry = Expiry::from_headers(
        header(meta, h::STREAM_TTL).as_deref(),
        header(meta, h::STREAM_EXPIRES_AT).as_deref(),
    )
    .unwrap_or_default();
    let (Some(start), Some(ws)) = (start, resp.websocket()) else {
        return Err(worker::Error::RustError(
            "stream object upgraded without its metadata".into(),
        ));
    };
    Ok(Subscription::Live(LiveSocket {
        socket: Socket::accept(ws)?,
        start,
        content_type,
        instance,
        closed,
        channel,
        expiry,
        at_tail,
    }))
}

/// The live request for `from` in `mode` to the stream's object, with `extra` headers, given
/// up when `signal` aborts.
pub(super) async fn ask_object(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    mode: LiveMode,
    extra: &[(&str, &str)],
    signal: Option<&web_sys::AbortSignal>,
) -> Result<Response> {
    let url = object_url(
        name,
        Some(&format!(
            "offset={}&live={}",
            offset_token(from),
            mode.as_str()
        )),
    );
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let req = Request::new_with_init(&url, &init)?;
    let req = match signal {
        // The request as made, with the signal: workers-rs's `RequestInit` has no field for it.
        Some(signal) => {
            let init = web_sys::RequestInit::new();
            init.set_signal(Some(signal));
            Request::from(web_sys::Request::new_with_request_and_init(
                req.inner(),
                &init,
            )?)
        }
        None => req,
    };
    stub.fetch_with_request(req).await
}

pub(super) fn is_channel(headers: &Headers) -> bool {
    header(headers, edgestream::channel::STREAM_CHANNEL).is_some_and(|v| v == "true")
}

/// Adds `Stream-Channel: true` to a response the edge made for a channel's reader.
pub(super) fn mark_channel(resp: Result<Response>, channel: bool) -> Result<Response> {
    let resp = resp?;
    if channel {
        resp.headers()
            .set(edgestream::channel::STREAM_CHANNEL, "true")?;
    }
    Ok(resp)
}

/// Adds the cursor to a page the object answered directly.
fn with_cursor(resp: Response, cursor: &str) -> Result<Response> {
    let resp = http::mutable(resp)?;
    let status = resp.status_code();
    if (200..300).contains(&status) || status == 304 {
        resp.headers().set(h::STREAM_CURSOR, cursor)?;
    }
    Ok(resp)
}

/// The incarnation of the stream an SSE or WebSocket reader follows, once the object named it
/// (on a catch-up page, or on the live socket's upgrade). Each later subscription names it, so
/// a stream deleted and created again ends the reader rather than going on in the new one.
#[derive(Clone, Default)]
pub(super) struct Incarnation(Option<String>);

impl Incarnation {
    /// Keeps the incarnation `sub` names, if none is known yet.
    pub(super) fn learn(&mut self, sub: &Subscription) {
        if self.0.is_none() {
            self.0 = match sub {
                Subscription::Page(resp) => header(resp.headers(), X_INSTANCE),
                Subscription::Live(live) => Some(live.instance.clone()),
            }
            .filter(|instance| !instance.is_empty());
        }
    }

    /// The header a subscription names it in (none until it is known).
    pub(super) fn header(&self) -> Vec<(&'static str, &str)> {
        self.0.iter().map(|i| (X_INSTANCE, i.as_str())).collect()
    }
}

/// What a long-poll's request asked for, besides the offset.
pub struct Asked<'a> {
    /// The `cursor` it echoes.
    pub cursor: Option<&'a str>,
    /// `If-None-Match`: a page it already has is answered 304.
    pub if_none_match: Option<&'a str>,
}

/// `ms` less up to 10%, at random. Readers that started together (a deploy, a burst of
/// reconnects) should not all come back together: a stampede on each SSE close or long-poll
/// timeout would repeat itself forever, and delay live delivery to everyone while it lasts.
fn staggered(ms: u64) -> u64 {
    ms - ms / 10 * u64::from(random_u32() % 1000) / 1000
}

/// How long a live response may last: `ms`, but never past `read_until` (Unix seconds), the
/// expiry of the token that allowed the read, so that reading on needs a valid token.
fn until_expiry(ms: u64, read_until: Option<i64>) -> u64 {
    let Some(read_until) = read_until else {
        return ms;
    };
    ms.min(ms_left(read_until).max(0) as u64)
}

/// Milliseconds from now until `read_until` (Unix seconds); negative once it has passed.
pub(super) fn ms_left(read_until: i64) -> i64 {
    read_until.saturating_mul(1000).saturating_sub(now_ms())
}

/// `live=long-poll`: data at once if there is any, else wait for the next append or time out.
pub async fn long_poll(
    stub: &Stub,
    name: &StreamName,
    from: ReadFrom,
    asked: Asked<'_>,
    config: &Config,
    read_until: Option<i64>,
    signal: &web_sys::AbortSignal,
) -> Result<Response> {
    let cursor = cursor::next_cursor(now_ms(), asked.cursor, random_u32());
    let extra: Vec<(&str, &str)> = asked
        .if_none_match
        .map(|tag| (h::IF_NONE_MATCH, tag))
        .into_iter()
        .collect();
    let mut live = match subscribe(stub, name, from, LiveMode::LongPoll, &extra).await? {
        Subscription::Page(resp) => return with_cursor(resp, &cursor),
        Subscription::Live(live) => live,
    };
    // Nothing is written to a waiting long-poll, so only the runtime can tell that its client
    // left: the internal socket then closes at once, which frees the reader's place under
    // MAX_LIVE_READERS rather than holding it until the next append or the timeout.
    let _watch = live.socket.close_on_abort(signal);
    let mut timeout = Delay::from(Duration::from_millis(until_expiry(
        staggered(config.long_poll_timeout_ms),
        read_until,
    )));
    let json_stream = ContentType::parse_stored(&live.content_type).is_ok_and(|c| c.is_json());
    loop {
        let event = match select(Box::pin(live.socket.next()), &mut timeout).await {
            Either::Left((event, _)) => event,
            Either::Right(_) => {
                let resp =
                    reply::no_content(live.start, live.closed, Some(&cursor), &live.instance);
                return mark_channel(resp, live.channel);
            }
        };
        match event {
            SocketEvent::Binary(bytes) => match frame::decode(&bytes) {
                Some(Frame::Data {
                    start,
                    end,
                    closed,
                    up_to_date,
                    payload,
                }) => {
                    if payload.is_empty() {
                        if closed {
                            let resp = reply::no_content(end, true, Some(&cursor), &live.instance);
                            return mark_channel(resp, live.channel);
                        }
                        continue;
                    }
                    let page = ReadReply {
                        content_type: &live.content_type,
                        json: json_stream,
                        data: payload.into(),
                        start,
                        end,
                        up_to_date,
                        closed: closed && up_to_date,
                        instance: &live.instance,
                        cursor: Some(&cursor),
                        // `now` names no fixed position (see `ReadReply::cache`).
                        cache: (from != ReadFrom::Now).then(|| CacheScope {
                            shared: config.shared_reads,
                            lifetime_s: live.expiry.lifetime_s(now_ms()),
                        }),
                    };
                    return mark_channel(page.respond(None), live.channel);
                }
                Some(Frame::Gone { error }) => return http::error(&error),
                None => return http::unavailable("bad frame from the stream object"),
            },
            SocketEvent::Text(_) | SocketEvent::Overflow => continue,
            // The object went away (restart, eviction): nothing new arrived, the client polls
            // again. Or the client went away (`close_on_abort`), and nobody reads this.
            SocketEvent::Closed => {
                let resp = reply::no_content(live.start, false, Some(&cursor), &live.instance);
                return mark_channel(resp, live.channel);
            }
        }
    }
}

/// What one SSE response has told its reader, and how it encodes what comes next.
#[derive(Clone)]
struct SseState {
    offset: ReadFrom,
    cursor: String,
    encoding: SseEncoding,
    json: bool,
    /// The offset and up-to-date flag of the last control event, to skip repeats.
    last_control: Option<(String, bool)>,
    /// The previous catch-up page moved nothing.
    stalled: bool,
    /// Nothing more may be written: the stream closed, or a frame did not follow on.
    done: bool,
    /// The incarnation of the stream this response reads.
    instance: Incarnation,
    /// A text stream's pieces (not JSON: its pieces are whole messages), which may cut a
    /// character or a CRLF where a writer cut them.
    text: Option<TextPieces>,
}

/// `live=sse`: catch-up pages, then live frames, as SSE `data` and `control` events. The server
/// closes the response after `SSE_CONNECTION_MS`; clients reconnect from the last offset.
///
/// Catch-up runs as a task that waits for the reader to take each page. Once the reader is
/// live, each frame from the object becomes SSE events inside the socket's own `message`
/// handler ([`SseFollower`]), with no task, channel or promise between them: with a thousand
/// readers on a stream, that per-frame path is where the edge spends its time. Live frames do
/// not wait for the reader, so one that falls more than `SSE_BACKLOG_BYTES` behind (a large
/// append, a slow or stalled connection) goes back to catch-up, in the same response.
pub async fn sse(
    stub: Stub,
    name: StreamName,
    from: ReadFrom,
    client_cursor: Option<String>,
    config: &Config,
    read_until: Option<i64>,
    signal: web_sys::AbortSignal,
) -> Result<Response> {
    // The first answer decides the status: a missing stream is a 404, not an empty event stream.
    let first = subscribe(&stub, &name, from, LiveMode::Sse, &[]).await?;
    let (first, content_type, channel, incarnation) = match first {
        Subscription::Page(resp) if resp.status_code() != 200 => return Ok(resp),
        Subscription::Page(resp) => {
            let ct = header(resp.headers(), h::CONTENT_TYPE).unwrap_or_default();
            let channel = is_channel(resp.headers());
            let incarnation = header(resp.headers(), h::STREAM_INCARNATION).unwrap_or_default();
            (Subscription::Page(resp), ct, channel, incarnation)
        }
        Subscription::Live(live) => {
            let ct = live.content_type.clone();
            let channel = live.channel;
            let incarnation = live.instance.clone();
            (Subscription::Live(live), ct, channel, incarnation)
        }
    };
    let ct =
        ContentType::parse_stored(&content_type).unwrap_or_else(|_| ContentType::default_type());
    let state = SseState {
        offset: from,
        cursor: cursor::next_cursor(now_ms(), client_cursor.as_deref(), random_u32()),
        encoding: ct.sse_encoding(),
        json: ct.is_json(),
        last_control: None,
        stalled: false,
        done: false,
        instance: Incarnation::default(),
        text: (ct.sse_encoding() == SseEncoding::Utf8 && !ct.is_json()).then(TextPieces::default),
    };
    let (readable, body) = body_pipe(config.sse_backlog_bytes)?;
    let source = Rc::new(SseSource {
        stub,
        name,
        heartbeat_ms: config.sse_heartbeat_ms,
        deadline_ms: now_ms()
            + until_expiry(staggered(config.sse_connection_ms), read_until) as i64,
        signal,
    });
    wasm_bindgen_futures::spawn_local(catch_up(source, state, Some(first), body));
    let resp = Response::from_body(ResponseBody::Stream(readable))?;
    let headers = resp.headers();
    headers.set(h::CONTENT_TYPE, "text/event-stream")?;
    headers.set(h::CACHE_CONTROL, "no-cache")?;
    if ct.sse_encoding() == SseEncoding::Base64 {
        headers.set(h::STREAM_SSE_DATA_ENCODING, "base64")?;
    }
    // Every event of this response comes from this incarnation: each later subscription names
    // it, and one deleted meanwhile ends the response with an `error` event.
    reply::name_incarnation(headers, &incarnation)?;
    mark_channel(Ok(resp), channel)
}

/// Where one SSE response reads from, and until when.
struct SseSource {
    stub: Stub,
    name: StreamName,
    deadline_ms: i64,
    /// See [`crate::config::Config::sse_heartbeat_ms`].
    heartbeat_ms: u64,
    /// The request's, which aborts when the client goes away ([`socket::close_on_abort`]).
    signal: web_sys::AbortSignal,
}

impl SseSource {
    /// `waiting`'s output, or `None` if the response's deadline comes first.
    async fn in_time<T>(&self, waiting: impl std::future::Future<Output = T>) -> Option<T> {
        http::within(self.ms_left(), waiting).await
    }

    /// Milliseconds until the response's deadline, 0 once it has passed.
    fn ms_left(&self) -> u64 {
        (self.deadline_ms - now_ms()).max(0) as u64
    }
}

/// Relays pages until the object hands over a live socket, then leaves the rest to an
/// [`SseFollower`]. Each page waits for the reader to take it before the next is fetched; a
/// reader that has not taken it by the deadline loses its connection and what was queued.
async fn catch_up(
    source: Rc<SseSource>,
    mut state: SseState,
    first: Option<Subscription>,
    body: BodyWriter,
) {
    // A client that goes away while this waits for it to take a page, or for the object's next
    // page, must end it: the runtime resumes no timer or I/O of that request afterwards, so it
    // would otherwise wait for good, holding its state and the page read for nobody. The abort
    // fails the write (or the subscription) inside the abort event, and the loop ends.
    let _watch = body.abort_on(&source.signal);
    let mut pending = first;
    loop {
        let left = source.deadline_ms - now_ms();
        if left <= 0 || state.done {
            return body.close();
        }
        let sub = match pending.take() {
            Some(sub) => sub,
            None => {
                let followed = state.instance.header();
                match subscribe_until(
                    &source.stub,
                    &source.name,
                    state.offset,
                    LiveMode::Sse,
                    &followed,
                    Some(&source.signal),
                )
                .await
                {
                    Ok(sub) => sub,
                    Err(e) => {
                        worker::console_error!("sse: {e}");
                        return body.close();
                    }
                }
            }
        };
        // Subscribing took time: nothing goes out past the deadline (the token's expiry, say).
        if now_ms() >= source.deadline_ms {
            return body.close();
        }
        state.instance.learn(&sub);
        match sub {
            Subscription::Page(resp) => {
                if resp.status_code() != 200 {
                    if matches!(resp.status_code(), 404 | 410) {
                        body.send(&gone_event(resp.status_code()));
                    }
                    return body.close();
                }
                let meta = resp.headers().clone();
                let bytes = match http::response_bytes(&resp).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        worker::console_error!("sse: {e}");
                        return body.close();
                    }
                };
                let Some(chunk) = state.page(&meta, &bytes) else {
                    return body.close();
                };
                let taken = body.send_and_wait(&chunk);
                // The page is in the body now: free its bytes before waiting for the reader.
                drop((bytes, chunk));
                match source.in_time(taken).await {
                    Some(true) => {}
                    Some(false) => return body.close(),
                    None => return body.abort(),
                }
            }
            Subscription::Live(live) => {
                state.offset = ReadFrom::At(live.start);
                if live.at_tail {
                    // What the object's empty backlog frame would have said (see `X_AT_TAIL`),
                    // written before the follower handles any frame.
                    let chunk = state.frame(live.start, live.start, live.closed, true, &[]);
                    if chunk.is_some_and(|chunk| !body.send(&chunk)) || state.done {
                        // Dropping the socket closes it.
                        return body.close();
                    }
                }
                return SseFollower::start(live.socket, state, body, source);
            }
        }
    }
}

/// The last event of a response whose stream was deleted: `event: error`, its data the error
/// message of `live=ws`. A client that took the end for a routine one would resume from its
/// offset, which a stream created again at the same path could take as its own.
fn gone_event(status: u16) -> Vec<u8> {
    let message = if status == 410 {
        "stream was deleted"
    } else {
        "stream not found"
    };
    let json = wsproto::ErrorReply::of(None, status, message.into()).to_json();
    format!("event: error\ndata:{json}\n\n").into_bytes()
}

/// The live part of one SSE response: the object's frames, handled as they arrive.
struct SseFollower {
    state: SseState,
    /// Both `None` once finished, which also breaks the cycle between this and its listeners.
    socket: Option<web_sys::WebSocket>,
    body: Option<BodyWriter>,
    /// The timer for the next heartbeat or the deadline, whichever is first, and the function
    /// it calls, set again on each tick.
    timeout_id: Option<i32>,
    on_tick: Option<wasm_bindgen::JsValue>,
    /// When something was last written (catch-up before this counts as now).
    written_ms: i64,
    /// To go back to catch-up when the reader falls behind.
    source: Rc<SseSource>,
    /// Closes the socket should the reader go away between messages; dropped when finished.
    abort_watch: Option<socket::AbortWatch>,
}

type SharedFollower = Rc<RefCell<SseFollower>>;

/// How long past its deadline a follower may still hold its socket and body.
const ABANDON_AFTER_MS: i64 = 10_000;

thread_local! {
    /// Every follower that may still be running, with the time after which it is abandoned.
    /// When a client disconnects, workerd cancels its request and runs none of its callbacks
    /// again, so neither the deadline timer nor `on_gone` fires; the follower's references to
    /// its socket and body would then keep it, its listeners and the socket alive for good.
    /// Starting a follower drops those references for any follower well past its deadline.
    static FOLLOWERS: RefCell<Vec<(i64, Weak<RefCell<SseFollower>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Registers `follower` and abandons the ones whose requests must have been cancelled.
fn track(follower: &SharedFollower, deadline_ms: i64) {
    let now = now_ms();
    FOLLOWERS.with(|all| {
        let mut all = all.borrow_mut();
        all.retain(|(abandon_at, weak)| {
            let Some(f) = weak.upgrade() else {
                return false;
            };
            if *abandon_at > now {
                return true;
            }
            if let Ok(mut f) = f.try_borrow_mut() {
                // No method calls on the socket or body: they belong to a request that no longer
                // runs. Dropping the abort watch takes its listener off that request's signal
                // (a failure to is ignored), which would otherwise keep the socket alive.
                f.state.done = true;
                f.socket = None;
                f.body = None;
                f.timeout_id = None;
                f.on_tick = None;
                f.abort_watch = None;
            }
            false
        });
        all.push((deadline_ms + ABANDON_AFTER_MS, Rc::downgrade(follower)));
    });
}

impl SseFollower {
    /// Takes over `socket`: events it already queued first, then its listeners, a timer for
    /// the response's deadline, and a watch on the reader going away. All of these end in
    /// [`SseFollower::finish`], which drops the follower's references so the runtime can
    /// collect the socket, the listeners and with them this follower.
    fn start(socket: Socket, state: SseState, body: BodyWriter, source: Rc<SseSource>) {
        let (ws, queued) = socket.detach();
        let deadline_ms = source.deadline_ms;
        let follower = Rc::new(RefCell::new(SseFollower {
            state,
            socket: Some(ws.clone()),
            body: Some(body),
            timeout_id: None,
            on_tick: None,
            written_ms: now_ms(),
            source,
            abort_watch: None,
        }));
        track(&follower, deadline_ms);
        for event in queued {
            SseFollower::on_event(&follower, event);
        }
        if follower.borrow().socket.is_none() {
            return;
        }
        let listen = |name: &str, f: Box<dyn FnMut(web_sys::Event)>| {
            // The socket holds the only reference from here: the listener, and the follower it
            // holds, are freed once the socket is collected. (`Closure::forget` would keep them
            // for the life of the isolate.)
            let listener = Closure::wrap(f).into_js_value();
            let _ = ws.add_event_listener_with_callback(name, listener.unchecked_ref());
        };
        // A client that leaves between messages would otherwise be noticed only at the next
        // write (a heartbeat at the latest), and hold its place under MAX_LIVE_READERS until
        // then. The socket's close ends the follower.
        let watch = socket::close_on_abort(&ws, &follower.borrow().source.signal);
        follower.borrow_mut().abort_watch = watch;
        let f = follower.clone();
        listen(
            "message",
            Box::new(move |e| {
                let event = SocketEvent::from_message(e.unchecked_ref());
                SseFollower::on_event(&f, event);
            }),
        );
        for name in ["close", "error"] {
            let f = follower.clone();
            listen(name, Box::new(move |_| SseFollower::finish(&f)));
        }
        // The timer and the body's watch hold the follower weakly: the runtime may keep their
        // callbacks after it cancels the request (a reader that hung up), and they must not keep
        // the follower's state with them. The socket's listeners keep it alive until then.
        let f = Rc::downgrade(&follower);
        let on_tick = Closure::<dyn FnMut()>::new(move || {
            if let Some(f) = f.upgrade() {
                SseFollower::tick(&f);
            }
        })
        .into_js_value();
        let f = Rc::downgrade(&follower);
        let mut this = follower.borrow_mut();
        this.on_tick = Some(on_tick);
        this.arm();
        if let Some(body) = &this.body {
            body.on_gone(move || SseFollower::finish_weak(&f));
        }
    }

    fn finish_weak(follower: &Weak<RefCell<SseFollower>>) {
        if let Some(f) = follower.upgrade() {
            SseFollower::finish(&f);
        }
    }

    fn on_event(follower: &SharedFollower, event: SocketEvent) {
        let done = {
            let Ok(mut this) = follower.try_borrow_mut() else {
                return;
            };
            if this.socket.is_none() {
                return;
            }
            // Past the deadline (the token's expiry, say) nothing more is written, should the
            // timer be late.
            let now = now_ms();
            if now >= this.source.deadline_ms {
                drop(this);
                return SseFollower::finish(follower);
            }
            if this.body.as_ref().is_some_and(BodyWriter::behind) {
                // Too much is queued for this reader: the rest comes as catch-up pages, which
                // wait for it. This frame is among what they will read.
                drop(this);
                return SseFollower::back_to_catch_up(follower);
            }
            let chunk = match event {
                SocketEvent::Binary(bytes) => match frame::decode(&bytes) {
                    Some(Frame::Data {
                        start,
                        end,
                        closed,
                        up_to_date,
                        payload,
                    }) => this.state.frame(start, end, closed, up_to_date, payload),
                    Some(Frame::Gone { error }) => {
                        this.state.done = true;
                        Some(gone_event(error.status()))
                    }
                    None => {
                        this.state.done = true;
                        None
                    }
                },
                SocketEvent::Text(_) | SocketEvent::Overflow => None,
                // The object restarted or dropped us. End the response rather than subscribe
                // again: the client resumes from its last offset, and a socket that keeps
                // failing can never turn into a loop inside this request.
                SocketEvent::Closed => {
                    this.state.done = true;
                    None
                }
            };
            if let Some(chunk) = chunk {
                this.written_ms = now;
                if !this.body.as_ref().is_some_and(|body| body.send(&chunk)) {
                    this.state.done = true;
                }
            }
            this.state.done
        };
        if done {
            SseFollower::finish(follower);
        }
    }

    /// Sets the timer for the next tick: when the response will have been silent for a
    /// heartbeat, or the deadline if sooner.
    fn arm(&mut self) {
        let Some(on_tick) = &self.on_tick else {
            return;
        };
        let silent = (now_ms() - self.written_ms).max(0) as u64;
        let heartbeat = self.source.heartbeat_ms.saturating_sub(silent).max(1);
        let next = self.source.ms_left().min(heartbeat);
        let ms = i32::try_from(next).unwrap_or(i32::MAX);
        let global: WorkerGlobalScope = js_sys::global().unchecked_into();
        self.timeout_id = global
            .set_timeout_with_callback_and_timeout_and_arguments_0(on_tick.unchecked_ref(), ms)
            .ok();
    }

    /// Ends the response at its deadline; before it, sends a comment line if nothing was
    /// written for (nearly) a heartbeat, so no silence is longer than one. A reader that hung up is noticed only when a write reaches
    /// its connection (the runtime then cancels the request, which closes the internal socket
    /// and lets the object forget the reader), and a proxy may cut a quiet connection.
    fn tick(follower: &SharedFollower) {
        let Ok(mut this) = follower.try_borrow_mut() else {
            return;
        };
        this.timeout_id = None;
        let now = now_ms();
        // A timer may fire a little early: a tenth of a heartbeat early still sends one.
        let heartbeat = this.source.heartbeat_ms as i64;
        let due = now - this.written_ms >= heartbeat - heartbeat / 10;
        if now >= this.source.deadline_ms
            || (due && !this.body.as_ref().is_some_and(|body| body.send(b":\n\n")))
        {
            drop(this);
            return SseFollower::finish(follower);
        }
        if due {
            this.written_ms = now;
        }
        this.arm();
    }

    /// Leaves the live socket and hands the response back to [`catch_up`], from the offset of
    /// the last frame written.
    fn back_to_catch_up(follower: &SharedFollower) {
        let (state, body, source) = {
            let Ok(mut this) = follower.try_borrow_mut() else {
                return;
            };
            let Some(body) = this.body.take() else {
                return;
            };
            (this.state.clone(), body, this.source.clone())
        };
        SseFollower::finish(follower);
        wasm_bindgen_futures::spawn_local(async move {
            // Subscribing again at once would only find the reader still behind.
            match source.in_time(body.drained()).await {
                Some(true) => catch_up(source, state, None, body).await,
                Some(false) => body.close(),
                None => body.abort(),
            }
        });
    }

    /// Ends the response and closes the internal socket, once. The socket's close frame goes
    /// out in the same turn as the body's end, so it reaches the object well before the reader
    /// can have come back: a reader reconnecting at a full stream finds its place free.
    fn finish(follower: &SharedFollower) {
        let Ok(mut this) = follower.try_borrow_mut() else {
            return;
        };
        this.state.done = true;
        if let Some(body) = this.body.take() {
            body.close();
        }
        if let Some(ws) = this.socket.take() {
            let _ = ws.close_with_code_and_reason(1000, "reader done");
        }
        if let Some(id) = this.timeout_id.take() {
            let global: WorkerGlobalScope = js_sys::global().unchecked_into();
            global.clear_timeout_with_handle(id);
        }
        this.on_tick = None;
        this.abort_watch = None;
    }
}

impl SseState {
    /// A page the object answered over HTTP (catch-up, or the inherited part of a fork);
    /// `None` when it ends the response.
    fn page(&mut self, meta: &Headers, body: &[u8]) -> Option<Vec<u8>> {
        let Some(end) = header(meta, h::STREAM_NEXT_OFFSET).and_then(|v| Offset::parse(&v).ok())
        else {
            self.done = true;
            return None;
        };
        let up_to_date = h::is_true(header(meta, h::STREAM_UP_TO_DATE).as_deref());
        let closed = h::is_closed(header(meta, h::STREAM_CLOSED).as_deref());
        let mut out = Vec::with_capacity(body.len() + 128);
        let has_data = if self.json {
            body.len() > 2
        } else {
            !body.is_empty()
        };
        if self.json {
            // JSON pages arrive already rendered as one array.
            if has_data {
                sse::encode_data(body, self.encoding, &mut out);
            }
        } else if has_data || closed {
            self.data(body, closed, &mut out);
        }
        self.control(self.reached(end), up_to_date, closed, &mut out);
        // A page that moved nothing twice in a row would only repeat itself: end instead.
        let progress = has_data || self.offset != ReadFrom::At(end);
        if closed || (!progress && self.stalled) {
            self.done = true;
        }
        self.stalled = !progress;
        self.offset = ReadFrom::At(end);
        Some(out)
    }

    /// A live frame: a data event (when it carries bytes) and its control event.
    fn frame(
        &mut self,
        start: Offset,
        end: Offset,
        closed: bool,
        up_to_date: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        if let ReadFrom::At(expected) = self.offset {
            if start != expected {
                // A gap or overlap would corrupt the reader's view: end, and let it resume.
                self.done = true;
                return None;
            }
        }
        let mut out = Vec::with_capacity(payload.len() + 160);
        if self.json {
            if !payload.is_empty() {
                sse::encode_data(&json::render_array(payload), self.encoding, &mut out);
            }
        } else if !payload.is_empty() || closed {
            self.data(payload, closed, &mut out);
        }
        self.control(self.reached(end), up_to_date, closed, &mut out);
        self.offset = ReadFrom::At(end);
        if closed {
            self.done = true;
        }
        (!out.is_empty()).then_some(out)
    }

    /// Appends the data event for a non-JSON piece, which ends the stream when `closed`: a text
    /// stream's as [`TextPieces`] joins them, none when nothing is left to send.
    fn data(&mut self, piece: &[u8], closed: bool, out: &mut Vec<u8>) {
        match &mut self.text {
            Some(text) => {
                let piece = text.next(piece, closed);
                if !piece.is_empty() {
                    sse::encode_data(&piece, self.encoding, out);
                }
            }
            None if !piece.is_empty() => sse::encode_data(piece, self.encoding, out),
            None => {}
        }
    }

    /// The offset the reader has reached once sent what ends at `end`: before the start of a
    /// character held back for the next piece.
    fn reached(&self, end: Offset) -> Offset {
        let held = self.text.as_ref().map_or(0, TextPieces::held) as u64;
        Offset::new(end.position().saturating_sub(held)).unwrap_or(end)
    }

    /// Appends a control event, unless it would repeat the previous one word for word.
    fn control(&mut self, end: Offset, up_to_date: bool, closed: bool, out: &mut Vec<u8>) {
        let next_offset = end.to_string();
        let repeat = out.is_empty()
            && !closed
            && self.last_control.as_ref() == Some(&(next_offset.clone(), up_to_date));
        if repeat {
            return;
        }
        let control = Control {
            next_offset: next_offset.clone(),
            cursor: Some(self.cursor.clone()),
            up_to_date,
            closed,
        };
        sse::encode_control(&control, out);
        self.last_control = Some((next_offset, up_to_date));
    }
}
