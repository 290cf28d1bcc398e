//! The `ChatSession` Durable Object: the shell around [`SessionCore`] and
//! its [`TurnMachine`](super::turn::TurnMachine).
//!
//! The shell stores, sends and calls; the cores decide. A turn runs the same
//! way whichever client started it: its events are stored (`turn_events`,
//! each under the session's next sequence id) and then sent to every listener
//! of the turn: the SSE stream that started it, any stream that resumed it,
//! and every WebSocket of the session. The turn itself runs beside the
//! request that started it (`waitUntil`), so a client that goes away does not
//! stop it; its durable state (`turns`) and the alarm finish or fail a turn
//! whose isolate was reset. History is one SQLite row per message.

use super::core::{
    context, may, must_set_alarm, resume_plan, Action, ChatLimits, EventLog, Owner, Refusal,
    ResumePlan, SessionCore, CONTEXT_BUDGET_CHARS, SYSTEM_PROMPT,
};
use super::store::SessionStore;
use super::tools;
use super::turn::Effect;
use super::FRAMES_CONTENT_TYPE;
use crate::generation::AnyGenerator;
use crate::ingest::IngestHandle;
use crate::ports::{
    ChatMessage, Clock, GenerateRequest, GenerationEvent, Generator, Kv, Role, SystemClock,
    ToolCall,
};
use crate::providers;
use crate::rpc;
use futures::channel::mpsc;
use protocol::chat::{
    encode_frame, Access, ChatEvent, ChatRequest, ChatResponse, ChatSnapshot, Cleared, Turn,
    TurnFrame, UpToDate, Usage, DEFAULT_MAX_TOKENS,
};
use protocol::coordinator::DEFAULT_CHAT_MODEL;
use protocol::{ErrorCode, ErrorReply, RequestId, SessionId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use worker::{
    durable_object, Env, Headers, Request, Response, Result, ScheduledTime, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

/// Largest WebSocket frame accepted from a client.
pub const MAX_WS_FRAME_BYTES: usize = 64 * 1024;

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// Which tenant and session a socket belongs to; kept as the socket's
/// attachment, so it survives hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SocketInfo {
    tenant: TenantId,
    session: SessionId,
    /// Who connected (the gateway's finding); turns run as this caller.
    #[serde(default)]
    access: Access,
    /// The session's last event id when the socket connected: it receives
    /// every later event live, so a `resume` replays only up to this one and
    /// no event reaches it twice.
    #[serde(default)]
    joined_after: u64,
}

/// A client's WebSocket frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    /// A user message: starts a turn.
    Message {
        content: String,
        model: Option<String>,
        #[serde(rename = "maxTokens")]
        max_tokens: Option<u32>,
    },
    /// Send me the events after `after` (or the latest turn's, without it).
    Resume { after: Option<u64> },
}

/// A stream that wants a turn's events.
struct Listener {
    turn: u64,
    tx: mpsc::UnboundedSender<std::result::Result<Vec<u8>, worker::Error>>,
}

/// What a turn's driver needs besides the session.
struct TurnContext {
    id: u64,
    tenant: TenantId,
    request_id: RequestId,
    turn: Turn,
}

struct Inner {
    state: State,
    env: Env,
    store: SessionStore,
    core: RefCell<SessionCore>,
    /// The tenant and session this object is bound to, once checked.
    bound: RefCell<Option<(TenantId, SessionId)>>,
    /// Streams following a running turn.
    listeners: RefCell<Vec<Listener>>,
    /// The alarm this isolate set last, until it fires.
    alarm_at: Cell<Option<u64>>,
    /// Event ids and the events not stored yet.
    events: RefCell<EventLogState>,
    /// When each socket key (by its proof) was last verified, for the 1 s bound.
    key_checks: RefCell<std::collections::HashMap<String, u64>>,
}

/// How long a socket's key check holds: the gateway's cache bound too.
const KEY_CHECK_MS: u64 = 1_000;

/// The next event id, the stored reservation, and the events sent but not
/// stored yet (`(id, turn, JSON)`).
#[derive(Default)]
struct EventLogState {
    next_id: u64,
    reserved: u64,
    pending: Vec<(u64, u64, String)>,
}

/// Event ids reserved in one write.
const EVENT_ID_BLOCK: u64 = 256;
/// `message` pieces stored together.
const FLUSH_EVERY: usize = 32;

/// A conversation.
#[durable_object]
pub struct ChatSession {
    inner: Rc<Inner>,
}

/// An event as a WebSocket client gets it: the event's JSON with its
/// sequence id as `eventId` (`id` is a tool call's own id).
/// `event_json` is the event's own JSON object, as stored.
fn socket_text(id: u64, event_json: &str) -> String {
    format!("{{\"eventId\":{id},{}", event_json.get(1..).unwrap_or("}"))
}

