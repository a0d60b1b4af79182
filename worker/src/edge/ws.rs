//! `live=ws`: edgestream's WebSocket extension of the protocol (docs/websocket.md).
//!
//! One client socket carries what SSE carries (data, then a control message) and, the other
//! way, appends. The handshake goes on to the stream's object, which accepts the client socket
//! itself as a hibernating WebSocket when the client starts near the tail (almost always): the
//! object then sends it each append directly and applies its append frames, and an open socket
//! never keeps the object awake. The object answers a long catch-up, or a fork's inherited
//! range, with a page instead; then the edge holds the client socket and follows the stream as
//! SSE does: catch-up pages over HTTP, then frames from its own internal hibernating
//! subscription. There each append frame becomes an internal POST with the headers an HTTP
//! client would send, so every rule and error is POST's.
//!
//! The edge's session is two loops over one client socket: [`Follower`] sends data and control
//! messages, [`Appender`] reads append frames one at a time (so a producer's appends keep
//! their order) and answers each with an ack or an error.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use edgestream::headers::{self as h, ContentType, LiveMode};
use edgestream::ws::Receipt;
use edgestream::{cursor, ws, Offset, ProtocolError, ReadFrom};
use futures_util::future::{select, Either};
use worker::{
    Delay, Env, Method, Request, RequestInit, Response, Result, Stub, Url, WebSocketPair,
};

use super::live::{ask_object, is_channel, mark_channel, subscribe, Incarnation, Subscription};
use super::object_url;
use crate::auth;
use crate::config::Config;
use crate::frame::{self, Frame};
use crate::http::{self, header, now_ms, random_u32};
use crate::path::StreamName;
use crate::reply;
use crate::socket::{Socket, SocketEvent, SocketSender};
use crate::wsproto::{
    self, close, parse_client, AppendAllowance, AppendFrame, AppendGrant, ClientHello,
    ClientMessage, Emitter, ErrorReply, Incoming, PongPace, Sink,
};

/// How often the internal subscription may drop without delivering anything before the edge
/// gives up and asks the client to reconnect (close code 1012).
const MAX_DROPS: u32 = 3;
/// After the stream ends, how long an append already in flight may take to be acknowledged.
const DRAIN_MS: u64 = 10_000;

