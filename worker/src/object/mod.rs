//! `StreamObject`: the Durable Object that owns one stream.
//!
//! It holds the stream's SQLite log, metadata and producer state, answers the protocol's
//! operations, and feeds live readers through hibernating WebSockets so that open readers
//! never keep it awake. Appends read the whole body first and then run to completion without
//! an `await`, so validation, the data rows, the tail and the producer state commit together.
//!
//! - `store`: the SQLite tables and every row read or written (a row is written in
//!   `Store::append`).
//! - `append`: a POST or `live=ws` append frame, decided by the core and written in one turn;
//!   `gap_wait`: a producer's append ahead of its `Producer-Seq` waits for those before it.
//! - `live`: internal sockets to the edge's SSE and long-poll readers, woken once per append
//!   burst; `clients`: the `live=ws` client sockets the object holds; `inbox`: their append
//!   frames waiting for their turn.
//! - `fork`: calls between a fork and its source; `channel`: feeding the channels above.
//! - `subscribers`: the registry and the subscriptions told of each new tail.
//! - `expiry`: TTL and `Stream-Expires-At`: a sliding TTL's refresh, the expiry checked on
//!   every request and by the alarm, and the removal of an expired stream.
//! - `owed`: work owed to other objects after a commit; `alarm`: the timed work (expiry,
//!   retries of channel deliveries and owed work, client sockets whose token expired).

mod alarm;
mod append;
mod channel;
mod clients;
mod expiry;
mod fork;
mod gap_wait;
mod inbox;
mod live;
mod owed;
pub mod store;
mod subscribers;

use std::cell::{Cell, RefCell};

use edgestream::headers::{self as h, ContentType, LiveMode};
use edgestream::json::{self, Purpose};
use edgestream::stream::{
    self, CacheScope, CreateOutcome, CreateRequest, ExistingConfig, ExistingFork, Expiry,
};
use edgestream::time::format_rfc3339;
use edgestream::{Offset, ProtocolError, ReadFrom};
use worker::{
    durable_object, DurableObject, Env, Headers, Method, Request, Response, Result, State,
    WebSocket, WebSocketIncomingMessage,
};

use crate::config::Config;
use crate::fault::Call;
use crate::http::{self, header, now_ms};
use crate::intake::{self, Held};
use crate::path::StreamName;
use crate::reply::{self, PageData, ReadReply, X_PAGE_END};
use crate::security;
use crate::turnstile::Turnstile;
use crate::wsproto::{self, BadFrame, ClientHello, ClientMessage, Incoming};
use expiry::set_expiry;
use store::{Meta, Page, ReadError, Store};

/// A page read whole returns at most this much (rounded up to a whole JSON message): a fork's
/// inherited range, and the pages live readers are served at the edge.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A client's catch-up `GET` of a stream's own bytes returns at most this much (a JSON one, the
/// messages in the rows that end within it, or one larger message whole). Its body is streamed
/// from the rows (see [`store::RowRange`]), so the object holds about two chunks of 1 MiB of it
/// at a time however large it is, and fewer, larger responses save a round trip and a request's
/// work per page.
pub const STREAMED_PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// How many expired producers' states a new producer's append deletes: more than one, so the
/// expired rows shrink however fast new producers come, and few enough to cost that append
/// little.
const EXPIRE_PRODUCERS_PER_APPEND: u32 = 16;
/// Work begun in a turn that must reach another object (delivery to channels, what is owed to
/// the registry and subscriptions) is first tried by the request; the alarm set in that turn
/// tries it this soon after, should the isolate die first.
const SAFETY_MS: i64 = 2_000;
/// How long to wait before retrying a call to another object (a channel's delivery, what is
/// owed to the registry and subscriptions) after `failures` failures: 1 s for none, doubling,
/// up to a minute.
pub(crate) fn backoff_ms(failures: u32) -> i64 {
    (1_000i64 << failures.min(6)).min(60_000)
}
/// A create whose registration failed: the stream is stored, and a retried PUT (or the alarm)
/// links it to what covers it.
const UNREGISTERED: &str =
    "stream stored, but not yet linked to the subscriptions and channels above it; retry the PUT";

#[durable_object]
pub struct StreamObject {
    state: State,
    hub: live::Hub,
    env: Env,
    config: Config,
    /// The storage, once opened: at construction for an object that has stored something
    /// before, else when a request first needs it (see [`StreamObject::store`]).
    store: std::cell::OnceCell<Store>,
    /// The storage of an object that has never stored anything, not yet opened: opening it
    /// creates the tables, which a request for a stream that does not exist must not do, or
    /// any reader could leave objects behind by the million.
    /// (The object's `DurableObjectState`, as the object it derefs to.)
    unopened: RefCell<Option<(worker::SqlStorage, js_sys::Object)>>,
    /// The storage was given back (`deleteAll`, see [`StreamObject::give_back_storage`]): the
    /// object holds nothing, as if it had never stored anything, until a request stores
    /// something again.
    emptied: Cell<bool>,
    /// The metadata row, once loaded: `Some(None)` means no stream here.
    meta: RefCell<Option<Option<Meta>>>,
    /// POSTs being handled right now; more than one means a burst worth batching.
    appends_in_flight: Cell<u32>,
    /// No request has reached this instance yet: the next one started (or woke) the object.
    cold: Cell<bool>,
    /// Client sockets' append frames, applied one at a time in arrival order.
    socket_appends: Turnstile,
    /// What each client socket has waiting in that line.
    inbox: inbox::Inbox,
    /// Delivery to the channels above this stream.
    channels: channel::Forwarder,
    /// The object's one alarm, for all its timed work.
    alarm: alarm::Alarm,
    /// Work owed to other objects runs one round at a time.
    owed_turn: Turnstile,
    /// The tail this instance last told every linked subscription (see `subscribers.rs`).
    told: subscribers::Told,
    /// How many requests of subscriptions to link the stream this instance has answered: a
    /// notification's `linked: false` drops no entry if one came while it was out.
    sub_links: Cell<u64>,
    /// Forks being created here, whose references on their sources the owed work leaves alone.
    forks_creating: fork::Creating,
    /// Producer appends that came before their predecessors, waiting for them.
    producer_turns: gap_wait::ProducerTurns,
    /// Injected faults, for tests (`FAULT_MARKER`).
    faults: crate::fault::Faults,
    /// The SQLite rows each request reads and writes, for tests (`FAULT_MARKER`).
    rows: crate::rows::RowCounter,
}

/// `Server-Timing` metric on the response to the request that started the stream's object.
/// Open readers are meant to let the object hibernate; this shows whether one had to wake it.
const COLD_START: &str = "cold-start;desc=\"stream object started\"";
const SERVER_TIMING: &str = "server-timing";

/// The stream as a request finds it. Lives briefly on the stack, so `Meta` is not boxed.
#[allow(clippy::large_enum_variant)]
enum Lookup {
    Missing,
    /// Soft-deleted: forks still read through it.
    Deleted,
    Live(Meta),
}

