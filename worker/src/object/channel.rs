//! Hierarchical channels: a channel is a JSON stream that receives one envelope per message of
//! every stream below its path.
//!
//! Both sides are `StreamObject`s. A source keeps, per channel it feeds, the position up to
//! which the channel has acknowledged its messages (`forwarded`). After each append (and from
//! the alarm, after a failure or a restart) it reads its log from there, in batches of about
//! [`BATCH_BYTES`] cut at message boundaries, wraps each message in an envelope and sends the
//! batch to the channel's object. The channel keeps, per source incarnation, the source position
//! its envelopes reach (its mark), appends a batch only when it starts at that mark, and moves
//! the mark in the same turn as the rows, so a batch delivered twice is appended once. The
//! answer is the mark, from which the source goes on. Nothing is written per append beyond the
//! append itself: the channel writes its mark once per batch, and the source stores
//! `forwarded` once every [`STORE_FORWARDED_EVERY`] batches (and sets its alarm at most once
//! per alarm), keeping where the channel stands in memory in between ([`Forwarder`]). The mark
//! is the truth: a source that restarted goes on from the `forwarded` it stored, which may be
//! behind, and the channel answers a batch it has with its mark, appending nothing. A closed
//! source's last batch ends with a `closed` event, whose mark is one past the final offset.
//!
//! A source deleted while a channel is behind (failing) keeps its rows from there in a backlog
//! that outlives its log; the owed `deleted` work ([`tell_deleted`]) sends the channel the rest
//! from it before the event.
//!
//! Which streams feed which channel is the registry's business (`subscription/registry.rs`):
//! a new stream learns the channels above it when it is created, and a new channel has the
//! registry link every existing stream below it from that stream's tail.

use std::cell::{Cell, RefCell};

use edgestream::channel::{self as ch, Admit, Batch, BytesField};
use edgestream::headers::SseEncoding;
use edgestream::stream::CreateRequest;
use edgestream::{ContentType, Offset, ProtocolError};
use futures_channel::oneshot;
use serde::{Deserialize, Serialize};
use worker::{Headers, Method, Request, RequestInit, Response, Result};

use super::store::{self, ChannelLink, Meta, Rows, Store, Task};
use super::{alarm, live, subscribers, Lookup, StreamObject};
use crate::fault::Call;
use crate::http::{self, header, now_ms};
use crate::subscription::registry::{ChannelCount, ChannelRef, StreamPath};
use crate::subscription::stream_stub;
use crate::subscription::{call, registry_stub};

/// A batch sent to a channel holds about this much: source messages are read up to it, and
/// envelopes added until they reach it (always at least one message, however large).
const BATCH_BYTES: usize = 1024 * 1024;
/// A source stores where a channel stands (`forwarded`) once every this many batches the channel
/// takes, and whenever a batch changes more than that (its failures, its `closed` or `created`
/// event). In between it is kept in memory: an instance that restarts goes on from the stored
/// one, up to this many batches behind, and resends from there (the channel answers with its
/// mark and appends nothing); a source deleted then keeps those batches' rows in its backlog as
/// well, and the channel admits none of them again.
const STORE_FORWARDED_EVERY: u32 = 16;
/// An appender waits at most this long for a channel to answer; the alarm retries after.
const CALL_TIMEOUT_MS: u64 = 10_000;
/// What a POST (or a socket's append frame) to a channel is told it may do instead.
const CHANNEL_METHODS: &str = "GET, HEAD, PUT, DELETE, OPTIONS";

/// The source side's state in memory: one delivery round at a time, and appenders that arrive
/// during one wait for the next.
#[derive(Default)]
pub struct Forwarder {
    running: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<Wake>>>,
    /// After a failure, appends leave the failing channels to the alarm until then, rather
    /// than each waiting on a channel that is down.
    backoff_until: Cell<i64>,
    /// Where channels stand past their stored `forwarded`, as they answered this instance.
    ahead: RefCell<Vec<Ahead>>,
}

/// A channel's position acknowledged since its link's `forwarded` was stored.
struct Ahead {
    /// The channel's name and incarnation, and the source incarnation that fed it.
    channel: String,
    instance: String,
    incarnation: String,
    forwarded: Offset,
    /// Batches taken since `forwarded` was stored.
    batches: u32,
}

impl Forwarder {
    /// The channel took a batch and stands at `link.forwarded`: whether to store the link now
    /// (`changed`: more than its position moved, or [`STORE_FORWARDED_EVERY`] batches have);
    /// else where it stands is kept here.
    fn took(&self, link: &ChannelLink, incarnation: &str, changed: bool) -> bool {
        let mut ahead = self.ahead.borrow_mut();
        let found = ahead
            .iter()
            .position(|a| a.of(&link.channel, &link.instance, incarnation));
        let batches = found.map_or(0, |i| ahead[i].batches) + 1;
        if changed || batches >= STORE_FORWARDED_EVERY {
            if let Some(i) = found {
                ahead.swap_remove(i);
            }
            return true;
        }
        match found {
            Some(i) => {
                ahead[i].forwarded = link.forwarded;
                ahead[i].batches = batches;
            }
            None => ahead.push(Ahead {
                channel: link.channel.clone(),
                instance: link.instance.clone(),
                incarnation: incarnation.to_string(),
                forwarded: link.forwarded,
                batches,
            }),
        }
        false
    }

