//! The `TenantCoordinator` Durable Object: the shell around [`CoordinatorCore`].
//!
//! Configuration decisions reach KV through [`TenantCoordinator::drive`], one
//! write per key at a time (see the core's module docs for why); a request
//! that sets a value waits until KV holds its decision or a later one, so an
//! operator who reads after the answer sees it.
//!
//! API keys live in the `api_keys` table, one row per key: the record's
//! fields and the SHA-256 of the current secret (and of the previous one
//! during a rotation's grace), never a secret. Their random bytes come from
//! the platform's CSPRNG ([`crate::entropy`]), with no fallback.

use super::core::{ConfigProgress, ConfigWrite, CoordinatorCore, CoordinatorState, Effects};
use super::keys::{KeyEntropy, StoredKey};
use crate::ports::Kv;
use crate::rpc;
use crate::sql::{self, FromRow, FromValue};
use futures::channel::oneshot;
use protocol::coordinator::{
    ConfigEntry, CoordinatorRequest, CoordinatorResponse, SetConfig, CONFIG_PREFIX,
};
use protocol::keys::{KeyLimits, KeyRecord, Scope};
use protocol::limits::Budget;
use protocol::listing::{ListingError, MAX_PAGE_LIMIT};
use protocol::{ErrorCode, ErrorReply, TenantId};
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use worker::{
    durable_object, Date, Env, Request, Response, Result, ScheduledTime, SqlStorage,
    SqlStorageValue, State,
};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS coordinator_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL
    )",
    // The latest configuration decision per key that KV may not hold yet; a
    // row goes once KV has it. `value` NULL means: remove the key.
    "CREATE TABLE IF NOT EXISTS config_unsynced (
        key TEXT PRIMARY KEY,
        value TEXT,
        version INTEGER NOT NULL
    )",
    // One row per API key. `scopes`, `models` and `limits` are JSON (`limits`
    // holds the key's rate limits and, under "budget", its budget: see
    // `limits_cell`); the hashes are SHA-256 in lowercase hex; no column ever
    // holds a secret.
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        models TEXT NOT NULL,
        limits TEXT NOT NULL,
        expires_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        revoked_at_ms INTEGER,
        rotated_at_ms INTEGER,
        previous_valid_until_ms INTEGER,
        secret_sha256 TEXT NOT NULL,
        previous_sha256 TEXT
    )",
];

/// The columns of `api_keys`, in the order [`KeyRow`] reads them.
const KEY_COLUMNS: &str = "id, name, scopes, models, limits, expires_at_ms, created_at_ms, \
     last_used_at_ms, revoked_at_ms, rotated_at_ms, previous_valid_until_ms, \
     secret_sha256, previous_sha256";

/// A request waiting until KV holds its configuration decision.
struct Waiter {
    key: String,
    version: u64,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

/// The tenant's coordinator object (SQLite-backed).
#[durable_object]
pub struct TenantCoordinator {
    state: State,
    env: Env,
    /// Loaded on the first message; dropped when a write fails so that the
    /// next message starts again from what storage really holds.
    core: RefCell<Option<CoordinatorCore>>,
    /// Requests answered once their configuration decision is in KV.
    waiters: RefCell<Vec<Waiter>>,
    /// The alarm time last set, so that it is not set again for nothing.
    alarm_at: Cell<Option<u64>>,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

impl TenantCoordinator {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn load(&self) -> std::result::Result<CoordinatorCore, String> {
        let sql = self.sql();
        for statement in SCHEMA.iter().chain(super::sessions::SCHEMA) {
            sql.exec(statement, None).map_err(|e| e.to_string())?;
        }
        let rows: Vec<StateRow> = sql
            .exec("SELECT state FROM coordinator_state WHERE id = 1", None)
            .and_then(|c| c.to_array())
            .map_err(|e| e.to_string())?;
        let saved = match rows.first() {
            None => None,
            Some(row) => Some(
                serde_json::from_str::<CoordinatorState>(&row.state)
                    .map_err(|e| format!("stored state is unreadable: {e}"))?,
            ),
        };
        let unsynced = sql
            .exec("SELECT key, value, version FROM config_unsynced", None)
            .map_err(|e| e.to_string())?
            .raw()
            .map(|row| row.map_err(|e| e.to_string()).and_then(unsynced_row))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let keys =
            sql::rows::<KeyRow>(&sql, &format!("SELECT {KEY_COLUMNS} FROM api_keys"), vec![])
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|KeyRow(key)| key)
                .collect();
        Ok(CoordinatorCore::new(saved, unsynced).with_keys(keys))
    }

