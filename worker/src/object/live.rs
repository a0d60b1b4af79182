//! Live readers, held as hibernating WebSockets so open readers never keep the object awake.
//!
//! The edge opens one internal socket per SSE or long-poll reader (workerd does not let one
//! socket serve several incoming requests). Appends are queued and flushed as
//! [`frame`](crate::frame)s, each encoded once with the same bytes going to every socket; a burst
//! of concurrent appends is flushed as one frame. The edge turns frames into SSE or long-poll
//! messages. Client WebSockets held here directly get the same data as client messages
//! ([`clients`](super::clients)).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use edgestream::headers::LiveMode;
use edgestream::{sse, Offset, ProtocolError};
use wasm_bindgen::{JsCast, JsValue};
use worker::web_sys::WebSocket;
use worker::worker_sys::DurableObjectState;
use worker::{Response, Result, WebSocketPair};

use super::clients::{self, Group};
use super::store::{Meta, Store};
use crate::frame;
use crate::http;
use crate::reply;
use crate::wsproto;

/// Largest frame payload: under the platform's WebSocket message limit, with room to spare.
pub const FRAME_BYTES: usize = 512 * 1024;

/// The object's hibernatable sockets. `worker::State`'s socket methods unwrap the runtime's
/// errors (for instance its per-object socket limit), and a panic would kill every reader in
/// the isolate, so this talks to the runtime directly and returns errors instead.
pub struct Hub {
    state: DurableObjectState,
    /// Appended log bytes not yet sent to the readers: one contiguous range.
    pending: RefCell<Option<Pending>>,
    clients: clients::Cached,
    /// The client socket whose append is being applied: it gets its ack before any close.
    appending: RefCell<Option<WebSocket>>,
    receipts: clients::Receipts,
    /// Live readers: at least as many as are open (see [`Hub::is_full`]).
    readers: ReaderCount,
}

/// How many live readers the object holds, for `MAX_LIVE_READERS`. Counting the runtime's list
/// of sockets costs about 2 ms at 5,000 of them (one JS wrapper each), more than an append, so it
/// is done only when this bound says the limit may be reached: it is the count made then, plus
/// one per socket accepted since, and a socket that leaves takes nothing off. So it is never
/// under the number open, and one count lasts until as many readers came as there were places.
#[derive(Default)]
struct ReaderCount {
    /// `None` until counted: after the object starts (or wakes from hibernation with its
    /// sockets), the first reader to come counts them.
    at_most: Cell<Option<u64>>,
    /// When a count last found the stream full: new readers are refused without counting again
    /// for [`RECOUNT_MS`], so a crowd of refused readers retrying costs one count a second.
    full_at: Cell<Option<i64>>,
}

/// How long a count that found the stream full stands: the `Retry-After` of the refusal.
const RECOUNT_MS: i64 = 1000;

/// Log bytes `[start, end)` waiting to be sent as one frame (or a few, when large).
struct Pending {
    start: Offset,
    end: Offset,
    closed: bool,
    json_stream: bool,
    data: Vec<u8>,
}

impl Hub {
    /// `ws_backlog_bytes`: how far a client that sends receipts may fall behind them.
    pub fn new(state: DurableObjectState, ws_backlog_bytes: u64) -> Hub {
        Hub {
            state,
            pending: RefCell::new(None),
            clients: RefCell::new(None),
            appending: RefCell::new(None),
            receipts: clients::Receipts::new(ws_backlog_bytes),
            readers: ReaderCount::default(),
        }
    }

    /// How far the client sockets that send receipts have read.
    pub fn receipts(&self) -> &clients::Receipts {
        &self.receipts
    }

