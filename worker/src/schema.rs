//! Creating and upgrading an object's SQLite schema.
//!
//! `CREATE TABLE IF NOT EXISTS` makes the tables a new object needs, but leaves alone a table
//! an older version of the Worker made: a column added since is missing there, and every
//! query naming it fails. Each such change is a [`Migration`], applied once per object, in
//! order; the object records how many it has in `schema_version`.

use worker::{SqlStorage, SqlStorageValue};

/// One change to a table that already exists.
pub struct Migration {
    /// A statement that fails only where the change is still to be made. Objects made before
    /// `schema_version` existed may have been made with or without the change.
    pub check: &'static str,
    /// The change itself.
    pub apply: &'static str,
}

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL
)";

/// Whether the object behind `sql` has a table called `name`: whether it has made its tables.
/// Reading `sqlite_master` writes nothing. A failure counts as yes, so that opening is tried
/// and its error seen.
pub fn has_table(sql: &SqlStorage, name: &str) -> bool {
    let found: worker::Result<Vec<Vec<SqlStorageValue>>> = sql
        .exec(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            vec![SqlStorageValue::String(name.to_string())],
        )
        .and_then(|c| c.raw().collect());
    found.map_or(true, |rows| !rows.is_empty())
}

/// Creates the tables in `schema` that are missing and applies the `migrations` this object
/// has not had yet.
pub fn open(sql: &SqlStorage, schema: &str, migrations: &[Migration]) -> worker::Result<()> {
    sql.exec(schema, None)?;
    sql.exec(VERSION_TABLE, None)?;
    let rows: Vec<Vec<SqlStorageValue>> = sql
        .exec("SELECT version FROM schema_version WHERE id = 1", None)?
        .raw()
        .collect::<worker::Result<_>>()?;
    let had = match rows.first().and_then(|r| r.first()) {
        Some(SqlStorageValue::Integer(v)) => usize::try_from(*v).unwrap_or(0),
        _ => 0,
    };
    if had >= migrations.len() && !rows.is_empty() {
        return Ok(());
    }
    for m in migrations.iter().skip(had) {
        if sql.exec(m.check, None).is_err() {
            sql.exec(m.apply, None)?;
        }
    }
    sql.exec(
        "INSERT INTO schema_version (id, version) VALUES (1, ?)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        vec![SqlStorageValue::Integer(migrations.len() as i64)],
    )?;
    Ok(())
}
