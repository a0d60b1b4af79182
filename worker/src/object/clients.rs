//! Client WebSockets (`live=ws`) that the object holds itself.
//!
//! A client that starts near the tail is handed over by the edge: the object accepts its socket
//! with the hibernation API, so an open socket never keeps the object awake, and each append
//! reaches it as one send from here, with no edge request, internal socket or JS handler in
//! between. The socket's [`ClientState`] is its attachment, so it survives hibernation. Data
//! and control messages are built once per append for every socket (once per cursor for the
//! control), and append frames are applied in the order they arrived (`crate::turnstile`). A
//! client that falls too far behind its receipts, or is sent too much without any, is cut off
//! ([`Receipts`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use edgestream::sse::Control;
use edgestream::ws::{self, Receipt};
use edgestream::{Offset, ReadFrom};
use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use worker::web_sys::WebSocket;
use worker::{Response, Result, WebSocketPair};

use super::live::{self, Hub};
use super::store::{Meta, Store};
use super::PAGE_BYTES;
use crate::http;
use crate::wsproto::{self, close, ClientHello, Emitter, Sink};

/// The tag of client sockets among the object's hibernating sockets.
pub const TAG: &str = "client";

/// What the object keeps about a client socket (its attachment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientState {
    /// The stream is JSON: data goes out as JSON text messages.
    pub json: bool,
    pub hello: ClientHello,
    /// Names the socket among the object's [`Receipts`].
    #[serde(default)]
    pub id: u64,
    /// The position it was sent everything before when it connected: a client that sends no
    /// receipts counts from here, even after the object wakes from hibernation.
    #[serde(default)]
    pub connected_at: Option<u64>,
}

impl ClientState {
    /// The state of `ws`, or `None` for a socket that is not a client's (an edge reader's).
    pub fn of(ws: &WebSocket) -> Option<ClientState> {
        let ws = worker::WebSocket::from(ws.clone());
        let text = ws.deserialize_attachment::<String>().ok()??;
        serde_json::from_str(&text).ok()
    }
}

#[wasm_bindgen]
extern "C" {
    /// A WebSocket seen through `send(any)`, so one JS string or buffer built for all sockets
    /// is sent as it is.
    type AnySocket;
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_value(this: &AnySocket, data: &JsValue) -> std::result::Result<(), JsValue>;
}

fn send(ws: &WebSocket, data: &JsValue) -> Result<()> {
    ws.unchecked_ref::<AnySocket>()
        .send_value(data)
        .map_err(|e| worker::Error::JsError(format!("{e:?}")))
}

/// One client socket as an [`Emitter`]'s sink, for its catch-up.
struct Direct<'a>(&'a WebSocket);

impl Sink for Direct<'_> {
    fn send_text(&self, text: &str) -> Result<()> {
        send(self.0, &JsValue::from_str(text))
    }

    fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        crate::socket::send_copy(self.0, bytes)
    }
}

/// Whether a client handed over at `start` is served here: the object's own rows, at most one
/// page behind the tail. A longer catch-up (or a fork's inherited range) is served by the edge
/// in pages, so the object never sends more than a page in one turn.
pub fn serves(meta: &Meta, start: Offset) -> bool {
    start >= meta.base && meta.tail.distance_from(start) <= PAGE_BYTES as u64
}