    /// Marks `ws` as the socket whose append is being applied, until the guard is dropped.
    pub fn appending(&self, ws: &WebSocket) -> Appending<'_> {
        self.appending.replace(Some(ws.clone()));
        Appending(self)
    }

    pub fn accept(&self, ws: &WebSocket, tags: &[&str]) -> std::result::Result<(), JsValue> {
        let tags = tags.iter().map(|t| JsValue::from_str(t)).collect();
        self.state.accept_websocket_with_tags(ws, tags)?;
        let count = &self.readers.at_most;
        count.set(count.get().map(|n| n + 1));
        Ok(())
    }

    /// The edge's internal sockets.
    fn sockets(&self) -> Vec<WebSocket> {
        self.sockets_tagged(EDGE)
    }

    /// The client sockets held here, grouped; read from their attachments once per change.
    fn clients(&self) -> Rc<Vec<Group>> {
        if let Some(groups) = self.clients.borrow().as_ref() {
            return groups.clone();
        }
        let groups = Rc::new(clients::groups(
            self.sockets_tagged(clients::TAG),
            &self.receipts,
        ));
        self.clients.replace(Some(groups.clone()));
        groups
    }

    /// A client socket was accepted or closed: the groups are read again when next needed.
    pub fn clients_changed(&self) {
        self.clients.replace(None);
    }

    /// Closes the client sockets whose token has expired; answers when the next one expires
    /// (Unix seconds), if any holds a token that does.
    pub fn close_expired_clients(&self, now_secs: i64) -> Option<i64> {
        clients::close_expired_all(&self.clients(), now_secs)
    }

    /// When the first token among the open client sockets expires (Unix seconds; past, for
    /// one that has), closing none.
    pub fn first_client_expiry(&self) -> Option<i64> {
        clients::first_expiry(&self.clients())
    }

    /// Whether any live reader is open: an SSE or long-poll reader at the edge, or a client
    /// socket held here. Sockets this object has closed (a long-poll answered, a client cut
    /// off) are listed until their close completes, and do not count.
    pub fn has_readers(&self) -> bool {
        let open = |ws: &WebSocket| ws.ready_state() == WebSocket::OPEN;
        self.sockets().iter().any(open) || self.sockets_tagged(clients::TAG).iter().any(open)
    }

    fn sockets_tagged(&self, tag: &str) -> Vec<WebSocket> {
        self.state.get_websockets_with_tag(tag).unwrap_or_default()
    }

    /// Whether `limit` live readers are open on this stream already, so a new one must be
    /// refused (`MAX_LIVE_READERS`). Every socket this object accepts is a live reader's (the
    /// edge's internal ones and clients' own), and the runtime lists them across hibernation.
    /// Mostly one comparison: they are counted only when [`ReaderCount`]'s bound reaches the
    /// limit, and at most once a second while they fill it.
    pub fn is_full(&self, limit: u64, now_ms: i64) -> bool {
        let count = &self.readers;
        if count.at_most.get().is_some_and(|n| n < limit) {
            return false;
        }
        if count
            .full_at
            .get()
            .is_some_and(|at| (0..RECOUNT_MS).contains(&(now_ms - at)))
        {
            return true;
        }
        let Some(open) = self.count_open(limit) else {
            return false;
        };
        count.at_most.set(Some(open));
        let full = open >= limit;
        count.full_at.set(full.then_some(now_ms));
        full
    }

    /// How many sockets are open: sockets this object has closed (long-polls answered, clients
    /// cut off) stay listed until their close completes, and do not count. The list's length
    /// alone, when under `limit`, as it then cannot matter which of them are open.
    fn count_open(&self, limit: u64) -> Option<u64> {
        let all = self.state.unchecked_ref::<AllSockets>().all().ok()?;
        let listed = u64::from(all.length());
        if listed < limit {
            return Some(listed);
        }
        let open = all
            .iter()
            .filter(|ws| ws.unchecked_ref::<WebSocket>().ready_state() == WebSocket::OPEN)
            .count();
        Some(open as u64)
    }
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// The object's state seen through `getWebSockets()` as a JS array: `worker-sys` copies
    /// it into a `Vec`, one handle per socket, where [`Hub::is_full`] mostly needs its length.
    type AllSockets;
    #[wasm_bindgen(method, catch, js_name = getWebSockets)]
    fn all(this: &AllSockets) -> std::result::Result<js_sys::Array, JsValue>;
}

/// See [`Hub::appending`].
pub struct Appending<'a>(&'a Hub);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.appending.replace(None);
    }
}

/// Every internal socket of the edge's, which is also tagged with its reader's mode.
const EDGE: &str = "edge";

