//! The session's storage: its SQLite tables, and every statement the shell
//! runs against them, with the rows decoded into typed values. No decision
//! is made here: the cores decide, the shell calls these.

use super::core::{within_budget, Activity, Owner, CONTEXT_BUDGET_CHARS};
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
    // The limiter reservations a running turn holds (JSON of a
    // `TurnReservation`), written with the turn and deleted when the turn
    // has settled them: a turn its isolate lost still has its reservation
    // here for `recover` to settle.
    "CREATE TABLE IF NOT EXISTS turn_reservations (
        turn_id INTEGER PRIMARY KEY, reservation TEXT NOT NULL)",
    // Every event of the recent turns, for resuming streams; an event's id
    // is the SSE `id:` and grows across the session (never reused). A row
    // holds a run of one turn's events with consecutive ids, one JSON text
    // a line, under the run's last id (`events::event_rows`); rows stored
    // before that hold one event each, which is the same thing.
    "CREATE TABLE IF NOT EXISTS turn_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, turn_id INTEGER NOT NULL, event TEXT NOT NULL)",
    // No index on `turns.status` nor on `turn_events.turn_id`: the first is
    // read when the object wakes (a session holds at most `CHAT_MAX_MESSAGES`
    // turns), the second when a turn ends or a client resumes (the events of
    // `CHAT_RESUMABLE_TURNS` turns, a few rows each), and either index
    // cost a write with every row and one more object in every new
    // session's schema. Sessions created before keep theirs, unused.
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
    /// writes `messages` is in this file and updates or forgets it (and
    /// `context`) through `kept_messages_appended` or
    /// `kept_messages_forgotten`; the object is the table's only writer.
    activity: std::cell::Cell<Option<Activity>>,
    /// The model's context as [`Self::recent`] reads it, oldest first
    /// (`None`: read it next time); kept like `activity`.
    context: std::cell::RefCell<Option<Vec<ChatMessage>>>,
    /// The highest stored event id as last read (`Some(None)`: no event
    /// stored; `None`: read it next time). [`Self::append_events`] raises
    /// it; every other statement that writes `turn_events` forgets it.
    last_event: std::cell::Cell<Option<Option<u64>>>,
}

/// What a session's object reads when it wakes (one statement): its binding,
/// where its event ids stand and which turns storage calls running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The tenant and session the object was bound to, if it was.
    pub binding: Option<(TenantId, SessionId)>,
    /// The highest event id handed out before (stored or reserved).
    pub issued_event_id: u64,
    /// The turns recorded as running.
    pub running_turns: Vec<u64>,
}

