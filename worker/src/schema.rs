//! Creating and upgrading an object's SQLite schema.
//!
//! `CREATE TABLE IF NOT EXISTS` makes the tables a new object needs, but leaves alone a table
//! an older version of the Worker made: a column added since is missing there, and every
//! query naming it fails. Each such change is a [`Migration`], applied once per object, in
//! order; the object records how many it has in `schema_version`.

use worker::{SqlStorage, SqlStorageValue};

/// One change to tables that already exist.
pub enum Migration {
    Change {
        /// A statement that fails only where the change is still to be made. Objects made
        /// before `schema_version` existed may have been made with or without the change.
        check: &'static str,
        /// The change itself.
        apply: &'static str,
    },
    /// These tables of the schema, keyed by text, made again as the schema now makes them:
    /// without a rowid. A rowid table keeps a text key in an index beside the table, so each
    /// insert wrote two rows (Cloudflare bills an object per row written); without a rowid
    /// the table is ordered by its key, one row. Their rows are copied over, column by name.
    WithoutRowid(&'static [&'static str]),
    /// A table of the schema, keyed by text, made again without a rowid as `WithoutRowid`
    /// does, but too large to copy in one invocation (the registry's `streams`, a row per
    /// stream in the deployment: 3 million rows took 21 s of CPU to copy locally, and Cloudflare
    /// allows an invocation 30 s). It is renamed `aside`, which changes the schema alone however
    /// many rows it has, and the schema makes the table anew, empty. Its owner reads both until
    /// [`move_aside`] has moved every row back, a bounded number per call.
    SetAside {
        table: &'static str,
        aside: &'static str,
    },
}

impl Migration {
    /// Whether the change is still to be made.
    fn due(&self, sql: &SqlStorage) -> bool {
        match self {
            Migration::Change { check, .. } => rows(sql, check, vec![]).is_err(),
            Migration::WithoutRowid(tables) => tables.iter().any(|table| has_rowid(sql, table)),
            Migration::SetAside { table, .. } => has_rowid(sql, table),
        }
    }

    fn apply(&self, sql: &SqlStorage, schema: &str) -> worker::Result<()> {
        match self {
            Migration::Change { apply, .. } => {
                sql.exec(apply, None)?;
            }
            Migration::WithoutRowid(tables) => {
                for table in *tables {
                    let made = definition(schema, table).ok_or_else(|| {
                        worker::Error::RustError(format!("schema: no table {table}"))
                    })?;
                    let keyed = format!("{table}_keyed");
                    let made = made.replacen(
                        &format!("CREATE TABLE IF NOT EXISTS {table} "),
                        &format!("CREATE TABLE {keyed} "),
                        1,
                    );
                    sql.exec(&made, None)?;
                    // By name: a column an older migration added sits last in the old table,
                    // wherever the schema now lists it.
                    let columns = sql
                        .exec(&format!("SELECT * FROM {table} LIMIT 0"), None)?
                        .column_names()
                        .join(", ");
                    sql.exec(
                        &format!("INSERT INTO {keyed} ({columns}) SELECT {columns} FROM {table}"),
                        None,
                    )?;
                    sql.exec(&format!("DROP TABLE {table}"), None)?;
                    sql.exec(&format!("ALTER TABLE {keyed} RENAME TO {table}"), None)?;
                }
            }
            // The schema, applied again after the migrations, makes `table` anew.
            Migration::SetAside { table, aside } => {
                sql.exec(&format!("ALTER TABLE {table} RENAME TO {aside}"), None)?;
            }
        }
        Ok(())
    }
}

/// Whether `table` was made with a rowid. A failure counts as yes: the rebuild then fails, and
/// its error is seen.
fn has_rowid(sql: &SqlStorage, table: &str) -> bool {
    rows(
        sql,
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
        vec![SqlStorageValue::String(table.to_string())],
    )
    .map_or(true, |found| match found.first().and_then(|r| r.first()) {
        Some(SqlStorageValue::String(made)) => !made.contains("WITHOUT ROWID"),
        _ => false,
    })
}

/// Moves the first `count` rows of `aside` (in the order of its first column, its key) into
/// `table`, where [`Migration::SetAside`] put them, and drops `aside` once it is empty: whether
/// rows are left to move. A row already in `table` (written there since) is kept as it is.
/// Call it inside a transaction: a failure between the copy and the delete would otherwise
/// leave rows in both, which readers of both tolerate but need not.
pub fn move_aside(
    sql: &SqlStorage,
    table: &str,
    aside: &str,
    count: usize,
) -> worker::Result<bool> {
    let columns = sql
        .exec(&format!("SELECT * FROM {aside} LIMIT 0"), None)?
        .column_names();
    let key = columns
        .first()
        .ok_or_else(|| worker::Error::RustError(format!("schema: {aside} has no columns")))?;
    let columns = columns.join(", ");
    let offset = i64::try_from(count.max(1) - 1).unwrap_or(i64::MAX);
    let last = rows(
        sql,
        &format!("SELECT {key} FROM {aside} ORDER BY {key} LIMIT 1 OFFSET ?"),
        vec![SqlStorageValue::Integer(offset)],
    )?;
    match last.into_iter().next().and_then(|r| r.into_iter().next()) {
        Some(last) => {
            sql.exec(
                &format!(
                    "INSERT OR IGNORE INTO {table} ({columns})
                     SELECT {columns} FROM {aside} WHERE {key} <= ?"
                ),
                vec![last.clone()],
            )?;
            sql.exec(&format!("DELETE FROM {aside} WHERE {key} <= ?"), vec![last])?;
            Ok(true)
        }
        // Fewer than `count` left: all of them, and the table with them.
        None => {
            sql.exec(
                &format!("INSERT OR IGNORE INTO {table} ({columns}) SELECT {columns} FROM {aside}"),
                None,
            )?;
            sql.exec(&format!("DROP TABLE {aside}"), None)?;
            Ok(false)
        }
    }
}

/// `CREATE TABLE IF NOT EXISTS <table> (...)` as `schema` has it, without its `;`.
fn definition<'a>(schema: &'a str, table: &str) -> Option<&'a str> {
    let head = format!("CREATE TABLE IF NOT EXISTS {table} ");
    let start = schema.find(&head)?;
    let len = schema[start..].find(';')?;
    Some(&schema[start..start + len])
}

fn rows(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> worker::Result<Vec<Vec<SqlStorageValue>>> {
    sql.exec(query, bindings)?.raw().collect()
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
/// has not had yet: together or not at all when `storage` is given, since a migration that
/// rebuilds a table drops the old one before the new one takes its name.
pub fn open(
    sql: &SqlStorage,
    schema: &str,
    migrations: &[Migration],
    storage: Option<&crate::transaction::Transactional>,
) -> worker::Result<()> {
    // Tables made just now are made as the schema is: no migration is checked (each check
    // reads `sqlite_master`).
    let first = schema
        .split("CREATE TABLE IF NOT EXISTS ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    let fresh = first.is_some_and(|table| !has_table(sql, table));
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
    let migrate = || {
        let mut changed = false;
        let done = if fresh { migrations.len() } else { had };
        for m in migrations.iter().skip(done) {
            if m.due(sql) {
                m.apply(sql, schema)?;
                changed = true;
            }
        }
        // A table made again lost its indexes: the schema makes them anew.
        if changed {
            sql.exec(schema, None)?;
        }
        sql.exec(
            "INSERT INTO schema_version (id, version) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            vec![SqlStorageValue::Integer(migrations.len() as i64)],
        )?;
        Ok(())
    };
    match storage {
        Some(storage) => storage.atomically(migrate),
        None => migrate(),
    }
}