impl DurableObject for StreamObject {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        // The runtime object is shared, not copied: both handles reach the same state.
        let config = Config::from_env(&env);
        let hub = live::Hub::new(
            wasm_bindgen::JsCast::unchecked_into(raw.clone()),
            config.ws_backlog_bytes,
        );
        let alarm = alarm::Alarm::new(raw.clone().into());
        // A client's keepalive on a socket this object holds is answered by the runtime, so it
        // never wakes the object.
        let keepalive = worker::worker_sys::WebSocketRequestResponsePair::new(
            edgestream::ws::PING,
            edgestream::ws::PONG,
        )
        .and_then(|pair| raw.set_websocket_auto_response(&pair));
        if let Err(e) = keepalive {
            worker::console_warn!("stream object: no WebSocket keepalive answer: {e:?}");
        }
        let own = raw.clone();
        let state = State::from(raw);
        let store = std::cell::OnceCell::new();
        let mut unopened = None;
        let sql = state.storage().sql();
        let rows = crate::rows::RowCounter::install(&sql, config.fault_marker.is_some());
        if store::has_tables(&sql) {
            let transactional =
                crate::transaction::Transactional::of(wasm_bindgen::JsCast::unchecked_ref(&own));
            match transactional.and_then(|storage| Store::open(sql, storage)) {
                Ok(opened) => {
                    let _ = store.set(opened);
                }
                Err(e) => worker::console_error!("stream object: cannot open storage: {e}"),
            }
        } else {
            unopened = Some((sql, own));
        }
        let faults = crate::fault::Faults::new(config.fault_marker.clone());
        StreamObject {
            state,
            hub,
            env,
            config,
            store,
            unopened: RefCell::new(unopened),
            emptied: Cell::new(false),
            meta: RefCell::new(None),
            appends_in_flight: Cell::new(0),
            cold: Cell::new(true),
            socket_appends: Turnstile::default(),
            inbox: inbox::Inbox::default(),
            channels: channel::Forwarder::default(),
            alarm,
            owed_turn: Turnstile::default(),
            told: subscribers::Told::default(),
            sub_links: Cell::new(0),
            forks_creating: fork::Creating::default(),
            producer_turns: gap_wait::ProducerTurns::default(),
            faults,
            rows,
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let cold = self.cold.replace(false);
        // Rows counted before this request: the object's start, when it is the first.
        let start_rows = self.rows.take().map(|(since, _)| since);
        let cors = security::Cors::of(req.headers(), &self.config);
        let show_alarm = self.faults.enabled() && req.method() == Method::Head;
        let is_put = req.method() == Method::Put;
        let inner = Clone::clone(req.inner()); // the handle, not `Request.clone()`
        let result = self.route(req).await;
        self.give_back_if_gone();
        // A batching append flushes its own frame after one turn; should that turn never come
        // (a cancelled request), the next request of any kind to finish sends what is queued.
        live::flush(&self.hub);
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                // Storage or runtime failure: nothing was acknowledged, so the client may retry.
                worker::console_error!("stream object: {}: {e}", http::described(&inner));
                self.forget_cached();
                http::unavailable("temporary storage failure; retry")?
            }
        };
        let resp = if cold { mark_cold(resp)? } else { resp };
        let resp = if show_alarm {
            let at = crate::fault::alarm_shown(self.state.storage().get_alarm().await?);
            let batch = self.faults.notify_batch().to_string();
            let pages = self.faults.edge_pages().to_string();
            let runs = self.faults.alarm_runs().to_string();
            let positions = self.channels.kept().to_string();
            http::edit_headers(resp, |headers| {
                headers.set(crate::fault::ALARM_HEADER, &at)?;
                headers.set(crate::fault::EDGE_PAGES_HEADER, &pages)?;
                headers.set(crate::fault::NOTIFY_BATCH_HEADER, &batch)?;
                headers.set(crate::fault::ALARM_RUNS_HEADER, &runs)?;
                headers.set(crate::fault::CHANNEL_POSITIONS_HEADER, &positions)
            })?
        } else {
            resp
        };
        let resp = match self.rows.take() {
            Some((rows, total)) => http::edit_headers(resp, |headers| {
                headers.set(crate::rows::ROWS_HEADER, &rows.header())?;
                headers.set(crate::rows::TOTAL_ROWS_HEADER, &total.header())?;
                match start_rows {
                    Some(start) if cold => {
                        headers.set(crate::rows::START_ROWS_HEADER, &start.header())
                    }
                    _ => Ok(()),
                }
            })?,
            None => resp,
        };
        let resp = match self.faults.take_registry_rows() {
            Some((read, written)) if is_put => http::edit_headers(resp, |headers| {
                headers.set(crate::fault::REGISTRY_ROWS_HEADER, &read.to_string())?;
                headers.set(crate::fault::REGISTRY_WRITTEN_HEADER, &written.to_string())
            })?,
            _ => resp,
        };
        // Decorated here, where the headers are still mutable, rather than copied at the edge.
        cors.decorate(resp)
    }

    async fn alarm(&self) -> Result<Response> {
        // It fired: a request meanwhile that needs it sets it anew, and so does the early
        // return of a removal (a stream created there next owes its registration to it).
        self.alarm.forget();
        self.faults.alarm_ran();
        // An object holding nothing has no timed work (it may have been emptied after this
        // alarm was due): asking would make its tables again.
        if self.never_stored() {
            self.expire_sockets().await;
            return Response::ok("");
        }
        let now = now_ms();
        if let Some(meta) = self.meta()? {
            // The last fork of a deleted source went: see `fork::on_release`.
            if meta.deleted && meta.forks == 0 {
                self.remove(meta, 0).await?;
                return Response::ok("");
            }
            self.expire_if_due(meta, now).await?;
        }
        channel::on_alarm(self).await;
        owed::on_alarm(self).await;
        self.give_back_if_gone();
        self.expire_sockets().await;
        Response::ok("")
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        // Had this message woken the object, the next HTTP request did not start it.
        self.cold.set(false);
        // A socket this object has closed takes nothing more (see below): the frames a client
        // sent too fast end here, at little cost.
        if ws.as_ref().ready_state() != worker::web_sys::WebSocket::OPEN {
            return Ok(());
        }
        // The edge's readers only listen; anything they send is ignored.
        let Some(state) = clients::ClientState::of(ws.as_ref()) else {
            return Ok(());
        };
        let size = match &message {
            WebSocketIncomingMessage::String(text) => text.len(),
            WebSocketIncomingMessage::Binary(bytes) => bytes.len(),
        };
        // The place in line is taken before any await, so frames keep the order they arrived in.
        let budget = self.config.body_budget_bytes;
        let (_place, message) = match self.inbox.admit(state.id, size as u64, budget) {
            inbox::Admission::Queued(place) => (place, Some(message)),
            // It waits for its turn without its bytes, and then closes the socket.
            inbox::Admission::Overflow(place) => (place, None),
            inbox::Admission::Dropped => return Ok(()),
        };
        let _turn = self.socket_appends.enter().await;
        // A socket this object has closed (a bad frame, a cut, the stream's end) takes nothing
        // more that was in flight: its client would never hear back, and a bad frame appends
        // nothing, nor does anything after it. workerd keeps such a socket closing across
        // hibernation, so its ready state says so even after a wake.
        if ws.as_ref().ready_state() != worker::web_sys::WebSocket::OPEN {
            return Ok(());
        }
        // A socket whose token has expired is closed at its next frame, whatever it is (one
        // that sends nothing is closed at the next append it would be sent).
        if state.hello.read_expired(http::now_secs()) {
            clients::close_expired(ws.as_ref());
            return Ok(());
        }
        // Every frame before this one has been applied and answered: a refusal starts here.
        let parsed = match &message {
            None => Err(BadFrame::too_many_waiting()),
            Some(WebSocketIncomingMessage::String(text)) => {
                wsproto::parse_client(Incoming::Text(text), state.json)
            }
            Some(WebSocketIncomingMessage::Binary(bytes)) => {
                wsproto::parse_client(Incoming::Binary(bytes), state.json)
            }
        };
        let rate = self.config.ws_append_rate;
        let parsed = parsed.and_then(|message| {
            if let ClientMessage::Append(frame, body) = &message {
                self.inbox
                    .take(state.id, rate, body.len(), now_ms())
                    .map_err(|bad| bad.of_append(frame.id))?;
            }
            Ok(message)
        });
        let reply = match parsed {
            Ok(ClientMessage::Received(offset)) => {
                // Only a socket under edgestream.v3 is held to its receipts.
                if state.hello.receipts {
                    // Up to the tail: it cannot have read more, whatever it says.
                    let tail = self.meta().ok().flatten().map_or(offset, |m| m.tail);
                    self.hub.receipts().received(state.id, offset, tail);
                }
                return Ok(());
            }
            // A ping not written exactly as the runtime answers it itself.
            Ok(ClientMessage::Ping) if self.inbox.answers_ping(state.id, now_ms()) => {
                edgestream::ws::PONG.to_string()
            }
            Ok(ClientMessage::Ping) => return Ok(()),
            Ok(ClientMessage::Append(frame, body)) => {
                // Should this append close the stream, or cut this socket off, the socket is
                // closed after its ack.
                let _appending = self.hub.appending(ws.as_ref());
                self.socket_append(&frame, body, &state.hello).await
            }
            Err(bad) => {
                let _ = ws.send_with_str(bad.reply());
                let _ = ws.close(Some(bad.code), Some(bad.reason));
                return Ok(());
            }
        };
        let _ = ws.send_with_str(reply);
        if state.hello.read_expired(http::now_secs()) {
            // Its token expired while the append was applied: delivery skipped it (see
            // `clients::deliver`), and it gets nothing more.
            clients::close_expired(ws.as_ref());
        } else if self.hub.receipts().is_cut(state.id) {
            // Its own append (or one applied with it) took it past the limit: it reconnects
            // from its last control, which the cut data never reached.
            let reason = wsproto::cut_reason(state.hello.receipts);
            let _ = ws.close(Some(wsproto::close::RESTART), Some(reason));
        } else if matches!(self.meta(), Ok(Some(meta)) if meta.closed) {
            let _ = ws.close(Some(wsproto::close::NORMAL), Some("stream closed"));
            self.hub.clients_changed();
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // Answer the close frame (workerd leaves that to the application).
        let _ = ws.close(Some(1000), Some("closed"));
        // The edge's sockets come and go all the time; only a client's changes the groups.
        if let Some(state) = clients::ClientState::of(ws.as_ref()) {
            self.hub.receipts().closed(state.id);
            self.inbox.forget(state.id);
            self.hub.clients_changed();
        }
        self.reader_left();
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        if let Some(state) = clients::ClientState::of(ws.as_ref()) {
            self.hub.receipts().closed(state.id);
            self.inbox.forget(state.id);
        }
        self.reader_left();
        Ok(())
    }
}