    /// Performs the storage part of `effects`, synchronously, so that the
    /// record and a configuration decision are stored together.
    fn save(&self, effects: &Effects) -> std::result::Result<(), String> {
        if let Some(state) = &effects.persist {
            let json = serde_json::to_string(state).map_err(|e| e.to_string())?;
            self.sql()
                .exec(
                    "INSERT INTO coordinator_state (id, state) VALUES (1, ?) \
                     ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                    vec![json.into()],
                )
                .map_err(|e| e.to_string())?;
        }
        if let Some(decided) = &effects.config_decided {
            let value = decided
                .value
                .clone()
                .map_or(SqlStorageValue::Null, SqlStorageValue::String);
            self.sql()
                .exec(
                    "INSERT INTO config_unsynced (key, value, version) VALUES (?, ?, ?) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version",
                    vec![
                        decided.key.clone().into(),
                        value,
                        SqlStorageValue::Integer(sql_int(decided.version)),
                    ],
                )
                .map_err(|e| e.to_string())?;
        }
        if let Some(key) = &effects.key_write {
            save_key(&self.sql(), key)?;
        }
        Ok(())
    }

    /// Loads the core if needed, handles the message and stores what it
    /// decided, all synchronously (SQL storage is), so no borrow outlives it.
    fn handle_sync(
        &self,
        envelope: protocol::Envelope<CoordinatorRequest>,
        now_ms: u64,
        entropy: Option<KeyEntropy>,
    ) -> std::result::Result<
        (
            std::result::Result<CoordinatorResponse, ErrorReply>,
            Effects,
        ),
        ErrorReply,
    > {
        let mut slot = self.core.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                self.load()
                    .map_err(|e| ErrorReply::new(ErrorCode::Internal, e))?,
            );
        }
        let core = slot
            .as_mut()
            .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "coordinator not loaded"))?;
        let (mut reply, mut effects) = core.handle(envelope, now_ms, entropy);
        if let Err(e) = self.save(&effects) {
            // The core moved on from what storage holds: start again from
            // storage, and write nothing to KV that storage does not know.
            *slot = None;
            effects = Effects::default();
            reply = Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("could not save the coordinator's state: {e}"),
            ));
        }
        Ok((reply, effects))
    }

    /// The messages answered from storage or KV rather than the core: the
    /// session registry's ([`super::sessions`]) and a configuration read.
    async fn answer_from_storage(
        &self,
        envelope: protocol::Envelope<CoordinatorRequest>,
    ) -> std::result::Result<CoordinatorResponse, ErrorReply> {
        let tenant = envelope.tenant_id;
        let pending = {
            let mut slot = self.core.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    self.load()
                        .map_err(|e| ErrorReply::new(ErrorCode::Internal, e))?,
                );
            }
            let core = slot
                .as_ref()
                .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "coordinator not loaded"))?;
            if !core.owns(&tenant) {
                return Err(ErrorReply::new(
                    ErrorCode::WrongTenant,
                    "this coordinator belongs to another tenant",
                ));
            }
            match &envelope.message {
                CoordinatorRequest::GetConfig(get) => {
                    core.pending_config(&format!("{CONFIG_PREFIX}{}", get.name))
                }
                _ => None,
            }
        };
        let sql = self.sql();
        let storage = |e: crate::sql::SqlError| ErrorReply::new(ErrorCode::Internal, e.to_string());
        match envelope.message {
            CoordinatorRequest::RecordSession(report) => {
                super::sessions::record(&sql, &report, now_ms())
                    .map(CoordinatorResponse::SessionRecorded)
                    .map_err(storage)
            }
            CoordinatorRequest::RecordSessions(reports) => {
                if reports.len() > protocol::listing::MAX_SESSION_BATCH {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "at most {} session reports at once",
                            protocol::listing::MAX_SESSION_BATCH
                        ),
                    ));
                }
                // One event, so the batch commits together.
                let now = now_ms();
                let mut applied = 0;
                for report in &reports {
                    if super::sessions::record(&sql, report, now).map_err(storage)? {
                        applied += 1;
                    }
                }
                Ok(CoordinatorResponse::SessionsRecorded(applied))
            }
            CoordinatorRequest::ListSessions(list) => {
                if !(1..=MAX_PAGE_LIMIT).contains(&list.limit) {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        ListingError::Limit.to_string(),
                    ));
                }
                super::sessions::list(&sql, list.limit, list.after.as_ref())
                    .map(CoordinatorResponse::Sessions)
                    .map_err(storage)
            }
            CoordinatorRequest::GetConfig(get) => {
                let check = SetConfig {
                    name: get.name,
                    value: None,
                };
                check
                    .validate()
                    .map_err(|e| ErrorReply::new(ErrorCode::InvalidRequest, e.to_string()))?;
                let key = check.key();
                // A decision KV may not hold yet is the truth; else KV is.
                let value = match pending {
                    Some(value) => value,
                    None => {
                        let kv = crate::ingest::providers::cache(&self.env).ok_or_else(|| {
                            ErrorReply::new(
                                ErrorCode::Internal,
                                "this deployment has no KV namespace",
                            )
                        })?;
                        kv.get(&tenant.kv_key(&key))
                            .await
                            .map_err(|e| ErrorReply::new(ErrorCode::Unavailable, e.to_string()))?
                    }
                };
                Ok(CoordinatorResponse::Config(ConfigEntry { key, value }))
            }
            _ => Err(ErrorReply::new(
                ErrorCode::Internal,
                "not a message answered from storage",
            )),
        }
    }

    /// Writes or removes `${tenantId}:config:<name>` in the `CACHE` namespace.
    async fn write_config(
        &self,
        tenant: &TenantId,
        write: &ConfigWrite,
    ) -> std::result::Result<(), String> {
        let kv = crate::ingest::providers::cache(&self.env)
            .ok_or("this deployment has no KV namespace")?;
        let key = tenant.kv_key(&write.key);
        match &write.value {
            Some(value) => kv.set(&key, value).await,
            None => kv.delete(&key).await,
        }
        .map_err(|e| e.to_string())
    }

    /// Carries `first` to KV, then every later decision for its key that the
    /// core hands back while a write was in flight, answering waiting requests
    /// as their versions land.
    async fn drive(&self, tenant: &TenantId, first: ConfigWrite) {
        let mut next = Some(first);
        while let Some(write) = next.take() {
            let mut guard = InFlight {
                object: self,
                write: Some(write.clone()),
            };
            let outcome = self.write_config(tenant, &write).await;
            // Reported below, not by the guard.
            guard.write = None;
            next = self.finish_write(&write, outcome);
        }
    }

    /// Reports a finished write to the core and acts on its answer; returns
    /// the next write of the key, if any.
    fn finish_write(
        &self,
        write: &ConfigWrite,
        outcome: std::result::Result<(), String>,
    ) -> Option<ConfigWrite> {
        let progress = match self.core.borrow_mut().as_mut() {
            Some(core) => core.config_written(write, outcome.is_ok(), now_ms()),
            // Reloading after a failure dropped the core: the write still
            // landed (or not); the reloaded core's alarm owns the key now.
            None => ConfigProgress {
                landed: outcome.is_ok().then_some(write.version),
                ..ConfigProgress::default()
            },
        };
        if let Some(version) = progress.synced {
            let deleted = self.sql().exec(
                "DELETE FROM config_unsynced WHERE key = ? AND version <= ?",
                vec![
                    write.key.clone().into(),
                    SqlStorageValue::Integer(sql_int(version)),
                ],
            );
            if let Err(e) = deleted {
                // The row stays and a later load writes the same value again:
                // harmless, so it is only logged.
                worker::console_error!("coordinator: could not clear {}: {e}", write.key);
            }
        }
        match (progress.landed, outcome) {
            (Some(landed), _) => self.wake(&write.key, |v| v <= landed, &Ok(())),
            (None, Err(e)) => self.wake(&write.key, |_| true, &Err(e)),
            (None, Ok(())) => {}
        }
        progress.next
    }

    /// Answers the waiters of `key` whose version `pick` selects.
    fn wake(
        &self,
        key: &str,
        pick: impl Fn(u64) -> bool,
        outcome: &std::result::Result<(), String>,
    ) {
        let woken: Vec<Waiter> = {
            let mut waiters = self.waiters.borrow_mut();
            let (woken, rest) = std::mem::take(&mut *waiters)
                .into_iter()
                .partition(|w| w.key == key && pick(w.version));
            *waiters = rest;
            woken
        };
        for waiter in woken {
            // A receiver that is gone (its request ended) needs no answer.
            let _ = waiter.done.send(outcome.clone());
        }
    }

    /// Sets the alarm to the core's next deadline, if it has one.
    async fn rearm(&self) {
        let deadline = self.core.borrow().as_ref().and_then(|c| c.poll_timeout());
        let Some(at) = deadline else { return };
        if self.alarm_at.get() == Some(at) {
            return;
        }
        let when = at.max(now_ms());
        let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(when as f64));
        match self
            .state
            .storage()
            .set_alarm(ScheduledTime::new(date))
            .await
        {
            Ok(()) => self.alarm_at.set(Some(at)),
            Err(e) => worker::console_error!("coordinator: could not set the alarm: {e}"),
        }
    }
}

