//! Counting the SQLite rows an object reads and writes, for tests (with `FAULT_MARKER` only).
//!
//! Cloudflare bills a SQLite-backed object per row read and, a thousand times dearer, per row
//! written (index entries included). The runtime counts both on each cursor (`rowsRead`,
//! `rowsWritten`); with faults on, [`RowCounter::install`] wraps the object's `sql.exec` so
//! that every cursor is kept, and [`RowCounter::take`] sums and forgets them. A stream's or a
//! subscription's answer then carries its request's rows in [`ROWS_HEADER`], so tests can hold
//! each operation to what it costs (docs/benchmark.md, "What an operation costs on
//! Cloudflare"). The registry counts the rows of a stream's registration, which the stream's
//! answer to its create carries (`crate::fault::REGISTRY_ROWS_HEADER`).

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

/// With faults on, a stream's or subscription's answer says how many SQLite rows it read and
/// wrote while handling the request, as `read=R written=W` (rows a streamed body reads after
/// the answer is sent aside). Requests to one object that overlap share their counts, and an
/// alarm's rows count in the next answer's.
pub const ROWS_HEADER: &str = "x-edgestream-rows";

/// With faults on, the answer to the request that started an object also says, in the same
/// form, the rows its start read and wrote (opening its tables).
pub const START_ROWS_HEADER: &str = "x-edgestream-start-rows";

#[wasm_bindgen(inline_js = "
export function countRows(sql) {
    if (sql.__edgestreamRows) return;
    const exec = sql.exec;
    const kept = { cursors: [], read: 0, written: 0, totalRead: 0, totalWritten: 0 };
    sql.exec = function (...args) {
        const cursor = exec.apply(this, args);
        // Cursors read lazily: counted when taken. A long run of them untaken (an object that
        // answers no request) is folded in, so they are not kept for ever.
        if (kept.cursors.length >= 1024) {
            for (const c of kept.cursors.splice(0, 512)) {
                kept.read += c.rowsRead;
                kept.written += c.rowsWritten;
            }
        }
        kept.cursors.push(cursor);
        return cursor;
    };
    sql.__edgestreamRows = kept;
}

export function takeRows(sql) {
    const kept = sql.__edgestreamRows;
    if (!kept) return undefined;
    let read = kept.read;
    let written = kept.written;
    for (const c of kept.cursors) {
        read += c.rowsRead;
        written += c.rowsWritten;
    }
    kept.cursors.length = 0;
    kept.read = 0;
    kept.written = 0;
    kept.totalRead += read;
    kept.totalWritten += written;
    return [read, written, kept.totalRead, kept.totalWritten];
}
")]
extern "C" {
    #[wasm_bindgen(catch, js_name = countRows)]
    fn count_rows(sql: &JsValue) -> std::result::Result<(), JsValue>;
    #[wasm_bindgen(js_name = takeRows)]
    fn take_rows(sql: &JsValue) -> Option<Vec<f64>>;
}

/// With faults on, every answer of an object also says, in the same form, the rows it has
/// read and written since it started: what its alarms, its sockets' messages and the calls of
/// other objects cost is the difference between two answers.
pub const TOTAL_ROWS_HEADER: &str = "x-edgestream-rows-total";

/// Rows read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rows {
    pub read: u64,
    pub written: u64,
}

impl Rows {
    /// The value of [`ROWS_HEADER`].
    pub fn header(self) -> String {
        format!("read={} written={}", self.read, self.written)
    }
}

/// The rows counted on one object's storage, or nothing (faults off).
pub struct RowCounter {
    sql: Option<JsValue>,
}

impl RowCounter {
    /// Counts the rows of `sql` from now on when `enabled` (a test server); a counter that
    /// cannot wrap it counts nothing.
    pub fn install(sql: &worker::SqlStorage, enabled: bool) -> RowCounter {
        let sql: &JsValue = sql.as_ref();
        let sql = enabled
            .then(|| count_rows(sql).ok().map(|()| sql.clone()))
            .flatten();
        RowCounter { sql }
    }

    /// The rows counted since the last take, and since the counter was installed.
    pub fn take(&self) -> Option<(Rows, Rows)> {
        let counts = take_rows(self.sql.as_ref()?)?;
        let at = |i: usize| counts.get(i).copied().unwrap_or(0.0) as u64;
        Some((
            Rows {
                read: at(0),
                written: at(1),
            },
            Rows {
                read: at(2),
                written: at(3),
            },
        ))
    }
}