impl StreamObject {
    async fn route(&self, req: Request) -> Result<Response> {
        // The path as the request brought it (workers-rs cuts it from the serialized URL when
        // it wraps the request): the URL is parsed only for what reads its query. An append
        // then reads the URL from the runtime once, and never parses it.
        let path = req.path();
        if let Some(op) = path.strip_prefix("/internal/") {
            let url = req.url()?;
            return self.internal(op, req, &url).await;
        }
        let name = match StreamName::from_url_path(&path) {
            Ok(name) => name,
            Err(e) => return http::text(e.status(), e.message()),
        };
        let method = req.method();
        let site = crate::fault::Site::Object(method == Method::Head);
        if crate::fault::trap_if_asked(self.config.fault_marker.as_deref(), &path, site) {
            crate::fault::trap_after_await().await;
        }
        match method {
            Method::Put => self.create(req, &name).await,
            Method::Post => self.in_flight(self.append(req)).await,
            Method::Get if is_upgrade(&req) => self.subscribe(&req, &req.url()?).await,
            Method::Get => self.read(&req, &req.url()?).await,
            Method::Head => self.head(&req).await,
            Method::Delete => self.delete().await,
            _ => http::error(&ProtocolError::MethodNotAllowed),
        }
    }

    fn store(&self) -> Result<&Store> {
        if let Some(store) = self.store.get() {
            if self.emptied.get() {
                // Its tables went with the rest: made again, as for a first store.
                store.reopen()?;
                self.emptied.set(false);
            }
            return Ok(store);
        }
        let unopened = self.unopened.borrow().clone();
        let Some((sql, raw)) = unopened else {
            return Err(worker::Error::RustError("storage unavailable".into()));
        };
        // A failure leaves it unopened: the next request tries again.
        let storage =
            crate::transaction::Transactional::of(wasm_bindgen::JsCast::unchecked_ref(&raw))?;
        let store = Store::open(sql, storage)?;
        self.unopened.replace(None);
        Ok(self.store.get_or_init(|| store))
    }

    /// Whether this object has never stored anything (its tables are not even made), or gave
    /// all it stored back: no stream is here, and nothing is owed.
    fn never_stored(&self) -> bool {
        self.emptied.get() || (self.store.get().is_none() && self.unopened.borrow().is_some())
    }

    /// At the end of a request or an alarm: for a stream known to be gone, gives the storage
    /// back if nothing is owed. Work that ran on after the removal (a delivery or an append's
    /// notification that was under way) may have made the tables again, empty.
    fn give_back_if_gone(&self) {
        if !matches!(*self.meta.borrow(), Some(None)) {
            return;
        }
        if let Err(e) = self.give_back_storage() {
            worker::console_warn!("stream: cannot give the storage back: {e}");
        }
    }

    /// Gives the object's storage back once the stream is removed and nothing is owed for it:
    /// no stream row (a source its forks still read is kept, deleted, until the last goes), no
    /// pending work for the registry, subscriptions, channels or a fork's source, no backlog
    /// for a channel, no fork reference: every table empty. Checked and done in one turn, with
    /// no `await`, so nothing a concurrent request stores is lost; a request that stores
    /// something later makes the tables again (see [`StreamObject::store`]).
    ///
    /// The incarnation of a stream created here later needs nothing kept: it is random
    /// ([`new_instance`]), never counted from what was stored, so it cannot repeat the deleted
    /// one's. Producers' states, a lease and channel marks went with the purge already.
    fn give_back_storage(&self) -> Result<()> {
        if self.never_stored() {
            return Ok(());
        }
        let store = self.store()?;
        // Read from storage, not memory: the stream row must really be gone.
        if store.load_meta()?.is_some() || !store.holds_nothing()? {
            return Ok(());
        }
        store.delete_all()?;
        self.emptied.set(true);
        self.meta.replace(Some(None));
        // The alarm went with it.
        self.alarm.forget();
        Ok(())
    }

