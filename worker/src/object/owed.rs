//! Work a stream owes other objects after a commit: the registry (`subscribers.rs`), the
//! subscriptions linked to it (`subscribers.rs`), the channels it fed (`channel.rs`) and, for
//! a fork, its source (`fork.rs`).
//!
//! Each piece is a `pending` row ([`Task`]) written in the turn that makes it owed, with the
//! alarm set in that same turn (`alarm.rs`): should the isolate die before the other object
//! answers, the alarm finishes the work. Failures are retried with backoff. An append's
//! notification of its subscriptions is the exception: the alarm alone records it, and the
//! alarm finds it owed when the subscriptions may not have the stream's tail
//! ([`subscribers::tell_untold`]).

use worker::Result;

use super::store::Task;
use super::{alarm, channel, fork, subscribers, StreamObject};
use crate::http::now_ms;

/// Runs what is owed, in order (from the alarm, only what is due), from a request `hops`
/// deep, and answers what is still owed. A task that fails is retried with backoff, and the
/// tasks after it wait for it (but for independent ones): a removed incarnation leaves the
/// registry before a new one joins. Runs one at a time.
pub async fn run(obj: &StreamObject, due_only: bool, hops: u32) -> Result<Vec<Task>> {
    let _turn = obj.owed_turn.enter().await;
    // An object holding nothing owes nothing; asking would make its tables again.
    if obj.never_stored() {
        return Ok(Vec::new());
    }
    let now = now_ms();
    // The subscriptions this run may call, shared by a registration and an owed notification.
    let budget = subscribers::Budget::new(obj);
    // The alarm tells the subscriptions an append's turn set it for, as far as this instance
    // knows they may not have the tail (a request's run leaves that to the alarm).
    if due_only {
        if let Err(e) = subscribers::tell_untold(obj, &budget).await {
            // Nothing may record it but the alarm: it comes back after the first backoff.
            worker::console_warn!("stream: telling subscriptions the tail failed: {e}");
            alarm::by(obj, now_ms() + super::backoff_ms(0)).await?;
        }
    }
    // A task before is still owed: those that depend on it wait.
    let mut waiting = false;
    for owed in obj.store()?.owed()? {
        if waiting && !owed.task.independent() {
            continue;
        }
        if due_only && owed.due_ms > now {
            waiting = true;
            continue;
        }
        let done = match owed.task {
            Task::Deregister => subscribers::deregister(obj, &owed.detail).await,
            Task::ChannelsDeleted => channel::tell_deleted(obj).await,
            Task::Register => subscribers::register(obj, &budget).await,
            Task::Notify => subscribers::notify_owed(obj, &owed.detail, &budget).await,
            Task::Release => fork::give_back(obj, hops).await,
            Task::LinkBelow => subscribers::link_below(obj).await,
        };
        let done = done.unwrap_or_else(|e| {
            let meta = obj.meta().ok().flatten();
            let path = meta.as_ref().map_or("(deleted)", |m| m.path.as_str());
            worker::console_warn!("stream {path}: {:?} failed: {e}", owed.task);
            false
        });
        if !done {
            obj.store()?
                .failed(owed.task, now_ms() + super::backoff_ms(owed.attempts))?;
            waiting = true;
        }
    }
    obj.faults.notified(budget.spent());
    let left = obj.store()?.owed()?;
    let shortly = now_ms() + 200;
    // Not sooner than shortly: a task left in place (its stream changed while it ran) is run
    // again then, not in a loop. But a notification pass under way, and a channel's linking,
    // go on at once: each invocation moves them on by a batch of calls.
    let soonest = left
        .iter()
        .map(|o| {
            match (o.task == Task::Notify && !o.detail.is_empty()) || o.task == Task::LinkBelow {
                true => o.due_ms,
                false => o.due_ms.max(shortly),
            }
        })
        .min();
    if let Some(due) = soonest {
        alarm::by(obj, due).await?;
    } else if obj.meta()?.is_none() {
        // All done for a stream that is gone: its storage is given back, if it holds nothing
        // else (checked there, in one turn).
        obj.give_back_storage()?;
    }
    Ok(left.into_iter().map(|o| o.task).collect())
}

/// The alarm fired: what is due runs.
pub async fn on_alarm(obj: &StreamObject) {
    if let Err(e) = run(obj, true, 0).await {
        worker::console_error!("stream: owed work failed: {e}");
    }
}
