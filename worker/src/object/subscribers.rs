//! The stream's side of the registry and of subscriptions: register with the registry when
//! created (which links the subscriptions and channels that cover the stream), tell linked
//! subscriptions about every new tail, and deregister when removed.
//!
//! Each of these is owed work (`owed.rs`). A create is answered 201 only once the registry has
//! the stream (else 503, and the retried PUT finishes it), so a stream is never left unknown to
//! the channels and patterns above it. Notifications are awaited before an append is
//! acknowledged; one that fails stays owed (a `pending` row), not passed to the appender, whose
//! data is stored, and one a crash cut off is made by the alarm.
//!
//! Each notification is "the tail as it is now", so a later one supersedes an earlier one, and
//! telling a subscription a tail it has costs it nothing. So an append that tells its
//! subscriptions inline writes no row for it: the alarm its turn sets (committed with the
//! append's row) is the record that a notification may be outstanding. This instance knows
//! the tail it last told every subscription ([`Told`]); the alarm tells them again when the
//! stream's tail is not that one, which in an instance that has told them nothing (the object
//! restarted, after a crash or an eviction) is any tail. `alarm::stand_down` leaves the alarm
//! set while a tail is untold, so a request that finishes first does not clear it under an
//! append whose notification is still on its way.
//!
//! A stream with more subscriptions than one invocation may call (`LINKS_PER_CALL`, since each
//! is a call between objects, which Cloudflare limits per request) is not told inline: its
//! append owes the notification in a `pending` row in its own turn and is acknowledged at once,
//! and the alarm tells the subscriptions in passes, in id order, `LINKS_PER_CALL` per
//! invocation, keeping its place (the last id told) in the owed row ([`Pass`]) and running again
//! at once for the next batch. An append during a pass does not move its place, so the
//! subscriptions late in the order are told as often as the early ones; a pass that ends with
//! the tail moved since it began starts another from the first, and one in which a call failed
//! starts another after the usual backoff.

use std::cell::{Cell, RefCell};

use edgestream::Offset;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker::Result;

use super::store::{Meta, Task, Unannounced};
use super::{alarm, channel, owed, StreamObject};
use crate::fault::Call;
use crate::http::now_ms;
use crate::subscription::object::Notify;
use crate::subscription::registry::{CreatedStream, StreamPath, SubscriptionIds};
use crate::subscription::{call, registry_stub, subscription_stub};

/// A new stream owes its registration: called in the turn that stores it. `after` is where an
/// initial body too large for a channel ends, when the registry knew of no channel above it:
/// a channel the registration finds is fed from there ([`channel::link`]).
pub fn owe_registration(obj: &StreamObject, meta: &Meta, after: Option<Offset>) -> Result<()> {
    let now = now_ms();
    let detail = after.map(|end| end.to_string()).unwrap_or_default();
    obj.store()?.owe(Task::Register, now, &detail)?;
    obj.alarm.arm(meta, now + super::SAFETY_MS);
    Ok(())
}

/// A removed stream owes its deregistration instead of anything else: called in the turn that
/// purges it.
pub fn owe_deregistration(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let store = obj.store()?;
    store.settle(Task::Register)?;
    store.settle(Task::Notify)?;
    store.settle(Task::LinkBelow)?;
    let now = now_ms();
    store.owe(Task::Deregister, now, meta.name())?;
    obj.alarm.set(now + super::SAFETY_MS);
    Ok(())
}

/// Whether the stream is registered, finishing what is owed first if its registration is (a
/// create, or a PUT that finds a create answered 503).
pub async fn registered(obj: &StreamObject) -> Result<bool> {
    Ok(!owes_registration(obj)? || !owed::run(obj, false, 0).await?.contains(&Task::Register))
}

/// Whether the stream's registration is still owed.
pub fn owes_registration(obj: &StreamObject) -> Result<bool> {
    Ok(obj
        .store()?
        .owed()?
        .iter()
        .any(|o| o.task == Task::Register))
}