/// Accepts a client socket at `start` (see [`serves`]): sends it everything up to the tail,
/// then it receives each append as it happens.
pub fn accept(
    hub: &Hub,
    store: &Store,
    meta: &Meta,
    start: Offset,
    hello: ClientHello,
) -> Result<Response> {
    // The edge checked the token a moment ago; a handshake that took until its expiry gets
    // nothing, as the edge would refuse it now.
    if hello.read_expired(http::now_secs()) {
        return http::text(401, "token expired");
    }
    let id = u64::from(http::random_u32()) << 32 | u64::from(http::random_u32());
    // Queued appends go out first, so the catch-up read below and later sends never overlap.
    live::flush(hub);
    // Bytes stay in a JS buffer, so wasm memory never grows to a page's size.
    let read = if meta.is_json() {
        store
            .read(start, meta.tail, PAGE_BYTES, true)?
            .map(|page| (Catchup::Json(page.data), page.end))
    } else {
        store
            .read_js(start, meta.tail, PAGE_BYTES)?
            .map(|(bytes, end)| (Catchup::Bytes(bytes), end))
    };
    let (catchup, end) = match read {
        Ok(read) => read,
        Err(e) => return http::error(&e.into_protocol()),
    };
    let pair = WebSocketPair::new()?;
    let ws: &WebSocket = pair.server.as_ref();
    if let Err(e) = hub.accept(ws, &[TAG]) {
        worker::console_warn!("stream object: cannot accept a client socket: {e:?}");
        return live::too_many_readers();
    }
    let state = ClientState {
        json: meta.is_json(),
        hello,
        id,
        connected_at: Some(end.position()),
    };
    let attached = serde_json::to_string(&state)
        .map_err(|e| worker::Error::RustError(e.to_string()))
        .and_then(|text| pair.server.serialize_attachment(text));
    if let Err(e) = attached {
        let _ = ws.close_with_code_and_reason(close::INTERNAL, "cannot keep the socket");
        return Err(e);
    }
    hub.clients_changed();
    // The catch-up below (at most a page) is not held to the limit; live appends are.
    hub.receipts().opened(id, end);
    let mut emit = Emitter::new(
        Direct(ws),
        state.json,
        state.hello.combined,
        state.hello.cursor.clone(),
        ReadFrom::At(start),
    );
    let up_to_date = end >= meta.tail;
    let closed = meta.closed && up_to_date;
    let sent = match catchup {
        Catchup::Json(framed) => emit.send_json_framed(&framed),
        Catchup::Bytes(bytes) => send_js_page(ws, &bytes, state.hello.combined),
    };
    // The client always hears first whether it is up to date, even with nothing to catch up.
    let sent = sent.and_then(|has_data| emit.control(end, up_to_date, closed, has_data));
    if sent.is_ok() && !up_to_date {
        // Cannot happen (the page budget covers the backlog); never leave a gap if it does.
        let _ = ws.close_with_code_and_reason(close::RESTART, "catch up again");
    } else if closed {
        let _ = ws.close_with_code_and_reason(close::NORMAL, "stream closed");
    }
    let resp = Response::from_websocket(pair.client)?;
    crate::reply::name_incarnation(resp.headers(), &meta.instance)?;
    super::channel::mark(&resp, meta)?;
    Ok(resp)
}

/// A client's catch-up: framed JSON messages, or bytes in a JS buffer.
enum Catchup {
    Json(Vec<u8>),
    Bytes(Uint8Array),
}

/// Sends `bytes` as data messages of at most [`wsproto::MAX_MESSAGE_BYTES`] each, `combined`
/// behind an empty header ([`ws::binary_message`]); whether there were any.
fn send_js_page(ws: &WebSocket, bytes: &Uint8Array, combined: bool) -> Result<bool> {
    let len = bytes.length();
    let max = wsproto::MAX_MESSAGE_BYTES as u32;
    let mut at = 0;
    while at < len {
        let to = len.min(at + max);
        let chunk = bytes.subarray(at, to);
        if combined {
            let message = Uint8Array::new_with_length(4 + to - at);
            message.set(&chunk, 4);
            send(ws, &message)?;
        } else {
            send(ws, &chunk)?;
        }
        at = to;
    }
    Ok(len > 0)
}

/// Client sockets that share a cursor and a message form, and so every message.
pub struct Group {
    cursor: String,
    /// See [`ClientHello::combined`].
    combined: bool,
    sockets: Vec<Client>,
}

/// A client socket, and its slot among the [`Receipts`].
struct Client {
    ws: WebSocket,
    read: Rc<Cell<Read>>,
    /// It sends receipts ([`ClientHello::receipts`]); the slot moves only when it does.
    receipts: bool,
    /// See [`ClientHello::read_until`].
    read_until: Option<i64>,
}

impl Client {
    /// Whether its token has expired; if so, closes it ([`close_expired`]), once, unless it is
    /// `spared` (the socket whose append is being applied: it gets its ack first).
    fn expired(&self, now_secs: i64, spared: Option<&WebSocket>) -> bool {
        if !wsproto::read_expired(self.read_until, now_secs) {
            return false;
        }
        let spared = spared.is_some_and(|s| js_sys::Object::is(s, &self.ws));
        if !spared && self.ws.ready_state() == WebSocket::OPEN {
            close_expired(&self.ws);
        }
        true
    }
}

/// Closes every client socket whose token has expired by `now_secs`, idle ones too (from the
/// alarm: with no append, [`deliver`] would not see them); answers the earliest expiry among
/// the others, for the alarm to come back then.
pub fn close_expired_all(groups: &[Group], now_secs: i64) -> Option<i64> {
    open(groups)
        .filter(|client| !client.expired(now_secs, None))
        .filter_map(|client| client.read_until)
        .min()
}

/// When the first token among the open client sockets expires, past or not (an expired one
/// makes the alarm fire at once, and [`close_expired_all`] close it).
pub fn first_expiry(groups: &[Group]) -> Option<i64> {
    open(groups).filter_map(|client| client.read_until).min()
}