impl SessionStore {
    /// The store over the object's SQLite storage.
    pub fn new(sql: SqlStorage) -> Self {
        Self {
            sql,
            owner: std::cell::RefCell::new(None),
            activity: std::cell::Cell::new(None),
            context: std::cell::RefCell::new(None),
            last_event: std::cell::Cell::new(None),
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

    /// Reads, in one statement, what the object needs when it wakes, and
    /// keeps what the store caches (the owner, the messages' activity, the
    /// last event id): a new session's first request would otherwise run
    /// (and prepare) one statement for each.
    pub fn wake(&self) -> Result<Wake, ErrorReply> {
        const WAKE: &str = "SELECT \
            (SELECT tenant FROM session_meta WHERE id = 1), \
            (SELECT session FROM session_meta WHERE id = 1), \
            (SELECT reserved FROM event_ids WHERE id = 1), \
            (SELECT MAX(id) FROM turn_events), \
            (SELECT key FROM session_owner WHERE id = 1), \
            (SELECT user FROM session_owner WHERE id = 1), \
            (SELECT COUNT(*) FROM messages), \
            (SELECT MIN(created_at) FROM messages), \
            (SELECT MAX(created_at) FROM messages), \
            (SELECT group_concat(id) FROM turns WHERE status = 'running')";
        let shape = |message: &str| {
            ErrorReply::from(SqlError::Shape {
                query: WAKE.into(),
                message: message.into(),
            })
        };
        let row: Option<WakeRow> = sql::first(&self.sql, WAKE, vec![])?;
        let WakeRow {
            tenant,
            session,
            reserved,
            last_event,
            key,
            user,
            activity,
            running,
        } = row.ok_or_else(|| shape("no row"))?;
        let binding = match (tenant, session) {
            (Some(tenant), Some(session)) => {
                match (TenantId::parse(&tenant), SessionId::parse(&session)) {
                    (Ok(t), Ok(s)) => Some((t, s)),
                    _ => return Err(shape("a stored tenant or session id is invalid")),
                }
            }
            _ => None,
        };
        let running_turns = running
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|id| !id.is_empty())
            .map(|id| id.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| shape("a running turn's id is not a number"))?;
        // As `owner` and `read_owner` decide.
        let owner = match key {
            Some(key) => Some(Owner { key, user }),
            None => (activity.count > 0).then(|| Owner {
                key: String::new(),
                user: None,
            }),
        };
        *self.owner.borrow_mut() = Some(owner);
        self.activity.set(Some(activity));
        self.last_event.set(Some(last_event));
        Ok(Wake {
            binding,
            issued_event_id: reserved.unwrap_or(0).max(last_event.unwrap_or(0)),
            running_turns,
        })
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
        let written: Vec<(String,)> = sql::rows(
            &self.sql,
            "INSERT INTO session_owner (id, key, user) VALUES (1, ?, ?) \
             ON CONFLICT(id) DO NOTHING RETURNING key",
            vec![owner.key.as_str().into(), owner.user.clone().into()],
        )?;
        // Written: that is the owner. Not (one was there): read it next time.
        if !written.is_empty() {
            *self.owner.borrow_mut() = Some(Some(owner.clone()));
        }
        Ok(())
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
        let calls_json = serde_json::to_string(&calls)
            .map_err(|e| ErrorReply::new(protocol::ErrorCode::Internal, e.to_string()))?;
        let seq = sql::scalar(
            &self.sql,
            "INSERT INTO messages (role, content, tool_calls, tool_call_id, name, usage, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            vec![
                role.into(),
                m.content.as_str().into(),
                calls_json.into(),
                m.tool_call_id.clone().into(),
                m.name.clone().into(),
                usage.and_then(|u| serde_json::to_string(&u).ok()).into(),
                int(now_ms),
            ],
        );
        match seq {
            Ok(seq) => {
                // As `int` stores it, and as `recent` reads it back.
                let stored_at = now_ms.min(i64::MAX as u64);
                let stored = port_message(
                    role,
                    m.content.clone(),
                    &calls,
                    m.tool_call_id.clone(),
                    m.name.clone(),
                );
                self.kept_messages_appended(stored, stored_at);
                Ok(seq)
            }
            Err(e) => {
                // Whether the row was written is not known: read again.
                self.kept_messages_forgotten();
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
                        self.kept_messages_forgotten();
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
    /// [`CONTEXT_BUDGET_CHARS`] ([`within_budget`]). Read once, then kept up
    /// to date as messages are appended.
    pub fn recent(&self) -> Result<Vec<ChatMessage>, ErrorReply> {
        if let Some(kept) = self.context.borrow().as_ref() {
            return Ok(kept.clone());
        }
        let rows = sql::rows_lazily::<ContextMessage>(
            &self.sql,
            "SELECT role, content, tool_calls, tool_call_id, name \
             FROM messages ORDER BY seq DESC LIMIT ?",
            vec![int(CONTEXT_ROWS)],
        )?;
        let recent = within_budget(rows.map(|r| r.map(|m| m.0)), CONTEXT_BUDGET_CHARS)?;
        *self.context.borrow_mut() = Some(recent.clone());
        Ok(recent)
    }

    /// Keeps what the store caches of `messages` up to date after `message`
    /// was stored at `stored_at`.
    fn kept_messages_appended(&self, message: ChatMessage, stored_at: u64) {
        let before = self.activity.get();
        self.activity.set(before.map(|a| a.appended(stored_at)));
        let mut context = self.context.borrow_mut();
        // A session known to be empty has nothing else to read back.
        if context.is_none() && before.is_some_and(|a| a.count == 0) {
            *context = Some(Vec::new());
        }
        if let Some(kept) = context.as_mut() {
            kept.push(message);
            *kept = recent_after_append(std::mem::take(kept), CONTEXT_BUDGET_CHARS);
        }
    }

    /// Takes back what a turn stored from message `from_seq` on when a later
    /// write of the same step failed: those messages, and the turn rows they
    /// began (a reservation is a step's last write, so none is left to
    /// remove). Best effort: a store that refused the write may refuse this
    /// too, and the turn's recovery then finds it.
    pub fn take_back(&self, from_seq: u64) {
        for statement in [
            "DELETE FROM turns WHERE user_seq >= ?",
            "DELETE FROM messages WHERE seq >= ?",
        ] {
            let _ = self.exec(statement, vec![int(from_seq)]);
        }
        self.kept_messages_forgotten();
    }

    /// Forgets what the store caches of `messages`: read again next time.
    fn kept_messages_forgotten(&self) {
        self.activity.set(None);
        *self.context.borrow_mut() = None;
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

    /// Stores events `(id, turn, event JSON)` with the ids they were sent
    /// under: a run of one turn's events in one row
    /// ([`super::events::event_rows`]), by one statement whatever the run's
    /// length (a new session's object prepares it once).
    pub fn append_events(&self, events: &[(u64, u64, String)]) -> Result<(), ErrorReply> {
        for (last, turn, text) in super::events::event_rows(events) {
            if let Err(e) = self.exec(
                "INSERT OR REPLACE INTO turn_events (id, turn_id, event) VALUES (?, ?, ?)",
                vec![int(last), int(turn), text.into()],
            ) {
                // Whether the row was written is not known: read again.
                self.last_event.set(None);
                return Err(e);
            }
            self.last_event
                .set(self.last_event.get().map(|known| known.max(Some(last))));
        }
        Ok(())
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
        self.last_event.set(None);
        self.exec(
            "DELETE FROM turn_events WHERE turn_id <= ?",
            vec![int(through)],
        )
    }

    /// The latest turn and the stored event ids.
    pub fn event_range(&self) -> Result<EventRange, ErrorReply> {
        let latest_turn: Option<(u64, Option<u64>)> = sql::first(
            &self.sql,
            "SELECT t.id, (SELECT MIN(e.id - (length(e.event) - length(replace(e.event, char(10), '')))) \
             FROM turn_events e WHERE e.turn_id = t.id) \
             FROM turns t ORDER BY t.id DESC LIMIT 1",
            vec![],
        )?;
        let (oldest, newest): (Option<u64>, Option<u64>) = sql::first(
            &self.sql,
            "SELECT MIN(id - (length(event) - length(replace(event, char(10), '')))), MAX(id) \
             FROM turn_events",
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
        // A row's id is its last event's: the rows after `after` hold every
        // event after it (and the first of them, some before it).
        let rows: Vec<(u64, String)> = sql::rows(
            &self.sql,
            "SELECT id, event FROM turn_events WHERE id > ? ORDER BY id",
            vec![int(after)],
        )?;
        let mut frames = Vec::new();
        for (last, text) in &rows {
            for (id, json) in super::events::row_events(*last, text) {
                if id <= after {
                    continue;
                }
                let event = serde_json::from_str(json).map_err(|e| {
                    ErrorReply::from(SqlError::Shape {
                        query: "SELECT id, event FROM turn_events".into(),
                        message: format!("a stored event does not decode: {e}"),
                    })
                })?;
                frames.push(TurnFrame { id, event });
            }
        }
        Ok(frames)
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
        if let Some(known) = self.last_event.get() {
            return Ok(known);
        }
        let last = sql::scalar(&self.sql, "SELECT MAX(id) FROM turn_events", vec![])?;
        self.last_event.set(Some(last));
        Ok(last)
    }

    /// Erases the conversation (messages, turns, events); the binding stays,
    /// and ids keep growing (`AUTOINCREMENT`).
    pub fn erase(&self) -> Result<(), ErrorReply> {
        // A session from before owners were stored is owned by its having
        // messages (`read_owner`): read it again after they go.
        *self.owner.borrow_mut() = None;
        self.kept_messages_forgotten();
        self.last_event.set(None);
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

/// The row of [`SessionStore::wake`]'s query.
struct WakeRow {
    tenant: Option<String>,
    session: Option<String>,
    reserved: Option<u64>,
    last_event: Option<u64>,
    key: Option<String>,
    user: Option<String>,
    activity: Activity,
    running: Option<String>,
}

impl FromRow for WakeRow {
    fn from_row(row: &[SqlStorageValue]) -> Result<Self, String> {
        if row.len() != 10 {
            return Err(format!("{} columns, not 10", row.len()));
        }
        Ok(Self {
            tenant: column(row, 0)?,
            session: column(row, 1)?,
            reserved: column(row, 2)?,
            last_event: column(row, 3)?,
            key: column(row, 4)?,
            user: column(row, 5)?,
            activity: Activity {
                count: column(row, 6)?,
                first_ms: column(row, 7)?,
                last_ms: column(row, 8)?,
            },
            running: column(row, 9)?,
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

/// What [`SessionStore::recent`] reads after a message was appended, from
/// what it read before plus that message (oldest first): the same rule,
/// [`CONTEXT_ROWS`] rows then the budget, over a list that holds every row
/// the rule can still reach (one more message only ever leaves room for
/// fewer older ones).
fn recent_after_append(kept: Vec<ChatMessage>, budget: usize) -> Vec<ChatMessage> {
    let start = kept.len().saturating_sub(CONTEXT_ROWS as usize);
    let newest_first = kept
        .into_iter()
        .skip(start)
        .rev()
        .map(Ok::<_, std::convert::Infallible>);
    match within_budget(newest_first, budget) {
        Ok(recent) => recent,
        Err(never) => match never {},
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
    /// The lines of `store.rs` (before its tests) that write `table`, each
    /// checked to have `kept` (the cache's update) within a few lines.
    fn writes_update(table: &str, kept: &str) -> usize {
        let source = include_str!("store.rs");
        let (code, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
        let lines: Vec<&str> = code.lines().collect();
        let patterns = [
            format!("INTO {table} "),
            format!("DELETE FROM {table}"),
            format!("UPDATE {table} "),
            format!("\"{table}\""),
        ];
        let writes: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| patterns.iter().any(|w| l.contains(w.as_str())))
            .map(|(i, _)| i)
            .collect();
        for &i in &writes {
            let around = &lines[i.saturating_sub(3)..(i + 25).min(lines.len())];
            assert!(
                around.iter().any(|l| l.contains(kept)),
                "line {} writes {table} without {kept}: {}",
                i + 1,
                lines[i]
            );
        }
        writes.len()
    }

    /// A tripwire for [`super::SessionStore`]'s kept activity and context:
    /// every statement of this file that writes `messages` must be followed,
    /// within a few lines, by an update of them (`self.kept_messages_*`), or
    /// the kept count, times and context could go stale.
    #[test]
    fn every_write_of_messages_updates_the_kept_activity() {
        // append's INSERT, append_all's rollback, take_back's DELETE,
        // erase's table list.
        assert_eq!(writes_update("messages", "self.kept_messages_"), 4);
    }

    /// The kept context, updated message by message, is what reading the
    /// table again would give: for budgets that cut by size and by the row
    /// limit, messages of every size, and every length of history.
    #[test]
    fn the_kept_context_is_what_a_new_read_gives() {
        use super::{recent_after_append, within_budget, ChatMessage, Role, CONTEXT_ROWS};
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let read_again = |table: &[ChatMessage], budget: usize| {
            let newest_first = table
                .iter()
                .rev()
                .take(CONTEXT_ROWS as usize)
                .cloned()
                .map(Ok::<_, ()>);
            within_budget(newest_first, budget).unwrap()
        };
        for budget in [0, 50, 2_000, 24_000, usize::MAX] {
            let mut table: Vec<ChatMessage> = Vec::new();
            let mut kept = Vec::new();
            for i in 0..450 {
                let len = match next(4) {
                    0 => 0,
                    1 => next(40),
                    2 => next(400),
                    _ => next(6_000),
                } as usize;
                let m = ChatMessage {
                    role: if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    content: "x".repeat(len),
                    tool_calls: vec![],
                    tool_call_id: None,
                    name: None,
                };
                table.push(m.clone());
                kept.push(m);
                kept = recent_after_append(kept, budget);
                assert_eq!(
                    kept,
                    read_again(&table, budget),
                    "budget {budget}, message {i}"
                );
            }
            if budget == usize::MAX {
                assert_eq!(kept.len(), CONTEXT_ROWS as usize);
            }
        }
    }

    /// The same for the kept owner: `set_owner`'s INSERT.
    #[test]
    fn every_write_of_the_owner_updates_the_kept_owner() {
        assert_eq!(writes_update("session_owner", "self.owner.borrow_mut()"), 1);
    }

    /// The same for the kept last event id: `append_events`' INSERT,
    /// `drop_events`' DELETE, erase's table list.
    #[test]
    fn every_write_of_events_updates_the_kept_last_event_id() {
        assert_eq!(writes_update("turn_events", "self.last_event.set("), 3);
    }
}
