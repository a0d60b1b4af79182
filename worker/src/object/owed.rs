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

use super::store::{Owed, Task};
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
    if let Some(due) = next_due(&left, now_ms()) {
        alarm::owed_by(obj, due).await?;
    } else if obj.meta()?.is_none() {
        // All done for a stream that is gone: its storage is given back, if it holds nothing
        // else (checked there, in one turn).
        obj.give_back_storage()?;
    } else {
        // All done (a retried PUT finished the registration the alarm was set for): the
        // alarm goes back to the stream's own timed work.
        alarm::stand_down(obj);
    }
    Ok(left.into_iter().map(|o| o.task).collect())
}

/// A task left in place (its stream changed while it ran) runs again this long after, not in
/// a loop.
const AGAIN_MS: i64 = 200;

/// When the alarm is next needed for `left`, what is still owed (in order, as
/// [`super::store::Store::owed`] reads it), at `now`: the earliest time a task can move on.
///
/// Each task is due at its own time, not sooner than [`AGAIN_MS`] from now; but a notification
/// pass under way, and a channel's linking, go on at once, since each invocation moves them
/// on by a batch of calls. A task that depends on those before it cannot run before the first
/// of them still owed has run: it is woken at that one's time (its backoff, if it failed), not
/// its own, so a task waiting behind a failing one does not wake the object every
/// [`AGAIN_MS`] (or at once, for a notification pass) for nothing while the failing one backs
/// off. The alarm that runs the first one runs those behind it too, in the same invocation.
/// A task owed is never left without an alarm: `None` only when nothing is left.
fn next_due(left: &[Owed], now: i64) -> Option<i64> {
    let own = |o: &Owed| match (o.task == Task::Notify && !o.detail.is_empty())
        || o.task == Task::LinkBelow
    {
        true => o.due_ms,
        false => o.due_ms.max(now + AGAIN_MS),
    };
    let first_dependent = left.iter().find(|o| !o.task.independent()).map(own);
    let independent = left.iter().filter(|o| o.task.independent()).map(own);
    first_dependent.into_iter().chain(independent).min()
}

/// The alarm fired: what is due runs.
pub async fn on_alarm(obj: &StreamObject) {
    if let Err(e) = run(obj, true, 0).await {
        worker::console_error!("stream: owed work failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::{next_due, Owed, Task, AGAIN_MS};

    const NOW: i64 = 1_000_000;

    fn owed(task: Task, due_ms: i64, detail: &str) -> Owed {
        Owed {
            task,
            attempts: 1,
            due_ms,
            detail: detail.to_string(),
        }
    }

    #[test]
    fn nothing_owed_needs_no_alarm() {
        assert_eq!(next_due(&[], NOW), None);
    }

    #[test]
    fn a_task_waiting_behind_a_failing_one_is_woken_at_its_backoff() {
        // A removed incarnation's deregistration backs off; the new one's registration waits.
        let left = [
            owed(Task::Deregister, NOW + 4_000, "s"),
            owed(Task::Register, NOW - 5, ""),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 4_000));
        // And its channels' `deleted` events, behind it too.
        let left = [
            owed(Task::Deregister, NOW + 8_000, "s"),
            owed(Task::ChannelsDeleted, NOW, "[]"),
            owed(Task::Register, NOW, ""),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 8_000));
    }

    #[test]
    fn a_notification_pass_waiting_behind_a_failing_task_does_not_run_hot() {
        let left = [
            owed(Task::Register, NOW + 2_000, ""),
            owed(Task::Notify, NOW - 100, r#"{"after":"sub-b","tail":"0"}"#),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 2_000));
        // Not behind anything, a pass under way goes on at once.
        let left = [owed(Task::Notify, NOW - 100, r#"{"after":"sub-b"}"#)];
        assert_eq!(next_due(&left, NOW), Some(NOW - 100));
    }

    #[test]
    fn the_first_task_still_owed_is_woken_at_its_own_time_but_not_in_a_loop() {
        // Left in place (its stream changed while it ran): again shortly, with those after it.
        let left = [
            owed(Task::Register, NOW - 10, ""),
            owed(Task::Notify, NOW + 30_000, ""),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + AGAIN_MS));
        // An untold tail owed behind a failing registration keeps an alarm: the registration's.
        let left = [
            owed(Task::Register, NOW + 60_000, ""),
            owed(Task::Notify, NOW, ""),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 60_000));
    }

    #[test]
    fn independent_tasks_keep_their_own_time() {
        let link = owed(Task::LinkBelow, NOW, "500");
        let left = [owed(Task::Deregister, NOW + 16_000, "s"), link.clone()];
        assert_eq!(next_due(&left, NOW), Some(NOW));
        let left = [
            owed(Task::Register, NOW + 16_000, ""),
            owed(Task::Release, NOW + 1_000, "[]"),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 1_000));
        // One failing does not hold up the dependent ones before it.
        let left = [
            owed(Task::Register, NOW + 3_000, ""),
            owed(Task::LinkBelow, NOW + 32_000, "500"),
        ];
        assert_eq!(next_due(&left, NOW), Some(NOW + 3_000));
    }
}
