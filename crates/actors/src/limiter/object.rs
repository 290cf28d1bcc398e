//! The `RateLimiter` Durable Object: the shell around [`LimiterCore`] (a
//! key's limiter, `${tenantId}:limiter:<keyId>`) and [`LedgerCore`] (the
//! tenant's ledger, `${tenantId}:limiter`). One class serves both; an object
//! takes the requests of the role its first request gave it.
//!
//! The shell decodes, reads the clock once per event, calls the core, and
//! performs its effects in order: the state is one row written synchronously
//! before the answer (so the runtime commits it with nothing else between),
//! the alarm follows the core's next deadline, a soft threshold is one log
//! line, and unused lease capacity goes back to the ledger beside the answer.
//! An admit the tenant lease is short for asks the ledger (an await that is
//! not storage) and then asks the core again: nothing was reserved before.

use super::core::{Effect, LimiterCore, LimiterState, Outcome, PERSIST_SOON_MS};
use super::handle::LedgerHandle;
use super::ledger::{LedgerCore, LedgerState};
use super::relay::{Held, Relay, RELAY_AFTER_MS};
use crate::error::internal;
use crate::metrics::{self, core::MetricsCore};
use crate::ports::{Clock, SystemClock};
use crate::rpc;
use crate::sql;
use protocol::limits::{
    LeaseReturn, LedgerRequest, LimitKind, LimitScope, LimiterRequest, LimiterResponse,
    RateLimited, RateLimiterRequest, RateLimiterResponse,
};
use protocol::metrics::{MetricsRequest, MetricsResponse};
use protocol::usage::{UsageRequest, UsageResponse};
use protocol::{ErrorCode, ErrorReply, RequestId, TenantId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{durable_object, Env, Request, Response, Result, ScheduledTime, State};

/// The tenant and the role of a loaded object.
type Loaded = Rc<RefCell<Option<(TenantId, Role)>>>;

/// Times one admit may ask the ledger for a lease before it is refused for
/// the tenant (other admits may spend a grant while this one awaits it).
const LEASE_TRIES: usize = 3;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS limiter_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), role TEXT NOT NULL, state TEXT NOT NULL)";

/// What an object is, once its first request said so.
enum Role {
    Key(Box<LimiterCore>),
    Ledger(LedgerCore),
    /// One of the tenant's metrics objects ([`crate::metrics`]): its state
    /// is its cells' table, not the state row.
    Metrics(MetricsCore),
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Key(_) => "key",
            Role::Ledger(_) => "ledger",
            Role::Metrics(_) => "metrics",
        }
    }

    fn state_json(&self) -> std::result::Result<String, serde_json::Error> {
        match self {
            Role::Key(core) => serde_json::to_string(core.state()),
            Role::Ledger(core) => serde_json::to_string(core.state()),
            Role::Metrics(_) => Ok("{}".to_owned()),
        }
    }
}

/// A key's limiter or a tenant's ledger.
#[durable_object]
pub struct RateLimiter {
    state: State,
    env: Env,
    /// The tenant and the role, once loaded (shared with a pending
    /// [`Effect::PersistSoon`] write).
    loaded: Loaded,
    /// The alarm this isolate set last.
    alarm_at: Cell<Option<u64>>,
    /// Whether a [`Effect::PersistSoon`] write is scheduled and not yet
    /// done (a [`Effect::Persist`] does it too).
    unwritten: Rc<Cell<bool>>,
    /// The sessions' registry reports a ledger holds for the coordinator.
    relay: Rc<RefCell<Relay>>,
}

/// Stores the state of `loaded` (one row); on failure memory is ahead of
/// storage, so it is forgotten and the next message starts from storage.
fn write_state(loaded: &Loaded, sql: &worker::SqlStorage) -> std::result::Result<(), ErrorReply> {
    let written = {
        let loaded = loaded.borrow();
        let Some((_, role)) = loaded.as_ref() else {
            return Err(internal("limiter not loaded"));
        };
        let json = role.state_json().map_err(internal)?;
        sql::exec(
            sql,
            "INSERT INTO limiter_state (id, role, state) VALUES (1, ?, ?)
             ON CONFLICT (id) DO UPDATE SET role = excluded.role, state = excluded.state",
            vec![role.name().into(), json.into()],
        )
        .map_err(ErrorReply::from)
    };
    if written.is_err() {
        *loaded.borrow_mut() = None;
    }
    written
}

