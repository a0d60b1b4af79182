//! The subscription's one alarm: it delivers owed wakes (`wake.rs`), ends expired leases, and
//! goes on linking a new subscription's streams (`LINK_PAGES_PER_INVOCATION` pages each time,
//! set again at once while pages are left) or unlinking a deleted one (`links.rs`). One
//! invocation may do both: the linking, then the delivery.

use edgestream::subscription as rules;
use worker::Result;

use super::store::{Kind, Record};
use super::SubscriptionObject;
use crate::http::now_ms;

impl SubscriptionObject {
    pub(super) async fn set_alarm(&self, at_ms: i64) -> Result<()> {
        let when = js_sys::Date::new(&js_sys::Number::from(at_ms as f64));
        self.state
            .storage()
            .set_alarm(worker::ScheduledTime::new(when))
            .await
    }

    /// Sets the alarm for whatever the record owes next ([`alarm_due`]), and with nothing owed
    /// deletes the one set before (for a lease that ended with an ack or a release, or a
    /// delivery whose wake ended): every invocation is billed, and one that finds nothing to do
    /// is waste. It is read first, so that an alarm not set is not deleted.
    pub(super) async fn schedule(&self, record: &Record) -> Result<()> {
        if let Some(at) = alarm_due(record, now_ms()) {
            return self.set_alarm(at).await;
        }
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_some() {
            storage.delete_alarm().await?;
        }
        Ok(())
    }

    pub(super) async fn on_alarm(&self) -> Result<()> {
        let Some(mut record) = self.load()? else {
            return Ok(());
        };
        let now = now_ms();
        if record.deleted {
            if record.unlinking {
                if record.link_retry_at.is_some_and(|t| t > now) {
                    return self.schedule(&record).await;
                }
                let _turn = self.changes.enter().await;
                // Unless created again while it waited for its turn.
                if let Some(current) = self.load()?.filter(|r| r.deleted && r.unlinking) {
                    self.unlink(current).await?;
                }
            }
            return Ok(());
        }
        if (record.linking || record.placing) && record.link_retry_at.is_none_or(|t| t <= now) {
            let turn = self.changes.enter().await;
            // Unless deleted, or created again, while it waited for its turn. A failure is
            // logged and rescheduled there.
            if let Some(current) = self
                .load()?
                .filter(|r| !r.deleted && (r.linking || r.placing) && r.epoch == record.epoch)
            {
                let _ = self.finish_links(&current).await;
            }
            drop(turn);
            let Some(current) = self.load()?.filter(|r| !r.deleted) else {
                return Ok(());
            };
            record = current;
        }
        // An expired lease frees the subscription; pending work wakes it again, after the
        // backoff, as a lapse without an ack is a failure ([`Self::lease_lapsed`]). (No lease
        // runs while a delivery is owed: that is retried until it succeeds or, after
        // `DELIVERY_GIVE_UP_MS` of failures, gives up and ends the wake.)
        if !record.deliver && record.lease_deadline.is_some_and(|d| d <= now) {
            self.lease_lapsed(&mut record)?;
        }
        if record.deliver && record.next_attempt_at.is_none_or(|t| t <= now) {
            // Saved before the delivery is awaited: other requests (a claim prompted by the
            // wake event, a webhook's callback) may run meanwhile, and must see this state.
            self.save(&record)?;
            let wake = (record.wake_id.clone(), record.generation);
            let delivered = match record.kind {
                Kind::Webhook => self.post_webhook(&record).await,
                // The wake event is in the wake stream; claims take it from here.
                Kind::PullWake => self.post_wake_event(&record).await.map(|()| false),
            };
            // Requests that ran meanwhile (a claim, a callback, an ack, a release) win: the
            // outcome counts only for the wake that is still owed, or, for an answer of
            // `{"done": true}`, still current (a callback during the delivery counted it
            // delivered, and the answer then ends it).
            let Some(current) = self.load()?.filter(|r| !r.deleted) else {
                return Ok(());
            };
            record = current;
            let owed = record.deliver || matches!(delivered, Ok(true));
            if owed && (record.wake_id.clone(), record.generation) == wake {
                self.delivery_outcome(&mut record, delivered)?;
            } else if let Err(e) = delivered {
                worker::console_warn!("subscription {}: delivery failed: {e}", record.id);
            }
        }
        self.save(&record)?;
        self.schedule(&record).await
    }
}

/// When the alarm is next needed for what `record` owes at `now`: a delivery, a lease's end, or
/// the next try at linking (or placing named streams), or, once deleted, at unlinking. `None`
/// when it owes none of these: a pull-wake's event written waits for a claim, and retries that
/// stopped wait for new data or a `PUT`, neither of them the alarm's.
fn alarm_due(record: &Record, now: i64) -> Option<i64> {
    if record.deleted {
        return record.link_retry_at.filter(|_| record.unlinking);
    }
    let wake = rules::next_alarm(
        record.deliver,
        record.next_attempt_at,
        record.lease_deadline,
        now,
    );
    let linking = record
        .link_retry_at
        .filter(|_| record.linking || record.placing);
    wake.into_iter().chain(linking).min()
}
