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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use edgestream::subscription::{self as rules, SubscriptionError};
use edgestream::time::format_rfc3339;
use edgestream::Offset;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json as j, Value};
use worker::{
    durable_object, AbortController, Delay, DurableObject, Env, Fetch, Headers, Method, Request,
    RequestInit, RequestRedirect, Response, Result, SqlStorage, SqlStorageValue, State, Url,
};

use super::registry::{
    Links, Matched, MatchedStreams, RemoveExplicit, StreamPath, SubLinked, SubLinks,
};
use super::{call, error, json, registry_stub, stream_stub, webhook, X_ORIGIN, X_SUBSCRIPTION};
use crate::crypto::{self, SigningKey};
use crate::fault::Call;
use crate::http::{self, header, now_ms, random_u32};
use crate::path::STREAM_PREFIX;
use crate::turnstile::Turnstile;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscription (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config (id INTEGER PRIMARY KEY CHECK (id = 1), canonical TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
  path TEXT PRIMARY KEY,
  glob INTEGER NOT NULL,
  explicit INTEGER NOT NULL,
  acked INTEGER NOT NULL,
  tail INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (path TEXT PRIMARY KEY, tail INTEGER NOT NULL);
";

/// Should a create die partway through linking its streams, the alarm finishes it this long
/// after: longer than linking takes, so it rarely runs beside the create itself.
const LINK_SAFETY_MS: i64 = 10_000;
/// Streams asked at once whether an acked offset is a read position.
const ACK_CHECKS_AT_ONCE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Webhook,
    PullWake,
}

/// The subscription row: configuration and delivery state, every field of bounded size.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    kind: Kind,
    pattern: Option<String>,
    webhook_url: Option<String>,
    wake_stream: Option<String>,
    lease_ttl_ms: u64,
    description: Option<String>,
    created_at: String,
    /// The public origin, for the callback and JWKS URLs this subscription hands out.
    origin: String,
    /// New at each creation: work begun for one incarnation (linking streams) stops when it
    /// is deleted or replaced meanwhile.
    #[serde(default)]
    epoch: String,
    generation: u64,
    wake_id: Option<String>,
    token: Option<String>,
    holder: Option<String>,
    /// When the lease ends. A webhook's starts when a delivery succeeds, a pull-wake's when a
    /// worker claims.
    lease_deadline: Option<i64>,
    /// A webhook post or a wake event is owed.
    deliver: bool,
    failures: u32,
    next_attempt_at: Option<i64>,
    deleted: bool,
    /// Linking this incarnation's streams (the registry's list, then each stream's tail) has
    /// not yet succeeded: a PUT that finds it so finishes it, and so does the alarm.
    #[serde(default)]
    linking: bool,
    /// Deleted, and the registry has yet to forget this subscription's links: the alarm tells
    /// it, unless a PUT creates the id again first (its links replace them).
    #[serde(default)]
    unlinking: bool,
    /// Failed attempts at linking, or, once deleted, at unlinking.
    #[serde(default)]
    link_failures: u32,
    /// When the alarm next tries to finish linking, or unlinking.
    #[serde(default)]
    link_retry_at: Option<i64>,
    /// Records saved before `config` and `snapshot` had tables kept them here: read once, and
    /// never written again.
    #[serde(default, skip_serializing)]
    canonical: String,
    #[serde(default, skip_serializing)]
    snapshot: Vec<(String, u64)>,
}

impl Record {
    /// Records an attempt at linking or unlinking: a failure is retried by the alarm with
    /// backoff. Answers whether it succeeded.
    fn settle_links(&mut self, what: &str, result: &Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.link_failures = 0;
                self.link_retry_at = None;
                true
            }
            Err(e) => {
                worker::console_warn!("subscription {}: {what} failed: {e}", self.id);
                self.link_failures = self.link_failures.saturating_add(1);
                let delay = rules::retry_delay_ms(self.link_failures, random_u32());
                self.link_retry_at = Some(now_ms() + delay as i64);
                false
            }
        }
    }
}

/// One linked stream's cursor.
#[derive(Clone, Debug)]
struct Link {
    path: String,
    glob: bool,
    explicit: bool,
    acked: u64,
    tail: u64,
}

impl Link {
    fn pending(&self) -> bool {
        self.tail > self.acked
    }

    fn info(&self) -> Value {
        j!({
            "path": self.path,
            "link_type": if self.explicit { "explicit" } else { "glob" },
            "acked_offset": offset_text(self.acked),
            "tail_offset": offset_text(self.tail),
            "has_pending": self.pending(),
        })
    }
}

fn offset_text(position: u64) -> String {
    Offset::new(position).unwrap_or(Offset::ZERO).to_string()
}

fn link_from_row(r: &[SqlStorageValue]) -> Link {
    Link {
        path: text(r, 0),
        glob: int(r, 1) != 0,
        explicit: int(r, 2) != 0,
        acked: int(r, 3),
        tail: int(r, 4),
    }
}

/// PUT body.
struct CreateBody {
    kind: String,
    pattern: Option<String>,
    streams: Vec<String>,
    /// `webhook.url`.
    webhook: Option<String>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

impl CreateBody {
    /// Reads a PUT body, or says which field is of the wrong type. `type` is required,
    /// `streams` may be absent but not null, and null stands for any other absent field.
    fn parse(body: &[u8]) -> std::result::Result<Self, &'static str> {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return Err("body must be a JSON subscription object");
        };
        let streams = fields.remove("streams");
        let mut take = |name| fields.remove(name).filter(|v| !v.is_null());
        let string = |v: Option<Value>, why| match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(why),
        };
        const KIND: &str = "type must be webhook or pull-wake";
        const STREAMS: &str = "streams must be an array of stream paths";
        const WEBHOOK: &str = "webhook must be an object with a url";
        Ok(CreateBody {
            kind: string(take("type"), KIND)?.ok_or(KIND)?,
            pattern: string(take("pattern"), "pattern must be a string")?,
            streams: match streams {
                None => Vec::new(),
                Some(Value::Array(paths)) => paths
                    .into_iter()
                    .map(|v| string(Some(v), STREAMS)?.ok_or(STREAMS))
                    .collect::<std::result::Result<_, _>>()?,
                Some(_) => return Err(STREAMS),
            },
            webhook: match take("webhook") {
                None => None,
                Some(mut w) => {
                    Some(string(w.get_mut("url").map(Value::take), WEBHOOK)?.ok_or(WEBHOOK)?)
                }
            },
            wake_stream: string(take("wake_stream"), "wake_stream must be a stream path")?,
            lease_ttl_ms: match take("lease_ttl_ms") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or("lease_ttl_ms must be a whole number of milliseconds")?,
                ),
            },
            description: string(take("description"), "description must be a string")?,
        })
    }
}

