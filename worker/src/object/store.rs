//! The stream's SQLite schema and every row it reads or writes.
//!
//! One Durable Object holds one stream: a single `stream` row of metadata, the `log` of data rows
//! keyed by their start position, and one `producers` row per idempotent producer (once its
//! state has expired, `PRODUCER_TTL_MS` after its last append or up to 1/64 of it, at least 1 s,
//! later, unless it holds the writer lease, a new producer's append deletes it, up to 16 at a
//! time). Every call here is synchronous; writes that belong together go through
//! [`Store::atomically`], since a failed statement undoes only itself.

use std::cell::RefCell;

use edgestream::json;
use edgestream::lease::{Lease, LeaseChange};
use edgestream::producer::{ClosingProducer, ProducerState, Stamp};
use edgestream::stream::{Expiry, ForkRequest};
use edgestream::{sse, ContentType, Offset, ProtocolError};
use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use worker::{worker_sys, Result, SqlStorage, SqlStorageValue};

/// Streams a range of the log into a `FixedLengthStream` as its reader takes it, in chunks of
/// about `CHUNK` bytes: a 1 MiB row alone, or small rows (one per small append) joined. The next
/// chunk is read while the previous one is sent, so SQLite and the transfer overlap; at most
/// those two are held. Rows are read only while the stream is still the incarnation the
/// response's headers describe: a stream deleted (and perhaps created again) mid-response
/// breaks the body off instead of splicing other bytes into it.
#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "const CHUNK = 1024 * 1024;
const ROWS = 'SELECT start, data FROM log WHERE start >= (SELECT coalesce(max(start), 0) FROM log WHERE start <= ?) AND start < ? AND (SELECT instance FROM stream WHERE id = 1) = ? ORDER BY start LIMIT ?';

/**
 * The bytes from `at` on, up to about CHUNK and at most to `end`, and where they end. Reads at
 * most `rows` rows: the runtime reads a row ahead of the one taken, so an unbounded query would
 * read a 1 MiB row for nothing each time.
 */
function chunkAt(sql, instance, at, end, rows) {
    const parts = [];
    let size = 0;
    for (const row of sql.exec(ROWS, at, end, instance, rows).raw()) {
        const start = Number(row[0]);
        const data = new Uint8Array(row[1]);
        const hi = Math.min(data.length, end - start);
        if (start > at || at - start >= hi) break;
        parts.push(data.subarray(at - start, hi));
        size += hi - (at - start);
        at = start + hi;
        if (size >= CHUNK) break;
    }
    if (parts.length < 2) return { bytes: parts[0], at, rows: parts.length };
    const bytes = new Uint8Array(size);
    let n = 0;
    for (const part of parts) {
        bytes.set(part, n);
        n += part.length;
    }
    return { bytes, at, rows: parts.length };
}

export function streamRows(sql, instance, from, end, json, whole) {
    // A JSON range is framed messages, each followed by a comma: sent as an array.
    const { readable, writable } = new FixedLengthStream(end - from + (json ? 1 : 0));
    const writer = writable.getWriter();
    (async () => {
        let at = from;
        let sending = json ? writer.write(new Uint8Array([0x5b])) : null;
        // Rows per chunk: one at first, then as many as the last chunk's rows suggest fill one;
        // all of a range of one chunk, read before this returns (see `RowRange::is_whole`).
        let rows = whole ? 65536 : 1;
        try {
            while (at < end) {
                const chunk = chunkAt(sql, instance, at, end, rows);
                const last = chunk.bytes && json && chunk.at === end;
                if (!chunk.bytes || (last && chunk.bytes[chunk.bytes.length - 1] !== 0x2c)) {
                    // Named, so the runtime's log of the broken body says why.
                    await writer.abort(new Error('stream deleted mid-response: body broken off'));
                    return;
                }
                // The row buffers are this read's own copies, so the comma can become the `]`.
                if (last) chunk.bytes[chunk.bytes.length - 1] = 0x5d;
                if (sending) await sending;
                sending = writer.write(chunk.bytes);
                rows = Math.min(65536, Math.max(1, Math.ceil((CHUNK * chunk.rows) / chunk.bytes.length)));
                at = chunk.at;
            }
            await sending;
            await writer.close();
        } catch {
            // The reader went away, or the stream broke off: nobody is left to tell.
        }
    })();
    return readable;
}")]
extern "C" {
    #[wasm_bindgen(catch, js_name = streamRows)]
    fn stream_rows(
        sql: &JsValue,
        instance: &str,
        from: f64,
        end: f64,
        json: bool,
        whole: bool,
    ) -> std::result::Result<worker_sys::web_sys::ReadableStream, JsValue>;
}

#[wasm_bindgen::prelude::wasm_bindgen(
    inline_js = "export function insertLogRow(sql, start, data, flags) {
    sql.exec('INSERT INTO log (start, data, flags) VALUES (?, ?, ?)', start, data, flags);
}"
)]
extern "C" {
    /// One log row, in one call from Rust: `SqlStorage::exec` builds its bindings in JS one
    /// call at a time (an array, a push and a safe-integer check per value, and a copy of the
    /// data into a new `Uint8Array`). `data` is a view of wasm memory, which the statement
    /// binds (and copies) before the call returns.
    #[wasm_bindgen(catch, js_name = insertLogRow)]
    fn insert_log_row(
        sql: &JsValue,
        start: f64,
        data: &[u8],
        flags: f64,
    ) -> std::result::Result<(), JsValue>;
}

/// A range of the log, sent as a response body straight from its rows: no page is assembled,
/// in wasm memory or in JS, and nothing is read before the body is wanted. A JSON range starts
/// and ends on message boundaries and is sent as an array.
pub struct RowRange {
    sql: JsValue,
    instance: String,
    from: Offset,
    end: Offset,
    json: bool,
}

impl RowRange {
    pub fn is_empty(&self) -> bool {
        self.end <= self.from
    }

    pub fn end(&self) -> Offset {
        self.end
    }

    /// Whether the range is at most one chunk (1 MiB, `CHUNK` in `streamRows`): [`Self::open`]
    /// then reads all of it before it returns, so its body cannot break off.
    pub fn is_whole(&self) -> bool {
        self.end.position().saturating_sub(self.from.position()) <= ROW_BYTES as u64
    }

    /// The body: rows are read from here on, as it is taken (a whole range at once).
    pub fn open(self) -> Result<worker_sys::web_sys::ReadableStream> {
        Ok(stream_rows(
            &self.sql,
            &self.instance,
            self.from.position() as f64,
            self.end.position() as f64,
            self.json,
            self.is_whole(),
        )?)
    }
}

/// Largest data row. SQLite rows in Durable Objects are capped at 2 MB; larger appends span rows.
pub const ROW_BYTES: usize = 1024 * 1024;
/// Largest position a stream may reach: JavaScript numbers carry positions through SQLite.
pub const MAX_POSITION: u64 = (1 << 53) - 1;

/// Where `len` bytes written at `start` end, or `None` past [`MAX_POSITION`] (the stream is
/// full: 413).
pub fn end_of(start: Offset, len: usize) -> Option<Offset> {
    start
        .checked_add(len as u64)
        .filter(|t| t.position() <= MAX_POSITION)
}

/// Whether [`Store::append`] stores `data` in exactly one row, one INSERT: data of at most
/// [`ROW_BYTES`] is never cut (a JSON message end is never more than a row past the row's start).
pub fn one_row(data: &[u8]) -> bool {
    !data.is_empty() && data.len() <= ROW_BYTES
}