    /// The metadata, from memory once loaded.
    fn meta(&self) -> Result<Option<Meta>> {
        if let Some(cached) = self.meta.borrow().as_ref() {
            return Ok(cached.clone());
        }
        if self.never_stored() {
            return Ok(None);
        }
        let loaded = self.store()?.load_meta()?;
        self.meta.replace(Some(loaded.clone()));
        Ok(loaded)
    }

    fn save(&self, meta: &Meta) -> Result<()> {
        self.store()?.save_meta(meta)?;
        self.remember(meta);
        Ok(())
    }

    /// Makes `meta` what memory holds, for changes that storage already has in another form
    /// (the tail in the log rows, the access time written alone).
    fn remember(&self, meta: &Meta) {
        self.meta.replace(Some(Some(meta.clone())));
    }

    /// Closes the client sockets whose token has expired, idle ones included, and sets the
    /// alarm for the next expiry: with no append to prompt it, an idle socket would otherwise
    /// stay open past its token.
    async fn expire_sockets(&self) {
        if let Some(next) = self.hub.close_expired_clients(http::now_secs()) {
            self.expire_sockets_by(next).await;
        }
    }

    /// Sets the alarm to fire by `at_secs`, when a client socket's token expires.
    async fn expire_sockets_by(&self, at_secs: i64) {
        if let Err(e) = alarm::by(self, at_secs.saturating_mul(1000)).await {
            worker::console_error!("stream: cannot set the alarm for a token's expiry: {e:?}");
        }
    }

    /// Keeps the stream for the forks that read through it, deleted (410) until the last one
    /// goes. It never expires from here on: an expiry would free its path, and a stream
    /// created there would write over the rows the forks read.
    async fn soft_delete(&self, mut meta: Meta) -> Result<()> {
        meta.deleted = true;
        meta.expiry = Expiry::Never;
        self.store()?.atomically(|| {
            self.save(&meta)?;
            // In the same turn: its channels are told it was deleted, now or from the alarm.
            channel::owe_deleted(self, &meta)?;
            self.alarm.set(now_ms() + SAFETY_MS);
            Ok(())
        })?;
        live::gone(&self.hub, &ProtocolError::Gone);
        owed::run(self, false, 0).await?;
        Ok(())
    }

    /// Deletes every row and, for a fork, lets go of the source. `hops` is the request's depth.
    async fn remove(&self, meta: Meta, hops: u32) -> Result<()> {
        self.store()?.atomically(|| self.purge(&meta))?;
        self.removed(hops).await
    }

    /// A removal's writes, in the caller's transaction.
    pub(super) fn purge(&self, meta: &Meta) -> Result<()> {
        // Its links and its reference are read before they are purged; a soft-deleted
        // stream owed its `deleted` events already.
        if !meta.deleted {
            channel::owe_deleted(self, meta)?;
        }
        fork::owe_removed(self, meta)?;
        self.store()?.purge()?;
        self.faults
            .check(&meta.path, crate::fault::Call::TornRemoval)?;
        // In the purge's turn: the registry is told even if this request dies.
        subscribers::owe_deregistration(self, meta)
    }

    /// After a removal's writes committed: what the object holds in memory, its live readers,
    /// and what it owes.
    pub(super) async fn removed(&self, hops: u32) -> Result<()> {
        self.meta.replace(Some(None));
        channel::forget(self);
        live::gone(&self.hub, &ProtocolError::NotFound);
        // A failure is the alarm's to retry; the stream is gone either way.
        owed::run(self, false, hops).await?;
        Ok(())
    }

    /// A create's or an append's body, within the stream limits of [`intake::read_body`].
    async fn read_body(
        &self,
        req: &mut Request,
        held: &mut Held,
    ) -> Result<std::result::Result<Vec<u8>, intake::BodyRefusal>> {
        let (max, idle) = (self.config.max_append_bytes, self.config.body_idle_ms);
        intake::read_body(req, max, held, idle).await
    }

    async fn create(&self, mut req: Request, name: &StreamName) -> Result<Response> {
        // The body's share of the isolate's budget is held until the request is answered.
        let mut held = Held::new(self.config.body_budget_bytes);
        let body = match self.read_body(&mut req, &mut held).await? {
            Ok(body) => body,
            Err(refusal) => return refusal.response(),
        };
        let headers = req.headers();
        let mut request = match parse_create(headers) {
            Ok(r) => r,
            Err(e) => return http::error(&e),
        };
        let is_channel = match channel::create_rules(headers, name.as_str(), &mut request, &body) {
            Ok(is_channel) => is_channel,
            Err(e) => return http::error(&e),
        };
        let now = now_ms();
        match self.lookup(now).await? {
            // A channel and a plain stream differ in configuration.
            Lookup::Live(meta) if meta.channel != is_channel => {
                return http::error(&ProtocolError::ConfigMismatch)
            }
            Lookup::Live(meta) => return self.existing(&meta, &request).await,
            Lookup::Deleted => return http::error(&ProtocolError::PathInUse),
            Lookup::Missing => {}
        }
        // Checked for a stream about to be made: an existing one answers as it stands.
        if let Err(e) = request.expiry.check_new(now) {
            return http::error(&e.into());
        }
        if let Some(fork) = &request.fork {
            return self
                .create_fork(name, &request, fork.clone(), body, now)
                .await;
        }
        // Checked only here, for a type a new stream would take as its own: a stream created
        // before the cap is confirmed by a PUT that names its type, and a fork may name its
        // source's.
        if let Some(Err(e)) = request.content_type.as_ref().map(ContentType::check_cap) {
            return http::error(&e.into());
        }
        let content_type = request
            .content_type
            .clone()
            .unwrap_or_else(ContentType::default_type);
        let meta = Meta {
            path: name.full_path(),
            instance: new_instance(),
            content_type,
            expiry: request.expiry,
            accessed_ms: now,
            closed: request.closed,
            closed_by: None,
            base: Offset::ZERO,
            tail: Offset::ZERO,
            last_stream_seq: None,
            fork: None,
            forks: 0,
            deleted: false,
            channel: is_channel,
        };
        self.finish_create(meta, &body, &[], None).await
    }