/// The client sockets still open (not closing or closed).
fn open(groups: &[Group]) -> impl Iterator<Item = &Client> {
    groups
        .iter()
        .flat_map(|g| &g.sockets)
        .filter(|client| client.ws.ready_state() == WebSocket::OPEN)
}

/// Closes a socket whose token has expired: a read the token no longer allows gets nothing
/// more, and its client must open another socket with a fresh token.
pub fn close_expired(ws: &WebSocket) {
    let _ = ws.close_with_code_and_reason(close::TOKEN_EXPIRED, wsproto::TOKEN_EXPIRED);
}

/// The client sockets, grouped by cursor, read from their attachments, with their slots among
/// `receipts`.
pub fn groups(sockets: Vec<WebSocket>, receipts: &Receipts) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for ws in sockets {
        let Some(state) = ClientState::of(&ws) else {
            continue;
        };
        let (cursor, combined) = (state.hello.cursor.clone(), state.hello.combined);
        let read = receipts.slot(state.id);
        if !state.hello.receipts {
            // After a wake, a client without receipts still counts from where it connected.
            if let Some(at) = state.connected_at.and_then(Offset::new) {
                Receipts::seed(&read, at);
            }
        }
        let ws = Client {
            ws,
            read,
            receipts: state.hello.receipts,
            read_until: state.hello.read_until,
        };
        match groups
            .iter_mut()
            .find(|g| g.cursor == cursor && g.combined == combined)
        {
            Some(group) => group.sockets.push(ws),
            None => groups.push(Group {
                cursor,
                combined,
                sockets: vec![ws],
            }),
        }
    }
    groups
}

/// Sends log bytes `payload` from `start` to `end` to every client: one data message (when
/// there are bytes) and one control message, each built once, or for clients that take them
/// combined, one data message with the control fields inside, built once per group; a payload
/// of more than [`wsproto::MAX_MESSAGE_BYTES`] goes first in data messages without a control. A client
/// that would be too far behind its receipts (or, without receipts, what it was sent when it
/// connected) is closed instead, except `appending`: the socket whose append is being applied
/// is only marked cut, and closed once it has its ack ([`Receipts::is_cut`]). So is a client
/// whose token has expired ([`close_expired`]; `appending` after its ack).
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    groups: &[Group],
    receipts: &Receipts,
    appending: Option<&WebSocket>,
    json_stream: bool,
    payload: &[u8],
    start: Offset,
    end: Offset,
    closed: bool,
    up_to_date: bool,
) {
    // A frame of more than `MAX_MESSAGE_BYTES` sends all but its last piece first, in data
    // messages of their own, built once for each form (binary ones differ by their header).
    let cuts = wsproto::piece_cuts(payload, json_stream);
    let lead_cuts = &cuts[..cuts.len() - 1];
    let lead_end = lead_cuts.last().copied().unwrap_or(0);
    let mut leads: [Option<Vec<JsValue>>; 2] = [None, None];
    let all = payload;
    let payload = &payload[lead_end..];
    let mut data: Option<JsValue> = None;
    let next_offset = end.to_string();
    let now_secs = http::now_secs();
    for group in groups {
        let lead = leads[usize::from(group.combined)].get_or_insert_with(|| {
            let mut at = 0;
            let mut pieces = Vec::with_capacity(lead_cuts.len());
            for &cut in lead_cuts {
                let piece = &all[at..cut];
                pieces.push(match (json_stream, group.combined) {
                    (true, _) => JsValue::from_str(&ws::data_message(piece, None)),
                    (false, true) => {
                        Uint8Array::from(ws::binary_message(piece, None).as_slice()).into()
                    }
                    (false, false) => Uint8Array::from(piece).into(),
                });
                at = cut;
            }
            pieces
        });
        let control = Control {
            next_offset: next_offset.clone(),
            cursor: Some(group.cursor.clone()),
            up_to_date,
            closed,
        };
        let messages: [Option<JsValue>; 2] = if payload.is_empty() {
            [
                None,
                Some(JsValue::from_str(&ws::control_message(&control))),
            ]
        } else if group.combined {
            let message: JsValue = match json_stream {
                true => JsValue::from_str(&ws::data_message(payload, Some(&control))),
                false => {
                    Uint8Array::from(ws::binary_message(payload, Some(&control)).as_slice()).into()
                }
            };
            [Some(message), None]
        } else {
            let data = data.get_or_insert_with(|| match json_stream {
                true => JsValue::from_str(&ws::data_message(payload, None)),
                false => Uint8Array::from(payload).into(),
            });
            [
                Some(data.clone()),
                Some(JsValue::from_str(&ws::control_message(&control))),
            ]
        };
        for client in &group.sockets {
            // The appending socket is closed after its ack (see `websocket_message`).
            if client.expired(now_secs, appending) {
                continue;
            }
            match receipts.admit(&client.read, start, end) {
                Admit::Send => {}
                Admit::Skip => continue,
                Admit::Cut => {
                    if appending.is_some_and(|a| js_sys::Object::is(a, &client.ws)) {
                        continue;
                    }
                    let reason = wsproto::cut_reason(client.receipts);
                    let _ = client.ws.close_with_code_and_reason(close::RESTART, reason);
                    continue;
                }
            }
            // A socket that is closing refuses the send; its client reconnects and resumes.
            for message in lead.iter().chain(messages.iter().flatten()) {
                let _ = send(&client.ws, message);
            }
        }
    }
}

