//! The messages of `live=ws` (docs/websocket.md), shared by the two ends that serve a client
//! socket: the stream's object, which holds the socket itself when the client starts near the
//! tail, and the edge, which serves a long catch-up or a fork's inherited range and then follows.
//!
//! Server to client: data and control messages ([`Emitter`], built by the core's
//! [`edgestream::ws`]). Client to server: append frames and receipts ([`parse_client`]); an append becomes the
//! headers and body POST would carry ([`append_headers`]), and are answered from POST's response
//! ([`reply_to`]) with an ack or an error.

use edgestream::headers as h;
use edgestream::sse::Control;
use edgestream::token::{AuthError, Operation};
use edgestream::ws::{binary_message, control_message, data_message};
use edgestream::{json, Offset, ProtocolError, ReadFrom};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use worker::{Headers, Response, Result};

use crate::auth::Access;
use crate::config::Config;
use crate::http::header;

/// Most stream bytes in one data message: a catch-up page or a live frame with more goes out in
/// several data messages before its control, cut on JSON message boundaries (a single larger
/// JSON message still goes out whole, in a message of its own). A browser reads a WebSocket
/// message only once all of it has arrived, and the npm client gives up a socket on which
/// nothing at all arrived for 40 s (`WS_QUIET_MS` twice): 64 KiB takes 13 s at 5 KB/s, where
/// 1 MiB took longer than that window below about 25 KB/s, and such a reader never got past it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest header of a binary append frame.
const MAX_BINARY_HEADER: usize = 64 * 1024;

/// WebSocket close codes (RFC 6455, section 7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// A frame that cannot be read: not JSON, not UTF-8, a truncated binary header.
    pub const INVALID_DATA: u16 = 1007;
    /// A readable frame that breaks this protocol: unknown type, wrong field types.
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    /// The stream's object restarted or cannot be reached: reconnect from the last offset.
    pub const RESTART: u16 = 1012;
    /// The client sent append frames faster than its [`AppendRate`](super::AppendRate), or more than may wait for
    /// their turn: resend what was not answered, more slowly.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token the socket was opened with has expired (`exp`): nothing more is sent on it. A
    /// private code (RFC 6455 leaves 4000-4999 to applications), after HTTP's 401, so a client
    /// can tell it from a routine reconnect and open a new socket with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4401;
}

/// The close reason that goes with [`close::TOKEN_EXPIRED`].
pub const TOKEN_EXPIRED: &str = "token expired: reconnect with a fresh token";

/// Most frames a client socket may have waiting for their turn to be applied, whether the
/// stream's object holds the socket or the edge does.
pub const MAX_WAITING_FRAMES: usize = 1000;
/// Most bytes of frames a client socket may have waiting.
pub const MAX_WAITING_BYTES: u64 = 8 * 1024 * 1024;

/// What one client socket has waiting for its turn, held to [`MAX_WAITING_FRAMES`] and
/// [`MAX_WAITING_BYTES`]. A frame with nothing ahead of it is within them whatever its size (the
/// platform's message limit and the isolate's body budget bound it): held to the byte limit, a
/// frame larger than it would be refused as "too many waiting" however often it was resent. The
/// frame that does not fit still counts, without its bytes, until it has had its turn (it closes
/// the socket then), and every frame after it is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Waiting {
    frames: usize,
    bytes: u64,
    over: bool,
}

/// What becomes of a frame that just arrived ([`Waiting::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// It waits for its turn, with its bytes.
    Queued,
    /// It went past a limit: at its turn it closes the socket with [`BadFrame::too_many_waiting`].
    Overflow,
    /// An earlier frame went past a limit: this one is dropped unread.
    Dropped,
}

impl Waiting {
    /// Counts a frame of `bytes`. `room` is asked only of a frame within the socket's limits:
    /// whether anything else (the isolate's body budget) has room for it too.
    pub fn admit(&mut self, bytes: u64, room: impl FnOnce() -> bool) -> Admit {
        if self.over {
            return Admit::Dropped;
        }
        let alone = self.frames == 0;
        self.frames += 1;
        let within = alone
            || (self.frames <= MAX_WAITING_FRAMES
                && self.bytes.saturating_add(bytes) <= MAX_WAITING_BYTES);
        if within && room() {
            self.bytes += bytes;
            Admit::Queued
        } else {
            self.over = true;
            Admit::Overflow
        }
    }

    /// A frame went past a limit: every later one is dropped.
    pub fn dropping(&self) -> bool {
        self.over
    }

    /// A frame admitted with `bytes` (none for the one that overflowed) has had its turn.
    /// Whether nothing waits any more.
    pub fn taken(&mut self, bytes: u64) -> bool {
        self.frames = self.frames.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.frames == 0
    }
}

/// How fast one socket may send append frames: `burst` at once, then `per_second` on average.
/// A frame costs one, and one more per 64 KiB of it.
///
/// workerd hands a stream's object a socket's frames one at a time and keeps the others in its
/// own queue, ahead of every later request to the isolate, where the object cannot count them.
/// So a client that sends faster than its appends are applied would delay everyone else, for as
/// long as it takes to apply what it sent (40,000 small frames held other streams' requests for
/// 27 s on this project's machine). Its frame past the allowance is refused, the socket closes
/// with 1013 after everything before it was answered, and what follows is dropped unread, which
/// costs little. A producer that needs more batches: one frame may carry many JSON messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendRate {
    pub burst: u64,
    pub per_second: u64,
}

/// Bytes of a frame that cost one more unit of an [`AppendRate`].
const RATE_UNIT_BYTES: u64 = 64 * 1024;

/// What a socket has left of its [`AppendRate`], in thousandths of a frame.
#[derive(Clone, Copy, Debug)]
pub struct AppendAllowance {
    milli: u64,
    at_ms: i64,
}

impl AppendAllowance {
    /// A whole burst.
    pub fn new(rate: AppendRate, now_ms: i64) -> AppendAllowance {
        AppendAllowance {
            milli: rate.burst.saturating_mul(1000),
            at_ms: now_ms,
        }
    }

    /// Takes what an append of `bytes` costs, after adding what accrued since the last take.
    pub fn take(&mut self, rate: AppendRate, bytes: usize, now_ms: i64) -> Result<(), BadFrame> {
        let elapsed = u64::try_from(now_ms.saturating_sub(self.at_ms)).unwrap_or(0);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(rate.per_second))
            .min(rate.burst.saturating_mul(1000));
        let cost = (1 + bytes as u64 / RATE_UNIT_BYTES) * 1000;
        if self.milli < cost {
            return Err(BadFrame::too_fast());
        }
        self.milli -= cost;
        Ok(())
    }
}