/// Row flag: the row ends on a message boundary (end of an append, or of a JSON message).
const ENDS_MESSAGE: i64 = 1;
/// Row flag: the row starts on a message boundary.
const STARTS_MESSAGE: i64 = 2;
/// Row flag: the row is the last of an append.
const ENDS_APPEND: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  path TEXT NOT NULL,
  instance TEXT NOT NULL,
  content_type TEXT NOT NULL,
  expiry_kind INTEGER NOT NULL,
  expiry_value INTEGER NOT NULL,
  accessed_ms INTEGER NOT NULL,
  closed INTEGER NOT NULL,
  closed_by_id TEXT,
  closed_by_epoch INTEGER,
  closed_by_seq INTEGER,
  base INTEGER NOT NULL,
  tail INTEGER NOT NULL,
  last_stream_seq TEXT,
  fork_source TEXT,
  fork_offset INTEGER,
  fork_sub_offset INTEGER,
  forks INTEGER NOT NULL,
  deleted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
  start INTEGER PRIMARY KEY,
  data BLOB NOT NULL,
  flags INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscribers (
  id TEXT PRIMARY KEY,
  created INTEGER NOT NULL DEFAULT 0,
  epoch TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel (
  id INTEGER PRIMARY KEY CHECK (id = 1)
);
CREATE TABLE IF NOT EXISTS channel_marks (
  source TEXT NOT NULL,
  incarnation TEXT NOT NULL,
  mark INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  PRIMARY KEY (source, incarnation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_links (
  channel TEXT PRIMARY KEY,
  instance TEXT NOT NULL,
  forwarded INTEGER NOT NULL,
  failures INTEGER NOT NULL,
  closed_sent INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_announce (
  channel TEXT PRIMARY KEY,
  instance TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producers (
  id TEXT PRIMARY KEY,
  epoch INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS producers_by_age ON producers (updated_ms);
CREATE TABLE IF NOT EXISTS ancestry (
  depth INTEGER PRIMARY KEY,
  path TEXT NOT NULL,
  base INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  holder TEXT NOT NULL,
  expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_backlog (
  incarnation TEXT NOT NULL,
  start INTEGER NOT NULL,
  data BLOB NOT NULL,
  flags INTEGER NOT NULL,
  PRIMARY KEY (incarnation, start)
);
CREATE TABLE IF NOT EXISTS fork_refs (
  fork TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fork_inherited (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  expiry_kind INTEGER NOT NULL,
  expiry_value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fork_depth (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  depth INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS source_ref (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  fork TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
  task TEXT PRIMARY KEY,
  attempts INTEGER NOT NULL,
  due_ms INTEGER NOT NULL,
  detail TEXT NOT NULL
) WITHOUT ROWID;
";

/// The name of every table [`SCHEMA`] makes.
fn schema_tables() -> impl Iterator<Item = &'static str> {
    SCHEMA
        .split("CREATE TABLE IF NOT EXISTS ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
}

/// Changes to tables of objects made by older versions, in the order they were made.
const MIGRATIONS: &[crate::schema::Migration] = &[
    crate::schema::Migration::Change {
        // A closed source's `closed` event (2026-12-02).
        check: "SELECT closed_sent FROM channel_links LIMIT 0",
        apply: "ALTER TABLE channel_links ADD COLUMN closed_sent INTEGER NOT NULL DEFAULT 0",
    },
    // Tables keyed by text, without a rowid (2026-12-05): a row written less per producer
    // append, per task owed and per batch a channel takes. `channel_backlog` keeps its rowid:
    // its rows are up to 1 MiB, which SQLite keeps better in a rowid table, and it is written
    // only when a source is deleted.
    crate::schema::Migration::WithoutRowid(&[
        "subscribers",
        "channel_marks",
        "channel_links",
        "channel_announce",
        "producers",
        "fork_refs",
        "pending",
    ]),
    // A subscription the stream's registration linked, still to be told the stream is new
    // (2026-12-06): a notification retried after that one failed said it no longer.
    crate::schema::Migration::Change {
        check: "SELECT created FROM subscribers LIMIT 0",
        apply: "ALTER TABLE subscribers ADD COLUMN created INTEGER NOT NULL DEFAULT 0",
    },
    // Which incarnation of that subscription the registration found (2026-12-06): one
    // deleted and created again under its id before it was told took the stream as new too.
    crate::schema::Migration::Change {
        check: "SELECT epoch FROM subscribers LIMIT 0",
        apply: "ALTER TABLE subscribers ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
    },
];

/// A producer's kept state and its age stamp (the `updated_ms` column): at or after its last
/// append, at most [`edgestream::producer::stamp_step_ms`] after it.
#[derive(Clone, Copy, Debug)]
pub struct StoredProducer {
    pub state: ProducerState,
    pub stamp_ms: i64,
}

/// The stream's metadata row.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Full path (`/v1/stream/<name>`).
    pub path: String,
    /// Random id of this incarnation of the stream; a stream recreated at the same path gets a
    /// new one, so old ETags never match.
    pub instance: String,
    pub content_type: ContentType,
    pub expiry: Expiry,
    pub accessed_ms: i64,
    pub closed: bool,
    pub closed_by: Option<ClosingProducer>,
    /// For forks, the divergence point: positions below it are read from the source.
    pub base: Offset,
    /// The end of the data. Its column is written only with another change to the row: a plain
    /// append commits its log rows alone, one write instead of two, and loading takes the end
    /// of the last row when that is further.
    pub tail: Offset,
    pub last_stream_seq: Option<String>,
    pub fork: Option<ForkRequest>,
    /// Live forks that read through this stream: those in `fork_refs`, by id, and any taken
    /// before references had ids.
    pub forks: u64,
    /// Deleted while forks still read through it: 410 to clients, data kept for the forks.
    pub deleted: bool,
    /// A channel: fed by the streams below its path, never by clients (its own table, so
    /// streams stored before channels existed need no migration).
    pub channel: bool,
}

impl Meta {
    pub fn is_json(&self) -> bool {
        self.content_type.is_json()
    }

    /// The root-relative name subscriptions and channels use (`rooms/a` for
    /// `/v1/stream/rooms/a`).
    pub fn name(&self) -> &str {
        self.path
            .strip_prefix(crate::path::STREAM_PREFIX)
            .unwrap_or(&self.path)
    }
}

/// One stream a fork inherits from: its source (depth 1), the source's source, and so on, each
/// with the lowest position it holds itself. A fork reads an inherited range from the ancestor
/// that holds it, in one call, however long the chain: a chain of calls would grow with it, and
/// the platform refuses requests nested more than 16 deep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub path: String,
    pub base: u64,
}

/// A contiguous range of the log.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub data: Vec<u8>,
    pub end: Offset,
}

/// A page as views of the rows that hold it.
struct Pieces {
    views: Vec<Uint8Array>,
    /// Their total length.
    len: usize,
    end: Offset,
}

impl Pieces {
    /// Ends a page that its budget cut where its text still reads whole: not inside a UTF-8
    /// character or after a CR ([`sse::text_cut_back`]). The next page starts at the new end.
    fn cut_back_to_text(&mut self) {
        let mut last = [0u8; 4];
        let mut have = 0;
        for view in self.views.iter().rev() {
            let n = (view.length() as usize).min(4 - have);
            let len = view.length();
            view.subarray(len - n as u32, len)
                .copy_to(&mut last[4 - have - n..4 - have]);
            have += n;
            if have == 4 {
                break;
            }
        }
        // A budget too small for the character leaves it all to the next page.
        let mut back = sse::text_cut_back(&last[4 - have..]).min(self.len);
        if back == 0 {
            return;
        }
        self.len -= back;
        self.end = Offset::new(self.end.position() - back as u64).unwrap_or(self.end);
        while back > 0 {
            let Some(view) = self.views.pop() else { break };
            let len = view.length() as usize;
            if len > back {
                self.views.push(view.subarray(0, (len - back) as u32));
                break;
            }
            back -= len;
        }
    }
}

/// One row of `log` as `SELECT start, data, flags` returns it.
struct LogRow {
    start: u64,
    /// A view of the runtime's copy of the blob.
    data: Uint8Array,
    flags: i64,
}

impl LogRow {
    fn from_js(row: &JsValue) -> Result<LogRow> {
        let row: &js_sys::Array = row.unchecked_ref();
        let number = |i| row.get(i).as_f64().unwrap_or(0.0);
        let data = row.get(1);
        let data = if data.is_instance_of::<Uint8Array>() {
            data.unchecked_into()
        } else if data.is_instance_of::<js_sys::ArrayBuffer>() {
            Uint8Array::new(&data)
        } else {
            return Err(worker::Error::RustError("log row without data".into()));
        };
        Ok(LogRow {
            start: number(0) as u64,
            data,
            flags: number(2) as i64,
        })
    }
}

/// Why a read position is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Inside a JSON message: a read from here could not produce a JSON array.
    NotABoundary,
}

impl ReadError {
    /// What the client is told.
    pub fn into_protocol(self) -> ProtocolError {
        match self {
            ReadError::NotABoundary => ProtocolError::BadRequest("offset is inside a JSON message"),
        }
    }
}

/// The subscribers table, as [`Store`] caches it.
#[derive(Clone, Default)]
struct Subscribers {
    /// Every subscription, in id order.
    ids: Vec<String>,
    /// Those still owed the notification that the stream is new, in id order.
    created: Vec<Unannounced>,
}

/// A subscription still owed the notification that the stream is new, and the incarnation of
/// it (its epoch) the stream's registration found: the stream is new to that one only ('' when
/// an older registry named none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unannounced {
    pub id: String,
    pub epoch: String,
}

pub struct Store {
    sql: SqlStorage,
    /// The same storage, for writes that must be stored together ([`Store::atomically`]).
    storage: crate::transaction::Transactional,
    /// The subscribers table, read once rather than on every append; any change clears it.
    subscribers: RefCell<Option<Subscribers>>,
    /// The writer lease, likewise read once (`Some(None)`: none is stored).
    lease: RefCell<Option<Option<Lease>>>,
    /// The channel links, read once rather than on every append; any change clears it.
    channel_links: RefCell<Option<Vec<ChannelLink>>>,
}

/// A channel this stream feeds, and how far it has been fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelLink {
    /// The channel's name (`rooms` for `/v1/stream/rooms`).
    pub channel: String,
    /// The channel's incarnation: a channel deleted and created again is a new link.
    pub instance: String,
    /// This stream's position up to which the channel has acknowledged its messages.
    pub forwarded: Offset,
    /// Failed deliveries in a row, for the retry's backoff.
    pub failures: u32,
    /// The channel has this (closed) stream's `closed` event.
    pub closed_sent: bool,
    /// The channel is owed this stream's `created` event (it was linked when the stream was
    /// created), which goes before its first message.
    pub announce: bool,
}

fn int(v: Option<&SqlStorageValue>) -> i64 {
    match v {
        Some(SqlStorageValue::Integer(i)) => *i,
        Some(SqlStorageValue::Float(f)) => *f as i64,
        Some(SqlStorageValue::Boolean(b)) => i64::from(*b),
        _ => 0,
    }
}

fn opt_int(v: Option<&SqlStorageValue>) -> Option<i64> {
    match v {
        None | Some(SqlStorageValue::Null) => None,
        other => Some(int(other)),
    }
}

fn text(v: Option<&SqlStorageValue>) -> Option<String> {
    match v {
        Some(SqlStorageValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn offset(v: Option<&SqlStorageValue>) -> Offset {
    Offset::new(u64::try_from(int(v)).unwrap_or(0)).unwrap_or(Offset::ZERO)
}

/// Whether `lo` bytes into a JSON row with `flags` is a message boundary. A row that does not
/// start a message continues one larger than a row: no offset in it, its own start included, is
/// one. `data` is the row's, needed only for an offset inside it.
fn starts_message(flags: i64, lo: usize, data: impl FnOnce() -> Vec<u8>) -> bool {
    flags & STARTS_MESSAGE != 0 && (lo == 0 || json::MessageEnds::new(&data()).any(|end| end == lo))
}

fn pos(o: Offset) -> SqlStorageValue {
    SqlStorageValue::Integer(o.position() as i64)
}

fn opt_text(s: Option<&str>) -> SqlStorageValue {
    s.map_or(SqlStorageValue::Null, |s| {
        SqlStorageValue::String(s.to_string())
    })
}

/// Whether the object behind `sql` has its tables: it has stored something before (see
/// [`crate::schema::has_table`]).
pub fn has_tables(sql: &SqlStorage) -> bool {
    crate::schema::has_table(sql, "stream")
}

impl Store {
    /// Opens the store, creating the schema on first use.
    pub fn open(sql: SqlStorage, storage: crate::transaction::Transactional) -> Result<Store> {
        crate::schema::open(&sql, SCHEMA, MIGRATIONS, Some(&storage))?;
        Ok(Store {
            sql,
            storage,
            subscribers: RefCell::new(None),
            lease: RefCell::new(None),
            channel_links: RefCell::new(None),
        })
    }

    /// Log rows with their data left in the runtime's buffers: `worker`'s row conversion would
    /// copy every row into a zero-filled `Vec` first, which for a 4 MiB catch-up page is most
    /// of the object's work.
    fn log_rows(
        &self,
        query: &str,
        bindings: &[SqlStorageValue],
    ) -> Result<impl Iterator<Item = Result<LogRow>>> {
        let sql: &worker_sys::SqlStorage = self.sql.as_ref().unchecked_ref();
        let bindings: js_sys::Array = bindings.iter().cloned().map(JsValue::from).collect();
        let rows = sql.exec(query, bindings)?.raw();
        Ok(std::iter::from_fn(move || match rows.next() {
            Err(e) => Some(Err(e.into())),
            Ok(next) if next.done() => None,
            Ok(next) => Some(LogRow::from_js(&next.value())),
        }))
    }

    fn rows(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<Vec<Vec<SqlStorageValue>>> {
        self.sql.exec(query, bindings)?.raw().collect()
    }

    /// The metadata row, if a stream exists here.
    pub fn load_meta(&self) -> Result<Option<Meta>> {
        let rows = self.rows(
            "SELECT path, instance, content_type, expiry_kind, expiry_value, accessed_ms, closed,
                    closed_by_id, closed_by_epoch, closed_by_seq, base, tail, last_stream_seq,
                    fork_source, fork_offset, fork_sub_offset, forks, deleted
             FROM stream WHERE id = 1",
            vec![],
        )?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        // A plain append writes only its log rows (see `Meta::tail`), so the tail is where the
        // last row ends whenever that is past the column.
        let log_end = self
            .rows(
                "SELECT start + length(data) FROM log ORDER BY start DESC LIMIT 1",
                vec![],
            )?
            .first()
            .map_or(Offset::ZERO, |r| offset(r.first()));
        let g = |i: usize| r.get(i);
        let content_type = text(g(2))
            .and_then(|t| ContentType::parse_stored(&t).ok())
            .unwrap_or_else(ContentType::default_type);
        let expiry = Expiry::from_parts(int(g(3)), int(g(4)));
        let closed_by = text(g(7)).map(|id| ClosingProducer {
            id,
            epoch: u64::try_from(int(g(8))).unwrap_or(0),
            seq: u64::try_from(int(g(9))).unwrap_or(0),
        });
        let fork = text(g(13)).map(|source| ForkRequest {
            source,
            offset: opt_int(g(14)).and_then(|p| Offset::new(u64::try_from(p).ok()?)),
            sub_offset: u64::try_from(int(g(15))).unwrap_or(0),
        });
        Ok(Some(Meta {
            path: text(g(0)).unwrap_or_default(),
            instance: text(g(1)).unwrap_or_default(),
            content_type,
            expiry,
            accessed_ms: int(g(5)),
            closed: int(g(6)) != 0,
            closed_by,
            base: offset(g(10)),
            tail: offset(g(11)).max(log_end),
            last_stream_seq: text(g(12)),
            fork,
            forks: u64::try_from(int(g(16))).unwrap_or(0),
            deleted: int(g(17)) != 0,
            channel: !self.rows("SELECT 1 FROM channel", vec![])?.is_empty(),
        }))
    }

    /// Writes the whole metadata row.
    pub fn save_meta(&self, m: &Meta) -> Result<()> {
        let (kind, value) = m.expiry.to_parts();
        let closed_by = m.closed_by.as_ref();
        self.sql.exec(
            "INSERT OR REPLACE INTO stream (id, path, instance, content_type, expiry_kind, expiry_value,
                accessed_ms, closed, closed_by_id, closed_by_epoch, closed_by_seq, base, tail,
                last_stream_seq, fork_source, fork_offset, fork_sub_offset, forks, deleted)
             VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                m.path.clone().into(),
                m.instance.clone().into(),
                m.content_type.as_str().into(),
                SqlStorageValue::Integer(kind),
                SqlStorageValue::Integer(value),
                SqlStorageValue::Integer(m.accessed_ms),
                SqlStorageValue::Integer(i64::from(m.closed)),
                opt_text(closed_by.map(|c| c.id.as_str())),
                closed_by.map_or(SqlStorageValue::Null, |c| SqlStorageValue::Integer(c.epoch as i64)),
                closed_by.map_or(SqlStorageValue::Null, |c| SqlStorageValue::Integer(c.seq as i64)),
                pos(m.base),
                pos(m.tail),
                opt_text(m.last_stream_seq.as_deref()),
                opt_text(m.fork.as_ref().map(|f| f.source.as_str())),
                m.fork.as_ref().and_then(|f| f.offset).map_or(SqlStorageValue::Null, pos),
                SqlStorageValue::Integer(m.fork.as_ref().map_or(0, |f| f.sub_offset as i64)),
                SqlStorageValue::Integer(m.forks as i64),
                SqlStorageValue::Integer(i64::from(m.deleted)),
            ],
        )?;
        let flag = if m.channel {
            "INSERT OR IGNORE INTO channel (id) VALUES (1)"
        } else {
            "DELETE FROM channel"
        };
        self.sql.exec(flag, None)?;
        Ok(())
    }

    /// Records a read or write for the sliding TTL.
    pub fn touch(&self, accessed_ms: i64) -> Result<()> {
        self.sql.exec(
            "UPDATE stream SET accessed_ms = ? WHERE id = 1",
            vec![SqlStorageValue::Integer(accessed_ms)],
        )?;
        Ok(())
    }

    /// Appends `data` at `start`, split into rows that never exceed [`ROW_BYTES`]. JSON data is
    /// cut at message boundaries where a message fits in a row; anything else at append ends.
    pub fn append(&self, start: Offset, data: &[u8], json: bool) -> Result<()> {
        let mut at = start.position();
        let mut insert = |bytes: &[u8], flags: i64| -> Result<()> {
            if bytes.is_empty() {
                return Ok(());
            }
            // Positions are at most `MAX_POSITION`, so a JavaScript number carries them exactly.
            insert_log_row(self.sql.as_ref(), at as f64, bytes, flags as f64)?;
            at += bytes.len() as u64;
            Ok(())
        };
        let pieces = split_rows(data, json);
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.iter().enumerate() {
            let flags = if i == last {
                piece.flags | ENDS_APPEND
            } else {
                piece.flags
            };
            insert(&data[piece.range.clone()], flags)?;
        }
        Ok(())
    }

    /// Runs `f`, keeping its writes only if it succeeds. The caller forgets what it cached
    /// from them when it fails, as after any storage error.
    pub fn atomically<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.storage.atomically(f)
    }

    /// Reads the log from `from` towards `to`, stopping once `budget` bytes are gathered. JSON
    /// pages end on message boundaries (a single message larger than the budget is returned
    /// whole); other pages end at the budget, or up to 3 bytes before it where a text would be
    /// cut inside a character ([`Pieces::cut_back_to_text`]).
    pub fn read(
        &self,
        from: Offset,
        to: Offset,
        budget: usize,
        json: bool,
    ) -> Result<std::result::Result<Page, ReadError>> {
        self.read_rows(Rows::Log, from, to, budget, json)
    }

    /// [`Store::read`] from `rows`: the log, or a deleted incarnation's backlog.
    pub fn read_rows(
        &self,
        rows: Rows<'_>,
        from: Offset,
        to: Offset,
        budget: usize,
        json: bool,
    ) -> Result<std::result::Result<Page, ReadError>> {
        let pieces = match self.pieces(rows, from, to, budget, json)? {
            Ok(pieces) => pieces,
            Err(e) => return Ok(Err(e)),
        };
        let mut data = Vec::with_capacity(pieces.len);
        for piece in &pieces.views {
            let at = data.len();
            let n = piece.length() as usize;
            let copied = piece
                .copy_to_uninit(&mut data.spare_capacity_mut()[..n])
                .len();
            // SAFETY: `copy_to_uninit` initialised the `copied` bytes after `at`, and returns
            // them; the capacity covers every piece.
            unsafe { data.set_len(at + copied) };
        }
        Ok(Ok(Page {
            data,
            end: pieces.end,
        }))
    }

    /// [`Store::read`] for a non-JSON stream, into one JS buffer that can be a response body as
    /// it is: a catch-up page is copied once, and never through wasm memory (which would keep
    /// the page's size for the life of the instance).
    pub fn read_js(
        &self,
        from: Offset,
        to: Offset,
        budget: usize,
    ) -> Result<std::result::Result<(Uint8Array, Offset), ReadError>> {
        let pieces = match self.pieces(Rows::Log, from, to, budget, false)? {
            Ok(pieces) => pieces,
            Err(e) => return Ok(Err(e)),
        };
        let body = Uint8Array::new_with_length(u32::try_from(pieces.len).unwrap_or(u32::MAX));
        let mut at = 0u32;
        for piece in &pieces.views {
            body.set(piece, at);
            at += piece.length();
        }
        Ok(Ok((body, pieces.end)))
    }

    /// `[from, end)` of this incarnation's own log (`end` at most the tail), to be streamed as
    /// bytes.
    pub fn range(&self, instance: &str, from: Offset, end: Offset) -> RowRange {
        RowRange {
            sql: self.sql.as_ref().clone(),
            instance: instance.to_string(),
            from,
            end,
            json: false,
        }
    }

    /// Whether a JSON message of this stream's own rows starts at `at` (before the tail).
    pub fn json_boundary(&self, at: Offset) -> Result<bool> {
        Ok(self.message_row(at)?.is_some())
    }

    /// The start of the row holding `from` (before the tail), when a JSON message starts there.
    fn message_row(&self, from: Offset) -> Result<Option<i64>> {
        let Some(row) = self
            .rows(
                "SELECT start, flags, length(data) FROM log WHERE start <= ? ORDER BY start DESC LIMIT 1",
                vec![pos(from)],
            )?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let (start, flags, len) = (int(row.first()), int(row.get(1)), int(row.get(2)));
        let lo = from.position().saturating_sub(start as u64) as usize;
        // The row's bytes are needed only to find a boundary inside it.
        let data = if lo > 0 && flags & STARTS_MESSAGE != 0 {
            self.rows(
                "SELECT data FROM log WHERE start = ?",
                vec![SqlStorageValue::Integer(start)],
            )?
            .pop()
            .and_then(|mut r| r.pop())
            .and_then(|v| match v {
                SqlStorageValue::Blob(data) => Some(data),
                _ => None,
            })
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        if lo >= len as usize || !starts_message(flags, lo, || data) {
            return Ok(None);
        }
        Ok(Some(start))
    }

    /// The JSON messages from `from` (before the tail), to be streamed: those in the rows that
    /// end within `budget` bytes, or the one message that starts there when it is larger.
    pub fn json_range(
        &self,
        instance: &str,
        from: Offset,
        budget: u64,
    ) -> Result<std::result::Result<RowRange, ReadError>> {
        let Some(start) = self.message_row(from)? else {
            return Ok(Err(ReadError::NotABoundary));
        };
        let limit = SqlStorageValue::Integer(from.position().saturating_add(budget) as i64);
        let within = self.rows(
            "SELECT start + length(data) FROM log WHERE start >= ? AND start < ? AND flags & 1
               AND start + length(data) <= ? ORDER BY start DESC LIMIT 1",
            vec![SqlStorageValue::Integer(start), limit.clone(), limit],
        )?;
        let end = match within.first() {
            Some(r) => int(r.first()),
            None => self
                .rows(
                    "SELECT start + length(data) FROM log WHERE start >= ? AND flags & 1
                       ORDER BY start LIMIT 1",
                    vec![SqlStorageValue::Integer(start)],
                )?
                .first()
                .map_or(0, |r| int(r.first())),
        };
        match Offset::new(end as u64) {
            Some(end) if end > from => Ok(Ok(RowRange {
                json: true,
                ..self.range(instance, from, end)
            })),
            _ => Ok(Err(ReadError::NotABoundary)),
        }
    }

    /// The rows of `rows` that hold `[from, to)`, in order: from the one holding `from`.
    fn rows_over(
        &self,
        rows: Rows<'_>,
        from: Offset,
        to: Offset,
    ) -> Result<impl Iterator<Item = Result<LogRow>>> {
        let (floor_sql, range_sql) = match rows {
            Rows::Log => (
                "SELECT start FROM log WHERE start <= ? ORDER BY start DESC LIMIT 1",
                "SELECT start, data, flags FROM log WHERE start >= ? AND start < ? ORDER BY start",
            ),
            Rows::Backlog(_) => (
                "SELECT start FROM channel_backlog WHERE incarnation = ? AND start <= ?
                 ORDER BY start DESC LIMIT 1",
                "SELECT start, data, flags FROM channel_backlog
                 WHERE incarnation = ? AND start >= ? AND start < ? ORDER BY start",
            ),
        };
        let floor = self
            .rows(floor_sql, rows.bind(vec![pos(from)]))?
            .first()
            .map_or(0, |r| int(r.first()));
        self.log_rows(
            range_sql,
            &rows.bind(vec![SqlStorageValue::Integer(floor), pos(to)]),
        )
    }

    /// The views of log rows that make up a page, left in the runtime's row buffers.
    fn pieces(
        &self,
        rows: Rows<'_>,
        from: Offset,
        to: Offset,
        budget: usize,
        json: bool,
    ) -> Result<std::result::Result<Pieces, ReadError>> {
        let mut pieces = Pieces {
            views: Vec::new(),
            len: 0,
            end: from,
        };
        if from >= to {
            return Ok(Ok(pieces));
        }
        let rows = self.rows_over(rows, from, to)?;
        let mut first = true;
        for row in rows {
            let LogRow { start, data, flags } = row?;
            let len = data.length() as usize;
            let end = start + len as u64;
            if end <= from.position() {
                continue;
            }
            let lo = from.position().saturating_sub(start) as usize;
            if first && json && !starts_message(flags, lo, || data.to_vec()) {
                return Ok(Err(ReadError::NotABoundary));
            }
            first = false;
            let hi = (end.min(to.position()) - start) as usize;
            let mut take = hi - lo;
            if !json {
                take = take.min(budget.saturating_sub(pieces.len));
            }
            // `lo + take <= len <= ROW_BYTES`, so both fit in u32.
            pieces
                .views
                .push(data.subarray(lo as u32, (lo + take) as u32));
            pieces.len += take;
            pieces.end = Offset::new(start + (lo + take) as u64).unwrap_or(pieces.end);
            let at_boundary = hi < len || flags & ENDS_MESSAGE != 0;
            if pieces.len >= budget && (!json || at_boundary) {
                break;
            }
        }
        if !json && pieces.len >= budget && pieces.end < to {
            pieces.cut_back_to_text();
        }
        Ok(Ok(pieces))
    }

    /// The bytes from `at` to the end of the append that holds `at`, or `None` when no data
    /// starts at or after `at`. Fork sub-offsets may not reach past this boundary.
    pub fn append_from(&self, at: Offset) -> Result<Option<Page>> {
        let rows = self.log_rows(
            "SELECT start, data, flags FROM log
             WHERE start >= (SELECT coalesce(max(start), 0) FROM log WHERE start <= ?) ORDER BY start",
            &[pos(at)],
        )?;
        let mut page: Option<Page> = None;
        for row in rows {
            let LogRow { start, data, flags } = row?;
            let len = data.length() as usize;
            let end = start + len as u64;
            if end <= at.position() {
                continue;
            }
            let lo = at.position().saturating_sub(start) as usize;
            let p = page.get_or_insert_with(Page::default);
            let from = p.data.len();
            p.data.resize(from + (len - lo), 0);
            // `lo < len <= ROW_BYTES`, so both fit in u32.
            data.subarray(lo as u32, len as u32)
                .copy_to(&mut p.data[from..]);
            p.end = Offset::new(end).unwrap_or(p.end);
            if flags & ENDS_APPEND != 0 {
                break;
            }
        }
        Ok(page)
    }

    /// The stored state of one producer and its age stamp, unless stamped before `kept_since`
    /// (it expired: the producer is new, whether or not its row is deleted yet).
    pub fn producer(&self, id: &str, kept_since: i64) -> Result<Option<StoredProducer>> {
        let rows = self.rows(
            "SELECT epoch, last_seq, updated_ms FROM producers WHERE id = ? AND updated_ms >= ?",
            vec![id.into(), SqlStorageValue::Integer(kept_since)],
        )?;
        Ok(rows.first().map(|r| StoredProducer {
            state: ProducerState {
                epoch: u64::try_from(int(r.first())).unwrap_or(0),
                last_seq: u64::try_from(int(r.get(1))).unwrap_or(0),
            },
            stamp_ms: int(r.get(2)),
        }))
    }

    /// Stores a producer's state (in the same turn as the data it accepted) with its age stamp:
    /// one kept is not set again, so its `producers_by_age` entry is not rewritten, a row
    /// written less (SQLite updates only the indexes of the columns it sets).
    pub fn save_producer(&self, id: &str, state: ProducerState, stamp: Stamp) -> Result<()> {
        let sql = match stamp {
            Stamp::New(_) => {
                "INSERT OR REPLACE INTO producers (id, epoch, last_seq, updated_ms)
                   VALUES (?, ?, ?, ?)"
            }
            // An upsert, not an UPDATE: were the row gone, the state would still be stored.
            Stamp::Kept(_) => {
                "INSERT INTO producers (id, epoch, last_seq, updated_ms) VALUES (?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch,
                     last_seq = excluded.last_seq"
            }
        };
        self.sql.exec(
            sql,
            vec![
                id.into(),
                SqlStorageValue::Integer(state.epoch as i64),
                SqlStorageValue::Integer(state.last_seq as i64),
                SqlStorageValue::Integer(stamp.ms()),
            ],
        )?;
        Ok(())
    }

    /// Deletes up to `limit` producers' states stamped before `kept_since`, oldest first
    /// (through the `updated_ms` index), so each new producer costs a bounded delete and the
    /// rows of producers gone idle do not pile up.
    pub fn expire_producers(&self, kept_since: i64, limit: u32) -> Result<()> {
        self.sql.exec(
            "DELETE FROM producers WHERE id IN
               (SELECT id FROM producers WHERE updated_ms < ? ORDER BY updated_ms LIMIT ?)",
            vec![
                SqlStorageValue::Integer(kept_since),
                SqlStorageValue::Integer(i64::from(limit)),
            ],
        )?;
        Ok(())
    }

    /// The writer lease, run out or not. Cached: every append checks it.
    pub fn lease(&self) -> Result<Option<Lease>> {
        if let Some(cached) = self.lease.borrow().as_ref() {
            return Ok(cached.clone());
        }
        let rows = self.rows("SELECT holder, expires_ms FROM lease WHERE id = 1", vec![])?;
        let lease = rows.first().and_then(|r| {
            Some(Lease {
                holder: text(r.first())?,
                expires_ms: int(r.get(1)),
            })
        });
        self.lease.replace(Some(lease.clone()));
        Ok(lease)
    }

    /// Applies an accepted append's lease change (in the same turn as the data).
    pub fn save_lease(&self, change: &LeaseChange) -> Result<()> {
        match change {
            LeaseChange::Keep => return Ok(()),
            LeaseChange::Set(lease) => self.sql.exec(
                "INSERT OR REPLACE INTO lease (id, holder, expires_ms) VALUES (1, ?, ?)",
                vec![
                    lease.holder.as_str().into(),
                    SqlStorageValue::Integer(lease.expires_ms),
                ],
            )?,
            LeaseChange::Clear => self.sql.exec("DELETE FROM lease", None)?,
        };
        let stored = match change {
            LeaseChange::Set(lease) => Some(lease.clone()),
            _ => None,
        };
        self.lease.replace(Some(stored));
        Ok(())
    }

    /// Subscriptions to notify after each append.
    pub fn subscribers(&self) -> Result<Vec<String>> {
        Ok(self.read_subscribers()?.ids)
    }

    /// Of the subscriptions, those the stream's registration linked that have not yet taken
    /// its notification that the stream is new ([`Self::add_created_subscriber`]).
    pub fn unannounced(&self) -> Result<Vec<Unannounced>> {
        Ok(self.read_subscribers()?.created)
    }

    fn read_subscribers(&self) -> Result<Subscribers> {
        if let Some(cached) = self.subscribers.borrow().as_ref() {
            return Ok(cached.clone());
        }
        let mut read = Subscribers::default();
        for r in self.rows(
            "SELECT id, created, epoch FROM subscribers ORDER BY id",
            vec![],
        )? {
            let Some(id) = text(r.first()) else { continue };
            if int(r.get(1)) != 0 {
                read.created.push(Unannounced {
                    id: id.clone(),
                    epoch: text(r.get(2)).unwrap_or_default(),
                });
            }
            read.ids.push(id);
        }
        self.subscribers.replace(Some(read.clone()));
        Ok(read)
    }

    pub fn add_subscriber(&self, id: &str) -> Result<()> {
        self.forget_cached();
        self.sql.exec(
            "INSERT OR IGNORE INTO subscribers (id) VALUES (?)",
            vec![SqlStorageValue::String(id.to_string())],
        )?;
        Ok(())
    }

    /// Adds a subscription the stream's registration found covering it: created after the
    /// registry had the links of the subscription's incarnation `epoch`, so that one covers
    /// it from its start. It is owed the notification that says so until it takes one
    /// ([`Self::told_created`]), however often that is retried, across restarts; and a link
    /// it asks for says so too.
    pub fn add_created_subscriber(&self, id: &str, epoch: &str) -> Result<()> {
        self.forget_cached();
        self.sql.exec(
            "INSERT OR IGNORE INTO subscribers (id, created, epoch) VALUES (?, 1, ?)",
            vec![
                SqlStorageValue::String(id.to_string()),
                SqlStorageValue::String(epoch.to_string()),
            ],
        )?;
        Ok(())
    }

    /// Subscription `id` took the notification that the stream is new.
    pub fn told_created(&self, id: &str) -> Result<()> {
        self.forget_cached();
        self.sql.exec(
            "UPDATE subscribers SET created = 0 WHERE id = ? AND created = 1",
            vec![SqlStorageValue::String(id.to_string())],
        )?;
        Ok(())
    }

    pub fn remove_subscriber(&self, id: &str) -> Result<()> {
        self.forget_cached();
        self.sql.exec(
            "DELETE FROM subscribers WHERE id = ?",
            vec![SqlStorageValue::String(id.to_string())],
        )?;
        Ok(())
    }

    /// Drops what is cached: on any change to it, and after a failure that may have rolled
    /// storage back.
    pub fn forget_cached(&self) {
        self.subscribers.replace(None);
        self.lease.replace(None);
        self.channel_links.replace(None);
    }

    /// Whether any log row is stored.
    pub fn has_log(&self) -> Result<bool> {
        Ok(!self.rows("SELECT 1 FROM log LIMIT 1", vec![])?.is_empty())
    }

    /// A fork's ancestors, nearest first, those it inherits a range from; empty for a stream
    /// that is not a fork, and for a fork made before ancestors were recorded (it reads
    /// through its source).
    pub fn ancestry(&self) -> Result<Vec<Ancestor>> {
        Ok(self
            .rows("SELECT path, base FROM ancestry ORDER BY depth", vec![])?
            .iter()
            .filter_map(|r| {
                Some(Ancestor {
                    path: text(r.first())?,
                    base: u64::try_from(int(r.get(1))).ok()?,
                })
            })
            .collect())
    }

    /// Records a new fork's ancestors (in the same turn as its creation).
    pub fn save_ancestry(&self, ancestors: &[Ancestor]) -> Result<()> {
        for (depth, a) in ancestors.iter().enumerate() {
            self.sql.exec(
                "INSERT OR REPLACE INTO ancestry (depth, path, base) VALUES (?, ?, ?)",
                vec![
                    SqlStorageValue::Integer(depth as i64 + 1),
                    a.path.as_str().into(),
                    SqlStorageValue::Integer(a.base as i64),
                ],
            )?;
        }
        Ok(())
    }

    /// How many forks deep this fork is (1 for a fork of a stream that is not one). `None` for
    /// a fork made before depths were recorded, whose ancestry then holds every ancestor.
    pub fn fork_depth(&self) -> Result<Option<u32>> {
        Ok(self
            .rows("SELECT depth FROM fork_depth WHERE id = 1", vec![])?
            .first()
            .and_then(|r| u32::try_from(int(r.first())).ok()))
    }

    /// Records a new fork's depth (in the same turn as its creation).
    pub fn save_fork_depth(&self, depth: u32) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO fork_depth (id, depth) VALUES (1, ?)",
            vec![SqlStorageValue::Integer(i64::from(depth))],
        )?;
        Ok(())
    }

    /// Records, for a new fork, its source's expiry: the one a fork asking for none takes, to
    /// which a PUT of the fork without an expiry of its own is compared.
    pub fn save_inherited_expiry(&self, expiry: Expiry) -> Result<()> {
        let (kind, value) = expiry.to_parts();
        self.sql.exec(
            "INSERT OR REPLACE INTO fork_inherited (id, expiry_kind, expiry_value) VALUES (1, ?, ?)",
            vec![SqlStorageValue::Integer(kind), SqlStorageValue::Integer(value)],
        )?;
        Ok(())
    }

    /// See [`Self::save_inherited_expiry`]; none for a fork stored before it was recorded.
    pub fn inherited_expiry(&self) -> Result<Option<Expiry>> {
        Ok(self
            .rows(
                "SELECT expiry_kind, expiry_value FROM fork_inherited",
                vec![],
            )?
            .first()
            .map(|r| Expiry::from_parts(int(r.first()), int(r.get(1)))))
    }

    /// Whether every table of the schema holds no row (`schema_version` aside, which only
    /// says how the tables are made): the object keeps nothing anyone needs. The tables are
    /// read from [`SCHEMA`], so one added later counts without a change here; tables the
    /// runtime keeps for itself are not ours to judge.
    pub fn holds_nothing(&self) -> Result<bool> {
        for name in schema_tables() {
            let query = format!("SELECT 1 FROM {name} LIMIT 1");
            if !self.rows(&query, vec![])?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives the object's storage back (`deleteAll`), tables and alarm included, in the
    /// caller's turn. Only for an object that [holds nothing](Self::holds_nothing).
    pub fn delete_all(&self) -> Result<()> {
        self.forget_cached();
        self.storage.delete_all()
    }

    /// Whether the tables exist (see [`has_tables`]).
    pub fn tables_made(&self) -> bool {
        has_tables(&self.sql)
    }

    /// Makes the tables again after [`Store::delete_all`], for a new stream at the same path.
    pub fn reopen(&self) -> Result<()> {
        self.forget_cached();
        crate::schema::open(&self.sql, SCHEMA, MIGRATIONS, Some(&self.storage))
    }

    /// Deletes the stream: metadata, data, producers, lease, ancestry, subscribers and channel
    /// state.
    pub fn purge(&self) -> Result<()> {
        self.forget_cached();
        self.sql.exec(
            "DELETE FROM log; DELETE FROM producers; DELETE FROM lease; DELETE FROM ancestry;
             DELETE FROM subscribers; DELETE FROM stream; DELETE FROM channel;
             DELETE FROM channel_marks; DELETE FROM channel_links; DELETE FROM channel_announce;
             DELETE FROM fork_refs; DELETE FROM source_ref; DELETE FROM fork_inherited;
             DELETE FROM fork_depth;",
            None,
        )?;
        Ok(())
    }
}

/// Where log rows are read from.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// The stream's own log.
    Log,
    /// The rows a deleted incarnation (named) kept for the channels it had not yet fed.
    Backlog(&'a str),
}

impl Rows<'_> {
    /// The bindings of a query on these rows: a backlog's are led by its incarnation.
    fn bind(self, rest: Vec<SqlStorageValue>) -> Vec<SqlStorageValue> {
        match self {
            Rows::Log => rest,
            Rows::Backlog(incarnation) => std::iter::once(incarnation.into()).chain(rest).collect(),
        }
    }
}

/// The backlog: what a deleted incarnation had not yet delivered to its channels, kept past
/// the purge of its log (see `channel.rs`).
impl Store {
    /// Keeps this incarnation's rows from the one holding `from`, in the caller's turn.
    pub fn keep_backlog(&self, incarnation: &str, from: Offset) -> Result<()> {
        self.sql.exec(
            "INSERT OR IGNORE INTO channel_backlog (incarnation, start, data, flags)
             SELECT ?, start, data, flags FROM log
             WHERE start >= (SELECT coalesce(max(start), 0) FROM log WHERE start <= ?)",
            vec![incarnation.into(), pos(from)],
        )?;
        Ok(())
    }

    pub fn drop_backlog(&self, incarnation: &str) -> Result<()> {
        self.sql.exec(
            "DELETE FROM channel_backlog WHERE incarnation = ?",
            vec![incarnation.into()],
        )?;
        Ok(())
    }
}

/// Fork references: on a source, the forks that hold one; on a fork, the id it holds its own
/// by (see `fork.rs`).
impl Store {
    /// Takes the reference of fork `id`; false when it holds one already.
    pub fn take_fork_ref(&self, id: &str) -> Result<bool> {
        if self.has_fork_ref(id)? {
            return Ok(false);
        }
        self.sql
            .exec("INSERT INTO fork_refs (fork) VALUES (?)", vec![id.into()])?;
        Ok(true)
    }

    /// Gives back the reference of fork `id`; false when it held none (given back already).
    pub fn drop_fork_ref(&self, id: &str) -> Result<bool> {
        if !self.has_fork_ref(id)? {
            return Ok(false);
        }
        self.sql
            .exec("DELETE FROM fork_refs WHERE fork = ?", vec![id.into()])?;
        Ok(true)
    }

    fn has_fork_ref(&self, id: &str) -> Result<bool> {
        Ok(!self
            .rows("SELECT 1 FROM fork_refs WHERE fork = ?", vec![id.into()])?
            .is_empty())
    }

    /// How many forks hold a reference by id.
    pub fn fork_refs(&self) -> Result<u64> {
        let rows = self.rows("SELECT count(*) FROM fork_refs", vec![])?;
        Ok(u64::try_from(int(rows.first().and_then(|r| r.first()))).unwrap_or(0))
    }

    /// On a fork: the id its reference on its source is held by; none for a fork made before
    /// references had ids.
    pub fn source_ref(&self) -> Result<Option<String>> {
        let rows = self.rows("SELECT fork FROM source_ref", vec![])?;
        Ok(rows.first().and_then(|r| text(r.first())))
    }

    pub fn save_source_ref(&self, id: &str) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO source_ref (id, fork) VALUES (1, ?)",
            vec![id.into()],
        )?;
        Ok(())
    }
}

/// Work owed to other objects (the registry, subscriptions, channels, a fork's source) after a
/// commit (see `owed.rs`). Its row is written in the turn that makes it owed, so an alarm finishes
/// it after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Tell the registry this stream is gone.
    Deregister,
    /// Tell the channels this stream fed that it was deleted.
    ChannelsDeleted,
    /// Tell the registry this stream exists, and link what it answers.
    Register,
    /// Tell the linked subscriptions where the tail is.
    Notify,
    /// Give back the references this object's forks took on their sources.
    Release,
    /// A channel whose registration linked `LINK_PAGES_PER_INVOCATION` pages of the streams
    /// below it and left the rest: call the registry for the next pages.
    LinkBelow,
}

impl Task {
    /// In the order they must run: a removed incarnation leaves the registry, and its channels
    /// hear it was deleted, before a new one joins.
    /// `LinkBelow` is owed only once `Register` is settled (in the same turn), and last, so
    /// its pages, however many are left, never hold up the others.
    pub const ALL: [Task; 6] = [
        Task::Deregister,
        Task::ChannelsDeleted,
        Task::Register,
        Task::Notify,
        Task::Release,
        Task::LinkBelow,
    ];

    /// Whether it runs even when a task before it failed: it does not depend on them.
    pub fn independent(self) -> bool {
        matches!(self, Task::Release | Task::LinkBelow)
    }

    fn key(self) -> &'static str {
        match self {
            Task::Deregister => "deregister",
            Task::ChannelsDeleted => "channels-deleted",
            Task::Register => "register",
            Task::Notify => "notify",
            Task::Release => "release",
            Task::LinkBelow => "link-below",
        }
    }
}

/// A task still owed: how often it has failed, and when it is next tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    pub task: Task,
    pub attempts: u32,
    pub due_ms: i64,
    /// What the task needs that the stream's rows may no longer hold: for `Deregister`, the
    /// removed stream's name; for `ChannelsDeleted`, the notices still to give, for `Release`,
    /// the references still to give back, as JSON, for `Notify`, where a pass over many
    /// subscriptions is (`subscribers.rs`), as JSON, or empty for a pass not yet begun, and
    /// for `LinkBelow`, how many streams below the channel are linked so far.
    pub detail: String,
}

