//! Wakes: a stream's new tail (`notify`) or removal, a new wake generation when work is pending,
//! and its delivery from the alarm, as a signed webhook post or events on the wake stream.

use std::time::Duration;

use edgestream::subscription::{self as rules, AfterFailure};
use futures_util::StreamExt;
use serde_json::{json as j, Value};
use worker::{
    AbortController, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect,
    Response, Result, SqlStorageValue, Url,
};

use super::store::{offset_text, Kind, Link, Record};
use super::{Notify, SubscriptionObject};
use crate::crypto;
use crate::fault::Call;
use crate::http::{self, header, now_ms, random_u32};
use crate::path::STREAM_PREFIX;
use crate::subscription::{json, stream_stub, webhook};

/// A webhook's reply body, read up to [`rules::MAX_WEBHOOK_REPLY_BYTES`]; `None` when it is
/// longer (the rest is never read: the caller aborts the exchange) or breaks off.
async fn read_reply(resp: &mut Response) -> Option<Vec<u8>> {
    let limit = rules::MAX_WEBHOOK_REPLY_BYTES;
    let declared =
        header(resp.headers(), "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return None;
    }
    let Ok(mut body) = resp.stream() else {
        // No body at all.
        return Some(Vec::new());
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        if bytes.len() + chunk.len() > limit {
            return None;
        }
        bytes.extend_from_slice(&chunk);
    }
    Some(bytes)
}

impl SubscriptionObject {
    /// A stream's new tail. Answers whether the stream is still linked.
    pub(super) async fn notify(&self, n: Notify) -> Result<Response> {
        let mut record = match self.load()? {
            Some(record) if !record.deleted => record,
            deleted => {
                if deleted.is_some_and(|r| self.faults.slow(&r.id, Call::UnlinkedAnswer)) {
                    Delay::from(Duration::from_secs(2)).await;
                }
                return json(200, &j!({ "linked": false }));
            }
        };
        let glob = record.pattern_covers(&n.path);
        // New to this incarnation, not only to one deleted before it under the same id.
        let created = record.new_to_it(n.created, n.epoch.as_deref());
        // While linking runs, a stream not yet linked that is not new (its registration says
        // so) was just asked to link this subscription by a page still being read: the page's
        // answer says where its cursor starts. Until then it is linked with nothing pending.
        let provisional = record.linking && !created;
        let link = match self.link(&n.path)? {
            // Linked by a pattern that no longer covers it: its own wake stream, linked
            // before such links were refused.
            Some(l) if !glob && !l.explicit => {
                self.remove_link(&n.path)?;
                return json(200, &j!({ "linked": false }));
            }
            // A new stream named explicitly is covered from its start: linking, should it ask
            // the stream later, leaves the cursor there.
            Some(l) if !l.placed && created => Link {
                glob,
                tail: l.tail.max(n.tail),
                placed: true,
                ..l
            },
            // One not new, named explicitly and not yet placed, that tells its tail before
            // linking has: one that kept a deleted subscription's entry (this id's, created
            // again), or one asked already whose answer is on its way. It existed before, so
            // nothing it held then is pending; linking places the cursor where the stream
            // answers, or here if that is earlier (as a pattern's provisional link).
            Some(l) if !l.placed => Link {
                glob,
                acked: if l.tail == 0 { n.tail } else { l.acked },
                tail: l.tail.max(n.tail),
                ..l
            },
            Some(l) => Link {
                glob,
                tail: l.tail.max(n.tail),
                ..l
            },
            None if glob && provisional => {
                self.mark_provisional(&n.path)?;
                Link {
                    path: n.path,
                    glob,
                    explicit: false,
                    acked: n.tail,
                    tail: n.tail,
                    placed: true,
                }
            }
            None if glob => {
                // Discovered by this append: linked before it, so the append is pending.
                Link {
                    path: n.path,
                    glob,
                    explicit: false,
                    acked: 0,
                    tail: n.tail,
                    placed: true,
                }
            }
            None => return json(200, &j!({ "linked": false })),
        };
        self.save_link(&link)?;
        if self.wake_if_pending(&mut record)? {
            self.save(&record)?;
            self.schedule(&record).await?;
        }
        json(200, &j!({ "linked": true }))
    }