fn send_json(ws: &WebSocket, value: &Value) {
    let _ = ws.send_with_str(value.to_string());
}

fn is_terminal(event: &ChatEvent) -> bool {
    matches!(event, ChatEvent::Done { .. } | ChatEvent::Error { .. })
}

/// What a resuming client gets.
enum ResumeAnswer {
    /// These stored events; then, if `follow`, that running turn's live ones.
    Frames {
        frames: Vec<TurnFrame>,
        follow: Option<u64>,
    },
    /// Nothing: the client has every event and nothing runs.
    UpToDate(UpToDate),
}

type FrameSender = mpsc::UnboundedSender<std::result::Result<Vec<u8>, worker::Error>>;
type FrameReceiver = mpsc::UnboundedReceiver<std::result::Result<Vec<u8>, worker::Error>>;

impl Inner {
    fn now(&self) -> u64 {
        SystemClock.now_ms()
    }

    fn limits(&self) -> std::result::Result<ChatLimits, ErrorReply> {
        ChatLimits::from_vars(|name| self.env.var(name).ok().map(|v| v.to_string()))
            .map_err(|e| internal(format!("misconfigured: {e}")))
    }

    fn settings(&self) -> std::result::Result<providers::Settings, ErrorReply> {
        providers::settings(|name| self.env.var(name).ok().map(|v| v.to_string())).map_err(internal)
    }

    /// Creates the tables and binds the object to its tenant and session on
    /// first use; refuses any other tenant or session afterwards. The first
    /// time in an isolate, fails the turns an earlier isolate left running.
    fn bind(&self, tenant: &TenantId, session: &SessionId) -> std::result::Result<(), ErrorReply> {
        if let Some((t, s)) = self.bound.borrow().as_ref() {
            if t != tenant || s != session {
                return Err(wrong_session());
            }
            return Ok(());
        }
        self.store.create_tables()?;
        match self.store.binding()? {
            Some((t, s)) if &t != tenant || &s != session => return Err(wrong_session()),
            Some(_) => {}
            None => self.store.bind(tenant, session)?,
        }
        *self.bound.borrow_mut() = Some((tenant.clone(), session.clone()));
        let issued = self.store.issued_event_id()?;
        {
            let mut log = self.events.borrow_mut();
            log.next_id = issued + 1;
            log.reserved = issued;
        }
        self.recover()?;
        Ok(())
    }

    /// Whether the key a socket connected with still verifies (not revoked,
    /// not expired, not rotated away). Sockets without a key (the operator,
    /// an anonymous caller) have nothing to re-check.
    async fn key_still_valid(&self, info: &SocketInfo) -> bool {
        let (Some(id), Some(proof)) = (&info.access.key, &info.access.proof) else {
            return true;
        };
        // Checked at most once a second per key, the gateway's bound too: a
        // revocation reaches an open socket within 1 s.
        let now = self.now();
        let checked = self.key_checks.borrow().get(proof).copied();
        if checked.is_some_and(|at| now.saturating_sub(at) < KEY_CHECK_MS) {
            return true;
        }
        let verify = protocol::keys::VerifyKey {
            id: id.clone(),
            secret_sha256: proof.clone(),
        };
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let valid = match crate::CoordinatorHandle::new(&self.env, &info.tenant) {
            Ok(c) => matches!(
                c.verify_key(&request_id, verify).await,
                Ok(protocol::keys::Verification::Valid(_))
            ),
            Err(_) => false,
        };
        let mut checks = self.key_checks.borrow_mut();
        if valid {
            // A few keys per session at most; the map is cleared if it grows.
            if checks.len() >= 64 {
                checks.clear();
            }
            checks.insert(proof.clone(), now);
        } else {
            checks.remove(proof);
        }
        valid
    }

    /// Refuses `access` doing `action` unless the session's owner allows it,
    /// as if the session did not exist (404): another key's or user's
    /// session, or one that has had no turn, is nothing to that caller.
    fn allow(&self, access: &Access, action: Action) -> std::result::Result<(), ErrorReply> {
        let owner = self.store.owner()?;
        let exists = owner.is_some() || action == Action::Turn;
        if exists && may(owner.as_ref(), access, action) {
            Ok(())
        } else {
            Err(ErrorReply::new(ErrorCode::NotFound, "no such session"))
        }
    }

    /// Marks failed every turn that storage calls running but that is not
    /// running here (its isolate was reset or evicted mid-turn), with an
    /// `error` event a resuming client sees.
    fn recover(&self) -> std::result::Result<(), ErrorReply> {
        let running = self.store.running_turns()?;
        let lost = self.core.borrow().interrupted(&running);
        for id in lost {
            self.fail_turn(
                id,
                "turn_interrupted",
                "the turn was interrupted (the session restarted) and did not finish",
            );
        }
        Ok(())
    }