impl RateLimiter {
    fn now(&self) -> u64 {
        SystemClock.now_ms()
    }

    /// Loads the object for `tenant` (the first tenant owns it) in the role
    /// `wanted` asks for; refuses the other role.
    fn load(&self, tenant: Option<&TenantId>, wanted: &str) -> std::result::Result<(), ErrorReply> {
        if let Some((owner, role)) = self.loaded.borrow().as_ref() {
            sql::check_owner(Some(owner), tenant)?;
            return check_role(role.name(), wanted);
        }
        let sql = self.state.storage().sql();
        let owner = sql::claim_owner(&sql, tenant)?;
        sql::exec(&sql, SCHEMA, vec![])?;
        let stored = sql::first::<(String, String)>(
            &sql,
            "SELECT role, state FROM limiter_state WHERE id = 1",
            vec![],
        )?;
        let role = match stored {
            Some((role, json)) => {
                check_role(&role, wanted)?;
                match role.as_str() {
                    "key" => Role::Key(Box::new(LimiterCore::restore(
                        serde_json::from_str::<LimiterState>(&json).map_err(internal)?,
                    ))),
                    "metrics" => Role::Metrics(MetricsCore::restore(
                        metrics::store::load(&sql).map_err(internal)?,
                    )),
                    _ => Role::Ledger(LedgerCore::restore(
                        serde_json::from_str::<LedgerState>(&json).map_err(internal)?,
                    )),
                }
            }
            None if wanted == "key" => Role::Key(Box::new(LimiterCore::new())),
            None if wanted == "metrics" => {
                // The role is stored at once: nothing else writes the row.
                sql::exec(
                    &sql,
                    "INSERT INTO limiter_state (id, role, state) VALUES (1, 'metrics', '{}')",
                    vec![],
                )?;
                Role::Metrics(MetricsCore::restore(
                    metrics::store::load(&sql).map_err(internal)?,
                ))
            }
            None => Role::Ledger(LedgerCore::default()),
        };
        *self.loaded.borrow_mut() = Some((owner, role));
        Ok(())
    }

    /// Stores the state (one row) now: the answer waits for the write.
    fn persist(&self) -> std::result::Result<(), ErrorReply> {
        self.unwritten.set(false);
        write_state(&self.loaded, &self.state.storage().sql())
    }