#[derive(Deserialize)]
struct StreamsBody {
    streams: Vec<String>,
}

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

/// What a stream reports after an append (or at creation).
#[derive(Serialize, Deserialize)]
pub struct Notify {
    pub path: String,
    pub tail: u64,
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
    key: RefCell<Option<SigningKey>>,
    /// Changes that tell the registry (create, delete, adding and removing streams, and the
    /// alarm finishing a create) take turns, so the registry hears them in the order they
    /// were made: a delete's removal never lands after the create that followed it.
    changes: Turnstile,
    /// Injected faults, for tests (`FAULT_MARKER`).
    faults: crate::fault::Faults,
    /// Alarms in a row that failed: the next is set further off each time, so an object whose
    /// storage or peers keep failing does not wake every second for as long as that lasts.
    alarm_failures: std::cell::Cell<u32>,
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
            .and_then(|_| match stored {
                true => crate::schema::open(&sql, SCHEMA, &[]),
                false => Ok(()),
            });
        let broken = match opened {
            Ok(_) => false,
            Err(e) => {
                worker::console_error!("subscription: cannot open storage: {e}");
                true
            }
        };
        let faults = crate::fault::Faults::new(crate::config::Config::from_env(&env).fault_marker);
        SubscriptionObject {
            state,
            env,
            raw_sql: sql,
            storage: storage.ok(),
            broken,
            opened: std::cell::Cell::new(stored),
            key: RefCell::new(None),
            changes: Turnstile::default(),
            faults,
            alarm_failures: std::cell::Cell::new(0),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if self.broken {
            return http::unavailable("subscription storage unavailable; retry");
        }
        match self.route(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                worker::console_error!("subscription: {e}");
                http::unavailable("temporary failure; retry")
            }
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

fn text(row: &[SqlStorageValue], i: usize) -> String {
    match row.get(i) {
        Some(SqlStorageValue::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int(row: &[SqlStorageValue], i: usize) -> u64 {
    match row.get(i) {
        Some(SqlStorageValue::Integer(n)) => u64::try_from(*n).unwrap_or(0),
        Some(SqlStorageValue::Float(f)) => *f as u64,
        _ => 0,
    }
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
    // ---- storage ----

    /// The storage, its tables made first if they are not yet.
    fn sql(&self) -> Result<&SqlStorage> {
        if !self.opened.get() {
            crate::schema::open(&self.raw_sql, SCHEMA, &[])?;
            self.opened.set(true);
        }
        Ok(&self.raw_sql)
    }

    fn rows(&self, q: &str, b: Vec<SqlStorageValue>) -> Result<Vec<Vec<SqlStorageValue>>> {
        self.sql()?.exec(q, b)?.raw().collect()
    }

    fn load(&self) -> Result<Option<Record>> {
        // No tables: no subscription, nor was there one.
        if !self.opened.get() {
            return Ok(None);
        }
        let rows = self.rows("SELECT record FROM subscription WHERE id = 1", vec![])?;
        let Some(mut record) = rows
            .first()
            .and_then(|r| serde_json::from_str::<Record>(&text(r, 0)).ok())
        else {
            return Ok(None);
        };
        if !record.snapshot.is_empty() || !record.canonical.is_empty() {
            // Written before these had tables: move them there once.
            for (path, tail) in std::mem::take(&mut record.snapshot) {
                self.sql()?.exec(
                    "INSERT OR REPLACE INTO snapshot (path, tail) VALUES (?, ?)",
                    vec![
                        SqlStorageValue::String(path),
                        SqlStorageValue::Integer(tail as i64),
                    ],
                )?;
            }
            let canonical = std::mem::take(&mut record.canonical);
            if !canonical.is_empty() {
                self.save_canonical(&canonical)?;
            }
            self.save(&record)?;
        }
        Ok(Some(record))
    }

    fn save(&self, record: &Record) -> Result<()> {
        let encoded =
            serde_json::to_string(record).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.sql()?.exec(
            "INSERT INTO subscription (id, record) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            vec![SqlStorageValue::String(encoded)],
        )?;
        Ok(())
    }

    /// The normalized configuration of the current subscription: an identical PUT re-confirms
    /// it, any other conflicts.
    fn canonical(&self) -> Result<Option<String>> {
        let rows = self.rows("SELECT canonical FROM config WHERE id = 1", vec![])?;
        Ok(rows.first().map(|r| text(r, 0)))
    }

    fn save_canonical(&self, canonical: &str) -> Result<()> {
        self.sql()?.exec(
            "INSERT INTO config (id, canonical) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET canonical = excluded.canonical",
            vec![SqlStorageValue::String(canonical.to_string())],
        )?;
        Ok(())
    }

    /// Whether `record`'s incarnation is still the live subscription (not deleted, nor
    /// deleted and created again).
    fn still(&self, record: &Record) -> Result<bool> {
        Ok(self
            .load()?
            .is_some_and(|r| !r.deleted && r.epoch == record.epoch))
    }

    fn links(&self) -> Result<Vec<Link>> {
        let rows = self.rows(
            "SELECT path, glob, explicit, acked, tail FROM links ORDER BY path",
            vec![],
        )?;
        Ok(rows.iter().map(|r| link_from_row(r)).collect())
    }

    fn link(&self, path: &str) -> Result<Option<Link>> {
        let rows = self.rows(
            "SELECT path, glob, explicit, acked, tail FROM links WHERE path = ?",
            vec![SqlStorageValue::String(path.to_string())],
        )?;
        Ok(rows.first().map(|r| link_from_row(r)))
    }

    fn has_pending(&self) -> Result<bool> {
        Ok(!self
            .rows("SELECT 1 FROM links WHERE tail > acked LIMIT 1", vec![])?
            .is_empty())
    }

    fn explicit_count(&self) -> Result<usize> {
        let rows = self.rows("SELECT count(*) FROM links WHERE explicit = 1", vec![])?;
        Ok(rows.first().map_or(0, |r| int(r, 0) as usize))
    }

    fn save_link(&self, link: &Link) -> Result<()> {
        self.sql()?.exec(
            "INSERT INTO links (path, glob, explicit, acked, tail) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (path) DO UPDATE SET glob = excluded.glob, explicit = excluded.explicit,
               acked = excluded.acked, tail = excluded.tail",
            vec![
                SqlStorageValue::String(link.path.clone()),
                SqlStorageValue::Integer(i64::from(link.glob)),
                SqlStorageValue::Integer(i64::from(link.explicit)),
                SqlStorageValue::Integer(link.acked as i64),
                SqlStorageValue::Integer(link.tail as i64),
            ],
        )?;
        Ok(())
    }

    /// Drops a link, and its place in the current wake.
    fn remove_link(&self, path: &str) -> Result<()> {
        self.atomically(|| {
            for q in [
                "DELETE FROM links WHERE path = ?",
                "DELETE FROM snapshot WHERE path = ?",
            ] {
                self.sql()?
                    .exec(q, vec![SqlStorageValue::String(path.to_string())])?;
            }
            Ok(())
        })
    }

    /// The current wake covers every link at its present tail.
    fn take_snapshot(&self) -> Result<()> {
        self.atomically(|| {
            self.sql()?.exec("DELETE FROM snapshot", None)?;
            self.sql()?.exec(
                "INSERT INTO snapshot (path, tail) SELECT path, tail FROM links",
                None,
            )?;
            Ok(())
        })
    }

    /// The links the current wake covers, each with the tail it was woken for.
    fn snapshot_links(&self) -> Result<Vec<(Link, u64)>> {
        let rows = self.rows(
            "SELECT l.path, l.glob, l.explicit, l.acked, l.tail, s.tail FROM links l
             JOIN snapshot s ON s.path = l.path ORDER BY l.path",
            vec![],
        )?;
        Ok(rows.iter().map(|r| (link_from_row(r), int(r, 5))).collect())
    }

    /// Acks every link the current wake covers up to the tail it was woken for.
    fn apply_snapshot(&self) -> Result<()> {
        self.sql()?.exec(
            "UPDATE links SET acked = (SELECT s.tail FROM snapshot s WHERE s.path = links.path)
             WHERE EXISTS (SELECT 1 FROM snapshot s WHERE s.path = links.path AND s.tail > links.acked)",
            None,
        )?;
        Ok(())
    }

    async fn set_alarm(&self, at_ms: i64) -> Result<()> {
        let when = js_sys::Date::new(&js_sys::Number::from(at_ms as f64));
        self.state
            .storage()
            .set_alarm(worker::ScheduledTime::new(when))
            .await
    }

    /// Sets the alarm for whatever the record owes next: a delivery, a lease expiry, or
    /// finishing linking or unlinking.
    async fn schedule(&self, record: &Record) -> Result<()> {
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
        let linking = record.link_retry_at.filter(|_| record.linking);
        let next = match (next, linking) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.set_alarm(at).await?;
        }
        Ok(())
    }

    // ---- routing ----

    async fn route(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        let op = url.path().trim_start_matches('/').to_string();
        let body = req.bytes().await.unwrap_or_default();
        let _turn = match op.as_str() {
            "create" | "delete" | "add-streams" | "remove-stream" => {
                Some(self.changes.enter().await)
            }
            _ => None,
        };
        let result = match op.as_str() {
            "internal/notify" => {
                let Ok(n) = serde_json::from_slice::<Notify>(&body) else {
                    return http::text(400, "bad notify");
                };
                return self.notify(n).await;
            }
            "internal/stream-removed" => {
                let Ok(p) = serde_json::from_slice::<StreamPath>(&body) else {
                    return http::text(400, "bad stream-removed");
                };
                if let Err(e) = self.faults.check(&p.path, Call::StreamRemoved) {
                    return http::unavailable(&e.to_string());
                }
                return self.stream_removed(&p.path);
            }
            "create" => self.create(&req, &body).await,
            "get" => self.get().await,
            "delete" => self.delete().await,
            "add-streams" => self.add_streams(&body).await,
            "remove-stream" => {
                let path = url
                    .query_pairs()
                    .find(|(k, _)| k == "path")
                    .map(|(_, v)| v.into_owned());
                self.remove_stream(path.as_deref()).await
            }
            "callback" => self.ack(&req, &body, Kind::Webhook).await,
            "ack" => self.ack(&req, &body, Kind::PullWake).await,
            "claim" => self.claim(&body).await,
            "release" => self.release(&req, &body).await,
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

    /// Runs `f`, keeping its writes only if it succeeds.
    fn atomically<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // Made before, not inside, the transaction: a rollback would take them with it.
        self.sql()?;
        match &self.storage {
            Some(storage) => storage.atomically(f),
            None => Err(worker::Error::RustError("storage unavailable".into())),
        }
    }

    fn live(&self) -> std::result::Result<Record, Failure> {
        match self.load()? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(SubscriptionError::NotFound.into()),
        }
    }

    /// The subscription as its GET, PUT and stream changes answer it. A webhook's signing key
    /// is named whether or not this object has fetched it yet.
    async fn describe(&self, record: &Record) -> Result<Value> {
        let streams: Vec<Value> = self.links()?.iter().map(Link::info).collect();
        let webhook = match &record.webhook_url {
            Some(url) => {
                let key = self.signing_key().await?;
                j!({
                    "url": url,
                    "signing": {
                        "alg": "ed25519",
                        "kid": key.kid,
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
            "webhook": webhook,
            "wake_stream": record.wake_stream,
            "lease_ttl_ms": record.lease_ttl_ms,
            "created_at": record.created_at,
            "status": if record.failures > 0 { "failed" } else { "active" },
            "description": record.description,
            "generation": record.generation,
        }))
    }

    /// The signing key, fetched from the registry once per object lifetime.
    async fn signing_key(&self) -> Result<SigningKey> {
        if let Some(key) = self.key.borrow().clone() {
            return Ok(key);
        }
        let (status, key) =
            call::<_, SigningKey>(&registry_stub(&self.env)?, "key", &j!({})).await?;
        let key = key.filter(|_| status == 200).ok_or_else(|| {
            worker::Error::RustError(format!("registry key request failed ({status})"))
        })?;
        self.key.replace(Some(key.clone()));
        Ok(key)
    }

    // ---- configuration ----

    async fn create(&self, req: &Request, body: &[u8]) -> std::result::Result<Response, Failure> {
        let input = CreateBody::parse(body).map_err(SubscriptionError::InvalidRequest)?;
        let id = header(req.headers(), X_SUBSCRIPTION).unwrap_or_default();
        let origin = header(req.headers(), X_ORIGIN).unwrap_or_default();
        let kind = match input.kind.as_str() {
            "webhook" => Kind::Webhook,
            "pull-wake" => Kind::PullWake,
            _ => {
                return Err(
                    SubscriptionError::InvalidRequest("type must be webhook or pull-wake").into(),
                )
            }
        };
        if let Some(p) = &input.pattern {
            if !rules::is_valid_pattern(p) {
                return Err(
                    SubscriptionError::InvalidRequest("pattern is not a valid glob").into(),
                );
            }
        }
        let explicit = rules::explicit_streams(input.streams)?;
        if input.pattern.is_none() && explicit.is_empty() {
            return Err(SubscriptionError::InvalidRequest("pattern or streams is required").into());
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.len() > rules::MAX_DESCRIPTION_BYTES)
        {
            return Err(SubscriptionError::InvalidRequest(
                "description must be at most 4096 bytes",
            )
            .into());
        }
        let lease_ttl_ms = rules::lease_ms(input.lease_ttl_ms)?;
        let webhook_url = match (kind, &input.webhook) {
            (Kind::Webhook, Some(url)) => {
                if url.len() > rules::MAX_WEBHOOK_URL_BYTES {
                    return Err(SubscriptionError::WebhookUrlRejected(
                        "webhook url must be at most 4096 bytes",
                    )
                    .into());
                }
                let allow = crate::config::Config::from_env(&self.env).webhook_allow_localhost;
                webhook::validate_url(url, allow)?;
                Some(url.clone())
            }
            (Kind::Webhook, None) => {
                return Err(SubscriptionError::InvalidRequest("webhook.url is required").into())
            }
            (Kind::PullWake, _) => None,
        };
        let wake_stream = match (kind, &input.wake_stream) {
            (Kind::PullWake, Some(w)) if rules::is_valid_path(w) => Some(w.clone()),
            (Kind::PullWake, _) => {
                return Err(
                    SubscriptionError::InvalidRequest("wake_stream must be a stream path").into(),
                )
            }
            (Kind::Webhook, _) => None,
        };
        let canonical = j!({
            "type": input.kind,
            "pattern": input.pattern,
            "streams": explicit,
            "webhook": webhook_url,
            "wake_stream": wake_stream,
            "lease_ttl_ms": lease_ttl_ms,
            "description": input.description,
        })
        .to_string();
        // Awaited before the record is read: from that read to the save below nothing is
        // awaited, so of two PUTs racing to create one id, exactly one finds no record.
        if kind == Kind::Webhook {
            self.signing_key().await?;
        }

        let previous = self.load()?;
        if let Some(existing) = previous.as_ref().filter(|r| !r.deleted) {
            if self.canonical()?.as_deref() != Some(canonical.as_str()) {
                return Err(SubscriptionError::AlreadyExists.into());
            }
            // A create answered 503 partway through linking is finished by its retry.
            if existing.linking {
                self.finish_links(existing).await?;
            }
            return Ok(json(200, &self.describe(existing).await?)?);
        }
        let record = Record {
            id: id.clone(),
            kind,
            pattern: input.pattern.clone(),
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description: input.description,
            created_at: format_rfc3339(now_ms()),
            origin,
            epoch: crypto::random_token(12)?,
            // A recreated subscription keeps counting, so old tokens stay fenced.
            generation: previous.map_or(0, |p| p.generation),
            wake_id: None,
            token: None,
            holder: None,
            lease_deadline: None,
            deliver: false,
            failures: 0,
            next_attempt_at: None,
            deleted: false,
            linking: true,
            unlinking: false,
            link_failures: 0,
            link_retry_at: Some(now_ms() + LINK_SAFETY_MS),
            canonical: String::new(),
            snapshot: Vec::new(),
        };
        // Explicit streams are linked at once, so a stream that appends while the registry is
        // asked already counts as linked; those that exist are moved to their tail below.
        let glob = |path: &str| {
            record
                .pattern
                .as_deref()
                .is_some_and(|p| rules::glob_matches(p, path))
        };
        self.atomically(|| {
            self.sql()?.exec("DELETE FROM links", None)?;
            self.sql()?.exec("DELETE FROM snapshot", None)?;
            self.save(&record)?;
            self.save_canonical(&canonical)?;
            for path in &explicit {
                self.save_link(&Link {
                    path: path.clone(),
                    glob: glob(path),
                    explicit: true,
                    acked: 0,
                    tail: 0,
                })?;
            }
            Ok(())
        })?;
        // In the same turn as the record and its explicit links: should this request die
        // partway through linking, the alarm finishes it.
        self.set_alarm(now_ms() + LINK_SAFETY_MS).await?;
        self.finish_links(&record).await?;
        Ok(json(201, &self.describe(&record).await?)?)
    }

    /// Links a new subscription's streams: the registry records its pattern and explicit
    /// streams and answers the streams they cover, then each of those is asked for its tail.
    /// Every link starts at its stream's tail as of the pass that succeeds (including one an
    /// append has made meanwhile): the subscription exists from the answer that says so. A
    /// failure is retried by the alarm with backoff, or by a PUT that finds it.
    async fn finish_links(&self, record: &Record) -> Result<()> {
        let explicit = self
            .links()?
            .into_iter()
            .filter(|l| l.explicit)
            .map(|l| l.path)
            .collect();
        let links = Links {
            id: record.id.clone(),
            pattern: record.pattern.clone(),
            explicit,
            replace: true,
        };
        let result = match self.register_links(&links).await {
            Ok(matched) => self.link_existing(record, matched, |_| true).await,
            Err(e) => Err(e),
        };
        // Deleted, or created again, meanwhile: that incarnation links its own.
        let Some(mut current) = self
            .load()?
            .filter(|r| !r.deleted && r.epoch == record.epoch)
        else {
            return result;
        };
        if current.settle_links("linking", &result) {
            current.linking = false;
        }
        self.save(&current)?;
        self.schedule(&current).await?;
        result
    }

    async fn register_links(&self, links: &Links) -> Result<Vec<Matched>> {
        let (status, reply) =
            call::<_, MatchedStreams>(&registry_stub(&self.env)?, "links", links).await?;
        match reply {
            Some(r) if status == 200 => Ok(r.streams),
            _ => Err(worker::Error::RustError(format!(
                "registry links request failed ({status})"
            ))),
        }
    }

    /// Subscribes to existing streams and links each at its current tail (no replay). A link
    /// that is `fresh` (made by this request before the stream was known to exist, or by an
    /// append notified meanwhile) moves to the tail too; others keep their cursor. A stream
    /// that cannot be asked fails the request, after every other one is linked. The registry
    /// asks them, `LINKS_PER_CALL` per call: each call between objects counts against a
    /// per-request limit, and each of the registry's calls is a request of its own.
    async fn link_existing(
        &self,
        record: &Record,
        matched: Vec<Matched>,
        fresh: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let per_call = crate::config::Config::from_env(&self.env).links_per_call;
        let mut failed = None;
        for group in matched.chunks(usize::try_from(per_call).unwrap_or(usize::MAX)) {
            let ask = SubLinks {
                id: record.id.clone(),
                paths: group.iter().map(|m| m.path.clone()).collect(),
            };
            let answers =
                match call::<_, SubLinked>(&registry_stub(&self.env)?, "sub-link", &ask).await {
                    Ok((200, Some(linked))) if linked.links.len() == group.len() => linked.links,
                    Ok((status, _)) => {
                        failed.get_or_insert(worker::Error::RustError(format!(
                            "registry answered {status} to sub-link"
                        )));
                        continue;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                };
            // Deleted, or deleted and created again, meanwhile: its links are not ours to set.
            if !self.still(record)? {
                return Ok(());
            }
            for (m, answer) in group.iter().zip(answers) {
                // 404: the stream is gone, and the registry forgets it. Any other answer is
                // a failure: the link is retried.
                let tail = match (answer.status, answer.tail) {
                    (200, Some(tail)) => tail,
                    (404, _) => continue,
                    (status, _) => {
                        failed.get_or_insert(worker::Error::RustError(format!(
                            "stream {} answered {status} to sub-link",
                            m.path
                        )));
                        continue;
                    }
                };
                // Read now, not before the await: an append may have been notified meanwhile.
                let link = match self.link(&m.path)? {
                    Some(l) => Link {
                        glob: l.glob || m.glob,
                        explicit: l.explicit || m.explicit,
                        acked: if fresh(&m.path) {
                            l.acked.max(tail)
                        } else {
                            l.acked
                        },
                        tail: l.tail.max(tail),
                        ..l
                    },
                    None if m.glob => Link {
                        path: m.path.clone(),
                        glob: true,
                        explicit: m.explicit,
                        acked: tail,
                        tail,
                    },
                    // An explicit link removed while the stream was asked.
                    None => continue,
                };
                self.save_link(&link)?;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn get(&self) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        Ok(json(200, &self.describe(&record).await?)?)
    }

    /// Deletes the subscription. Deleting one that does not exist is done already (204, as the
    /// reference server answers). The registry is told in this request, and should that fail,
    /// by the alarm: the subscription is gone from the answer on, and a DELETE retried on it
    /// tells the registry again.
    async fn delete(&self) -> std::result::Result<Response, Failure> {
        let Some(mut record) = self.load()? else {
            return Ok(Response::empty()?.with_status(204));
        };
        record.deleted = true;
        record.wake_id = None;
        record.token = None;
        record.holder = None;
        record.lease_deadline = None;
        record.deliver = false;
        record.linking = false;
        record.unlinking = true;
        record.link_failures = 0;
        record.link_retry_at = None;
        self.atomically(|| {
            self.save(&record)?;
            for q in [
                "DELETE FROM links",
                "DELETE FROM snapshot",
                "DELETE FROM config",
            ] {
                self.sql()?.exec(q, None)?;
            }
            Ok(())
        })?;
        let _ = self.state.storage().delete_alarm().await;
        self.unlink(record).await?;
        Ok(Response::empty()?.with_status(204))
    }

    /// Tells the registry to forget a deleted subscription's links; streams drop their
    /// subscriber entry the next time they notify it. A failure is retried by the alarm with
    /// backoff. Runs in a turn of `changes`, so a PUT that creates the id again (and replaces
    /// the links) comes before or after it, never between the call and its record.
    async fn unlink(&self, record: Record) -> Result<()> {
        let told = self.tell_unlinked(&record.id).await;
        let Some(mut current) = self
            .load()?
            .filter(|r| r.deleted && r.unlinking && r.epoch == record.epoch)
        else {
            return Ok(());
        };
        if current.settle_links("unlinking", &told) {
            current.unlinking = false;
        }
        self.save(&current)?;
        self.schedule(&current).await
    }

    async fn tell_unlinked(&self, id: &str) -> Result<()> {
        if self.faults.slow(id, Call::SubscriptionRemoved) {
            Delay::from(Duration::from_secs(1)).await;
        } else {
            self.faults.check(id, Call::SubscriptionUnlinked)?;
        }
        self.tell_registry(
            "subscription-removed",
            &StreamPath {
                path: id.to_string(),
            },
        )
        .await
    }

    /// Calls one of the registry's operations whose answer carries nothing but its status.
    async fn tell_registry<B: Serialize>(&self, op: &str, body: &B) -> Result<()> {
        let (status, _) = call::<_, Value>(&registry_stub(&self.env)?, op, body).await?;
        if !(200..300).contains(&status) {
            return Err(worker::Error::RustError(format!(
                "registry answered {status} to {op}"
            )));
        }
        Ok(())
    }

    async fn add_streams(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        let input: StreamsBody = serde_json::from_slice(body)
            .map_err(|_| SubscriptionError::InvalidRequest("body must be {\"streams\": [...]}"))?;
        let paths = rules::explicit_streams(input.streams)?;
        // Checked and linked here before anything is awaited: the registry is told only of
        // streams that fit, and a concurrent request counts these.
        let mut adding = Vec::new();
        for path in &paths {
            match self.link(path)? {
                Some(l) if l.explicit => {}
                other => adding.push((path, other)),
            }
        }
        rules::check_explicit_total(self.explicit_count()?, adding.len())?;
        let mut fresh = HashSet::new();
        for (path, existing) in adding {
            let link = match existing {
                Some(l) => Link {
                    explicit: true,
                    ..l
                },
                None => {
                    fresh.insert(path.clone());
                    Link {
                        path: path.clone(),
                        glob: record
                            .pattern
                            .as_deref()
                            .is_some_and(|p| rules::glob_matches(p, path)),
                        explicit: true,
                        acked: 0,
                        tail: 0,
                    }
                }
            };
            self.save_link(&link)?;
        }
        let links = Links {
            id: record.id.clone(),
            pattern: None,
            explicit: paths,
            replace: false,
        };
        let matched = self.register_links(&links).await?;
        self.link_existing(&record, matched, |path| fresh.contains(path))
            .await?;
        Ok(Response::empty()?.with_status(204))
    }

    async fn remove_stream(&self, path: Option<&str>) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        let Some(path) = path.filter(|p| rules::is_valid_path(p)) else {
            return Err(
                SubscriptionError::InvalidRequest("a valid stream path is required").into(),
            );
        };
        if let Some(link) = self.link(path)? {
            // The pattern decides whether the link stays, not a flag saved when the stream was
            // first linked: a stream named before it existed was linked as explicit only.
            let glob = record
                .pattern
                .as_deref()
                .is_some_and(|p| rules::glob_matches(p, path));
            if glob {
                // Still linked by the pattern, at the same cursor.
                self.save_link(&Link {
                    glob: true,
                    explicit: false,
                    ..link
                })?;
            } else {
                self.remove_link(path)?;
            }
        }
        // The stream is dropped: the answer says so whether or not the registry hears it. The
        // registry's links only say which subscriptions a new or removed stream asks, and
        // this one answers a stream it no longer links `linked: false` (which then drops it),
        // so a link left there costs a stream created at that path one call. A retried
        // DELETE tells the registry again, and deleting the subscription clears its links.
        let told = match self.faults.check(&record.id, Call::ExplicitRemoved) {
            Ok(()) => {
                let removed = RemoveExplicit {
                    id: record.id.clone(),
                    path: path.to_string(),
                };
                self.tell_registry("remove-explicit", &removed).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = told {
            worker::console_warn!(
                "subscription {}: the registry was not told it dropped {path}: {e}",
                record.id
            );
        }
        Ok(Response::empty()?.with_status(204))
    }

    // ---- delivery ----

    /// A stream's new tail. Answers whether the stream is still linked.
    async fn notify(&self, n: Notify) -> Result<Response> {
        let Some(mut record) = self.load()?.filter(|r| !r.deleted) else {
            return json(200, &j!({ "linked": false }));
        };
        let glob = record
            .pattern
            .as_deref()
            .is_some_and(|p| rules::glob_matches(p, &n.path));
        let link = match self.link(&n.path)? {
            Some(l) => Link {
                glob,
                tail: l.tail.max(n.tail),
                ..l
            },
            None if glob => {
                // Discovered by this append: linked before it, so the append is pending.
                Link {
                    path: n.path,
                    glob,
                    explicit: false,
                    acked: 0,
                    tail: n.tail,
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
    /// acks and wakes of the old one do not apply to it.
    fn stream_removed(&self, path: &str) -> Result<Response> {
        let Some(mut record) = self.load()?.filter(|r| !r.deleted) else {
            return json(200, &j!({ "linked": false }));
        };
        match self.link(path)? {
            Some(link) if link.explicit => {
                self.save_link(&Link {
                    acked: 0,
                    tail: 0,
                    ..link
                })?;
                self.sql()?.exec(
                    "DELETE FROM snapshot WHERE path = ?",
                    vec![SqlStorageValue::String(path.to_string())],
                )?;
            }
            Some(_) => self.remove_link(path)?,
            None => return json(200, &j!({ "linked": false })),
        }
        // A wake not yet delivered that was owed for this stream alone is owed no more.
        if record.deliver && !self.has_pending()? {
            self.clear_wake(&mut record)?;
            self.save(&record)?;
        }
        json(200, &j!({ "linked": true }))
    }

    /// Starts a new wake generation when work is pending and nothing is in flight. A webhook's
    /// lease starts once the wake is delivered, a pull-wake's when a worker claims it.
    fn wake_if_pending(&self, record: &mut Record) -> Result<bool> {
        if record.deleted || record.wake_id.is_some() || record.holder.is_some() {
            return Ok(false);
        }
        if !self.has_pending()? {
            return Ok(false);
        }
        record.generation += 1;
        record.wake_id = Some(format!("w_{}", crypto::random_token(12)?));
        self.take_snapshot()?;
        record.deliver = true;
        record.next_attempt_at = None;
        record.lease_deadline = None;
        if record.kind == Kind::Webhook {
            record.token = Some(crypto::random_token(32)?);
        }
        Ok(true)
    }

    fn clear_wake(&self, record: &mut Record) -> Result<()> {
        record.wake_id = None;
        record.token = None;
        record.holder = None;
        record.lease_deadline = None;
        record.deliver = false;
        record.next_attempt_at = None;
        self.sql()?.exec("DELETE FROM snapshot", None)?;
        Ok(())
    }

    async fn on_alarm(&self) -> Result<()> {
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
        if record.linking && record.link_retry_at.is_none_or(|t| t <= now) {
            let turn = self.changes.enter().await;
            // Unless deleted, or created again, while it waited for its turn. A failure is
            // logged and rescheduled there.
            if let Some(current) = self
                .load()?
                .filter(|r| !r.deleted && r.linking && r.epoch == record.epoch)
            {
                let _ = self.finish_links(&current).await;
            }
            drop(turn);
            let Some(current) = self.load()?.filter(|r| !r.deleted) else {
                return Ok(());
            };
            record = current;
        }
        // An expired lease frees the subscription; pending work wakes it again. (No lease runs
        // while a delivery is owed: that is retried until it succeeds.)
        if !record.deliver && record.lease_deadline.is_some_and(|d| d <= now) {
            self.clear_wake(&mut record)?;
            self.wake_if_pending(&mut record)?;
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
            // outcome counts only for the wake that is still owed.
            let Some(current) = self.load()?.filter(|r| !r.deleted) else {
                return Ok(());
            };
            record = current;
            if record.deliver && (record.wake_id.clone(), record.generation) == wake {
                self.delivery_outcome(&mut record, delivered)?;
            } else if let Err(e) = delivered {
                worker::console_warn!("subscription {}: delivery failed: {e}", record.id);
            }
        }
        self.save(&record)?;
        self.schedule(&record).await
    }

    /// Records a delivery attempt: a failure is retried with backoff; a webhook delivered
    /// starts its lease, and `{"done": true}` in its reply acks the wake at once.
    fn delivery_outcome(&self, record: &mut Record, delivered: Result<bool>) -> Result<()> {
        let now = now_ms();
        match delivered {
            Ok(done) => {
                record.deliver = false;
                record.failures = 0;
                record.next_attempt_at = None;
                if record.kind == Kind::Webhook {
                    record.lease_deadline = Some(now + record.lease_ttl_ms as i64);
                    if done {
                        self.apply_snapshot()?;
                        self.clear_wake(record)?;
                        self.wake_if_pending(record)?;
                    }
                }
            }
            Err(e) => {
                worker::console_warn!("subscription {}: delivery failed: {e}", record.id);
                record.failures = record.failures.saturating_add(1);
                record.next_attempt_at =
                    Some(now + rules::retry_delay_ms(record.failures, random_u32()) as i64);
            }
        }
        Ok(())
    }

    /// Posts the signed wake to the webhook; answers whether its reply said `{"done": true}`.
    /// A redirect is a failed delivery (the signed wake goes nowhere `validate_url` did not
    /// check), and the whole exchange must end within `WEBHOOK_TIMEOUT_MS`.
    async fn post_webhook(&self, record: &Record) -> Result<bool> {
        let (Some(url), Some(wake_id), Some(token)) = (
            record.webhook_url.clone(),
            record.wake_id.clone(),
            record.token.clone(),
        ) else {
            return Ok(false);
        };
        let streams: Vec<Value> = self
            .snapshot_links()?
            .iter()
            .map(|(link, tail)| {
                let mut info = link.info();
                info["tail_offset"] = j!(offset_text(*tail));
                info["has_pending"] = j!(*tail > link.acked);
                info
            })
            .collect();
        let body = j!({
            "subscription_id": record.id,
            "wake_id": wake_id,
            "generation": record.generation,
            "streams": streams,
            "callback_url": format!("{}{STREAM_PREFIX}__ds/subscriptions/{}/callback", record.origin, record.id),
            "callback_token": crate::auth::wake_token(&self.env, &record.id, &token).await?,
        })
        .to_string();
        let key = self.signing_key().await?;
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

    /// Appends one wake event per pending stream to the pull-wake stream.
    async fn post_wake_event(&self, record: &Record) -> Result<()> {
        let Some(wake_stream) = &record.wake_stream else {
            return Ok(());
        };
        let now = now_ms();
        let events: Vec<Value> = self
            .links()?
            .iter()
            .filter(|l| l.pending())
            .map(|l| {
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

    /// Checks a callback, ack or release against the current wake.
    fn fence(
        &self,
        record: &Record,
        req: &Request,
        wake_id: Option<&str>,
        generation: Option<u64>,
    ) -> std::result::Result<(), Failure> {
        // No token at all is refused first, so a caller without one learns nothing of the wake.
        // A token of a wake that has ended is not kept, so any other token is checked after
        // the fence: its holder is told it was fenced, as the protocol says.
        let given = bearer(req).ok_or(SubscriptionError::TokenInvalid)?;
        // The edge has checked the MAC of a token issued with `AUTH_SECRET` set; what the
        // subscription stores, and compares, is its random part.
        let given = crate::auth::wake_nonce(&given);
        let current = record.wake_id.as_deref();
        if current.is_none() || wake_id != current || generation != Some(record.generation) {
            return Err(SubscriptionError::Fenced.into());
        }
        match &record.token {
            Some(expected) if same_secret(given, expected) => Ok(()),
            _ => Err(SubscriptionError::TokenInvalid.into()),
        }
    }

    /// Webhook callback or pull-wake ack: apply acks; `done` ends the wake, otherwise the
    /// lease is extended (a heartbeat).
    async fn ack(
        &self,
        req: &Request,
        body: &[u8],
        kind: Kind,
    ) -> std::result::Result<Response, Failure> {
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
        if self.ack_positions(&input).await? {
            // Awaited: the record is read again, so what follows runs in one turn.
            record = self.live()?;
            self.fence(&record, req, input.wake_id.as_deref(), input.generation)?;
        }
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
            if offset > link.tail {
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
                    ..link
                };
                updated.insert(path.to_string(), (link, committed));
            }
        }
        for (link, _) in updated.values() {
            self.save_link(link)?;
        }
        let next_wake = if input.done {
            self.clear_wake(&mut record)?;
            self.wake_if_pending(&mut record)?
        } else {
            record.lease_deadline = Some(now_ms() + record.lease_ttl_ms as i64);
            false
        };
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(json(200, &j!({ "ok": true, "next_wake": next_wake }))?)
    }

    /// Checks with each stream an acked offset this object cannot vouch for (past the cursor
    /// and before the tail it was told): it must be where a read may start, so a JSON stream's
    /// must start a message (409 `INVALID_OFFSET` otherwise). Acks up to the tail, the usual
    /// kind, need no call. Answers whether it asked any stream.
    async fn ack_positions(&self, input: &AckBody) -> std::result::Result<bool, Failure> {
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
                if at > link.acked && at < link.tail {
                    asks.push((path.to_string(), at));
                }
            }
        }
        asks.sort_unstable();
        asks.dedup();
        for group in asks.chunks(ACK_CHECKS_AT_ONCE) {
            let calls = group.iter().map(|(path, at)| async move {
                let stub = stream_stub(&self.env, path)?;
                call::<_, Value>(&stub, "ack-position", &j!({ "at": at })).await
            });
            for answer in futures_util::future::join_all(calls).await {
                match answer?.0 {
                    // 404: the stream is gone, and so will its link be.
                    200 | 404 => {}
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
        Ok(!asks.is_empty())
    }

    async fn claim(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
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
            // The previous holder's lease ran out.
            self.clear_wake(&mut record)?;
        }
        if !self.has_pending()? {
            return Err(SubscriptionError::NoPendingWork.into());
        }
        if record.wake_id.is_none() {
            self.wake_if_pending(&mut record)?;
        }
        // Claimed: no wake event is owed (any still being retried is moot, and its failures no
        // longer make the subscription "failed"), and the lease runs.
        record.deliver = false;
        record.next_attempt_at = None;
        record.failures = 0;
        record.holder = Some(worker);
        record.token = Some(nonce);
        record.lease_deadline = Some(now + record.lease_ttl_ms as i64);
        self.take_snapshot()?;
        self.save(&record)?;
        self.schedule(&record).await?;
        let streams: Vec<Value> = self.links()?.iter().map(Link::info).collect();
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

    async fn release(&self, req: &Request, body: &[u8]) -> std::result::Result<Response, Failure> {
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
        self.clear_wake(&mut record)?;
        // Work still pending gets a new wake event for a later claim.
        self.wake_if_pending(&mut record)?;
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(Response::empty()?.with_status(204))
    }
}

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

#[cfg(test)]
mod tests {
    use super::{same_secret, CreateBody};

    #[test]
    fn a_create_body_refusal_names_the_field_of_the_wrong_type() {
        let refusal = |body: &str| CreateBody::parse(body.as_bytes()).err().unwrap_or("parsed");
        assert_eq!(refusal("[]"), "body must be a JSON subscription object");
        assert_eq!(refusal("{"), "body must be a JSON subscription object");
        assert_eq!(
            refusal(r#"{"pattern":"a/*"}"#),
            "type must be webhook or pull-wake"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","lease_ttl_ms":1.5}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","lease_ttl_ms":-1}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","streams":["a",1]}"#),
            "streams must be an array of stream paths"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","streams":null}"#),
            "streams must be an array of stream paths"
        );
        assert_eq!(
            refusal(r#"{"type":"webhook","webhook":"https://x"}"#),
            "webhook must be an object with a url"
        );
        let full = CreateBody::parse(
            br#"{"type":"webhook","pattern":"a/*","streams":["b"],"webhook":{"url":"https://x"},
                "wake_stream":null,"lease_ttl_ms":5000,"description":"d","extra":1}"#,
        )
        .expect("a valid body");
        assert_eq!(full.kind, "webhook");
        assert_eq!(full.pattern.as_deref(), Some("a/*"));
        assert_eq!(full.streams, ["b"]);
        assert_eq!(full.webhook.as_deref(), Some("https://x"));
        assert_eq!(full.wake_stream, None);
        assert_eq!(full.lease_ttl_ms, Some(5000));
        assert_eq!(full.description.as_deref(), Some("d"));
        // Null stands for an absent optional field.
        assert_eq!(
            refusal(r#"{"type":"pull-wake","pattern":null,"lease_ttl_ms":"9"}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