/// Accepts a live reader at `start`, which must be within one frame of the tail. SSE and
/// WebSocket readers get the backlog (or an empty frame, so they learn they are up to date)
/// at once; long-polls wait for the next append.
///
/// An SSE reader at the tail (`offset=now`, or a reconnect that missed nothing: most of them)
/// gets no empty frame: its upgrade says so ([`reply::X_AT_TAIL`]), and the edge writes the
/// control event that frame would have made, from the upgrade's headers. Nothing then crosses
/// its internal socket until the next append. Measured with `bench/reader-memory.mjs`, that one
/// message cost workerd about 8 KB of RSS per idle reader, which stayed after later appends;
/// and the object reads and encodes nothing for such a reader.
pub fn accept(
    hub: &Hub,
    store: &Store,
    meta: &Meta,
    start: Offset,
    mode: LiveMode,
) -> Result<Response> {
    // Queued appends go out first, so the new reader's backlog (read up to the tail) and the
    // frames it receives later never overlap.
    flush(hub);
    let at_tail = mode == LiveMode::Sse && start == meta.tail;
    let backlog = if mode == LiveMode::LongPoll || at_tail {
        None
    } else {
        match store.read(start, meta.tail, usize::MAX, meta.is_json())? {
            Ok(page) => Some(page),
            Err(e) => return http::error(&e.into_protocol()),
        }
    };
    let pair = WebSocketPair::new()?;
    if let Err(e) = hub.accept(pair.server.as_ref(), &[mode.as_str(), EDGE]) {
        worker::console_warn!("stream object: cannot accept a reader: {e:?}");
        return too_many_readers();
    }
    if let Some(page) = backlog {
        let bytes = frame::encode_data(
            start,
            page.end,
            meta.closed,
            page.end >= meta.tail,
            &page.data,
        );
        pair.server.send_with_bytes(bytes)?;
    }
    let resp = Response::from_websocket(pair.client)?;
    if at_tail {
        resp.headers().set(reply::X_AT_TAIL, "1")?;
    }
    Ok(resp)
}

/// The answer to a live reader past `MAX_LIVE_READERS` ([`Hub::is_full`]): 503 with
/// `Retry-After`, as when the runtime itself refuses a socket, before anything is held.
pub fn too_many_readers() -> Result<Response> {
    http::unavailable(TOO_MANY_READERS)
}

const TOO_MANY_READERS: &str = "too many live readers on this stream; retry";

/// Queues an append (`data` = log bytes `[start, end)`) for the live readers; [`flush`] sends
/// it. Appends queued before one flush are merged, so a burst costs one frame per reader.
/// Whether anyone is listening is asked once, when the frame is sent.
pub fn queue(
    hub: &Hub,
    start: Offset,
    end: Offset,
    closed: bool,
    data: Vec<u8>,
    json_stream: bool,
) {
    let mut pending = hub.pending.borrow_mut();
    if let Some(p) = pending.as_mut() {
        if p.end == start && !p.closed {
            p.data.extend_from_slice(&data);
            p.end = end;
            p.closed = closed;
            return;
        }
    }
    // Not contiguous (cannot happen while appends are serialised, but never send a gap).
    let previous = pending.replace(Pending {
        start,
        end,
        closed,
        json_stream,
        data,
    });
    drop(pending);
    if let Some(p) = previous {
        send(hub, p);
    }
}

/// Sends every queued append to every live reader.
pub fn flush(hub: &Hub) {
    let pending = hub.pending.borrow_mut().take();
    if let Some(p) = pending {
        send(hub, p);
    }
}

/// Sends log bytes in frames of at most [`FRAME_BYTES`] cut on JSON message boundaries, each
/// encoded once for all readers.
fn send(hub: &Hub, p: Pending) {
    let sockets = hub.sockets();
    let clients = hub.clients();
    if sockets.is_empty() && clients.is_empty() {
        return;
    }
    let Pending {
        start,
        end,
        closed,
        json_stream,
        data,
    } = p;
    let cuts = frame_cuts(&data, json_stream);
    let mut at = 0usize;
    for (i, &cut) in cuts.iter().enumerate() {
        let last = i + 1 == cuts.len();
        let from = Offset::new(start.position() + at as u64).unwrap_or(start);
        let to = if last {
            end
        } else {
            Offset::new(start.position() + cut as u64).unwrap_or(end)
        };
        let payload = &data[at..cut];
        if !sockets.is_empty() {
            let bytes = frame::encode_data(from, to, closed && last, last, payload);
            send_all(&sockets, &bytes);
        }
        clients::deliver(
            &clients,
            &hub.receipts,
            hub.appending.borrow().as_ref(),
            json_stream,
            payload,
            from,
            to,
            closed && last,
            last,
        );
        at = cut;
    }
    // Long-polls are answered by their first frame; a closed stream has nothing more to say.
    if closed {
        close_all(&sockets, "stream closed");
        if !clients.is_empty() {
            let appending = hub.appending.borrow();
            clients::close_all(&clients, None, "stream closed", appending.as_ref());
            hub.clients_changed();
        }
    } else {
        close_all(&hub.sockets_tagged(LiveMode::LongPoll.as_str()), "done");
    }
}

