//! `SubscriptionObject`: one subscription's configuration, per-stream cursors, wake generation,
//! lease and webhook retry state, all in SQLite so an evicted object resumes where it was.
//!
//! Wakes are delivered from the alarm handler: a wake (or a retry) sets the alarm, and the
//! alarm posts the signed webhook or appends the wake event. Leases expire by alarm too.
//!
//! The record row holds only bounded fields. Links (one row per stream), the tails a wake
//! covers (`snapshot`) and the configuration a PUT is compared with (`config`) have rows of
//! their own, so no save grows past SQLite's row limit however many streams are linked.
//!
//! Requests interleave wherever this object awaits (a registry or stream call, a webhook):
//! decisions are taken and saved between awaits, and state is read again after each one.
//!
//! - `store`: the tables and every row read or written (the record, links, snapshot, config).
//! - `configure`: the subscription's PUT, GET and DELETE; `links`: the streams it covers.
//! - `wake`: a stream's new tail, wake generations, and their delivery (webhook or wake event).
//! - `lease`: callbacks, acks, claims and releases of a wake; `alarm`: the timed work.

mod alarm;
mod configure;
mod lease;
mod links;
mod store;
mod wake;

use std::cell::RefCell;

use edgestream::subscription::{self as rules, SubscriptionError};
use serde::{Deserialize, Serialize};
use serde_json::{json as j, Value};
use worker::{durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, State};

use super::keys::{self, Schedule};
use super::registry::StreamPath;
use super::{call, error, json, registry_stub};
use crate::crypto::SigningKey;
use crate::fault::Call;
use crate::http::{self, now_ms};
use crate::path::STREAM_PREFIX;
use crate::turnstile::Turnstile;
use store::{Kind, Link, Record, MIGRATIONS, SCHEMA};

/// Refuses `streams` (at create, or added later) that name the pull-wake subscription's own
/// `wake_stream`: each wake event would be new data for it, and wake it again, for ever. Its
/// pattern passes the wake stream by ([`store::Record::pattern_covers`]).
fn refuse_own_wake_stream(
    wake_stream: Option<&String>,
    streams: &[String],
) -> std::result::Result<(), SubscriptionError> {
    match wake_stream {
        Some(own) if streams.contains(own) => Err(SubscriptionError::InvalidRequest(
            "streams must not name the subscription's wake_stream",
        )),
        _ => Ok(()),
    }
}