/// Closes every client socket but `spared`, first sending `message` when there is one; one
/// whose token has expired hears only that ([`close_expired`]).
pub fn close_all(
    groups: &[Group],
    message: Option<&str>,
    reason: &str,
    spared: Option<&WebSocket>,
) {
    let message = message.map(JsValue::from_str);
    let now_secs = http::now_secs();
    for client in groups.iter().flat_map(|g| &g.sockets) {
        let ws = &client.ws;
        if spared.is_some_and(|s| js_sys::Object::is(s, ws)) || client.expired(now_secs, None) {
            continue;
        }
        if let Some(message) = &message {
            let _ = send(ws, message);
        }
        let _ = ws.close_with_code_and_reason(close::NORMAL, reason);
    }
}

/// How far each client socket has read, by its id. workerd cannot say how much of what a
/// WebSocket sent is still queued (workerd#988), so without a bound a client that stops reading
/// (a frozen tab, a network gone without a FIN, or a client that means harm) would make the
/// runtime hold every later append for it. A client that sends receipts moves its slot; one
/// that does not counts as having read only what it was sent when it connected, so it is cut
/// off after the limit and reconnects. In memory only: after the object wakes from
/// hibernation, a socket that sends receipts counts as having read everything sent before,
/// and one that does not counts from where it connected (kept in its attachment). The cached
/// [`Group`]s hold each socket's slot, so a delivery looks nothing up.
pub struct Receipts {
    /// `WS_BACKLOG_BYTES`.
    limit: u64,
    read: RefCell<HashMap<u64, Rc<Cell<Read>>>>,
}

#[derive(Clone, Copy)]
enum Read {
    /// Nothing known yet: the object woke with the socket open.
    Unknown,
    Before(Receipt),
    /// Closed for falling behind; nothing more is sent.
    Cut,
}

impl Receipts {
    pub fn new(limit: u64) -> Receipts {
        Receipts {
            limit,
            read: RefCell::new(HashMap::new()),
        }
    }

    /// The slot of socket `id`, made on first use.
    fn slot(&self, id: u64) -> Rc<Cell<Read>> {
        let mut read = self.read.borrow_mut();
        read.entry(id)
            .or_insert_with(|| Rc::new(Cell::new(Read::Unknown)))
            .clone()
    }

    /// A socket that has read everything before `start`.
    pub fn opened(&self, id: u64, start: Offset) {
        self.slot(id).set(Read::Before(Receipt::at(start)));
    }

    /// Where a socket not known yet (after a wake) counts from, when that is known.
    fn seed(slot: &Cell<Read>, at: Offset) {
        if let Read::Unknown = slot.get() {
            slot.set(Read::Before(Receipt::at(at)));
        }
    }

    /// A receipt: the socket has read everything before `offset` (counted up to what it was
    /// sent; for a socket not known yet, up to the stream's `tail`).
    pub fn received(&self, id: u64, offset: Offset, tail: Offset) {
        let slot = self.slot(id);
        let read = match slot.get() {
            Read::Unknown => Read::Before(Receipt::at(offset.min(tail))),
            Read::Before(mut read) => {
                read.received(offset);
                Read::Before(read)
            }
            Read::Cut => Read::Cut,
        };
        slot.set(read);
    }

    /// Whether socket `id` was cut off for falling behind (and so is, or is about to be, closed).
    pub fn is_cut(&self, id: u64) -> bool {
        let read = self.read.borrow();
        read.get(&id)
            .is_some_and(|slot| matches!(slot.get(), Read::Cut))
    }

    pub fn closed(&self, id: u64) {
        self.read.borrow_mut().remove(&id);
    }