impl Store {
    /// Records `task` as owed from `due_ms`, keeping the count of a task already owed.
    pub fn owe(&self, task: Task, due_ms: i64, detail: &str) -> Result<()> {
        self.sql.exec(
            "INSERT INTO pending (task, attempts, due_ms, detail) VALUES (?, 0, ?, ?)
             ON CONFLICT (task) DO UPDATE SET due_ms = min(due_ms, excluded.due_ms),
               detail = excluded.detail",
            vec![
                task.key().into(),
                SqlStorageValue::Integer(due_ms),
                detail.into(),
            ],
        )?;
        Ok(())
    }

    /// Records `task` as owed from `due_ms`, keeping the detail (and count) of a task already
    /// owed: a notification pass under way keeps its place.
    pub fn owe_keeping(&self, task: Task, due_ms: i64) -> Result<()> {
        self.sql.exec(
            "INSERT INTO pending (task, attempts, due_ms, detail) VALUES (?, 0, ?, '')
             ON CONFLICT (task) DO UPDATE SET due_ms = min(due_ms, excluded.due_ms)",
            vec![task.key().into(), SqlStorageValue::Integer(due_ms)],
        )?;
        Ok(())
    }

    /// `task`, still owed, goes on from `detail` at `due_ms` (its count of failures kept).
    pub fn carry_on(&self, task: Task, due_ms: i64, detail: &str) -> Result<()> {
        self.sql.exec(
            "UPDATE pending SET due_ms = ?, detail = ? WHERE task = ?",
            vec![
                SqlStorageValue::Integer(due_ms),
                detail.into(),
                task.key().into(),
            ],
        )?;
        Ok(())
    }

