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

    /// Sets the alarm for whatever the record owes next: a delivery, a lease expiry, or
    /// finishing linking or unlinking.
    pub(super) async fn schedule(&self, record: &Record) -> Result<()> {
        if record.deleted {
            if let Some(at) = record.link_retry_at.filter(|_| record.unlinking) {
                self.set_alarm(at).await?;
            }
            return Ok(());
        }
        let next = rules::next_alarm(
            record.deliver,
            record.next_attempt_at,
            record.lease_deadline,
            now_ms(),
        );
        let linking = record
            .link_retry_at
            .filter(|_| record.linking || record.placing);
        let next = match (next, linking) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.set_alarm(at).await?;
        }
        Ok(())
    }

    /// As [`Self::schedule`], and with nothing owed, the alarm set before (a lease's end) is
    /// deleted: a subscription whose retries stopped has no alarm left. Linking not done, and
    /// streams a failed `POST .../streams` named (`placing`), are owed: the alarm links them.
    pub(super) async fn schedule_or_clear(&self, record: &Record) -> Result<()> {
        let owed = record.deleted
            || record.linking
            || record.placing
            || rules::next_alarm(
                record.deliver,
                record.next_attempt_at,
                record.lease_deadline,
                now_ms(),
            )
            .is_some();
        if owed {
            return self.schedule(record).await;
        }
        self.state.storage().delete_alarm().await
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