    /// A linked stream was deleted (or expired). Its link goes, as it would for a stream that
    /// never existed: a pattern finds a stream created at that path later as a new stream, and
    /// an explicit link waits for it at the start. So the new stream's data is all pending, and
    /// acks and wakes of the old one do not apply to it; nor does a linking call's answer
    /// that the stream gave before it went ([`super::links::Removals`]).
    pub(super) async fn stream_removed(&self, path: &str) -> Result<Response> {
        self.faults.told_removed();
        // A linking call out now may bring back this stream's answer from before it went.
        self.removals.removed(path);
        let Some(mut record) = self.load()?.filter(|r| !r.deleted) else {
            return json(200, &j!({ "linked": false }));
        };
        match self.link(path)? {
            Some(link) if link.explicit => {
                // A stream made again at the path is new: covered from its start.
                self.save_link(&Link {
                    acked: 0,
                    tail: 0,
                    placed: true,
                    ..link
                })?;
                for q in [
                    "DELETE FROM snapshot WHERE path = ?",
                    "DELETE FROM offered WHERE path = ?",
                ] {
                    self.sql()?
                        .exec(q, vec![SqlStorageValue::String(path.to_string())])?;
                }
            }
            Some(_) => self.remove_link(path)?,
            None => return json(200, &j!({ "linked": false })),
        }
        // A wake not yet delivered that was owed for this stream alone is owed no more, nor is
        // the alarm set for it (unless linking still is); one whose list held only removed
        // streams lists the streams with news again.
        if record.deliver && !self.has_pending()? {
            self.clear_wake(&mut record)?;
            self.save(&record)?;
            self.schedule(&record).await?;
        } else if record.deliver && self.snapshot_links()?.is_empty() {
            let from = record.list_from.clone();
            self.list_streams(&mut record, from)?;
            self.save(&record)?;
        }
        json(200, &j!({ "linked": true }))
    }

    /// Starts a new wake generation when work is pending and nothing is in flight. A webhook's
    /// lease starts once the wake is delivered, a pull-wake's when a worker claims it.
    pub(super) fn wake_if_pending(&self, record: &mut Record) -> Result<bool> {
        if record.deleted || record.wake_id.is_some() || record.holder.is_some() {
            return Ok(false);
        }
        if !self.has_pending()? {
            return Ok(false);
        }
        record.generation += 1;
        record.wake_id = Some(format!("w_{}", crypto::random_token(12)?));
        let from = record.list_next.clone();
        self.list_streams(record, from)?;
        record.deliver = true;
        // The first wake after retries stopped is tried again, but no sooner than the backoff
        // allows: a busy stream over a dead endpoint costs an attempt per capped delay at most.
        record.next_attempt_at = record.gave_up_at.take().and(record.resume_at.take());
        record.lease_deadline = None;
        if record.kind == Kind::Webhook {
            record.token = Some(crypto::random_token(32)?);
        }
        Ok(true)
    }

    /// Takes the wake's list of streams with news, starting after `from` (the
    /// [`rules::MAX_WAKE_STREAMS`] bound, or the test page), and notes where it began and ended.
    pub(super) fn list_streams(&self, record: &mut Record, from: Option<String>) -> Result<()> {
        let limit = self.faults.page(&record.id, rules::MAX_WAKE_STREAMS);
        let last = self.take_snapshot(limit, from.as_deref())?;
        record.list_from = from;
        if last.is_some() {
            record.list_next = last;
        }
        Ok(())
    }

    /// The current wake's streams, as a webhook body or a claim lists them: each at the tail
    /// it was woken for.
    pub(super) fn listed(&self) -> Result<Vec<Value>> {
        Ok(self
            .snapshot_links()?
            .iter()
            .map(|(link, tail)| {
                let mut info = link.info();
                info["tail_offset"] = j!(offset_text(*tail));
                info["has_pending"] = j!(*tail > link.acked);
                info
            })
            .collect())
    }

    /// Ends the current wake: its list of streams goes with it.
    pub(super) fn clear_wake(&self, record: &mut Record) -> Result<()> {
        end_wake(record);
        self.sql()?.exec("DELETE FROM snapshot", None)?;
        Ok(())
    }

    /// Ends the current wake and begins the next if work is pending, as [`Self::clear_wake`]
    /// then [`Self::wake_if_pending`] would, but the next wake's list is made from the
    /// current one's rows: it mostly names the same streams, whose rows are then moved to
    /// their tails rather than deleted and written again ([`Self::take_snapshot`]). Answers
    /// whether a wake began.
    pub(super) fn next_wake(&self, record: &mut Record) -> Result<bool> {
        end_wake(record);
        if self.wake_if_pending(record)? {
            return Ok(true);
        }
        self.sql()?.exec("DELETE FROM snapshot", None)?;
        Ok(false)
    }