    /// Moves each of `links` (the stored ones of source incarnation `incarnation`) on to where
    /// its channel stands, and forgets the positions of links no longer stored: a channel
    /// deleted and created again (its new incarnation's link replaced the old one's, which
    /// never answered "gone"), or one whose link went while its batch was on its way.
    /// Forgetting one is safe in any case: its stored `forwarded` is behind, and the channel
    /// answers a batch it has with its mark.
    fn place(&self, links: &mut [ChannelLink], incarnation: &str) {
        let mut ahead = self.ahead.borrow_mut();
        ahead.retain(|a| {
            links
                .iter()
                .any(|l| a.of(&l.channel, &l.instance, incarnation))
        });
        for link in links {
            if let Some(a) = ahead
                .iter()
                .find(|a| a.of(&link.channel, &link.instance, incarnation))
            {
                link.forwarded = link.forwarded.max(a.forwarded);
            }
        }
    }

    /// How many channels' positions are kept here.
    pub fn kept(&self) -> usize {
        self.ahead.borrow().len()
    }

    /// The link was stored as it stands: nothing of it is kept here.
    fn stored(&self, link: &ChannelLink, incarnation: &str) {
        self.ahead
            .borrow_mut()
            .retain(|a| !a.of(&link.channel, &link.instance, incarnation));
    }
}

impl Ahead {
    fn of(&self, channel: &str, instance: &str, incarnation: &str) -> bool {
        self.channel == channel && self.instance == instance && self.incarnation == incarnation
    }
}

/// The channels the stream feeds, each where it stands: its stored link, moved on to where the
/// channel answered this instance since.
fn links(obj: &StreamObject, meta: &Meta) -> Result<Vec<ChannelLink>> {
    let mut links = obj.store()?.channel_links()?;
    obj.channels.place(&mut links, &meta.instance);
    Ok(links)
}

/// The rules a PUT with `Stream-Channel: true` must meet; `Ok(true)` for a channel. A channel
/// is at most [`ch::MAX_CHANNEL_DEPTH`] segments deep, a JSON stream (no `Content-Type` means
/// JSON), with no body, not a fork and not closed.
pub fn create_rules(
    headers: &Headers,
    name: &str,
    request: &mut CreateRequest,
    body: &[u8],
) -> std::result::Result<bool, ProtocolError> {
    if !ch::parse_header(header(headers, ch::STREAM_CHANNEL).as_deref())? {
        return Ok(false);
    }
    ch::check_depth(name)?;
    match &request.content_type {
        None => {
            request.content_type = ContentType::parse("application/json").ok();
        }
        Some(ct) if !ct.is_json() => {
            return Err(ProtocolError::BadRequest(
                "a channel is a JSON stream: its Content-Type must be application/json",
            ))
        }
        Some(_) => {}
    }
    if request.fork.is_some() {
        return Err(ProtocolError::BadRequest("a channel cannot be a fork"));
    }
    if !body.is_empty() {
        return Err(ProtocolError::BadRequest(
            "a channel is written by the streams below it: its PUT has no body",
        ));
    }
    if request.closed {
        return Err(ProtocolError::BadRequest(
            "a channel cannot be created closed",
        ));
    }
    Ok(true)
}

/// 413 for an append whose envelopes would take more than `MAX_APPEND_BYTES` in a channel
/// above the stream: a channel's copy of an append is held to the limit of any append, so one
/// request cannot make a channel store many times what it sent (one envelope per tiny JSON
/// message, each naming the stream). Decided before anything is stored, so the append is
/// refused whole and no channel holds part of it. It applies while the stream feeds a channel,
/// and while its registration (which links its channels, from its start) is still owed and it
/// cannot know: an append must not await between reading the tail and storing.
pub fn oversized_copy(obj: &StreamObject, meta: &Meta, data: &[u8]) -> Result<Option<Response>> {
    let Some(text) = over_limit(obj, meta, data) else {
        return Ok(None);
    };
    let store = obj.store()?;
    let feeds = !store.channel_links()?.is_empty()
        || store.owed()?.iter().any(|o| o.task == Task::Register);
    if !feeds {
        return Ok(None);
    }
    http::text(413, &text).map(Some)
}

/// What a create's initial body means for the channels above its path.
pub enum Initial {
    /// It fits in a channel (or no channel could copy it).
    Fits,
    /// Too large for a channel, and the registry knew of none above the path. One created
    /// before the stream is linked (between this answer and the registration) is fed from
    /// the end of the body, as if the stream had existed before it.
    TooLarge,
    /// 413, or 503 when the registry cannot say (or another create stored the stream meanwhile).
    Refused(Response),
}

/// The same refusal for a stream about to be created with `data`, which is copied into every
/// channel above it from its start: the registry says whether there is one (asked only when
/// the copy would be too large). 503 when it cannot say, and when another create stored the
/// stream while it was asked (the retry answers as that stream stands).
pub async fn oversized_initial(obj: &StreamObject, meta: &Meta, data: &[u8]) -> Result<Initial> {
    let Some(text) = over_limit(obj, meta, data) else {
        return Ok(Initial::Fits);
    };
    let path = StreamPath {
        path: meta.name().to_string(),
    };
    let (status, reply) =
        call::<_, ChannelCount>(&registry_stub(&obj.env)?, "channels-above", &path).await?;
    Ok(match reply.filter(|_| status == 200) {
        Some(count) if count.channels > 0 => Initial::Refused(http::text(413, &text)?),
        Some(_) if obj.meta()?.is_some() => Initial::Refused(http::unavailable(
            "the stream was created by another request; retry",
        )?),
        Some(_) => Initial::TooLarge,
        None => Initial::Refused(http::unavailable(
            "the registry could not say whether a channel is above; retry",
        )?),
    })
}