    /// Stores a new stream with its initial data (and, for a fork, its ancestors and its
    /// [`fork::Origin`]) in one turn, and answers 201.
    async fn finish_create(
        &self,
        mut meta: Meta,
        body: &[u8],
        ancestry: &[store::Ancestor],
        origin: Option<fork::Origin<'_>>,
    ) -> Result<Response> {
        let data = match initial_data(&meta, body) {
            Ok(data) => data,
            Err(e) => return http::error(&e),
        };
        let Some(tail) = store::end_of(meta.base, data.len()) else {
            return http::error(&ProtocolError::StreamFull);
        };
        let too_large = match channel::oversized_initial(self, &meta, &data).await? {
            channel::Initial::Refused(refusal) => return Ok(refusal),
            channel::Initial::TooLarge => true,
            channel::Initial::Fits => false,
        };
        let store = self.store()?;
        // The stream with its data, its fork's records and what it owes: all or nothing.
        store.atomically(|| {
            // Only a path with no stream is created, so no rows should be left. Any that are
            // belong to no stream (forks read a source through its metadata), and must neither
            // collide with the new rows nor be read as their data.
            if store.has_log()? {
                worker::console_warn!("stream {}: created over stale log rows", meta.path);
                store.purge()?;
            }
            store.append(meta.base, &data, meta.is_json())?;
            store.save_ancestry(ancestry)?;
            if let Some(origin) = origin {
                fork::hold(self, origin.id)?;
                store.save_inherited_expiry(origin.inherited_expiry)?;
                store.save_fork_depth(origin.depth)?;
            }
            meta.tail = tail;
            self.save(&meta)?;
            // In the same turn, with the alarm (which also keeps the expiry): should this
            // request die before the registry answers, the alarm registers the stream.
            subscribers::owe_registration(self, &meta, too_large.then_some(tail))
        })?;
        if !subscribers::registered(self).await? {
            return http::unavailable(UNREGISTERED);
        }
        alarm::stand_down(self);
        let resp = described(201, &meta)?;
        channel::mark_linking(self, &resp, &meta)?;
        Ok(resp)
    }

    /// PUT on a stream that exists: 200 when the configuration matches (once the stream is
    /// registered: a create answered 503 is finished here), else 409.
    async fn existing(&self, meta: &Meta, request: &CreateRequest) -> Result<Response> {
        let config = ExistingConfig {
            content_type: &meta.content_type,
            expiry: meta.expiry,
            closed: meta.closed,
            fork: match &meta.fork {
                Some(request) => Some(ExistingFork {
                    request,
                    point: meta.base,
                    inherited_expiry: self.store()?.inherited_expiry()?,
                }),
                None => None,
            },
        };
        if request.compare(&config) == CreateOutcome::Conflict {
            return http::error(&ProtocolError::ConfigMismatch);
        }
        // A channel still linking the streams below it goes on with its next pages here, as
        // its alarm would; not after finishing its registration, which linked as many.
        if subscribers::owes_registration(self)? {
            if !subscribers::registered(self).await? {
                return http::unavailable(UNREGISTERED);
            }
        } else if subscribers::linking(self, meta)?.is_some() {
            subscribers::link_more(self).await?;
        }
        let resp = described(200, meta)?;
        channel::mark_linking(self, &resp, meta)?;
        Ok(resp)
    }

    /// Whether this is a channel, which clients do not append to.
    fn is_channel(&self) -> Result<bool> {
        Ok(self.meta()?.is_some_and(|m| m.channel && !m.deleted))
    }

    /// Drops what memory holds of storage after a failure, so the next request reads it anew.
    fn forget_cached(&self) {
        self.meta.replace(None);
        // An alarm set in writes that were rolled back is not set.
        self.alarm.forget();
        if let Some(store) = self.store.get() {
            store.forget_cached();
            // Tables made again after the storage was given back, in writes that were rolled
            // back, are not made: the next store makes them.
            if !self.emptied.get() && !store.tables_made() {
                self.emptied.set(true);
            }
        }
    }

    async fn head(&self, req: &Request) -> Result<Response> {
        let now = now_ms();
        let meta = match self.lookup(now).await? {
            Lookup::Live(meta) => meta,
            Lookup::Deleted => return http::error(&ProtocolError::Gone),
            Lookup::Missing => return http::error(&ProtocolError::NotFound),
        };
        let resp = described(200, &meta)?;
        channel::mark_linking(self, &resp, &meta)?;
        let headers = resp.headers();
        headers.set(h::CACHE_CONTROL, "no-store")?;
        set_expiry(headers, meta.expiry)?;
        // The ETag a GET of the same URL would carry (RFC 9110 §9.3.2: a HEAD answers with a
        // GET's fields), so a HEAD tells whether a stored read is still current, and its
        // `If-None-Match` is answered 304 as the GET's is (RFC 9110 §13.1.2).
        if let Some(tag) = self.read_etag(req, &meta)? {
            headers.set(h::ETAG, &tag)?;
            if header(req.headers(), h::IF_NONE_MATCH).is_some_and(|v| h::if_none_match(&v, &tag)) {
                return Ok(resp.with_status(304));
            }
        }
        // A closed stream takes no appends: a lease on it holds nothing.
        let lease = match meta.closed {
            true => None,
            false => self.store()?.lease()?.filter(|l| l.is_active(now)),
        };
        if let Some(lease) = lease {
            headers.set(
                h::STREAM_LEASE_EXPIRES_AT,
                &format_rfc3339(lease.expires_ms),
            )?;
        }
        Ok(resp)
    }

    async fn delete(&self) -> Result<Response> {
        let meta = match self.lookup(now_ms()).await? {
            Lookup::Live(meta) => meta,
            Lookup::Deleted => return http::error(&ProtocolError::Gone),
            Lookup::Missing => return http::error(&ProtocolError::NotFound),
        };
        if meta.forks > 0 {
            self.soft_delete(meta).await?;
        } else {
            self.remove(meta, 0).await?;
        }
        Ok(Response::empty()?.with_status(204))
    }

    /// The ETag of a catch-up GET of `req`'s URL, when the end of its page is known without
    /// reading the page: always for the object's own bytes, and for a fork's inherited ones
    /// when the rest of the stream fits one page. `None` where the GET would have none
    /// (`offset=now`) or would be refused (a bad offset).
    fn read_etag(&self, req: &Request, meta: &Meta) -> Result<Option<String>> {
        let url = req.url()?;
        let offsets = http::query_values(&url, "offset");
        let Ok(from) = ReadFrom::from_query(offsets.iter().map(String::as_str)) else {
            return Ok(None);
        };
        let start = match Self::start_of(from, meta) {
            Ok(start) if from != ReadFrom::Now => start,
            _ => return Ok(None),
        };
        let end = if start >= meta.base && start < meta.tail {
            match own_range(self.store()?, meta, start)? {
                Ok(range) => range.end(),
                Err(_) => return Ok(None),
            }
        } else if start == meta.tail
            || (meta.tail.distance_from(start) <= PAGE_BYTES as u64
                && (!meta.is_json() || start == Offset::ZERO))
        {
            meta.tail
        } else {
            return Ok(None);
        };
        let closed = meta.closed && end >= meta.tail;
        Ok(Some(edgestream::etag::etag(
            &meta.instance,
            start,
            end,
            closed,
        )))
    }

    /// Resolves a read's starting point against the stream, refusing offsets past the tail.
    fn start_of(from: ReadFrom, meta: &Meta) -> std::result::Result<Offset, ProtocolError> {
        match from {
            ReadFrom::Start => Ok(Offset::ZERO),
            ReadFrom::Now => Ok(meta.tail),
            ReadFrom::At(o) if o > meta.tail => Err(ProtocolError::BadRequest(
                "offset is beyond the end of the stream",
            )),
            ReadFrom::At(o) => Ok(o),
        }
    }

