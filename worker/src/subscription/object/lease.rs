//! A wake's holder: a webhook's callback or a pull-wake's ack (checked against the current wake
//! by `fence`), a pull-wake's claim of the lease, and its release.

use std::collections::{HashMap, HashSet};

use edgestream::subscription::{self as rules, SubscriptionError};
use edgestream::Offset;
use serde::Deserialize;
use serde_json::{json as j, Value};
use worker::{Request, Response};

use super::store::{Kind, Link, Record};
use super::{Failure, SubscriptionObject};
use crate::crypto;
use crate::http::{header, now_ms};
use crate::subscription::{call, json, stream_stub};

/// Streams asked at once whether an acked offset is a read position.
const ACK_CHECKS_AT_ONCE: usize = 32;

#[derive(Deserialize)]
struct AckBody {
    wake_id: Option<String>,
    generation: Option<u64>,
    #[serde(default)]
    acks: Vec<AckItem>,
    #[serde(default)]
    done: bool,
}

#[derive(Deserialize)]
struct AckItem {
    stream: Option<String>,
    path: Option<String>,
    offset: String,
}

#[derive(Deserialize)]
struct ClaimBody {
    worker: Option<String>,
}

fn bearer(req: &Request) -> Option<String> {
    header(req.headers(), "authorization")
        .and_then(|v| crate::auth::bearer_credentials(&v).map(str::to_string))
}