/// A KV write in flight. If the future carrying it is dropped before the
/// write is reported (the request was cancelled), the drop reports it as
/// failed, so that the key is not left marked as in flight forever and its
/// waiters are answered; the alarm writes it again.
struct InFlight<'a> {
    object: &'a TenantCoordinator,
    write: Option<ConfigWrite>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(write) = self.write.take() {
            self.object
                .finish_write(&write, Err("the write was interrupted".to_owned()));
        }
    }
}

/// A `config_unsynced` row (`key`, `value`, `version`).
fn unsynced_row(row: Vec<SqlStorageValue>) -> std::result::Result<ConfigWrite, String> {
    let bad = || "a config_unsynced row is unreadable".to_owned();
    let mut cells = row.into_iter();
    let (Some(key), Some(value), Some(version)) = (cells.next(), cells.next(), cells.next()) else {
        return Err(bad());
    };
    let SqlStorageValue::String(key) = key else {
        return Err(bad());
    };
    let value = match value {
        SqlStorageValue::Null => None,
        SqlStorageValue::String(v) => Some(v),
        _ => return Err(bad()),
    };
    let version = match version {
        SqlStorageValue::Integer(n) => u64::try_from(n).map_err(|_| bad())?,
        // JavaScript numbers may come back as floats; versions are small
        // integers, exact in an f64.
        SqlStorageValue::Float(f) if f >= 0.0 && f.fract() == 0.0 => f as u64,
        _ => return Err(bad()),
    };
    Ok(ConfigWrite {
        key,
        value,
        version,
    })
}

