//! Fault injection for tests, off unless `FAULT_MARKER` is set.
//!
//! A stream whose path contains the marker fails the first call of each kind it makes (to the
//! registry, to a subscription, to a channel) in each isolate, the way a call fails when the
//! object it reaches is unreachable, and answers the first request to link it (from the
//! registry for a new channel, or from a new subscription) with 503. A subscription answers
//! the first notice that such a stream is gone with 503. A fork's first calls to take and to
//! give back its reference on its source reach the source, and their answers are lost. A
//! subscription whose id carries the marker tells the registry of its first deletion a second
//! late, and fails to tell it of the next, and fails to tell it of the first stream it drops
//! from its explicit list; with `paged` in its id too, it reads its pattern's streams from the
//! registry, and lists the streams of a wake, [`TEST_PAGE`] at a time. The registry fails the
//! first registration of a stream whose path also carries `broken`, and a subscription whose
//! id does its first create, as storage that failed would. A subscription whose id carries
//! the marker and `keys-down` cannot reach the registry the first time it asks for the signing
//! keys' schedule again; with `keys-outage` instead, it cannot reach it for [`KEY_OUTAGE_MS`]
//! from the first time it asks again. A stream whose path carries the marker and `notify-down`
//! cannot reach any subscription for [`NOTIFY_OUTAGE_MS`] from its first notification; a
//! subscription whose id carries the marker and `late-unlinked` answers the first
//! notification it gets once deleted (`linked: false`) two seconds late; with `slowpage`, it
//! reads the registry's answer to its first linking page only once it is told a stream is
//! gone (or 10 s pass). Later calls of that kind go through, so a test sees the failure and
//! then the repair: what is owed is retried by the request that is told to retry, or by the
//! alarm.

use std::cell::{Cell, RefCell};

use worker::{Error, Result};

/// The calls a stream makes to other objects that a fault can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    RegistryCreated,
    RegistryRemoved,
    Notify,
    ChannelAppend,
    ChannelDeleted,
    /// Answered, not made: the registry linking a new channel above the stream.
    ChannelLink,
    /// Answered, not made: a new subscription linking the stream.
    SubLink,
    /// Answered by a subscription, not made: the registry saying a stream it links is gone.
    StreamRemoved,
    /// Made, with its answer lost: a fork taking a reference on its source.
    ForkAcquire,
    /// Made, with its answer lost: a fork giving its reference back.
    ForkRelease,
    /// Made, with its answer lost: a stream registering with the registry. Only for a stream
    /// whose path also contains `lost`, which then fails its first registration before the
    /// call ([`Call::RegistryCreated`]) and its second after it: the registry has the stream,
    /// the stream still owes its registration.
    RegistryAnswerLost,
    /// Made a second late: a deleted subscription telling the registry.
    SubscriptionRemoved,
    /// Failed: a deleted subscription telling the registry, the first time it is not late.
    SubscriptionUnlinked,
    /// Failed: a subscription telling the registry it dropped a stream from its explicit list.
    ExplicitRemoved,
    /// Failed: storing an append, after its rows are written, as a storage error fails it.
    /// Only for a stream whose path also contains `torn`, so the other faults' tests append.
    TornWrite,
    /// Cut off: an append stored, then its request failing before its subscriptions are told,
    /// as if the isolate died. Only for a stream whose path also contains `cut`.
    NotifyCut,
    /// Failed: removing a stream, after its rows are purged, as a storage error fails it. Only
    /// for a stream whose path also contains `torn`.
    TornRemoval,
    /// Failed: the registry's handling of a stream's registration, or a subscription's of its
    /// create, as a storage error fails it (the object logs it and answers 503). Only for a
    /// stream path or subscription id that also contains `broken`.
    Broken,
    /// Failed: a subscription asking the registry for the signing keys' schedule again, once
    /// the one it kept is due to be asked again, as when the registry cannot be reached. Only
    /// for a subscription id that also contains `keys-down`.
    KeySchedule,
    /// Made two seconds late: a deleted subscription's answer to a stream's notification
    /// (`linked: false`). Only for a subscription id that also contains `late-unlinked`.
    UnlinkedAnswer,
    /// Held: the registry's answer to a subscription's first linking page, until the
    /// subscription is told a stream is gone ([`Faults::hold_page`]). Only for a subscription
    /// id that also contains `slowpage`.
    PageAnswer,
}

/// Where [`trap_if_asked`] is called from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The edge, before it routes a stream's request.
    Edge,
    /// A stream's object, before it routes a request, given its method.
    Object(bool),
}