/// `GET /v1/stream/<path>?offset=X&live=ws` with `Upgrade: websocket`. The request has been
/// authorized to read; whether it may also append is checked here, once, and its grant is
/// consulted again on every append (a token can expire while the socket is open).
#[allow(clippy::too_many_arguments)]
pub async fn websocket(
    req: &Request,
    url: &Url,
    env: &Env,
    stub: Stub,
    name: StreamName,
    from: ReadFrom,
    client_cursor: Option<String>,
    config: &Config,
) -> Result<Response> {
    let upgrade = header(req.headers(), "upgrade");
    if !upgrade.is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        let resp = http::text(
            426,
            "live=ws needs a WebSocket upgrade (Upgrade: websocket)",
        )?;
        resp.headers().set("upgrade", "websocket")?;
        return Ok(resp);
    }
    let token = auth::authenticate(req, url, env).await?;
    let protocol =
        header(req.headers(), "sec-websocket-protocol").and_then(|o| ws::choose_protocol(&o));
    let hello = ClientHello {
        cursor: cursor::next_cursor(now_ms(), client_cursor.as_deref(), random_u32()),
        append: AppendGrant::of(&token, name.as_str(), http::now_secs()),
        combined: protocol.is_some_and(ws::combines),
        receipts: protocol == Some(ws::RECEIPTS),
        read_until: wsproto::read_until(&token),
    };
    // As for SSE, the first answer decides the handshake: a missing stream is a 404.
    // The object accepts the client socket itself (101), or answers a page for the edge to
    // serve (200), or refuses.
    let hello_header = hello.to_header();
    let mut extra = vec![(wsproto::X_CLIENT, hello_header.as_str())];
    // A client resuming names the incarnation it read in: the object refuses (404) one that was
    // deleted and created again since, as it refuses the edge's own later subscriptions.
    let expected = http::query_value(url, ws::INCARNATION_PARAM).filter(|i| !i.is_empty());
    // It goes to the object as a header, which cannot carry control characters or non-ASCII
    // (setting one throws, which would be answered 503, as if a retry could help); no
    // incarnation has them.
    if expected
        .as_deref()
        .is_some_and(|i| !i.bytes().all(|b| b.is_ascii_graphic()))
    {
        return http::text(400, "incarnation is not a Stream-Incarnation value");
    }
    if let Some(expected) = &expected {
        extra.push((reply::X_INSTANCE, expected.as_str()));
    }
    let first = ask_object(&stub, &name, from, LiveMode::WebSocket, &extra, None).await?;
    let channel = is_channel(first.headers());
    // The object names the incarnation on its 101 and on its pages; the client hears it on ours.
    let incarnation = header(first.headers(), h::STREAM_INCARNATION).unwrap_or_default();
    match first.status_code() {
        // The object holds the client socket now; the edge only passes it on.
        101 => {
            let Some(socket) = first.websocket() else {
                return Err(worker::Error::RustError(
                    "stream object upgraded without a socket".into(),
                ));
            };
            return upgraded(socket, &hello, channel, &incarnation, config);
        }
        200 => {}
        _ => return Ok(first),
    }
    let content_type = header(first.headers(), h::CONTENT_TYPE).unwrap_or_default();
    let content_type =
        ContentType::parse_stored(&content_type).unwrap_or_else(|_| ContentType::default_type());
    let pair = WebSocketPair::new()?;
    let client = Socket::accept_client(pair.server)?;
    let session = Session {
        stub,
        name,
        json: content_type.is_json(),
        content_type,
        cursor: hello.cursor.clone(),
        combined: hello.combined,
        backlog_limit: config.ws_backlog_bytes,
        receipts: hello.receipts,
        config: config.clone(),
        append: hello.append.clone(),
        read_until: hello.read_until,
        allowance: Cell::new(AppendAllowance::new(config.ws_append_rate, now_ms())),
        pongs: Cell::new(PongPace::default()),
        out: client.sender(),
        // Catch-up is counted from where the client starts (a client at `now` starts live).
        read: Rc::new(Cell::new(match from {
            ReadFrom::Start => Some(Receipt::at(Offset::ZERO)),
            ReadFrom::At(offset) => Some(Receipt::at(offset)),
            ReadFrom::Now => None,
        })),
        receipt_waker: RefCell::new(None),
        instance: RefCell::default(),
    };
    let first = Subscription::Page(first);
    wasm_bindgen_futures::spawn_local(session.run(client, from, first));
    upgraded(pair.client, &hello, channel, &incarnation, config)
}

/// What the 101 tells workerd about compression when `WS_COMPRESSION` is off: agree to no
/// extension, so the handshake carries no `Sec-WebSocket-Extensions` and the client's
/// `permessage-deflate` offer is declined (RFC 7692 section 5: a server declines an offer by
/// leaving it out of its response).
///
/// workerd treats this header on a Worker's 101 as the Worker's own compression settings, not
/// as a header to send: its HTTP server negotiates between it and the client's offer and writes
/// only the agreed extension, or none. Without the header (or with the compatibility flag
/// `no_web_socket_compression`, which removes it) workerd agrees to whatever the client offers,
/// and a runtime in front of the Worker that re-answers the handshake (wrangler dev's entry
/// Worker) does the same, so neither keeps compression off everywhere. workerd documents the
/// empty string for "no compression", but its header table reads an empty value as no header
/// at all, so only a value that names no `permessage-deflate` offer declines it.
const DECLINE_COMPRESSION: &str = "identity";