    /// Sends `event` as the next event of turn `turn` to the turn's
    /// listeners and every socket, under the next sequence id.
    ///
    /// Events are stored in batches, not one write each: every event but a
    /// `message` piece (tool calls, results, `done`, `error`) is stored before
    /// it is sent, together with the pieces before it, and so is every 32nd
    /// piece. Every read of the events (a resume, a new socket's position)
    /// flushes first, so a replay in this isolate is exact. Ids are handed
    /// out from memory against a stored reservation, so pieces lost with an
    /// isolate never have their ids reused.
    fn emit(&self, turn: u64, event: &ChatEvent) {
        let json = serde_json::to_string(event).unwrap_or_default();
        let id = {
            let mut log = self.events.borrow_mut();
            let id = log.next_id;
            log.next_id += 1;
            if id > log.reserved {
                log.reserved = id + EVENT_ID_BLOCK;
                if let Err(e) = self.store.reserve_event_ids(log.reserved) {
                    worker::console_error!("chat: event ids not reserved: {}", e.message);
                }
            }
            log.pending.push((id, turn, json.clone()));
            id
        };
        let piece = matches!(event, ChatEvent::Message { .. });
        if !piece || self.events.borrow().pending.len() >= FLUSH_EVERY {
            self.flush_events();
        }
        let frame = TurnFrame {
            id,
            event: event.clone(),
        };
        match encode_frame(&frame) {
            Ok(bytes) => {
                let terminal = is_terminal(event);
                self.listeners.borrow_mut().retain(|l| {
                    if l.turn != turn {
                        return true;
                    }
                    let alive = l.tx.unbounded_send(Ok(bytes.clone())).is_ok();
                    alive && !terminal
                });
            }
            Err(e) => worker::console_error!("chat: an event could not be encoded: {e}"),
        }
        let sockets = self.state.get_websockets();
        if !sockets.is_empty() {
            let json = socket_text(id, &json);
            for socket in sockets {
                let _ = socket.send_with_str(&json);
            }
        }
    }

    /// Stores the events sent but not stored yet.
    fn flush_events(&self) {
        let pending = std::mem::take(&mut self.events.borrow_mut().pending);
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_events(&pending) {
            // Not stored, so not resumable; the turn goes on.
            worker::console_error!("chat: events not stored: {}", e.message);
        }
    }

    /// Turn `id` failed: marks it so and emits its `error` event, unless it
    /// has already ended.
    fn fail_turn(&self, id: u64, code: &str, message: &str) {
        if let Ok(false) = self.store.turn_failed(id, code, message, self.now()) {
            return;
        }
        self.emit(id, &ChatEvent::error(code, message));
        self.prune_events(id);
    }

    /// Keeps the events of the last `resumable_turns` turns only.
    fn prune_events(&self, ended: u64) {
        let keep = self.limits().map(|l| l.resumable_turns).unwrap_or(20);
        let _ = self.store.drop_events(ended.saturating_sub(keep));
    }