/// The random bytes of a new key or secret, from the platform's CSPRNG, or
/// `None` if it has none (the core then refuses: a secret never comes from
/// the weaker fallback of [`crate::entropy::random_bytes`]).
fn key_entropy() -> Option<KeyEntropy> {
    let first = crate::entropy::try_random_bytes().ok()?;
    let second = crate::entropy::try_random_bytes().ok()?;
    let third = crate::entropy::try_random_bytes().ok()?;
    let mut entropy = KeyEntropy {
        id: [0; 6],
        secret: [0; 32],
    };
    for (dst, src) in entropy.secret.iter_mut().zip(first.iter().chain(&second)) {
        *dst = *src;
    }
    for (dst, src) in entropy.id.iter_mut().zip(&third) {
        *dst = *src;
    }
    Some(entropy)
}

/// Inserts or replaces a key's row.
fn save_key(sql_storage: &SqlStorage, key: &StoredKey) -> std::result::Result<(), String> {
    let r = &key.record;
    let json = |v: std::result::Result<String, serde_json::Error>| v.map_err(|e| e.to_string());
    let opt = |v: Option<u64>| v.map_or(SqlStorageValue::Null, sql::int);
    let text = |v: Option<&String>| {
        v.map_or(SqlStorageValue::Null, |s| {
            SqlStorageValue::String(s.clone())
        })
    };
    sql::exec(
        sql_storage,
        &format!(
            "INSERT OR REPLACE INTO api_keys ({KEY_COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        vec![
            r.id.clone().into(),
            r.name.clone().into(),
            json(serde_json::to_string(&r.scopes))?.into(),
            json(serde_json::to_string(&r.models))?.into(),
            limits_cell(&r.limits, &r.budget)?.into(),
            opt(r.expires_at_ms),
            sql::int(r.created_at_ms),
            opt(r.last_used_at_ms),
            opt(r.revoked_at_ms),
            opt(r.rotated_at_ms),
            opt(r.previous_valid_until_ms),
            key.secret_sha256.clone().into(),
            text(key.previous_sha256.as_ref()),
        ],
    )
    .map_err(|e| e.to_string())
}