fn close_all(sockets: &[WebSocket], reason: &str) {
    for ws in sockets {
        let _ = ws.close_with_code_and_reason(1000, reason);
    }
}

/// Tells every reader the stream is gone with `error` (410 when it is kept for its forks, 404
/// when removed), and closes their sockets.
pub fn gone(hub: &Hub, error: &ProtocolError) {
    // What was acknowledged before the delete still reaches the readers, then the news.
    flush(hub);
    let sockets = hub.sockets();
    send_all(&sockets, &frame::encode_gone(error));
    close_all(&sockets, "stream gone");
    let clients = hub.clients();
    if !clients.is_empty() {
        let message = error.message();
        clients::close_all(&clients, Some(&wsproto::gone(error)), &message, None);
        hub.clients_changed();
    }
}

fn send_all(sockets: &[WebSocket], bytes: &[u8]) {
    // One JS buffer shared by every send.
    let buffer = js_sys::Uint8Array::from(bytes);
    for ws in sockets {
        // A socket that is closing refuses the send; its reader reconnects and resumes.
        let _ = ws.send_with_array_buffer_view(&buffer);
    }
}

/// End positions of each frame's payload within `data`: at most `FRAME_BYTES` each, JSON cut
/// only after whole messages (a single larger message gets a frame of its own), anything else
/// where a text's frames still read whole ([`sse::text_cut_back`]).
fn frame_cuts(data: &[u8], json_stream: bool) -> Vec<usize> {
    if data.len() <= FRAME_BYTES {
        return vec![data.len()];
    }
    if json_stream {
        return wsproto::message_cuts(data, FRAME_BYTES);
    }
    let mut cuts = Vec::with_capacity(data.len() / FRAME_BYTES + 1);
    let mut at = 0;
    while data.len() - at > FRAME_BYTES {
        let cut = at + FRAME_BYTES;
        at = cut - sse::text_cut_back(&data[cut - 4..cut]);
        cuts.push(at);
    }
    cuts.push(data.len());
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_appends_are_one_frame() {
        assert_eq!(frame_cuts(b"abc", false), vec![3]);
        assert_eq!(frame_cuts(b"", false), vec![0]);
    }

    #[test]
    fn byte_appends_split_evenly() {
        let data = vec![0u8; FRAME_BYTES * 2 + 1];
        assert_eq!(
            frame_cuts(&data, false),
            vec![FRAME_BYTES, FRAME_BYTES * 2, FRAME_BYTES * 2 + 1]
        );
        let exact = vec![0u8; FRAME_BYTES * 2];
        assert_eq!(
            frame_cuts(&exact, false),
            vec![FRAME_BYTES, FRAME_BYTES * 2]
        );
    }

    #[test]
    fn text_frames_end_on_whole_characters() {
        let text = "€".repeat(FRAME_BYTES); // 3 bytes each: FRAME_BYTES is not a multiple of 3
        let cuts = frame_cuts(text.as_bytes(), false);
        let mut prev = 0;
        for &c in &cuts {
            assert!(c - prev <= FRAME_BYTES && c > prev);
            assert!(text.is_char_boundary(c), "cut inside a character at {c}");
            prev = c;
        }
        assert_eq!(prev, text.len());
        let crlf = [vec![b'a'; FRAME_BYTES - 1], b"\r\nb".to_vec()].concat();
        assert_eq!(frame_cuts(&crlf, false), vec![FRAME_BYTES - 1, crlf.len()]);
    }

    #[test]
    fn json_frames_hold_whole_messages() {
        let data = "1,".repeat(FRAME_BYTES);
        let cuts = frame_cuts(data.as_bytes(), true);
        assert_eq!(*cuts.last().unwrap(), data.len());
        let mut prev = 0;
        for c in cuts {
            assert!(c - prev <= FRAME_BYTES);
            assert_eq!(c % 2, 0, "cut inside a message");
            prev = c;
        }
    }
}