/// Why `data` is too large for a channel above the stream, if it is. A channel, an empty body
/// and a path of one segment (with no channel above it) never are. The size is computed first:
/// it is within the limit for nearly every append, which then reads no rows.
fn over_limit(obj: &StreamObject, meta: &Meta, data: &[u8]) -> Option<String> {
    if meta.channel || data.is_empty() || !meta.name().contains('/') {
        return None;
    }
    let size = copy_len(&Feed::live(meta), data);
    let limit = obj.config.max_append_bytes;
    (size > limit).then(|| {
        format!(
            "this append would be {size} bytes in each channel above the stream (one envelope \
             per message), over the {limit}-byte limit: send it in smaller appends"
        )
    })
}

/// The bytes `data` (stored framing) takes in a channel: exact for JSON; for a byte stream, a
/// bound, as its pieces depend on where delivery batches fall. Every piece of an append but
/// its last holds at least `BATCH_BYTES` less a cut-back of 3 bytes, so half of it is ample.
fn copy_len(feed: &Feed<'_>, data: &[u8]) -> u64 {
    if feed.json {
        return ch::json_envelopes_len(feed.name, data);
    }
    let pieces = (data.len() / (BATCH_BYTES / 2)) as u64 + 2;
    ch::bytes_envelopes_bound(feed.name, data, feed.text, pieces)
}

/// 405 to a client's append: only the streams below a channel write to it.
pub fn refuse_append() -> Result<Response> {
    let resp = http::text(
        405,
        "a channel is written only by the streams below it; append to one of them",
    )?;
    resp.headers().set("allow", CHANNEL_METHODS)?;
    Ok(resp)
}

/// Marks a response as a channel's (`Stream-Channel: true`).
pub fn mark(resp: &Response, meta: &Meta) -> Result<()> {
    if meta.channel {
        resp.headers().set(ch::STREAM_CHANNEL, "true")?;
    }
    Ok(())
}

/// Marks a channel's PUT or HEAD answer with how far linking the streams that existed below it
/// has got (`Stream-Channel-Linking`), while it is still under way.
pub fn mark_linking(obj: &StreamObject, resp: &Response, meta: &Meta) -> Result<()> {
    if let Some(linked) = super::subscribers::linking(obj, meta)? {
        resp.headers()
            .set(ch::STREAM_CHANNEL_LINKING, &linked.to_string())?;
    }
    Ok(())
}

/// A new stream: links the channels the registry found above it, from its start, each owed
/// the stream's `created` event (in the caller's turn, with the alarm that delivers to them).
/// [`forward`] then delivers. `after`, for a stream whose initial body was too large for a
/// channel when none was above it, is where that body ends: a channel created since is fed
/// from there, unannounced, like one created after the stream, so it never holds the copy
/// the create could not have been refused for.
pub fn link(
    obj: &StreamObject,
    meta: &Meta,
    channels: &[ChannelRef],
    after: Option<Offset>,
) -> Result<()> {
    let store = obj.store()?;
    let linked = store.channel_links()?;
    for c in channels {
        let known = linked
            .iter()
            .any(|l| l.channel == c.path && l.instance == c.instance);
        if !meta.channel && !known && ch::covers(&c.path, meta.name()) {
            store.atomically(|| match after {
                Some(end) => store.link_channel(&c.path, &c.instance, end),
                None => {
                    store.link_channel(&c.path, &c.instance, meta.base)?;
                    store.announce(&c.path, &c.instance)
                }
            })?;
        }
    }
    stored(obj, meta);
    Ok(())
}

/// Called in the turn that stores new messages, before any `await`: when channels are to be
/// fed, the safety alarm is set in that same turn, so it commits with the rows and a crash
/// before delivery leaves the alarm to deliver them.
pub fn stored(obj: &StreamObject, meta: &Meta) {
    if meta.channel || obj.alarm.set_by(now_ms() + super::SAFETY_MS) {
        return;
    }
    match obj.store().and_then(|s| s.channel_links()) {
        Ok(links) if !links.is_empty() => obj.alarm.arm(meta, now_ms() + super::SAFETY_MS),
        Ok(_) => {}
        Err(e) => worker::console_error!("channels: {}: cannot read links: {e}", meta.path),
    }
}

/// `internal/channel-link`: the registry links a channel created above this stream, from the
/// stream's tail (its history stays out of the channel).
pub async fn on_link(obj: &StreamObject, body: &[u8]) -> Result<Response> {
    let Ok(c) = serde_json::from_slice::<ChannelRef>(body) else {
        return http::text(400, "bad internal channel-link");
    };
    let Some(path) = obj.meta()?.filter(|m| !m.deleted).map(|m| m.path) else {
        return http::error(&ProtocolError::NotFound);
    };
    if obj.faults.enabled() {
        crate::fault::link_asked();
        crate::fault::asked_to_link(&path);
        let held = match obj.faults.hold_link(&path).await {
            Ok(held) => held,
            Err(e) => return http::unavailable(&e.to_string()),
        };
        if !held {
            if let Err(e) = obj.faults.check(&path, Call::ChannelLink) {
                return http::unavailable(&e.to_string());
            }
        }
    }
    // A stream whose registration is on its way (or failed, and is owed) is in the registry
    // already, so a new channel's page can find it; but its registration links the channels
    // above it from its start, announced, and one linked here first would be left at the tail.
    // That registration is finished first, as a PUT would; unfinished, the page is refused
    // and retried.
    if super::subscribers::owes_registration(obj)? && !super::subscribers::registered(obj).await? {
        return http::unavailable("stream not yet registered; retry");
    }
    // Read again after the waits.
    let Some(meta) = obj.meta()?.filter(|m| !m.deleted) else {
        return http::error(&ProtocolError::NotFound);
    };
    // Channels never feed each other, a channel only covers what is below it, and a stream
    // closed before the channel existed has nothing more to give it.
    let linked = !meta.channel && !meta.closed && ch::covers(&c.path, meta.name());
    if linked {
        obj.store()?.link_channel(&c.path, &c.instance, meta.tail)?;
    }
    crate::subscription::json(200, &serde_json::json!({ "linked": linked }))
}