    /// Performs the effects that need no waiting, in order, and returns the
    /// ones that do (`Generate`, `RunTool`) for the driver.
    fn perform(&self, turn: u64, effects: Vec<Effect>) -> VecDeque<Effect> {
        let mut waiting = VecDeque::new();
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Emit(event) => self.emit(turn, &event),
                Effect::Store(messages) => {
                    // The round is stored whole or not at all.
                    let stored = self.store.append_all(&messages, self.now());
                    if let Err(e) = stored {
                        let more = self.feed(turn, |m| m.fail("storage_failed", e.message));
                        queue.extend(more);
                    }
                }
                Effect::Complete { answer, usage } => {
                    let now = self.now();
                    let done = self
                        .store
                        .append(&answer, usage, now)
                        .and_then(|seq| self.store.turn_done(turn, now).map(|()| seq));
                    match done {
                        Ok(seq) => {
                            self.emit(
                                turn,
                                &ChatEvent::Done {
                                    ok: true,
                                    message_seq: seq,
                                },
                            );
                            self.prune_events(turn);
                        }
                        Err(e) => self.fail_turn(turn, "storage_failed", &e.message),
                    }
                }
                Effect::Fail { code, message } => self.fail_turn(turn, &code, &message),
                other => waiting.push_back(other),
            }
        }
        waiting
    }

    fn feed(
        &self,
        turn: u64,
        f: impl FnOnce(&mut super::turn::TurnMachine) -> Vec<Effect>,
    ) -> Vec<Effect> {
        self.core.borrow_mut().feed(turn, f)
    }

    /// Sets the alarm for the core's next deadline (turn timeout, idle
    /// expiry), unless an earlier one this isolate set is still pending.
    async fn rearm(&self) {
        let Ok(limits) = self.limits() else { return };
        let next = self
            .core
            .borrow()
            .next_alarm(self.store.last_activity(), &limits);
        if let Some(at) = next {
            if !must_set_alarm(self.alarm_at.get(), at, self.now()) {
                return;
            }
            self.alarm_at.set(Some(at));
            let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(
                at.max(self.now()) as f64,
            ));
            if let Err(e) = self
                .state
                .storage()
                .set_alarm(ScheduledTime::new(date))
                .await
            {
                self.alarm_at.set(None);
                worker::console_error!("chat: could not set the alarm: {e}");
            }
        }
    }

    /// Starts a turn, in one synchronous step: checks, stores the user
    /// message and the turn, registers `listener`. Returns the turn's context
    /// and the effects to drive.
    fn begin(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        turn: Turn,
        listener: Option<FrameSender>,
    ) -> std::result::Result<(TurnContext, VecDeque<Effect>), ErrorReply> {
        self.allow(&turn.access, Action::Turn)?;
        let limits = self.limits()?;
        let stored = self.store.message_count()?;
        match self.core.borrow().can_begin(stored, &limits) {
            Ok(()) => {}
            Err(Refusal::Busy) => {
                return Err(ErrorReply::new(
                    ErrorCode::Busy,
                    "this session is still answering an earlier message",
                ))
            }
            Err(Refusal::Full) => {
                return Err(ErrorReply::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "this session holds {stored} messages, the most it may (CHAT_MAX_MESSAGES = {}); erase it or start a new session",
                        limits.max_messages
                    ),
                )
                .with_reason("session_full"))
            }
        }
        let user = ChatMessage {
            role: Role::User,
            content: turn.message.clone(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        };
        let now = self.now();
        if self.store.owner()?.is_none() {
            let owner = Owner::of(&turn.access);
            self.store.set_owner(&owner)?;
            // Sockets may attach to a session before its first turn; now that
            // it has an owner, the ones that may not read it are closed, so
            // they never see its events.
            for socket in self.state.get_websockets() {
                let allowed = socket
                    .deserialize_attachment::<SocketInfo>()
                    .ok()
                    .flatten()
                    .is_some_and(|info| may(Some(&owner), &info.access, Action::Read));
                if !allowed {
                    let _ =
                        socket.close(Some(4003), Some("this session belongs to another caller"));
                }
            }
        }
        let user_seq = self.store.append(&user, None, now)?;
        let id = self.store.start_turn(user_seq, now)?;
        let effects = self.core.borrow_mut().start(id, now, &limits);
        if let Some(tx) = listener {
            self.listeners.borrow_mut().push(Listener { turn: id, tx });
        }
        let context = TurnContext {
            id,
            tenant: tenant.clone(),
            request_id: request_id.clone(),
            turn,
        };
        Ok((context, self.perform(id, effects)))
    }

    /// Runs a started turn to its end: performs what waits (the model, the
    /// tools) and feeds the results back to the machine.
    async fn drive(self: Rc<Self>, ctx: TurnContext, mut waiting: VecDeque<Effect>) {
        // The alarm (the turn's deadline) is set beside the turn, not before
        // it: the first event does not wait for it.
        let arming = Rc::clone(&self);
        self.state.wait_until(async move { arming.rearm().await });
        let generator = self.generator(&ctx).await;
        while let Some(effect) = waiting.pop_front() {
            let more = match effect {
                Effect::Generate => match &generator {
                    Ok(generator) => self.generate(&ctx, generator).await,
                    Err(e) => self.feed(ctx.id, |m| m.fail("model_unavailable", e.clone())),
                },
                Effect::RunTool(call) => {
                    let (result, is_error) =
                        self.run_tool(&ctx.tenant, &ctx.request_id, &call).await;
                    self.feed(ctx.id, |m| m.on_tool_result(&call.id, &result, is_error))
                }
                // `perform` handles every other effect.
                _ => vec![],
            };
            waiting.extend(self.perform(ctx.id, more));
        }
        self.core.borrow_mut().finish(ctx.id);
        self.rearm().await;
    }

    async fn generator(&self, ctx: &TurnContext) -> std::result::Result<AnyGenerator, String> {
        let settings = self.settings().map_err(|e| e.message)?;
        let model = if settings.workers_ai {
            self.chat_model(&ctx.tenant, &ctx.request_id, &ctx.turn)
                .await
        } else {
            crate::generation::embedded::EXTRACTIVE_MODEL.to_owned()
        };
        AnyGenerator::new(
            &self.env,
            settings.workers_ai,
            &model,
            settings.fault_injection,
        )
        .map_err(|e| e.to_string())
    }

    /// One generation: its pieces go to the machine (and out) as they arrive.
    async fn generate(&self, ctx: &TurnContext, generator: &AnyGenerator) -> Vec<Effect> {
        let history = match self.store.recent() {
            Ok(h) => h,
            Err(e) => return self.feed(ctx.id, |m| m.fail("storage_failed", e.message)),
        };
        let request = GenerateRequest {
            model: generator.model().to_owned(),
            messages: context(SYSTEM_PROMPT, &history, CONTEXT_BUDGET_CHARS),
            tools: tools::specs(),
            max_tokens: ctx.turn.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        };
        let outcome = generator
            .generate(&request, &mut |event| match event {
                GenerationEvent::Text(piece) => {
                    let effects = self.feed(ctx.id, |m| m.on_text(piece));
                    // Only `Emit`: nothing is left waiting.
                    let _ = self.perform(ctx.id, effects);
                }
                GenerationEvent::ToolCall(call) => {
                    self.feed(ctx.id, |m| {
                        m.on_tool_call(call);
                        vec![]
                    });
                }
                GenerationEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    self.feed(ctx.id, |m| {
                        m.on_usage(Usage {
                            prompt_tokens,
                            completion_tokens,
                        });
                        vec![]
                    });
                }
            })
            .await;
        self.feed(ctx.id, |m| {
            m.on_generated(outcome.map_err(|e| e.to_string()))
        })
    }

    async fn run_tool(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        call: &ToolCall,
    ) -> (Value, bool) {
        match call.name.as_str() {
            "vector_search" => {
                let search = match tools::search_request(&call.arguments) {
                    Ok(s) => s,
                    Err(e) => return (json!({ "error": e }), true),
                };
                let found = match IngestHandle::new(&self.env, tenant) {
                    Ok(handle) => handle.search(request_id, search).await,
                    Err(e) => Err(e),
                };
                match found {
                    Ok(results) => (tools::search_result(&results), false),
                    Err(e) => (json!({ "error": e.to_string() }), true),
                }
            }
            "kv_get" => {
                let key = call.arguments["key"].clone();
                let full = match tools::kv_key(tenant, &call.arguments) {
                    Ok(k) => k,
                    Err(e) => return (json!({ "key": key, "error": e }), true),
                };
                let Some(kv) = providers::cache(&self.env) else {
                    return (
                        json!({ "key": key, "error": "this deployment has no KV namespace" }),
                        true,
                    );
                };
                match kv.get(&full).await {
                    Ok(value) => (json!({ "key": key, "value": value }), false),
                    Err(e) => (json!({ "key": key, "error": e.to_string() }), true),
                }
            }
            other => (json!({ "error": format!("no tool named {other:?}") }), true),
        }
    }

    async fn chat_model(&self, tenant: &TenantId, request_id: &RequestId, turn: &Turn) -> String {
        if let Some(model) = &turn.model {
            return model.clone();
        }
        // The tenant's default, from its coordinator (only worth the call when
        // a real model will read it).
        match crate::CoordinatorHandle::new(&self.env, tenant) {
            Ok(c) => c
                .get_tenant(request_id)
                .await
                .map(|r| r.settings.default_models.chat)
                .unwrap_or_else(|_| DEFAULT_CHAT_MODEL.to_owned()),
            Err(_) => DEFAULT_CHAT_MODEL.to_owned(),
        }
    }

    fn event_log(&self) -> std::result::Result<EventLog, ErrorReply> {
        self.flush_events();
        let range = self.store.event_range()?;
        let running = self.core.borrow().running_turn();
        let last_event_id = range.newest.unwrap_or(0);
        Ok(EventLog {
            // A turn without events yet starts after the last stored event.
            latest_turn: range.latest_turn.map(|(id, first)| {
                let first = first
                    .unwrap_or(u64::MAX)
                    .min(last_event_id.saturating_add(1));
                (id, first, running == Some(id))
            }),
            last_event_id,
            issued: self.events.borrow().next_id.saturating_sub(1),
            oldest_kept: range.oldest,
        })
    }

    /// What a resuming client gets: the plan's frames, and whether to follow
    /// the running turn afterwards (register the listener in the same step).
    fn resume(&self, after: Option<u64>) -> std::result::Result<ResumeAnswer, ErrorReply> {
        let log = self.event_log()?;
        match resume_plan(after, &log) {
            ResumePlan::Replay { after, follow } => Ok(ResumeAnswer::Frames {
                frames: self.store.events_after(after)?,
                follow: if follow {
                    log.latest_turn.map(|(id, _, _)| id)
                } else {
                    None
                },
            }),
            ResumePlan::UpToDate => Ok(ResumeAnswer::UpToDate(UpToDate {
                last_event_id: log.last_event_id,
            })),
            ResumePlan::NoTurn => Err(ErrorReply::new(
                ErrorCode::NotFound,
                "this session has no turn to resume",
            )),
            ResumePlan::Unknown => Err(ErrorReply::new(
                ErrorCode::InvalidRequest,
                format!(
                    "this session has no event after which to resume ({} is its last)",
                    log.last_event_id
                ),
            )),
            ResumePlan::Expired => Err(ErrorReply::new(
                ErrorCode::NotFound,
                "the events after that id are no longer kept; read the history instead",
            )),
        }
    }

    fn snapshot(&self) -> std::result::Result<ChatSnapshot, ErrorReply> {
        let count = self.store.message_count()?;
        let workers_ai = self.settings()?.workers_ai;
        let latest_turn = self.store.latest_turn()?;
        Ok(ChatSnapshot {
            message_count: count,
            last_activity_ms: self.store.last_activity(),
            connected_sockets: u32::try_from(self.state.get_websockets().len()).unwrap_or(u32::MAX),
            in_flight: self.core.borrow().in_flight(),
            generator: if workers_ai {
                "workers-ai"
            } else {
                crate::generation::embedded::EXTRACTIVE_MODEL
            }
            .to_owned(),
            latest_turn,
            last_event_id: {
                self.flush_events();
                self.store.last_event_id()?
            },
        })
    }

    fn clear(&self) -> std::result::Result<ChatResponse, ErrorReply> {
        if self.core.borrow().in_flight() {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                "this session is still answering; try again when it is done",
            ));
        }
        let removed = self.store.message_count()?;
        self.store.erase()?;
        Ok(ChatResponse::Cleared(Cleared {
            messages_removed: removed,
        }))
    }
}