/// Traps the Wasm instance, as a bug that panicked would, when `path` carries `marker` and
/// asks for it at `site`; `true` when it asks for the trap after an await instead, which the
/// caller then awaits ([`trap_after_await`]). At the edge, `trap-await` asks for that, and
/// `trap` otherwise traps at once, in the request's first poll; in a stream's object,
/// `trap-object` asks for it on a HEAD (`Site::Object(true)`), so the same stream's other
/// requests go through. The request gets no answer from the Worker (the runtime answers 500 at
/// the edge; a request whose object trapped is never answered), and the isolate lives on with
/// the instance marked broken, which the next call into it rebuilds (`plainEdgeEntrypoint` in
/// scripts/build.mjs keeps worker-build's recovery). `tests/trap.test.ts` checks that recovery.
pub fn trap_if_asked(marker: Option<&str>, path: &str, site: Site) -> bool {
    if !marker.is_some_and(|m| path.contains(m)) {
        return false;
    }
    match site {
        Site::Object(head) => head && path.contains("trap-object"),
        Site::Edge if path.contains("trap-object") => false,
        Site::Edge if path.contains("trap-await") => true,
        Site::Edge if path.contains("trap") => std::process::abort(),
        Site::Edge => false,
    }
}

/// Traps the Wasm instance in a later run of the request's task: after an await that a
/// runtime timer wakes, as a panic after any I/O would.
pub async fn trap_after_await() {
    worker::Delay::from(std::time::Duration::from_millis(1)).await;
    std::process::abort()
}