/// How often a socket's pings are answered at most. A pong is queued whether or not the client
/// reads, so a client that sent pings without reading would grow the server's queue without
/// bound; one that pings after 20 s of quiet, as the npm client does, is always answered.
pub const PONG_EVERY_MS: i64 = 1000;

/// When a socket's last ping was answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct PongPace {
    last_ms: Option<i64>,
}

impl PongPace {
    /// Whether a ping that came in at `now_ms` is answered (and counts as the last answered).
    pub fn answer(&mut self, now_ms: i64) -> bool {
        if self
            .last_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < PONG_EVERY_MS)
        {
            return false;
        }
        self.last_ms = Some(now_ms);
        true
    }
}

/// The close reason (with [`close::RESTART`]) for a client that sends receipts and fell more
/// than `WS_BACKLOG_BYTES` behind them.
pub const FELL_BEHIND: &str = "fell behind: reconnect from the last offset";

/// The close reason (with [`close::RESTART`]) for a client that sends no receipts once it has
/// been sent `WS_BACKLOG_BYTES` live: the server cannot tell whether it is still reading.
pub const NO_RECEIPTS: &str = "sent the limit without receipts: reconnect from the last offset";

/// The close reason for a client that falls behind what it may be sent unconfirmed.
pub fn cut_reason(receipts: bool) -> &'static str {
    if receipts {
        FELL_BEHIND
    } else {
        NO_RECEIPTS
    }
}

/// The header on the handshake the edge passes to the stream's object: a [`ClientHello`].
pub const X_CLIENT: &str = "x-edgestream-ws-client";

/// What the edge learned at a client's handshake that the object needs to serve the socket.
/// The object keeps it as the socket's attachment, so it survives hibernation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The cursor the control messages carry.
    #[serde(deserialize_with = "cursor_text")]
    pub cursor: String,
    pub append: AppendGrant,
    /// The client offered the [`edgestream::ws::COMBINED`] subprotocol: a data message may carry
    /// its batch's control fields, and binary messages have a header for them.
    #[serde(default)]
    pub combined: bool,
    /// The client offered the [`edgestream::ws::RECEIPTS`] subprotocol (which implies
    /// `combined`): it says how far it has read, and is cut off once it is more than
    /// `WS_BACKLOG_BYTES` behind what it was sent.
    #[serde(default)]
    pub receipts: bool,
    /// When the token that allowed the read expires (Unix seconds; `None` when access is
    /// open): from then on the socket is closed with [`close::TOKEN_EXPIRED`] instead of being
    /// sent anything, as an expired token could not open it again. Kept in the attachment, so
    /// it outlives hibernation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_until: Option<i64>,
}

impl ClientHello {
    /// Whether the read grant has expired at `now_secs` (see [`ClientHello::read_until`]).
    pub fn read_expired(&self, now_secs: i64) -> bool {
        read_expired(self.read_until, now_secs)
    }

    /// The subprotocol the handshake's answer names, if any.
    pub fn protocol(&self) -> Option<&'static str> {
        match (self.receipts, self.combined) {
            (true, _) => Some(edgestream::ws::RECEIPTS),
            (false, true) => Some(edgestream::ws::COMBINED),
            (false, false) => None,
        }
    }

    pub fn to_header(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_header(value: &str) -> Option<ClientHello> {
        serde_json::from_str(value).ok()
    }
}

/// A hello's cursor: text, or in attachments kept before cursors were text, a number.
fn cursor_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Cursor {
        Text(String),
        Number(u64),
    }
    Ok(match Cursor::deserialize(d)? {
        Cursor::Text(text) => text,
        Cursor::Number(n) => n.to_string(),
    })
}

/// Whether a read allowed until `read_until` (Unix seconds, `None` for open access) may no
/// longer be served at `now_secs`; a token is valid before its `exp`, as `Grant::check` has it.
pub fn read_expired(read_until: Option<i64>, now_secs: i64) -> bool {
    read_until.is_some_and(|exp| now_secs >= exp)
}

/// Until when (Unix seconds) a verified token allows the read it was checked for
/// ([`Access::read_until`]).
pub fn read_until(token: &std::result::Result<Access, AuthError>) -> Option<i64> {
    token.as_ref().ok().and_then(Access::read_until)
}

/// Whether the handshake's token allows appends over the socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppendGrant {
    /// Access control is off.
    Open,
    /// Allowed until this time (Unix seconds), the token's expiry.
    Until(i64),
    /// Refused, with POST's status and message; from the token's expiry (when it has one) on,
    /// refused as expired, as POST checks expiry first.
    Denied {
        status: u16,
        message: String,
        expires_at: Option<i64>,
    },
}

impl AppendGrant {
    /// What the handshake's token (`authenticate`d) allows for appends to `path`, checked as
    /// POST checks it.
    pub fn of(
        token: &std::result::Result<Access, AuthError>,
        path: &str,
        now_secs: i64,
    ) -> AppendGrant {
        let denied = |e: AuthError, expires_at| AppendGrant::Denied {
            status: e.status(),
            message: e.message().into(),
            expires_at,
        };
        match token {
            Ok(Access::Open) => AppendGrant::Open,
            Ok(Access::Granted(grant)) => match grant.check(Operation::Append, path, now_secs) {
                Ok(()) => AppendGrant::Until(grant.expires_at),
                Err(e) => denied(e, Some(grant.expires_at)),
            },
            Err(e) => denied(*e, None),
        }
    }

    /// The error reply for an append at `now_secs`, if the grant does not allow it.
    pub fn refusal(&self, id: Option<&RawValue>, now_secs: i64) -> Option<String> {
        match self {
            AppendGrant::Open => None,
            AppendGrant::Until(expires_at) if now_secs < *expires_at => None,
            AppendGrant::Until(_) => Some(refused(id, AuthError::Expired)),
            AppendGrant::Denied {
                expires_at: Some(expires_at),
                ..
            } if now_secs >= *expires_at => Some(refused(id, AuthError::Expired)),
            AppendGrant::Denied {
                status, message, ..
            } => Some(ErrorReply::of(id, *status, message.clone()).to_json()),
        }
    }
}

/// Where data and control messages go: one client socket.
pub trait Sink {
    fn send_text(&self, text: &str) -> Result<()>;
    fn send_bytes(&self, bytes: &[u8]) -> Result<()>;
}

