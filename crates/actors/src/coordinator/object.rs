//! The `TenantCoordinator` Durable Object: the shell around [`CoordinatorCore`].

use super::core::{CoordinatorCore, CoordinatorState, Effects};
use crate::ports::Kv;
use crate::rpc;
use protocol::coordinator::{ConfigEntry, CoordinatorRequest, CoordinatorResponse};
use protocol::{ErrorCode, ErrorReply, TenantId};
use serde::Deserialize;
use std::cell::RefCell;
use worker::{durable_object, Date, Env, Request, Response, Result, SqlStorage, State};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS coordinator_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL
)";

/// The tenant's coordinator object (SQLite-backed).
#[durable_object]
pub struct TenantCoordinator {
    state: State,
    env: Env,
    /// Loaded on the first message; dropped when a write fails so that the
    /// next message starts again from what storage really holds.
    core: RefCell<Option<CoordinatorCore>>,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

impl TenantCoordinator {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn load(&self) -> std::result::Result<CoordinatorCore, String> {
        let sql = self.sql();
        sql.exec(SCHEMA, None).map_err(|e| e.to_string())?;
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
        Ok(CoordinatorCore::new(saved))
    }

    fn save(&self, state: &CoordinatorState) -> std::result::Result<(), String> {
        let json = serde_json::to_string(state).map_err(|e| e.to_string())?;
        self.sql()
            .exec(
                "INSERT INTO coordinator_state (id, state) VALUES (1, ?) \
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                vec![json.into()],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl TenantCoordinator {
    /// Loads the core if needed, handles the message and persists the record,
    /// all synchronously (SQL storage is), so no borrow outlives it.
    fn handle_sync(
        &self,
        envelope: protocol::Envelope<CoordinatorRequest>,
        now_ms: u64,
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
        let (mut reply, mut effects) = core.handle(envelope, now_ms);
        if let Some(state) = effects.persist.take() {
            if let Err(e) = self.save(&state) {
                *slot = None;
                reply = Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("could not save the tenant record: {e}"),
                ));
            }
        }
        Ok((reply, effects))
    }

    /// Writes or removes `${tenantId}:config:<name>` in the `CACHE` namespace.
    async fn write_config(
        &self,
        tenant: &TenantId,
        entry: &ConfigEntry,
    ) -> std::result::Result<(), String> {
        let kv = crate::ingest::providers::cache(&self.env)
            .ok_or("this deployment has no KV namespace")?;
        let key = tenant.kv_key(&entry.key);
        match &entry.value {
            Some(value) => kv.set(&key, value).await,
            None => kv.delete(&key).await,
        }
        .map_err(|e| e.to_string())
    }
}

impl worker::DurableObject for TenantCoordinator {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            core: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let envelope = match rpc::read_request::<CoordinatorRequest, CoordinatorResponse>(req).await
        {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let request_id = envelope.request_id.clone();
        let now_ms = Date::now().as_millis();

        let tenant = envelope.tenant_id.clone();
        let (mut reply, effects) = match self.handle_sync(envelope, now_ms) {
            Ok(done) => done,
            Err(reply) => (Err(reply), Effects::default()),
        };
        // The one effect that needs I/O runs after the core's borrow ended.
        if let (Ok(_), Some(entry)) = (&reply, effects.config_write) {
            if let Err(e) = self.write_config(&tenant, &entry).await {
                reply = Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("could not write {}: {e}", entry.key),
                ));
            }
        }
        Ok(rpc::reply_response(Some(request_id), reply))
    }
}