/// The 101 that hands `socket` to the client, naming the subprotocol chosen, if any: browsers
/// fail a handshake whose answer names one they did not offer, or none when they offered some.
/// A channel's says so (`Stream-Channel: true`), as its other responses do, and every one names
/// the stream's incarnation. Compression is declined unless `WS_COMPRESSION` allows it: each
/// compressed socket costs the runtime a zlib state in each direction.
fn upgraded(
    socket: worker::WebSocket,
    hello: &ClientHello,
    channel: bool,
    incarnation: &str,
    config: &Config,
) -> Result<Response> {
    let resp = mark_channel(Response::from_websocket(socket), channel)?;
    reply::name_incarnation(resp.headers(), incarnation)?;
    if !config.ws_compression {
        resp.headers()
            .set("sec-websocket-extensions", DECLINE_COMPRESSION)?;
    }
    if let Some(protocol) = hello.protocol() {
        resp.headers().set("sec-websocket-protocol", protocol)?;
    }
    Ok(resp)
}

/// Resolves at `read_until` (Unix seconds), the token's expiry; never without one. Waits at
/// most a day at a time: a timer takes its delay as an `i32` of milliseconds.
async fn expiry(read_until: Option<i64>) {
    let Some(read_until) = read_until else {
        return std::future::pending().await;
    };
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    loop {
        let left = super::live::ms_left(read_until);
        if left <= 0 {
            return;
        }
        Delay::from(Duration::from_millis(left.min(DAY_MS) as u64)).await;
    }
}

/// Whether sending a client data up to `end` would leave it more than `limit` behind what it
/// has `read` (never before it has a place to count from: a client at `now` is not yet live).
fn falls_behind(limit: u64, read: Option<Receipt>, end: Offset) -> bool {
    read.is_some_and(|read| read.falls_behind(end, limit))
}

/// Records that the client was sent everything before `end`: its receipts count up to there.
fn sent(read: &Cell<Option<Receipt>>, end: Offset) {
    if let Some(mut receipt) = read.get() {
        receipt.sent(end);
        read.set(Some(receipt));
    }
}