thread_local! {
    /// Channel links this isolate's streams were asked for, for [`Faults::hold_link`].
    static LINKS_ANSWERED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Subscription and channel links this isolate's `slowreg` streams were asked for, for
    /// [`Faults::hold_registration`].
    static SLOWREG_LINKS_ASKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The stream at `path` was asked to link a subscription or a channel: counted, before it
/// answers or waits, when `path` holds its registration ([`Faults::hold_registration`]).
pub fn asked_to_link(path: &str) {
    if path.contains("slowreg") {
        SLOWREG_LINKS_ASKED.with(|n| n.set(n.get() + 1));
    }
}

/// How many links this isolate's `slowreg` streams have been asked for, so far.
pub fn links_asked_of_slowreg() -> u64 {
    SLOWREG_LINKS_ASKED.with(std::cell::Cell::get)
}

/// How many other streams' channel links a held one waits for ([`Faults::hold_link`]).
pub const HOLD_LINKS: u64 = 40;

/// A stream was asked to link a channel.
pub fn link_asked() {
    LINKS_ANSWERED.with(|n| n.set(n.get() + 1));
}

/// With faults on, a HEAD's answer says when the stream's alarm is set for (Unix ms), or
/// `none`, and a subscription's GET when the subscription's is: tests see which work a
/// request left the alarm to do.
pub const ALARM_HEADER: &str = "x-edgestream-alarm";

/// An alarm as [`ALARM_HEADER`] shows it: Unix ms, or `none`.
pub fn alarm_shown(at: Option<i64>) -> String {
    at.map_or_else(|| "none".to_string(), |ms| ms.to_string())
}

/// With faults on, a HEAD's answer says how many catch-up pages the stream's object has
/// answered the edge's SSE and WebSocket readers in this isolate: tests see that a reader who
/// hung up stops the pages read for it.
pub const EDGE_PAGES_HEADER: &str = "x-edgestream-edge-pages";
/// With faults on, a HEAD's answer says how often the stream's alarm has run in this object,
/// in this isolate: tests see that owed work waiting on a failing task does not wake it for
/// nothing.
pub const ALARM_RUNS_HEADER: &str = "x-edgestream-alarm-runs";

/// With faults on, a HEAD's answer says how many channels' positions the stream (a source)
/// keeps in memory, past where it stored them: tests see that a channel deleted and created
/// again leaves none behind.
pub const CHANNEL_POSITIONS_HEADER: &str = "x-edgestream-channel-positions";

/// With faults on, a PUT's answer says how many rows the registry read to find the
/// subscriptions covering the stream, when this request registered it: tests see that the
/// lookup does not grow with the links other paths have.
pub const REGISTRY_ROWS_HEADER: &str = "x-edgestream-registry-rows";

/// With faults on, a PUT's answer says how many rows the registry wrote to register the
/// stream, when this request registered it (each a row billed, see `worker/src/rows.rs`).
pub const REGISTRY_WRITTEN_HEADER: &str = "x-edgestream-registry-written";

/// With faults on, a HEAD's answer says the most subscriptions the stream's object has called
/// to tell them its tail in one invocation (a request, or the alarm), in this isolate: tests see
/// that no invocation calls more than `LINKS_PER_CALL`.
pub const NOTIFY_BATCH_HEADER: &str = "x-edgestream-notify-batch";

/// With faults on, a subscription PUT's answer says the most streams one page of the
/// registry's listing held while it linked the pattern's streams: tests see that a pattern
/// over many streams is read in pages, never all at once.
pub const REGISTRY_PAGE_HEADER: &str = "x-edgestream-registry-page";

/// With faults on, a subscription's GET says how many of its linking pages' answers are held
/// now ([`Faults::hold_page`]): a test removes a stream while one is.
pub const PAGES_HELD_HEADER: &str = "x-edgestream-pages-held";

/// How long [`Faults::hold_page`] holds a page's answer at most, when no stream is removed.
pub const PAGE_HOLD_MS: u64 = 10_000;

/// The page a subscription whose id carries the marker and `paged` uses, for both the
/// registry's listing of its pattern's streams and the streams one wake lists
/// ([`Faults::page`]), so a test sees several pages with a handful of streams.
pub const TEST_PAGE: usize = 2;

/// How long a subscription whose id carries the marker and `keys-outage` cannot reach the
/// registry for the signing keys' schedule, from the first time it asks again: longer than a
/// kept schedule is trusted under test (`SCHEDULE_TRUSTED_MS_UNDER_TEST`), so a test sees
/// deliveries refused, and then signed again once it is over.
pub const KEY_OUTAGE_MS: i64 = 6_000;

/// How long a stream whose path carries the marker and `notify-down` cannot reach its
/// subscriptions, from its first notification ([`Faults::notify_outage`]): longer than the
/// first retries of a failed notification, so a test can change the subscription meanwhile.
pub const NOTIFY_OUTAGE_MS: i64 = 3_000;
/// How long a stream whose path carries the marker and `deregister-down` cannot tell the
/// registry it was removed, from the first time it tries: several backoffs, over which the
/// work owed behind that call waits.
pub const DEREGISTER_OUTAGE_MS: i64 = 5_000;

/// What one object has failed so far in this isolate.
pub struct Faults {
    /// `FAULT_MARKER`: none in production.
    marker: Option<String>,
    tripped: RefCell<Vec<Call>>,
    /// Rows the registry read for the last registration, until a PUT's answer shows them.
    registry_rows: Cell<Option<(u64, u64)>>,
    /// The most subscriptions one invocation called (kept only with faults on).
    notify_batch: Cell<usize>,
    /// The most streams one registry page held, for a subscription's PUT to show.
    registry_page: Cell<usize>,
    /// When this object's registry outage began ([`Faults::key_outage`]).
    key_outage_since: Cell<Option<i64>>,
    /// When this stream's outage of its subscriptions began ([`Faults::notify_outage`]).
    notify_outage_since: Cell<Option<i64>>,
    /// Catch-up pages answered to the edge's SSE and WebSocket readers ([`EDGE_PAGES_HEADER`]).
    edge_pages: Cell<u64>,
    /// When this object's registry outage for its removal began ([`Faults::check`]).
    deregister_outage_since: Cell<Option<i64>>,
    /// How often the object's alarm has run (kept only with faults on).
    alarm_runs: Cell<u64>,
    /// How many removed streams a subscription has been told of (kept only with faults on).
    removals_told: Cell<u64>,
    /// Linking pages' answers held now ([`Faults::hold_page`]).
    pages_held: Cell<u32>,
}

impl Faults {
    pub fn new(marker: Option<String>) -> Faults {
        Faults {
            marker,
            tripped: RefCell::new(Vec::new()),
            registry_rows: Cell::new(None),
            notify_batch: Cell::new(0),
            registry_page: Cell::new(0),
            key_outage_since: Cell::new(None),
            notify_outage_since: Cell::new(None),
            edge_pages: Cell::new(0),
            deregister_outage_since: Cell::new(None),
            alarm_runs: Cell::new(0),
            removals_told: Cell::new(0),
            pages_held: Cell::new(0),
        }
    }

    /// Whether faults are on at all (a test server): a HEAD is then also told when the
    /// stream's alarm is set for, in [`ALARM_HEADER`].
    pub fn enabled(&self) -> bool {
        self.marker.is_some()
    }

    /// The registry read `read` rows to find this stream's subscriptions and wrote `written`
    /// to register it (kept only with faults on).
    pub fn registry_read(&self, read: u64, written: u64) {
        if self.enabled() {
            self.registry_rows.set(Some((read, written)));
        }
    }

    /// What [`Faults::registry_read`] last kept, taken.
    pub fn take_registry_rows(&self) -> Option<(u64, u64)> {
        self.registry_rows.take()
    }

    /// An invocation called `count` subscriptions to tell them the tail.
    pub fn notified(&self, count: usize) {
        if self.enabled() {
            self.notify_batch.set(self.notify_batch.get().max(count));
        }
    }

    /// A catch-up page was answered to the edge for an SSE or WebSocket reader.
    pub fn edge_page(&self) {
        if self.enabled() {
            self.edge_pages.set(self.edge_pages.get() + 1);
        }
    }

    /// The catch-up pages answered to the edge's readers so far.
    pub fn edge_pages(&self) -> u64 {
        self.edge_pages.get()
    }

    /// The most subscriptions one invocation has called.
    pub fn notify_batch(&self) -> usize {
        self.notify_batch.get()
    }

    /// The page size for subscription `id`: [`TEST_PAGE`] when it carries the marker and
    /// `paged`, else `normal`.
    pub fn page(&self, id: &str, normal: usize) -> usize {
        match self.marker.as_deref() {
            Some(m) if id.contains(m) && id.contains("paged") => TEST_PAGE,
            _ => normal,
        }
    }

    /// A registry page held `count` streams.
    pub fn registry_paged(&self, count: usize) {
        if self.enabled() {
            self.registry_page.set(self.registry_page.get().max(count));
        }
    }

    /// The most streams one registry page has held since this was last taken.
    pub fn take_registry_page(&self) -> usize {
        self.registry_page.take()
    }

    /// The object's alarm ran.
    pub fn alarm_ran(&self) {
        if self.enabled() {
            self.alarm_runs.set(self.alarm_runs.get() + 1);
        }
    }

    /// How often the object's alarm has run.
    pub fn alarm_runs(&self) -> u64 {
        self.alarm_runs.get()
    }

    /// `Err` when this call is the one to fail.
    pub fn check(&self, path: &str, call: Call) -> Result<()> {
        // Evaluated first, so the outage begins with the first call (which trips too).
        let down = call == Call::RegistryRemoved
            && path.contains("deregister-down")
            && self.outage(path, &self.deregister_outage_since, DEREGISTER_OUTAGE_MS);
        if self.trips(path, call) || down {
            return Err(Error::RustError(format!("injected fault: {call:?}")));
        }
        Ok(())
    }

    /// `Err` for a subscription `id` carrying the marker and `keys-outage` asking the registry
    /// for the signing keys' schedule again at `now`, within [`KEY_OUTAGE_MS`] of the first
    /// time it did: a registry outage that outlasts the schedule the subscription kept.
    pub fn key_outage(&self, id: &str, now: i64) -> Result<()> {
        if id.contains("keys-outage")
            && self.outage_at(id, &self.key_outage_since, KEY_OUTAGE_MS, now)
        {
            return Err(Error::RustError(
                "injected fault: the registry is unreachable".into(),
            ));
        }
        Ok(())
    }

    /// `Err` for a stream whose path carries the marker and `notify-down` notifying its
    /// subscriptions at `now`, within [`NOTIFY_OUTAGE_MS`] of its first notification: every
    /// subscription is unreachable for a while.
    pub fn notify_outage(&self, path: &str, now: i64) -> Result<()> {
        if path.contains("notify-down")
            && self.outage_at(path, &self.notify_outage_since, NOTIFY_OUTAGE_MS, now)
        {
            return Err(Error::RustError(
                "injected fault: the subscriptions are unreachable".into(),
            ));
        }
        Ok(())
    }

    /// Whether `name` carries the marker and an outage of `ms`, which began the first time
    /// this was asked (`since`), is still on now.
    fn outage(&self, name: &str, since: &Cell<Option<i64>>, ms: i64) -> bool {
        self.outage_at(name, since, ms, crate::http::now_ms())
    }

    fn outage_at(&self, name: &str, since: &Cell<Option<i64>>, ms: i64, now: i64) -> bool {
        if !self.marker.as_deref().is_some_and(|m| name.contains(m)) {
            return false;
        }
        let began = *since.get().get_or_insert(now);
        since.set(Some(began));
        now - began < ms
    }

    /// A subscription was told a stream is gone.
    pub fn told_removed(&self) {
        if self.enabled() {
            self.removals_told.set(self.removals_told.get() + 1);
        }
    }

    /// A subscription whose id carries the marker and `slowpage` keeps the registry's answer
    /// to its first linking page unread until it is told a stream is gone, or
    /// [`PAGE_HOLD_MS`] pass: as if that answer were slow to come back, so a stream the page
    /// asked for its tail is removed before the page's links are saved.
    pub async fn hold_page(&self, id: &str) {
        if !self.slow(id, Call::PageAnswer) {
            return;
        }
        let start = self.removals_told.get();
        self.pages_held.set(self.pages_held.get() + 1);
        for _ in 0..PAGE_HOLD_MS / 10 {
            if self.removals_told.get() > start {
                break;
            }
            worker::Delay::from(std::time::Duration::from_millis(10)).await;
        }
        self.pages_held.set(self.pages_held.get().saturating_sub(1));
    }

    /// How many linking pages' answers are held now.
    pub fn pages_held(&self) -> u32 {
        self.pages_held.get()
    }

    /// Whether this call is the one to be made late.
    pub fn slow(&self, path: &str, call: Call) -> bool {
        self.trips(path, call)
    }

    /// A stream whose path carries the marker and `hold` answers a channel link only once
    /// [`HOLD_LINKS`] other streams in the isolate have been asked for theirs after it, as a
    /// stream slow to answer would; `Err` when that does not happen within 5 s. So a registry
    /// that asks no more streams while one is slow to answer fails the link (and with it the
    /// channel's PUT), and one that keeps asking the rest does not. `Ok(false)` for any other
    /// stream, which the other channel-link fault ([`Call::ChannelLink`]) applies to.
    pub async fn hold_link(&self, path: &str) -> Result<bool> {
        if !self.marker.as_deref().is_some_and(|m| path.contains(m)) || !path.contains("hold") {
            return Ok(false);
        }
        let start = LINKS_ANSWERED.with(std::cell::Cell::get);
        for _ in 0..500 {
            if LINKS_ANSWERED.with(std::cell::Cell::get) >= start + HOLD_LINKS {
                return Ok(true);
            }
            worker::Delay::from(std::time::Duration::from_millis(10)).await;
        }
        Err(Error::RustError(
            "injected fault: a held channel link was not passed".into(),
        ))
    }

    /// A stream whose path carries the marker and `slowreg` keeps the registry's answer to
    /// its registration unread until such a stream of the isolate is asked to link a
    /// subscription or a channel after `asked` (a count from [`links_asked_of_slowreg`] taken
    /// before the call), or 10 s pass: as if that answer were slow to come back, so a linking
    /// page (a subscription's, or a new channel's) finds the stream in the registry before the
    /// stream has taken in what its registration found. Such a stream's own first link is not
    /// failed ([`Call::SubLink`], [`Call::ChannelLink`]).
    pub async fn hold_registration(&self, path: &str, asked: u64) {
        if !self.marker.as_deref().is_some_and(|m| path.contains(m)) || !path.contains("slowreg") {
            return;
        }
        for _ in 0..1000 {
            if links_asked_of_slowreg() > asked {
                return;
            }
            worker::Delay::from(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Whether this call would be the one to fail, without counting it as made.
    pub fn armed(&self, path: &str, call: Call) -> bool {
        if !self.marker.as_deref().is_some_and(|m| path.contains(m)) {
            return false;
        };
        if (matches!(call, Call::TornWrite | Call::TornRemoval) && !path.contains("torn"))
            || (call == Call::NotifyCut && !path.contains("cut"))
            || (call == Call::Broken && !path.contains("broken"))
            || (call == Call::RegistryAnswerLost && !path.contains("lost"))
            || (call == Call::KeySchedule && !path.contains("keys-down"))
            || (matches!(call, Call::SubLink | Call::ChannelLink) && path.contains("slowreg"))
            || (call == Call::UnlinkedAnswer && !path.contains("late-unlinked"))
            || (call == Call::PageAnswer && !path.contains("slowpage"))
        {
            return false;
        }
        !self.tripped.borrow().contains(&call)
    }

    /// Whether `path` carries the marker and this is its first call of the kind.
    fn trips(&self, path: &str, call: Call) -> bool {
        if !self.armed(path, call) {
            return false;
        }
        self.tripped.borrow_mut().push(call);
        true
    }
}