/// The `limits` cell of a key: its rate limits, with its budget under
/// `"budget"` (one JSON object, so rows stored before budgets existed read
/// as having none, with no change to the table).
fn limits_cell(limits: &KeyLimits, budget: &Budget) -> std::result::Result<String, String> {
    let mut cell = serde_json::to_value(limits).map_err(|e| e.to_string())?;
    let budget = serde_json::to_value(budget).map_err(|e| e.to_string())?;
    match cell.as_object_mut() {
        Some(object) => {
            object.insert("budget".to_owned(), budget);
            Ok(cell.to_string())
        }
        None => Err("a key's limits are not a JSON object".to_owned()),
    }
}

/// Reads a `limits` cell back (see [`limits_cell`]).
fn limits_from_cell(cell: &str) -> std::result::Result<(KeyLimits, Budget), String> {
    let value: serde_json::Value = serde_json::from_str(cell).map_err(|e| e.to_string())?;
    let budget = match value.get("budget") {
        Some(b) => serde_json::from_value(b.clone()).map_err(|e| e.to_string())?,
        None => Budget::default(),
    };
    let limits = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok((limits, budget))
}

/// An `api_keys` row, in [`KEY_COLUMNS`] order.
struct KeyRow(StoredKey);

impl FromRow for KeyRow {
    fn from_row(row: &[SqlStorageValue]) -> std::result::Result<Self, String> {
        let mut cells = row.iter();
        let mut next = || cells.next().ok_or_else(|| "missing column".to_owned());
        fn json<T: serde::de::DeserializeOwned>(
            v: &SqlStorageValue,
        ) -> std::result::Result<T, String> {
            serde_json::from_str(&String::from_value(v)?).map_err(|e| e.to_string())
        }
        let id = String::from_value(next()?)?;
        let name = String::from_value(next()?)?;
        let scopes: Vec<Scope> = json(next()?)?;
        let models: Vec<String> = json(next()?)?;
        let (limits, budget) = limits_from_cell(&String::from_value(next()?)?)?;
        let expires_at_ms = Option::<u64>::from_value(next()?)?;
        let created_at_ms = u64::from_value(next()?)?;
        let last_used_at_ms = Option::<u64>::from_value(next()?)?;
        let revoked_at_ms = Option::<u64>::from_value(next()?)?;
        let rotated_at_ms = Option::<u64>::from_value(next()?)?;
        let previous_valid_until_ms = Option::<u64>::from_value(next()?)?;
        let secret_sha256 = String::from_value(next()?)?;
        let previous_sha256 = Option::<String>::from_value(next()?)?;
        if cells.next().is_some() {
            return Err(format!("expected 13 columns, got {}", row.len()));
        }
        Ok(KeyRow(StoredKey {
            record: KeyRecord {
                budget,
                id,
                name,
                scopes,
                models,
                expires_at_ms,
                created_at_ms,
                last_used_at_ms,
                revoked_at_ms,
                rotated_at_ms,
                previous_valid_until_ms,
                limits,
            },
            secret_sha256,
            previous_sha256,
        }))
    }
}