/// A PUT of a channel still linking the streams below it: what is owed runs now, its linking
/// `LINK_PAGES_PER_INVOCATION` pages on from where it stands (one run at a time: the alarm's
/// run, if under way, finishes first, and this one goes on from there). A failure stays owed,
/// retried by the alarm; the channel itself exists, so the PUT is answered all the same.
pub async fn link_more(obj: &StreamObject) -> Result<()> {
    owed::run(obj, false, 0).await.map(drop)
}

/// Learns which subscriptions and channels cover the stream and links them, settling the task
/// in the same turn; then tells those subscriptions where the stream is and feeds those
/// channels from its start.
pub async fn register(obj: &StreamObject, budget: &Budget) -> Result<bool> {
    let Some(meta) = obj.meta()? else {
        obj.store()?.settle(Task::Register)?;
        return Ok(true);
    };
    // Where a too-large initial body ends (an empty detail: linked from the start).
    let after = obj
        .store()?
        .owed()?
        .into_iter()
        .find(|o| o.task == Task::Register)
        .and_then(|o| Offset::parse(&o.detail).ok());
    obj.faults.check(&meta.path, Call::RegistryCreated)?;
    let created = CreatedStream {
        path: meta.name().to_string(),
        channel: meta.channel.then(|| meta.instance.clone()),
    };
    // A channel over many streams is linked to them over several calls, each of them a
    // request of the registry's own, so no one request makes too many calls between objects;
    // and at most `LINK_PAGES_PER_INVOCATION` of them here, the rest owed ([`link_below`]).
    let Some(ids) = created_pages(obj, &meta.path, &created).await? else {
        return Ok(false);
    };
    // Removed, or created again, while the registry answered: that incarnation's own tasks
    // are in the table instead.
    let Some(meta) = obj.meta()?.filter(|m| m.instance == meta.instance) else {
        return Ok(true);
    };
    let store = obj.store()?;
    // In the turn that settles the registration: each is told the stream is new until it
    // has taken that, by this call or a retry (after a restart too).
    for (i, id) in ids.subs.iter().enumerate() {
        let epoch = ids.epochs.get(i).map_or("", String::as_str);
        store.add_created_subscriber(id, epoch)?;
    }
    channel::link(obj, &meta, &ids.channels, after)?;
    store.settle(Task::Register)?;
    if ids.more {
        // In the turn that settles the registration: the channel is answered 201, and its
        // alarm (set by `owed::run` after this) links the next pages at once.
        store.owe(Task::LinkBelow, now_ms(), &ids.linked.to_string())?;
    }
    if ids.subs.len() <= budget.left() {
        budget.spend(ids.subs.len());
        notify_or_owe(obj, &meta, &ids.subs).await?;
    } else {
        // Too many to tell in this invocation: the alarm's passes tell them, from now.
        store.owe_keeping(Task::Notify, now_ms())?;
    }
    channel::forward(obj).await;
    Ok(true)
}

/// Calls the registry's `stream-created` for `created`: once for a plain stream; for a
/// channel, again while it answers `more` (each call links a page of `LINKS_PER_CALL` streams
/// below it, going on from the place the registry keeps), at most
/// `LINK_PAGES_PER_INVOCATION` times. Its last answer, `more` if pages are left; `None` when
/// the registry failed (the page it was on is linked again by the next call).
async fn created_pages(
    obj: &StreamObject,
    path: &str,
    created: &CreatedStream,
) -> Result<Option<SubscriptionIds>> {
    let pages = obj.config.link_pages_per_invocation.max(1);
    let mut called = 0;
    loop {
        let asked = crate::fault::links_asked_of_slowreg();
        let (status, reply) =
            call::<_, SubscriptionIds>(&registry_stub(&obj.env)?, "stream-created", created)
                .await?;
        called += 1;
        obj.faults.check(path, Call::RegistryAnswerLost)?;
        obj.faults.hold_registration(path, asked).await;
        let Some(ids) = reply.filter(|_| status == 200) else {
            worker::console_warn!("stream {path}: registry answered {status}");
            return Ok(None);
        };
        obj.faults.registry_read(ids.rows_read, ids.rows_written);
        if !ids.more || called >= pages {
            return Ok(Some(ids));
        }
    }
}