/// What a stream reports after an append (or at creation).
#[derive(Serialize, Deserialize)]
pub struct Notify {
    pub path: String,
    pub tail: u64,
    /// Sent by the stream's registration, and by every notification after it until the
    /// subscription has taken one: the stream was created after the registry had the
    /// subscription's links, so a subscription whose linking has not yet reached it covers it
    /// from its start, not from where linking finds its tail (a stream of an older version
    /// never says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    /// With `created`: the incarnation of the subscription (its epoch) whose links the
    /// registration found. One created again under the id since takes the stream as one that
    /// existed before it (a stream of an older version names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

#[durable_object]
pub struct SubscriptionObject {
    state: State,
    env: Env,
    /// The storage; its tables are made by the first write (see [`SubscriptionObject::sql`]),
    /// so that a request for an id with no subscription stores nothing.
    raw_sql: SqlStorage,
    /// The same storage, for writes that must be stored together.
    storage: Option<crate::transaction::Transactional>,
    /// Storage could not be opened: every request is 503.
    broken: bool,
    /// The tables are made: something was stored here once.
    opened: std::cell::Cell<bool>,
    /// The signing keys' schedule as the registry last answered it, and when (Unix ms).
    keys: RefCell<Option<(Schedule, i64)>>,
    /// Changes that tell the registry (create, delete, adding and removing streams, and the
    /// alarm finishing a create) take turns, so the registry hears them in the order they
    /// were made: a delete's removal never lands after the create that followed it.
    changes: Turnstile,
    /// Streams removed while a linking call was out, which that call's answers must not link.
    removals: links::Removals,
    /// Injected faults, for tests (`FAULT_MARKER`).
    faults: crate::fault::Faults,
    /// Alarms in a row that failed: the next is set further off each time, so an object whose
    /// storage or peers keep failing does not wake every second for as long as that lasts.
    alarm_failures: std::cell::Cell<u32>,
    /// The rows each request reads and writes, for tests (`FAULT_MARKER`): every answer says
    /// them, and the rows since the object started, so what notifications from streams and
    /// alarms cost is the difference between two answers (docs/benchmark.md).
    rows: crate::rows::RowCounter,
}

impl DurableObject for SubscriptionObject {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage = crate::transaction::Transactional::of(&raw);
        let state = State::from(raw);
        let sql = state.storage().sql();
        // An object that never stored anything is left so: a request for an id with no
        // subscription (a GET, a DELETE, an ack) must not make tables, or any admin could
        // leave objects behind by the million.
        let stored = crate::schema::has_table(&sql, "subscription");
        let opened = storage
            .as_ref()
            .map_err(|e| worker::Error::RustError(e.to_string()))
            .and_then(|storage| match stored {
                true => crate::schema::open(&sql, SCHEMA, MIGRATIONS, Some(storage)),
                false => Ok(()),
            });
        let broken = match opened {
            Ok(_) => false,
            Err(e) => {
                worker::console_error!("subscription: cannot open storage: {e}");
                true
            }
        };
        let marker = crate::config::Config::from_env(&env).fault_marker;
        let rows = crate::rows::RowCounter::install(&sql, marker.is_some());
        let faults = crate::fault::Faults::new(marker);
        SubscriptionObject {
            state,
            env,
            raw_sql: sql,
            storage: storage.ok(),
            broken,
            opened: std::cell::Cell::new(stored),
            keys: RefCell::new(None),
            changes: Turnstile::default(),
            removals: links::Removals::default(),
            faults,
            alarm_failures: std::cell::Cell::new(0),
            rows,
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if self.broken {
            return http::unavailable("subscription storage unavailable; retry");
        }
        let inner = Clone::clone(req.inner()); // the handle, not `Request.clone()`
        let body = req.bytes().await.unwrap_or_default();
        let resp = match self.route(req, &body).await {
            Ok(resp) => resp,
            Err(e) => {
                let about = super::described(&inner, &body);
                worker::console_error!("subscription: {about}: {e}");
                http::unavailable("temporary failure; retry")?
            }
        };
        match self.rows.take() {
            Some((rows, total)) => http::edit_headers(resp, |headers| {
                headers.set(crate::rows::ROWS_HEADER, &rows.header())?;
                headers.set(crate::rows::TOTAL_ROWS_HEADER, &total.header())
            }),
            None => Ok(resp),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        match self.on_alarm().await {
            Ok(()) => self.alarm_failures.set(0),
            Err(e) => {
                worker::console_error!("subscription alarm: {e}");
                // Try again, sooner the first times; the state in storage says what is owed.
                let failures = self.alarm_failures.get();
                self.alarm_failures.set(failures.saturating_add(1));
                self.set_alarm(now_ms() + crate::object::backoff_ms(failures))
                    .await?;
            }
        }
        Response::ok("")
    }
}

impl SubscriptionObject {
    async fn route(&self, req: Request, body: &[u8]) -> Result<Response> {
        let url = req.url()?;
        let op = url.path().trim_start_matches('/').to_string();
        let _turn = match op.as_str() {
            "create" | "delete" | "add-streams" | "remove-stream" => {
                Some(self.changes.enter().await)
            }
            _ => None,
        };
        let result = match op.as_str() {
            "internal/notify" => {
                let Ok(n) = serde_json::from_slice::<Notify>(body) else {
                    return http::text(400, "bad notify");
                };
                return self.notify(n).await;
            }
            "internal/stream-removed" => {
                let Ok(p) = serde_json::from_slice::<StreamPath>(body) else {
                    return http::text(400, "bad stream-removed");
                };
                if let Err(e) = self.faults.check(&p.path, Call::StreamRemoved) {
                    return http::unavailable(&e.to_string());
                }
                return self.stream_removed(&p.path).await;
            }
            "create" => self.create(&req, body).await,
            "get" => self.get(&url).await,
            "delete" => self.delete().await,
            "add-streams" => self.add_streams(body).await,
            "remove-stream" => {
                let path = url
                    .query_pairs()
                    .find(|(k, _)| k == "path")
                    .map(|(_, v)| v.into_owned());
                self.remove_stream(path.as_deref()).await
            }
            "callback" => self.ack(&req, body, Kind::Webhook).await,
            "ack" => self.ack(&req, body, Kind::PullWake).await,
            "claim" => self.claim(body).await,
            "release" => self.release(&req, body).await,
            _ => return http::text(404, "not found"),
        };
        match result {
            Ok(resp) => Ok(resp),
            Err(Failure::Protocol(e)) => error(e),
            Err(Failure::Runtime(e)) => Err(e),
            Err(Failure::Claimed { holder, generation }) => json(
                409,
                &j!({ "error": {
                    "code": "ALREADY_CLAIMED",
                    "message": "another worker holds the lease",
                    "current_holder": holder,
                    "generation": generation,
                }}),
            ),
        }
    }

