//! `SubscriptionObject`: one subscription's configuration, per-stream cursors, wake generation,
//! lease and webhook retry state, all in SQLite so an evicted object resumes where it was.
//!
//! Wakes are delivered from the alarm handler: a wake (or a retry) sets the alarm, and the
//! alarm posts the signed webhook or appends the wake event. Leases expire by alarm too.

use std::cell::RefCell;

use edgestream::subscription::{self as rules, SubscriptionError};
use edgestream::time::format_rfc3339;
use edgestream::Offset;
use serde::{Deserialize, Serialize};
use serde_json::{json as j, Value};
use worker::{
    durable_object, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    Result, SqlStorage, SqlStorageValue, State, Url,
};

use super::registry::{Links, Matched, MatchedStreams, RemoveExplicit, StreamPath};
use super::{call, error, json, registry_stub, stream_stub, webhook, X_ORIGIN, X_SUBSCRIPTION};
use crate::crypto::{self, SigningKey};
use crate::http::{self, header, now_ms, random_u32};
use crate::path::STREAM_PREFIX;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscription (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
  path TEXT PRIMARY KEY,
  glob INTEGER NOT NULL,
  explicit INTEGER NOT NULL,
  acked INTEGER NOT NULL,
  tail INTEGER NOT NULL
);
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Webhook,
    PullWake,
}

/// The subscription row: configuration and delivery state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    kind: Kind,
    pattern: Option<String>,
    explicit: Vec<String>,
    webhook_url: Option<String>,
    wake_stream: Option<String>,
    lease_ttl_ms: u64,
    description: Option<String>,
    created_at: String,
    /// The public origin, for the callback and JWKS URLs this subscription hands out.
    origin: String,
    /// The normalized configuration; an identical PUT re-confirms, any other conflicts.
    canonical: String,
    generation: u64,
    wake_id: Option<String>,
    token: Option<String>,
    holder: Option<String>,
    lease_deadline: Option<i64>,
    /// Tails included in the current wake (what `{done: true}` acks).
    snapshot: Vec<(String, u64)>,
    /// A webhook post or a wake event is owed.
    deliver: bool,
    failures: u32,
    next_attempt_at: Option<i64>,
    deleted: bool,
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

/// PUT body.
#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "type")]
    kind: String,
    pattern: Option<String>,
    #[serde(default)]
    streams: Vec<String>,
    webhook: Option<WebhookBody>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct WebhookBody {
    url: String,
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
    sql: SqlStorage,
    ready: bool,
    key: RefCell<Option<SigningKey>>,
}

