//! The subscription's SQLite tables and every row read or written: the record (configuration
//! and delivery state), the links (one cursor per stream), the `snapshot` of tails the current
//! wake covers, the `config` a PUT is compared with, the `provisional` links an append made
//! while linking ran, and the tails `offered` by wakes whose retries stopped.

use std::collections::HashMap;

use edgestream::subscription as rules;
use edgestream::Offset;
use serde::{Deserialize, Serialize};
use serde_json::{json as j, Value};
use worker::{Result, SqlStorage, SqlStorageValue};

use super::SubscriptionObject;
use crate::http::{now_ms, random_u32};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscription (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config (id INTEGER PRIMARY KEY CHECK (id = 1), canonical TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
  path TEXT PRIMARY KEY,
  glob INTEGER NOT NULL,
  explicit INTEGER NOT NULL,
  acked INTEGER NOT NULL,
  tail INTEGER NOT NULL,
  placed INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot (path TEXT PRIMARY KEY, tail INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS provisional (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offered (path TEXT PRIMARY KEY, tail INTEGER NOT NULL) WITHOUT ROWID;
";

/// Changes to tables of objects made by older versions, in the order they were made.
pub(super) const MIGRATIONS: &[crate::schema::Migration] = &[
    // Keyed by text, without a rowid (2026-12-05): a rowid table keeps the path in an index
    // beside the row, so each link made and each stream a wake lists wrote two rows.
    crate::schema::Migration::WithoutRowid(&["links", "snapshot"]),
    // Whether an explicit link's cursor is placed (2026-12-06): linking that failed partway
    // moved the links it had made to their stream's tail again when retried. Links made
    // before were placed, or are moved to the tail as they were.
    crate::schema::Migration::Change {
        check: "SELECT placed FROM links LIMIT 0",
        apply: "ALTER TABLE links ADD COLUMN placed INTEGER NOT NULL DEFAULT 1",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Kind {
    Webhook,
    PullWake,
}

/// How many ended wakes' tokens a subscription remembers (see [`Record::earlier_tokens`]).
pub(super) const EARLIER_TOKENS: usize = 8;

/// The subscription row: configuration and delivery state, every field of bounded size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) kind: Kind,
    pub(super) pattern: Option<String>,
    pub(super) webhook_url: Option<String>,
    pub(super) wake_stream: Option<String>,
    pub(super) lease_ttl_ms: u64,
    pub(super) description: Option<String>,
    pub(super) created_at: String,
    /// The public origin, for the callback and JWKS URLs this subscription hands out.
    pub(super) origin: String,
    /// New at each creation: work begun for one incarnation (linking streams) stops when it
    /// is deleted or replaced meanwhile.
    #[serde(default)]
    pub(super) epoch: String,
    pub(super) generation: u64,
    pub(super) wake_id: Option<String>,
    pub(super) token: Option<String>,
    /// The tokens of the last [`EARLIER_TOKENS`] wakes before this one, newest last: a
    /// callback, ack or release that presents one is fenced (409), one whose token this
    /// subscription never issued is refused (401), as PROTOCOL §7.3 checks the token first.
    #[serde(default)]
    pub(super) earlier_tokens: Vec<String>,
    pub(super) holder: Option<String>,
    /// When the lease ends. A webhook's starts when a delivery succeeds, a pull-wake's when a
    /// worker claims.
    pub(super) lease_deadline: Option<i64>,
    /// A webhook post or a wake event is owed.
    pub(super) deliver: bool,
    /// Deliveries that failed since the last one that succeeded.
    pub(super) failures: u32,
    pub(super) next_attempt_at: Option<i64>,
    /// When the first of those failures came: retries stop once they have gone on for
    /// `DELIVERY_GIVE_UP_MS` ([`rules::after_failure`]).
    #[serde(default)]
    pub(super) failing_since: Option<i64>,
    /// The last failure's error, cut short ([`rules::last_error`]), for the `GET`.
    #[serde(default)]
    pub(super) last_error: Option<String>,
    /// Retries stopped then: the wake was ended, its data left owed, and no alarm is set for
    /// it. New data starts a wake again (not before `resume_at`), and so does a `PUT`.
    #[serde(default)]
    pub(super) gave_up_at: Option<i64>,
    /// The earliest the first wake after giving up is delivered.
    #[serde(default)]
    pub(super) resume_at: Option<i64>,
    /// How many of `failures` were leases that lapsed with data still owed: a wake taken (a
    /// webhook's 2xx, a worker's claim) and not acked within `lease_ttl_ms`. While any are
    /// counted, a delivery that succeeds does not end the run of failures; only an ack does.
    #[serde(default)]
    pub(super) lapses: u32,
    /// Wakes a worker released in a row, data still owed, since the last ack (or `PUT`). The
    /// first hands the work back at once; each one after it is a failure, as a lapsed lease
    /// is: a worker that claims and releases without acking, again and again, gets its wake
    /// events a backoff apart, and after `DELIVERY_GIVE_UP_MS` none. A claim does not reset
    /// it; only an ack does.
    #[serde(default)]
    pub(super) releases: u32,
    /// The run of failures (its `failing_since`) whose stopped wakes the `offered` table
    /// holds: a new run starts it afresh ([`SubscriptionObject::news_since_listed`]).
    #[serde(default)]
    pub(super) offered_run: Option<i64>,
    pub(super) deleted: bool,
    /// Linking this incarnation's streams (the registry's list, then each stream's tail) has
    /// not yet succeeded: a PUT that finds it so finishes it, and so does the alarm.
    #[serde(default)]
    pub(super) linking: bool,
    /// Linking has registered this incarnation's links with the registry and linked its
    /// explicit streams that exist: what is left is the pattern's pages.
    #[serde(default)]
    pub(super) links_registered: bool,
    /// The last path of the last page of the pattern's streams linked (`None`: no page yet),
    /// so the next invocation reads the page after it: none twice, none skipped.
    #[serde(default)]
    pub(super) link_after: Option<String>,
    /// How many existing streams linking has linked so far (`None`: made by a version that
    /// did not count them).
    #[serde(default)]
    pub(super) linked: Option<u64>,
    /// Streams a `POST .../streams` named are still to be linked: that request failed, or
    /// died, before each had answered. The alarm links every named stream whose cursor is not
    /// yet placed ([`Link::placed`]), with linking's backoff, and a later `POST` or a `PUT` of
    /// the same body does too; the client need not retry.
    #[serde(default)]
    pub(super) placing: bool,
    /// Deleted, and the registry has yet to forget this subscription's links: the alarm tells
    /// it, unless a PUT creates the id again first (its links replace them).
    #[serde(default)]
    pub(super) unlinking: bool,
    /// Failed attempts at linking, or, once deleted, at unlinking.
    #[serde(default)]
    pub(super) link_failures: u32,
    /// When the alarm next tries to finish linking, or unlinking.
    #[serde(default)]
    pub(super) link_retry_at: Option<i64>,
    /// The path the current wake's list of streams starts after (`None`: the first), so a
    /// claim that lists them again at their tails lists the same part.
    #[serde(default)]
    pub(super) list_from: Option<String>,
    /// The path the next wake's list starts after: where the current one ended.
    #[serde(default)]
    pub(super) list_next: Option<String>,
    /// Records saved before `config` and `snapshot` had tables kept them here: read once, and
    /// never written again.
    #[serde(default, skip_serializing)]
    pub(super) canonical: String,
    #[serde(default, skip_serializing)]
    pub(super) snapshot: Vec<(String, u64)>,
}

impl Record {
    /// Ends the current wake's token: it is remembered as an earlier one.
    pub(super) fn end_token(&mut self) {
        if let Some(token) = self.token.take() {
            if self.earlier_tokens.len() >= EARLIER_TOKENS {
                self.earlier_tokens.remove(0);
            }
            self.earlier_tokens.push(token);
        }
    }

    /// Forgets past failed deliveries: one succeeded (a webhook answered or called back, a
    /// wake event was written or claimed), or a `PUT` asks to try again at once. A delivery
    /// still owed is then tried at once.
    pub(super) fn forget_failures(&mut self) {
        self.failures = 0;
        self.lapses = 0;
        self.releases = 0;
        self.failing_since = None;
        self.last_error = None;
        self.gave_up_at = None;
        self.resume_at = None;
        self.next_attempt_at = None;
    }

    /// A delivery succeeded (a webhook answered 2xx, a wake event was written, a worker
    /// claimed): the failures before it are forgotten, unless leases lapsed or wakes were
    /// released again among them. A receiver that takes wakes and never acks them answers
    /// every delivery, so only an ack (a callback, `{"done": true}` in the reply, a pull-wake
    /// ack) shows it has recovered. The releases in a row are kept: a claim is not an ack.
    pub(super) fn delivered(&mut self) {
        if self.lapses == 0 && self.releases <= 1 {
            let releases = self.releases;
            self.forget_failures();
            self.releases = releases;
        } else {
            self.next_attempt_at = None;
        }
    }

    /// Whether the pattern covers `path`. A pull-wake subscription's own wake stream is never
    /// covered: each wake event would be new data for it, and wake it again, for ever.
    pub(super) fn pattern_covers(&self, path: &str) -> bool {
        self.wake_stream.as_deref() != Some(path)
            && self
                .pattern
                .as_deref()
                .is_some_and(|p| rules::glob_matches(p, path))
    }

    /// Whether a stream that says it is new (`created`) is new to this incarnation: its
    /// registration found this one's links (`epoch`), not those of one deleted since under
    /// the same id, which the stream may not have told yet. To this one it existed before.
    /// A stream of an older version names no incarnation, and is taken at its word.
    pub(super) fn new_to_it(&self, created: bool, epoch: Option<&str>) -> bool {
        created && epoch.is_none_or(|epoch| epoch == self.epoch)
    }

    /// Records an attempt at linking or unlinking: a failure is retried by the alarm with
    /// backoff. Answers whether it succeeded.
    pub(super) fn settle_links(&mut self, what: &str, result: &Result<()>) -> bool {
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
pub(super) struct Link {
    pub(super) path: String,
    pub(super) glob: bool,
    pub(super) explicit: bool,
    pub(super) acked: u64,
    pub(super) tail: u64,
    /// Whether the cursor is where it belongs: `false` for a stream named explicitly before
    /// the stream answered where its tail is, which linking moves there; `true` once it has
    /// (a retry of linking leaves it, so appends since are delivered), or for a stream
    /// created since, covered from its start.
    pub(super) placed: bool,
}

impl Link {
    pub(super) fn pending(&self) -> bool {
        self.tail > self.acked
    }

    pub(super) fn info(&self) -> Value {
        j!({
            "path": self.path,
            "link_type": if self.explicit { "explicit" } else { "glob" },
            "acked_offset": offset_text(self.acked),
            "tail_offset": offset_text(self.tail),
            "has_pending": self.pending(),
        })
    }
}

pub(super) fn offset_text(position: u64) -> String {
    Offset::new(position).unwrap_or(Offset::ZERO).to_string()
}

fn link_from_row(r: &[SqlStorageValue]) -> Link {
    Link {
        path: text(r, 0),
        glob: int(r, 1) != 0,
        explicit: int(r, 2) != 0,
        acked: int(r, 3),
        tail: int(r, 4),
        placed: int(r, 5) != 0,
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

impl SubscriptionObject {
    /// The storage, its tables made first if they are not yet.
    pub(super) fn sql(&self) -> Result<&SqlStorage> {
        if !self.opened.get() {
            crate::schema::open(&self.raw_sql, SCHEMA, MIGRATIONS, self.storage.as_ref())?;
            self.opened.set(true);
        }
        Ok(&self.raw_sql)
    }

    fn rows(&self, q: &str, b: Vec<SqlStorageValue>) -> Result<Vec<Vec<SqlStorageValue>>> {
        self.sql()?.exec(q, b)?.raw().collect()
    }

    pub(super) fn load(&self) -> Result<Option<Record>> {
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

    /// Stores the record. A record the same as the one stored is not written again (the alarm
    /// saves before a delivery what the request that owed it saved already): Cloudflare bills
    /// a row written whether or not it changed.
    pub(super) fn save(&self, record: &Record) -> Result<()> {
        let encoded =
            serde_json::to_string(record).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.sql()?.exec(
            "INSERT INTO subscription (id, record) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record
             WHERE subscription.record != excluded.record",
            vec![SqlStorageValue::String(encoded)],
        )?;
        Ok(())
    }

    /// The normalized configuration of the current subscription: an identical PUT re-confirms
    /// it, any other conflicts.
    pub(super) fn canonical(&self) -> Result<Option<String>> {
        let rows = self.rows("SELECT canonical FROM config WHERE id = 1", vec![])?;
        Ok(rows.first().map(|r| text(r, 0)))
    }

    pub(super) fn save_canonical(&self, canonical: &str) -> Result<()> {
        self.sql()?.exec(
            "INSERT INTO config (id, canonical) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET canonical = excluded.canonical",
            vec![SqlStorageValue::String(canonical.to_string())],
        )?;
        Ok(())
    }

    /// Whether `record`'s incarnation is still the live subscription (not deleted, nor
    /// deleted and created again).
    pub(super) fn still(&self, record: &Record) -> Result<bool> {
        Ok(self
            .load()?
            .is_some_and(|r| !r.deleted && r.epoch == record.epoch))
    }

    /// The streams named explicitly whose cursor is not yet placed: those that did not exist
    /// when linked, and those whose linking failed.
    pub(super) fn unplaced_paths(&self) -> Result<Vec<String>> {
        let rows = self.rows(
            "SELECT path FROM links WHERE explicit = 1 AND placed = 0 ORDER BY path",
            vec![],
        )?;
        Ok(rows.iter().map(|r| text(r, 0)).collect())
    }

    /// The streams named explicitly (at most [`rules::MAX_EXPLICIT_STREAMS`]).
    pub(super) fn explicit_paths(&self) -> Result<Vec<String>> {
        let rows = self.rows(
            "SELECT path FROM links WHERE explicit = 1 ORDER BY path",
            vec![],
        )?;
        Ok(rows.iter().map(|r| text(r, 0)).collect())
    }

    /// A page of the links, for the subscription's `GET`: at most `page.limit` of them, in path
    /// order, the first after `page.after`; and whether more follow. One row more than the page
    /// is read to tell, never the whole table.
    pub(super) fn links_page(&self, page: &rules::StreamsPage) -> Result<(Vec<Link>, bool)> {
        let limit = i64::try_from(page.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self.rows(
            "SELECT path, glob, explicit, acked, tail, placed FROM links WHERE path > ?
             ORDER BY path LIMIT ?",
            vec![
                SqlStorageValue::String(page.after.clone().unwrap_or_default()),
                SqlStorageValue::Integer(limit),
            ],
        )?;
        let more = rows.len() > page.limit;
        Ok((
            rows.iter()
                .take(page.limit)
                .map(|r| link_from_row(r))
                .collect(),
            more,
        ))
    }

    pub(super) fn link(&self, path: &str) -> Result<Option<Link>> {
        let rows = self.rows(
            "SELECT path, glob, explicit, acked, tail, placed FROM links WHERE path = ?",
            vec![SqlStorageValue::String(path.to_string())],
        )?;
        Ok(rows.first().map(|r| link_from_row(r)))
    }

    pub(super) fn has_pending(&self) -> Result<bool> {
        Ok(!self
            .rows("SELECT 1 FROM links WHERE tail > acked LIMIT 1", vec![])?
            .is_empty())
    }

    pub(super) fn explicit_count(&self) -> Result<usize> {
        let rows = self.rows("SELECT count(*) FROM links WHERE explicit = 1", vec![])?;
        Ok(rows.first().map_or(0, |r| int(r, 0) as usize))
    }

    /// Stores a link's cursor; one the same as stored is not written again (a notification
    /// of a tail the link already has, which a stream's retry or its next pass sends).
    pub(super) fn save_link(&self, link: &Link) -> Result<()> {
        self.sql()?.exec(
            "INSERT INTO links (path, glob, explicit, acked, tail, placed) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (path) DO UPDATE SET glob = excluded.glob, explicit = excluded.explicit,
               acked = excluded.acked, tail = excluded.tail, placed = excluded.placed
             WHERE links.glob != excluded.glob OR links.explicit != excluded.explicit
               OR links.acked != excluded.acked OR links.tail != excluded.tail
               OR links.placed != excluded.placed",
            vec![
                SqlStorageValue::String(link.path.clone()),
                SqlStorageValue::Integer(i64::from(link.glob)),
                SqlStorageValue::Integer(i64::from(link.explicit)),
                SqlStorageValue::Integer(link.acked as i64),
                SqlStorageValue::Integer(link.tail as i64),
                SqlStorageValue::Integer(i64::from(link.placed)),
            ],
        )?;
        Ok(())
    }

    /// Notes that the link of `path` was made by an append's notification while linking ran,
    /// before linking's pages reached it: the stream existed before (a new one's registration
    /// says so) and had just been asked to link this subscription, so its page's answer, not
    /// this guess, says where its cursor starts.
    pub(super) fn mark_provisional(&self, path: &str) -> Result<()> {
        self.sql()?.exec(
            "INSERT OR IGNORE INTO provisional (path) VALUES (?)",
            vec![SqlStorageValue::String(path.to_string())],
        )?;
        Ok(())
    }

    /// Whether [`Self::mark_provisional`] noted `path`.
    pub(super) fn provisional(&self, path: &str) -> Result<bool> {
        Ok(!self
            .rows(
                "SELECT 1 FROM provisional WHERE path = ?",
                vec![SqlStorageValue::String(path.to_string())],
            )?
            .is_empty())
    }

    /// Forgets the provisional links: linking is over, or starts again.
    pub(super) fn forget_provisional(&self) -> Result<()> {
        self.sql()?.exec("DELETE FROM provisional", None)?;
        Ok(())
    }

    /// Drops a link, and its place in the current wake.
    pub(super) fn remove_link(&self, path: &str) -> Result<()> {
        self.atomically(|| {
            for q in [
                "DELETE FROM links WHERE path = ?",
                "DELETE FROM snapshot WHERE path = ?",
                "DELETE FROM offered WHERE path = ?",
            ] {
                self.sql()?
                    .exec(q, vec![SqlStorageValue::String(path.to_string())])?;
            }
            Ok(())
        })
    }

    /// The current wake covers the links with data past their cursor, at their present tails:
    /// at most `limit` of them, in path order from just after `after` (where the last wake's
    /// list ended), going round to the first. So a wake's size is bounded however many
    /// streams are linked, and a stream with news is listed within a few wakes however busy
    /// the ones before it are. Answers the last path listed.
    pub(super) fn take_snapshot(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Option<String>> {
        let page = |from: &str, to: Option<&str>, n: usize| {
            let n = SqlStorageValue::Integer(i64::try_from(n).unwrap_or(i64::MAX));
            match to {
                Some(to) => self.rows(
                    "SELECT path, tail FROM links WHERE tail > acked AND path > ? AND path <= ?
                     ORDER BY path LIMIT ?",
                    vec![
                        SqlStorageValue::String(from.into()),
                        SqlStorageValue::String(to.into()),
                        n,
                    ],
                ),
                None => self.rows(
                    "SELECT path, tail FROM links WHERE tail > acked AND path > ?
                     ORDER BY path LIMIT ?",
                    vec![SqlStorageValue::String(from.into()), n],
                ),
            }
        };
        let mut listed = page(after.unwrap_or(""), None, limit)?;
        if let Some(after) = after.filter(|_| listed.len() < limit) {
            listed.extend(page("", Some(after), limit - listed.len())?);
        }
        // Only the rows that differ are written: a claim lists again the streams its wake
        // event named, mostly at the tails they had, and Cloudflare bills each row written.
        let listed_tails: HashMap<String, u64> =
            listed.iter().map(|r| (text(r, 0), int(r, 1))).collect();
        self.atomically(|| {
            let kept: HashMap<String, u64> = self
                .rows("SELECT path, tail FROM snapshot", vec![])?
                .iter()
                .map(|r| (text(r, 0), int(r, 1)))
                .collect();
            for path in kept.keys().filter(|p| !listed_tails.contains_key(*p)) {
                self.sql()?.exec(
                    "DELETE FROM snapshot WHERE path = ?",
                    vec![SqlStorageValue::String(path.clone())],
                )?;
            }
            for (path, tail) in &listed_tails {
                if kept.get(path) == Some(tail) {
                    continue;
                }
                self.sql()?.exec(
                    "INSERT INTO snapshot (path, tail) VALUES (?, ?)
                     ON CONFLICT (path) DO UPDATE SET tail = excluded.tail",
                    vec![
                        SqlStorageValue::String(path.clone()),
                        SqlStorageValue::Integer(*tail as i64),
                    ],
                )?;
            }
            Ok(())
        })?;
        Ok(listed.last().map(|row| text(row, 0)))
    }

    /// The links the current wake covers, each with the tail it was woken for.
    pub(super) fn snapshot_links(&self) -> Result<Vec<(Link, u64)>> {
        let rows = self.rows(
            "SELECT l.path, l.glob, l.explicit, l.acked, l.tail, l.placed, s.tail FROM links l
             JOIN snapshot s ON s.path = l.path ORDER BY l.path",
            vec![],
        )?;
        Ok(rows.iter().map(|r| (link_from_row(r), int(r, 6))).collect())
    }

    /// Retries of the current wake stopped: notes the tails its list offered, and answers
    /// whether data is owed that no wake whose retries stopped in this run of failures
    /// offered: a listed stream's tail is past the tail listed (data came during the last
    /// attempt, or the lease), or a stream with data pending was in no such list (a list
    /// holds at most [`rules::MAX_WAKE_STREAMS`]). Each stream is so offered once more, and
    /// the wakes that follow a full list list the next streams in turn until none is left.
    pub(super) fn news_since_listed(&self, record: &mut Record) -> Result<bool> {
        let new_run = record.offered_run != record.failing_since;
        self.atomically(|| {
            if new_run {
                self.sql()?.exec("DELETE FROM offered", None)?;
            }
            self.sql()?.exec(
                "INSERT INTO offered (path, tail) SELECT path, tail FROM snapshot WHERE true
                 ON CONFLICT (path) DO UPDATE SET tail = excluded.tail
                 WHERE excluded.tail > offered.tail",
                None,
            )?;
            Ok(())
        })?;
        record.offered_run = record.failing_since;
        let news = self.rows(
            "SELECT 1 FROM links l LEFT JOIN offered o ON o.path = l.path
             WHERE l.tail > l.acked AND (o.tail IS NULL OR l.tail > o.tail) LIMIT 1",
            vec![],
        )?;
        Ok(!news.is_empty())
    }

    /// Acks every link the current wake covers up to the tail it was woken for.
    pub(super) fn apply_snapshot(&self) -> Result<()> {
        self.sql()?.exec(
            "UPDATE links SET acked = (SELECT s.tail FROM snapshot s WHERE s.path = links.path)
             WHERE EXISTS (SELECT 1 FROM snapshot s WHERE s.path = links.path AND s.tail > links.acked)",
            None,
        )?;
        Ok(())
    }

    /// Runs `f`, keeping its writes only if it succeeds.
    pub(super) fn atomically<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // Made before, not inside, the transaction: a rollback would take them with it.
        self.sql()?;
        match &self.storage {
            Some(storage) => storage.atomically(f),
            None => Err(worker::Error::RustError("storage unavailable".into())),
        }
    }
}