/// A channel's owed linking of the streams below it (`Task::LinkBelow`): the next
/// `LINK_PAGES_PER_INVOCATION` pages, from where the registry's place for this incarnation
/// is. Settled when the registry has no more; else the count linked so far is kept in the
/// row, due at once, so the alarm goes on with the next pages. Whether it did not fail.
pub async fn link_below(obj: &StreamObject) -> Result<bool> {
    let store = obj.store()?;
    let Some(meta) = obj.meta()?.filter(|m| m.channel && !m.deleted) else {
        store.settle(Task::LinkBelow)?;
        return Ok(true);
    };
    let created = CreatedStream {
        path: meta.name().to_string(),
        channel: Some(meta.instance.clone()),
    };
    let Some(ids) = created_pages(obj, &meta.path, &created).await? else {
        return Ok(false);
    };
    // Deleted, or created again, meanwhile: deleting it settled the task, and a new
    // incarnation's registration starts its own.
    if !obj
        .meta()?
        .is_some_and(|m| m.instance == meta.instance && !m.deleted)
    {
        return Ok(true);
    }
    let store = obj.store()?;
    // Settled, and owed again if pages are left, in one turn: the next pages are due at once,
    // and their backoff, should one fail, starts again from the first.
    store.settle(Task::LinkBelow)?;
    if ids.more {
        store.owe(Task::LinkBelow, now_ms(), &ids.linked.to_string())?;
    }
    Ok(true)
}

/// While a channel is still linking the streams below it: how many are linked so far.
pub fn linking(obj: &StreamObject, meta: &Meta) -> Result<Option<u64>> {
    if !meta.channel {
        return Ok(None);
    }
    Ok(obj
        .store()?
        .owed()?
        .into_iter()
        .find(|o| o.task == Task::LinkBelow)
        .map(|o| o.detail.parse().unwrap_or(0)))
}

/// An append owes its subscriptions the new tail: called in the turn that stores it. It sets
/// the alarm in that turn, so that a crash before they are told (the append stored, its answer
/// lost) leaves it to the alarm ([`tell_untold`]); [`appended`] tells them.
///
/// With more subscriptions than [`inline`] allows, the alarm's passes tell them, from now: that
/// is owed in a `pending` row ([`writes_row`]), and a pass under way keeps its place.
pub fn owe_notification(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let store = obj.store()?;
    let count = store.subscribers()?.len();
    if count == 0 {
        return Ok(());
    }
    let now = now_ms();
    if inline(obj, count) {
        obj.alarm.arm(meta, now + super::SAFETY_MS);
        return Ok(());
    }
    store.owe_keeping(Task::Notify, now)?;
    obj.alarm.arm(meta, now);
    Ok(())
}

/// Whether [`owe_notification`] writes a row: the stream has more subscriptions than an
/// append tells inline.
pub fn writes_row(obj: &StreamObject) -> Result<bool> {
    let count = obj.store()?.subscribers()?.len();
    Ok(count > 0 && !inline(obj, count))
}

/// The tail this instance last told every subscription linked to the stream, and the
/// incarnation it is of. A subscription linked since learned the tail as it linked (or from
/// the registration that linked it), so it has that tail too.
#[derive(Default)]
pub struct Told(RefCell<Option<(String, Offset)>>);

impl Told {
    /// Every linked subscription has `meta`'s tail: kept unless a later tail of the same
    /// incarnation was told already (notifications may finish out of order).
    fn learn(&self, meta: &Meta) {
        let mut told = self.0.borrow_mut();
        if let Some((instance, tail)) = told.as_ref() {
            if *instance == meta.instance && *tail >= meta.tail {
                return;
            }
        }
        *told = Some((meta.instance.clone(), meta.tail));
    }

    /// Whether every linked subscription is known to have `meta`'s tail.
    fn has(&self, meta: &Meta) -> bool {
        let told = self.0.borrow();
        told.as_ref()
            .is_some_and(|(instance, tail)| *instance == meta.instance && *tail == meta.tail)
    }
}

/// Whether the stream has subscriptions that may not have its tail: this instance has not
/// told them that tail (an append's notification on its way or cut off, one owed in a
/// `pending` row, or an instance that has told them nothing yet).
pub fn untold(obj: &StreamObject) -> Result<bool> {
    let Some(meta) = obj.meta()?.filter(|m| !m.deleted) else {
        return Ok(false);
    };
    Ok(!obj.told.has(&meta) && !obj.store()?.subscribers()?.is_empty())
}