/// Sends data and control messages to the client and remembers what it sent.
pub struct Emitter<S: Sink> {
    out: S,
    pub json: bool,
    /// Data messages may carry their control fields ([`ClientHello::combined`]).
    combined: bool,
    cursor: String,
    /// Where the client is: everything before it has been sent.
    pub offset: ReadFrom,
    /// The offset and up-to-date flag of the last control message, to skip repeats.
    last_control: Option<(Offset, bool)>,
}

impl<S: Sink> Emitter<S> {
    pub fn new(out: S, json: bool, combined: bool, cursor: String, offset: ReadFrom) -> Emitter<S> {
        Emitter {
            out,
            json,
            combined,
            cursor,
            offset,
            last_control: None,
        }
    }

    pub fn send_binary_page(&self, body: &[u8]) -> Result<bool> {
        for chunk in body.chunks(MAX_MESSAGE_BYTES) {
            self.send_piece(chunk)?;
        }
        Ok(!body.is_empty())
    }

    /// A data message that does not end its batch: under [`combined`](ClientHello::combined),
    /// a binary one has an empty header.
    fn send_piece(&self, piece: &[u8]) -> Result<()> {
        if self.json {
            self.out.send_text(&data_message(piece, None))
        } else if self.combined {
            self.out.send_bytes(&binary_message(piece, None))
        } else {
            self.out.send_bytes(piece)
        }
    }

    /// A JSON page arrives rendered as one array; it goes out as one or more data messages.
    pub fn send_json_page(&self, body: &[u8]) -> Result<bool> {
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
        self.send_json_framed(&framed)
    }

    /// JSON messages in their stored form, as one or more data messages.
    pub fn send_json_framed(&self, framed: &[u8]) -> Result<bool> {
        if framed.is_empty() {
            return Ok(false);
        }
        let mut at = 0;
        for cut in message_cuts(framed, MAX_MESSAGE_BYTES) {
            self.send_piece(&framed[at..cut])?;
            at = cut;
        }
        Ok(true)
    }

    /// A live frame: a data message (when it carries bytes), then its control message, or both
    /// in one for a client that takes them [`combined`](ClientHello::combined); a frame of more
    /// than [`MAX_MESSAGE_BYTES`] sends the rest first, in data messages of their own
    /// ([`piece_cuts`]). `Err` when the client cannot be sent to; `Ok(true)` when the stream is
    /// closed.
    pub fn frame(
        &mut self,
        end: Offset,
        closed: bool,
        up_to_date: bool,
        payload: &[u8],
    ) -> Result<bool> {
        let has_data = !payload.is_empty();
        let cuts = piece_cuts(payload, self.json);
        let mut at = 0;
        for &cut in &cuts[..cuts.len() - 1] {
            self.send_piece(&payload[at..cut])?;
            at = cut;
        }
        let payload = &payload[at..];
        if has_data && self.combined {
            let control = self.control_of(end, up_to_date, closed);
            if self.json {
                self.out.send_text(&data_message(payload, Some(&control)))?;
            } else {
                self.out
                    .send_bytes(&binary_message(payload, Some(&control)))?;
            }
            self.last_control = Some((end, up_to_date));
        } else {
            if has_data && self.json {
                self.out.send_text(&data_message(payload, None))?;
            } else if has_data {
                self.out.send_bytes(payload)?;
            }
            self.control(end, up_to_date, closed, has_data)?;
        }
        self.offset = ReadFrom::At(end);
        Ok(closed)
    }

    /// Sends a control message, unless it would repeat the previous one with no data between.
    pub fn control(
        &mut self,
        end: Offset,
        up_to_date: bool,
        closed: bool,
        has_data: bool,
    ) -> Result<()> {
        if !has_data && !closed && self.last_control == Some((end, up_to_date)) {
            return Ok(());
        }
        let control = self.control_of(end, up_to_date, closed);
        self.out.send_text(&control_message(&control))?;
        self.last_control = Some((end, up_to_date));
        Ok(())
    }

    fn control_of(&self, end: Offset, up_to_date: bool, closed: bool) -> Control {
        Control {
            next_offset: end.to_string(),
            cursor: Some(self.cursor.clone()),
            up_to_date,
            closed,
        }
    }
}

/// End positions of the data messages that carry `payload` (log bytes of a JSON stream or of
/// another), never none: at most [`MAX_MESSAGE_BYTES`] each, JSON only after whole messages.
pub fn piece_cuts(payload: &[u8], json: bool) -> Vec<usize> {
    if json {
        return message_cuts(payload, MAX_MESSAGE_BYTES);
    }
    let mut cuts: Vec<usize> = (MAX_MESSAGE_BYTES..payload.len())
        .step_by(MAX_MESSAGE_BYTES)
        .collect();
    cuts.push(payload.len());
    cuts
}

