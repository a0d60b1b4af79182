//! `live=ws`: edgestream's WebSocket extension of the protocol (docs/websocket.md).
//!
//! One client socket carries what SSE carries (data, then a control message) and, the other
//! way, appends. The edge holds the client socket and follows the stream exactly as SSE does:
//! catch-up pages over HTTP, then frames from its own internal hibernating subscription, so an
//! open socket never keeps the stream's object awake. Each append frame becomes an internal
//! POST with the headers an HTTP client would send, so every rule and error is POST's.
//!
//! The session is two loops over one client socket: [`Follower`] sends data and control
//! messages, [`Appender`] reads append frames one at a time (so a producer's appends keep
//! their order) and answers each with an ack or an error.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Duration;

use edgestream::cursor;
use edgestream::headers::{self as h, ContentType, LiveMode};
use edgestream::sse::Control;
use edgestream::token::{AuthError, Operation};
use edgestream::{json, Offset, ProtocolError, ReadFrom};
use futures_util::future::{select, Either};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use worker::{
    Delay, Env, Headers, Method, Request, RequestInit, Response, Result, Stub, Url, WebSocketPair,
};

use super::live::{subscribe, Subscription};
use super::object_url;
use crate::auth::{self, Access};
use crate::config::Config;
use crate::frame::{self, Frame};
use crate::http::{self, header, now_ms, random_u32};
use crate::path::StreamName;
use crate::socket::{Socket, SocketEvent, SocketSender};

/// Largest message the edge sends: bigger catch-up pages go out in several data messages, cut
/// on JSON message boundaries (a single larger JSON message still goes out whole).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest header of a binary append frame.
const MAX_BINARY_HEADER: usize = 64 * 1024;
/// How often the internal subscription may drop without delivering anything before the edge
/// gives up and asks the client to reconnect (close code 1012).
const MAX_DROPS: u32 = 3;
/// After the stream ends, how long an append already in flight may take to be acknowledged.
const DRAIN_MS: u64 = 10_000;

/// WebSocket close codes (RFC 6455, section 7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    /// A frame that cannot be read: not JSON, not UTF-8, a truncated binary header.
    pub const INVALID_DATA: u16 = 1007;
    /// A readable frame that breaks this protocol: unknown type, wrong field types.
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    /// The stream's object restarted or cannot be reached: reconnect from the last offset.
    pub const RESTART: u16 = 1012;
}

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
    // As for SSE, the first answer decides the handshake: a missing stream is a 404.
    let first = match subscribe(&stub, &name, from, LiveMode::WebSocket).await? {
        Subscription::Page(resp) if resp.status_code() != 200 => return Ok(resp),
        first => first,
    };
    let content_type = match &first {
        Subscription::Page(resp) => header(resp.headers(), h::CONTENT_TYPE).unwrap_or_default(),
        Subscription::Live(live) => live.content_type.clone(),
    };
    let content_type =
        ContentType::parse(&content_type).unwrap_or_else(|_| ContentType::default_type());
    let append_access = auth::authorize(req, url, env, Operation::Append, name.as_str()).await?;
    let pair = WebSocketPair::new()?;
    let client = Socket::accept(pair.server)?;
    let session = Session {
        stub,
        name,
        json: content_type.is_json(),
        content_type,
        cursor: cursor::next_cursor(now_ms(), client_cursor.as_deref(), random_u32()),
        max_append_bytes: config.max_append_bytes,
        config: config.clone(),
        append_access,
        out: client.sender(),
    };
    wasm_bindgen_futures::spawn_local(session.run(client, from, first));
    Response::from_websocket(pair.client)
}