/// Delivers what the channels above this stream have not yet acknowledged. Called after each
/// append and create, and from the alarm; failures are logged and left to the alarm, never
/// passed to the appender, whose data is already stored.
pub async fn forward(obj: &StreamObject) {
    if let Err(e) = forward_all(obj).await {
        worker::console_error!("channels: forwarding failed: {e}");
    }
}

async fn forward_all(obj: &StreamObject) -> Result<()> {
    let f = &obj.channels;
    if f.running.get() {
        // A round is under way, and the next one takes this append too. Wait for it, so an
        // append is acknowledged once its channels have it (or the alarm has it in hand).
        let (tx, rx) = oneshot::channel();
        f.waiters.borrow_mut().push(tx);
        match rx.await {
            Ok(Wake::YourTurn) => {}
            Ok(Wake::Delivered) | Err(_) => return Ok(()),
        }
    }
    f.running.set(true);
    let result = rounds(obj).await;
    if result.is_err() || !f.running.get() {
        // Nobody runs the next round: whoever waits is answered, and the alarm delivers.
        f.running.set(false);
        for waiter in f.waiters.take() {
            let _ = waiter.send(Wake::Delivered);
        }
    }
    result
}

/// What a waiting appender is woken with.
enum Wake {
    /// The round that read its append is over.
    Delivered,
    /// It runs the next round: the appender that ran the last one has been answered.
    YourTurn,
}

enum Round {
    /// Every channel has everything (as of the round's start).
    Done,
    /// Some channel has more to take.
    More,
    /// A delivery failed; the alarm retries.
    Failed,
}

/// Runs rounds until every channel has everything, or a delivery fails. The appenders whose
/// messages a round read are answered once the channels have all of them (a backlog larger
/// than a batch takes several rounds). When appends arrived meanwhile, the next round is handed
/// to one of their appenders and this one returns, so an appender waits for the rounds that
/// carry its messages and not for later ones, however busy the stream.
async fn rounds(obj: &StreamObject) -> Result<()> {
    let f = &obj.channels;
    let mut waiting = Vec::new();
    loop {
        waiting.extend(f.waiters.take());
        let round = round(obj).await;
        if matches!(round, Ok(Round::More)) {
            continue;
        }
        for waiter in waiting.drain(..) {
            let _ = waiter.send(Wake::Delivered);
        }
        match round? {
            Round::More => {}
            Round::Failed => {
                f.running.set(false);
                return Ok(());
            }
            Round::Done => {
                let next: Vec<_> = f.waiters.take();
                let mut handed = false;
                for waiter in next {
                    if handed {
                        f.waiters.borrow_mut().push(waiter);
                    } else {
                        // A waiter that is gone (its request dropped) cannot take over.
                        handed = waiter.send(Wake::YourTurn).is_ok();
                    }
                }
                if !handed {
                    f.running.set(false);
                }
                return Ok(());
            }
        }
    }
}

/// What a channel did with a batch.
enum Delivery {
    /// Its mark for this source: everything before it is in the channel.
    Mark(u64),
    /// No such channel (deleted, or another incarnation): the link goes.
    Gone,
}

/// One batch to each channel that is behind, sent in parallel.
async fn round(obj: &StreamObject) -> Result<Round> {
    let Some(meta) = obj.meta()?.filter(|m| !m.deleted && !m.channel) else {
        return Ok(Round::Done);
    };
    let store = obj.store()?;
    let backing_off = now_ms() < obj.channels.backoff_until.get();
    let mut due: Vec<ChannelLink> = Vec::new();
    for l in links(obj, &meta)? {
        // A link to a channel deeper than the limit, made before there was one, goes.
        if !ch::covers(&l.channel, meta.name()) {
            store.unlink_channel(&l.channel, &l.instance)?;
        } else if behind(&l, &meta) && !(backing_off && l.failures > 0) {
            due.push(l);
        }
    }
    if due.is_empty() {
        return Ok(Round::Done);
    }
    // Normally set by `stored` already; after a wake from the alarm, set again here.
    obj.alarm.arm(&meta, now_ms() + super::SAFETY_MS);
    let mut sends = Vec::with_capacity(due.len());
    for link in due {
        match batch(store, &Feed::live(&meta), link.forwarded, link.announce) {
            Ok(batch) if batch.end > link.forwarded.position() || batch.closes || link.announce => {
                sends.push((link, batch))
            }
            Ok(_) => {}
            Err(e) => worker::console_error!(
                "channels: {} cannot read from {} for {}: {e}",
                meta.path,
                link.forwarded,
                link.channel
            ),
        }
    }
    let calls = sends
        .iter()
        .map(|(link, batch)| deliver(obj, &meta, link, batch));
    let results = futures_util::future::join_all(calls).await;
    // The stream may have been deleted (or created again) while the channels answered.
    let Some(now) = obj.meta()?.filter(|m| m.instance == meta.instance) else {
        return Ok(Round::Done);
    };
    let store = obj.store()?;
    let mut outcome = Round::Done;
    let mut retry_in: Option<i64> = None;
    for ((mut link, _), result) in sends.into_iter().zip(results) {
        match result {
            Ok(Delivery::Mark(mark)) => {
                let to = ch::advance(link.forwarded.position(), mark, now.tail.position());
                link.forwarded = Offset::new(to).unwrap_or(link.forwarded);
                let closed_sent = now.closed && mark >= ch::closed_mark(now.tail.position());
                let changed = link.failures > 0 || link.closed_sent != closed_sent || link.announce;
                link.closed_sent = closed_sent;
                link.failures = 0;
                if obj.channels.took(&link, &now.instance, changed) {
                    store.set_forwarded(&link)?;
                }
                // Any mark means the channel has the first batch, which carried the event.
                if link.announce {
                    store.announced(&link.channel)?;
                    link.announce = false;
                }
                if behind(&link, &now) && !matches!(outcome, Round::Failed) {
                    outcome = Round::More;
                }
            }
            Ok(Delivery::Gone) => {
                store.unlink_channel(&link.channel, &link.instance)?;
                obj.channels.stored(&link, &now.instance);
            }
            Err(e) => {
                worker::console_warn!(
                    "channels: {} to {} failed ({} in a row): {e}",
                    meta.path,
                    link.channel,
                    link.failures + 1
                );
                link.failures = link.failures.saturating_add(1);
                store.set_forwarded(&link)?;
                obj.channels.stored(&link, &now.instance);
                let backoff = super::backoff_ms(link.failures);
                retry_in = Some(retry_in.map_or(backoff, |r| r.min(backoff)));
                outcome = Round::Failed;
            }
        }
    }
    if let Some(delay) = retry_in {
        obj.channels.backoff_until.set(now_ms() + delay);
        obj.alarm.forget();
        obj.alarm.arm(&now, now_ms() + delay);
        // Not past a client socket's token expiry: an idle one is closed by the alarm alone.
        if let Some(secs) = obj.hub.first_client_expiry() {
            obj.alarm.set(secs.saturating_mul(1000));
        }
    }
    Ok(outcome)
}