/// From the alarm, before the owed work: subscriptions that may not have the tail
/// ([`untold`]) are told it, here when they are few enough and nothing else is owed before
/// them; else the notification is owed, and the owed work runs it as any other. Telling a
/// subscription a tail it already has writes nothing there.
pub async fn tell_untold(obj: &StreamObject, budget: &Budget) -> Result<()> {
    if !untold(obj)? {
        return Ok(());
    }
    let store = obj.store()?;
    let owed = store.owed()?;
    // Owed already: run in its turn, after its backoff.
    if owed.iter().any(|o| o.task == Task::Notify) {
        return Ok(());
    }
    let subs = store.subscribers()?;
    if !owed.is_empty() || !inline(obj, subs.len()) || subs.len() > budget.left() {
        return store.owe_keeping(Task::Notify, now_ms());
    }
    let Some(meta) = obj.meta()? else {
        return Ok(());
    };
    budget.spend(subs.len());
    if notify(obj, &meta, &subs).await? {
        obj.told.learn(&meta);
        return Ok(());
    }
    owe_retry(obj).await
}

/// How many more subscriptions this run of the owed work may call. A registration's
/// notification and an owed notification's batch may both run in one invocation (a PUT that
/// finishes a registration, or the alarm, with a notification owed since an append whose
/// call failed): they share `LINKS_PER_CALL`, so together they stay within Cloudflare's
/// per-invocation limit on subrequests instead of making up to twice as many. What is left
/// over stays owed, and the alarm goes on with it at once.
pub struct Budget {
    left: Cell<usize>,
    spent: Cell<usize>,
}

impl Budget {
    /// A whole invocation's worth: `LINKS_PER_CALL`.
    pub fn new(obj: &StreamObject) -> Budget {
        Budget {
            left: Cell::new(per_call(obj)),
            spent: Cell::new(0),
        }
    }

    fn left(&self) -> usize {
        self.left.get()
    }

    fn spend(&self, calls: usize) {
        self.left.set(self.left.get().saturating_sub(calls));
        self.spent.set(self.spent.get() + calls);
    }

    /// How many subscriptions this run called.
    pub fn spent(&self) -> usize {
        self.spent.get()
    }
}

