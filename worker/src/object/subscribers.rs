//! The stream's side of the registry and of subscriptions: register with the registry when
//! created (which links the subscriptions and channels that cover the stream), tell linked
//! subscriptions about every new tail, and deregister when removed.
//!
//! Each of these is owed work (`owed.rs`). A create is answered 201 only once the registry has
//! the stream (else 503, and the retried PUT finishes it), so a stream is never left unknown to
//! the channels and patterns above it. Notifications are owed in the append's own turn and
//! awaited before it is acknowledged; one that fails stays owed, not passed to the appender,
//! whose data is stored, and one a crash cut off is made by the alarm.

use edgestream::Offset;
use serde_json::{json, Value};
use worker::Result;

use super::store::{Meta, Task};
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
    let now = now_ms();
    store.owe(Task::Deregister, now, meta.name())?;
    obj.alarm.set(now + super::SAFETY_MS);
    Ok(())
}

/// Whether the stream is registered, finishing what is owed first if its registration is (a
/// create, or a PUT that finds a create answered 503).
pub async fn registered(obj: &StreamObject) -> Result<bool> {
    let owes = obj
        .store()?
        .owed()?
        .iter()
        .any(|o| o.task == Task::Register);
    Ok(!owes || !owed::run(obj, false, 0).await?.contains(&Task::Register))
}

/// Learns which subscriptions and channels cover the stream and links them, settling the task
/// in the same turn; then tells those subscriptions where the stream is and feeds those
/// channels from its start.
pub async fn register(obj: &StreamObject) -> Result<bool> {
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
    // request of the registry's own, so no one request makes too many calls between objects.
    let ids = loop {
        let (status, reply) =
            call::<_, SubscriptionIds>(&registry_stub(&obj.env)?, "stream-created", &created)
                .await?;
        let Some(ids) = reply.filter(|_| status == 200) else {
            worker::console_warn!("stream {}: registry answered {status}", meta.path);
            return Ok(false);
        };
        obj.faults.registry_read(ids.rows_read);
        if !ids.more {
            break ids;
        }
    };
    // Removed, or created again, while the registry answered: that incarnation's own tasks
    // are in the table instead.
    let Some(meta) = obj.meta()?.filter(|m| m.instance == meta.instance) else {
        return Ok(true);
    };
    let store = obj.store()?;
    for id in &ids.subs {
        store.add_subscriber(id)?;
    }
    channel::link(obj, &meta, &ids.channels, after)?;
    store.settle(Task::Register)?;
    if !ids.subs.is_empty() {
        notify_or_owe(obj, &meta, &ids.subs).await?;
    }
    channel::forward(obj).await;
    Ok(true)
}

/// An append owes its subscriptions the new tail: called in the turn that stores it, with the
/// alarm, so that a crash before they are told (the append stored, its answer lost) leaves it
/// to the alarm. [`appended`] settles it once they have it.
pub fn owe_notification(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let store = obj.store()?;
    if store.subscribers()?.is_empty() {
        return Ok(());
    }
    let due = now_ms() + super::SAFETY_MS;
    store.owe(Task::Notify, due, "")?;
    obj.alarm.arm(meta, due);
    Ok(())
}

/// After an append: every linked subscription learns the new tail.
pub async fn appended(obj: &StreamObject, meta: &Meta) -> Result<()> {
    let subs = obj.store()?.subscribers()?;
    if subs.is_empty() {
        return Ok(());
    }
    obj.faults.check(&meta.path, Call::NotifyCut)?;
    if notify(obj, meta, &subs).await? {
        settle_if_current(obj, meta)?;
        return Ok(());
    }
    owe_retry(obj).await
}

/// Notifies `subs`; should any fail, the notification is owed and the alarm retries it.
async fn notify_or_owe(obj: &StreamObject, meta: &Meta, subs: &[String]) -> Result<()> {
    if notify(obj, meta, subs).await? {
        return Ok(());
    }
    owe_retry(obj).await
}

/// A notification failed: the alarm tries again after the first backoff.
async fn owe_retry(obj: &StreamObject) -> Result<()> {
    let due = now_ms() + super::backoff_ms(0);
    obj.store()?.owe(Task::Notify, due, "")?;
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

/// The owed notification: every linked subscription learns the tail as it is now.
pub async fn notify_owed(obj: &StreamObject) -> Result<bool> {
    let store = obj.store()?;
    let Some(meta) = obj.meta()?.filter(|m| !m.deleted) else {
        store.settle(Task::Notify)?;
        return Ok(true);
    };
    let subs = store.subscribers()?;
    if !notify(obj, &meta, &subs).await? {
        return Ok(false);
    }
    settle_if_current(obj, &meta)?;
    Ok(true)
}

/// Tells each of `subs` the stream's tail; whether every one of them has it. A subscription
/// that no longer links the stream is dropped.
async fn notify(obj: &StreamObject, meta: &Meta, subs: &[String]) -> Result<bool> {
    if subs.is_empty() {
        return Ok(true);
    }
    let message = Notify {
        path: meta.name().to_string(),
        tail: meta.tail.position(),
    };
    let message = &message;
    let env = &obj.env;
    // An injected fault stands for the first subscription being unreachable.
    let mut fault = obj.faults.check(&meta.path, Call::Notify).err();
    let calls = subs.iter().map(|id| {
        let fault = fault.take();
        async move {
            let result = match (fault, subscription_stub(env, id)) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(stub)) => call::<_, Value>(&stub, "notify", &message).await,
            };
            (id, result)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let store = obj.store()?;
    let mut all = true;
    for (id, result) in results {
        match result {
            Ok((200, Some(reply))) if reply["linked"] == json!(false) => {
                store.remove_subscriber(id)?
            }
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