fn wrong_session() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::WrongTenant,
        "this session belongs to another tenant or session",
    )
}

fn frames_response(rx: FrameReceiver) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", FRAMES_CONTENT_TYPE)?;
    Ok(Response::from_stream(rx)?.with_headers(headers))
}

impl ChatSession {
    async fn rpc(&self, req: Request) -> Result<Response> {
        let envelope = match rpc::read_request::<ChatRequest, ChatResponse>(req).await {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let rid = envelope.request_id.clone();
        let tenant = envelope.tenant_id.clone();
        let reply = |r: std::result::Result<ChatResponse, ErrorReply>| {
            Ok(rpc::reply_response(Some(rid.clone()), r))
        };
        let inner = &self.inner;
        match envelope.message {
            ChatRequest::Turn(turn) => {
                if let Err(e) = turn.validate() {
                    return reply(Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        e.to_string(),
                    )));
                }
                if let Err(e) = inner.bind(&tenant, &turn.session_id) {
                    return reply(Err(e));
                }
                let (tx, rx) = mpsc::unbounded();
                match inner.begin(&tenant, &rid, turn, Some(tx)) {
                    Ok((ctx, waiting)) => {
                        // The turn runs beside this request, not inside its
                        // response: a client that goes away does not stop it.
                        let running = Rc::clone(inner);
                        inner.state.wait_until(running.drive(ctx, waiting));
                        frames_response(rx)
                    }
                    Err(e) => reply(Err(e)),
                }
            }
            ChatRequest::Resume(resume) => {
                if let Err(e) = inner
                    .bind(&tenant, &resume.session_id)
                    .and_then(|()| inner.allow(&resume.access, Action::Read))
                {
                    return reply(Err(e));
                }
                match inner.resume(resume.after) {
                    Ok(ResumeAnswer::Frames { frames, follow }) => {
                        let (tx, rx) = mpsc::unbounded();
                        for frame in &frames {
                            if let Ok(bytes) = encode_frame(frame) {
                                let _ = tx.unbounded_send(Ok(bytes));
                            }
                        }
                        // Registered in the same step as the replay read: the
                        // next event it gets is the one after the replay.
                        if let Some(turn) = follow {
                            inner.listeners.borrow_mut().push(Listener { turn, tx });
                        }
                        frames_response(rx)
                    }
                    Ok(ResumeAnswer::UpToDate(u)) => reply(Ok(ChatResponse::UpToDate(u))),
                    Err(e) => reply(Err(e)),
                }
            }
            ChatRequest::History(get) => {
                if let Err(e) = get.validate() {
                    return reply(Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        e.to_string(),
                    )));
                }
                reply(
                    inner
                        .bind(&tenant, &get.session_id)
                        .and_then(|()| inner.allow(&get.access, Action::Read))
                        .and_then(|()| inner.store.page(get.before, get.limit))
                        .map(ChatResponse::History),
                )
            }
            ChatRequest::Clear(clear) => reply(
                inner
                    .bind(&tenant, &clear.session_id)
                    .and_then(|()| inner.allow(&clear.access, Action::Erase))
                    .and_then(|()| inner.clear()),
            ),
            ChatRequest::Inspect(inspect) => reply(
                inner
                    .bind(&tenant, &inspect.session_id)
                    .and_then(|_| inner.snapshot())
                    .map(ChatResponse::Snapshot),
            ),
        }
    }

    /// `GET /ws?tenant=..&session=..` with `Upgrade: websocket`, forwarded by
    /// the gateway after it validated both. A refusal is an actor reply, which
    /// the gateway maps like any other.
    fn accept(&self, req: &Request) -> Result<Response> {
        let refuse = |code: ErrorCode, msg: &str| {
            Ok(rpc::reply_response::<ChatResponse>(
                None,
                Err(ErrorReply::new(code, msg)),
            ))
        };
        if !req
            .headers()
            .get("upgrade")?
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return refuse(ErrorCode::Protocol, "expected a WebSocket upgrade");
        }
        let url = req.url()?;
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let (Some(tenant), Some(session)) = (
            param("tenant").and_then(|t| TenantId::parse(&t).ok()),
            param("session").and_then(|s| SessionId::parse(&s).ok()),
        ) else {
            return refuse(ErrorCode::Protocol, "tenant and session are required");
        };
        let access = Access {
            key: param("key"),
            user: param("user"),
            privileged: param("privileged").is_some(),
            proof: param("proof"),
        };
        // A socket may attach to a session it may read, or to a new one it
        // will start (its first message claims it).
        let attach =
            self.inner
                .bind(&tenant, &session)
                .and_then(|()| match self.inner.store.owner()? {
                    None => Ok(()),
                    Some(_) => self.inner.allow(&access, Action::Read),
                });
        if let Err(e) = attach {
            return Ok(rpc::reply_response::<ChatResponse>(None, Err(e)));
        }
        self.inner.flush_events();
        let joined_after = match self.inner.store.last_event_id() {
            Ok(last) => last.unwrap_or(0),
            Err(e) => return Ok(rpc::reply_response::<ChatResponse>(None, Err(e))),
        };
        let pair = WebSocketPair::new()?;
        // Accepted and given its position in one step: no event falls between.
        self.inner.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(SocketInfo {
            tenant,
            session,
            access,
            joined_after,
        })?;
        Response::from_websocket(pair.client)
    }
}