/// End positions of the data messages for a framed range: each at most `max` bytes, cut only
/// after whole messages (a single larger message gets a message of its own).
pub fn message_cuts(framed: &[u8], max: usize) -> Vec<usize> {
    if framed.len() <= max {
        return vec![framed.len()];
    }
    let mut cuts = Vec::new();
    let mut start = 0;
    let mut prev = 0;
    for end in json::MessageEnds::new(framed) {
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

/// A frame that cannot be served: the client gets an error message, then the close code.
pub struct BadFrame {
    pub code: u16,
    pub reason: &'static str,
    /// 400, or 503 for a frame that came too fast (with `retryAfter`).
    status: u16,
    message: String,
    /// The refused append's `id`, when it was read: its reply is the one every append gets.
    id: Option<Box<RawValue>>,
}

impl BadFrame {
    fn invalid(message: &str) -> BadFrame {
        BadFrame {
            code: close::INVALID_DATA,
            reason: "invalid frame",
            status: 400,
            id: None,
            message: message.into(),
        }
    }

    fn policy(message: &str) -> BadFrame {
        BadFrame {
            code: close::POLICY,
            reason: "frame breaks the protocol",
            status: 400,
            id: None,
            message: message.into(),
        }
    }

    /// An append past the socket's [`AppendRate`].
    pub fn too_fast() -> BadFrame {
        BadFrame {
            code: close::TRY_AGAIN_LATER,
            reason: "appends too fast: resend those not answered, more slowly",
            status: 503,
            id: None,
            message: "append frames arrive faster than this socket may send them; those not answered were not applied: resend them more slowly".into(),
        }
    }

    /// A frame past what may wait in line ([`Waiting`]).
    pub fn too_many_waiting() -> BadFrame {
        BadFrame {
            code: close::TRY_AGAIN_LATER,
            reason: "too many appends waiting: resend those not answered",
            status: 503,
            id: None,
            message: "too many append frames are waiting on this socket; those not answered were not applied: resend them".into(),
        }
    }
}

impl BadFrame {
    /// The same refusal, as the reply to the append frame `id`.
    pub fn of_append(self, id: Option<&RawValue>) -> BadFrame {
        BadFrame {
            id: id.map(ToOwned::to_owned),
            ..self
        }
    }

    /// The error message sent before the socket closes.
    pub fn reply(&self) -> String {
        ErrorReply {
            retry_after: (self.status == 503).then_some(1),
            ..ErrorReply::of(self.id.as_deref(), self.status, self.message.clone())
        }
        .to_json()
    }
}

/// A message from the client, as the socket delivered it.
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// A message from the client.
pub enum ClientMessage<'a> {
    /// An append frame, and the body POST would carry.
    Append(AppendFrame<'a>, Vec<u8>),
    /// A receipt: the client has read everything before this offset.
    Received(Offset),
    /// A keepalive, answered with `ws::PONG` (workerd answers the exact `ws::PING` itself on a
    /// socket the object holds).
    Ping,
}

/// Reads a client message. A text append frame's `data` is the body of a JSON stream as
/// written, and a string's UTF-8 bytes on any other stream; a binary message is always an
/// append frame.
pub fn parse_client(
    incoming: Incoming<'_>,
    json_stream: bool,
) -> std::result::Result<ClientMessage<'_>, BadFrame> {
    match incoming {
        Incoming::Text(text) => {
            let frame = match TextFrame::parse(text)? {
                TextFrame::Append(frame) => frame,
                TextFrame::Received(offset) => return Ok(ClientMessage::Received(offset)),
                TextFrame::Ping => return Ok(ClientMessage::Ping),
            };
            let body = match frame.data {
                None => Vec::new(),
                Some(raw) if json_stream => raw.get().as_bytes().to_vec(),
                Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                    Ok(text) => text.into_bytes(),
                    // The frame parsed, so the string's only fault can be an unpaired surrogate.
                    Err(_) if raw.get().starts_with('"') => {
                        return Err(BadFrame::invalid(
                            "data holds an unpaired surrogate, which has no UTF-8 bytes",
                        ))
                    }
                    Err(_) => return Err(BadFrame::policy(
                        "data must be a string on a non-JSON stream (send bytes in a binary frame)",
                    )),
                },
            };
            Ok(ClientMessage::Append(frame, body))
        }
        Incoming::Binary(bytes) => {
            parse_binary(bytes).map(|(frame, body)| ClientMessage::Append(frame, body))
        }
    }
}

/// `[u32 big-endian header length][header: an append frame without data][payload]`.
fn parse_binary(bytes: &[u8]) -> std::result::Result<(AppendFrame<'_>, Vec<u8>), BadFrame> {
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
    let TextFrame::Append(frame) = TextFrame::parse(head)? else {
        return Err(BadFrame::policy(
            "a receipt or a ping is a text message, not a binary frame's header",
        ));
    };
    if frame.data.is_some() {
        return Err(BadFrame::policy(
            "a binary frame's data follows its header; the header has no data field",
        ));
    }
    Ok((frame, payload.to_vec()))
}

/// The headers POST would carry for `frame` with `body` on a stream of `content_type`, checked
/// as the edge checks a POST's; a refusal is worded as POST words it.
pub fn append_headers(
    frame: &AppendFrame<'_>,
    body: &[u8],
    content_type: &str,
    config: &Config,
) -> Result<std::result::Result<Headers, ProtocolError>> {
    if body.len() as u64 > config.max_append_bytes {
        return Ok(Err(ProtocolError::PayloadTooLarge {
            limit: config.max_append_bytes,
        }));
    }
    let headers = Headers::new();
    let fields = [
        (h::PRODUCER_ID, frame.producer_id.as_deref()),
        (h::PRODUCER_EPOCH, frame.producer_epoch.as_deref()),
        (h::PRODUCER_SEQ, frame.producer_seq.as_deref()),
        (h::STREAM_SEQ, frame.stream_seq.as_deref()),
        (h::STREAM_LEASE_TTL, frame.lease_ttl.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            if headers.set(name, value).is_err() {
                return Ok(Err(ProtocolError::BadRequest(
                    "a field is not a valid header value",
                )));
            }
        }
    }
    if frame.close {
        headers.set(h::STREAM_CLOSED, "true")?;
    }
    if !body.is_empty() {
        headers.set(h::CONTENT_TYPE, content_type)?;
    }
    if let Err(e) = crate::edge::check_append(&headers, config) {
        return Ok(Err(e));
    }
    Ok(Ok(headers))
}

/// The error about the stream that ends a socket when the stream is deleted or expires:
/// `error` is 410 when it is kept for its forks, 404 when it is removed.
pub fn gone(error: &ProtocolError) -> String {
    ErrorReply::new(None, error).to_json()
}

/// The error for an append the socket's token does not allow (POST's 401 or 403).
pub fn refused(id: Option<&RawValue>, e: AuthError) -> String {
    ErrorReply::of(id, e.status(), e.message().into()).to_json()
}

/// The reply to an append frame: an ack or an error from the POST's response, its refusal, or
/// (when the platform failed) an error that asks for the same frame again.
pub async fn answer(
    id: Option<&RawValue>,
    result: Result<std::result::Result<Response, ProtocolError>>,
) -> String {
    match result {
        Ok(Ok(resp)) => reply_to(id, resp).await,
        Ok(Err(e)) => ErrorReply::new(id, &e).to_json(),
        Err(e) => {
            worker::console_error!("ws append: {e}");
            retry_later(id)
        }
    }
}

/// The error for an append that failed inside the platform: nothing was acknowledged, so the
/// client may send the same frame again (a producer's retry is safe).
fn retry_later(id: Option<&RawValue>) -> String {
    ErrorReply {
        retry_after: Some(1),
        ..ErrorReply::of(id, 503, "temporary failure; retry".into())
    }
    .to_json()
}

/// A client's text frame (or the header of a binary frame): the fields of an append frame and
/// of a receipt.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFrame<'a> {
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
    #[serde(borrow, default)]
    lease_ttl: Option<&'a RawValue>,
    /// `null` is the same as left out, as for every field.
    #[serde(default)]
    close: Option<bool>,
    /// A receipt's.
    #[serde(default)]
    offset: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// An append frame, its fields as the HTTP header values they stand for.