/// Why a session ended, which decides the close code.
enum End {
    /// The stream is closed and the client has all of it.
    StreamClosed,
    /// The stream was deleted or expired.
    Gone,
    /// The object answered a follow-up read with an error.
    Failed { status: u16, message: String },
    /// The stream's object cannot be followed right now; the client should reconnect.
    Restart(&'static str),
    /// The client closed, or a send to it failed.
    ClientGone,
    /// The client sent a frame it should not have; the error message is already sent.
    BadFrame { code: u16, reason: &'static str },
}

struct Session {
    stub: Stub,
    name: StreamName,
    content_type: ContentType,
    json: bool,
    cursor: u64,
    max_append_bytes: u64,
    config: Config,
    /// Whether the token presented at the handshake allows appends.
    append_access: std::result::Result<Access, AuthError>,
    out: SocketSender,
}

impl Session {
    async fn run(self, mut client: Socket, from: ReadFrom, first: Subscription) {
        let busy = Cell::new(false);
        let stop = Cell::new(false);
        let mut follower = Follower {
            stub: &self.stub,
            name: &self.name,
            emit: Rc::new(RefCell::new(Emitter {
                out: self.out.clone(),
                json: self.json,
                cursor: self.cursor,
                offset: from,
                last_control: None,
            })),
            pending: Some(first),
            stalled: false,
            drops: 0,
        };
        let appender = Appender {
            session: &self,
            busy: &busy,
            stop: &stop,
        };
        let follow = Box::pin(follower.run());
        let appends = Box::pin(appender.run(&mut client));
        let end = match select(follow, appends).await {
            Either::Left((end, appends)) => {
                // The stream ended (often because this very socket closed it): let an append in
                // flight finish and be acknowledged before the socket closes.
                if busy.get() {
                    stop.set(true);
                    let _ = select(appends, Delay::from(Duration::from_millis(DRAIN_MS))).await;
                }
                end
            }
            Either::Right((end, _)) => end,
        };
        self.finish(&client, end);
    }

    fn finish(&self, client: &Socket, end: End) {
        match end {
            End::StreamClosed => client.close(close::NORMAL, "stream closed"),
            End::Gone => {
                let error = ErrorReply::new(None, &ProtocolError::NotFound);
                let _ = self.out.send_text(&error.to_json());
                client.close(close::NORMAL, "stream not found");
            }
            End::Failed { status, message } => {
                let error = ErrorReply {
                    message,
                    ..ErrorReply::status(None, status)
                };
                let _ = self.out.send_text(&error.to_json());
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
        }
    }
}

/// Sends the stream to the client: catch-up pages, then live frames.
struct Follower<'a> {
    stub: &'a Stub,
    name: &'a StreamName,
    /// What the client has been sent; shared with the live socket's handler.
    emit: Rc<RefCell<Emitter>>,
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
                match sub {
                    Subscription::Page(resp) => {
                        if let Some(end) = self.page(resp).await {
                            return end;
                        }
                    }
                    Subscription::Live(live) => {
                        self.emit.borrow_mut().offset = ReadFrom::At(live.start);
                        match self.live(live.socket).await {
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
            match subscribe(self.stub, self.name, offset, LiveMode::WebSocket).await {
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
    async fn live(&mut self, socket: Socket) -> LiveEnd {
        let emit = self.emit.clone();
        let delivered = Rc::new(Cell::new(false));
        let seen = delivered.clone();
        let handled = socket.handle(move |event| {
            let outcome = match event {
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
                        } else {
                            seen.set(true);
                            emit.frame(end, closed, up_to_date, payload)
                                .map(LiveEnd::End)
                        }
                    }
                    Some(Frame::Gone) => Some(LiveEnd::End(End::Gone)),
                    None => Some(LiveEnd::Lost),
                },
                SocketEvent::Text(_) => None,
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
        match resp.status_code() {
            200 => {}
            404 | 410 => return Some(End::Gone),
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
        let closed = h::is_true(header(&meta, h::STREAM_CLOSED).as_deref());
        let Ok(body) = resp.bytes().await else {
            return Some(End::Restart("stream read failed"));
        };
        let mut emit = self.emit.borrow_mut();
        let sent = if emit.json {
            emit.send_json_page(&body)
        } else {
            emit.send_binary_page(&body)
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

/// Sends data and control messages to the client and remembers what it sent.
struct Emitter {
    out: SocketSender,
    json: bool,
    cursor: u64,
    /// Where the client is: everything before it has been sent.
    offset: ReadFrom,
    /// The offset and up-to-date flag of the last control message, to skip repeats.
    last_control: Option<(Offset, bool)>,
}

impl Emitter {
    fn send_binary_page(&self, body: &[u8]) -> Result<bool> {
        for chunk in body.chunks(MAX_MESSAGE_BYTES) {
            self.out.send_bytes(chunk)?;
        }
        Ok(!body.is_empty())
    }

    /// A JSON page arrives rendered as one array; it goes out as one or more data messages.
    fn send_json_page(&self, body: &[u8]) -> Result<bool> {
        let Some(inner) = body.strip_prefix(b"[").and_then(|b| b.strip_suffix(b"]")) else {
            return Err(worker::Error::RustError("JSON page is not an array".into()));
        };
        if inner.is_empty() {
            return Ok(false);
        }
        // Back to the stored form (each message followed by a comma) to cut on boundaries.
        let mut framed = Vec::with_capacity(inner.len() + 1);
        framed.extend_from_slice(inner);
        framed.push(b',');
        let mut at = 0;
        for cut in message_cuts(&framed, MAX_MESSAGE_BYTES) {
            self.out.send_text(&data_message(&framed[at..cut]))?;
            at = cut;
        }
        Ok(true)
    }

    /// A live frame: a data message (when it carries bytes), then its control message.
    fn frame(
        &mut self,
        end: Offset,
        closed: bool,
        up_to_date: bool,
        payload: &[u8],
    ) -> Option<End> {
        let has_data = !payload.is_empty();
        let sent = if !has_data {
            Ok(())
        } else if self.json {
            self.out.send_text(&data_message(payload))
        } else {
            self.out.send_bytes(payload)
        };
        if sent.is_err() || self.control(end, up_to_date, closed, has_data).is_err() {
            return Some(End::ClientGone);
        }
        self.offset = ReadFrom::At(end);
        closed.then_some(End::StreamClosed)
    }

    /// Sends a control message, unless it would repeat the previous one with no data between.
    fn control(
        &mut self,
        end: Offset,
        up_to_date: bool,
        closed: bool,
        has_data: bool,
    ) -> Result<()> {
        if !has_data && !closed && self.last_control == Some((end, up_to_date)) {
            return Ok(());
        }
        let control = Control {
            next_offset: end.to_string(),
            cursor: Some(self.cursor.to_string()),
            up_to_date,
            closed,
        };
        self.out.send_text(&control_message(&control))?;
        self.last_control = Some((end, up_to_date));
        Ok(())
    }
}

/// `{"type":"control",…}`: the SSE control event's fields under a type tag.
fn control_message(control: &Control) -> String {
    let fields = control.to_json();
    let mut out = String::with_capacity(fields.len() + 20);
    out.push_str("{\"type\":\"control\",");
    out.push_str(fields.strip_prefix('{').unwrap_or(&fields));
    out
}

/// `{"type":"data","items":[…]}` for a framed range of a JSON stream.
fn data_message(framed: &[u8]) -> String {
    let mut out = Vec::with_capacity(framed.len() + 24);
    out.extend_from_slice(b"{\"type\":\"data\",\"items\":");
    json::write_array(framed, &mut out);
    out.push(b'}');
    // Stored JSON was validated as UTF-8 on append; a lossy copy only guards against a bug.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// End positions of the data messages for a framed range: each at most `max` bytes, cut only
/// after whole messages (a single larger message gets a message of its own).
fn message_cuts(framed: &[u8], max: usize) -> Vec<usize> {
    if framed.len() <= max {
        return vec![framed.len()];
    }
    let mut cuts = Vec::new();
    let mut start = 0;
    let mut prev = 0;
    for end in json::message_ends(framed) {
        if end - start > max && prev > start {
            cuts.push(prev);
            start = prev;
        }
        prev = end;
    }
    if cuts.last() != Some(&framed.len()) {
        cuts.push(framed.len());
    }
    cuts
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
            self.busy.set(true);
            let reply = match event {
                SocketEvent::Text(text) => self.text_frame(&text).await,
                SocketEvent::Binary(bytes) => self.binary_frame(&bytes).await,
                SocketEvent::Closed => return End::ClientGone,
            };
            self.busy.set(false);
            let out = &self.session.out;
            match reply {
                Ok(reply) => {
                    if out.send_text(&reply).is_err() {
                        return End::ClientGone;
                    }
                }
                Err(bad) => {
                    let error = ErrorReply {
                        message: bad.message,
                        ..ErrorReply::status(None, 400)
                    };
                    let _ = out.send_text(&error.to_json());
                    return End::BadFrame {
                        code: bad.code,
                        reason: bad.reason,
                    };
                }
            }
        }
    }

    async fn text_frame(&self, text: &str) -> std::result::Result<String, BadFrame> {
        let frame = AppendFrame::parse(text)?;
        let body =
            match frame.data {
                None => Vec::new(),
                Some(raw) if self.session.json => raw.get().as_bytes().to_vec(),
                Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                    Ok(text) => text.into_bytes(),
                    Err(_) => return Err(BadFrame::policy(
                        "data must be a string on a non-JSON stream (send bytes in a binary frame)",
                    )),
                },
            };
        Ok(self.append(&frame, body).await)
    }

    /// `[u32 big-endian header length][header: an append frame without data][payload]`.
    async fn binary_frame(&self, bytes: &[u8]) -> std::result::Result<String, BadFrame> {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(BadFrame::invalid(
                "binary frame is shorter than its 4-byte header length",
            ));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_BINARY_HEADER {
            return Err(BadFrame::policy(
                "binary frame header is longer than 64 KiB",
            ));
        }
        let Some((head, payload)) = rest.split_at_checked(len) else {
            return Err(BadFrame::invalid(
                "binary frame is shorter than its header length says",
            ));
        };
        let Ok(head) = std::str::from_utf8(head) else {
            return Err(BadFrame::invalid("binary frame header is not UTF-8"));
        };
        let frame = AppendFrame::parse(head)?;
        if frame.data.is_some() {
            return Err(BadFrame::policy(
                "a binary frame's data follows its header; the header has no data field",
            ));
        }
        Ok(self.append(&frame, payload.to_vec()).await)
    }

    /// POSTs `body` to the stream with the frame's headers; the reply is an ack or an error.
    async fn append(&self, frame: &AppendFrame<'_>, body: Vec<u8>) -> String {
        let session = self.session;
        let allowed = match &session.append_access {
            Ok(access) => access.allows(Operation::Append, session.name.as_str()),
            Err(e) => Err(*e),
        };
        if let Err(e) = allowed {
            // As POST is refused without a token that allows appending here (401 or 403).
            return ErrorReply {
                message: e.message().into(),
                ..ErrorReply::status(frame.id, e.status())
            }
            .to_json();
        }
        match self.post(frame, body).await {
            Ok(Ok(resp)) => reply_to(frame.id, resp).await,
            Ok(Err(e)) => ErrorReply::new(frame.id, &e).to_json(),
            Err(e) => {
                // Nothing was acknowledged: the client may retry (a producer's retry is safe).
                worker::console_error!("ws append: {e}");
                ErrorReply {
                    message: "temporary failure; retry".into(),
                    retry_after: Some(1),
                    ..ErrorReply::status(frame.id, 503)
                }
                .to_json()
            }
        }
    }

    async fn post(
        &self,
        frame: &AppendFrame<'_>,
        body: Vec<u8>,
    ) -> Result<std::result::Result<Response, ProtocolError>> {
        let session = self.session;
        if body.len() as u64 > session.max_append_bytes {
            return Ok(Err(ProtocolError::PayloadTooLarge {
                limit: session.max_append_bytes,
            }));
        }
        let headers = Headers::new();
        let set = |name: &str, value: &str| -> std::result::Result<(), ProtocolError> {
            headers
                .set(name, value)
                .map_err(|_| ProtocolError::BadRequest("a field is not a valid header value"))
        };
        let fields = [
            (h::PRODUCER_ID, frame.producer_id.as_deref()),
            (h::PRODUCER_EPOCH, frame.producer_epoch.as_deref()),
            (h::PRODUCER_SEQ, frame.producer_seq.as_deref()),
            (h::STREAM_SEQ, frame.stream_seq.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                if let Err(e) = set(name, value) {
                    return Ok(Err(e));
                }
            }
        }
        if frame.close {
            headers.set(h::STREAM_CLOSED, "true")?;
        }
        if !body.is_empty() {
            headers.set(h::CONTENT_TYPE, session.content_type.as_str())?;
        }
        if let Err(e) = super::check_append(&headers, &session.config) {
            return Ok(Err(e));
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers);
        if !body.is_empty() {
            init.with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
        }
        let req = Request::new_with_init(&object_url(&session.name, None), &init)?;
        Ok(Ok(session.stub.fetch_with_request(req).await?))
    }
}

/// A frame that cannot be served: the client gets an error message, then the close code.
struct BadFrame {
    code: u16,
    reason: &'static str,
    message: String,
}

impl BadFrame {
    fn invalid(message: &str) -> BadFrame {
        BadFrame {
            code: close::INVALID_DATA,
            reason: "invalid frame",
            message: message.into(),
        }
    }

    fn policy(message: &str) -> BadFrame {
        BadFrame {
            code: close::POLICY,
            reason: "frame breaks the protocol",
            message: message.into(),
        }
    }
}

/// A client's append frame (text, or the header of a binary frame).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAppend<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    /// Present even when `null` (a valid JSON message).
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    producer_id: Option<String>,
    #[serde(borrow, default)]
    producer_epoch: Option<&'a RawValue>,
    #[serde(borrow, default)]
    producer_seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_seq: Option<&'a RawValue>,
    #[serde(default)]
    close: bool,
}

fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An append frame, its fields as the HTTP header values they stand for.
struct AppendFrame<'a> {
    id: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    producer_id: Option<String>,
    producer_epoch: Option<String>,
    producer_seq: Option<String>,
    stream_seq: Option<String>,
    close: bool,
}

impl<'a> AppendFrame<'a> {
    fn parse(text: &'a str) -> std::result::Result<AppendFrame<'a>, BadFrame> {
        let raw: RawAppend<'a> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                BadFrame::policy(&format!("bad append frame: {e}"))
            } else {
                BadFrame::invalid(&format!("frame is not a JSON object: {e}"))
            }
        })?;
        if raw.kind != "append" {
            return Err(BadFrame::policy("unknown frame type (expected \"append\")"));
        }
        if let Some(id) = raw.id {
            if !is_string_or_number(id) {
                return Err(BadFrame::policy("id must be a string or a number"));
            }
        }
        Ok(AppendFrame {
            id: raw.id,
            data: raw.data,
            producer_id: raw.producer_id,
            producer_epoch: header_text(raw.producer_epoch, "producerEpoch")?,
            producer_seq: header_text(raw.producer_seq, "producerSeq")?,
            stream_seq: header_text(raw.stream_seq, "streamSeq")?,
            close: raw.close,
        })
    }
}

fn is_string_or_number(raw: &RawValue) -> bool {
    raw.get()
        .bytes()
        .next()
        .is_some_and(|c| c == b'"' || c == b'-' || c.is_ascii_digit())
}

/// A field given as a JSON string or number, as header text. The number's text is kept as
/// written, so `1.5` or `-1` reach the same header validation POST applies.
fn header_text(
    raw: Option<&RawValue>,
    field: &'static str,
) -> std::result::Result<Option<String>, BadFrame> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map(Some)
            .map_err(|_| BadFrame::invalid("bad JSON string"));
    }
    if is_string_or_number(raw) {
        return Ok(Some(text.to_string()));
    }
    Err(BadFrame::policy(match field {
        "producerEpoch" => "producerEpoch must be a number or a string",
        "producerSeq" => "producerSeq must be a number or a string",
        _ => "streamSeq must be a number or a string",
    }))
}

/// An `ack` for 2xx answers, an `error` for the rest, with the headers a client acts on.
async fn reply_to(id: Option<&RawValue>, mut resp: Response) -> String {
    let status = resp.status_code();
    let headers = resp.headers().clone();
    let number = |name: &str| header(&headers, name).and_then(|v| v.trim().parse::<u64>().ok());
    let stream_next_offset = header(&headers, h::STREAM_NEXT_OFFSET);
    let stream_closed = h::is_true(header(&headers, h::STREAM_CLOSED).as_deref()).then_some(true);
    if (200..300).contains(&status) {
        let ack = Ack {
            kind: "ack",
            id,
            status,
            stream_next_offset,
            stream_closed,
            producer_epoch: number(h::PRODUCER_EPOCH),
            producer_seq: number(h::PRODUCER_SEQ),
        };
        return serde_json::to_string(&ack).unwrap_or_default();
    }
    let message = resp.text().await.unwrap_or_default().trim().to_string();
    ErrorReply {
        message,
        stream_next_offset,
        stream_closed,
        producer_epoch: number(h::PRODUCER_EPOCH),
        producer_expected_seq: number(h::PRODUCER_EXPECTED_SEQ),
        producer_received_seq: number(h::PRODUCER_RECEIVED_SEQ),
        retry_after: number(h::RETRY_AFTER),
        ..ErrorReply::status(id, status)
    }
    .to_json()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_next_offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_closed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_seq: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    status: u16,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_next_offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_closed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_expected_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_received_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl<'a> ErrorReply<'a> {
    fn status(id: Option<&'a RawValue>, status: u16) -> ErrorReply<'a> {
        ErrorReply {
            kind: "error",
            id,
            status,
            message: String::new(),
            stream_next_offset: None,
            stream_closed: None,
            producer_epoch: None,
            producer_expected_seq: None,
            producer_received_seq: None,
            retry_after: None,
        }
    }

    /// A refusal decided at the edge, worded as POST words it.
    fn new(id: Option<&'a RawValue>, e: &ProtocolError) -> ErrorReply<'a> {
        let mut reply = ErrorReply {
            message: e.message(),
            ..ErrorReply::status(id, e.status())
        };
        for (name, value) in e.headers() {
            let number = value.parse::<u64>().ok();
            match name {
                h::STREAM_NEXT_OFFSET => reply.stream_next_offset = Some(value),
                h::STREAM_CLOSED => reply.stream_closed = Some(true),
                h::PRODUCER_EPOCH => reply.producer_epoch = number,
                h::PRODUCER_EXPECTED_SEQ => reply.producer_expected_seq = number,
                h::PRODUCER_RECEIVED_SEQ => reply.producer_received_seq = number,
                _ => {}
            }
        }
        reply
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_carry_a_type() {
        let control = Control {
            next_offset: "0000000000000000_0000000000000005".into(),
            cursor: Some("7".into()),
            up_to_date: true,
            closed: false,
        };
        assert_eq!(
            control_message(&control),
            "{\"type\":\"control\",\"streamNextOffset\":\"0000000000000000_0000000000000005\",\
             \"streamCursor\":\"7\",\"upToDate\":true}"
        );
    }

    #[test]
    fn json_data_messages_are_arrays_of_items() {
        assert_eq!(
            data_message(b"1,{\"a\":2},"),
            "{\"type\":\"data\",\"items\":[1,{\"a\":2}]}"
        );
    }

    #[test]
    fn json_pages_are_cut_between_messages() {
        let framed = "\"ab\",".repeat(100);
        let cuts = message_cuts(framed.as_bytes(), 12);
        assert_eq!(*cuts.last().unwrap(), framed.len());
        let mut prev = 0;
        for cut in cuts {
            assert!(cut - prev <= 12);
            assert_eq!(cut % 5, 0, "cut inside a message");
            prev = cut;
        }
        // One message larger than the limit goes out alone.
        let big = format!("\"{}\",1,", "x".repeat(40));
        assert_eq!(message_cuts(big.as_bytes(), 12), vec![43, 45]);
    }

    #[test]
    fn append_frames_parse() {
        let frame = AppendFrame::parse(
            r#"{"type":"append","id":7,"data":null,"producerId":"p","producerEpoch":0,"producerSeq":"3","close":true}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(frame.id.map(RawValue::get), Some("7"));
        assert_eq!(frame.data.map(RawValue::get), Some("null"));
        assert_eq!(frame.producer_epoch.as_deref(), Some("0"));
        assert_eq!(frame.producer_seq.as_deref(), Some("3"));
        assert!(frame.close);
        let bare = AppendFrame::parse(r#"{"type":"append"}"#).ok().unwrap();
        assert!(bare.data.is_none() && bare.id.is_none() && !bare.close);
    }

    #[test]
    fn bad_append_frames_get_the_right_close_code() {
        let code = |text: &str| AppendFrame::parse(text).err().map(|e| e.code);
        assert_eq!(code("{\"type\":"), Some(close::INVALID_DATA));
        assert_eq!(code("not json"), Some(close::INVALID_DATA));
        assert_eq!(code("[1]"), Some(close::POLICY));
        assert_eq!(code("{}"), Some(close::POLICY));
        assert_eq!(code(r#"{"type":"subscribe"}"#), Some(close::POLICY));
        assert_eq!(code(r#"{"type":"append","id":{}}"#), Some(close::POLICY));
        assert_eq!(
            code(r#"{"type":"append","producerSeq":true}"#),
            Some(close::POLICY)
        );
        assert_eq!(
            code(r#"{"type":"append","close":"yes"}"#),
            Some(close::POLICY)
        );
        assert_eq!(code(r#"{"type":"append","extra":1}"#), Some(close::POLICY));
    }
}