impl worker::DurableObject for ChatSession {
    fn new(state: State, env: Env) -> Self {
        Self {
            inner: Rc::new(Inner {
                store: SessionStore::new(state.storage().sql()),
                state,
                env,
                core: RefCell::new(SessionCore::default()),
                bound: RefCell::new(None),
                listeners: RefCell::new(Vec::new()),
                alarm_at: Cell::new(None),
                events: RefCell::new(EventLogState::default()),
                key_checks: RefCell::new(std::collections::HashMap::new()),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.path() == "/ws" {
            return self.accept(&req);
        }
        self.rpc(req).await
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let reject = |code: &str, msg: &str| {
            if let Ok(v) = serde_json::to_value(ChatEvent::error(code, msg)) {
                send_json(&ws, &v);
            }
        };
        let Ok(Some(info)) = ws.deserialize_attachment::<SocketInfo>() else {
            reject("not_bound", "this socket has no session");
            return Ok(());
        };
        let text = match message {
            WebSocketIncomingMessage::String(t) => t,
            WebSocketIncomingMessage::Binary(_) => {
                reject("invalid_frame", "frames are JSON text");
                return Ok(());
            }
        };
        if text.len() > MAX_WS_FRAME_BYTES {
            reject(
                "frame_too_large",
                &format!("a frame is at most {MAX_WS_FRAME_BYTES} bytes"),
            );
            return Ok(());
        }
        let frame: ClientFrame = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                reject(
                    "invalid_frame",
                    &format!("expected {{\"type\":\"message\",\"content\":\"...\"}} or {{\"type\":\"resume\",\"after\":<id>}}: {e}"),
                );
                return Ok(());
            }
        };
        if let Err(e) = self.inner.bind(&info.tenant, &info.session) {
            reject("session_unavailable", &e.message);
            return Ok(());
        }
        // The key was checked when the socket connected; a socket lives for
        // hours, so it is checked again before every frame it sends.
        if !self.inner.key_still_valid(&info).await {
            reject(
                "invalid_key",
                "the key this socket connected with is no longer valid",
            );
            let _ = ws.close(Some(4001), Some("invalid key"));
            return Ok(());
        }
        let (content, model, max_tokens) = match frame {
            ClientFrame::Message {
                content,
                model,
                max_tokens,
            } => (content, model, max_tokens),
            ClientFrame::Resume { after } => {
                if let Err(e) = self.inner.allow(&info.access, Action::Read) {
                    reject("not_found", &e.message);
                    return Ok(());
                }
                // Replayed to this socket only, and only the events from
                // before it connected: every later one reached it live.
                match self.inner.resume(after) {
                    Ok(ResumeAnswer::Frames { frames, follow }) => {
                        let frames: Vec<&TurnFrame> = frames
                            .iter()
                            .filter(|f| f.id <= info.joined_after)
                            .collect();
                        for f in &frames {
                            if let Ok(json) = serde_json::to_string(&f.event) {
                                let _ = ws.send_with_str(socket_text(f.id, &json));
                            }
                        }
                        send_json(
                            &ws,
                            &json!({ "type": "resumed", "replayed": frames.len(), "following": follow.is_some() }),
                        );
                    }
                    Ok(ResumeAnswer::UpToDate(_)) => send_json(
                        &ws,
                        &json!({ "type": "resumed", "replayed": 0, "following": false }),
                    ),
                    Err(e) => reject("cannot_resume", &e.message),
                }
                return Ok(());
            }
        };
        // The key's model allow-list is checked by the gateway on
        // `POST /api/chat`; a socket's frames never pass through it, so over
        // a socket only the tenant's default model is used, unless the caller
        // is the operator or a tenant admin.
        if model.is_some() && !info.access.privileged {
            reject(
                "model_not_allowed",
                "over a WebSocket the tenant's default model is used; name a model with POST /api/chat",
            );
            return Ok(());
        }
        let turn = Turn {
            session_id: info.session.clone(),
            access: info.access.clone(),
            message: content,
            model,
            max_tokens,
        };
        if let Err(e) = turn.validate() {
            reject("invalid_message", &e.to_string());
            return Ok(());
        }
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        match self.inner.begin(&info.tenant, &request_id, turn, None) {
            Ok((ctx, waiting)) => {
                let running = Rc::clone(&self.inner);
                self.inner.state.wait_until(running.drive(ctx, waiting));
            }
            Err(e) => {
                let code = match (e.code, e.reason.as_deref()) {
                    (_, Some(reason)) => reason.to_owned(),
                    (ErrorCode::Busy, _) => "busy".to_owned(),
                    (ErrorCode::NotFound, _) => "not_found".to_owned(),
                    _ => "unavailable".to_owned(),
                };
                reject(&code, &e.message);
            }
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // Complete the closing handshake; nothing else is held for a socket.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| *c == 1000 || (3000..5000).contains(c));
        let _ = ws.close(code.or(Some(1000)), Some(reason));
        Ok(())
    }

    /// A protocol error on a socket (a reserved opcode, a set RSV bit, a
    /// fragmented control frame): the runtime has already failed the socket.
    /// The default implementation panics, which resets the whole isolate and
    /// every turn in it, so this one only logs and closes.
    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        worker::console_warn!("chat: a WebSocket failed: {error}");
        let _ = ws.close(Some(1002), Some("protocol error"));
        Ok(())
    }

    /// Times out a turn that runs too long, fails turns an earlier isolate
    /// left running, and erases a session idle for `CHAT_IDLE_EXPIRY_DAYS`.
    async fn alarm(&self) -> Result<Response> {
        let inner = &self.inner;
        inner.alarm_at.set(None);
        let binding = match inner.bound.borrow().clone() {
            Some(b) => Some(b),
            None => {
                // Woken with nothing in memory: the tables may not exist yet.
                inner
                    .store
                    .create_tables()
                    .and_then(|()| inner.store.binding())
                    .map_err(|e| worker::Error::RustError(e.message))?
            }
        };
        let Some((tenant, session)) = binding else {
            return Response::ok("nothing stored");
        };
        inner
            .bind(&tenant, &session)
            .map_err(|e| worker::Error::RustError(e.message))?;
        let now = inner.now();
        let (turn, effects) = inner.core.borrow_mut().on_alarm(now);
        if let Some(turn) = turn {
            let _ = inner.perform(turn, effects);
            inner.core.borrow_mut().finish(turn);
        }
        let limits = inner
            .limits()
            .map_err(|e| worker::Error::RustError(e.message))?;
        let sockets = inner.state.get_websockets().len();
        if inner
            .core
            .borrow()
            .expired(inner.store.last_activity(), now, sockets, &limits)
        {
            // Idle past its expiry: the conversation is erased; the object
            // keeps only its binding.
            let _ = inner.clear();
            return Response::ok("expired");
        }
        inner.rearm().await;
        Response::ok("done")
    }

    rpc::refuse_connect!("ChatSession");
}