pub struct AppendFrame<'a> {
    pub id: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    producer_id: Option<String>,
    producer_epoch: Option<String>,
    producer_seq: Option<String>,
    stream_seq: Option<String>,
    lease_ttl: Option<String>,
    close: bool,
}

/// A text frame (or a binary frame's header), read.
enum TextFrame<'a> {
    Append(AppendFrame<'a>),
    Received(Offset),
    Ping,
}

impl<'a> TextFrame<'a> {
    fn parse(text: &'a str) -> std::result::Result<TextFrame<'a>, BadFrame> {
        // serde reads a struct from an array too, field by field in order (`["ping"]` would be
        // a ping), and its error for `[1]` names a type, not the frame's shape.
        if text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('[')
        {
            return Err(BadFrame::policy("bad frame: a frame is a JSON object"));
        }
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                BadFrame::policy(&format!("bad frame: {e}"))
            } else {
                BadFrame::invalid(&format!("frame is not a JSON object: {e}"))
            }
        })?;
        match raw.kind.as_str() {
            "append" if raw.offset.is_some() => Err(BadFrame::policy(
                "bad frame: an append frame has no offset field",
            )),
            "append" => AppendFrame::from_raw(raw).map(TextFrame::Append),
            "received" => {
                let only_offset = raw.id.is_none()
                    && raw.data.is_none()
                    && raw.producer_id.is_none()
                    && raw.producer_epoch.is_none()
                    && raw.producer_seq.is_none()
                    && raw.stream_seq.is_none()
                    && raw.lease_ttl.is_none()
                    && raw.close != Some(true);
                if !only_offset {
                    return Err(BadFrame::policy("bad frame: a receipt has only an offset"));
                }
                match raw.offset.as_deref().map(Offset::parse) {
                    Some(Ok(offset)) => Ok(TextFrame::Received(offset)),
                    _ => Err(BadFrame::policy(
                        "bad frame: a receipt's offset is the streamNextOffset of a control",
                    )),
                }
            }
            "ping" => Ok(TextFrame::Ping),
            _ => Err(BadFrame::policy(
                "unknown frame type (expected \"append\", \"received\" or \"ping\")",
            )),
        }
    }
}