    /// Catch-up read.
    async fn read(&self, req: &Request, url: &worker::Url) -> Result<Response> {
        let now = now_ms();
        let meta = match self.lookup(now).await? {
            Lookup::Live(meta) => meta,
            Lookup::Deleted => return http::error(&ProtocolError::Gone),
            Lookup::Missing => return http::error(&ProtocolError::NotFound),
        };
        let instance = meta.instance.clone();
        refused_offset(self.read_live(req, url, meta, now).await, &instance)
    }

    /// Catch-up read of a stream that exists.
    async fn read_live(
        &self,
        req: &Request,
        url: &worker::Url,
        mut meta: Meta,
        now: i64,
    ) -> Result<Response> {
        let from = match ReadFrom::from_query(
            http::query_values(url, "offset").iter().map(String::as_str),
        ) {
            Ok(from) => from,
            Err(e) => return http::error(&e.into()),
        };
        // A read slides a sliding TTL; a read refused (its offset past the tail, or inside a
        // JSON message) is no read, and does not, as a refused append or live read does not.
        if from == ReadFrom::Now {
            self.touch(&mut meta, now)?;
            let resp = reply::at_now(
                meta.content_type.as_str(),
                meta.is_json(),
                meta.tail,
                meta.closed,
                &meta.instance,
            )?;
            channel::mark(&resp, &meta)?;
            return Ok(resp);
        }
        let start = match Self::start_of(from, &meta) {
            Ok(start) => start,
            Err(e) => return http::error(&e),
        };
        if start >= meta.base && start < meta.tail {
            // The object's own bytes, streamed to the client from the rows.
            let range = match own_range(self.store()?, &meta, start)? {
                Ok(range) => range,
                Err(e) => return http::error(&e),
            };
            self.touch(&mut meta, now)?;
            let end = range.end();
            let page = PageData::Rows(range);
            return catch_up_reply(req, &meta, page, start, end, &self.config);
        }
        // A fork's inherited bytes are read from its source, which may refuse the offset (inside
        // a JSON message there): the TTL slides only once the page is answered.
        let instance = meta.instance.clone();
        let resp = self.page_response(req, meta, start).await?;
        self.touch_answered(&resp, Some(&instance), now)?;
        Ok(resp)
    }

    /// Slides the TTL for a read answered `resp`, unless it was refused: a refused read is no
    /// read. On the stream as it is after the read's awaits, if it is still incarnation
    /// `instance` (`None`: whichever is live).
    fn touch_answered(&self, resp: &Response, instance: Option<&str>, now: i64) -> Result<()> {
        if resp.status_code() >= 400 {
            return Ok(());
        }
        match self.meta()? {
            Some(mut meta) if !meta.deleted && instance.is_none_or(|i| meta.instance == i) => {
                self.touch(&mut meta, now)
            }
            _ => Ok(()),
        }
    }

    /// Reads one page from `start` and answers it as a catch-up response.
    async fn page_response(&self, req: &Request, meta: Meta, start: Offset) -> Result<Response> {
        let read = if !meta.is_json() && start >= meta.base {
            // All the object's own bytes: straight from the rows into the body.
            self.store()?
                .read_js(start, meta.tail, PAGE_BYTES)?
                .map(|(buffer, end)| (PageData::Js(buffer), end))
                .map_err(ReadError::into_protocol)
        } else {
            self.read_page(&meta, start, meta.tail, PAGE_BYTES, 0)
                .await?
                .map(|page| (page.data.into(), page.end))
        };
        let (data, end) = match read {
            Ok(read) => read,
            Err(e) => return http::error(&e),
        };
        // A fork's read may have awaited its source; report closure as it stands now.
        let now_meta = self.meta()?.unwrap_or(meta);
        catch_up_reply(req, &now_meta, data, start, end, &self.config)
    }

    /// Reads `[from, to)` up to `budget` bytes, stitching a fork's inherited ranges, read from
    /// the ancestors that hold them, with its own rows. `hops` is the request's depth.
    async fn read_page(
        &self,
        meta: &Meta,
        from: Offset,
        to: Offset,
        budget: usize,
        hops: u32,
    ) -> Result<std::result::Result<Page, ProtocolError>> {
        let mut page = Page {
            data: Vec::new(),
            end: from,
        };
        let inherited_to = to.min(meta.base);
        let ancestry = if from < inherited_to {
            self.store()?.ancestry()?
        } else {
            Vec::new()
        };
        while page.end < inherited_to && page.data.len() < budget {
            let left = budget - page.data.len();
            let read =
                fork::read_inherited(self, meta, &ancestry, page.end, inherited_to, left, hops);
            let part = match read.await? {
                Ok(part) => part,
                Err(e) => return Ok(Err(e)),
            };
            if part.end <= page.end {
                break;
            }
            if page.data.is_empty() {
                page = part;
            } else {
                page.data.extend_from_slice(&part.data);
                page.end = part.end;
            }
        }
        if from < meta.base && (page.end < inherited_to || page.data.len() >= budget) {
            return Ok(Ok(page));
        }
        let own_to = to.min(meta.tail);
        if page.end >= own_to {
            return Ok(Ok(page));
        }
        match self
            .store()?
            .read(page.end, own_to, budget - page.data.len(), meta.is_json())?
        {
            // Nothing inherited before it: the page is the object's own, not a copy of it.
            Ok(own) if page.data.is_empty() => Ok(Ok(own)),
            Ok(own) => {
                page.data.extend_from_slice(&own.data);
                page.end = own.end;
                Ok(Ok(page))
            }
            Err(e) => Ok(Err(e.into_protocol())),
        }
    }

    /// A live reader from the edge: long-poll, SSE or WebSocket follow. It slides a sliding
    /// TTL as the server begins it, unless refused: an offset inside a JSON message is found
    /// only as the read goes on, so the TTL slides once it is answered.
    async fn subscribe(&self, req: &Request, url: &worker::Url) -> Result<Response> {
        let now = now_ms();
        let resp = self.follow(req, url, now).await?;
        self.touch_answered(&resp, None, now)?;
        Ok(resp)
    }