    /// Records a delivery attempt: a failure is retried with backoff, until failures have gone
    /// on for `DELIVERY_GIVE_UP_MS`; a webhook delivered starts its lease, and `{"done": true}`
    /// in its reply acks the wake at once.
    pub(super) fn delivery_outcome(
        &self,
        record: &mut Record,
        delivered: Result<bool>,
    ) -> Result<()> {
        let now = now_ms();
        match delivered {
            Ok(done) => {
                record.deliver = false;
                if done {
                    record.forget_failures();
                } else {
                    record.delivered();
                }
                if record.kind == Kind::Webhook {
                    record.lease_deadline = Some(now + record.lease_ttl_ms as i64);
                    if done {
                        self.apply_snapshot()?;
                        self.next_wake(record)?;
                    }
                }
            }
            Err(e) => {
                worker::console_warn!("subscription {}: delivery failed: {e}", record.id);
                match self.count_failure(record, now, &e.to_string()) {
                    AfterFailure::RetryAt(at) => record.next_attempt_at = Some(at),
                    AfterFailure::GiveUp { resume_at } => self.give_up(record, now, resume_at)?,
                }
            }
        }
        Ok(())
    }

    /// The current wake's lease ended without the wake being acked (`done`). With data still
    /// owed, that is a failure like a failed delivery: the wake was taken (a webhook's 2xx, a
    /// worker's claim) and never acked, so the next one is sent after the backoff, and once
    /// failures have gone on for `DELIVERY_GIVE_UP_MS`, none is (an endpoint that answers and
    /// never calls back would otherwise be woken once a lease for ever). With nothing owed (the
    /// worker acked everything and only never said `done`), nothing failed.
    pub(super) fn lease_lapsed(&self, record: &mut Record) -> Result<()> {
        if !self.has_pending()? {
            self.next_wake(record)?;
            return Ok(());
        }
        let error = format!(
            "lease lapsed without an ack: the wake was taken but not acked within lease_ttl_ms ({} ms)",
            record.lease_ttl_ms
        );
        record.lapses = record.lapses.saturating_add(1);
        self.taken_wake_failed(record, &error)
    }

    /// A worker released the current wake. With data still owed, the work goes back at once
    /// the first time since the last ack (the next wake's event is written now, for another
    /// worker); each release after that, with no ack between, is a failure like a lapsed
    /// lease: the next wake event waits for the backoff, and once failures have gone on for
    /// `DELIVERY_GIVE_UP_MS`, none is written. A worker that claims and releases in a loop
    /// would otherwise write a wake event per release, for ever.
    pub(super) fn wake_released(&self, record: &mut Record) -> Result<()> {
        if !self.has_pending()? {
            self.next_wake(record)?;
            return Ok(());
        }
        record.releases = record.releases.saturating_add(1);
        if record.releases == 1 {
            self.next_wake(record)?;
            return Ok(());
        }
        let error = format!(
            "released without an ack: {} wakes released in a row since the last ack",
            record.releases
        );
        self.taken_wake_failed(record, &error)
    }

    /// A wake was taken and given back (its lease lapsed, or it was released again) with
    /// data owed and no ack: a failure, so the next wake is delivered after the backoff, or,
    /// once failures have gone on for `DELIVERY_GIVE_UP_MS`, retries stop.
    fn taken_wake_failed(&self, record: &mut Record, error: &str) -> Result<()> {
        let now = now_ms();
        worker::console_warn!("subscription {}: {error}", record.id);
        match self.count_failure(record, now, error) {
            AfterFailure::RetryAt(at) => {
                self.next_wake(record)?;
                record.next_attempt_at = Some(at);
            }
            AfterFailure::GiveUp { resume_at } => self.give_up(record, now, resume_at)?,
        }
        Ok(())
    }

    /// Counts a failed attempt at `now` (a delivery, or a lease that lapsed) and answers what
    /// follows it ([`rules::after_failure`]).
    fn count_failure(&self, record: &mut Record, now: i64, error: &str) -> AfterFailure {
        record.failures = record.failures.saturating_add(1);
        record.last_error = Some(rules::last_error(error));
        let since = *record.failing_since.get_or_insert(now);
        let give_up_ms = crate::config::Config::from_env(&self.env).delivery_give_up_ms;
        rules::after_failure(record.failures, since, now, give_up_ms, random_u32())
    }

    /// Failures have gone on for `DELIVERY_GIVE_UP_MS`: retries stop. The wake ends (a late
    /// callback of it is fenced), its data stays owed, and no alarm is left for it. Data that
    /// came after the wake listed its streams (during its last attempt, or its lease), and
    /// streams owed that a full list left out, were never offered: as for data that comes
    /// after retries stopped, a new wake lists them, tried once more at `resume_at`, rather
    /// than leaving them owed until more data or a `PUT` comes
    /// ([`Self::news_since_listed`]).
    fn give_up(&self, record: &mut Record, now: i64, resume_at: i64) -> Result<()> {
        let news = self.news_since_listed(record)?;
        worker::console_warn!(
            "subscription {}: deliveries have failed for {} ms ({} attempts); retries stop{}",
            record.id,
            now - record.failing_since.unwrap_or(now),
            record.failures,
            if news {
                ", but data that came meanwhile is tried once more"
            } else {
                " until new data or a PUT"
            }
        );
        end_wake(record);
        record.gave_up_at = Some(now);
        record.resume_at = Some(resume_at);
        // `wake_if_pending` takes both: its wake is the one tried at `resume_at`.
        if !(news && self.wake_if_pending(record)?) {
            self.sql()?.exec("DELETE FROM snapshot", None)?;
        }
        Ok(())
    }