impl<'a> AppendFrame<'a> {
    fn from_raw(raw: RawFrame<'a>) -> std::result::Result<AppendFrame<'a>, BadFrame> {
        if let Some(id) = raw.id {
            if !is_string_or_number(id) {
                return Err(BadFrame::policy("id must be a string or a number"));
            }
        }
        // Beyond ASCII, a Producer-Id header's bytes have no one text form (clients send UTF-8
        // or Latin-1), so such an id could name another producer than the same id over HTTP.
        if raw.producer_id.as_deref().is_some_and(|id| !id.is_ascii()) {
            return Err(BadFrame::policy(
                "producerId must be ASCII, to name the same producer as a Producer-Id header",
            ));
        }
        Ok(AppendFrame {
            id: raw.id,
            data: raw.data,
            producer_id: raw.producer_id,
            producer_epoch: header_text(raw.producer_epoch, "producerEpoch")?,
            producer_seq: header_text(raw.producer_seq, "producerSeq")?,
            // Stream-Seq is compared as text: a number would let 10 sort before 9.
            stream_seq: match raw.stream_seq {
                Some(raw) if !raw.get().starts_with('"') => {
                    return Err(BadFrame::policy("streamSeq must be a string"));
                }
                raw => header_text(raw, "streamSeq")?,
            },
            lease_ttl: header_text(raw.lease_ttl, "leaseTtl")?,
            close: raw.close == Some(true),
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
        "leaseTtl" => "leaseTtl must be a number or a string",
        // Only strings reach here for streamSeq (numbers are refused before, as they sort as text).
        _ => "streamSeq must be a string",
    }))
}

/// An `ack` for 2xx answers, an `error` for the rest, with the headers a client acts on.
async fn reply_to(id: Option<&RawValue>, mut resp: Response) -> String {
    let status = resp.status_code();
    let headers = resp.headers().clone();
    let number = |name: &str| header(&headers, name).and_then(|v| v.trim().parse::<u64>().ok());
    let stream_next_offset = header(&headers, h::STREAM_NEXT_OFFSET);
    let stream_closed = h::is_closed(header(&headers, h::STREAM_CLOSED).as_deref()).then_some(true);
    if (200..300).contains(&status) {
        let ack = Ack {
            kind: "ack",
            id,
            status,
            stream_next_offset,
            stream_closed,
            producer_epoch: number(h::PRODUCER_EPOCH),
            producer_seq: number(h::PRODUCER_SEQ),
            lease_expires_at: header(&headers, h::STREAM_LEASE_EXPIRES_AT),
        };
        return serde_json::to_string(&ack).unwrap_or_default();
    }
    let message = resp.text().await.unwrap_or_default().trim().to_string();
    ErrorReply {
        stream_next_offset,
        stream_closed,
        producer_epoch: number(h::PRODUCER_EPOCH),
        producer_expected_seq: number(h::PRODUCER_EXPECTED_SEQ),
        producer_received_seq: number(h::PRODUCER_RECEIVED_SEQ),
        retry_after: number(h::RETRY_AFTER),
        lease_expires_at: header(&headers, h::STREAM_LEASE_EXPIRES_AT),
        ..ErrorReply::of(id, status, message)
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
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<String>,
}

/// An `error` message: about an append when it has an `id`, about the stream when not.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply<'a> {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<String>,
}

impl<'a> ErrorReply<'a> {
    /// An error with `status` and `message`, and none of the fields a client acts on.
    pub fn of(id: Option<&'a RawValue>, status: u16, message: String) -> ErrorReply<'a> {
        ErrorReply {
            kind: "error",
            id,
            status,
            message,
            stream_next_offset: None,
            stream_closed: None,
            producer_epoch: None,
            producer_expected_seq: None,
            producer_received_seq: None,
            retry_after: None,
            lease_expires_at: None,
        }
    }

    /// A refusal decided before the stream's append, worded as POST words it.
    pub fn new(id: Option<&'a RawValue>, e: &ProtocolError) -> ErrorReply<'a> {
        let mut reply = ErrorReply::of(id, e.status(), e.message());
        for (name, value) in e.headers() {
            let number = value.parse::<u64>().ok();
            match name {
                h::STREAM_NEXT_OFFSET => reply.stream_next_offset = Some(value),
                h::STREAM_CLOSED => reply.stream_closed = Some(true),
                h::PRODUCER_EPOCH => reply.producer_epoch = number,
                h::PRODUCER_EXPECTED_SEQ => reply.producer_expected_seq = number,
                h::PRODUCER_RECEIVED_SEQ => reply.producer_received_seq = number,
                h::RETRY_AFTER => reply.retry_after = number,
                h::STREAM_LEASE_EXPIRES_AT => reply.lease_expires_at = Some(value),
                _ => {}
            }
        }
        reply
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn a_frame_alone_in_line_is_within_the_limits_whatever_its_size() {
        let mut waiting = Waiting::default();
        let big = MAX_WAITING_BYTES + 1;
        assert_eq!(waiting.admit(big, || true), Admit::Queued);
        // Behind it, the byte limit holds.
        assert_eq!(waiting.admit(1, || true), Admit::Overflow);
        assert_eq!(waiting.admit(1, || true), Admit::Dropped);

        let mut waiting = Waiting::default();
        assert_eq!(waiting.admit(big, || true), Admit::Queued);
        assert!(waiting.taken(big));
        // Once it has had its turn, the next large frame is alone again.
        assert_eq!(waiting.admit(big, || true), Admit::Queued);
        // The isolate's budget still counts for a frame alone.
        let mut waiting = Waiting::default();
        assert_eq!(waiting.admit(big, || false), Admit::Overflow);
    }

    #[test]
    fn frames_behind_another_are_held_to_the_limits() {
        let mut waiting = Waiting::default();
        let half = MAX_WAITING_BYTES / 2;
        assert_eq!(waiting.admit(half, || true), Admit::Queued);
        assert_eq!(waiting.admit(half, || true), Admit::Queued);
        assert_eq!(waiting.admit(1, || true), Admit::Overflow);

        let mut waiting = Waiting::default();
        for _ in 0..MAX_WAITING_FRAMES {
            assert_eq!(waiting.admit(1, || true), Admit::Queued);
        }
        assert_eq!(waiting.admit(1, || true), Admit::Overflow);
    }

    /// Records what an [`Emitter`] sends: `T:` text, `B:` bytes as UTF-8.
    #[derive(Default)]
    struct Sent(RefCell<Vec<String>>);

    impl Sink for &Sent {
        fn send_text(&self, text: &str) -> Result<()> {
            self.0.borrow_mut().push(format!("T:{text}"));
            Ok(())
        }
        fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
            self.0
                .borrow_mut()
                .push(format!("B:{}", String::from_utf8_lossy(bytes)));
            Ok(())
        }
    }

    #[test]
    fn a_live_frame_is_data_then_control_or_both_in_one() {
        let at = |n| Offset::new(n).unwrap();
        let control = |n: u64, end: &str| {
            format!(
                "\"streamNextOffset\":\"{}\",\"streamCursor\":\"9\",\"upToDate\":true{end}",
                at(n)
            )
        };
        let header = format!("{{{}", control(9, "}"));
        let cases = [
            (
                true,
                false,
                vec![
                    "T:{\"type\":\"data\",\"items\":[1,{\"a\":2}]}".to_string(),
                    format!("T:{{\"type\":\"control\",{}", control(9, "}")),
                ],
            ),
            (
                true,
                true,
                vec![format!(
                    "T:{{\"type\":\"data\",\"items\":[1,{{\"a\":2}}],{}",
                    control(9, "}")
                )],
            ),
            (
                false,
                false,
                vec![
                    "B:1,{\"a\":2},".to_string(),
                    format!("T:{{\"type\":\"control\",{}", control(9, "}")),
                ],
            ),
            // Bytes behind a header that holds the control, and its length before it.
            (
                false,
                true,
                vec![format!(
                    "B:\0\0\0{}{header}1,{{\"a\":2}},",
                    char::from(header.len() as u8)
                )],
            ),
        ];
        for (json, combined, expected) in cases {
            let sent = Sent::default();
            let mut emit = Emitter::new(&sent, json, combined, "9".into(), ReadFrom::At(at(0)));
            assert_eq!(
                emit.frame(at(9), false, true, b"1,{\"a\":2},").ok(),
                Some(false)
            );
            // The same control again with no data is not repeated, combined or not.
            emit.control(at(9), true, false, false).unwrap();
            assert_eq!(emit.offset, ReadFrom::At(at(9)));
            assert_eq!(
                *sent.0.borrow(),
                expected,
                "json {json}, combined {combined}"
            );
        }
        // A frame with no data is a control message alone.
        let sent = Sent::default();
        let mut emit = Emitter::new(&sent, true, true, "9".into(), ReadFrom::At(at(9)));
        assert_eq!(emit.frame(at(9), true, true, b"").ok(), Some(true));
        assert_eq!(
            *sent.0.borrow(),
            vec![format!("T:{{\"type\":\"control\",\"streamNextOffset\":\"{}\",\"upToDate\":true,\"streamClosed\":true}}", at(9))]
        );
    }

    /// A live frame larger than [`MAX_MESSAGE_BYTES`] goes out in data messages of at most that
    /// much of the stream each, the last one carrying the control fields (or followed by the
    /// control), every byte once and in order, under every form.
    #[test]
    fn a_large_frame_goes_out_in_small_data_messages_before_its_control() {
        /// Bytes, and text as bytes, of each message sent.
        struct Raw(RefCell<Vec<(bool, Vec<u8>)>>);
        impl Sink for &Raw {
            fn send_text(&self, text: &str) -> Result<()> {
                self.0.borrow_mut().push((true, text.as_bytes().to_vec()));
                Ok(())
            }
            fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
                self.0.borrow_mut().push((false, bytes.to_vec()));
                Ok(())
            }
        }
        let at = |n: u64| Offset::new(n).unwrap();
        let bytes: Vec<u8> = (0..3 * MAX_MESSAGE_BYTES + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let values: Vec<String> = (0..3000)
            .map(|i| format!("{{\"i\":{i},\"p\":\"{}\"}}", "x".repeat(i % 200)))
            .collect();
        let framed: String = values.iter().map(|v| format!("{v},")).collect();
        for json in [false, true] {
            let payload = if json { framed.as_bytes() } else { &bytes[..] };
            for combined in [false, true] {
                let raw = Raw(RefCell::new(Vec::new()));
                let end = at(payload.len() as u64);
                let mut emit = Emitter::new(&raw, json, combined, "9".into(), ReadFrom::At(at(0)));
                assert_eq!(emit.frame(end, false, true, payload).ok(), Some(false));
                let sent = raw.0.into_inner();
                assert!(
                    sent.len() > 3,
                    "json {json}, combined {combined}: {} messages",
                    sent.len()
                );
                let mut got_bytes = Vec::new();
                let mut got_items = Vec::new();
                let mut controls = Vec::new();
                for (i, (text, message)) in sent.iter().enumerate() {
                    if *text {
                        let value: serde_json::Value = serde_json::from_slice(message).unwrap();
                        if value["type"] == "control" {
                            controls.push((i, value["streamNextOffset"].clone()));
                            continue;
                        }
                        let items = value["items"].as_array().unwrap();
                        let inner = serde_json::to_string(items).unwrap();
                        assert!(
                            inner.len() <= MAX_MESSAGE_BYTES + 2,
                            "a data message of {}",
                            inner.len()
                        );
                        if value.get("streamNextOffset").is_some() {
                            controls.push((i, value["streamNextOffset"].clone()));
                        }
                        got_items.extend(items.iter().map(|v| v.to_string()));
                    } else if combined {
                        let (control, piece) = edgestream::ws::parse_binary(message).ok().unwrap();
                        assert!(piece.len() <= MAX_MESSAGE_BYTES);
                        if let Some(control) = control {
                            controls.push((i, control.next_offset.into()));
                        }
                        got_bytes.extend_from_slice(piece);
                    } else {
                        assert!(message.len() <= MAX_MESSAGE_BYTES);
                        got_bytes.extend_from_slice(message);
                    }
                }
                // One control, and it comes last.
                assert_eq!(
                    controls,
                    vec![(sent.len() - 1, serde_json::Value::from(end.to_string()))],
                    "json {json}, combined {combined}"
                );
                if json {
                    assert_eq!(got_items, values);
                } else {
                    assert_eq!(got_bytes, bytes);
                }
            }
        }
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
    fn a_hello_survives_its_header_and_grants_appends_until_the_token_expires() {
        for append in [
            AppendGrant::Open,
            AppendGrant::Until(100),
            AppendGrant::Denied {
                status: 403,
                message: "no".into(),
                expires_at: Some(100),
            },
        ] {
            for (combined, receipts) in [(false, false), (true, false), (true, true)] {
                for read_until in [None, Some(100)] {
                    let hello = ClientHello {
                        cursor: "42".into(),
                        append: append.clone(),
                        combined,
                        receipts,
                        read_until,
                    };
                    assert_eq!(ClientHello::from_header(&hello.to_header()), Some(hello));
                }
            }
        }
        // Attachments kept before the combined form, receipts and read expiry existed still
        // read (and such a socket is never closed for its token).
        let old = ClientHello::from_header("{\"cursor\":1,\"append\":\"open\"}").unwrap();
        assert!(!old.combined && !old.receipts);
        assert_eq!(old.read_until, None);
        assert!(!old.read_expired(i64::MAX));
        assert_eq!(old.cursor, "1");
        assert_eq!(old.protocol(), None);
        assert_eq!(ClientHello::from_header("{\"cursor\":1}"), None);
        // A read is served before the token's `exp`, not at it.
        assert!(!read_expired(Some(100), 99));
        assert!(read_expired(Some(100), 100));
        assert!(!read_expired(None, i64::MAX));
        let id = RawValue::from_string("7".into()).unwrap();
        assert_eq!(AppendGrant::Open.refusal(Some(&id), i64::MAX), None);
        assert_eq!(AppendGrant::Until(100).refusal(Some(&id), 99), None);
        let expired = AppendGrant::Until(100).refusal(Some(&id), 100).unwrap();
        assert!(expired.contains("\"status\":401") && expired.contains("\"id\":7"));
        assert!(expired.contains("expired"));
        let denied = AppendGrant::Denied {
            status: 403,
            message: "not for appends".into(),
            expires_at: Some(100),
        };
        assert_eq!(
            denied.refusal(None, 99).unwrap(),
            "{\"type\":\"error\",\"status\":403,\"message\":\"not for appends\"}"
        );
        // As POST, which checks a token's expiry before what it allows.
        assert_eq!(
            denied.refusal(None, 100),
            AppendGrant::Until(100).refusal(None, 100)
        );
    }

    #[test]
    fn a_grant_is_checked_as_post_checks_a_token() {
        let grant = |prefix: &str, ops: Vec<Operation>| {
            Ok(Access::Granted(edgestream::token::Grant {
                prefix: prefix.into(),
                ops,
                expires_at: 100,
            }))
        };
        let path = "rooms/a";
        assert_eq!(
            AppendGrant::of(&Ok(Access::Open), path, 0),
            AppendGrant::Open
        );
        let writer = grant("rooms/", vec![Operation::Read, Operation::Append]);
        assert_eq!(AppendGrant::of(&writer, path, 0), AppendGrant::Until(100));
        let reader = grant("rooms/", vec![Operation::Read]);
        assert!(matches!(
            AppendGrant::of(&reader, path, 0),
            AppendGrant::Denied {
                status: 403,
                expires_at: Some(100),
                ..
            }
        ));
        assert!(matches!(
            AppendGrant::of(&Err(AuthError::Missing), path, 0),
            AppendGrant::Denied {
                status: 401,
                expires_at: None,
                ..
            }
        ));
    }

    #[test]
    fn append_frames_parse() {
        let append = |text| match TextFrame::parse(text) {
            Ok(TextFrame::Append(frame)) => frame,
            _ => panic!("not an append frame: {text}"),
        };
        let frame = append(
            r#"{"type":"append","id":7,"data":null,"producerId":"p","producerEpoch":0,"producerSeq":"3","close":true}"#,
        );
        assert_eq!(frame.id.map(RawValue::get), Some("7"));
        assert_eq!(frame.data.map(RawValue::get), Some("null"));
        assert_eq!(frame.producer_epoch.as_deref(), Some("0"));
        assert_eq!(frame.producer_seq.as_deref(), Some("3"));
        assert!(frame.close);
        let bare = append(r#"{"type":"append"}"#);
        assert!(bare.data.is_none() && bare.id.is_none() && !bare.close);
        // `null` is the same as left out, `close` included.
        let nulls = append(r#"{"type":"append","data":1,"close":null,"id":null,"leaseTtl":null}"#);
        assert!(!nulls.close && nulls.id.is_none() && nulls.lease_ttl.is_none());
        assert!(bare.lease_ttl.is_none());
        let leased = append(r#"{"type":"append","leaseTtl":30}"#);
        assert_eq!(leased.lease_ttl.as_deref(), Some("30"));
    }

    #[test]
    fn bad_append_frames_get_the_right_close_code() {
        let code = |text: &str| TextFrame::parse(text).err().map(|e| e.code);
        assert_eq!(code("{\"type\":"), Some(close::INVALID_DATA));
        assert_eq!(code("not json"), Some(close::INVALID_DATA));
        assert_eq!(code("[1]"), Some(close::POLICY));
        // A frame is an object: an array is not read field by field.
        assert_eq!(code(r#"["ping"]"#), Some(close::POLICY));
        assert_eq!(code(r#"["append",null,"x"]"#), Some(close::POLICY));
        assert_eq!(code(r#" ["received"]"#), Some(close::POLICY));
        for text in ["[1]", r#"["ping"]"#] {
            let message = TextFrame::parse(text).err().map(|e| e.message);
            assert_eq!(
                message.as_deref(),
                Some("bad frame: a frame is a JSON object")
            );
        }
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
        assert_eq!(
            code(r#"{"type":"append","leaseTtl":[30]}"#),
            Some(close::POLICY)
        );
        assert_eq!(
            code(r#"{"type":"received","leaseTtl":1,"offset":"-1"}"#),
            Some(close::POLICY)
        );
        assert_eq!(code(r#"{"type":"append","extra":1}"#), Some(close::POLICY));
        let offset = "0000000000000000_0000000000000042";
        assert_eq!(
            code(&format!(r#"{{"type":"append","offset":"{offset}"}}"#)),
            Some(close::POLICY)
        );
    }

    #[test]
    fn a_ping_is_read_as_written_or_spaced_but_not_as_a_binary_header() {
        for text in [edgestream::ws::PING, r#"{ "type" : "ping" }"#] {
            assert!(matches!(
                parse_client(Incoming::Text(text), true),
                Ok(ClientMessage::Ping)
            ));
        }
        assert_binary_header_refused(edgestream::ws::PING);
    }

    /// A binary frame is always an append: `header`, a message of another kind, is refused.
    fn assert_binary_header_refused(header: &str) {
        let mut binary = (header.len() as u32).to_be_bytes().to_vec();
        binary.extend_from_slice(header.as_bytes());
        assert!(matches!(
            parse_client(Incoming::Binary(&binary), false),
            Err(BadFrame {
                code: close::POLICY,
                ..
            })
        ));
    }

    #[test]
    fn receipts_parse_and_carry_only_an_offset() {
        let offset = "0000000000000000_0000000000000042";
        let text = edgestream::ws::receipt_message(offset);
        match parse_client(Incoming::Text(&text), true) {
            Ok(ClientMessage::Received(at)) => assert_eq!(at, Offset::new(42).unwrap()),
            _ => panic!("a receipt"),
        }
        let code = |text: &str| match parse_client(Incoming::Text(text), false) {
            Err(e) => Some(e.code),
            Ok(_) => None,
        };
        for bad in [
            r#"{"type":"received"}"#.to_string(),
            r#"{"type":"received","offset":"-1"}"#.into(),
            r#"{"type":"received","offset":"now"}"#.into(),
            r#"{"type":"received","offset":42}"#.into(),
            format!(r#"{{"type":"received","offset":"{offset}","id":1}}"#),
            format!(r#"{{"type":"received","offset":"{offset}","data":"x"}}"#),
            format!(r#"{{"type":"received","offset":"{offset}","close":true}}"#),
            format!(r#"{{"type":"received","offset":"{offset}","extra":1}}"#),
        ] {
            assert_eq!(code(&bad), Some(close::POLICY), "{bad}");
        }
        assert_binary_header_refused(&edgestream::ws::receipt_message(offset));
    }

    #[test]
    fn an_append_allowance_is_a_burst_then_a_rate_and_large_frames_cost_more() {
        let rate = AppendRate {
            burst: 10,
            per_second: 5,
        };
        let mut allowance = AppendAllowance::new(rate, 1_000);
        for _ in 0..10 {
            assert!(allowance.take(rate, 10, 1_000).is_ok());
        }
        let refused = allowance.take(rate, 10, 1_000).unwrap_err();
        assert_eq!(refused.code, close::TRY_AGAIN_LATER);
        assert_eq!(
            refused.reason,
            "appends too fast: resend those not answered, more slowly"
        );
        assert!(refused.reply().contains("\"status\":503"));
        assert!(refused.reply().contains("\"retryAfter\":1"));
        assert!(!refused.reply().contains("\"id\""));
        // As the reply to its append, it names the frame, as every append's reply does.
        let id = serde_json::value::RawValue::from_string("\"a-17\"".into()).unwrap();
        let answered = allowance
            .take(rate, 10, 1_000)
            .unwrap_err()
            .of_append(Some(&id));
        assert!(
            answered.reply().contains("\"id\":\"a-17\""),
            "{}",
            answered.reply()
        );
        // 200 ms accrue one frame; a second stays at most a burst whatever the wait.
        assert!(allowance.take(rate, 10, 1_100).is_err());
        assert!(allowance.take(rate, 10, 1_200).is_ok());
        assert!(allowance.take(rate, 10, 1_200).is_err());
        for _ in 0..10 {
            assert!(allowance.take(rate, 10, 1_000_000).is_ok());
        }
        assert!(allowance.take(rate, 10, 1_000_000).is_err());
        // One more unit per 64 KiB: a 128 KiB frame costs three.
        let mut allowance = AppendAllowance::new(rate, 0);
        for _ in 0..3 {
            assert!(allowance.take(rate, 128 * 1024, 0).is_ok());
        }
        assert!(allowance.take(rate, 1, 0).is_ok());
        assert!(allowance.take(rate, 1, 0).is_err());
        // A clock that goes back takes nothing away, and adds nothing.
        assert!(allowance.take(rate, 1, -5_000).is_err());
    }

    #[test]
    fn pings_are_answered_once_a_second_at_most() {
        let mut pace = PongPace::default();
        assert!(pace.answer(5_000));
        assert!(!pace.answer(5_000));
        assert!(!pace.answer(5_999));
        assert!(pace.answer(6_000));
        // Unanswered pings do not push the next answer back.
        assert!(!pace.answer(6_500));
        assert!(pace.answer(7_000));
        assert!(
            !pace.answer(3_000),
            "a clock that goes back answers nothing more"
        );
    }
}
