//! The ledger's usage rows (storage only: the records and the report are
//! plain data, [`protocol::usage`]). One row per `(day, caller, model)`,
//! added to in place; rows older than [`KEPT_DAYS`] are dropped as new days
//! are written.

use crate::sql;
use protocol::limits::TokenUsage;
use protocol::metrics::{bucket_of, RecentTokens, TokenTotals, BUCKET_MS, DAY_BUCKETS};
use protocol::usage::{report, UsageQuery, UsageRecord, UsageReport, KEPT_DAYS, MAX_RECORDS};
use protocol::{ErrorCode, ErrorReply};
use worker::SqlStorage;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS usage (
    day INTEGER NOT NULL, caller TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
    PRIMARY KEY (day, caller, model))";

/// Tokens and cost per 5-minute cell of the last day, by arrival time (the
/// metrics' windows: the daily rows cannot say what the last hour used).
const RECENT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS usage_recent (
    bucket INTEGER PRIMARY KEY, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL)";

/// Adds `records` (checked first: all or none), arriving at `now_ms`.
pub fn record(sql: &SqlStorage, records: &[UsageRecord], now_ms: u64) -> Result<u64, ErrorReply> {
    if records.len() > MAX_RECORDS {
        return Err(ErrorReply::new(
            ErrorCode::InvalidRequest,
            format!("at most {MAX_RECORDS} usage records at once"),
        ));
    }
    for r in records {
        r.validate()
            .map_err(|e| ErrorReply::new(ErrorCode::InvalidRequest, e))?;
    }
    sql::exec(sql, SCHEMA, vec![])?;
    for r in records {
        sql::exec(
            sql,
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (day, caller, model) DO UPDATE SET
               requests = requests + excluded.requests,
               input_tokens = input_tokens + excluded.input_tokens,
               output_tokens = output_tokens + excluded.output_tokens,
               cost_micros = cost_micros + excluded.cost_micros",
            vec![
                sql::int(r.day),
                r.caller.as_str().into(),
                r.model.as_str().into(),
                sql::int(r.requests),
                sql::int(r.usage.input_tokens),
                sql::int(r.usage.output_tokens),
                sql::int(r.cost_micros),
            ],
        )?;
    }
    let mut recent = TokenTotals::default();
    for r in records {
        recent.add(&TokenTotals {
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cost_micros: r.cost_micros,
        });
    }
    sql::exec(sql, RECENT_SCHEMA, vec![])?;
    let bucket = bucket_of(now_ms);
    sql::exec(
        sql,
        "INSERT INTO usage_recent VALUES (?, ?, ?, ?)
         ON CONFLICT (bucket) DO UPDATE SET
           input_tokens = input_tokens + excluded.input_tokens,
           output_tokens = output_tokens + excluded.output_tokens,
           cost_micros = cost_micros + excluded.cost_micros",
        vec![
            sql::int(bucket),
            sql::int(recent.input_tokens),
            sql::int(recent.output_tokens),
            sql::int(recent.cost_micros),
        ],
    )?;
    sql::exec(
        sql,
        "DELETE FROM usage_recent WHERE bucket < ?",
        vec![sql::int(
            bucket.saturating_sub((DAY_BUCKETS - 1) * BUCKET_MS),
        )],
    )?;
    if let Some(newest) = records.iter().map(|r| r.day).max() {
        sql::exec(
            sql,
            "DELETE FROM usage WHERE day < ?",
            vec![sql::int(newest.saturating_sub(KEPT_DAYS))],
        )?;
    }
    Ok(records.len() as u64)
}

/// Tokens and cost of the last hour and day, as of `now_ms`.
pub fn recent(sql: &SqlStorage, now_ms: u64) -> Result<RecentTokens, ErrorReply> {
    sql::exec(sql, RECENT_SCHEMA, vec![])?;
    let rows = sql::rows::<(u64, u64, u64, u64)>(
        sql,
        "SELECT bucket, input_tokens, output_tokens, cost_micros FROM usage_recent",
        vec![],
    )?;
    Ok(RecentTokens::from_cells(
        rows.into_iter()
            .map(|(bucket, input_tokens, output_tokens, cost_micros)| {
                (
                    bucket,
                    TokenTotals {
                        input_tokens,
                        output_tokens,
                        cost_micros,
                    },
                )
            }),
        now_ms,
    ))
}

/// The report of `query` over the stored rows.
pub fn read(sql: &SqlStorage, query: &UsageQuery) -> Result<UsageReport, ErrorReply> {
    sql::exec(sql, SCHEMA, vec![])?;
    type Row = (u32, String, String, u64, u64, u64, u64);
    let rows = sql::rows::<Row>(
        sql,
        "SELECT day, caller, model, requests, input_tokens, output_tokens, cost_micros
         FROM usage WHERE day BETWEEN ? AND ?",
        vec![sql::int(query.from), sql::int(query.to)],
    )?;
    let records: Vec<UsageRecord> = rows
        .into_iter()
        .map(
            |(day, caller, model, requests, input_tokens, output_tokens, cost_micros)| {
                UsageRecord {
                    day,
                    caller,
                    model,
                    requests,
                    usage: TokenUsage {
                        input_tokens,
                        output_tokens,
                    },
                    cost_micros,
                }
            },
        )
        .collect();
    Ok(report(query, &records))
}
