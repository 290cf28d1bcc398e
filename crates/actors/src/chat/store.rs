//! The session's storage: its SQLite tables, and every statement the shell
//! runs against them, with the rows decoded into typed values. No decision
//! is made here: the cores decide, the shell calls these.

use super::core::{within_budget, Activity, Owner};
use crate::ports::{ChatMessage, Role, ToolCall};
use crate::sql::{self, int, FromRow, FromValue, SqlError};
use protocol::chat::{
    HistoryPage, StoredMessage, ToolCallRecord, TurnError, TurnFrame, TurnInfo, TurnStatus, Usage,
};
use protocol::{ErrorReply, SessionId, TenantId};
use serde_json::Value;
use worker::{SqlStorage, SqlStorageValue};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, role TEXT NOT NULL, content TEXT NOT NULL,
        tool_calls TEXT NOT NULL, tool_call_id TEXT, name TEXT, usage TEXT, created_at INTEGER NOT NULL)",
    // Who the session belongs to: the key that started its first turn
    // ('' for an anonymous one) and the end user inside that key.
    "CREATE TABLE IF NOT EXISTS session_owner (
        id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL, user TEXT)",
    "CREATE TABLE IF NOT EXISTS session_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1), tenant TEXT NOT NULL, session TEXT NOT NULL)",
    // One row per turn, written with its user message; `status` is running,
    // done or failed. AUTOINCREMENT: ids are never reused, even after an erase.
    "CREATE TABLE IF NOT EXISTS turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT, user_seq INTEGER NOT NULL, status TEXT NOT NULL,
        error_code TEXT, error_message TEXT, started_at INTEGER NOT NULL, ended_at INTEGER)",
    "CREATE INDEX IF NOT EXISTS turns_by_user_seq ON turns (user_seq)",
    "CREATE INDEX IF NOT EXISTS turns_by_status ON turns (status)",
    // The limiter reservations a running turn holds (JSON of a
    // `TurnReservation`), written with the turn and deleted when the turn
    // has settled them: a turn its isolate lost still has its reservation
    // here for `recover` to settle.
    "CREATE TABLE IF NOT EXISTS turn_reservations (
        turn_id INTEGER PRIMARY KEY, reservation TEXT NOT NULL)",
    // Every event of the recent turns, for resuming streams; the id is the
    // SSE `id:` and grows across the session (AUTOINCREMENT, never reused).
    "CREATE TABLE IF NOT EXISTS turn_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, turn_id INTEGER NOT NULL, event TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS turn_events_by_turn ON turn_events (turn_id)",
    // Event ids handed out ahead of storage: ids up to `reserved` may have
    // reached clients, so a new isolate starts after it and never reuses one.
    "CREATE TABLE IF NOT EXISTS event_ids (id INTEGER PRIMARY KEY CHECK (id = 1), reserved INTEGER NOT NULL)",
];
const COLUMNS: &str = "m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.name, m.usage, \
    m.created_at, t.id, t.status, t.error_code, t.error_message";
/// Messages read back to build the model's context (then trimmed to the budget).
pub const CONTEXT_ROWS: u32 = 200;

/// The latest turn and the range of stored event ids, for a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRange {
    /// The latest turn's id and its first stored event, if any.
    pub latest_turn: Option<(u64, Option<u64>)>,
    /// The oldest event still kept.
    pub oldest: Option<u64>,
    /// The newest event.
    pub newest: Option<u64>,
}

/// One session's tables.
pub struct SessionStore {
    sql: SqlStorage,
    /// The owner as last read or written here (`None`: not read yet). It
    /// only ever changes from none to one, through [`Self::set_owner`].
    owner: std::cell::RefCell<Option<Option<Owner>>>,
    /// The messages' count and times as last read, kept up to date by
    /// [`Self::append`] (`None`: read them next time). Every statement that
    /// writes `messages` is in this file and updates or forgets it; the
    /// object is the table's only writer.
    activity: std::cell::Cell<Option<Activity>>,
}