    /// Stores the state within [`PERSIST_SOON_MS`], beside the answers: a
    /// write commits before any answer sent after it, so an answer that
    /// does not wait for one leaves while nothing is being written. One
    /// write covers every spend until it runs; a [`Effect::Persist`] in
    /// between does it instead.
    fn persist_soon(&self) {
        if self.unwritten.replace(true) {
            return;
        }
        let (loaded, unwritten) = (Rc::clone(&self.loaded), Rc::clone(&self.unwritten));
        let storage = self.state.storage();
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::from_millis(PERSIST_SOON_MS)).await;
            if !unwritten.replace(false) {
                return;
            }
            if let Err(e) = write_state(&loaded, &storage.sql()) {
                worker::console_error!("limiter: the state was not stored: {}", e.message);
            }
        });
    }

    /// Performs a key limiter's effects, in order; what goes back to the
    /// ledger goes beside the answer.
    async fn perform(&self, effects: Vec<Effect>) -> std::result::Result<(), ErrorReply> {
        for effect in effects {
            match effect {
                Effect::SoftThreshold(mark) => {
                    let tenant = self.tenant().map(|t| t.as_str().to_owned());
                    worker::console_log!(
                        "{}",
                        serde_json::json!({
                            "event": "budget_soft_threshold",
                            "tenant": tenant,
                            "budget": mark.budget,
                            "used": mark.used,
                            "limit": mark.limit,
                            "atMs": mark.at_ms,
                        })
                    );
                }
                Effect::Persist => self.persist()?,
                Effect::PersistSoon => self.persist_soon(),
                Effect::SetAlarm(at) => self.set_alarm(at).await,
                Effect::ClearAlarm => {
                    self.alarm_at.set(None);
                    if let Err(e) = self.state.storage().delete_alarm().await {
                        worker::console_error!("limiter: could not clear the alarm: {e}");
                    }
                }
                Effect::ReturnLease(back) => self.return_lease(back),
            }
        }
        Ok(())
    }

    async fn set_alarm(&self, at: u64) {
        if self.alarm_at.get() == Some(at) {
            return;
        }
        let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(at as f64));
        match self
            .state
            .storage()
            .set_alarm(ScheduledTime::new(date))
            .await
        {
            Ok(()) => self.alarm_at.set(Some(at)),
            Err(e) => worker::console_error!("limiter: could not set the alarm: {e}"),
        }
    }

    fn tenant(&self) -> Option<TenantId> {
        self.loaded.borrow().as_ref().map(|(t, _)| t.clone())
    }

    /// Gives unused lease capacity back to the tenant's ledger, beside the
    /// answer. At most once: a failure leaves the tenant under-admitted
    /// until its bucket refills, never over.
    fn return_lease(&self, back: LeaseReturn) {
        if back.rpm == 0 && back.tpm == 0 {
            return;
        }
        let Some(tenant) = self.tenant() else { return };
        let env = self.env.clone();
        self.state.wait_until(async move {
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let sent = match LedgerHandle::new(&env, &tenant) {
                Ok(ledger) => ledger.give_back(&request_id, back).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                worker::console_warn!("limiter: unused lease not returned: {e}");
            }
        });
    }

    /// One request to a key's limiter.
    async fn key(
        &self,
        mut request: LimiterRequest,
    ) -> std::result::Result<LimiterResponse, ErrorReply> {
        let mut tries = 0;
        loop {
            let now = self.now();
            let (outcome, effects) = {
                let mut loaded = self.loaded.borrow_mut();
                match loaded.as_mut() {
                    Some((_, Role::Key(core))) => core.handle(request.clone(), now),
                    _ => return Err(internal("limiter not loaded")),
                }
            };
            // What the admit gave back is taken once: asked again after a
            // lease, it gives nothing back.
            request = super::core::once(request);
            self.perform(effects).await?;
            let ask = match outcome {
                Outcome::Reply(reply) => {
                    self.log_refusal(&reply);
                    return reply;
                }
                Outcome::NeedLease(ask) => ask,
            };
            if tries >= LEASE_TRIES {
                // Other admits keep spending the grants while this one
                // awaits them: refuse for the tenant rather than loop. The
                // ask carried back what the lease had left: return it.
                self.return_lease(ask.returned);
                return Ok(LimiterResponse::RateLimited(RateLimited {
                    limit: if ask.rpm > 0 {
                        LimitKind::Rpm
                    } else {
                        LimitKind::Tpm
                    },
                    scope: LimitScope::Tenant,
                    retry_after_secs: 1,
                    rate_limit: None,
                }));
            }
            tries += 1;
            let tenant = self
                .tenant()
                .ok_or_else(|| internal("limiter not loaded"))?;
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let grant = LedgerHandle::new(&self.env, &tenant)
                .map_err(|e| ErrorReply::new(ErrorCode::Unavailable, e.to_string()))?
                .lease(&request_id, ask)
                .await
                .map_err(|e| {
                    ErrorReply::new(
                        ErrorCode::Unavailable,
                        format!("the tenant's limiter is unavailable: {e}"),
                    )
                })?;
            // The object may have been reloaded during the await.
            self.load(Some(&tenant), "key")?;
            let now = self.now();
            let effects = {
                let mut loaded = self.loaded.borrow_mut();
                match loaded.as_mut() {
                    Some((_, Role::Key(core))) => core.apply_grant(grant, now),
                    _ => return Err(internal("limiter not loaded")),
                }
            };
            self.perform(effects).await?;
        }
    }

    /// One log line per refusal of a key's limiter: the limit or budget,
    /// its scope, when to retry (no key material: the object's name has
    /// the key id, the line has the tenant).
    fn log_refusal(&self, reply: &std::result::Result<LimiterResponse, ErrorReply>) {
        let tenant = self.tenant();
        let tenant = tenant.as_ref().map(|t| t.as_str());
        match reply {
            Ok(LimiterResponse::RateLimited(r)) => crate::observe::event(
                "rate_limited",
                "limiter",
                tenant,
                serde_json::json!({
                    "limit": r.limit.as_str(),
                    "scope": r.scope.as_str(),
                    "retryAfterSecs": r.retry_after_secs,
                }),
            ),
            Ok(LimiterResponse::BudgetExceeded(b)) => crate::observe::event(
                "budget_exceeded",
                "limiter",
                tenant,
                serde_json::json!({
                    "budget": b.budget.as_str(),
                    "scope": b.scope.as_str(),
                    "limit": b.limit,
                    "used": b.used,
                    "reserved": b.reserved,
                    "requested": b.requested,
                    "resetsAtMs": b.resets_at_ms,
                }),
            ),
            _ => {}
        }
    }

    /// Usage records and reports, at the tenant's ledger.
    fn usage(
        &self,
        tenant: &TenantId,
        request: UsageRequest,
    ) -> std::result::Result<UsageResponse, ErrorReply> {
        let sql = self.state.storage().sql();
        let now = self.now();
        match request {
            UsageRequest::Record(records) => {
                super::usage::record(&sql, &records, now).map(UsageResponse::Recorded)
            }
            UsageRequest::RecordTurns { records, sessions } => {
                if sessions.len() > protocol::usage::MAX_SESSION_REPORTS {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "at most {} session reports with one usage record",
                            protocol::usage::MAX_SESSION_REPORTS
                        ),
                    ));
                }
                let recorded = super::usage::record(&sql, &records, now)?;
                self.relay_sessions(tenant, sessions);
                Ok(UsageResponse::Recorded(recorded))
            }
            UsageRequest::Report(query) => {
                super::usage::read(&sql, &query).map(UsageResponse::Report)
            }
            UsageRequest::Recent => super::usage::recent(&sql, now).map(UsageResponse::Recent),
        }
    }

    /// Holds `sessions` for the coordinator, and passes them on, with every
    /// report that arrives meanwhile, [`RELAY_AFTER_MS`] after the first
    /// ([`Relay`]). A failure to pass them on is logged; each session's
    /// next report corrects the registry.
    fn relay_sessions(&self, tenant: &TenantId, sessions: Vec<protocol::listing::SessionReport>) {
        let mut schedule = false;
        for report in sessions {
            match self.relay.borrow_mut().hold(report) {
                Held::First => schedule = true,
                Held::Added => {}
                Held::Full => worker::console_warn!(
                    "ledger: a session report was dropped ({} sessions held)",
                    super::relay::MAX_HELD
                ),
            }
        }
        if !schedule {
            return;
        }
        let (relay, env, tenant) = (Rc::clone(&self.relay), self.env.clone(), tenant.clone());
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::from_millis(RELAY_AFTER_MS)).await;
            let batches = relay.borrow_mut().take();
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let coordinator = match crate::coordinator::CoordinatorHandle::new(&env, &tenant) {
                Ok(c) => c,
                Err(e) => {
                    worker::console_error!("ledger: session reports not passed on: {e}");
                    return;
                }
            };
            for batch in batches {
                let n = batch.len();
                if let Err(e) = coordinator.record_sessions(&request_id, batch).await {
                    worker::console_error!(
                        "ledger: {n} session reports not passed on to the registry: {e}"
                    );
                }
            }
        });
    }

    /// One request to a metrics object: counted in memory, stored as the
    /// core says, before the answer. A failed write drops the in-memory
    /// cells, so the next message starts from storage.
    fn metrics(&self, request: MetricsRequest) -> std::result::Result<MetricsResponse, ErrorReply> {
        let now = self.now();
        let mut loaded = self.loaded.borrow_mut();
        let Some((_, Role::Metrics(core))) = loaded.as_mut() else {
            return Err(internal("metrics not loaded"));
        };
        match request {
            MetricsRequest::Record(samples) => {
                let effects = core
                    .record(&samples, now)
                    .map_err(|e| ErrorReply::new(ErrorCode::InvalidRequest, e))?;
                if let Err(e) = metrics::store::perform(&self.state.storage().sql(), &effects) {
                    *loaded = None;
                    return Err(e.into());
                }
                Ok(MetricsResponse::Recorded(samples.len() as u64))
            }
            MetricsRequest::Report => Ok(MetricsResponse::Windows(core.windows(now))),
        }
    }

    /// One request to a tenant's ledger.
    async fn ledger(
        &self,
        request: LedgerRequest,
    ) -> std::result::Result<protocol::limits::LedgerResponse, ErrorReply> {
        let now = self.now();
        let (reply, effects) = {
            let mut loaded = self.loaded.borrow_mut();
            match loaded.as_mut() {
                Some((_, Role::Ledger(core))) => core.handle(request, now),
                _ => return Err(internal("ledger not loaded")),
            }
        };
        self.perform(effects).await?;
        reply
    }
}

