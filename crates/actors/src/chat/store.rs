//! The session's storage: its SQLite tables, and every statement the shell
//! runs against them, with the rows decoded into typed values. No decision
//! is made here: the cores decide, the shell calls these.

use crate::ports::{ChatMessage, Role, ToolCall};
use protocol::chat::{
    ChatEvent, HistoryPage, StoredMessage, ToolCallRecord, TurnError, TurnFrame, TurnInfo,
    TurnStatus, Usage,
};
use protocol::{ErrorCode, ErrorReply, SessionId, TenantId};
use serde_json::Value;
use worker::{SqlStorage, SqlStorageValue};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, role TEXT NOT NULL, content TEXT NOT NULL,
        tool_calls TEXT NOT NULL, tool_call_id TEXT, name TEXT, usage TEXT, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS session_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1), tenant TEXT NOT NULL, session TEXT NOT NULL)",
    // One row per turn, written with its user message; `status` is running,
    // done or failed. AUTOINCREMENT: ids are never reused, even after an erase.
    "CREATE TABLE IF NOT EXISTS turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT, user_seq INTEGER NOT NULL, status TEXT NOT NULL,
        error_code TEXT, error_message TEXT, started_at INTEGER NOT NULL, ended_at INTEGER)",
    "CREATE INDEX IF NOT EXISTS turns_by_user_seq ON turns (user_seq)",
    "CREATE INDEX IF NOT EXISTS turns_by_status ON turns (status)",
    // Every event of the recent turns, for resuming streams; the id is the
    // SSE `id:` and grows across the session (AUTOINCREMENT, never reused).
    "CREATE TABLE IF NOT EXISTS turn_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, turn_id INTEGER NOT NULL, event TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS turn_events_by_turn ON turn_events (turn_id)",
];
const COLUMNS: &str = "m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.name, m.usage, \
    m.created_at, t.id, t.status, t.error_code, t.error_message";
/// Messages read back to build the model's context (then trimmed to the budget).
pub const CONTEXT_ROWS: u32 = 200;

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

type Rows = Vec<Vec<SqlStorageValue>>;

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
}

impl SessionStore {
    /// The store over the object's SQLite storage.
    pub fn new(sql: SqlStorage) -> Self {
        Self { sql }
    }