impl SessionStore {
    /// The store over the object's SQLite storage.
    pub fn new(sql: SqlStorage) -> Self {
        Self {
            sql,
            owner: std::cell::RefCell::new(None),
            activity: std::cell::Cell::new(None),
        }
    }

    fn exec(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<(), ErrorReply> {
        Ok(sql::exec(&self.sql, query, bindings)?)
    }

    /// Creates the tables if they do not exist.
    pub fn create_tables(&self) -> Result<(), ErrorReply> {
        // One call for the whole schema (a new session's first request pays
        // for it); statement by statement if the runtime refuses a batch.
        if self.exec(&SCHEMA.join(";\n"), vec![]).is_ok() {
            return Ok(());
        }
        for statement in SCHEMA {
            self.exec(statement, vec![])?;
        }
        Ok(())
    }

    /// The tenant and session the object was bound to, if it was.
    pub fn binding(&self) -> Result<Option<(TenantId, SessionId)>, ErrorReply> {
        let row: Option<(String, String)> = sql::first(
            &self.sql,
            "SELECT tenant, session FROM session_meta WHERE id = 1",
            vec![],
        )?;
        let Some((tenant, session)) = row else {
            return Ok(None);
        };
        match (TenantId::parse(&tenant), SessionId::parse(&session)) {
            (Ok(t), Ok(s)) => Ok(Some((t, s))),
            _ => Err(SqlError::Shape {
                query: "SELECT tenant, session FROM session_meta".into(),
                message: "a stored tenant or session id is invalid".into(),
            }
            .into()),
        }
    }

    /// Binds the object to `tenant` and `session` for good.
    pub fn bind(&self, tenant: &TenantId, session: &SessionId) -> Result<(), ErrorReply> {
        self.exec(
            "INSERT INTO session_meta (id, tenant, session) VALUES (1, ?, ?)",
            vec![tenant.as_str().into(), session.as_str().into()],
        )
    }

    /// Who the session belongs to; `None` while it has had no turn. A session
    /// with messages from before owners were kept is an anonymous one.
    pub fn owner(&self) -> Result<Option<Owner>, ErrorReply> {
        if let Some(known) = self.owner.borrow().as_ref() {
            return Ok(known.clone());
        }
        let owner = self.read_owner()?;
        *self.owner.borrow_mut() = Some(owner.clone());
        Ok(owner)
    }

    fn read_owner(&self) -> Result<Option<Owner>, ErrorReply> {
        let row: Option<(String, Option<String>)> = sql::first(
            &self.sql,
            "SELECT key, user FROM session_owner WHERE id = 1",
            vec![],
        )?;
        if let Some((key, user)) = row {
            return Ok(Some(Owner { key, user }));
        }
        Ok((self.message_count()? > 0).then(|| Owner {
            key: String::new(),
            user: None,
        }))
    }

    /// Records the session's owner (its first turn).
    pub fn set_owner(&self, owner: &Owner) -> Result<(), ErrorReply> {
        // Forgotten first: if the write fails, the next read asks storage.
        *self.owner.borrow_mut() = None;
        self.exec(
            "INSERT INTO session_owner (id, key, user) VALUES (1, ?, ?) \
             ON CONFLICT(id) DO NOTHING",
            vec![owner.key.as_str().into(), owner.user.clone().into()],
        )
    }

    /// Appends a message at `now_ms`; its sequence number.
    pub fn append(
        &self,
        m: &ChatMessage,
        usage: Option<Usage>,
        now_ms: u64,
    ) -> Result<u64, ErrorReply> {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let calls: Vec<ToolCallRecord> = m.tool_calls.iter().map(record).collect();
        let calls = serde_json::to_string(&calls)
            .map_err(|e| ErrorReply::new(protocol::ErrorCode::Internal, e.to_string()))?;
        let seq = sql::scalar(
            &self.sql,
            "INSERT INTO messages (role, content, tool_calls, tool_call_id, name, usage, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            vec![
                role.into(),
                m.content.as_str().into(),
                calls.into(),
                m.tool_call_id.clone().into(),
                m.name.clone().into(),
                usage.and_then(|u| serde_json::to_string(&u).ok()).into(),
                int(now_ms),
            ],
        );
        match seq {
            Ok(seq) => {
                // As `int` stores it.
                let stored_at = now_ms.min(i64::MAX as u64);
                self.activity
                    .set(self.activity.get().map(|a| a.appended(stored_at)));
                Ok(seq)
            }
            Err(e) => {
                // Whether the row was written is not known: read again.
                self.activity.set(None);
                Err(e.into())
            }
        }
    }

