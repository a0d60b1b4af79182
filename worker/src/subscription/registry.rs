//! `RegistryObject`: the one object that knows every stream path and every subscription link.
//!
//! It is consulted when a stream is created or removed and when a subscription's links change,
//! never on appends. It also makes the calls that link a new channel or subscription to the
//! existing streams it covers, `LINKS_PER_CALL` per request of its own, so that no one request
//! makes more calls between objects than the platform allows. When a stream is removed it tells the subscriptions that link it, so a
//! stream created later at the same path is linked as the new stream it is. It also keeps the
//! webhook signing keys and their schedule ([`super::keys`]), so every subscription signs with
//! the same key and the JWKS endpoint can publish them, and, with `KEY_ROTATION_MS` set,
//! rotates them on its alarm (its only use of it).

use edgestream::subscription::{glob_matches, literal_prefix};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use super::keys::{self, Schedule, ScheduledKey};
use super::{call, json, subscription_stub};
use crate::crypto::SigningKey;
use crate::fault::{Call, Faults};
use crate::http;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
  sub TEXT NOT NULL,
  kind TEXT NOT NULL,
  pattern TEXT NOT NULL,
  prefix TEXT NOT NULL,
  epoch TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (sub, kind, pattern)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_prefix ON links (prefix);
CREATE TABLE IF NOT EXISTS channels (prefix TEXT PRIMARY KEY, instance TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_cursor (prefix TEXT PRIMARY KEY, instance TEXT NOT NULL, after TEXT, linked INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (kid TEXT PRIMARY KEY, x TEXT NOT NULL, d TEXT NOT NULL, created_ms INTEGER NOT NULL, signs_from_ms INTEGER, retires_ms INTEGER) WITHOUT ROWID;
";

/// Changes to the tables of a registry made by an older version, in the order they were made.
const MIGRATIONS: &[crate::schema::Migration] = &[
    // Tables keyed by text, without a rowid (2026-12-05): a row written less per stream
    // created and per link made.
    crate::schema::Migration::WithoutRowid(&["links", "channels", "channel_cursor", "keys"]),
    // The same for `streams`, a row per stream in the deployment: set aside and moved back a
    // bounded number of rows per call (2026-12-05), where it had been copied in one transaction
    // (3 million rows: 21 s of CPU locally, the platform allowing 30).
    crate::schema::Migration::SetAside {
        table: "streams",
        aside: ASIDE,
    },
    // Signing keys that rotate (2026-12-05): when a key signs from (NULL: since it was made)
    // and when it stops being published (NULL: not replaced yet).
    crate::schema::Migration::Change {
        check: "SELECT signs_from_ms FROM keys LIMIT 0",
        apply: "ALTER TABLE keys ADD COLUMN signs_from_ms INTEGER",
    },
    crate::schema::Migration::Change {
        check: "SELECT retires_ms FROM keys LIMIT 0",
        apply: "ALTER TABLE keys ADD COLUMN retires_ms INTEGER",
    },
    // How many streams a channel's pages have linked so far (2026-12-06): shown on the
    // channel's HEAD while linking goes on.
    crate::schema::Migration::Change {
        check: "SELECT linked FROM channel_cursor LIMIT 0",
        apply: "ALTER TABLE channel_cursor ADD COLUMN linked INTEGER NOT NULL DEFAULT 0",
    },
    // Which incarnation of a subscription made its links (2026-12-06): a stream new to a
    // deleted subscription told the one created again under its id that it was new to it too.
    // Links made before name none ('').
    crate::schema::Migration::Change {
        check: "SELECT epoch FROM links LIMIT 0",
        apply: "ALTER TABLE links ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
    },
];

/// Where an older registry's `streams` waits to be moved into the new table: while it exists,
/// every stream is in one or the other (or both), and the registry reads both.
const ASIDE: &str = "streams_rowid";

/// How many set-aside streams each call to the registry moves before it is answered: locally
/// 0.08 to 0.1 s of CPU with 3 million set aside, 0.13 s with 10 million, where the platform
/// allows an invocation 30 s. [`TEST_MOVE_ROWS`] with faults on, so tests see the tables mixed.
const MOVE_ROWS: usize = 5_000;
const TEST_MOVE_ROWS: usize = 1;

pub const GLOB: &str = "glob";
pub const EXPLICIT: &str = "explicit";

#[derive(Serialize, Deserialize)]
pub struct StreamPath {
    pub path: String,
}

/// A stream just created; `channel` is its incarnation when it is a channel.
#[derive(Serialize, Deserialize)]
pub struct CreatedStream {
    pub path: String,
    #[serde(default)]
    pub channel: Option<String>,
}

/// How many channels are above a path: asked before a stream is created with an initial body
/// too large to copy into a channel, which is refused only if some channel would copy it.
#[derive(Serialize, Deserialize)]
pub struct ChannelCount {
    pub channels: usize,
}

/// What a new stream is told: the subscriptions and the channels that cover it.
#[derive(Serialize, Deserialize)]
pub struct SubscriptionIds {
    pub subs: Vec<String>,
    /// The incarnation of each of `subs` whose links found the stream (its epoch), in the same
    /// order ('' for links made before they named it): the stream is new to that incarnation
    /// only, not to one created again under the id before it hears so.
    #[serde(default)]
    pub epochs: Vec<String>,
    #[serde(default)]
    pub channels: Vec<ChannelRef>,
    /// For a new channel: streams below it are still to be linked, by calling again (each
    /// call links at most `LINKS_PER_CALL` of them).
    #[serde(default)]
    pub more: bool,
    /// For a new channel: how many existing streams below it its calls have linked so far.
    #[serde(default)]
    pub linked: u64,
    /// How many rows the registry read to find `subs`: shown to tests (with `FAULT_MARKER`)
    /// in [`crate::fault::REGISTRY_ROWS_HEADER`].
    #[serde(default)]
    pub rows_read: u64,
    /// How many rows the registry wrote for this call (with `FAULT_MARKER`; else 0), shown in
    /// [`crate::fault::REGISTRY_WRITTEN_HEADER`].
    #[serde(default)]
    pub rows_written: u64,
}

/// A channel's name and incarnation: a channel deleted and created again is a new channel.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ChannelRef {
    pub path: String,
    pub instance: String,
}

/// A new channel links the existing streams below it with this many calls in flight at once.
const LINK_BATCH: usize = 32;

/// How far a call linking a new channel's streams got.
/// `Done` and `More` carry how many streams this channel incarnation's calls have linked.
enum Linking {
    Done(u64),
    /// Linked as many as one call may: the channel calls again for the rest.
    More(u64),
    /// Some stream did not answer: the channel's creation is retried.
    Failed,
}

/// A subscription's links: its pattern and its explicit streams.
#[derive(Serialize, Deserialize)]
pub struct Links {
    pub id: String,
    pub pattern: Option<String>,
    pub explicit: Vec<String>,
    /// Replace the subscription's links (create), or add to them (add-streams).
    pub replace: bool,
    /// The subscription's incarnation (its epoch), which a stream these links find is told
    /// it is new to.
    #[serde(default)]
    pub epoch: String,
}

#[derive(Serialize, Deserialize)]
pub struct RemoveExplicit {
    pub id: String,
    pub path: String,
}

/// Existing streams a subscription now links, with how.
#[derive(Serialize, Deserialize, Debug)]
pub struct Matched {
    pub path: String,
    pub glob: bool,
    pub explicit: bool,
}

#[derive(Serialize, Deserialize)]
pub struct MatchedStreams {
    pub streams: Vec<Matched>,
}

/// A subscription asks for the next page of the existing streams its pattern covers.
#[derive(Serialize, Deserialize)]
pub struct PatternPage {
    pub id: String,
    pub pattern: String,
    /// The last path of the page before (`None`: the first page).
    pub after: Option<String>,
    /// How many streams the registry reads for the page.
    pub limit: usize,
}

/// A page of the streams a pattern covers, each asked to link the subscription, how each
/// answered (in the same order), and where the next page begins (`None`: the last page).
#[derive(Serialize, Deserialize)]
pub struct PatternLinked {
    pub streams: Vec<Matched>,
    pub links: Vec<StreamLinked>,
    pub next: Option<String>,
}

/// A subscription's request that the registry link it to some streams: the registry asks each
/// of them, so the subscription's own request makes one call per `LINKS_PER_CALL` streams.
#[derive(Serialize, Deserialize)]
pub struct SubLinks {
    pub id: String,
    pub paths: Vec<String>,
}

/// How each stream answered, in the order asked.
#[derive(Serialize, Deserialize)]
pub struct SubLinked {
    pub links: Vec<StreamLinked>,
}

#[derive(Serialize, Deserialize)]
pub struct StreamLinked {
    /// The stream's status: 200 (linked), 404 (gone), anything else a failure; 0 when it could
    /// not be reached.
    pub status: u16,
    /// Its tail, when linked.
    pub tail: Option<u64>,
    /// The stream is new to the subscription: its registration found the subscription, and
    /// has not yet told it so. It is linked from its start, not its tail.
    #[serde(default)]
    pub created: bool,
    /// With `created`: the incarnation of the subscription the registration found (`None`
    /// from a stream that names none).
    #[serde(default)]
    pub epoch: Option<String>,
}

#[durable_object]
pub struct RegistryObject {
    state: State,
    env: Env,
    sql: SqlStorage,
    storage: Option<crate::transaction::Transactional>,
    ready: bool,
    /// Whether [`ASIDE`] still holds streams.
    aside: std::cell::Cell<bool>,
    faults: Faults,
    /// The rows each call reads and writes, for tests (`FAULT_MARKER`).
    rows: crate::rows::RowCounter,
    /// When this instance set the alarm for the next automatic rotation (Unix ms): set once
    /// per instance and after each rotation, not on every call.
    rotation_armed: std::cell::Cell<Option<i64>>,
}

fn s(v: &str) -> SqlStorageValue {
    SqlStorageValue::String(v.to_string())
}

fn col(row: &[SqlStorageValue], i: usize) -> String {
    match row.get(i) {
        Some(SqlStorageValue::String(s)) => s.clone(),
        _ => String::new(),
    }
}

impl DurableObject for RegistryObject {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage = crate::transaction::Transactional::of(&raw);
        let state = State::from(raw);
        let sql = state.storage().sql();
        let (opened, storage) = match storage {
            Ok(storage) => (
                crate::schema::open(&sql, SCHEMA, MIGRATIONS, Some(&storage)),
                Some(storage),
            ),
            Err(e) => (Err(e), None),
        };
        let ready = match opened {
            Ok(_) => true,
            Err(e) => {
                worker::console_error!("registry: cannot open storage: {e}");
                false
            }
        };
        let marker = crate::config::Config::from_env(&env).fault_marker;
        let rows = crate::rows::RowCounter::install(&sql, marker.is_some());
        let faults = Faults::new(marker);
        let aside = std::cell::Cell::new(ready && crate::schema::has_table(&sql, ASIDE));
        RegistryObject {
            state,
            env,
            sql,
            storage,
            ready,
            aside,
            faults,
            rows,
            rotation_armed: std::cell::Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if !self.ready {
            return http::unavailable("registry storage unavailable; retry");
        }
        self.move_aside();
        let inner = Clone::clone(req.inner()); // the handle, not `Request.clone()`
        let body = req.bytes().await.unwrap_or_default();
        let resp = match self.route(req, &body).await {
            Ok(resp) => resp,
            Err(e) => {
                let about = super::described(&inner, &body);
                worker::console_error!("registry: {about}: {e}");
                return http::unavailable("temporary storage failure; retry");
            }
        };
        // After the call, so that the first key, made by it, is counted from.
        if let Err(e) = self.arm_rotation().await {
            worker::console_error!("registry: setting the key rotation's alarm: {e}");
        }
        Ok(resp)
    }

    /// The automatic key rotation (`KEY_ROTATION_MS`), when due; an error is retried by the
    /// runtime, with backoff.
    async fn alarm(&self) -> Result<Response> {
        if !self.ready {
            return Err(worker::Error::RustError(
                "registry storage unavailable".into(),
            ));
        }
        let config = crate::config::Config::from_env(&self.env);
        let Some(period_ms) = config.key_rotation_ms else {
            // Turned off since the alarm was set: nothing more is set.
            return Response::ok("");
        };
        // Unset first: should this alarm fail past the runtime's retries, the next call to the
        // registry sets it again.
        self.rotation_armed.set(None);
        self.rotate_if_due(period_ms as i64, config.key_rotation_overlap_ms as i64)
            .await?;
        self.arm_rotation().await?;
        Response::ok("")
    }
}

impl RegistryObject {
    /// Moves the next set-aside streams into `streams`, if any are left. A failure is logged
    /// and left for the next call: the streams are read from both tables meanwhile.
    fn move_aside(&self) {
        let Some(storage) = self.storage.as_ref().filter(|_| self.aside.get()) else {
            return;
        };
        let count = if self.faults.enabled() {
            TEST_MOVE_ROWS
        } else {
            MOVE_ROWS
        };
        match storage.atomically(|| crate::schema::move_aside(&self.sql, "streams", ASIDE, count)) {
            Ok(more) => self.aside.set(more),
            Err(e) => worker::console_error!("registry: moving streams set aside: {e}"),
        }
    }

    /// `select`, a query of `streams` (named in its first `FROM streams`), followed by `rest`
    /// (its `ORDER BY` and `LIMIT`): while streams are set aside, of both tables, merged in
    /// path order without duplicates (SQLite merges the two index scans, so a `LIMIT` reads
    /// at most that many rows of each).
    fn of_streams(&self, select: &str, rest: &str) -> String {
        if self.aside.get() {
            let other = select.replacen("FROM streams", &format!("FROM {ASIDE}"), 1);
            format!("{select} UNION {other} {rest}")
        } else {
            format!("{select} {rest}")
        }
    }

    fn rows(&self, q: &str, b: Vec<SqlStorageValue>) -> Result<Vec<Vec<SqlStorageValue>>> {
        self.sql.exec(q, b)?.raw().collect()
    }

    async fn route(&self, req: Request, body: &[u8]) -> Result<Response> {
        let url = req.url()?;
        let op = url.path().trim_start_matches('/').to_string();
        match op.as_str() {
            "jwks" => return self.jwks().await,
            // The admin routes `GET /v1/stream/__ds/keys` and `POST .../keys/rotate`, which the
            // edge has authorised.
            "keys" => return self.describe_keys(&self.schedule().await?),
            "keys/rotate" => {
                let overlap_ms = match keys::overlap_of(body) {
                    Ok(overlap_ms) => overlap_ms,
                    Err(message) => {
                        return super::error(
                            edgestream::subscription::SubscriptionError::InvalidRequest(message),
                        )
                    }
                };
                let schedule = self.rotate(overlap_ms).await?;
                // The next automatic rotation is a period after this one.
                self.rotation_armed.set(None);
                return self.describe_keys(&schedule);
            }
            _ => {}
        }
        let parse_err = || http::text(400, "bad registry request");
        match op.as_str() {
            "internal/stream-created" => {
                let Ok(p) = serde_json::from_slice::<CreatedStream>(body) else {
                    return parse_err();
                };
                self.faults.check(&p.path, Call::Broken)?;
                // Counted from here (with faults on): this call's rows alone.
                self.rows.take();
                self.sql.exec(
                    "INSERT OR IGNORE INTO streams (path) VALUES (?)",
                    vec![s(&p.path)],
                )?;
                let (found, rows_read) = self.subscriptions_of(&p.path)?;
                let (subs, epochs) = found.into_iter().unzip();
                // A channel feeds no channel; a plain stream feeds every channel above it.
                let (channels, more, linked) = match &p.channel {
                    Some(instance) => match self.channel_created(&p.path, instance).await? {
                        // The channel's creation stays owed: its retry links them again.
                        Linking::Failed => {
                            return http::unavailable(
                                "some streams below the channel could not be linked; retry",
                            )
                        }
                        Linking::More(linked) => (Vec::new(), true, linked),
                        Linking::Done(linked) => (Vec::new(), false, linked),
                    },
                    None => (self.channels_above(&p.path)?, false, 0),
                };
                let rows_written = self.rows.take().map_or(0, |(rows, _)| rows.written);
                reply(&SubscriptionIds {
                    subs,
                    epochs,
                    channels,
                    more,
                    linked,
                    rows_read,
                    rows_written,
                })
            }
            "internal/channels-above" => {
                let Ok(p) = serde_json::from_slice::<StreamPath>(body) else {
                    return parse_err();
                };
                reply(&ChannelCount {
                    channels: self.channels_above(&p.path)?.len(),
                })
            }
            "internal/stream-removed" => {
                let Ok(p) = serde_json::from_slice::<StreamPath>(body) else {
                    return parse_err();
                };
                self.sql
                    .exec("DELETE FROM streams WHERE path = ?", vec![s(&p.path)])?;
                if self.aside.get() {
                    self.sql.exec(
                        &format!("DELETE FROM {ASIDE} WHERE path = ?"),
                        vec![s(&p.path)],
                    )?;
                }
                // Its sources drop their links when it answers them 404.
                self.sql
                    .exec("DELETE FROM channels WHERE prefix = ?", vec![s(&p.path)])?;
                self.sql.exec(
                    "DELETE FROM channel_cursor WHERE prefix = ?",
                    vec![s(&p.path)],
                )?;
                let (found, _) = self.subscriptions_of(&p.path)?;
                let subs: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
                if !self.stream_removed(&p, &subs).await {
                    // The stream's removal stays owed: its retry tells them all again.
                    return http::unavailable("some subscriptions could not be told; retry");
                }
                reply(&serde_json::json!({}))
            }
            "internal/links" => {
                let Ok(links) = serde_json::from_slice::<Links>(body) else {
                    return parse_err();
                };
                let streams = self.set_links(&links)?;
                reply(&MatchedStreams { streams })
            }
            "internal/pattern-page" => {
                let Ok(page) = serde_json::from_slice::<PatternPage>(body) else {
                    return parse_err();
                };
                reply(&self.pattern_page(&page).await?)
            }
            "internal/remove-explicit" => {
                let Ok(r) = serde_json::from_slice::<RemoveExplicit>(body) else {
                    return parse_err();
                };
                self.sql.exec(
                    "DELETE FROM links WHERE sub = ? AND kind = ? AND pattern = ?",
                    vec![s(&r.id), s(EXPLICIT), s(&r.path)],
                )?;
                reply(&serde_json::json!({}))
            }
            "internal/subscription-removed" => {
                let Ok(p) = serde_json::from_slice::<StreamPath>(body) else {
                    return parse_err();
                };
                self.sql
                    .exec("DELETE FROM links WHERE sub = ?", vec![s(&p.path)])?;
                reply(&serde_json::json!({}))
            }
            "internal/sub-link" => {
                let Ok(links) = serde_json::from_slice::<SubLinks>(body) else {
                    return parse_err();
                };
                reply(&self.sub_link(&links).await)
            }
            "internal/key" => reply(&self.key().await?),
            "internal/keys" => reply(&self.schedule().await?),
            _ => http::text(404, "unknown registry operation"),
        }
    }

    /// Subscriptions whose pattern or explicit list names `path`, each with the incarnation
    /// that made its links, in id order, and how many rows the registry read to find them.
    fn subscriptions_of(&self, path: &str) -> Result<(Vec<(String, String)>, u64)> {
        // Only links whose literal prefix starts the path can match (an explicit link's prefix
        // is its path). Each of the path's prefixes is looked up in `links_by_prefix`, so the
        // rows read are those that can match plus one per character of the path, however many
        // links other paths have: a scan of every link made each create and removal in the
        // deployment cost 22 ms of the registry's time per 100,000 explicit links.
        let cursor = self.sql.exec(
            "WITH RECURSIVE cut(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM cut WHERE n < length(?1))
             SELECT DISTINCT sub, kind, pattern, epoch FROM cut JOIN links ON links.prefix = substr(?1, 1, cut.n)",
            vec![s(path)],
        )?;
        let rows: Vec<Vec<SqlStorageValue>> = cursor.raw().collect::<Result<_>>()?;
        let read = cursor.rows_read() as u64;
        let mut subs: Vec<(String, String)> = rows
            .iter()
            .filter(|r| {
                let pattern = col(r, 2);
                if col(r, 1) == GLOB {
                    glob_matches(&pattern, path)
                } else {
                    pattern == path
                }
            })
            .map(|r| (col(r, 0), col(r, 3)))
            .collect();
        // One incarnation's links name one epoch (a create replaces them all).
        subs.sort_unstable();
        subs.dedup_by(|a, b| a.0 == b.0);
        Ok((subs, read))
    }

    /// The channels above `path`.
    fn channels_above(&self, path: &str) -> Result<Vec<ChannelRef>> {
        let mut found = Vec::new();
        // No channel deeper than this covers anything.
        let ancestors = edgestream::channel::ancestors(path);
        for prefix in ancestors.take(edgestream::channel::MAX_CHANNEL_DEPTH) {
            let rows = self.rows(
                "SELECT instance FROM channels WHERE prefix = ?",
                vec![s(prefix)],
            )?;
            if let Some(r) = rows.first() {
                found.push(ChannelRef {
                    path: prefix.to_string(),
                    instance: col(r, 0),
                });
            }
        }
        Ok(found)
    }

    /// Records a new channel and links the streams below it (not other channels), from each
    /// stream's tail, [`LINK_BATCH`] calls at a time: at most `LINKS_PER_CALL` of them
    /// per call, in path order, from where the last call of this channel incarnation stopped.
    /// The channel calls again while there are more; a call that some stream failed to answer
    /// moves on from nothing, and its retry links those streams again (a link is idempotent).
    async fn channel_created(&self, prefix: &str, instance: &str) -> Result<Linking> {
        self.sql.exec(
            "INSERT OR REPLACE INTO channels (prefix, instance) VALUES (?, ?)",
            vec![s(prefix), s(instance)],
        )?;
        // A new incarnation starts from the first stream below it.
        self.sql.exec(
            "INSERT INTO channel_cursor (prefix, instance, after, linked) VALUES (?1, ?2, ?1 || '/', 0)
             ON CONFLICT (prefix) DO UPDATE SET instance = excluded.instance, after = excluded.after,
               linked = 0
             WHERE channel_cursor.instance != excluded.instance",
            vec![s(prefix), s(instance)],
        )?;
        let cursor = self.rows(
            "SELECT after, linked FROM channel_cursor WHERE prefix = ?",
            vec![s(prefix)],
        )?;
        let before = match cursor.first().and_then(|r| r.get(1)) {
            Some(SqlStorageValue::Integer(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        // No cursor left: every stream below it is linked.
        let Some(after) = cursor.first().and_then(|r| match r.first() {
            Some(SqlStorageValue::String(after)) => Some(after.clone()),
            _ => None,
        }) else {
            return Ok(Linking::Done(before));
        };
        let per_call = crate::config::Config::from_env(&self.env).links_per_call;
        // Every path that starts with `prefix/` sorts between `prefix/` and `prefix0`.
        let rows = self.rows(
            &self.of_streams(
                "SELECT path FROM streams WHERE path > ?1 AND path < ?2
                   AND path NOT IN (SELECT prefix FROM channels)",
                "ORDER BY path LIMIT ?3",
            ),
            vec![
                s(&after),
                s(&format!("{prefix}0")),
                SqlStorageValue::Integer(i64::try_from(per_call).unwrap_or(i64::MAX)),
            ],
        )?;
        let paths: Vec<String> = rows.iter().map(|r| col(r, 0)).collect();
        let below: Vec<&String> = paths
            .iter()
            .filter(|p| edgestream::channel::covers(prefix, p))
            .collect();
        let link = ChannelRef {
            path: prefix.to_string(),
            instance: instance.to_string(),
        };
        let results = self.call_streams(&below, "channel-link", &link).await;
        let mut all = true;
        let mut linked = 0u64;
        for (path, result) in below.iter().zip(results) {
            match result {
                Ok((200, reply)) => {
                    if reply.is_some_and(|r| r["linked"].as_bool() == Some(true)) {
                        linked += 1;
                    }
                }
                Ok((404, _)) => {}
                Ok((status, _)) => {
                    all = false;
                    worker::console_warn!(
                        "registry: stream {path} answered {status} to channel-link {prefix}"
                    )
                }
                Err(e) => {
                    all = false;
                    worker::console_warn!("registry: stream {path}: channel-link failed: {e}")
                }
            }
        }
        if !all {
            return Ok(Linking::Failed);
        }
        // Unless the channel was created again meanwhile, which starts afresh.
        let next = match paths.last() {
            Some(last) if paths.len() as u64 >= per_call => Some(last.clone()),
            _ => None,
        };
        // The place and the count move together, once per page whose every stream answered:
        // a page that failed is linked again whole (a stream keeps a link it has), and
        // counted once, when it succeeds.
        self.sql.exec(
            "UPDATE channel_cursor SET after = ?, linked = linked + ? WHERE prefix = ? AND instance = ?",
            vec![
                next.as_deref().map_or(SqlStorageValue::Null, s),
                SqlStorageValue::Integer(i64::try_from(linked).unwrap_or(i64::MAX)),
                s(prefix),
                s(instance),
            ],
        )?;
        let total = match self
            .rows(
                "SELECT linked FROM channel_cursor WHERE prefix = ? AND instance = ?",
                vec![s(prefix), s(instance)],
            )?
            .first()
            .and_then(|r| r.first())
        {
            Some(SqlStorageValue::Integer(n)) => u64::try_from(*n).unwrap_or(0),
            _ => before.saturating_add(linked),
        };
        Ok(if next.is_some() {
            Linking::More(total)
        } else {
            Linking::Done(total)
        })
    }

    /// Links subscription `id` to each stream in `paths`, and answers how each of them answered.
    async fn sub_link(&self, links: &SubLinks) -> SubLinked {
        let ask = serde_json::json!({ "id": links.id });
        let results = self.call_streams(&links.paths, "sub-link", &ask).await;
        let links = links
            .paths
            .iter()
            .zip(results)
            .map(|(path, result)| match result {
                Ok((status, reply)) => StreamLinked {
                    status,
                    tail: reply.as_ref().and_then(|r| r["tail"].as_u64()),
                    created: reply
                        .as_ref()
                        .is_some_and(|r| r["created"] == serde_json::json!(true)),
                    epoch: reply
                        .as_ref()
                        .and_then(|r| r["epoch"].as_str())
                        .map(str::to_string),
                },
                Err(e) => {
                    worker::console_warn!("registry: stream {path}: sub-link failed: {e}");
                    StreamLinked {
                        status: 0,
                        tail: None,
                        created: false,
                        epoch: None,
                    }
                }
            })
            .collect();
        SubLinked { links }
    }

    /// Calls `op` with `body` on each stream in `paths`, [`LINK_BATCH`] at a time, and answers
    /// each one's result, in the order of `paths`. As each call is answered the next starts,
    /// so a stream slow to answer holds one of the places, not the streams after its batch.
    async fn call_streams<P: AsRef<str>, B: Serialize>(
        &self,
        paths: &[P],
        op: &str,
        body: &B,
    ) -> Vec<Result<(u16, Option<serde_json::Value>)>> {
        use futures_util::StreamExt;
        let calls = paths.iter().enumerate().map(|(i, path)| async move {
            let result = match super::stream_stub(&self.env, path.as_ref()) {
                Ok(stub) => call::<_, serde_json::Value>(&stub, op, body).await,
                Err(e) => Err(e),
            };
            (i, result)
        });
        // Unordered: an ordered buffer counts answers kept for their turn as places taken.
        let mut results: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(LINK_BATCH)
            .collect()
            .await;
        results.sort_unstable_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Tells each subscription that links `path` that its stream is gone; whether every one
    /// answered (telling one twice changes nothing).
    async fn stream_removed(&self, path: &StreamPath, subs: &[String]) -> bool {
        let calls = subs.iter().map(|id| async move {
            let result = match subscription_stub(&self.env, id) {
                Ok(stub) => call::<_, serde_json::Value>(&stub, "stream-removed", path).await,
                Err(e) => Err(e),
            };
            (id, result)
        });
        let mut all = true;
        for (id, result) in futures_util::future::join_all(calls).await {
            match result {
                Ok((200, _)) => {}
                Ok((status, _)) => {
                    all = false;
                    worker::console_warn!(
                        "registry: subscription {id} answered {status} to stream-removed {}",
                        path.path
                    )
                }
                Err(e) => {
                    all = false;
                    worker::console_warn!(
                        "registry: subscription {id}: stream-removed {} failed: {e}",
                        path.path
                    )
                }
            }
        }
        all
    }

    /// Records a subscription's links and answers the existing streams it names explicitly
    /// (at most [`edgestream::subscription::MAX_EXPLICIT_STREAMS`]). The streams its pattern
    /// covers, perhaps millions, are listed a page at a time by [`Self::pattern_page`]:
    /// recorded first, the pattern finds every stream created from now on itself.
    fn set_links(&self, links: &Links) -> Result<Vec<Matched>> {
        if links.replace {
            self.sql
                .exec("DELETE FROM links WHERE sub = ?", vec![s(&links.id)])?;
        }
        if let Some(pattern) = &links.pattern {
            self.link(
                &links.id,
                GLOB,
                pattern,
                &literal_prefix(pattern),
                &links.epoch,
            )?;
        }
        let mut matched = Vec::new();
        for path in &links.explicit {
            self.link(&links.id, EXPLICIT, path, path, &links.epoch)?;
            let exists = !self
                .rows(
                    &self.of_streams("SELECT 1 FROM streams WHERE path = ?1", ""),
                    vec![s(path)],
                )?
                .is_empty();
            if exists {
                matched.push(Matched {
                    path: path.clone(),
                    glob: links
                        .pattern
                        .as_deref()
                        .is_some_and(|p| glob_matches(p, path)),
                    explicit: true,
                });
            }
        }
        Ok(matched)
    }

    /// Stores one link of subscription `sub`, made by its incarnation `epoch`. One stored
    /// already is written again only when another incarnation made it (an add-streams that
    /// comes before the create's own links have replaced a deleted incarnation's).
    fn link(&self, sub: &str, kind: &str, pattern: &str, prefix: &str, epoch: &str) -> Result<()> {
        self.sql.exec(
            "INSERT INTO links (sub, kind, pattern, prefix, epoch) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (sub, kind, pattern) DO UPDATE SET epoch = excluded.epoch
             WHERE links.epoch != excluded.epoch",
            vec![s(sub), s(kind), s(pattern), s(prefix), s(epoch)],
        )?;
        Ok(())
    }

    /// One page of the streams `pattern` covers, in path order after `after`, each asked to
    /// link subscription `id` (as [`Self::sub_link`] does: the calls are this request's, not
    /// the subscription's). At most `limit` rows are read, so a pattern over millions of
    /// streams never holds them all. Every path with the pattern's literal prefix lies in one
    /// run of the ordered paths, so the page starts at the prefix (or past `after`) and ends
    /// at the first path without it. Streams that `id` names explicitly were answered by
    /// [`Self::set_links`].
    async fn pattern_page(&self, page: &PatternPage) -> Result<PatternLinked> {
        let prefix = literal_prefix(&page.pattern);
        let limit = page.limit.clamp(1, 100_000);
        let rows = self.rows(
            &self.of_streams(
                "SELECT path FROM streams WHERE path >= ?1 AND path > ?2",
                "ORDER BY path LIMIT ?3",
            ),
            vec![
                s(&prefix),
                s(page.after.as_deref().unwrap_or("")),
                SqlStorageValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )?;
        let paths: Vec<String> = rows.iter().map(|r| col(r, 0)).collect();
        let inside = paths.iter().take_while(|p| p.starts_with(&prefix)).count();
        let next = match paths.last() {
            Some(last) if inside == paths.len() && paths.len() >= limit => Some(last.clone()),
            _ => None,
        };
        let mut streams = Vec::new();
        for path in paths.into_iter().take(inside) {
            if !glob_matches(&page.pattern, &path) {
                continue;
            }
            let explicit = !self
                .rows(
                    "SELECT 1 FROM links WHERE sub = ? AND kind = ? AND pattern = ?",
                    vec![s(&page.id), s(EXPLICIT), s(&path)],
                )?
                .is_empty();
            if !explicit {
                streams.push(Matched {
                    path,
                    glob: true,
                    explicit: false,
                });
            }
        }
        let links = self
            .sub_link(&SubLinks {
                id: page.id.clone(),
                paths: streams.iter().map(|m| m.path.clone()).collect(),
            })
            .await
            .links;
        Ok(PatternLinked {
            streams,
            links,
            next,
        })
    }

    /// The key that signs now (a key is made on first use), for a subscription object of an
    /// older version, which asks for this one key.
    async fn key(&self) -> Result<SigningKey> {
        let now = http::now_ms();
        self.schedule()
            .await?
            .signing_at(now)
            .map(|k| k.key.clone())
            .ok_or_else(|| worker::Error::RustError("no signing key".into()))
    }

    /// The keys still published and when each signs, after the first key is made if there is
    /// none yet and the keys whose time is up are deleted.
    async fn schedule(&self) -> Result<Schedule> {
        let stored = self.stored_schedule()?;
        if !stored.keys.is_empty() {
            return Ok(stored);
        }
        let key = SigningKey::generate().await?;
        // Another request may have made one while we awaited: keep the first.
        let stored = self.stored_schedule()?;
        if !stored.keys.is_empty() {
            return Ok(stored);
        }
        let now = http::now_ms();
        self.insert_key(&key, now, now)?;
        Ok(Schedule {
            keys: vec![ScheduledKey {
                key,
                signs_from_ms: now,
                retires_ms: None,
            }],
        })
    }

    /// Stores `key`, made at `created_ms`, to sign from `signs_from_ms`.
    fn insert_key(&self, key: &SigningKey, created_ms: i64, signs_from_ms: i64) -> Result<()> {
        self.sql.exec(
            "INSERT INTO keys (kid, x, d, created_ms, signs_from_ms) VALUES (?, ?, ?, ?, ?)",
            vec![
                s(&key.kid),
                s(&key.x),
                s(&key.d),
                SqlStorageValue::Integer(created_ms),
                SqlStorageValue::Integer(signs_from_ms),
            ],
        )?;
        Ok(())
    }

    fn stored_schedule(&self) -> Result<Schedule> {
        let now = http::now_ms();
        // Deleting nothing writes nothing: this costs a write only when a key is due to go.
        self.sql.exec(
            "DELETE FROM keys WHERE retires_ms IS NOT NULL AND retires_ms <= ?",
            vec![SqlStorageValue::Integer(now)],
        )?;
        let rows = self.rows(
            "SELECT kid, x, d, COALESCE(signs_from_ms, created_ms), retires_ms FROM keys
             ORDER BY COALESCE(signs_from_ms, created_ms), kid",
            vec![],
        )?;
        let int = |r: &[SqlStorageValue], i: usize| match r.get(i) {
            Some(SqlStorageValue::Integer(n)) => Some(*n),
            _ => None,
        };
        Ok(Schedule {
            keys: rows
                .iter()
                .map(|r| ScheduledKey {
                    key: SigningKey {
                        kid: col(r, 0),
                        x: col(r, 1),
                        d: col(r, 2),
                    },
                    signs_from_ms: int(r, 3).unwrap_or(0),
                    retires_ms: int(r, 4),
                })
                .collect(),
        })
    }

    /// Makes a fresh key that signs `overlap_ms` from now, and has the keys that signed before
    /// it go `overlap_ms` after that ([`keys::rotate`]).
    async fn rotate(&self, overlap_ms: i64) -> Result<Schedule> {
        self.schedule().await?;
        let fresh = SigningKey::generate().await?;
        self.install(fresh, overlap_ms)
    }

    /// When the newest key was made (Unix ms), if there is one.
    fn newest_key_ms(&self) -> Result<Option<i64>> {
        let rows = self.rows("SELECT MAX(created_ms) FROM keys", vec![])?;
        Ok(match rows.first().and_then(|r| r.first()) {
            Some(SqlStorageValue::Integer(ms)) => Some(*ms),
            _ => None,
        })
    }

    /// When the next automatic rotation is due: `period_ms` after the newest key was made
    /// (by the last rotation, automatic or asked for, or on first use). `None` without a key.
    fn rotation_due(&self, period_ms: i64) -> Result<Option<i64>> {
        Ok(self
            .newest_key_ms()?
            .map(|made| made.saturating_add(period_ms)))
    }

    /// When the next automatic rotation is due, if rotation is on and there is a key.
    fn next_rotation_ms(&self) -> Result<Option<i64>> {
        match crate::config::Config::from_env(&self.env).key_rotation_ms {
            Some(period_ms) => self.rotation_due(period_ms as i64),
            None => Ok(None),
        }
    }

    /// Rotates the key when the newest is `period_ms` old: whoever runs it (the alarm, again
    /// after a restart or a retry), a period has one rotation, since the check is made again
    /// after the last await, on the stored keys, right before the writes.
    async fn rotate_if_due(&self, period_ms: i64, overlap_ms: i64) -> Result<()> {
        let due = |registry: &Self| -> Result<bool> {
            Ok(registry
                .rotation_due(period_ms)?
                .is_some_and(|at| http::now_ms() >= at))
        };
        if !due(self)? {
            return Ok(());
        }
        let fresh = SigningKey::generate().await?;
        if due(self)? {
            self.install(fresh, overlap_ms)?;
        }
        Ok(())
    }

    /// Sets the alarm for the next automatic rotation, unless this instance has already set
    /// it (or rotation is off, or there is no key yet).
    async fn arm_rotation(&self) -> Result<()> {
        let Some(period_ms) = crate::config::Config::from_env(&self.env).key_rotation_ms else {
            return Ok(());
        };
        if self.rotation_armed.get().is_some() {
            return Ok(());
        }
        let Some(at) = self.rotation_due(period_ms as i64)? else {
            return Ok(());
        };
        let when = js_sys::Date::new(&js_sys::Number::from(at as f64));
        self.state
            .storage()
            .set_alarm(worker::ScheduledTime::new(when))
            .await?;
        self.rotation_armed.set(Some(at));
        Ok(())
    }

    /// Stores `fresh` as the key that signs `overlap_ms` from now ([`Self::rotate`]). Nothing
    /// here awaits: from the read of the keys to the writes, no other request runs.
    fn install(&self, fresh: SigningKey, overlap_ms: i64) -> Result<Schedule> {
        let now = http::now_ms();
        let plan = keys::rotate(&self.stored_schedule()?, now, overlap_ms);
        for kid in &plan.withdrawn {
            self.sql
                .exec("DELETE FROM keys WHERE kid = ?", vec![s(kid)])?;
        }
        for (kid, until) in &plan.retiring {
            self.sql.exec(
                "UPDATE keys SET retires_ms = ? WHERE kid = ?",
                vec![SqlStorageValue::Integer(*until), s(kid)],
            )?;
        }
        self.insert_key(&fresh, now, plan.signs_from_ms)?;
        worker::console_log!(
            "edgestream: webhook signing key {} made; it signs from {} (Unix ms)",
            fresh.kid,
            plan.signs_from_ms
        );
        self.stored_schedule()
    }

    /// The admin view of the keys: each published key's `kid`, `status` (`current`, `next`
    /// or `retiring`), `signs_from_ms` and `retires_ms`.
    fn describe_keys(&self, schedule: &Schedule) -> Result<Response> {
        let now = http::now_ms();
        let keys: Vec<serde_json::Value> = schedule
            .statuses(now)
            .into_iter()
            .map(|(k, status)| {
                serde_json::json!({
                    "kid": k.key.kid,
                    "status": status.name(),
                    "signs_from_ms": k.signs_from_ms,
                    "retires_ms": k.retires_ms,
                })
            })
            .collect();
        let next_rotation_ms = self.next_rotation_ms()?;
        json(
            200,
            &serde_json::json!({
                "keys": keys,
                "now_ms": now,
                "next_rotation_ms": next_rotation_ms,
            }),
        )
    }

    /// The published keys (a fresh one included before it signs), cached no longer than until
    /// the next one is due to go.
    async fn jwks(&self) -> Result<Response> {
        let schedule = self.schedule().await?;
        let now = http::now_ms();
        let next_rotation_ms = self.next_rotation_ms()?;
        let keys: Vec<serde_json::Value> = schedule
            .statuses(now)
            .into_iter()
            .map(|(k, _)| {
                SigningKey {
                    d: String::new(),
                    ..k.key.clone()
                }
                .public_jwk()
            })
            .collect();
        let resp = json(200, &serde_json::json!({ "keys": keys }))?;
        resp.headers()
            .set("content-type", "application/jwk-set+json")?;
        resp.headers().set(
            "cache-control",
            &format!(
                "public, max-age={}",
                schedule.max_age_s(now, next_rotation_ms)
            ),
        )?;
        Ok(resp)
    }
}

fn reply<T: Serialize>(value: &T) -> Result<Response> {
    let value = serde_json::to_value(value).map_err(|e| worker::Error::RustError(e.to_string()))?;
    json(200, &value)
}