    /// A failed attempt: tried again at `due_ms`.
    pub fn failed(&self, task: Task, due_ms: i64) -> Result<()> {
        self.sql.exec(
            "UPDATE pending SET attempts = attempts + 1, due_ms = ? WHERE task = ?",
            vec![SqlStorageValue::Integer(due_ms), task.key().into()],
        )?;
        Ok(())
    }

    pub fn settle(&self, task: Task) -> Result<()> {
        self.sql.exec(
            "DELETE FROM pending WHERE task = ?",
            vec![task.key().into()],
        )?;
        Ok(())
    }

    /// What is owed, in the order it must run.
    pub fn owed(&self) -> Result<Vec<Owed>> {
        let rows = self.rows("SELECT task, attempts, due_ms, detail FROM pending", vec![])?;
        Ok(Task::ALL
            .into_iter()
            .filter_map(|task| {
                let r = rows
                    .iter()
                    .find(|r| text(r.first()).as_deref() == Some(task.key()))?;
                Some(Owed {
                    task,
                    attempts: u32::try_from(int(r.get(1))).unwrap_or(u32::MAX),
                    due_ms: int(r.get(2)),
                    detail: text(r.get(3)).unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// A channel's incarnation marks are kept this long after their last use: long enough that no
/// batch of a deleted source is still on its way, short enough not to pile up.
const STALE_MARK_MS: i64 = 3_600_000;

/// Channels: the links a source keeps and the marks a channel keeps (see `channel.rs`).
impl Store {
    /// The channels this stream feeds.
    pub fn channel_links(&self) -> Result<Vec<ChannelLink>> {
        if let Some(cached) = self.channel_links.borrow().as_ref() {
            return Ok(cached.clone());
        }
        let links: Vec<ChannelLink> = self
            .rows(
                "SELECT l.channel, l.instance, l.forwarded, l.failures, l.closed_sent,
                        a.channel IS NOT NULL
                 FROM channel_links l LEFT JOIN channel_announce a
                   ON a.channel = l.channel AND a.instance = l.instance
                 ORDER BY l.channel",
                vec![],
            )?
            .iter()
            .map(|r| ChannelLink {
                channel: text(r.first()).unwrap_or_default(),
                instance: text(r.get(1)).unwrap_or_default(),
                forwarded: offset(r.get(2)),
                failures: u32::try_from(int(r.get(3))).unwrap_or(0),
                closed_sent: int(r.get(4)) != 0,
                announce: int(r.get(5)) != 0,
            })
            .collect();
        self.channel_links.replace(Some(links.clone()));
        Ok(links)
    }

    /// Links a channel from `forwarded` on. A link to the same incarnation is kept as it is (it
    /// may be further on); one to an older incarnation is replaced.
    pub fn link_channel(&self, channel: &str, instance: &str, forwarded: Offset) -> Result<()> {
        self.channel_links.replace(None);
        self.sql.exec(
            "INSERT INTO channel_links (channel, instance, forwarded, failures, closed_sent)
               VALUES (?, ?, ?, 0, 0)
             ON CONFLICT (channel) DO UPDATE SET instance = excluded.instance,
               forwarded = excluded.forwarded, failures = 0, closed_sent = 0
             WHERE channel_links.instance != excluded.instance",
            vec![channel.into(), instance.into(), pos(forwarded)],
        )?;
        Ok(())
    }

    /// Records how far a channel has been fed, its failures in a row, and whether it has the
    /// stream's `closed` event. A link the same as stored is not written again (a batch that
    /// only announces the stream moves nothing): Cloudflare bills the row either way.
    pub fn set_forwarded(&self, link: &ChannelLink) -> Result<()> {
        self.channel_links.replace(None);
        self.sql.exec(
            "UPDATE channel_links SET forwarded = ?1, failures = ?2, closed_sent = ?3
             WHERE channel = ?4 AND instance = ?5
               AND (forwarded != ?1 OR failures != ?2 OR closed_sent != ?3)",
            vec![
                pos(link.forwarded),
                SqlStorageValue::Integer(i64::from(link.failures)),
                SqlStorageValue::Integer(i64::from(link.closed_sent)),
                link.channel.as_str().into(),
                link.instance.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// Drops the link to one incarnation of a channel (a newer one's link is kept).
    pub fn unlink_channel(&self, channel: &str, instance: &str) -> Result<()> {
        self.channel_links.replace(None);
        self.sql.exec(
            "DELETE FROM channel_links WHERE channel = ? AND instance = ?",
            vec![channel.into(), instance.into()],
        )?;
        self.announced(channel)
    }

    /// A link made when the stream was created: the channel is owed its `created` event.
    pub fn announce(&self, channel: &str, instance: &str) -> Result<()> {
        self.channel_links.replace(None);
        self.sql.exec(
            "INSERT OR REPLACE INTO channel_announce (channel, instance) VALUES (?, ?)",
            vec![channel.into(), instance.into()],
        )?;
        Ok(())
    }

    /// The channel has the `created` event.
    pub fn announced(&self, channel: &str) -> Result<()> {
        self.channel_links.replace(None);
        self.sql.exec(
            "DELETE FROM channel_announce WHERE channel = ?",
            vec![channel.into()],
        )?;
        Ok(())
    }

    /// A channel's mark for one incarnation of a source: the source position up to which its
    /// messages are in this channel.
    pub fn channel_mark(&self, source: &str, incarnation: &str) -> Result<Option<u64>> {
        Ok(self
            .rows(
                "SELECT mark FROM channel_marks WHERE source = ? AND incarnation = ?",
                vec![source.into(), incarnation.into()],
            )?
            .first()
            .map(|r| u64::try_from(int(r.first())).unwrap_or(0)))
    }

    /// Moves a source's mark (in the same turn as the envelopes it covers), and forgets the
    /// marks of the source's earlier incarnations once they are stale.
    pub fn set_channel_mark(
        &self,
        source: &str,
        incarnation: &str,
        mark: u64,
        now_ms: i64,
    ) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO channel_marks (source, incarnation, mark, updated_ms)
             VALUES (?, ?, ?, ?)",
            vec![
                source.into(),
                incarnation.into(),
                SqlStorageValue::Integer(mark as i64),
                SqlStorageValue::Integer(now_ms),
            ],
        )?;
        self.sql.exec(
            "DELETE FROM channel_marks WHERE source = ? AND incarnation != ? AND updated_ms < ?",
            vec![
                source.into(),
                incarnation.into(),
                SqlStorageValue::Integer(now_ms - STALE_MARK_MS),
            ],
        )?;
        Ok(())
    }

    /// A byte stream's data from `from` towards `to` as pieces that each end where an append
    /// ends, or where a piece reaches `budget` (a large append is cut into several). Stops
    /// after the piece that brings the total to `budget`. A `text` stream's pieces are cut
    /// back to a whole character ([`sse::text_cut_back`]), so each is UTF-8 on its own when
    /// the append is, and is carried as text.
    pub fn append_pieces(
        &self,
        rows: Rows<'_>,
        from: Offset,
        to: Offset,
        budget: usize,
        text: bool,
    ) -> Result<Vec<(Offset, Vec<u8>)>> {
        let mut pieces: Vec<(Offset, Vec<u8>)> = Vec::new();
        if from >= to {
            return Ok(pieces);
        }
        let rows = self.rows_over(rows, from, to)?;
        let mut piece: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut at = from.position();
        'rows: for row in rows {
            let LogRow { start, data, flags } = row?;
            let end = (start + data.length() as u64).min(to.position());
            while at < end {
                let room = budget.saturating_sub(piece.len()).max(1);
                let take = ((end - at) as usize).min(room);
                let lo = (at - start) as u32;
                let bytes = data.subarray(lo, lo + take as u32).to_vec();
                piece.extend_from_slice(&bytes);
                at += take as u64;
                total += take;
                let append_ends = at == start + data.length() as u64 && flags & ENDS_APPEND != 0;
                if append_ends || piece.len() >= budget || at == to.position() {
                    // Cut inside an append: the bytes of a character it splits go on to the
                    // next piece (or, after the last one, to the next batch).
                    let cut_inside = text && !append_ends && at != to.position();
                    let back = match cut_inside {
                        true => sse::text_cut_back(&piece[piece.len().saturating_sub(4)..]),
                        false => 0,
                    };
                    // A piece all of one unfinished character is cut where it is.
                    let back = if back < piece.len() { back } else { 0 };
                    let carried = piece.split_off(piece.len() - back);
                    let end_offset = Offset::new(at - back as u64).unwrap_or(to);
                    pieces.push((end_offset, std::mem::replace(&mut piece, carried)));
                    if total >= budget {
                        break 'rows;
                    }
                }
            }
        }
        Ok(pieces)
    }
}

/// One row's worth of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RowPiece {
    range: core::ops::Range<usize>,
    flags: i64,
}

/// Cuts appended data into rows of at most [`ROW_BYTES`]. Byte streams: the append is one
/// message. JSON: framed messages are packed whole into rows; an oversized message spans rows.
fn split_rows(data: &[u8], json: bool) -> Vec<RowPiece> {
    let mut pieces = Vec::new();
    let push_message = |range: core::ops::Range<usize>, pieces: &mut Vec<RowPiece>| {
        let mut at = range.start;
        while at < range.end {
            let end = (at + ROW_BYTES).min(range.end);
            let mut flags = 0;
            if at == range.start {
                flags |= STARTS_MESSAGE;
            }
            if end == range.end {
                flags |= ENDS_MESSAGE;
            }
            pieces.push(RowPiece {
                range: at..end,
                flags,
            });
            at = end;
        }
    };
    if !json {
        push_message(0..data.len(), &mut pieces);
        return pieces;
    }
    let mut row_start = 0;
    let mut prev_end = 0;
    for end in json::MessageEnds::new(data) {
        if end - row_start > ROW_BYTES && prev_end > row_start {
            pieces.push(RowPiece {
                range: row_start..prev_end,
                flags: STARTS_MESSAGE | ENDS_MESSAGE,
            });
            row_start = prev_end;
        }
        if end - row_start > ROW_BYTES {
            push_message(row_start..end, &mut pieces);
            row_start = end;
        }
        prev_end = end;
    }
    if prev_end > row_start {
        pieces.push(RowPiece {
            range: row_start..prev_end,
            flags: STARTS_MESSAGE | ENDS_MESSAGE,
        });
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(pieces: &[RowPiece], len: usize) -> bool {
        let mut at = 0;
        for p in pieces {
            if p.range.start != at || p.range.len() > ROW_BYTES || p.range.is_empty() {
                return false;
            }
            at = p.range.end;
        }
        at == len
    }

    #[test]
    fn schema_tables_are_every_table_made() {
        let tables: Vec<_> = schema_tables().collect();
        assert_eq!(tables.len(), SCHEMA.matches("CREATE TABLE").count());
        assert!(tables.contains(&"stream") && tables.contains(&"pending"));
        assert!(tables.contains(&"channel_backlog") && tables.contains(&"fork_refs"));
        assert!(tables
            .iter()
            .all(|t| t.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn byte_appends_split_at_the_row_limit() {
        let data = vec![7u8; ROW_BYTES * 2 + 5];
        let pieces = split_rows(&data, false);
        assert_eq!(pieces.len(), 3);
        assert!(covers(&pieces, data.len()));
        assert_eq!(pieces[0].flags, STARTS_MESSAGE);
        assert_eq!(pieces[1].flags, 0);
        assert_eq!(pieces[2].flags, ENDS_MESSAGE);
        assert_eq!(
            split_rows(b"abc", false),
            vec![RowPiece {
                range: 0..3,
                flags: 3
            }]
        );
    }

    /// `one_row` is what lets a plain append skip its transaction: it must never say one row
    /// where `append` would write two.
    #[test]
    fn one_row_is_one_piece() {
        for json in [false, true] {
            for data in [
                "1,".repeat(ROW_BYTES / 2),
                format!("\"{}\",", "x".repeat(ROW_BYTES - 3)),
                format!("1,\"{}\",", "x".repeat(ROW_BYTES - 5)),
                "[1],{},".to_string(),
            ] {
                assert!(data.len() <= ROW_BYTES);
                assert!(one_row(data.as_bytes()));
                assert_eq!(split_rows(data.as_bytes(), json).len(), 1, "{}", data.len());
            }
        }
        assert!(!one_row(b""));
        assert!(!one_row(&vec![0u8; ROW_BYTES + 1]));
        assert_eq!(split_rows(&vec![0u8; ROW_BYTES + 1], false).len(), 2);
    }

    #[test]
    fn json_rows_hold_whole_messages() {
        let small = "1,".repeat(ROW_BYTES / 2 + 10);
        let pieces = split_rows(small.as_bytes(), true);
        assert_eq!(pieces.len(), 2);
        assert!(covers(&pieces, small.len()));
        assert!(pieces
            .iter()
            .all(|p| p.flags == STARTS_MESSAGE | ENDS_MESSAGE));
        assert!(pieces.iter().all(|p| p.range.len() % 2 == 0));
    }

    #[test]
    fn oversized_json_messages_span_rows() {
        let big = format!("1,\"{}\",2,", "x".repeat(ROW_BYTES + 100));
        let pieces = split_rows(big.as_bytes(), true);
        assert!(covers(&pieces, big.len()));
        assert_eq!(
            pieces[0],
            RowPiece {
                range: 0..2,
                flags: 3
            }
        );
        assert_eq!(pieces[1].flags, STARTS_MESSAGE);
        assert_eq!(pieces[2].flags, ENDS_MESSAGE);
        assert_eq!(
            pieces[3],
            RowPiece {
                range: big.len() - 2..big.len(),
                flags: 3
            }
        );
    }
}