    /// Appends `messages` (a tool round) whole: if one fails, the ones
    /// already written are removed, so the history never holds half a round.
    pub fn append_all(
        &self,
        messages: &[(ChatMessage, Option<Usage>)],
        now_ms: u64,
    ) -> Result<(), ErrorReply> {
        let mut first = None;
        for (m, usage) in messages {
            match self.append(m, *usage, now_ms) {
                Ok(seq) => {
                    first.get_or_insert(seq);
                }
                Err(e) => {
                    if let Some(first) = first {
                        let _ = self.exec("DELETE FROM messages WHERE seq >= ?", vec![int(first)]);
                        self.activity.set(None);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` messages before sequence number `before`, oldest first.
    pub fn page(&self, before: Option<u64>, limit: u32) -> Result<HistoryPage, ErrorReply> {
        let mut messages: Vec<StoredMessage> = sql::rows(
            &self.sql,
            &format!(
                "SELECT {COLUMNS} FROM messages m LEFT JOIN turns t ON t.user_seq = m.seq \
                 WHERE m.seq < ? ORDER BY m.seq DESC LIMIT ?"
            ),
            vec![int(before.unwrap_or(u64::MAX)), int(limit)],
        )?;
        messages.reverse();
        let next_before = (messages.len() == limit as usize)
            .then(|| messages.first().map(|m| m.seq))
            .flatten();
        Ok(HistoryPage {
            messages,
            next_before,
        })
    }

    /// The newest messages, as the model reads them: at most
    /// [`CONTEXT_ROWS`], read newest first and no further than what fits
    /// `budget` characters ([`within_budget`]).
    pub fn recent(&self, budget: usize) -> Result<Vec<ChatMessage>, ErrorReply> {
        let rows = sql::rows_lazily::<ContextMessage>(
            &self.sql,
            "SELECT role, content, tool_calls, tool_call_id, name \
             FROM messages ORDER BY seq DESC LIMIT ?",
            vec![int(CONTEXT_ROWS)],
        )?;
        Ok(within_budget(rows.map(|r| r.map(|m| m.0)), budget)?)
    }

    /// How many messages are stored, and when the first and the last were:
    /// read once (one statement), then kept up to date here.
    pub fn activity(&self) -> Result<Activity, ErrorReply> {
        if let Some(activity) = self.activity.get() {
            return Ok(activity);
        }
        let (count, first_ms, last_ms): (u64, Option<u64>, Option<u64>) = sql::first(
            &self.sql,
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM messages",
            vec![],
        )?
        .unwrap_or((0, None, None));
        let activity = Activity {
            count,
            first_ms,
            last_ms,
        };
        self.activity.set(Some(activity));
        Ok(activity)
    }

    /// How many messages are stored.
    pub fn message_count(&self) -> Result<u64, ErrorReply> {
        Ok(self.activity()?.count)
    }

    /// When the last message was stored.
    pub fn last_activity(&self) -> Option<u64> {
        self.activity().ok().and_then(|a| a.last_ms)
    }

    /// Records a running turn started by user message `user_seq`; its id.
    pub fn start_turn(&self, user_seq: u64, now_ms: u64) -> Result<u64, ErrorReply> {
        Ok(sql::scalar(
            &self.sql,
            "INSERT INTO turns (user_seq, status, started_at) VALUES (?, 'running', ?) RETURNING id",
            vec![int(user_seq), int(now_ms)],
        )?)
    }

    /// Stores the reservation turn `id` holds (with the turn's row, in the
    /// same write).
    pub fn hold_reservation(
        &self,
        id: u64,
        reservation: &protocol::chat::TurnReservation,
    ) -> Result<(), ErrorReply> {
        let json = serde_json::to_string(reservation)
            .map_err(|e| ErrorReply::new(protocol::ErrorCode::Internal, e.to_string()))?;
        self.exec(
            "INSERT OR REPLACE INTO turn_reservations (turn_id, reservation) VALUES (?, ?)",
            vec![int(id), json.into()],
        )
    }

    /// Takes (reads and deletes) the reservation turn `id` held, if any.
    pub fn take_reservation(
        &self,
        id: u64,
    ) -> Result<Option<protocol::chat::TurnReservation>, ErrorReply> {
        let rows: Vec<(String,)> = sql::rows(
            &self.sql,
            "DELETE FROM turn_reservations WHERE turn_id = ? RETURNING reservation",
            vec![int(id)],
        )?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|(json,)| serde_json::from_str(&json).ok()))
    }

    /// The usage stored with turn `id`'s messages (its tool rounds and its
    /// answer), summed: what its completed model calls reported.
    pub fn stored_usage(&self, id: u64) -> Result<protocol::limits::TokenUsage, ErrorReply> {
        let rows: Vec<(Option<String>,)> = sql::rows(
            &self.sql,
            "SELECT m.usage FROM messages m, turns t WHERE t.id = ? AND m.seq > t.user_seq \
             AND m.seq < COALESCE((SELECT MIN(user_seq) FROM turns WHERE id > t.id), 9223372036854775807)",
            vec![int(id)],
        )?;
        let mut total = protocol::limits::TokenUsage::default();
        for usage in rows.into_iter().filter_map(|(u,)| u) {
            if let Ok(u) = serde_json::from_str::<Usage>(&usage) {
                total.input_tokens += u64::from(u.prompt_tokens);
                total.output_tokens += u64::from(u.completion_tokens);
            }
        }
        Ok(total)
    }

    /// The turns recorded as running.
    pub fn running_turns(&self) -> Result<Vec<u64>, ErrorReply> {
        let rows: Vec<(u64,)> = sql::rows(
            &self.sql,
            "SELECT id FROM turns WHERE status = 'running'",
            vec![],
        )?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Records turn `id` as answered.
    pub fn turn_done(&self, id: u64, now_ms: u64) -> Result<(), ErrorReply> {
        self.exec(
            "UPDATE turns SET status = 'done', ended_at = ? WHERE id = ?",
            vec![int(now_ms), int(id)],
        )
    }

    /// Records turn `id` as failed, if it is still running; whether it was.
    pub fn turn_failed(
        &self,
        id: u64,
        code: &str,
        message: &str,
        now_ms: u64,
    ) -> Result<bool, ErrorReply> {
        let rows: Vec<(u64,)> = sql::rows(
            &self.sql,
            "UPDATE turns SET status = 'failed', error_code = ?, error_message = ?, ended_at = ? \
             WHERE id = ? AND status = 'running' RETURNING id",
            vec![code.into(), message.into(), int(now_ms), int(id)],
        )?;
        Ok(!rows.is_empty())
    }

    /// The latest turn, as the history and the operator see it.
    pub fn latest_turn(&self) -> Result<Option<TurnInfo>, ErrorReply> {
        let row: Option<(u64, String, Option<String>, Option<String>)> = sql::first(
            &self.sql,
            "SELECT id, status, error_code, error_message FROM turns ORDER BY id DESC LIMIT 1",
            vec![],
        )?;
        Ok(row.map(|(id, status, code, message)| turn_info(id, &status, code, message)))
    }

    /// Stores events `(id, turn, event JSON)` with the ids they were sent under.
    pub fn append_events(&self, events: &[(u64, u64, String)]) -> Result<(), ErrorReply> {
        // At most 100 bound parameters a statement: 30 rows of 3.
        for rows in events.chunks(30) {
            let mut query =
                String::from("INSERT OR REPLACE INTO turn_events (id, turn_id, event) VALUES ");
            let mut bindings = Vec::with_capacity(rows.len() * 3);
            for (i, (id, turn, json)) in rows.iter().enumerate() {
                query.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
                bindings.push(int(*id));
                bindings.push(int(*turn));
                bindings.push(json.as_str().into());
            }
            self.exec(&query, bindings)?;
        }
        Ok(())
    }

    /// The highest event id handed out before (stored or reserved).
    pub fn issued_event_id(&self) -> Result<u64, ErrorReply> {
        let reserved: Option<u64> = sql::first::<(u64,)>(
            &self.sql,
            "SELECT reserved FROM event_ids WHERE id = 1",
            vec![],
        )?
        .map(|(r,)| r);
        let stored = self.last_event_id()?;
        Ok(reserved.unwrap_or(0).max(stored.unwrap_or(0)))
    }

    /// Reserves event ids up to `through`.
    pub fn reserve_event_ids(&self, through: u64) -> Result<(), ErrorReply> {
        self.exec(
            "INSERT INTO event_ids (id, reserved) VALUES (1, ?) \
             ON CONFLICT(id) DO UPDATE SET reserved = excluded.reserved",
            vec![int(through)],
        )
    }

    /// Drops the events of turns up to `through`.
    pub fn drop_events(&self, through: u64) -> Result<(), ErrorReply> {
        self.exec(
            "DELETE FROM turn_events WHERE turn_id <= ?",
            vec![int(through)],
        )
    }

    /// The latest turn and the stored event ids.
    pub fn event_range(&self) -> Result<EventRange, ErrorReply> {
        let latest_turn: Option<(u64, Option<u64>)> = sql::first(
            &self.sql,
            "SELECT t.id, (SELECT MIN(e.id) FROM turn_events e WHERE e.turn_id = t.id) \
             FROM turns t ORDER BY t.id DESC LIMIT 1",
            vec![],
        )?;
        let (oldest, newest): (Option<u64>, Option<u64>) = sql::first(
            &self.sql,
            "SELECT MIN(id), MAX(id) FROM turn_events",
            vec![],
        )?
        .unwrap_or((None, None));
        Ok(EventRange {
            latest_turn,
            oldest,
            newest,
        })
    }

    /// The stored events after `after`, in order.
    pub fn events_after(&self, after: u64) -> Result<Vec<TurnFrame>, ErrorReply> {
        let rows: Vec<(u64, String)> = sql::rows(
            &self.sql,
            "SELECT id, event FROM turn_events WHERE id > ? ORDER BY id",
            vec![int(after)],
        )?;
        rows.into_iter()
            .map(|(id, json)| {
                let event = serde_json::from_str(&json).map_err(|e| {
                    ErrorReply::from(SqlError::Shape {
                        query: "SELECT id, event FROM turn_events".into(),
                        message: format!("a stored event does not decode: {e}"),
                    })
                })?;
                Ok(TurnFrame { id, event })
            })
            .collect()
    }

    /// The highest turn id given (0 before the first turn). Read before an
    /// erase, it versions the erase in the tenant's session registry.
    pub fn max_turn_id(&self) -> Result<u64, ErrorReply> {
        Ok(sql::scalar(
            &self.sql,
            "SELECT COALESCE(MAX(id), 0) FROM turns",
            vec![],
        )?)
    }

    /// When the first stored message was stored.
    pub fn first_activity(&self) -> Option<u64> {
        self.activity().ok().and_then(|a| a.first_ms)
    }

    /// The last event id stored.
    pub fn last_event_id(&self) -> Result<Option<u64>, ErrorReply> {
        Ok(sql::scalar(
            &self.sql,
            "SELECT MAX(id) FROM turn_events",
            vec![],
        )?)
    }

    /// Erases the conversation (messages, turns, events); the binding stays,
    /// and ids keep growing (`AUTOINCREMENT`).
    pub fn erase(&self) -> Result<(), ErrorReply> {
        self.activity.set(None);
        for table in ["messages", "turns", "turn_events"] {
            self.exec(&format!("DELETE FROM {table}"), vec![])?;
        }
        Ok(())
    }
}

fn parse_status(s: &str) -> TurnStatus {
    match s {
        "running" => TurnStatus::Running,
        "done" => TurnStatus::Done,
        _ => TurnStatus::Failed,
    }
}

fn turn_info(id: u64, status: &str, code: Option<String>, message: Option<String>) -> TurnInfo {
    let error = match (code, message) {
        (Some(code), Some(message)) => Some(TurnError { code, message }),
        _ => None,
    };
    TurnInfo {
        id,
        status: parse_status(status),
        error,
    }
}

fn column<T: FromValue>(row: &[SqlStorageValue], i: usize) -> Result<T, String> {
    let value = row.get(i).ok_or_else(|| format!("missing column {i}"))?;
    T::from_value(value).map_err(|e| format!("column {i}: {e}"))
}

/// A message row joined with the turn it started ([`COLUMNS`]).
impl FromRow for StoredMessage {
    fn from_row(row: &[SqlStorageValue]) -> Result<Self, String> {
        let calls: String = column(row, 3)?;
        let usage: Option<String> = column(row, 6)?;
        let turn_id: Option<u64> = column(row, 8)?;
        let status: Option<String> = column(row, 9)?;
        Ok(StoredMessage {
            seq: column(row, 0)?,
            role: column(row, 1)?,
            content: column(row, 2)?,
            tool_calls: serde_json::from_str(&calls).map_err(|e| format!("tool_calls: {e}"))?,
            tool_call_id: column(row, 4)?,
            name: column(row, 5)?,
            usage: usage
                .map(|u| serde_json::from_str(&u).map_err(|e| format!("usage: {e}")))
                .transpose()?,
            created_at_ms: column(row, 7)?,
            turn: match (turn_id, status) {
                (Some(id), Some(status)) => {
                    Some(turn_info(id, &status, column(row, 10)?, column(row, 11)?))
                }
                _ => None,
            },
        })
    }
}

/// A row of [`SessionStore::recent`]'s query, as the model reads it.
struct ContextMessage(ChatMessage);

impl FromRow for ContextMessage {
    fn from_row(row: &[SqlStorageValue]) -> Result<Self, String> {
        let role: String = column(row, 0)?;
        let calls: String = column(row, 2)?;
        let calls: Vec<ToolCallRecord> =
            serde_json::from_str(&calls).map_err(|e| format!("tool_calls: {e}"))?;
        Ok(Self(port_message(
            &role,
            column(row, 1)?,
            &calls,
            column(row, 3)?,
            column(row, 4)?,
        )))
    }
}

fn port_message(
    role: &str,
    content: String,
    calls: &[ToolCallRecord],
    tool_call_id: Option<String>,
    name: Option<String>,
) -> ChatMessage {
    let role = match role {
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        "system" => Role::System,
        _ => Role::User,
    };
    ChatMessage {
        role,
        content,
        tool_calls: calls
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: serde_json::from_str(&c.arguments).unwrap_or(Value::Null),
            })
            .collect(),
        tool_call_id,
        name,
    }
}

fn record(call: &ToolCall) -> ToolCallRecord {
    ToolCallRecord {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// A tripwire for [`super::SessionStore`]'s kept activity: every
    /// statement of this file that writes `messages` must be followed,
    /// within a few lines, by an update of it (`self.activity.set`), or the
    /// kept count and times could go stale.
    #[test]
    fn every_write_of_messages_updates_the_kept_activity() {
        let source = include_str!("store.rs");
        let (code, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
        let lines: Vec<&str> = code.lines().collect();
        let writes: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                [
                    "INTO messages",
                    "DELETE FROM messages",
                    "UPDATE messages",
                    "[\"messages\"",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .map(|(i, _)| i)
            .collect();
        // append's INSERT, append_all's rollback, erase's table list.
        assert_eq!(writes.len(), 3, "{writes:?}");
        for i in writes {
            let around = &lines[i.saturating_sub(3)..(i + 25).min(lines.len())];
            assert!(
                around.iter().any(|l| l.contains("self.activity.set(")),
                "line {}: {}",
                i + 1,
                lines[i]
            );
        }
    }
}