    /// Whether data from `start` to `end` goes to the socket of `slot`: not when it was cut
    /// off, nor when the data would leave it more than the limit behind its receipts, which
    /// cuts it off now. A socket not known yet counts as having read everything before `start`.
    fn admit(&self, slot: &Cell<Read>, start: Offset, end: Offset) -> Admit {
        let read = match slot.get() {
            Read::Cut => return Admit::Skip,
            Read::Unknown => Receipt::at(start),
            Read::Before(read) => read,
        };
        if read.falls_behind(end, self.limit) {
            slot.set(Read::Cut);
            Admit::Cut
        } else {
            let mut read = read;
            read.sent(end);
            slot.set(Read::Before(read));
            Admit::Send
        }
    }
}

/// See [`Receipts::admit`].
#[derive(Debug, PartialEq)]
enum Admit {
    Send,
    Skip,
    Cut,
}

/// The client groups, built once and kept until a client socket comes or goes.
pub type Cached = RefCell<Option<Rc<Vec<Group>>>>;

#[cfg(test)]
mod tests {
    use edgestream::headers::ContentType;
    use edgestream::stream::Expiry;

    use super::*;

    fn meta(base: u64, tail: u64) -> Meta {
        Meta {
            path: "/v1/stream/a".into(),
            instance: "i".into(),
            content_type: ContentType::default_type(),
            expiry: Expiry::Never,
            accessed_ms: 0,
            closed: false,
            closed_by: None,
            base: Offset::new(base).unwrap(),
            tail: Offset::new(tail).unwrap(),
            last_stream_seq: None,
            fork: None,
            forks: 0,
            deleted: false,
            channel: false,
        }
    }

    #[test]
    fn the_object_serves_its_own_rows_within_a_page_of_the_tail() {
        let page = PAGE_BYTES as u64;
        let at = |p: u64| Offset::new(p).unwrap();
        let own = meta(0, page + 10);
        assert!(serves(&own, at(10)));
        assert!(serves(&own, at(page + 10)));
        assert!(!serves(&own, at(9)), "more than a page behind");
        // A fork's inherited range is read from its source: the edge serves it.
        let fork = meta(100, 200);
        assert!(!serves(&fork, at(99)));
        assert!(serves(&fork, at(100)));
    }

    #[test]
    fn a_client_is_cut_off_once_too_far_behind_its_receipts() {
        let at = |p: u64| Offset::new(p).unwrap();
        let receipts = Receipts::new(100);
        let tail = at(1000);
        receipts.opened(1, at(0));
        let one = receipts.slot(1);
        assert_eq!(receipts.admit(&one, at(0), at(60)), Admit::Send);
        assert_eq!(receipts.admit(&one, at(60), at(100)), Admit::Send);
        receipts.received(1, at(60), tail);
        // A receipt never moves back.
        receipts.received(1, at(10), tail);
        assert_eq!(receipts.admit(&one, at(100), at(160)), Admit::Send);
        assert!(!receipts.is_cut(1));
        assert_eq!(receipts.admit(&one, at(160), at(161)), Admit::Cut);
        assert!(receipts.is_cut(1));
        // Cut off: nothing more, whatever it says now.
        receipts.received(1, at(161), tail);
        assert_eq!(receipts.admit(&one, at(161), at(162)), Admit::Skip);
        // A receipt for more than it was sent counts only what it was sent.
        receipts.opened(3, at(0));
        let three = receipts.slot(3);
        assert_eq!(receipts.admit(&three, at(0), at(50)), Admit::Send);
        receipts.received(3, at(900), tail);
        assert_eq!(receipts.admit(&three, at(50), at(150)), Admit::Send);
        assert_eq!(receipts.admit(&three, at(150), at(151)), Admit::Cut);
        // A socket not known yet is believed only up to the tail.
        receipts.received(4, at(5000), tail);
        let four = receipts.slot(4);
        assert_eq!(receipts.admit(&four, at(1000), at(1100)), Admit::Send);
        assert_eq!(receipts.admit(&four, at(1100), at(1101)), Admit::Cut);
        // A client without receipts counts from where it connected, even after a wake.
        let five = receipts.slot(5);
        Receipts::seed(&five, at(400));
        assert_eq!(receipts.admit(&five, at(1000), at(1001)), Admit::Cut);
        // After a wake from hibernation a socket counts as having read what came before.
        let two = receipts.slot(2);
        assert_eq!(receipts.admit(&two, at(500), at(600)), Admit::Send);
        assert_eq!(receipts.admit(&two, at(600), at(601)), Admit::Cut);
        receipts.closed(2);
        let two = receipts.slot(2);
        assert_eq!(receipts.admit(&two, at(700), at(701)), Admit::Send);
    }
}