    async fn follow(&self, req: &Request, url: &worker::Url, now: i64) -> Result<Response> {
        let meta = match self.lookup(now).await? {
            Lookup::Live(meta) => meta,
            Lookup::Deleted => return http::error(&ProtocolError::Gone),
            Lookup::Missing => return http::error(&ProtocolError::NotFound),
        };
        let mode = match LiveMode::from_query(
            http::query_values(url, "live").iter().map(String::as_str),
        ) {
            Ok(Some(mode)) => mode,
            Ok(None) => LiveMode::Sse,
            Err(e) => return http::error(&e.into()),
        };
        let from = match ReadFrom::from_query(
            http::query_values(url, "offset").iter().map(String::as_str),
        ) {
            Ok(from) => from,
            Err(e) => return http::error(&e.into()),
        };
        // An SSE or WebSocket reader the edge serves in several subscriptions names the
        // incarnation it began on: one deleted since, even if created again, is gone for it
        // (checked before the offset, which a shorter new stream would refuse with 400).
        let followed = header(req.headers(), reply::X_INSTANCE);
        if followed.as_deref().is_some_and(|i| i != meta.instance) {
            // Its text says why, since a stream is at the path: a client sees it on `live=ws`.
            return http::text(
                404,
                "stream not found: the stream at this path is not the incarnation named (deleted since, perhaps created again)",
            );
        }
        let start = match Self::start_of(from, &meta) {
            Ok(start) => start,
            Err(e) => return refused_offset(http::error(&e), &meta.instance),
        };
        let hello =
            header(req.headers(), wsproto::X_CLIENT).and_then(|v| ClientHello::from_header(&v));
        if let (LiveMode::WebSocket, Some(hello)) = (mode, hello) {
            // A client's own socket, handed over by the edge: held here when it starts near the
            // tail, else the edge serves it from this page on.
            if clients::serves(&meta, start) {
                if self.readers_full() {
                    return live::too_many_readers();
                }
                let expires = hello.read_until;
                let resp = clients::accept(&self.hub, self.store()?, &meta, start, hello)?;
                if let (101, Some(at)) = (resp.status_code(), expires) {
                    self.expire_sockets_by(at).await;
                }
                return Ok(resp);
            }
            return self.edge_page(req, meta, start).await;
        }
        let long_poll = mode == LiveMode::LongPoll;
        let backlog = meta.tail.distance_from(start);
        if start < meta.base || (long_poll && backlog > 0) || backlog > live::FRAME_BYTES as u64 {
            // Data is already there: answer it as a page; the edge comes back for the rest.
            if long_poll {
                let instance = meta.instance.clone();
                return refused_offset(self.page_response(req, meta, start).await, &instance);
            }
            return self.edge_page(req, meta, start).await;
        }
        if long_poll && meta.closed {
            return reply::no_content(meta.tail, true, None, &meta.instance);
        }
        if self.readers_full() {
            return live::too_many_readers();
        }
        let resp = refused_offset(
            live::accept(&self.hub, self.store()?, &meta, start, mode),
            &meta.instance,
        )?;
        if resp.status_code() != 101 {
            return Ok(resp);
        }
        let headers = resp.headers();
        headers.set(reply::X_CONTENT_TYPE, meta.content_type.as_str())?;
        headers.set(reply::X_INSTANCE, &meta.instance)?;
        headers.set(h::STREAM_NEXT_OFFSET, &start.to_string())?;
        // For the caching of the pages the edge makes from the frames.
        set_expiry(headers, meta.expiry)?;
        channel::mark(&resp, &meta)?;
        if meta.closed {
            headers.set(h::STREAM_CLOSED, "true")?;
        }
        Ok(resp)
    }

    /// Whether a new live reader must be refused: the stream holds `MAX_LIVE_READERS` already.
    fn readers_full(&self) -> bool {
        self.hub.is_full(self.config.max_live_readers, now_ms())
    }

    /// A catch-up page for an SSE or WebSocket reader the edge serves, naming the incarnation
    /// it was read from, for the edge to name in its next subscription. (A long-poll's page
    /// goes to the client as it is, and has no next subscription.)
    async fn edge_page(&self, req: &Request, meta: Meta, start: Offset) -> Result<Response> {
        let instance = meta.instance.clone();
        let resp = refused_offset(self.page_response(req, meta, start).await, &instance)?;
        if resp.status_code() == 200 {
            self.faults.edge_page();
            resp.headers().set(reply::X_INSTANCE, &instance)?;
        }
        Ok(resp)
    }

    /// Object-to-object calls: forks and their sources, channels and theirs.
    async fn internal(&self, op: &str, mut req: Request, url: &worker::Url) -> Result<Response> {
        let hops = fork::hops_of(&req);
        if hops > fork::MAX_HOPS {
            return http::text(508, "internal calls nested too deeply");
        }
        let position = |name: &str| -> Option<Offset> {
            http::query_value(url, name)
                .and_then(|v| v.parse::<u64>().ok())
                .and_then(Offset::new)
        };
        match op {
            "read" => {
                let (Some(from), Some(to), Some(budget)) =
                    (position("from"), position("to"), position("budget"))
                else {
                    return http::text(400, "bad internal read");
                };
                let Some(meta) = self.meta()? else {
                    return http::error(&ProtocolError::NotFound);
                };
                match self
                    .read_page(
                        &meta,
                        from,
                        to.min(meta.tail),
                        budget.position() as usize,
                        hops,
                    )
                    .await?
                {
                    Ok(page) => {
                        let resp = Response::from_bytes(page.data)?;
                        resp.headers()
                            .set(X_PAGE_END, &page.end.position().to_string())?;
                        Ok(resp)
                    }
                    Err(e) => http::error(&e),
                }
            }
            "append-from" => {
                let (Some(at), Some(cap)) = (position("at"), position("cap")) else {
                    return http::text(400, "bad internal append-from");
                };
                let Some(meta) = self.meta()? else {
                    return http::error(&ProtocolError::NotFound);
                };
                match fork::append_from(self, &meta, at, cap, hops).await? {
                    Some(page) => {
                        let resp = Response::from_bytes(page.data)?;
                        resp.headers()
                            .set(X_PAGE_END, &page.end.position().to_string())?;
                        Ok(resp)
                    }
                    None => http::error(&ProtocolError::ForkOffsetOutOfRange),
                }
            }
            "boundary" => {
                let Some(at) = position("at") else {
                    return http::text(400, "bad internal boundary");
                };
                let Some(meta) = self.meta()? else {
                    return http::error(&ProtocolError::NotFound);
                };
                if at >= meta.tail {
                    return http::text(400, "no message at or past the tail");
                }
                match fork::json_boundary(self, &meta, at, hops).await? {
                    Ok(()) => Response::ok(""),
                    Err(e) => http::error(&e),
                }
            }
            "ack-position" => {
                let body = req.bytes().await?;
                let Some(at) = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["at"].as_u64())
                    .and_then(Offset::new)
                else {
                    return http::text(400, "bad internal ack-position");
                };
                let Some(meta) = self.meta()?.filter(|m| !m.deleted) else {
                    return http::error(&ProtocolError::NotFound);
                };
                // A subscription's cursor: any position up to the tail where a read may start.
                if at > meta.tail {
                    return http::text(400, "offset is past the tail");
                }
                if at == meta.tail || !meta.is_json() {
                    return Response::ok("");
                }
                match fork::json_boundary(self, &meta, at, hops).await? {
                    Ok(()) => Response::ok(""),
                    // Inside a message, or inherited from a source that is gone.
                    Err(_) => http::text(400, "offset is not where a read may start"),
                }
            }
            "fork-acquire" => {
                let body = req.bytes().await?;
                fork::acquire(self, &body, hops).await
            }
            "fork-release" => {
                let body = req.bytes().await?;
                fork::on_release(self, &body, hops).await
            }
            "channel-append" => channel::on_append(self, req, url).await,
            "channel-deleted" => channel::on_deleted(self, url).await,
            "channel-link" => {
                let body = req.bytes().await?;
                channel::on_link(self, &body).await
            }
            "sub-link" => {
                let body = req.bytes().await?;
                let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                else {
                    return http::text(400, "bad internal sub-link");
                };
                let Some(meta) = self.meta()?.filter(|m| !m.deleted) else {
                    return http::error(&ProtocolError::NotFound);
                };
                if self.faults.enabled() {
                    crate::fault::asked_to_link(&meta.path);
                }
                if let Err(e) = self.faults.check(&meta.path, Call::SubLink) {
                    return http::unavailable(&e.to_string());
                }
                // A stream whose registration is on its way (or failed, and is owed) is in the
                // registry already, so a subscription's linking page can find it; but only the
                // registry's answer says whether the subscription covers it as a new stream
                // (from its start) or an existing one (from its tail). That registration is
                // finished first, as a PUT would (one run of the owed work at a time: one under
                // way finishes first); unfinished, the page is refused and retried.
                if subscribers::owes_registration(self)? && !subscribers::registered(self).await? {
                    return http::unavailable("stream not yet registered; retry");
                }
                // Removed while its registration ran; or created again, which is asked again.
                let meta = match self.meta()?.filter(|m| !m.deleted) {
                    None => return http::error(&ProtocolError::NotFound),
                    Some(now) if now.instance != meta.instance => {
                        return http::unavailable("stream created again; retry")
                    }
                    Some(now) => now,
                };
                let store = self.store()?;
                store.add_subscriber(&id)?;
                // A notification out now may bring back a `linked: false` from a deleted
                // incarnation of this subscription: it must not drop the entry this link keeps.
                self.sub_links.set(self.sub_links.get().wrapping_add(1));
                // A subscription this stream's registration found, and has not yet told the
                // stream is new, links it from its start: if it is the incarnation found.
                let found = store.unannounced()?.into_iter().find(|u| u.id == id);
                let epoch = found
                    .as_ref()
                    .map(|u| u.epoch.as_str())
                    .filter(|e| !e.is_empty());
                crate::subscription::json(
                    200,
                    &serde_json::json!({
                        "tail": meta.tail.position(),
                        "created": found.is_some(),
                        "epoch": epoch,
                    }),
                )
            }
            _ => http::text(404, "unknown internal operation"),
        }
    }
}