/// Whether some channel above the stream has not yet taken all of it.
pub fn any_behind(obj: &StreamObject, meta: &Meta) -> Result<bool> {
    if meta.channel {
        return Ok(false);
    }
    Ok(links(obj, meta)?.iter().any(|l| behind(l, meta)))
}

/// Whether the channel has yet to take something of the stream: messages, its `closed` event
/// or its `created` event.
fn behind(link: &ChannelLink, meta: &Meta) -> bool {
    link.forwarded < meta.tail || (meta.closed && !link.closed_sent) || link.announce
}

/// What a round sends one channel.
struct Outgoing {
    /// The envelopes, framed.
    framed: Vec<u8>,
    /// The source position the channel's mark reaches with them.
    to: u64,
    /// They end with the stream's `closed` event.
    closes: bool,
    /// Where the source's messages in them end.
    end: u64,
}

/// What batches are read from: a live source's log, or what a deleted incarnation kept for
/// the channels it had not yet fed (its backlog).
struct Feed<'a> {
    /// The source's name, as envelopes carry it.
    name: &'a str,
    json: bool,
    /// A byte stream of text, whose envelopes carry it as it is rather than in base64.
    text: bool,
    tail: Offset,
    closed: bool,
    rows: Rows<'a>,
}

impl<'a> Feed<'a> {
    fn live(meta: &'a Meta) -> Feed<'a> {
        Feed {
            name: meta.name(),
            json: meta.is_json(),
            text: meta.content_type.sse_encoding() == SseEncoding::Utf8,
            tail: meta.tail,
            closed: meta.closed,
            rows: Rows::Log,
        }
    }
}

/// The envelopes of the source's messages from `from`, about [`BATCH_BYTES`] of them, after
/// the stream's `created` event if it is owed, and the `closed` event after the last message
/// of a closed stream.
fn batch(store: &Store, feed: &Feed<'_>, from: Offset, announce: bool) -> Result<Outgoing> {
    let stream = feed.name;
    let mut batch = if feed.json {
        match store.read_rows(feed.rows, from, feed.tail, BATCH_BYTES, true)? {
            Ok(page) => ch::json_batch(stream, from.position(), &page.data, BATCH_BYTES),
            Err(e) => return Err(worker::Error::RustError(e.into_protocol().message())),
        }
    } else {
        let text = feed.text;
        let mut batch = Batch {
            framed: Vec::new(),
            end: from.position(),
        };
        for (end, bytes) in store.append_pieces(feed.rows, from, feed.tail, BATCH_BYTES, text)? {
            if batch.framed.len() >= BATCH_BYTES {
                break;
            }
            let field = BytesField::for_piece(text, &bytes);
            ch::write_bytes_envelope(stream, end, &bytes, field, &mut batch.framed);
            batch.framed.push(b',');
            batch.end = end.position();
        }
        batch
    };
    if announce {
        let mut framed = Vec::with_capacity(batch.framed.len() + 96);
        ch::write_created_envelope(stream, from, &mut framed);
        framed.push(b',');
        framed.extend_from_slice(&batch.framed);
        batch.framed = framed;
    }
    let closes = feed.closed && batch.end == feed.tail.position();
    let mut to = batch.end;
    if closes {
        ch::write_closed_envelope(stream, feed.tail, &mut batch.framed);
        batch.framed.push(b',');
        to = ch::closed_mark(feed.tail.position());
    }
    Ok(Outgoing {
        framed: batch.framed,
        to,
        closes,
        end: batch.end,
    })
}

/// Sends one batch to a channel's object and reads its answer.
async fn deliver(
    obj: &StreamObject,
    meta: &Meta,
    link: &ChannelLink,
    batch: &Outgoing,
) -> Result<Delivery> {
    let to = Destination {
        channel: &link.channel,
        instance: &link.instance,
        source: meta.name(),
        incarnation: &meta.instance,
    };
    send(obj, &to, link.forwarded.position(), batch).await
}

/// A channel incarnation, and the source incarnation that feeds it.
struct Destination<'a> {
    channel: &'a str,
    instance: &'a str,
    source: &'a str,
    incarnation: &'a str,
}