/// Why a session ended, which decides the close code.
enum End {
    /// The stream is closed and the client has all of it.
    StreamClosed,
    /// The stream was deleted or expired: 404, or 410 when it is kept for its forks.
    Gone(ProtocolError),
    /// The object answered a follow-up read with an error.
    Failed { status: u16, message: String },
    /// The stream's object cannot be followed right now; the client should reconnect.
    Restart(&'static str),
    /// The client closed, or a send to it failed.
    ClientGone,
    /// The client sent a frame it should not have, or too many at once; the error message is
    /// already sent.
    BadFrame { code: u16, reason: &'static str },
    /// The token that allowed the read has expired: nothing more goes to the client.
    Expired,
}

struct Session {
    stub: Stub,
    name: StreamName,
    content_type: ContentType,
    json: bool,
    cursor: String,
    /// See [`ClientHello::combined`].
    combined: bool,
    /// How far the client may fall behind its receipts before its socket is closed, or for a
    /// client that sends none, how much it may be sent: workerd cannot tell how much of what a
    /// WebSocket sent the client has read (workerd#988), so a client that stops reading would
    /// otherwise make the edge hold everything later. The close is queued behind the data, so
    /// the client reads it all first, then reconnects from its offset.
    backlog_limit: u64,
    /// It sends receipts ([`ClientHello::receipts`]): catch-up waits for them instead of
    /// ending the connection.
    receipts: bool,
    config: Config,
    /// Whether the token presented at the handshake allows appends.
    append: AppendGrant,
    /// See [`ClientHello::read_until`]: checked before anything is sent, and a timer closes
    /// an idle socket then.
    read_until: Option<i64>,
    /// What is left of how fast the client may append ([`wsproto::AppendRate`]).
    allowance: Cell<AppendAllowance>,
    /// When a ping was last answered ([`PongPace`]).
    pongs: Cell<PongPace>,
    out: SocketSender,
    /// What the client's receipts say it has read: where it started until it sends one (for a
    /// client that sends none, for good).
    read: Rc<Cell<Option<Receipt>>>,
    /// The catch-up waiting for a receipt ([`CaughtUpTo`]).
    receipt_waker: RefCell<Option<Waker>>,
    /// The incarnation of the stream the client reads, once the object named it. Appends name
    /// it too: a session that has not yet learned of a delete (it waits in catch-up for the
    /// client's receipts) must not write into a stream created again at the path.
    instance: RefCell<Incarnation>,
}

impl Session {
    async fn run(self, mut client: Socket, from: ReadFrom, first: Subscription) {
        let busy = Cell::new(false);
        let stop = Cell::new(false);
        let mut follower = Follower {
            session: &self,
            emit: Rc::new(RefCell::new(Emitter::new(
                self.out.clone(),
                self.json,
                self.combined,
                self.cursor.clone(),
                from,
            ))),
            pending: Some(first),
            stalled: false,
            drops: 0,
        };
        let appender = Appender {
            session: &self,
            busy: &busy,
            stop: &stop,
        };
        // The token's expiry ends the session as the stream's end does, so an append in flight
        // is still answered.
        let follow = Box::pin(async {
            match select(Box::pin(follower.run()), Box::pin(expiry(self.read_until))).await {
                Either::Left((end, _)) => end,
                Either::Right(((), _)) => End::Expired,
            }
        });
        let appends = Box::pin(appender.run(&mut client));
        let end = match select(follow, appends).await {
            Either::Left((end, appends)) => {
                // The stream ended (often because this very socket closed it): let an append in
                // flight finish and be acknowledged before the socket closes.
                if busy.get() {
                    stop.set(true);
                    let _ = http::within(DRAIN_MS, appends).await;
                }
                end
            }
            Either::Right((end, _)) => end,
        };
        self.finish(&client, end);
    }

    /// A receipt: the client has read everything before `offset`. Only a client under
    /// edgestream.v3 is held to its receipts, as at the object.
    fn received(&self, offset: Offset) {
        // Nothing was sent yet to a client that started at `now` and is not live.
        let (true, Some(mut read)) = (self.receipts, self.read.get()) else {
            return;
        };
        read.received(offset);
        self.read.set(Some(read));
        if let Some(waker) = self.receipt_waker.take() {
            waker.wake();
        }
    }

    /// Whether the token that allowed the read has expired.
    fn expired(&self) -> bool {
        wsproto::read_expired(self.read_until, http::now_secs())
    }

    fn finish(&self, client: &Socket, end: End) {
        // Past the token's expiry the client hears nothing more, whatever ended the session.
        let end = match end {
            End::ClientGone => End::ClientGone,
            _ if self.expired() => End::Expired,
            end => end,
        };
        match end {
            End::StreamClosed => client.close(close::NORMAL, "stream closed"),
            End::Gone(error) => {
                let _ = self.out.send_text(&wsproto::gone(&error));
                client.close(close::NORMAL, &error.message());
            }
            End::Failed { status, message } => {
                let _ = self
                    .out
                    .send_text(&ErrorReply::of(None, status, message).to_json());
                let code = if status >= 500 {
                    close::RESTART
                } else {
                    close::INTERNAL
                };
                client.close(code, "read failed");
            }
            End::Restart(reason) => client.close(close::RESTART, reason),
            // Answer the client's close frame (workerd leaves that to the application).
            End::ClientGone => client.close(close::NORMAL, "closed"),
            End::BadFrame { code, reason } => client.close(code, reason),
            End::Expired => client.close(close::TOKEN_EXPIRED, wsproto::TOKEN_EXPIRED),
        }
    }
}

/// Sends the stream to the client: catch-up pages, then live frames.
struct Follower<'a> {
    session: &'a Session,
    /// What the client has been sent; shared with the live socket's handler.
    emit: Rc<RefCell<Emitter<SocketSender>>>,
    pending: Option<Subscription>,
    /// The previous catch-up page moved nothing.
    stalled: bool,
    /// Internal subscriptions lost in a row without a frame.
    drops: u32,
}

/// How a live subscription ended.
enum LiveEnd {
    /// The session is over.
    End(End),
    /// A gap, a bad frame or a closed socket: follow again from what the client has.
    Lost,
}

impl Follower<'_> {
    async fn run(&mut self) -> End {
        loop {
            if let Some(sub) = self.pending.take() {
                self.session.instance.borrow_mut().learn(&sub);
                match sub {
                    Subscription::Page(resp) => {
                        if let Some(end) = self.page(resp).await {
                            return end;
                        }
                    }
                    Subscription::Live(live) => {
                        self.emit.borrow_mut().offset = ReadFrom::At(live.start);
                        match self.live(live.socket, live.start).await {
                            LiveEnd::End(end) => return end,
                            LiveEnd::Lost => self.drops += 1,
                        }
                        if self.drops > MAX_DROPS {
                            return End::Restart("stream restarting");
                        }
                    }
                }
                continue;
            }
            if self.drops > 0 {
                // The object went away; give it a moment to come back.
                let wait = 50 * u64::from(self.drops);
                Delay::from(Duration::from_millis(wait)).await;
            }
            let offset = self.emit.borrow().offset;
            let session = self.session;
            let instance = self.session.instance.borrow().clone();
            let followed = instance.header();
            match subscribe(
                &session.stub,
                &session.name,
                offset,
                LiveMode::WebSocket,
                &followed,
            )
            .await
            {
                Ok(sub) => self.pending = Some(sub),
                Err(e) => {
                    worker::console_warn!("ws: cannot subscribe: {e}");
                    return End::Restart("stream unavailable");
                }
            }
        }
    }