/// How many subscriptions one invocation (a request, or the alarm) may call: `LINKS_PER_CALL`.
fn per_call(obj: &StreamObject) -> usize {
    usize::try_from(obj.config.links_per_call)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Whether `count` subscriptions are few enough to tell in the request that moved the tail.
fn inline(obj: &StreamObject, count: usize) -> bool {
    count <= per_call(obj)
}

/// After an append: every linked subscription learns the new tail, here when they are few
/// enough, else from the alarm ([`owe_notification`] owed it due now).
pub async fn appended(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let subs = obj.store()?.subscribers()?;
    if subs.is_empty() {
        return Ok(());
    }
    obj.faults.check(&meta.path, Call::NotifyCut)?;
    if !inline(obj, subs.len()) {
        return Ok(());
    }
    if notify(obj, meta, &subs).await? {
        obj.told.learn(meta);
        settle_if_current(obj, meta)?;
        return Ok(());
    }
    owe_retry(obj).await
}

/// Notifies `subs` (the subscriptions the stream's registration found); should any fail, the
/// notification is owed and the alarm retries it.
async fn notify_or_owe(obj: &StreamObject, meta: &Meta, subs: &[String]) -> Result<()> {
    if notify(obj, meta, subs).await? {
        // Every linked subscription has the tail only if each was among those told.
        if obj
            .store()?
            .subscribers()?
            .iter()
            .all(|id| subs.contains(id))
        {
            obj.told.learn(meta);
        }
        return Ok(());
    }
    owe_retry(obj).await
}

/// A notification failed: the alarm tries again after the first backoff.
async fn owe_retry(obj: &StreamObject) -> Result<()> {
    let due = now_ms() + super::backoff_ms(0);
    obj.store()?.owe_keeping(Task::Notify, due)?;
    alarm::by(obj, due).await
}

/// The subscriptions have `meta`'s tail: nothing is owed them unless the stream has moved on
/// since (an append meanwhile owes its own notification).
fn settle_if_current(obj: &StreamObject, meta: &Meta) -> Result<()> {
    if obj
        .meta()?
        .is_some_and(|m| m.instance == meta.instance && m.tail == meta.tail)
    {
        obj.store()?.settle(Task::Notify)?;
    }
    Ok(())
}

/// Where a pass of the owed notification is, kept in its owed row's detail between
/// invocations (an empty detail: a pass not begun).
#[derive(Default, Serialize, Deserialize)]
struct Pass {
    /// The last subscription told, by id: those added or removed meanwhile do not move it.
    after: Option<String>,
    /// The tail the pass began with, which the first subscriptions were told.
    tail: Option<String>,
    /// Whether a call in this pass failed.
    #[serde(default)]
    failed: bool,
}

/// The owed notification, from where its pass is (`detail`): the next subscriptions, as many
/// as `budget` has left (`LINKS_PER_CALL` in an invocation that told no others), learn the
/// tail as it is now; with none left, it stays owed for the next invocation. Whether the pass
/// may go on: `false` once a pass in which a call failed is over, so the next pass waits for
/// the backoff.
pub async fn notify_owed(obj: &StreamObject, detail: &str, budget: &Budget) -> Result<bool> {
    let store = obj.store()?;
    let Some(meta) = obj.meta()?.filter(|m| !m.deleted) else {
        store.settle(Task::Notify)?;
        return Ok(true);
    };
    if budget.left() == 0 {
        // Owed as it was: the alarm, set for when it is due, goes on.
        return Ok(true);
    }
    // A pass not begun, or a detail not understood, begins at the first subscription.
    let pass: Pass = serde_json::from_str(detail).unwrap_or_default();
    let began = pass.tail.unwrap_or_else(|| meta.tail.to_string());
    let batch = batch_after(&store.subscribers()?, pass.after.as_deref(), budget.left()).to_vec();
    budget.spend(batch.len());
    let failed = !notify(obj, &meta, &batch).await? || pass.failed;
    // Removed meanwhile (which settled this) and perhaps created again (which owes its own).
    let Some(now_meta) = obj
        .meta()?
        .filter(|m| m.instance == meta.instance && !m.deleted)
    else {
        return Ok(true);
    };
    let store = obj.store()?;
    let now = now_ms();
    // Subscriptions linked meanwhile past the last one told are told in this pass; those linked
    // before it learned the tail as they linked, and are told in the next pass, if any.
    let subs = store.subscribers()?;
    if let Some(last) = batch
        .last()
        .filter(|last| !batch_after(&subs, Some(last), 1).is_empty())
    {
        let next = Pass {
            after: Some(last.clone()),
            tail: Some(began),
            failed,
        };
        store.carry_on(Task::Notify, now, &json!(next).to_string())?;
        return Ok(true);
    }
    // The pass is over: the next, if any, begins at the first subscription.
    if failed {
        store.carry_on(Task::Notify, now, "")?;
        return Ok(false);
    }
    match now_meta.tail.to_string() == began {
        true => {
            store.settle(Task::Notify)?;
            obj.told.learn(&now_meta);
        }
        // The tail moved since the first were told.
        false => store.carry_on(Task::Notify, now, "")?,
    }
    Ok(true)
}

/// The next batch of a pass: the first `per_call` of `subs` (in id order, as
/// [`super::store::Store::subscribers`] reads them) whose ids come after `after`, the last one
/// told. By id, not by index, so subscriptions removed or linked meanwhile move no one's place.
fn batch_after<'a>(subs: &'a [String], after: Option<&str>, per_call: usize) -> &'a [String] {
    let start = after.map_or(0, |after| subs.partition_point(|id| id.as_str() <= after));
    let end = start.saturating_add(per_call).min(subs.len());
    &subs[start..end]
}