/// Sends one batch, which starts at `from`, to a channel's object and reads its answer.
async fn send(
    obj: &StreamObject,
    to: &Destination<'_>,
    from: u64,
    batch: &Outgoing,
) -> Result<Delivery> {
    obj.faults.check(to.source, Call::ChannelAppend)?;
    let params = [
        ("source", to.source),
        ("incarnation", to.incarnation),
        ("channel", to.instance),
        ("from", &from.to_string()),
        ("to", &batch.to.to_string()),
    ];
    let mut resp = call_channel(obj, to.channel, "channel-append", &params, &batch.framed).await?;
    match resp.status_code() {
        200 => {
            let reply: serde_json::Value = serde_json::from_slice(&resp.bytes().await?)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            reply["mark"]
                .as_u64()
                .map(Delivery::Mark)
                .ok_or_else(|| worker::Error::RustError("channel answered no mark".into()))
        }
        404 | 410 => Ok(Delivery::Gone),
        status => Err(worker::Error::RustError(format!(
            "channel answered {status}"
        ))),
    }
}

/// POSTs `body` to a channel's internal `op`, waiting at most [`CALL_TIMEOUT_MS`] for its answer:
/// an appender waits on it, and the alarm retries after.
async fn call_channel(
    obj: &StreamObject,
    channel: &str,
    op: &str,
    params: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let url = worker::Url::parse_with_params(&format!("https://edgestream/internal/{op}"), params)
        .map_err(|e| worker::Error::RustError(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post);
    if !body.is_empty() {
        init.with_body(Some(js_sys::Uint8Array::from(body).into()));
    }
    let req = Request::new_with_init(url.as_str(), &init)?;
    let stub = stream_stub(&obj.env, channel)?;
    http::within(CALL_TIMEOUT_MS, stub.fetch_with_request(req))
        .await
        .unwrap_or_else(|| Err(worker::Error::RustError("channel timed out".into())))
}

/// This object's stream, if it is the channel incarnation `instance` names (else the source's
/// link is stale: 404).
async fn channel_here(obj: &StreamObject, instance: &str, now: i64) -> Result<Option<Meta>> {
    Ok(match obj.lookup(now).await? {
        Lookup::Live(meta) if meta.channel && meta.instance == instance => Some(meta),
        _ => None,
    })
}

/// The stream was removed: what this forwarder knew of it is forgotten.
pub fn forget(obj: &StreamObject) {
    obj.channels.backoff_until.set(0);
    obj.channels.ahead.borrow_mut().clear();
}

/// The alarm fired: whatever is still undelivered goes now.
pub async fn on_alarm(obj: &StreamObject) {
    obj.channels.backoff_until.set(0);
    forward(obj).await;
}

/// `internal/channel-append`: a batch of envelopes from a source. Appended only when it starts
/// at this channel's mark for that source incarnation (else the mark is the answer: the source
/// resends from there), with the mark moved in the same turn as the rows.
pub async fn on_append(
    obj: &StreamObject,
    mut req: Request,
    url: &worker::Url,
) -> Result<Response> {
    let query = |name: &str| http::query_value(url, name);
    let number = |name: &str| query(name).and_then(|v| v.parse::<u64>().ok());
    let (Some(source), Some(incarnation), Some(instance), Some(from), Some(to)) = (
        query("source"),
        query("incarnation"),
        query("channel"),
        number("from"),
        number("to"),
    ) else {
        return http::text(400, "bad internal channel-append");
    };
    let body = req.bytes().await?;
    let now = now_ms();
    let Some(meta) = channel_here(obj, &instance, now).await? else {
        return http::text(404, "no such channel");
    };
    // From here on there is no await until the mark and the rows are written together.
    let store = obj.store()?;
    let mark = store.channel_mark(&source, &incarnation)?;
    if let Admit::Already(mark) = ch::admit(mark, from, to) {
        return mark_reply(mark);
    }
    // A batch that only announces a new stream covers no position (`to == from`).
    if to < from || body.is_empty() {
        return http::text(400, "empty internal channel-append");
    }
    append_envelopes(obj, meta, body, &source, &incarnation, to, now).await
}

/// Appends envelopes from one source incarnation and moves its mark to `mark`, in one turn;
/// then live readers and subscriptions learn of them. Answers the mark.
async fn append_envelopes(
    obj: &StreamObject,
    mut meta: Meta,
    body: Vec<u8>,
    source: &str,
    incarnation: &str,
    mark: u64,
    now: i64,
) -> Result<Response> {
    let store = obj.store()?;
    let start = meta.tail;
    let Some(tail) = store::end_of(start, body.len()) else {
        return http::error(&ProtocolError::StreamFull);
    };
    // The rows and the mark together: rows kept under the old mark would be appended again
    // when the source sends the batch again.
    store.atomically(|| {
        store.append(start, &body, true)?;
        store.set_channel_mark(source, incarnation, mark, now)?;
        meta.tail = tail;
        obj.touch(&mut meta, now)?;
        obj.remember(&meta);
        subscribers::owe_notification(obj, &meta)
    })?;
    live::queue(&obj.hub, start, tail, meta.closed, body, true);
    live::flush(&obj.hub);
    subscribers::appended(obj, &meta).await?;
    alarm::stand_down(obj);
    mark_reply(mark)
}

/// A `deleted` event owed to a channel by a stream that fed it. Kept in the stream's owed
/// work (its links are purged with it), so it is given even if the stream's object dies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedNotice {
    /// The channel's name and incarnation.
    channel: String,
    instance: String,
    /// The deleted stream's name and incarnation, and its tail when it was deleted.
    source: String,
    incarnation: String,
    offset: u64,
    /// What the channel had yet to take of the stream, delivered from the stream's backlog
    /// before the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backlog: Option<Backlog>,
}