fn check_role(have: &str, wanted: &str) -> std::result::Result<(), ErrorReply> {
    if have == wanted {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::Protocol,
            format!("this limiter object is a {have}, not a {wanted}"),
        ))
    }
}

impl worker::DurableObject for RateLimiter {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            loaded: Rc::new(RefCell::new(None)),
            alarm_at: Cell::new(None),
            unwritten: Rc::new(Cell::new(false)),
            relay: Rc::new(RefCell::new(Relay::default())),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let envelope = match rpc::read_request::<RateLimiterRequest, RateLimiterResponse>(req).await
        {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let tenant = envelope.tenant_id.clone();
        let reply = match envelope.message {
            RateLimiterRequest::Key(request) => match self.load(Some(&tenant), "key") {
                Ok(()) => self.key(request).await.map(RateLimiterResponse::Key),
                Err(e) => Err(e),
            },
            RateLimiterRequest::Ledger(request) => match self.load(Some(&tenant), "ledger") {
                Ok(()) => self.ledger(request).await.map(RateLimiterResponse::Ledger),
                Err(e) => Err(e),
            },
            RateLimiterRequest::Usage(request) => match self.load(Some(&tenant), "ledger") {
                Ok(()) => self.usage(&tenant, request).map(RateLimiterResponse::Usage),
                Err(e) => Err(e),
            },
            RateLimiterRequest::Metrics(request) => match self.load(Some(&tenant), "metrics") {
                Ok(()) => self.metrics(request).map(RateLimiterResponse::Metrics),
                Err(e) => Err(e),
            },
        };
        Ok(rpc::reply_response(Some(envelope.request_id), reply))
    }

    /// Expires reservations and leases that are due (a key's limiter only).
    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let role = {
            let sql = self.state.storage().sql();
            sql::exec(&sql, SCHEMA, vec![]).map_err(|e| worker::Error::RustError(e.to_string()))?;
            sql::first::<(String,)>(&sql, "SELECT role FROM limiter_state WHERE id = 1", vec![])
                .map_err(|e| worker::Error::RustError(e.to_string()))?
        };
        let Some((role,)) = role else {
            return Response::ok("nothing stored");
        };
        self.load(None, &role)
            .map_err(|e| worker::Error::RustError(e.message))?;
        let now = self.now();
        let effects = match self.loaded.borrow_mut().as_mut() {
            Some((_, Role::Key(core))) => core.on_alarm(now),
            _ => vec![],
        };
        self.perform(effects)
            .await
            .map_err(|e| worker::Error::RustError(e.message))?;
        Response::ok("done")
    }

    rpc::no_websockets!("RateLimiter");
}
