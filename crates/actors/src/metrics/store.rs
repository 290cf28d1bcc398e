//! The metrics object's table: one row per cell (a 5-minute bucket and a
//! route), the cell as JSON.

use super::core::MetricsEffect;
use crate::sql::{self, SqlError};
use protocol::metrics::RouteCell;
use worker::SqlStorage;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS metrics_cells (
    bucket INTEGER NOT NULL, route TEXT NOT NULL, cell TEXT NOT NULL,
    PRIMARY KEY (bucket, route))";

/// Every stored cell.
pub fn load(sql_storage: &SqlStorage) -> Result<Vec<(u64, String, RouteCell)>, String> {
    sql::exec(sql_storage, SCHEMA, vec![]).map_err(|e| e.to_string())?;
    let rows = sql::rows::<(u64, String, String)>(
        sql_storage,
        "SELECT bucket, route, cell FROM metrics_cells",
        vec![],
    )
    .map_err(|e| e.to_string())?;
    rows.into_iter()
        .map(|(bucket, route, json)| {
            serde_json::from_str(&json)
                .map(|cell| (bucket, route, cell))
                .map_err(|e| format!("a metrics cell is unreadable: {e}"))
        })
        .collect()
}

/// Performs the core's effects, in order.
pub fn perform(sql_storage: &SqlStorage, effects: &[MetricsEffect]) -> Result<(), SqlError> {
    for effect in effects {
        match effect {
            MetricsEffect::Save {
                bucket,
                route,
                cell,
            } => {
                let json = serde_json::to_string(cell)
                    .map_err(|e| SqlError::Exec(format!("a metrics cell: {e}")))?;
                sql::exec(
                    sql_storage,
                    "INSERT INTO metrics_cells (bucket, route, cell) VALUES (?, ?, ?)
                     ON CONFLICT (bucket, route) DO UPDATE SET cell = excluded.cell",
                    vec![sql::int(*bucket), route.as_str().into(), json.into()],
                )?;
            }
            MetricsEffect::Prune { before } => sql::exec(
                sql_storage,
                "DELETE FROM metrics_cells WHERE bucket < ?",
                vec![sql::int(*before)],
            )?,
        }
    }
    Ok(())
}