impl DurableObject for SubscriptionObject {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let ready = match sql.exec(SCHEMA, None) {
            Ok(_) => true,
            Err(e) => {
                worker::console_error!("subscription: cannot open storage: {e}");
                false
            }
        };
        SubscriptionObject {
            state,
            env,
            sql,
            ready,
            key: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if !self.ready {
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
        if let Err(e) = self.on_alarm().await {
            worker::console_error!("subscription alarm: {e}");
            // Try again shortly; the state in storage says what is still owed.
            self.set_alarm(now_ms() + 1_000).await?;
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
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
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

    fn load(&self) -> Result<Option<Record>> {
        let rows: Vec<Vec<SqlStorageValue>> = self
            .sql
            .exec("SELECT record FROM subscription WHERE id = 1", None)?
            .raw()
            .collect::<Result<_>>()?;
        Ok(rows
            .first()
            .and_then(|r| serde_json::from_str(&text(r, 0)).ok()))
    }

    fn save(&self, record: &Record) -> Result<()> {
        let encoded =
            serde_json::to_string(record).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.sql.exec(
            "INSERT INTO subscription (id, record) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            vec![SqlStorageValue::String(encoded)],
        )?;
        Ok(())
    }

    fn links(&self) -> Result<Vec<Link>> {
        let rows: Vec<Vec<SqlStorageValue>> = self
            .sql
            .exec(
                "SELECT path, glob, explicit, acked, tail FROM links ORDER BY path",
                None,
            )?
            .raw()
            .collect::<Result<_>>()?;
        Ok(rows
            .iter()
            .map(|r| Link {
                path: text(r, 0),
                glob: int(r, 1) != 0,
                explicit: int(r, 2) != 0,
                acked: int(r, 3),
                tail: int(r, 4),
            })
            .collect())
    }

    fn save_link(&self, link: &Link) -> Result<()> {
        self.sql.exec(
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

    fn remove_link(&self, path: &str) -> Result<()> {
        self.sql.exec(
            "DELETE FROM links WHERE path = ?",
            vec![SqlStorageValue::String(path.to_string())],
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

    /// Sets the alarm for whatever the record owes next: a delivery or a lease expiry.
    async fn schedule(&self, record: &Record) -> Result<()> {
        if record.deleted {
            return Ok(());
        }
        let delivery = record.deliver.then(|| record.next_attempt_at.unwrap_or(0));
        let next = match (delivery, record.lease_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.set_alarm(at.max(now_ms())).await?;
        }
        Ok(())
    }

    // ---- routing ----

    async fn route(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        let op = url.path().trim_start_matches('/').to_string();
        let body = req.bytes().await.unwrap_or_default();
        let method = req.method();
        let result = match op.as_str() {
            "internal/notify" => {
                let Ok(n) = serde_json::from_slice::<Notify>(&body) else {
                    return http::text(400, "bad notify");
                };
                return self.notify(n).await;
            }
            "create" => self.create(&req, &body).await,
            "get" => self.get(),
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
        let _ = method;
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

    fn describe(&self, record: &Record) -> Result<Value> {
        let streams: Vec<Value> = self.links()?.iter().map(Link::info).collect();
        let webhook = match &record.webhook_url {
            Some(url) => {
                let mut w = j!({ "url": url });
                if let Some(key) = self.key.borrow().as_ref() {
                    w["signing"] = j!({
                        "alg": "ed25519",
                        "kid": key.kid,
                        "jwks_url": format!("{}{STREAM_PREFIX}__ds/jwks.json", record.origin),
                    });
                }
                w
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
        let input: CreateBody = serde_json::from_slice(body).map_err(|_| {
            SubscriptionError::InvalidRequest("body must be a JSON subscription object")
        })?;
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
        let mut explicit = input.streams.clone();
        if explicit.iter().any(|p| !rules::is_valid_path(p)) {
            return Err(SubscriptionError::InvalidRequest("streams must be stream paths").into());
        }
        explicit.sort();
        explicit.dedup();
        if input.pattern.is_none() && explicit.is_empty() {
            return Err(SubscriptionError::InvalidRequest("pattern or streams is required").into());
        }
        let lease_ttl_ms = rules::lease_ms(input.lease_ttl_ms)?;
        let webhook_url = match (kind, &input.webhook) {
            (Kind::Webhook, Some(w)) => {
                let allow = crate::config::Config::from_env(&self.env).webhook_allow_localhost;
                webhook::validate_url(&w.url, allow)?;
                Some(w.url.clone())
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

        let previous = self.load()?;
        if let Some(existing) = previous.as_ref().filter(|r| !r.deleted) {
            if existing.canonical != canonical {
                return Err(SubscriptionError::AlreadyExists.into());
            }
            if kind == Kind::Webhook {
                self.signing_key().await?;
            }
            return Ok(json(200, &self.describe(existing)?)?);
        }
        if kind == Kind::Webhook {
            self.signing_key().await?;
        }
        let record = Record {
            id: id.clone(),
            kind,
            pattern: input.pattern.clone(),
            explicit: explicit.clone(),
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description: input.description,
            created_at: format_rfc3339(now_ms()),
            origin,
            canonical,
            // A recreated subscription keeps counting, so old tokens stay fenced.
            generation: previous.map_or(0, |p| p.generation),
            wake_id: None,
            token: None,
            holder: None,
            lease_deadline: None,
            snapshot: Vec::new(),
            deliver: false,
            failures: 0,
            next_attempt_at: None,
            deleted: false,
        };
        self.sql.exec("DELETE FROM links", None)?;
        self.save(&record)?;
        // Link what exists now at its current tail (no replay), and explicit streams that do
        // not exist yet at the start.
        let links = Links {
            id,
            pattern: input.pattern,
            explicit: explicit.clone(),
            replace: true,
        };
        let matched = self.register_links(&links).await?;
        for path in &explicit {
            if !matched.iter().any(|m| &m.path == path) {
                self.save_link(&Link {
                    path: path.clone(),
                    glob: false,
                    explicit: true,
                    acked: 0,
                    tail: 0,
                })?;
            }
        }
        self.link_existing(&record.id, matched).await?;
        Ok(json(201, &self.describe(&record)?)?)
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

    /// Subscribes to existing streams and links each at its current tail.
    async fn link_existing(&self, id: &str, matched: Vec<Matched>) -> Result<()> {
        let current = self.links()?;
        for m in matched {
            let (status, reply) = call::<_, Value>(
                &stream_stub(&self.env, &m.path)?,
                "sub-link",
                &j!({ "id": id }),
            )
            .await?;
            let Some(tail) = reply
                .filter(|_| status == 200)
                .and_then(|r| r["tail"].as_u64())
            else {
                continue;
            };
            let link = match current.iter().find(|l| l.path == m.path) {
                Some(l) => Link {
                    glob: l.glob || m.glob,
                    explicit: l.explicit || m.explicit,
                    tail: l.tail.max(tail),
                    ..l.clone()
                },
                None => Link {
                    path: m.path,
                    glob: m.glob,
                    explicit: m.explicit,
                    acked: tail,
                    tail,
                },
            };
            self.save_link(&link)?;
        }
        Ok(())
    }

    fn get(&self) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        Ok(json(200, &self.describe(&record)?)?)
    }

    async fn delete(&self) -> std::result::Result<Response, Failure> {
        let mut record = self.live()?;
        record.deleted = true;
        record.wake_id = None;
        record.token = None;
        record.holder = None;
        record.lease_deadline = None;
        record.deliver = false;
        record.snapshot.clear();
        self.save(&record)?;
        self.sql.exec("DELETE FROM links", None)?;
        let _ = self.state.storage().delete_alarm().await;
        // Streams drop their subscriber entry the next time they notify us.
        call::<_, Value>(
            &registry_stub(&self.env)?,
            "subscription-removed",
            &StreamPath { path: record.id },
        )
        .await?;
        Ok(Response::empty()?.with_status(204))
    }

    async fn add_streams(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        let input: StreamsBody = serde_json::from_slice(body)
            .map_err(|_| SubscriptionError::InvalidRequest("body must be {\"streams\": [...]}"))?;
        if input.streams.iter().any(|p| !rules::is_valid_path(p)) {
            return Err(SubscriptionError::InvalidRequest("streams must be stream paths").into());
        }
        let links = Links {
            id: record.id.clone(),
            pattern: None,
            explicit: input.streams.clone(),
            replace: false,
        };
        let matched = self.register_links(&links).await?;
        let current = self.links()?;
        for path in &input.streams {
            if matched.iter().any(|m| &m.path == path) {
                continue;
            }
            let link = match current.iter().find(|l| &l.path == path) {
                Some(l) => Link {
                    explicit: true,
                    ..l.clone()
                },
                None => Link {
                    path: path.clone(),
                    glob: false,
                    explicit: true,
                    acked: 0,
                    tail: 0,
                },
            };
            self.save_link(&link)?;
        }
        self.link_existing(&record.id, matched).await?;
        let mut record = record;
        for p in input.streams {
            if !record.explicit.contains(&p) {
                record.explicit.push(p);
            }
        }
        record.explicit.sort();
        self.save(&record)?;
        Ok(Response::empty()?.with_status(204))
    }

    async fn remove_stream(&self, path: Option<&str>) -> std::result::Result<Response, Failure> {
        let mut record = self.live()?;
        let Some(path) = path else {
            return Err(SubscriptionError::InvalidRequest("stream path required").into());
        };
        call::<_, Value>(
            &registry_stub(&self.env)?,
            "remove-explicit",
            &RemoveExplicit {
                id: record.id.clone(),
                path: path.to_string(),
            },
        )
        .await?;
        if let Some(link) = self.links()?.into_iter().find(|l| l.path == path) {
            if link.glob {
                self.save_link(&Link {
                    explicit: false,
                    ..link
                })?;
            } else {
                self.remove_link(path)?;
            }
        }
        record.explicit.retain(|p| p != path);
        self.save(&record)?;
        Ok(Response::empty()?.with_status(204))
    }

    // ---- delivery ----

    /// A stream's new tail. Answers whether the stream is still linked.
    async fn notify(&self, n: Notify) -> Result<Response> {
        let Some(mut record) = self.load()?.filter(|r| !r.deleted) else {
            return json(200, &j!({ "linked": false }));
        };
        let existing = self.links()?.into_iter().find(|l| l.path == n.path);
        let link = match existing {
            Some(l) => Link {
                tail: l.tail.max(n.tail),
                ..l
            },
            None => {
                let glob = record
                    .pattern
                    .as_deref()
                    .is_some_and(|p| rules::glob_matches(p, &n.path));
                let explicit = record.explicit.contains(&n.path);
                if !glob && !explicit {
                    return json(200, &j!({ "linked": false }));
                }
                // Discovered by this append: linked before it, so the append is pending.
                Link {
                    path: n.path,
                    glob,
                    explicit,
                    acked: 0,
                    tail: n.tail,
                }
            }
        };
        self.save_link(&link)?;
        if self.wake_if_pending(&mut record)? {
            self.save(&record)?;
            self.schedule(&record).await?;
        }
        json(200, &j!({ "linked": true }))
    }

    /// Starts a new wake generation when work is pending and nothing is in flight. For webhook
    /// subscriptions the lease starts now; pull-wake leases start when a worker claims.
    fn wake_if_pending(&self, record: &mut Record) -> Result<bool> {
        if record.deleted || record.wake_id.is_some() || record.holder.is_some() {
            return Ok(false);
        }
        let links = self.links()?;
        if !links.iter().any(Link::pending) {
            return Ok(false);
        }
        record.generation += 1;
        record.wake_id = Some(format!("w_{}", crypto::random_token(12)?));
        record.snapshot = links.iter().map(|l| (l.path.clone(), l.tail)).collect();
        record.deliver = true;
        record.next_attempt_at = None;
        if record.kind == Kind::Webhook {
            record.token = Some(crypto::random_token(32)?);
            record.lease_deadline = Some(now_ms() + record.lease_ttl_ms as i64);
        }
        Ok(true)
    }

    fn clear_wake(record: &mut Record) {
        record.wake_id = None;
        record.token = None;
        record.holder = None;
        record.lease_deadline = None;
        record.snapshot.clear();
        record.deliver = false;
        record.next_attempt_at = None;
    }

    async fn on_alarm(&self) -> Result<()> {
        let Some(mut record) = self.load()?.filter(|r| !r.deleted) else {
            return Ok(());
        };
        let now = now_ms();
        // An expired lease frees the subscription; pending work wakes it again.
        if !record.deliver && record.lease_deadline.is_some_and(|d| d <= now) {
            Self::clear_wake(&mut record);
            self.wake_if_pending(&mut record)?;
        }
        if record.deliver && record.next_attempt_at.is_none_or(|t| t <= now) {
            // Saved before the delivery is awaited: other requests (a claim prompted by the
            // wake event, a webhook's callback) may run meanwhile, and must see this state.
            self.save(&record)?;
            let before = serde_json::to_string(&record).unwrap_or_default();
            let wake = (record.wake_id.clone(), record.generation);
            let delivered = match record.kind {
                Kind::Webhook => self.post_webhook(&mut record).await,
                Kind::PullWake => self.post_wake_event(&record).await.map(|()| {
                    // The wake event is in the wake stream; claims take it from here.
                    record.deliver = false;
                }),
            };
            let Some(current) = self.load()?.filter(|r| !r.deleted) else {
                return Ok(());
            };
            if serde_json::to_string(&current).unwrap_or_default() != before {
                // A request changed the subscription while the delivery was in flight (it
                // claimed, acked or released the wake): its state wins over this stale copy,
                // except that a wake it still holds was delivered.
                record = current;
                match delivered {
                    Ok(()) if (record.wake_id.clone(), record.generation) == wake => {
                        record.deliver = false;
                        record.failures = 0;
                        record.next_attempt_at = None;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        worker::console_warn!("subscription {}: delivery failed: {e}", record.id)
                    }
                }
            } else {
                Self::delivery_outcome(&mut record, delivered, now);
            }
        }
        self.save(&record)?;
        self.schedule(&record).await
    }

    /// Records a delivery attempt: a failure is retried with backoff.
    fn delivery_outcome(record: &mut Record, delivered: Result<()>, now: i64) {
        match delivered {
            Ok(()) => {
                record.failures = 0;
                record.next_attempt_at = None;
            }
            Err(e) => {
                worker::console_warn!("subscription {}: delivery failed: {e}", record.id);
                record.failures += 1;
                record.next_attempt_at =
                    Some(now + rules::retry_delay_ms(record.failures, random_u32()) as i64);
            }
        }
    }

    /// Posts the signed wake to the webhook. `{"done": true}` acks the snapshot at once.
    async fn post_webhook(&self, record: &mut Record) -> Result<()> {
        let (Some(url), Some(wake_id), Some(token)) = (
            record.webhook_url.clone(),
            record.wake_id.clone(),
            record.token.clone(),
        ) else {
            record.deliver = false;
            return Ok(());
        };
        let links = self.links()?;
        let streams: Vec<Value> = links
            .iter()
            .filter(|l| record.snapshot.iter().any(|(p, _)| p == &l.path))
            .map(|l| {
                let mut info = l.info();
                if let Some((_, tail)) = record.snapshot.iter().find(|(p, _)| p == &l.path) {
                    info["tail_offset"] = j!(offset_text(*tail));
                    info["has_pending"] = j!(*tail > l.acked);
                }
                info
            })
            .collect();
        let body = j!({
            "subscription_id": record.id,
            "wake_id": wake_id,
            "generation": record.generation,
            "streams": streams,
            "callback_url": format!("{}{STREAM_PREFIX}__ds/subscriptions/{}/callback", record.origin, record.id),
            "callback_token": token,
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
            .with_body(Some(body.into()));
        let target = Url::parse(&url)?;
        let mut resp = Fetch::Request(Request::new_with_init(target.as_str(), &init)?)
            .send()
            .await?;
        let status = resp.status_code();
        if !(200..300).contains(&status) {
            return Err(worker::Error::RustError(format!(
                "webhook answered {status}"
            )));
        }
        record.deliver = false;
        record.lease_deadline = Some(now_ms() + record.lease_ttl_ms as i64);
        let reply: Value = resp.json().await.unwrap_or(Value::Null);
        if reply["done"] == Value::Bool(true) {
            self.apply_snapshot(record)?;
            Self::clear_wake(record);
            self.wake_if_pending(record)?;
        }
        Ok(())
    }

    fn apply_snapshot(&self, record: &Record) -> Result<()> {
        for link in self.links()? {
            if let Some((_, tail)) = record.snapshot.iter().find(|(p, _)| p == &link.path) {
                if *tail > link.acked {
                    self.save_link(&Link {
                        acked: *tail,
                        ..link
                    })?;
                }
            }
        }
        Ok(())
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
        let name = crate::path::StreamName::from_url_path(&format!("{STREAM_PREFIX}{wake_stream}"))
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
        let current = record.wake_id.as_deref();
        if current.is_none() || wake_id != current || generation != Some(record.generation) {
            return Err(SubscriptionError::Fenced.into());
        }
        match (bearer(req), &record.token) {
            (Some(given), Some(expected)) if same_secret(&given, expected) => Ok(()),
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
        let links = self.links()?;
        let mut updated = Vec::new();
        for item in &input.acks {
            let Some(path) = item.stream.as_deref().or(item.path.as_deref()) else {
                return Err(SubscriptionError::InvalidRequest("ack needs a stream").into());
            };
            let Some(link) = links.iter().find(|l| l.path == path) else {
                return Err(
                    SubscriptionError::InvalidRequest("ack names a stream not linked").into(),
                );
            };
            let offset = Offset::parse(&item.offset)
                .map_err(|_| SubscriptionError::InvalidOffset)?
                .position();
            if offset > link.tail {
                return Err(SubscriptionError::InvalidOffset.into());
            }
            if offset > link.acked {
                updated.push(Link {
                    acked: offset,
                    ..link.clone()
                });
            }
        }
        for link in &updated {
            self.save_link(link)?;
        }
        let next_wake = if input.done {
            Self::clear_wake(&mut record);
            self.wake_if_pending(&mut record)?
        } else {
            record.lease_deadline = Some(now_ms() + record.lease_ttl_ms as i64);
            false
        };
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(json(200, &j!({ "ok": true, "next_wake": next_wake }))?)
    }

    async fn claim(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
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
            Self::clear_wake(&mut record);
        }
        let links = self.links()?;
        if !links.iter().any(Link::pending) {
            return Err(SubscriptionError::NoPendingWork.into());
        }
        if record.wake_id.is_none() {
            self.wake_if_pending(&mut record)?;
            // Claimed at once: no wake event is owed.
            record.deliver = false;
        }
        record.holder = Some(worker);
        record.token = Some(crypto::random_token(32)?);
        record.lease_deadline = Some(now + record.lease_ttl_ms as i64);
        record.snapshot = links.iter().map(|l| (l.path.clone(), l.tail)).collect();
        self.save(&record)?;
        self.schedule(&record).await?;
        let streams: Vec<Value> = links.iter().map(Link::info).collect();
        Ok(json(
            200,
            &j!({
                "wake_id": record.wake_id,
                "generation": record.generation,
                "token": record.token,
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
        Self::clear_wake(&mut record);
        // Work still pending gets a new wake event for a later claim.
        self.wake_if_pending(&mut record)?;
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(Response::empty()?.with_status(204))
    }
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
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