impl DeletedNotice {
    fn same(&self, other: &DeletedNotice) -> bool {
        (&self.channel, &self.instance, &self.incarnation)
            == (&other.channel, &other.instance, &other.incarnation)
    }
}

/// Where a channel's feed of a deleted incarnation stood, and what the batches still owed
/// need of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Backlog {
    /// The link's `forwarded`: the channel has everything before it.
    from: u64,
    /// The `created` event is still owed.
    announce: bool,
    closed: bool,
    /// The `closed` event is in the channel.
    closed_sent: bool,
    json: bool,
    text: bool,
}

/// The stream is deleted (or soft-deleted: its path answers 410): every channel it feeds is
/// owed its `deleted` event. Called in the turn that deletes it, before its links are purged.
pub fn owe_deleted(obj: &StreamObject, meta: &Meta) -> Result<()> {
    if meta.channel {
        return Ok(());
    }
    let store = obj.store()?;
    // Where each channel stands as this instance knows it: one it knows nothing of (it
    // restarted since) may be told again what it has, and admits none of it.
    let links = links(obj, meta)?;
    if links.is_empty() {
        return Ok(());
    }
    let mut notices = owed_notices(store)?;
    // What a backlog's batches need of the stream, as its live batches had it.
    let feed = Feed::live(meta);
    // The rows from the furthest behind of the channels that are behind are kept.
    let mut keep_from: Option<Offset> = None;
    for link in links {
        let backlog = behind(&link, meta).then(|| {
            keep_from = Some(keep_from.map_or(link.forwarded, |k| k.min(link.forwarded)));
            Backlog {
                from: link.forwarded.position(),
                announce: link.announce,
                closed: feed.closed,
                closed_sent: link.closed_sent,
                json: feed.json,
                text: feed.text,
            }
        });
        let notice = DeletedNotice {
            channel: link.channel,
            instance: link.instance,
            source: meta.name().to_string(),
            incarnation: meta.instance.clone(),
            offset: meta.tail.position(),
            backlog,
        };
        if !notices.iter().any(|n| n.same(&notice)) {
            notices.push(notice);
        }
    }
    if let Some(from) = keep_from {
        store.keep_backlog(&meta.instance, from)?;
    }
    save_notices(store, &notices)
}

/// Stores the notices still owed, or settles the task when there are none.
fn save_notices(store: &Store, notices: &[DeletedNotice]) -> Result<()> {
    if notices.is_empty() {
        return store.settle(Task::ChannelsDeleted);
    }
    let detail =
        serde_json::to_string(notices).map_err(|e| worker::Error::RustError(e.to_string()))?;
    store.owe(Task::ChannelsDeleted, now_ms(), &detail)
}

fn owed_notices(store: &Store) -> Result<Vec<DeletedNotice>> {
    Ok(store
        .owed()?
        .into_iter()
        .find(|o| o.task == Task::ChannelsDeleted)
        .and_then(|o| serde_json::from_str(&o.detail).ok())
        .unwrap_or_default())
}

/// Gives each owed `deleted` event, after what its channel had yet to take of the stream;
/// whether every channel has its own (or is gone). Those that failed stay owed, as far as they
/// got, beside any owed meanwhile; a backlog no notice needs any more is dropped.
pub async fn tell_deleted(obj: &StreamObject) -> Result<bool> {
    let notices = owed_notices(obj.store()?)?;
    let results =
        futures_util::future::join_all(notices.iter().cloned().map(|n| give(obj, n))).await;
    let mut given = Vec::new();
    let mut progressed = Vec::new();
    for (notice, result) in results {
        match result {
            Ok(()) => given.push(notice),
            Err(e) => {
                worker::console_warn!(
                    "channels: deleted event of {} to {} failed: {e}",
                    notice.source,
                    notice.channel
                );
                progressed.push(notice);
            }
        }
    }
    let store = obj.store()?;
    let left: Vec<DeletedNotice> = owed_notices(store)?
        .into_iter()
        .filter(|n| !given.iter().any(|g| g.same(n)))
        .map(|n| progressed.iter().find(|p| p.same(&n)).cloned().unwrap_or(n))
        .collect();
    for done in given.iter().chain(&progressed) {
        let needed = left
            .iter()
            .any(|n| n.incarnation == done.incarnation && n.backlog.is_some());
        if !needed {
            store.drop_backlog(&done.incarnation)?;
        }
    }
    save_notices(store, &left)?;
    Ok(given.len() == notices.len())
}

/// Delivers a notice's backlog, then its event. Answers the notice as far as it got.
async fn give(obj: &StreamObject, mut notice: DeletedNotice) -> (DeletedNotice, Result<()>) {
    let mut result = drain(obj, &mut notice).await;
    if result.is_ok() {
        result = deliver_deleted(obj, &notice).await;
    }
    (notice, result)
}