    /// Follows one internal socket. Its frames are sent on to the client inside the socket's
    /// own message handler; this only waits for the subscription to end.
    async fn live(&mut self, socket: Socket, start: Offset) -> LiveEnd {
        let emit = self.emit.clone();
        let delivered = Rc::new(Cell::new(false));
        let seen = delivered.clone();
        // A client that started at `now` counts from where it goes live.
        let read = self.session.read.clone();
        if read.get().is_none() {
            read.set(Some(Receipt::at(start)));
        }
        let limit = self.session.backlog_limit;
        let cut = wsproto::cut_reason(self.session.receipts);
        let read_until = self.session.read_until;
        // The subscription's first frame is the rest of the catch-up (at most a page): paced as
        // the pages were, it is not held to the limit; what follows is.
        let mut backlog = true;
        let handled = socket.handle(move |event| {
            let outcome = match event {
                // Checked before anything goes out, should the timer be late.
                SocketEvent::Binary(_) if wsproto::read_expired(read_until, http::now_secs()) => {
                    Some(LiveEnd::End(End::Expired))
                }
                SocketEvent::Binary(bytes) => match frame::decode(&bytes) {
                    Some(Frame::Data {
                        start,
                        end,
                        closed,
                        up_to_date,
                        payload,
                    }) => {
                        let mut emit = emit.borrow_mut();
                        if emit.offset != ReadFrom::At(start) {
                            Some(LiveEnd::Lost)
                        } else if !std::mem::replace(&mut backlog, false)
                            && falls_behind(limit, read.get(), end)
                        {
                            Some(LiveEnd::End(End::Restart(cut)))
                        } else {
                            seen.set(true);
                            sent(&read, end);
                            match emit.frame(end, closed, up_to_date, payload) {
                                Ok(false) => None,
                                Ok(true) => Some(LiveEnd::End(End::StreamClosed)),
                                Err(_) => Some(LiveEnd::End(End::ClientGone)),
                            }
                        }
                    }
                    Some(Frame::Gone { error }) => Some(LiveEnd::End(End::Gone(error))),
                    None => Some(LiveEnd::Lost),
                },
                SocketEvent::Text(_) | SocketEvent::Overflow => None,
                SocketEvent::Closed => Some(LiveEnd::Lost),
            };
            match outcome {
                Some(outcome) => ControlFlow::Break(outcome),
                None => ControlFlow::Continue(()),
            }
        });
        let end = handled.finished().await.unwrap_or(LiveEnd::Lost);
        if delivered.get() {
            self.drops = 0;
        }
        end
    }