    fn exec(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Rows, ErrorReply> {
        let cursor = self.sql.exec(query, bindings).map_err(internal)?;
        cursor
            .raw()
            .collect::<worker::Result<Vec<_>>>()
            .map_err(internal)
    }

    /// The first column of the first row, as a number.
    fn scalar(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<Option<u64>, ErrorReply> {
        let rows = self.exec(query, bindings)?;
        Ok(int(rows.first().and_then(|r| r.first())))
    }

    /// Creates the tables if they do not exist.
    pub fn create_tables(&self) -> Result<(), ErrorReply> {
        for statement in SCHEMA {
            self.exec(statement, vec![])?;
        }
        Ok(())
    }

    /// The tenant and session the object was bound to, if it was.
    pub fn binding(&self) -> Result<Option<(TenantId, SessionId)>, ErrorReply> {
        let rows = self.exec(
            "SELECT tenant, session FROM session_meta WHERE id = 1",
            vec![],
        )?;
        let row = rows.first();
        let tenant = text(row.and_then(|r| r.first())).and_then(|t| TenantId::parse(&t).ok());
        let session = text(row.and_then(|r| r.get(1))).and_then(|s| SessionId::parse(&s).ok());
        Ok(tenant.zip(session))
    }

    /// Binds the object to `tenant` and `session` for good.
    pub fn bind(&self, tenant: &TenantId, session: &SessionId) -> Result<(), ErrorReply> {
        self.exec(
            "INSERT INTO session_meta (id, tenant, session) VALUES (1, ?, ?)",
            vec![tenant.as_str().into(), session.as_str().into()],
        )
        .map(|_| ())
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
        self.scalar(
            "INSERT INTO messages (role, content, tool_calls, tool_call_id, name, usage, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            vec![
                role.into(),
                m.content.as_str().into(),
                serde_json::to_string(&calls).map_err(internal)?.into(),
                m.tool_call_id.clone().into(),
                m.name.clone().into(),
                usage.and_then(|u| serde_json::to_string(&u).ok()).into(),
                sql_int(now_ms),
            ],
        )?
        .ok_or_else(|| internal("the message was not stored"))
    }

    /// Up to `limit` messages before sequence number `before`, oldest first.
    pub fn page(&self, before: Option<u64>, limit: u32) -> Result<HistoryPage, ErrorReply> {
        let rows = self.exec(
            &format!(
                "SELECT {COLUMNS} FROM messages m LEFT JOIN turns t ON t.user_seq = m.seq \
                 WHERE m.seq < ? ORDER BY m.seq DESC LIMIT ?"
            ),
            vec![
                sql_int(before.unwrap_or(u64::MAX)),
                SqlStorageValue::Integer(i64::from(limit)),
            ],
        )?;
        let mut messages: Vec<StoredMessage> =
            rows.iter().filter_map(|r| stored_from_row(r)).collect();
        messages.reverse();
        let next_before = (messages.len() == limit as usize)
            .then(|| messages.first().map(|m| m.seq))
            .flatten();
        Ok(HistoryPage {
            messages,
            next_before,
        })
    }

    /// The newest messages, as the model reads them.
    pub fn recent(&self) -> Result<Vec<ChatMessage>, ErrorReply> {
        let page = self.page(None, CONTEXT_ROWS)?;
        Ok(page.messages.iter().map(to_port).collect())
    }

    /// How many messages are stored.
    pub fn message_count(&self) -> Result<u64, ErrorReply> {
        Ok(self
            .scalar("SELECT COUNT(*) FROM messages", vec![])?
            .unwrap_or(0))
    }

    /// When the last message was stored.
    pub fn last_activity(&self) -> Option<u64> {
        self.scalar("SELECT MAX(created_at) FROM messages", vec![])
            .ok()
            .flatten()
    }

    /// Records a running turn started by user message `user_seq`; its id.
    pub fn start_turn(&self, user_seq: u64, now_ms: u64) -> Result<u64, ErrorReply> {
        self.scalar(
            "INSERT INTO turns (user_seq, status, started_at) VALUES (?, 'running', ?) RETURNING id",
            vec![sql_int(user_seq), sql_int(now_ms)],
        )?
        .ok_or_else(|| internal("the turn was not stored"))
    }

    /// The turns recorded as running.
    pub fn running_turns(&self) -> Result<Vec<u64>, ErrorReply> {
        let rows = self.exec("SELECT id FROM turns WHERE status = 'running'", vec![])?;
        Ok(rows.iter().filter_map(|r| int(r.first())).collect())
    }

    /// Records turn `id` as answered.
    pub fn turn_done(&self, id: u64, now_ms: u64) -> Result<(), ErrorReply> {
        self.exec(
            "UPDATE turns SET status = 'done', ended_at = ? WHERE id = ?",
            vec![sql_int(now_ms), sql_int(id)],
        )
        .map(|_| ())
    }

    /// Records turn `id` as failed, if it is still running; whether it was.
    pub fn turn_failed(
        &self,
        id: u64,
        code: &str,
        message: &str,
        now_ms: u64,
    ) -> Result<bool, ErrorReply> {
        let rows = self.exec(
            "UPDATE turns SET status = 'failed', error_code = ?, error_message = ?, ended_at = ? \
             WHERE id = ? AND status = 'running' RETURNING id",
            vec![code.into(), message.into(), sql_int(now_ms), sql_int(id)],
        )?;
        Ok(!rows.is_empty())
    }

    /// The latest turn, as the history and the operator see it.
    pub fn latest_turn(&self) -> Result<Option<TurnInfo>, ErrorReply> {
        let rows = self.exec(
            "SELECT id, status, error_code, error_message FROM turns ORDER BY id DESC LIMIT 1",
            vec![],
        )?;
        Ok(rows.first().and_then(|r| turn_info(int(r.first()), r, 1)))
    }

    /// Stores an event of turn `turn`; its sequence id.
    pub fn append_event(&self, turn: u64, event: &ChatEvent) -> Result<u64, ErrorReply> {
        let json = serde_json::to_string(event).map_err(internal)?;
        self.scalar(
            "INSERT INTO turn_events (turn_id, event) VALUES (?, ?) RETURNING id",
            vec![sql_int(turn), json.into()],
        )?
        .ok_or_else(|| internal("the event was not stored"))
    }

    /// Drops the events of turns up to `through`.
    pub fn drop_events(&self, through: u64) -> Result<(), ErrorReply> {
        self.exec(
            "DELETE FROM turn_events WHERE turn_id <= ?",
            vec![sql_int(through)],
        )
        .map(|_| ())
    }

    /// The latest turn and the stored event ids.
    pub fn event_range(&self) -> Result<EventRange, ErrorReply> {
        let rows = self.exec(
            "SELECT t.id, (SELECT MIN(e.id) FROM turn_events e WHERE e.turn_id = t.id) \
             FROM turns t ORDER BY t.id DESC LIMIT 1",
            vec![],
        )?;
        let latest_turn = rows
            .first()
            .and_then(|r| Some((int(r.first())?, int(r.get(1)))));
        let ids = self.exec("SELECT MIN(id), MAX(id) FROM turn_events", vec![])?;
        let ids = ids.first();
        Ok(EventRange {
            latest_turn,
            oldest: int(ids.and_then(|r| r.first())),
            newest: int(ids.and_then(|r| r.get(1))),
        })
    }

    /// The stored events after `after`, in order.
    pub fn events_after(&self, after: u64) -> Result<Vec<TurnFrame>, ErrorReply> {
        let rows = self.exec(
            "SELECT id, event FROM turn_events WHERE id > ? ORDER BY id",
            vec![sql_int(after)],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id = int(r.first())?;
                let event = serde_json::from_str(&text(r.get(1))?).ok()?;
                Some(TurnFrame { id, event })
            })
            .collect())
    }

    /// The last event id stored.
    pub fn last_event_id(&self) -> Result<Option<u64>, ErrorReply> {
        self.scalar("SELECT MAX(id) FROM turn_events", vec![])
    }

    /// Erases the conversation (messages, turns, events); the binding stays,
    /// and ids keep growing (`AUTOINCREMENT`).
    pub fn erase(&self) -> Result<(), ErrorReply> {
        for table in ["messages", "turns", "turn_events"] {
            self.exec(&format!("DELETE FROM {table}"), vec![])?;
        }
        Ok(())
    }
}

