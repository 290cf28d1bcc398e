//! Where the ingest queue counts armed embedder failures: one row of its
//! SQLite, apart from the queue's state, so a test's faults survive a restart
//! of the runtime (the restart test relies on it) and production state holds
//! no test hooks. Read only through [`FaultyEmbedder`], which the
//! configuration chooses (`FAULT_INJECTION`).
//!
//! [`FaultyEmbedder`]: crate::embedded::FaultyEmbedder

use crate::embedded::FaultBudget;
use crate::sql::{self, int, SqlError};
use worker::SqlStorage;

/// The table.
pub const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS faults (id INTEGER PRIMARY KEY CHECK (id = 1), remaining INTEGER NOT NULL)";

/// Failures still armed.
pub fn armed(sql: &SqlStorage) -> Result<u32, SqlError> {
    Ok(
        sql::first::<(u32,)>(sql, "SELECT remaining FROM faults WHERE id = 1", vec![])?
            .map_or(0, |(n,)| n),
    )
}

/// Arms `n` failures (replacing what was armed).
pub fn arm(sql: &SqlStorage, n: u32) -> Result<(), SqlError> {
    sql::exec(
        sql,
        "INSERT INTO faults (id, remaining) VALUES (1, ?) \
         ON CONFLICT(id) DO UPDATE SET remaining = excluded.remaining",
        vec![int(n)],
    )
}

/// The armed failures of one object's storage.
pub struct SqlFaults {
    sql: SqlStorage,
}

impl SqlFaults {
    /// The count in `sql`.
    pub fn new(sql: SqlStorage) -> Self {
        Self { sql }
    }
}

impl FaultBudget for SqlFaults {
    fn take(&self) -> bool {
        // Read and decrement in one synchronous step: nothing else runs in
        // between. A storage error injects nothing (the real call goes on).
        match armed(&self.sql) {
            Ok(0) | Err(_) => false,
            Ok(n) => arm(&self.sql, n - 1).is_ok(),
        }
    }
}