/// Tells each of `subs` the stream's tail; whether every one of them has it. A subscription
/// that no longer links the stream is dropped, unless a subscription linked the stream while
/// the calls were out (one deleted answers so, and one created again under its id may have
/// linked the stream meanwhile: its entry is the same row); a later notification drops it
/// then. One the stream's registration found that has not yet taken it is told the stream is
/// new (`created`), naming the incarnation found, so while it is still linking its pattern's
/// streams it covers this one from its start: the first notification, or any retry of it,
/// whenever it comes.
async fn notify(obj: &StreamObject, meta: &Meta, subs: &[String]) -> Result<bool> {
    if subs.is_empty() {
        return Ok(true);
    }
    let unannounced = obj.store()?.unannounced()?;
    let message = |created: Option<&Unannounced>| Notify {
        path: meta.name().to_string(),
        tail: meta.tail.position(),
        created: created.is_some(),
        epoch: created
            .map(|u| u.epoch.clone())
            .filter(|epoch| !epoch.is_empty()),
    };
    let plain = &message(None);
    let env = &obj.env;
    let linked_before = obj.sub_links.get();
    obj.faults.notified(subs.len());
    // An injected fault stands for the first subscription being unreachable (or, during an
    // injected outage, every one).
    let mut fault = obj.faults.check(&meta.path, Call::Notify).err();
    let now = now_ms();
    let calls = subs.iter().map(|id| {
        let fault = fault
            .take()
            .or_else(|| obj.faults.notify_outage(&meta.path, now).err());
        let new = unannounced
            .iter()
            .find(|u| u.id == *id)
            .map(|u| message(Some(u)));
        async move {
            let result = match (fault, subscription_stub(env, id)) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(stub)) => {
                    call::<_, Value>(&stub, "notify", new.as_ref().unwrap_or(plain)).await
                }
            };
            (id, new.is_some(), result)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let store = obj.store()?;
    let relinked = obj.sub_links.get() != linked_before;
    let mut all = true;
    for (id, new, result) in results {
        match result {
            Ok((200, Some(reply))) if reply["linked"] == json!(false) => {
                if !relinked {
                    store.remove_subscriber(id)?
                }
            }
            Ok((200, _)) if new => store.told_created(id)?,
            Ok((200, _)) => {}
            Ok((status, _)) => {
                all = false;
                worker::console_warn!("subscription {id}: notify answered {status}")
            }
            Err(e) => {
                all = false;
                worker::console_warn!("subscription {id}: notify failed: {e}")
            }
        }
    }
    Ok(all)
}

/// The registry forgets `path`: patterns no longer find it, and its subscriptions learn it is
/// gone.
pub async fn deregister(obj: &StreamObject, path: &str) -> Result<bool> {
    obj.faults.check(path, Call::RegistryRemoved)?;
    let path = StreamPath {
        path: path.to_string(),
    };
    let (status, _) = call::<_, Value>(&registry_stub(&obj.env)?, "stream-removed", &path).await?;
    if status != 200 {
        worker::console_warn!(
            "stream {}: registry answered {status} to removal",
            path.path
        );
        return Ok(false);
    }
    obj.store()?.settle(Task::Deregister)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::batch_after;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_pass_goes_through_every_subscription_in_batches() {
        let subs = ids(&["a", "b", "c", "d", "e", "f", "g"]);
        let mut told = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let batch = batch_after(&subs, after.as_deref(), 3);
            assert!(batch.len() <= 3);
            told.extend_from_slice(batch);
            match batch.last() {
                Some(last) if !batch_after(&subs, Some(last), 1).is_empty() => {
                    after = Some(last.clone())
                }
                _ => break,
            }
        }
        assert_eq!(told, subs);
    }

    #[test]
    fn the_place_is_an_id_so_removals_and_links_meanwhile_move_no_one() {
        // "c" was told last; it and "b" are removed, "a0" and "d0" linked.
        let subs = ids(&["a", "a0", "d", "d0", "e"]);
        assert_eq!(batch_after(&subs, Some("c"), 2), &ids(&["d", "d0"])[..]);
        assert_eq!(batch_after(&subs, Some("d0"), 2), &ids(&["e"])[..]);
        assert!(batch_after(&subs, Some("e"), 2).is_empty());
        assert_eq!(batch_after(&subs, None, 2), &ids(&["a", "a0"])[..]);
        assert!(batch_after(&[], None, 2).is_empty());
    }
}