fn text(v: Option<&SqlStorageValue>) -> Option<String> {
    match v {
        Some(SqlStorageValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: Option<&SqlStorageValue>) -> Option<u64> {
    match v {
        Some(SqlStorageValue::Integer(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn sql_int(n: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn parse_status(s: &str) -> TurnStatus {
    match s {
        "running" => TurnStatus::Running,
        "done" => TurnStatus::Done,
        _ => TurnStatus::Failed,
    }
}

fn turn_info(id: Option<u64>, row: &[SqlStorageValue], at: usize) -> Option<TurnInfo> {
    let id = id?;
    let status = parse_status(&text(row.get(at))?);
    let error = match (text(row.get(at + 1)), text(row.get(at + 2))) {
        (Some(code), Some(message)) => Some(TurnError { code, message }),
        _ => None,
    };
    Some(TurnInfo { id, status, error })
}

fn stored_from_row(row: &[SqlStorageValue]) -> Option<StoredMessage> {
    Some(StoredMessage {
        seq: int(row.first())?,
        role: text(row.get(1))?,
        content: text(row.get(2))?,
        tool_calls: serde_json::from_str(&text(row.get(3))?).unwrap_or_default(),
        tool_call_id: text(row.get(4)),
        name: text(row.get(5)),
        usage: text(row.get(6)).and_then(|u| serde_json::from_str(&u).ok()),
        created_at_ms: int(row.get(7)).unwrap_or(0),
        turn: turn_info(int(row.get(8)), row, 9),
    })
}

fn to_port(m: &StoredMessage) -> ChatMessage {
    let role = match m.role.as_str() {
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        "system" => Role::System,
        _ => Role::User,
    };
    ChatMessage {
        role,
        content: m.content.clone(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: serde_json::from_str(&c.arguments).unwrap_or(Value::Null),
            })
            .collect(),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    }
}

fn record(call: &ToolCall) -> ToolCallRecord {
    ToolCallRecord {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.to_string(),
    }
}