/// The catch-up response for `[start, end)` of the stream as `meta` describes it.
fn catch_up_reply(
    req: &Request,
    meta: &Meta,
    data: PageData,
    start: Offset,
    end: Offset,
    config: &Config,
) -> Result<Response> {
    let up_to_date = end >= meta.tail;
    let reply = ReadReply {
        content_type: meta.content_type.as_str(),
        json: meta.is_json(),
        data,
        start,
        end,
        up_to_date,
        closed: meta.closed && up_to_date,
        instance: &meta.instance,
        cursor: None,
        cache: Some(CacheScope {
            shared: config.shared_reads,
            lifetime_s: meta.expiry.lifetime_s(now_ms()),
        }),
    };
    let resp = reply.respond(header(req.headers(), h::IF_NONE_MATCH).as_deref())?;
    channel::mark(&resp, meta)?;
    Ok(resp)
}

/// The rows a catch-up GET from `start` (in the object's own rows, before the tail) streams:
/// up to [`STREAMED_PAGE_BYTES`], a JSON stream's in whole messages.
fn own_range(
    store: &Store,
    meta: &Meta,
    start: Offset,
) -> Result<std::result::Result<store::RowRange, ProtocolError>> {
    if meta.is_json() {
        return Ok(store
            .json_range(&meta.instance, start, STREAMED_PAGE_BYTES)?
            .map_err(ReadError::into_protocol));
    }
    let len = meta.tail.distance_from(start).min(STREAMED_PAGE_BYTES);
    let end = start.checked_add(len).unwrap_or(meta.tail);
    Ok(Ok(store.range(&meta.instance, start, end)))
}

fn is_upgrade(req: &Request) -> bool {
    header(req.headers(), "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Adds [`COLD_START`] to `resp` (an upgrade keeps its headers as they are).
fn mark_cold(resp: Response) -> Result<Response> {
    if resp.status_code() == 101 {
        return Ok(resp);
    }
    http::edit_headers(resp, |headers| headers.append(SERVER_TIMING, COLD_START))
}

/// A random id for a new incarnation of a stream.
fn new_instance() -> String {
    format!("{:08x}{:08x}", http::random_u32(), http::random_u32())
}

/// The request headers of a PUT, parsed.
fn parse_create(headers: &Headers) -> std::result::Result<CreateRequest, ProtocolError> {
    // Its length is checked once it is known that a stream is to be made with it.
    let content_type = match header(headers, h::CONTENT_TYPE).filter(|v| !v.trim().is_empty()) {
        Some(v) => Some(ContentType::parse_stored(&v)?),
        None => None,
    };
    let expiry = Expiry::from_headers(
        header(headers, h::STREAM_TTL).as_deref(),
        header(headers, h::STREAM_EXPIRES_AT).as_deref(),
    )?;
    let closed = h::is_closed(header(headers, h::STREAM_CLOSED).as_deref());
    let forked_from = header(headers, h::STREAM_FORKED_FROM);
    let fork_offset = header(headers, h::STREAM_FORK_OFFSET);
    let sub_offset = header(headers, h::STREAM_FORK_SUB_OFFSET);
    let fork = match h::ForkHeaders::parse(
        forked_from.as_deref(),
        fork_offset.as_deref(),
        sub_offset.as_deref(),
    )? {
        None => None,
        Some(f) => {
            let source = StreamName::from_header_path(f.source)
                .map_err(|_| ProtocolError::Header(h::HeaderError::ForkedFrom))?;
            Some(stream::ForkRequest {
                source: source.full_path(),
                offset: f.offset,
                sub_offset: f.sub_offset,
            })
        }
    };
    Ok(CreateRequest {
        content_type,
        expiry,
        closed,
        fork,
    })
}

/// A PUT body as stored: JSON bodies are validated and framed (`[]` means no messages).
fn initial_data(meta: &Meta, body: &[u8]) -> std::result::Result<Vec<u8>, ProtocolError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if meta.is_json() {
        Ok(json::frame_messages(body, Purpose::Create)?)
    } else {
        Ok(body.to_vec())
    }
}

/// An empty response describing the stream: its content type, tail and closed state, as PUT
/// and HEAD answer.
/// A read's refusal (a 4xx: mostly of its offset, past the end or inside a JSON message) names
/// the incarnation, catch-up or live: a reader resuming from an offset saved in a stream since
/// deleted and created again learns that, not only that the offset does not fit.
fn refused_offset(resp: Result<Response>, instance: &str) -> Result<Response> {
    let resp = resp?;
    if (400..500).contains(&resp.status_code()) {
        reply::name_incarnation(resp.headers(), instance)?;
    }
    Ok(resp)
}

fn described(status: u16, meta: &Meta) -> Result<Response> {
    let resp = Response::empty()?.with_status(status);
    let headers = resp.headers();
    headers.set(h::CONTENT_TYPE, meta.content_type.as_str())?;
    headers.set(h::STREAM_NEXT_OFFSET, &meta.tail.to_string())?;
    if meta.closed {
        headers.set(h::STREAM_CLOSED, "true")?;
    }
    reply::name_incarnation(headers, &meta.instance)?;
    channel::mark(&resp, meta)?;
    Ok(resp)
}
