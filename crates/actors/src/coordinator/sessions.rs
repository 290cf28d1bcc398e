//! The tenant's session registry, in the coordinator's SQLite: one row per
//! session that ever reported, updated by the rule of
//! [`protocol::listing::apply_report`] (an erased session stays as a
//! tombstone for a day, so a late report of an earlier turn cannot bring it
//! back), listed most recent activity first.

use crate::sql::{self, SqlError};
use protocol::listing::{
    apply_report, RegistryRow, SessionChange, SessionCursor, SessionEntry, SessionPage,
    SessionReport,
};
use worker::{SqlStorage, SqlStorageValue};

/// Created when the coordinator loads ([`super::object`]'s `load`), once
/// per instance, not with each report.
pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY, version INTEGER NOT NULL, erased INTEGER NOT NULL,
        message_count INTEGER NOT NULL, last_activity_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL, key_id TEXT, user_id TEXT, updated_at_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sessions_by_activity
        ON sessions (erased, last_activity_ms, session_id)",
];

/// How long an erased session's tombstone is kept: far longer than any
/// report can be late (reports leave a session right after its turn).
pub const TOMBSTONE_MS: u64 = 24 * 60 * 60 * 1000;

type Row = (
    u64,
    u64,
    u64,
    u64,
    u64,
    Option<String>,
    Option<String>,
    String,
);

/// Applies `report` at `now_ms`; whether it changed the registry.
pub fn record(
    sql_storage: &SqlStorage,
    report: &SessionReport,
    now_ms: u64,
) -> Result<bool, SqlError> {
    let id = report.change.session_id();
    let stored = sql::first::<Row>(
        sql_storage,
        "SELECT version, erased, message_count, last_activity_ms, created_at_ms, key_id, user_id,
                session_id FROM sessions WHERE session_id = ?",
        vec![id.into()],
    )?
    .map(
        |(
            version,
            erased,
            message_count,
            last_activity_ms,
            created_at_ms,
            key_id,
            user_id,
            session_id,
        )| {
            RegistryRow {
                entry: (erased == 0).then_some(SessionEntry {
                    session_id,
                    message_count,
                    last_activity_ms,
                    created_at_ms,
                    key_id,
                    user_id,
                }),
                version,
            }
        },
    );
    let Some(row) = apply_report(stored.as_ref(), report) else {
        return Ok(false);
    };
    let text = |v: Option<&String>| v.map_or(SqlStorageValue::Null, |s| s.as_str().into());
    let (erased, count, last, created, key, user) = match &row.entry {
        Some(e) => (
            0u64,
            e.message_count,
            e.last_activity_ms,
            e.created_at_ms,
            text(e.key_id.as_ref()),
            text(e.user_id.as_ref()),
        ),
        None => (1, 0, 0, 0, SqlStorageValue::Null, SqlStorageValue::Null),
    };
    sql::exec(
        sql_storage,
        "INSERT OR REPLACE INTO sessions (session_id, version, erased, message_count,
            last_activity_ms, created_at_ms, key_id, user_id, updated_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.into(),
            sql::int(row.version),
            sql::int(erased),
            sql::int(count),
            sql::int(last),
            sql::int(created),
            key,
            user,
            sql::int(now_ms),
        ],
    )?;
    if matches!(report.change, SessionChange::Erased { .. }) {
        sql::exec(
            sql_storage,
            "DELETE FROM sessions WHERE erased = 1 AND updated_at_ms < ?",
            vec![sql::int(now_ms.saturating_sub(TOMBSTONE_MS))],
        )?;
    }
    Ok(true)
}

/// A page of at most `limit` sessions after `after`.
pub fn list(
    sql_storage: &SqlStorage,
    limit: u32,
    after: Option<&SessionCursor>,
) -> Result<SessionPage, SqlError> {
    const COLUMNS: &str =
        "session_id, message_count, last_activity_ms, created_at_ms, key_id, user_id";
    let take = sql::int(u64::from(limit) + 1);
    let rows = match after {
        None => sql::rows::<(String, u64, u64, u64, Option<String>, Option<String>)>(
            sql_storage,
            &format!(
                "SELECT {COLUMNS} FROM sessions WHERE erased = 0
                 ORDER BY last_activity_ms DESC, session_id DESC LIMIT ?"
            ),
            vec![take],
        )?,
        Some(c) => sql::rows(
            sql_storage,
            &format!(
                "SELECT {COLUMNS} FROM sessions WHERE erased = 0
                   AND (last_activity_ms < ? OR (last_activity_ms = ? AND session_id < ?))
                 ORDER BY last_activity_ms DESC, session_id DESC LIMIT ?"
            ),
            vec![
                sql::int(c.last_activity_ms),
                sql::int(c.last_activity_ms),
                c.session_id.as_str().into(),
                take,
            ],
        )?,
    };
    let mut sessions: Vec<SessionEntry> = rows
        .into_iter()
        .map(
            |(session_id, message_count, last_activity_ms, created_at_ms, key_id, user_id)| {
                SessionEntry {
                    session_id,
                    message_count,
                    last_activity_ms,
                    created_at_ms,
                    key_id,
                    user_id,
                }
            },
        )
        .collect();
    let more = sessions.len() > limit as usize;
    sessions.truncate(limit as usize);
    let next_cursor = more.then(|| sessions.last()).flatten().map(|last| {
        SessionCursor {
            last_activity_ms: last.last_activity_ms,
            session_id: last.session_id.clone(),
        }
        .encode()
    });
    Ok(SessionPage {
        sessions,
        next_cursor,
    })
}