    /// A page the object answered over HTTP (catch-up, or the inherited part of a fork).
    async fn page(&mut self, mut resp: Response) -> Option<End> {
        if self.session.expired() {
            return Some(End::Expired);
        }
        match resp.status_code() {
            200 => {}
            404 => return Some(End::Gone(ProtocolError::NotFound)),
            410 => return Some(End::Gone(ProtocolError::Gone)),
            503 => return Some(End::Restart("stream unavailable")),
            status => {
                let message = resp.text().await.unwrap_or_default().trim().to_string();
                return Some(End::Failed { status, message });
            }
        }
        let meta = resp.headers().clone();
        let Some(end) = header(&meta, h::STREAM_NEXT_OFFSET).and_then(|v| Offset::parse(&v).ok())
        else {
            return Some(End::Restart("bad page from the stream"));
        };
        let up_to_date = h::is_true(header(&meta, h::STREAM_UP_TO_DATE).as_deref());
        let closed = h::is_closed(header(&meta, h::STREAM_CLOSED).as_deref());
        let Ok(body) = http::response_bytes(&resp).await else {
            return Some(End::Restart("stream read failed"));
        };
        if self.session.expired() {
            return Some(End::Expired);
        }
        let ended = self.send_page(&body, end, up_to_date, closed);
        sent(&self.session.read, end);
        // Sent: the page is not kept in wasm memory while the client reads it.
        drop(body);
        if ended.is_some() {
            return ended;
        }
        let session = self.session;
        if session.receipts {
            // The next page goes once the client is within the limit of what it was sent, and
            // so do the live appends after the last page: the receipts for the pages sent at
            // once may still be on their way, and live appends are held to the limit, so going
            // live before they arrive would cut off a client that read everything.
            CaughtUpTo { session, end }.await;
        } else if up_to_date {
            return None;
        } else if falls_behind(session.backlog_limit, session.read.get(), end) {
            // No receipt will come: this connection has carried what it may.
            return Some(End::Restart(
                "catch-up continues: reconnect from the last offset",
            ));
        }
        None
    }

    /// Sends a page's data and its control, ending at `end`; `Some` when the session ends.
    fn send_page(
        &mut self,
        body: &[u8],
        end: Offset,
        up_to_date: bool,
        closed: bool,
    ) -> Option<End> {
        let mut emit = self.emit.borrow_mut();
        let sent = if emit.json {
            emit.send_json_page(body)
        } else {
            emit.send_binary_page(body)
        };
        let has_data = match sent {
            Ok(has_data) => has_data,
            Err(_) => return Some(End::ClientGone),
        };
        if emit.control(end, up_to_date, closed, has_data).is_err() {
            return Some(End::ClientGone);
        }
        // A page that moved nothing twice in a row would only repeat itself.
        let progress = has_data || emit.offset != ReadFrom::At(end);
        emit.offset = ReadFrom::At(end);
        if closed {
            return Some(End::StreamClosed);
        }
        if !progress && self.stalled {
            return Some(End::Restart("stream is not advancing"));
        }
        self.stalled = !progress;
        None
    }
}

/// Resolves once the client's receipts say it is within its limit of `end`. It never does for
/// a client that stops reading; its session ends when its socket closes.
struct CaughtUpTo<'a> {
    session: &'a Session,
    end: Offset,
}

