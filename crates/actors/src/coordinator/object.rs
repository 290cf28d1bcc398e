//! The `TenantCoordinator` Durable Object: the shell around [`CoordinatorCore`].

use super::core::{CoordinatorCore, CoordinatorState};
use crate::rpc;
use protocol::coordinator::{CoordinatorRequest, CoordinatorResponse};
use protocol::{ErrorCode, ErrorReply};
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

impl worker::DurableObject for TenantCoordinator {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
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

        // Everything below is synchronous (SQL storage is), so no borrow is
        // held across an await.
        let mut slot = self.core.borrow_mut();
        if slot.is_none() {
            match self.load() {
                Ok(core) => *slot = Some(core),
                Err(e) => {
                    let reply = Err(ErrorReply::new(ErrorCode::Internal, e));
                    return Ok(rpc::reply_response::<CoordinatorResponse>(
                        Some(request_id),
                        reply,
                    ));
                }
            }
        }
        let Some(core) = slot.as_mut() else {
            let reply = Err(ErrorReply::new(
                ErrorCode::Internal,
                "coordinator not loaded",
            ));
            return Ok(rpc::reply_response::<CoordinatorResponse>(
                Some(request_id),
                reply,
            ));
        };
        let (mut reply, effects) = core.handle(envelope, now_ms);
        if let Some(state) = effects.persist {
            if let Err(e) = self.save(&state) {
                *slot = None;
                reply = Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("could not save the tenant record: {e}"),
                ));
            }
        }
        Ok(rpc::reply_response(Some(request_id), reply))
    }
}