    /// Posts the signed wake to the webhook; answers whether its reply said `{"done": true}`.
    /// A redirect is a failed delivery (the signed wake goes nowhere `validate_url` did not
    /// check), and the whole exchange must end within `WEBHOOK_TIMEOUT_MS`.
    pub(super) async fn post_webhook(&self, record: &Record) -> Result<bool> {
        let (Some(url), Some(wake_id), Some(token)) = (
            record.webhook_url.clone(),
            record.wake_id.clone(),
            record.token.clone(),
        ) else {
            return Ok(false);
        };
        let streams = self.listed()?;
        let body = j!({
            "subscription_id": record.id,
            "wake_id": wake_id,
            "generation": record.generation,
            "streams": streams,
            "callback_url": format!("{}{STREAM_PREFIX}__ds/subscriptions/{}/callback", record.origin, record.id),
            "callback_token": crate::auth::wake_token(&self.env, &record.id, &token).await?,
        })
        .to_string();
        let key = self.signing_key(&record.id).await?;
        let timestamp = now_ms() / 1000;
        let signature = key
            .sign(&webhook::signed_message(timestamp, body.as_bytes()))
            .await?;
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        headers.set(
            "webhook-signature",
            &webhook::signature_header(timestamp, &key.kid, &signature),
        )?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(body.into()))
            .with_redirect(RequestRedirect::Manual);
        let target = Url::parse(&url)?;
        let request = Request::new_with_init(target.as_str(), &init)?;
        let timeout_ms = crate::config::Config::from_env(&self.env).webhook_timeout_ms;
        let controller = AbortController::default();
        let signal = controller.signal();
        let exchange = async {
            let mut resp = Fetch::Request(request).send_with_signal(&signal).await?;
            match resp.status_code() {
                200..=299 => Ok(read_reply(&mut resp).await),
                status @ 300..=399 => Err(worker::Error::RustError(format!(
                    "webhook answered {status}, a redirect, which is not followed"
                ))),
                status => Err(worker::Error::RustError(format!(
                    "webhook answered {status}"
                ))),
            }
        };
        let outcome = http::within(timeout_ms, exchange).await.unwrap_or_else(|| {
            Err(worker::Error::RustError(format!(
                "webhook did not answer within {timeout_ms} ms"
            )))
        });
        // Ends what is left: a request still waiting, or a reply past its limit.
        controller.abort();
        let reply = outcome?;
        Ok(reply
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|v| v["done"] == Value::Bool(true)))
    }

    /// Appends one wake event per stream the wake lists (those with news, at most
    /// [`rules::MAX_WAKE_STREAMS`]) to the pull-wake stream.
    pub(super) async fn post_wake_event(&self, record: &Record) -> Result<()> {
        let Some(wake_stream) = &record.wake_stream else {
            return Ok(());
        };
        let now = now_ms();
        let events: Vec<Value> = self
            .snapshot_links()?
            .iter()
            .filter(|(l, tail)| *tail > l.acked)
            .map(|(l, _)| {
                j!({
                    "type": "wake",
                    "subscription_id": record.id,
                    "stream": l.path,
                    "generation": record.generation,
                    "wake_id": record.wake_id,
                    "ts": now,
                })
            })
            .collect();
        let body = Value::Array(events).to_string();
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(body.into()));
        // The name as given, like every stream a subscription names: not %-decoded again.
        let name = crate::path::StreamName::from_name(wake_stream.clone())
            .map_err(|e| worker::Error::RustError(e.message().into()))?;
        let req = Request::new_with_init(&crate::edge::object_url(&name, None), &init)?;
        let resp = stream_stub(&self.env, name.as_str())?
            .fetch_with_request(req)
            .await?;
        match resp.status_code() {
            200 | 204 => Ok(()),
            s => Err(worker::Error::RustError(format!(
                "wake stream answered {s}"
            ))),
        }
    }
}

/// The record's side of ending a wake: no wake, token (kept as an earlier one), holder, lease
/// or delivery.
fn end_wake(record: &mut Record) {
    record.wake_id = None;
    record.end_token();
    record.holder = None;
    record.lease_deadline = None;
    record.deliver = false;
    record.next_attempt_at = None;
}