impl Future for CaughtUpTo<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let session = self.session;
        if !falls_behind(session.backlog_limit, session.read.get(), self.end) {
            return Poll::Ready(());
        }
        self.session.receipt_waker.replace(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Reads append frames and turns each into an internal POST.
struct Appender<'a> {
    session: &'a Session,
    /// An append is being processed.
    busy: &'a Cell<bool>,
    /// The stream has ended: stop after the append in flight.
    stop: &'a Cell<bool>,
}

impl Appender<'_> {
    async fn run(&self, client: &mut Socket) -> End {
        loop {
            if self.stop.get() {
                return End::StreamClosed;
            }
            let event = client.next().await;
            // A frame after the token's expiry is neither applied nor answered.
            if self.session.expired() && !matches!(event, SocketEvent::Closed) {
                return End::Expired;
            }
            self.busy.set(true);
            let reply = match event {
                SocketEvent::Text(text) => self.frame(Incoming::Text(&text)).await,
                SocketEvent::Binary(bytes) => self.frame(Incoming::Binary(&bytes)).await,
                SocketEvent::Closed => return End::ClientGone,
                // Every frame before it has been applied and answered.
                SocketEvent::Overflow => Err(wsproto::BadFrame::too_many_waiting()),
            };
            self.busy.set(false);
            let out = &self.session.out;
            match reply {
                // A receipt is not answered.
                Ok(None) => {}
                Ok(Some(reply)) => {
                    if out.send_text(&reply).is_err() {
                        return End::ClientGone;
                    }
                    if self.session.expired() {
                        return End::Expired;
                    }
                }
                Err(bad) => {
                    let _ = out.send_text(&bad.reply());
                    return End::BadFrame {
                        code: bad.code,
                        reason: bad.reason,
                    };
                }
            }
        }
    }

    /// Applies one append frame (the reply is an ack or an error) or receipt (no reply).
    async fn frame(
        &self,
        incoming: Incoming<'_>,
    ) -> std::result::Result<Option<String>, wsproto::BadFrame> {
        match parse_client(incoming, self.session.json)? {
            ClientMessage::Append(frame, body) => {
                let mut allowance = self.session.allowance.get();
                let taken =
                    allowance.take(self.session.config.ws_append_rate, body.len(), now_ms());
                self.session.allowance.set(allowance);
                taken.map_err(|bad| bad.of_append(frame.id))?;
                Ok(Some(self.append(&frame, body).await))
            }
            ClientMessage::Received(offset) => {
                self.session.received(offset);
                Ok(None)
            }
            ClientMessage::Ping => {
                let mut pace = self.session.pongs.get();
                let answered = pace.answer(now_ms());
                self.session.pongs.set(pace);
                Ok(answered.then(|| edgestream::ws::PONG.to_string()))
            }
        }
    }

    /// POSTs `body` to the stream with the frame's headers; the reply is an ack or an error.
    async fn append(&self, frame: &AppendFrame<'_>, body: Vec<u8>) -> String {
        // As POST is refused without a token that allows appending here (401 or 403).
        if let Some(refusal) = self.session.append.refusal(frame.id, http::now_secs()) {
            return refusal;
        }
        wsproto::answer(frame.id, self.post(frame, body).await).await
    }

    async fn post(
        &self,
        frame: &AppendFrame<'_>,
        body: Vec<u8>,
    ) -> Result<std::result::Result<Response, ProtocolError>> {
        let session = self.session;
        let headers = match wsproto::append_headers(
            frame,
            &body,
            session.content_type.as_str(),
            &session.config,
        )? {
            Ok(headers) => headers,
            Err(e) => return Ok(Err(e)),
        };
        let instance = session.instance.borrow().clone();
        for (name, value) in instance.header() {
            headers.set(name, value)?;
        }
        headers.set(crate::reply::X_SOCKET_FRAME, "1")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers);
        if !body.is_empty() {
            init.with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
        }
        let req = Request::new_with_init(&object_url(&session.name, None), &init)?;
        Ok(Ok(session.stub.fetch_with_request(req).await?))
    }
}