/// Sends the notice's channel what it had yet to take of the deleted incarnation, from the
/// stream's backlog, in batches as a live source does.
async fn drain(obj: &StreamObject, notice: &mut DeletedNotice) -> Result<()> {
    let tail = Offset::new(notice.offset)
        .ok_or_else(|| worker::Error::RustError("deleted notice past the largest offset".into()))?;
    while let Some(b) = notice.backlog.clone() {
        let from = Offset::new(b.from.min(notice.offset)).unwrap_or(tail);
        if from >= tail && (!b.closed || b.closed_sent) && !b.announce {
            notice.backlog = None;
            break;
        }
        let feed = Feed {
            name: &notice.source,
            json: b.json,
            text: b.text,
            tail,
            closed: b.closed,
            rows: Rows::Backlog(&notice.incarnation),
        };
        let out = batch(obj.store()?, &feed, from, b.announce)?;
        if out.end <= from.position() && !out.closes && !b.announce {
            return Err(worker::Error::RustError(format!(
                "the backlog of {} has nothing at {from}",
                notice.source
            )));
        }
        let to = Destination {
            channel: &notice.channel,
            instance: &notice.instance,
            source: &notice.source,
            incarnation: &notice.incarnation,
        };
        match send(obj, &to, from.position(), &out).await? {
            Delivery::Mark(mark) => {
                let next = Backlog {
                    from: ch::advance(from.position(), mark, notice.offset),
                    announce: false,
                    closed_sent: b.closed_sent
                        || (b.closed && mark >= ch::closed_mark(notice.offset)),
                    ..b.clone()
                };
                if next == b {
                    return Err(worker::Error::RustError(format!(
                        "channel {} took nothing of {} at {from}",
                        notice.channel, notice.source
                    )));
                }
                notice.backlog = Some(next);
            }
            // Its `deleted` event goes nowhere either.
            Delivery::Gone => notice.backlog = None,
        }
    }
    Ok(())
}

/// Sends one `deleted` event to its channel's object.
async fn deliver_deleted(obj: &StreamObject, notice: &DeletedNotice) -> Result<()> {
    obj.faults.check(&notice.source, Call::ChannelDeleted)?;
    let params = [
        ("source", notice.source.as_str()),
        ("incarnation", notice.incarnation.as_str()),
        ("channel", notice.instance.as_str()),
        ("offset", &notice.offset.to_string()),
    ];
    let resp = call_channel(obj, &notice.channel, "channel-deleted", &params, &[]).await?;
    match resp.status_code() {
        200 | 404 | 410 => Ok(()),
        status => Err(worker::Error::RustError(format!(
            "channel answered {status}"
        ))),
    }
}

/// `internal/channel-deleted`: a source incarnation was deleted. Its `deleted` event is
/// appended once, and its mark moves past every position, so nothing more of it is taken.
pub async fn on_deleted(obj: &StreamObject, url: &worker::Url) -> Result<Response> {
    let query = |name: &str| http::query_value(url, name);
    let (Some(source), Some(incarnation), Some(instance), Some(offset)) = (
        query("source"),
        query("incarnation"),
        query("channel"),
        query("offset")
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(Offset::new),
    ) else {
        return http::text(400, "bad internal channel-deleted");
    };
    let now = now_ms();
    let Some(meta) = channel_here(obj, &instance, now).await? else {
        return http::text(404, "no such channel");
    };
    // From here on there is no await until the mark and the row are written together.
    let store = obj.store()?;
    if !ch::admits_deleted(store.channel_mark(&source, &incarnation)?) {
        return mark_reply(ch::DELETED_MARK);
    }
    let mut body = Vec::new();
    ch::write_deleted_envelope(&source, offset, &mut body);
    body.push(b',');
    append_envelopes(
        obj,
        meta,
        body,
        &source,
        &incarnation,
        ch::DELETED_MARK,
        now,
    )
    .await
}

fn mark_reply(mark: u64) -> Result<Response> {
    crate::subscription::json(200, &serde_json::json!({ "mark": mark }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(channel: &str, forwarded: u64) -> ChannelLink {
        ChannelLink {
            channel: channel.to_string(),
            instance: "c1".to_string(),
            forwarded: Offset::new(forwarded).unwrap_or_default(),
            failures: 0,
            closed_sent: false,
            announce: false,
        }
    }

    #[test]
    fn forwarded_is_stored_once_every_so_many_batches_and_when_more_than_it_changes() {
        let f = Forwarder::default();
        let stored = |f: &Forwarder, channel: &str, at: u64, changed: bool| {
            f.took(&link(channel, at), "s1", changed)
        };
        for at in 1..STORE_FORWARDED_EVERY {
            assert!(!stored(&f, "a", u64::from(at), false), "batch {at}");
        }
        assert_eq!(
            f.ahead.borrow()[0].forwarded,
            Offset::new(15).unwrap_or_default()
        );
        assert!(stored(&f, "a", 16, false));
        assert!(f.ahead.borrow().is_empty());
        // Another channel counts its own batches; a change is stored at once.
        assert!(!stored(&f, "a", 17, false));
        assert!(!stored(&f, "b", 1, false));
        assert!(stored(&f, "b", 2, true));
        assert_eq!(f.ahead.borrow().len(), 1);
        // Another incarnation of the source is another link.
        assert!(!f.took(&link("a", 1), "s2", false));
        assert_eq!(f.ahead.borrow().len(), 2);
        f.stored(&link("a", 17), "s1");
        assert_eq!(f.ahead.borrow()[0].incarnation, "s2");
    }

    #[test]
    fn positions_of_links_no_longer_stored_are_forgotten() {
        let f = Forwarder::default();
        assert!(!f.took(&link("a", 5), "s1", false));
        assert!(!f.took(&link("b", 7), "s1", false));
        // "a" was deleted and created again: its new incarnation's link replaced the old one.
        let mut again = link("a", 3);
        again.instance = "c2".to_string();
        let mut links = vec![again, link("b", 2)];
        f.place(&mut links, "s1");
        assert_eq!(f.kept(), 1);
        assert_eq!(links[0].forwarded, Offset::new(3).unwrap_or_default());
        assert_eq!(links[1].forwarded, Offset::new(7).unwrap_or_default());
        assert!(!f.took(&links[0], "s1", false));
        assert_eq!(f.kept(), 2);
        // A source incarnation's positions are not another's.
        f.place(&mut links, "s2");
        assert_eq!(f.kept(), 0);
    }
}