    fn live(&self) -> std::result::Result<Record, Failure> {
        match self.load()? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(SubscriptionError::NotFound.into()),
        }
    }

    /// The subscription as its GET and PUT answer it, with `page` of its linked streams
    /// (`streams_has_more`, and `streams_next`, the `streams_after` of the next page). A
    /// webhook's signing key is named whether or not this object has fetched it yet.
    async fn describe(&self, record: &Record, page: &rules::StreamsPage) -> Result<Value> {
        let (links, more) = self.links_page(page)?;
        let next = links.last().filter(|_| more).map(|l| l.path.clone());
        let streams: Vec<Value> = links.iter().map(Link::info).collect();
        let webhook = match &record.webhook_url {
            Some(url) => {
                // `null` while no key may sign (the delivery's `last_error` says why).
                let kid = match self.signer(&record.id).await? {
                    Signer::Signs(key) => Some(key.kid),
                    Signer::Refused(_) => None,
                };
                j!({
                    "url": url,
                    "signing": {
                        "alg": "ed25519",
                        "kid": kid,
                        "jwks_url": format!("{}{STREAM_PREFIX}__ds/jwks.json", record.origin),
                    },
                })
            }
            None => Value::Null,
        };
        Ok(j!({
            "id": record.id,
            "subscription_id": record.id,
            "type": record.kind,
            "pattern": record.pattern,
            "streams": streams,
            "streams_has_more": more,
            "streams_next": next,
            "webhook": webhook,
            "wake_stream": record.wake_stream,
            "lease_ttl_ms": record.lease_ttl_ms,
            "created_at": record.created_at,
            "status": if record.failures > 0 { "failed" } else { "active" },
            "delivery": delivery(record),
            "linking": linking(record),
            "description": record.description,
            "generation": record.generation,
        }))
    }

    /// The key that signs now, by the schedule fetched from the registry at most
    /// [`keys::SCHEDULE_KEPT_MS`] ago: so a rotation reaches this object before the fresh key
    /// is due to sign (a rotation's default overlap is twice as long), and the object
    /// switches keys when the schedule says, whenever it last asked. A key the schedule kept
    /// may not sign ([`Signer::Refused`]) is a failed delivery, retried with backoff.
    async fn signing_key(&self, id: &str) -> Result<SigningKey> {
        match self.signer(id).await? {
            Signer::Signs(key) => Ok(key),
            Signer::Refused(why) => Err(worker::Error::RustError(why)),
        }
    }