/// Constant-time comparison of secrets.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl SubscriptionObject {
    /// Checks a callback, ack or release against the current wake.
    fn fence(
        &self,
        record: &Record,
        req: &Request,
        wake_id: Option<&str>,
        generation: Option<u64>,
    ) -> std::result::Result<(), Failure> {
        // The token first, as PROTOCOL §7.3 lists it: one this subscription never issued is
        // refused (401), whatever wake it names; one of an earlier wake, or the current one
        // naming another wake, is fenced (409), so a worker that lost its lease is told so.
        let presented = bearer(req).ok_or(SubscriptionError::TokenInvalid)?;
        // What the subscription stores, and compares, is the random part. With `AUTH_SECRET`
        // set, the edge has checked the MAC that binds it to this subscription, so a token
        // with one was issued here, for this wake or an earlier one, however long ago.
        let given = crate::auth::wake_nonce(&presented);
        let vouched = crate::auth::wake_token_vouched(&self.env, &presented);
        let holds = record
            .token
            .as_deref()
            .is_some_and(|t| same_secret(given, t));
        let earlier = record.earlier_tokens.iter().any(|t| same_secret(given, t));
        if !holds && !earlier && !vouched {
            return Err(SubscriptionError::TokenInvalid.into());
        }
        let current = record.wake_id.as_deref();
        if !holds
            || current.is_none()
            || wake_id != current
            || generation != Some(record.generation)
        {
            return Err(SubscriptionError::Fenced.into());
        }
        Ok(())
    }

    /// Webhook callback or pull-wake ack: apply acks; `done` ends the wake, otherwise the
    /// lease is extended (a heartbeat).
    pub(super) async fn ack(
        &self,
        req: &Request,
        body: &[u8],
        kind: Kind,
    ) -> std::result::Result<Response, Failure> {
        // No token at all is refused first: a caller without one learns nothing, not even
        // whether the subscription exists.
        bearer(req).ok_or(SubscriptionError::TokenInvalid)?;
        let mut record = self.live()?;
        if record.kind != kind {
            return Err(SubscriptionError::InvalidRequest(match kind {
                Kind::Webhook => "callbacks are for webhook subscriptions",
                Kind::PullWake => "acks are for pull-wake subscriptions",
            })
            .into());
        }
        let input: AckBody = serde_json::from_slice(body)
            .map_err(|_| SubscriptionError::InvalidRequest("body must be a JSON ack object"))?;
        self.fence(&record, req, input.wake_id.as_deref(), input.generation)?;
        let vouched = self.ack_positions(&input).await?;
        // Possibly awaited: the record is read again, so what follows runs in one turn.
        record = self.live()?;
        self.fence(&record, req, input.wake_id.as_deref(), input.generation)?;
        // Every ack is checked before any is applied; the furthest per stream wins. Each link
        // is read once, with its cursor as stored (`committed`).
        let mut updated: HashMap<String, (Link, u64)> = HashMap::new();
        for item in &input.acks {
            let Some(path) = item.stream.as_deref().or(item.path.as_deref()) else {
                return Err(SubscriptionError::InvalidRequest("ack needs a stream").into());
            };
            let (link, committed) = match updated.get(path) {
                Some((l, committed)) => (l.clone(), *committed),
                None => {
                    let l = self
                        .link(path)?
                        .ok_or(SubscriptionError::InvalidOffset(rules::ACK_UNKNOWN_STREAM))?;
                    let committed = l.acked;
                    (l, committed)
                }
            };
            let offset = Offset::parse(&item.offset)
                .map_err(|_| SubscriptionError::InvalidOffset(rules::ACK_NOT_AN_OFFSET))?
                .position();
            // Past the tail this subscription was told, the stream itself vouched for it: the
            // worker read an append whose notification is still on its way.
            if offset > link.tail && !vouched.contains(&(path.to_string(), offset)) {
                return Err(SubscriptionError::InvalidOffset(rules::ACK_NOT_AN_OFFSET).into());
            }
            // Behind the stored cursor (acks of one stream within this request may come in any
            // order): a worker acking what it did not mean should know.
            if offset < committed {
                return Err(SubscriptionError::InvalidOffset(rules::ACK_REGRESSES).into());
            }
            if offset > link.acked {
                let link = Link {
                    acked: offset,
                    tail: link.tail.max(offset),
                    ..link
                };
                updated.insert(path.to_string(), (link, committed));
            }
        }
        for (link, _) in updated.values() {
            self.save_link(link)?;
        }
        if kind == Kind::Webhook {
            // A callback shows the wake reached its webhook, even if the webhook's own answer
            // has not come back yet (or never does): the delivery succeeded, so it is not
            // retried.
            record.deliver = false;
        }
        // Any ack, `done` or not, ends a run of failures, lapsed leases included: the
        // receiver or worker is taking its data again.
        record.forget_failures();
        let next_wake = if input.done {
            self.next_wake(&mut record)?
        } else {
            record.lease_deadline = Some(now_ms() + record.lease_ttl_ms as i64);
            false
        };
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(json(200, &j!({ "ok": true, "next_wake": next_wake }))?)
    }

    /// Checks with each stream an acked offset this object cannot vouch for (past the cursor,
    /// and not the tail it was told): it must be where a read may start, so a JSON stream's
    /// must start a message, and at most the stream's tail, which may be past the tail this
    /// object was told while a notification is on its way (409 `INVALID_OFFSET` otherwise).
    /// Acks up to the tail, the usual kind, need no call. Answers the positions the streams
    /// vouched for.
    async fn ack_positions(
        &self,
        input: &AckBody,
    ) -> std::result::Result<HashSet<(String, u64)>, Failure> {
        let mut asks = Vec::new();
        for item in &input.acks {
            let (Some(path), Ok(offset)) = (
                item.stream.as_deref().or(item.path.as_deref()),
                Offset::parse(&item.offset),
            ) else {
                continue;
            };
            let at = offset.position();
            if let Some(link) = self.link(path)? {
                if at > link.acked && at != link.tail {
                    asks.push((path.to_string(), at));
                }
            }
        }
        asks.sort_unstable();
        asks.dedup();
        let mut vouched = HashSet::new();
        for group in asks.chunks(ACK_CHECKS_AT_ONCE) {
            let calls = group.iter().map(|(path, at)| async move {
                let stub = stream_stub(&self.env, path)?;
                call::<_, Value>(&stub, "ack-position", &j!({ "at": at })).await
            });
            let answers = futures_util::future::join_all(calls).await;
            for (asked, answer) in group.iter().zip(answers) {
                match answer?.0 {
                    200 => {
                        vouched.insert(asked.clone());
                    }
                    // The stream is gone, and so will its link be: an ack past the tail told
                    // is refused, one before it is recorded as usual.
                    404 => {}
                    400 => {
                        return Err(
                            SubscriptionError::InvalidOffset(rules::ACK_NOT_AN_OFFSET).into()
                        )
                    }
                    status => {
                        return Err(worker::Error::RustError(format!(
                            "stream answered {status} to ack-position"
                        ))
                        .into())
                    }
                }
            }
        }
        Ok(vouched)
    }

    pub(super) async fn claim(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
        // The token is made before the record is read: nothing may await between reading the
        // record and saving it, or another request could change it meanwhile.
        let nonce = crypto::random_token(32)?;
        let token = crate::auth::wake_token(&self.env, &self.live()?.id, &nonce).await?;
        let mut record = self.live()?;
        if record.kind != Kind::PullWake {
            return Err(SubscriptionError::InvalidRequest(
                "claims are for pull-wake subscriptions",
            )
            .into());
        }
        let input: ClaimBody = serde_json::from_slice(body).unwrap_or(ClaimBody { worker: None });
        let worker = input
            .worker
            .filter(|w| !w.is_empty() && w.len() <= 200)
            .unwrap_or_else(|| "anonymous".into());
        let now = now_ms();
        if let Some(holder) = &record.holder {
            if record.lease_deadline.is_some_and(|d| d > now) {
                return Err(Failure::Claimed {
                    holder: holder.clone(),
                    generation: record.generation,
                });
            }
            // The previous holder's lease ran out without an ack: a failure, as when the
            // alarm finds it so (this claim takes the wake that follows at once).
            self.lease_lapsed(&mut record)?;
        }
        if !self.has_pending()? {
            return Err(SubscriptionError::NoPendingWork.into());
        }
        if record.wake_id.is_none() {
            self.wake_if_pending(&mut record)?;
        }
        // Claimed: no wake event is owed (any still being retried is moot, and its failures no
        // longer make the subscription "failed", unless leases lapsed among them: a claim is
        // not an ack), and the lease runs.
        record.deliver = false;
        record.delivered();
        record.holder = Some(worker);
        record.end_token();
        record.token = Some(nonce);
        record.lease_deadline = Some(now + record.lease_ttl_ms as i64);
        // The wake's streams again, at their tails now: the same part of the list its event
        // named (data may have come meanwhile, or been acked).
        let from = record.list_from.clone();
        self.list_streams(&mut record, from)?;
        self.save(&record)?;
        self.schedule(&record).await?;
        let streams = self.listed()?;
        Ok(json(
            200,
            &j!({
                "wake_id": record.wake_id,
                "generation": record.generation,
                "token": token,
                "streams": streams,
                "lease_ttl_ms": record.lease_ttl_ms,
            }),
        )?)
    }

    pub(super) async fn release(
        &self,
        req: &Request,
        body: &[u8],
    ) -> std::result::Result<Response, Failure> {
        bearer(req).ok_or(SubscriptionError::TokenInvalid)?;
        let mut record = self.live()?;
        if record.kind != Kind::PullWake {
            return Err(SubscriptionError::InvalidRequest(
                "release is for pull-wake subscriptions",
            )
            .into());
        }
        let input: AckBody = serde_json::from_slice(body)
            .map_err(|_| SubscriptionError::InvalidRequest("body must be a JSON release object"))?;
        self.fence(&record, req, input.wake_id.as_deref(), input.generation)?;
        // Work still pending gets a new wake event for a later claim: at once the first time
        // since the last ack, after the backoff for each release after it.
        self.wake_released(&mut record)?;
        self.save(&record)?;
        // The lease's alarm goes if nothing follows (retries stopped, or nothing is owed).
        self.schedule(&record).await?;
        Ok(Response::empty()?.with_status(204))
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