/// A version as an SQLite integer (versions count decisions: far below 2^63).
fn sql_int(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

impl worker::DurableObject for TenantCoordinator {
    rpc::no_websockets!("TenantCoordinator");

    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            core: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let envelope = match rpc::read_request::<CoordinatorRequest, CoordinatorResponse>(req).await
        {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let request_id = envelope.request_id.clone();
        if matches!(
            envelope.message,
            CoordinatorRequest::RecordSession(_)
                | CoordinatorRequest::RecordSessions(_)
                | CoordinatorRequest::ListSessions(_)
                | CoordinatorRequest::GetConfig(_)
        ) {
            let reply = self.answer_from_storage(envelope).await;
            return Ok(rpc::reply_response(Some(request_id), reply));
        }
        if matches!(envelope.message, CoordinatorRequest::SetConfig(_))
            && crate::ingest::providers::cache(&self.env).is_none()
        {
            // Refuse before deciding: a decision that can never reach KV would
            // be retried by the alarm forever.
            let reply = Err(ErrorReply::new(
                ErrorCode::Internal,
                "this deployment has no KV namespace (CACHE) for configuration values",
            ));
            return Ok(rpc::reply_response::<CoordinatorResponse>(
                Some(request_id),
                reply,
            ));
        }

        let tenant = envelope.tenant_id.clone();
        // Only a new secret needs random bytes; other messages never fail
        // for want of them.
        let entropy = match &envelope.message {
            CoordinatorRequest::CreateKey(_) | CoordinatorRequest::RotateKey(_) => key_entropy(),
            _ => None,
        };
        let settings_update = matches!(envelope.message, CoordinatorRequest::UpdateSettings(_));
        let (mut reply, effects) = match self.handle_sync(envelope, now_ms(), entropy) {
            Ok(done) => done,
            Err(reply) => (Err(reply), Effects::default()),
        };
        if settings_update && reply.is_ok() {
            // This isolate's actors apply them from their next read on.
            super::settings::forget(&tenant);
        }
        // The effects that need I/O run after the core's borrow ended.
        if let (Ok(_), Some(decided)) = (&reply, effects.config_decided) {
            let (done, answered) = oneshot::channel();
            self.waiters.borrow_mut().push(Waiter {
                key: decided.key.clone(),
                version: decided.version,
                done,
            });
            // The alarm is the safety net should this instance go away before
            // the write completes: set it before the write starts.
            self.rearm().await;
            if let Some(write) = effects.config_write {
                self.drive(&tenant, write).await;
            }
            // Without a write of its own, the request waits for the write in
            // flight for its key, which carries this decision after it.
            let outcome = answered
                .await
                .unwrap_or_else(|_| Err("the coordinator dropped the request".to_owned()));
            if let Err(e) = outcome {
                reply = Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{} is recorded but KV could not be written yet ({e}); it is retried in the background",
                        decided.key
                    ),
                ));
            }
            self.rearm().await;
        }
        Ok(rpc::reply_response(Some(request_id), reply))
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let (tenant, writes) = {
            let mut slot = self.core.borrow_mut();
            if slot.is_none() {
                *slot = Some(self.load().map_err(worker::Error::RustError)?);
            }
            match slot.as_mut() {
                Some(core) => match core.tenant().cloned() {
                    Some(tenant) => (Some(tenant), core.handle_timeout(now_ms())),
                    None => (None, Vec::new()),
                },
                None => (None, Vec::new()),
            }
        };
        if let Some(tenant) = tenant {
            // Keys are independent: write them at once.
            futures::future::join_all(writes.into_iter().map(|w| self.drive(&tenant, w))).await;
        }
        self.rearm().await;
        Response::ok("done")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_limits_and_budget_survive_their_row() {
        let limits = KeyLimits {
            rpm: Some(10),
            tpm: None,
            concurrency: Some(2),
        };
        let budget = Budget {
            tokens_per_day: Some(2_500),
            cost_per_month_micros: Some(1_000_000),
            ..Budget::default()
        };
        let cell = limits_cell(&limits, &budget).unwrap();
        assert_eq!(limits_from_cell(&cell).unwrap(), (limits.clone(), budget));
        // A row written before budgets existed: the limits, no budget.
        let old = serde_json::to_string(&limits).unwrap();
        assert_eq!(limits_from_cell(&old).unwrap(), (limits, Budget::default()));
        assert!(limits_from_cell("\"nope\"").is_err());
        assert!(limits_from_cell("{").is_err());
    }
}