    /// The key that signs now ([`Self::signing_key`]). When the registry cannot be asked
    /// again, the schedule kept still says which key signs now, for as long as it may be
    /// trusted ([`keys::Schedule::signing_kept`], [`keys::trusted_ms`]): the delivery, `GET`
    /// or `PUT` goes on with it, and the next one asks again. Past that, or when it names no
    /// key that signs now, the answer is [`Signer::Refused`]. Only an object that never had a
    /// schedule fails then.
    async fn signer(&self, id: &str) -> Result<Signer> {
        let now = now_ms();
        let config = crate::config::Config::from_env(&self.env);
        let (kept_ms, longest_trusted_ms) = if config.fault_marker.is_some() {
            (
                keys::SCHEDULE_KEPT_MS_UNDER_TEST,
                keys::SCHEDULE_TRUSTED_MS_UNDER_TEST,
            )
        } else {
            (keys::SCHEDULE_KEPT_MS, keys::SCHEDULE_TRUSTED_MS)
        };
        let overlap_ms = i64::try_from(config.key_rotation_overlap_ms).unwrap_or(i64::MAX);
        let trusted_ms = keys::trusted_ms(longest_trusted_ms, overlap_ms);
        let fresh = self
            .keys
            .borrow()
            .as_ref()
            .filter(|(_, at)| now - at < kept_ms)
            .and_then(|(schedule, _)| schedule.signing_at(now).map(|k| k.key.clone()));
        if let Some(key) = fresh {
            return Ok(Signer::Signs(key));
        }
        // Not borrowed across the await: another request may replace the schedule meanwhile.
        let had = self.keys.borrow().is_some();
        match self.fetch_schedule(id, had).await {
            Ok(schedule) => {
                let key = schedule
                    .signing_at(now_ms())
                    .map(|k| k.key.clone())
                    .ok_or_else(|| {
                        worker::Error::RustError("the registry has no signing key".into())
                    })?;
                self.keys.replace(Some((schedule, now)));
                Ok(Signer::Signs(key))
            }
            Err(e) => {
                let kept = self.keys.borrow();
                let Some((schedule, fetched_ms)) = kept.as_ref() else {
                    return Err(e);
                };
                match schedule.signing_kept(*fetched_ms, now_ms(), trusted_ms) {
                    Ok(key) => {
                        worker::console_warn!(
                            "subscription {id}: cannot fetch the signing keys' schedule ({e}); signing with the one kept"
                        );
                        Ok(Signer::Signs(key.key.clone()))
                    }
                    Err(why) => {
                        worker::console_warn!("subscription {id}: {why} ({e})");
                        Ok(Signer::Refused(why))
                    }
                }
            }
        }
    }

    /// The signing keys' schedule, from the registry. `again`: this object has fetched one
    /// before (a test's fault fails the first such fetch, [`Call::KeySchedule`]).
    async fn fetch_schedule(&self, id: &str, again: bool) -> Result<Schedule> {
        if again {
            self.faults.check(id, Call::KeySchedule)?;
            self.faults.key_outage(id, now_ms())?;
        }
        let (status, schedule) =
            call::<_, Schedule>(&registry_stub(&self.env)?, "keys", &j!({})).await?;
        schedule.filter(|_| status == 200).ok_or_else(|| {
            worker::Error::RustError(format!("registry key request failed ({status})"))
        })
    }
}

/// How linking the subscription's existing streams is going, for its `GET`: whether it is
/// done, how many existing streams it has linked (`null` for a subscription made before they
/// were counted), and the failures since its last step that succeeded (retried with backoff).
/// Until it is done, a stream its pages have not yet reached is not covered: its appends are
/// not delivered (a stream created meanwhile is, from its start). Streams a failed
/// `POST .../streams` named and the alarm has still to link count as linking not done.
fn linking(record: &Record) -> Value {
    let owed = record.linking || record.placing;
    j!({
        "done": !owed,
        "linked": record.linked,
        "failures": if owed { record.link_failures } else { 0 },
    })
}

/// How the subscription's deliveries are going, for its `GET`: the failures since the last
/// one that succeeded (or, once a lease has lapsed or a wake was released again among them,
/// since the last ack), how many were lapsed leases, the wakes released in a row since the last
/// ack, when they began, the last one's error, when the next is tried (`null`
/// while nothing is owed, or one is being tried now), and when retries stopped (`null` unless
/// they have: new data or a `PUT` tries again). Times are RFC 3339.
fn delivery(record: &Record) -> Value {
    let time = |ms: Option<i64>| ms.map(edgestream::time::format_rfc3339);
    j!({
        "failures": record.failures,
        "lapsed_leases": record.lapses,
        "releases": record.releases,
        "failing_since": time(record.failing_since),
        "last_error": record.last_error,
        "next_attempt_at": time(record.next_attempt_at.filter(|_| record.deliver)),
        "gave_up_at": time(record.gave_up_at),
    })
}

/// Which key signs now, or why none may ([`SubscriptionObject::signer`]).
enum Signer {
    Signs(SigningKey),
    /// The registry cannot be reached and the schedule kept may not sign: why, for the
    /// delivery's `last_error`.
    Refused(String),
}

/// Why a subscription request failed.
enum Failure {
    Protocol(SubscriptionError),
    Claimed { holder: String, generation: u64 },
    Runtime(worker::Error),
}

impl From<SubscriptionError> for Failure {
    fn from(e: SubscriptionError) -> Self {
        Failure::Protocol(e)
    }
}

impl From<worker::Error> for Failure {
    fn from(e: worker::Error) -> Self {
        Failure::Runtime(e)
    }
}
