//! The `ChatSession` Durable Object: the shell around [`SessionCore`].
//!
//! A turn runs the same way whether it came over SSE or a WebSocket; only the
//! sink of its events differs. Over SSE the object answers at once with a
//! stream of frames and runs the turn beside it; over WebSockets (accepted
//! with the hibernation API, so an idle socket costs no memory) every socket
//! of the session gets every event. History is one SQLite row per message;
//! a turn stores the user message first, each tool round as it completes, and
//! the answer only when it is complete.

use super::core::{context, next_step, SessionCore, Step, CONTEXT_BUDGET_CHARS, SYSTEM_PROMPT};
use super::tools;
use super::FRAMES_CONTENT_TYPE;
use crate::generation::AnyGenerator;
use crate::ingest::providers;
use crate::ingest::IngestHandle;
use crate::ports::{
    ChatMessage, Clock, GenerateRequest, GenerationEvent, Generator, Kv, Role, SystemClock,
    ToolCall,
};
use crate::rpc;
use futures::channel::mpsc;
use protocol::chat::{
    encode_frame, ChatEvent, ChatRequest, ChatResponse, ChatSnapshot, Cleared, HistoryPage,
    StoredMessage, ToolCallRecord, Turn, Usage, DEFAULT_MAX_TOKENS,
};
use protocol::coordinator::DEFAULT_CHAT_MODEL;
use protocol::{ErrorCode, ErrorReply, RequestId, SessionId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{
    durable_object, Env, Headers, Request, Response, Result, SqlStorageValue, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, role TEXT NOT NULL, content TEXT NOT NULL,
        tool_calls TEXT NOT NULL, tool_call_id TEXT, name TEXT, usage TEXT, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS session_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1), tenant TEXT NOT NULL, session TEXT NOT NULL)",
];
const COLUMNS: &str = "seq, role, content, tool_calls, tool_call_id, name, usage, created_at";
/// Messages read back to build the model's context (then trimmed to the budget).
const CONTEXT_ROWS: u32 = 200;
/// In a test deployment (`FAULT_INJECTION`), a message containing this makes
/// the model fail after it has streamed part of its answer.
pub const FAIL_MODEL_MARKER: &str = "[[fail-model]]";
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
}

/// A client's WebSocket frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Message {
        content: String,
        model: Option<String>,
        #[serde(rename = "maxTokens")]
        max_tokens: Option<u32>,
    },
}

struct Inner {
    state: State,
    env: Env,
    core: RefCell<SessionCore>,
    /// The tenant and session this object is bound to, once checked.
    bound: RefCell<Option<(TenantId, SessionId)>>,
}

/// A conversation.
#[durable_object]
pub struct ChatSession {
    inner: Rc<Inner>,
}

fn text(v: &SqlStorageValue) -> Option<String> {
    match v {
        SqlStorageValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &SqlStorageValue) -> u64 {
    match v {
        SqlStorageValue::Integer(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn stored_from_row(row: &[SqlStorageValue]) -> Option<StoredMessage> {
    let [seq, role, content, calls, call_id, name, usage, at] = row else {
        return None;
    };
    Some(StoredMessage {
        seq: int(seq),
        role: text(role)?,
        content: text(content)?,
        tool_calls: serde_json::from_str(&text(calls)?).unwrap_or_default(),
        tool_call_id: text(call_id),
        name: text(name),
        usage: text(usage).and_then(|u| serde_json::from_str(&u).ok()),
        created_at_ms: int(at),
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

impl Inner {
    fn exec(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> std::result::Result<Vec<Vec<SqlStorageValue>>, ErrorReply> {
        let cursor = self
            .state
            .storage()
            .sql()
            .exec(query, bindings)
            .map_err(internal)?;
        cursor.raw().collect::<Result<Vec<_>>>().map_err(internal)
    }

    /// Creates the tables and binds the object to its tenant and session on
    /// first use; refuses any other tenant or session afterwards.
    fn bind(&self, tenant: &TenantId, session: &SessionId) -> std::result::Result<(), ErrorReply> {
        if let Some((t, s)) = self.bound.borrow().as_ref() {
            if t != tenant || s != session {
                return Err(ErrorReply::new(
                    ErrorCode::WrongTenant,
                    "this session belongs to another tenant or session",
                ));
            }
            return Ok(());
        }
        for statement in SCHEMA {
            self.exec(statement, vec![])?;
        }
        let rows = self.exec(
            "SELECT tenant, session FROM session_meta WHERE id = 1",
            vec![],
        )?;
        match rows.first().map(Vec::as_slice) {
            Some([SqlStorageValue::String(t), SqlStorageValue::String(s)]) => {
                if t != tenant.as_str() || s != session.as_str() {
                    return Err(ErrorReply::new(
                        ErrorCode::WrongTenant,
                        "this session belongs to another tenant or session",
                    ));
                }
            }
            _ => {
                self.exec(
                    "INSERT INTO session_meta (id, tenant, session) VALUES (1, ?, ?)",
                    vec![tenant.as_str().into(), session.as_str().into()],
                )?;
            }
        }
        *self.bound.borrow_mut() = Some((tenant.clone(), session.clone()));
        Ok(())
    }

    fn store(&self, m: &ChatMessage, usage: Option<Usage>) -> std::result::Result<u64, ErrorReply> {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let calls: Vec<ToolCallRecord> = m.tool_calls.iter().map(record).collect();
        let rows = self.exec(
            "INSERT INTO messages (role, content, tool_calls, tool_call_id, name, usage, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            vec![
                role.into(),
                m.content.as_str().into(),
                serde_json::to_string(&calls).map_err(internal)?.into(),
                m.tool_call_id.clone().into(),
                m.name.clone().into(),
                usage.and_then(|u| serde_json::to_string(&u).ok()).into(),
                SqlStorageValue::Integer(SystemClock.now_ms() as i64),
            ],
        )?;
        Ok(rows.first().and_then(|r| r.first()).map(int).unwrap_or(0))
    }

    /// Up to `limit` messages before sequence number `before`, oldest first.
    fn page(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> std::result::Result<HistoryPage, ErrorReply> {
        let before = before
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
            .unwrap_or(i64::MAX);
        let rows = self.exec(
            &format!("SELECT {COLUMNS} FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?"),
            vec![
                SqlStorageValue::Integer(before),
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

    fn recent(&self) -> std::result::Result<Vec<ChatMessage>, ErrorReply> {
        let page = self.page(None, CONTEXT_ROWS)?;
        Ok(page.messages.iter().map(to_port).collect())
    }

    fn settings(&self) -> std::result::Result<providers::Settings, ErrorReply> {
        providers::settings(|name| self.env.var(name).ok().map(|v| v.to_string())).map_err(internal)
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

    /// Runs one turn; `sink` gets every event. The caller has called `begin`.
    async fn run_turn(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        turn: Turn,
        sink: &dyn Fn(&ChatEvent),
    ) {
        let outcome = self.turn_steps(tenant, request_id, turn, sink).await;
        if let Err(e) = outcome {
            sink(&e);
        }
        self.core.borrow_mut().end();
    }

    async fn turn_steps(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        turn: Turn,
        sink: &dyn Fn(&ChatEvent),
    ) -> std::result::Result<(), ChatEvent> {
        let storage = |e: ErrorReply| ChatEvent::error("storage_failed", e.message);
        let settings = self.settings().map_err(storage)?;
        let model = if settings.workers_ai {
            self.chat_model(tenant, request_id, &turn).await
        } else {
            crate::generation::embedded::EXTRACTIVE_MODEL.to_owned()
        };
        let generator = AnyGenerator::new(&self.env, settings.workers_ai, &model)
            .map_err(|e| ChatEvent::error("model_unavailable", e.to_string()))?;
        // Tests only (FAULT_INJECTION, embedded generator): a model that fails
        // in the middle of its answer.
        let fail_midway = settings.fault_injection && turn.message.contains(FAIL_MODEL_MARKER);
        let user = ChatMessage {
            role: Role::User,
            content: turn.message.clone(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        };
        self.store(&user, None).map_err(storage)?;
        let mut iteration = 0;
        loop {
            let history = self.recent().map_err(storage)?;
            let request = GenerateRequest {
                model: model.clone(),
                messages: context(SYSTEM_PROMPT, &history, CONTEXT_BUDGET_CHARS),
                tools: tools::specs(),
                max_tokens: turn.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            };
            let mut answer = String::new();
            let mut calls = Vec::new();
            let mut usage = None;
            let generated = generator
                .generate(&request, &mut |event| match event {
                    GenerationEvent::Text(piece) => {
                        sink(&ChatEvent::Message {
                            content: piece.clone(),
                        });
                        answer.push_str(&piece);
                    }
                    GenerationEvent::ToolCall(call) => calls.push(call),
                    GenerationEvent::Usage {
                        prompt_tokens,
                        completion_tokens,
                    } => {
                        usage = Some(Usage {
                            prompt_tokens,
                            completion_tokens,
                        })
                    }
                })
                .await;
            let generated = match generated {
                Ok(()) if fail_midway && iteration > 0 => Err(crate::ports::PortError::Failed {
                    service: "embedded generator",
                    message: "injected failure in the middle of the answer (FAULT_INJECTION)"
                        .into(),
                }),
                other => other,
            };
            // A failed generation stores nothing of its partial answer: the
            // history keeps the user message and every complete tool round.
            generated.map_err(|e| ChatEvent::error("model_failed", e.to_string()))?;
            match next_step(answer, calls, iteration) {
                Step::Answer(text) => {
                    let seq = self
                        .store(
                            &ChatMessage {
                                role: Role::Assistant,
                                content: text,
                                tool_calls: vec![],
                                tool_call_id: None,
                                name: None,
                            },
                            usage,
                        )
                        .map_err(storage)?;
                    sink(&ChatEvent::Done {
                        ok: true,
                        message_seq: seq,
                    });
                    return Ok(());
                }
                Step::LimitReached => {
                    return Err(ChatEvent::error(
                        "tool_limit",
                        "the model kept calling tools; the turn was stopped",
                    ))
                }
                Step::CallTools(calls) => {
                    let mut results = Vec::new();
                    for call in &calls {
                        sink(&ChatEvent::ToolCall {
                            id: call.id.clone(),
                            tool: call.name.clone(),
                            arguments: call.arguments.to_string(),
                        });
                        let (result, is_error) = self.run_tool(tenant, request_id, call).await;
                        sink(&ChatEvent::ToolResult {
                            id: call.id.clone(),
                            tool: call.name.clone(),
                            result: result.to_string(),
                            is_error,
                        });
                        results.push((call, result));
                    }
                    // The round is stored whole: the call, then its results.
                    self.store(
                        &ChatMessage {
                            role: Role::Assistant,
                            content: String::new(),
                            tool_calls: calls.clone(),
                            tool_call_id: None,
                            name: None,
                        },
                        usage,
                    )
                    .map_err(storage)?;
                    for (call, result) in results {
                        self.store(
                            &ChatMessage {
                                role: Role::Tool,
                                content: result.to_string(),
                                tool_calls: vec![],
                                tool_call_id: Some(call.id.clone()),
                                name: Some(call.name.clone()),
                            },
                            None,
                        )
                        .map_err(storage)?;
                    }
                    iteration += 1;
                }
            }
        }
    }

    fn snapshot(&self) -> std::result::Result<ChatSnapshot, ErrorReply> {
        let rows = self.exec("SELECT COUNT(*), MAX(created_at) FROM messages", vec![])?;
        let (count, last) = match rows.first().map(Vec::as_slice) {
            Some([c, l]) => (
                int(c),
                matches!(l, SqlStorageValue::Integer(_)).then(|| int(l)),
            ),
            _ => (0, None),
        };
        let workers_ai = self.settings()?.workers_ai;
        Ok(ChatSnapshot {
            message_count: count,
            last_activity_ms: last,
            connected_sockets: u32::try_from(self.state.get_websockets().len()).unwrap_or(u32::MAX),
            in_flight: self.core.borrow().in_flight(),
            generator: if workers_ai {
                "workers-ai"
            } else {
                crate::generation::embedded::EXTRACTIVE_MODEL
            }
            .to_owned(),
        })
    }
}

/// Sends an event to one socket as JSON text.
fn send_event(ws: &WebSocket, event: &ChatEvent) {
    if let Ok(json) = serde_json::to_string(event) {
        let _ = ws.send_with_str(json);
    }
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
                if inner.core.borrow_mut().begin().is_err() {
                    return reply(Err(ErrorReply::new(
                        ErrorCode::Busy,
                        "this session is still answering an earlier message",
                    )));
                }
                let (tx, rx) = mpsc::unbounded::<std::result::Result<Vec<u8>, worker::Error>>();
                let running = Rc::clone(inner);
                worker::wasm_bindgen_futures::spawn_local(async move {
                    let sink = move |event: &ChatEvent| {
                        if let Ok(frame) = encode_frame(event) {
                            // A client that went away stops reading; the turn
                            // still completes and is stored.
                            let _ = tx.unbounded_send(Ok(frame));
                        }
                    };
                    running.run_turn(&tenant, &rid, turn, &sink).await;
                });
                let headers = Headers::new();
                headers.set("content-type", FRAMES_CONTENT_TYPE)?;
                Ok(Response::from_stream(rx)?.with_headers(headers))
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
                        .and_then(|_| inner.page(get.before, get.limit))
                        .map(ChatResponse::History),
                )
            }
            ChatRequest::Clear(clear) => {
                reply(inner.bind(&tenant, &clear.session_id).and_then(|_| {
                    if inner.core.borrow().in_flight() {
                        return Err(ErrorReply::new(
                            ErrorCode::Busy,
                            "this session is still answering; try again when it is done",
                        ));
                    }
                    let rows = inner.exec("SELECT COUNT(*) FROM messages", vec![])?;
                    let removed = rows.first().and_then(|r| r.first()).map(int).unwrap_or(0);
                    inner.exec("DELETE FROM messages", vec![])?;
                    Ok(ChatResponse::Cleared(Cleared {
                        messages_removed: removed,
                    }))
                }))
            }
            ChatRequest::Inspect(inspect) => reply(
                inner
                    .bind(&tenant, &inspect.session_id)
                    .and_then(|_| inner.snapshot())
                    .map(ChatResponse::Snapshot),
            ),
        }
    }

    /// `GET /ws?tenant=..&session=..` with `Upgrade: websocket`, forwarded by
    /// the gateway after it validated both.
    fn accept(&self, req: &Request) -> Result<Response> {
        let bad = |msg: &str| Response::error(msg, 400);
        if !req
            .headers()
            .get("upgrade")?
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return bad("expected a WebSocket upgrade");
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
            return bad("tenant and session are required");
        };
        if let Err(e) = self.inner.bind(&tenant, &session) {
            let status = if e.code == ErrorCode::WrongTenant {
                403
            } else {
                503
            };
            let body = serde_json::json!({ "error": { "code": "session_unavailable", "message": e.message } });
            let headers = Headers::new();
            headers.set("content-type", "application/json")?;
            return Ok(Response::from_bytes(body.to_string().into_bytes())?
                .with_status(status)
                .with_headers(headers));
        }
        let pair = WebSocketPair::new()?;
        self.inner.state.accept_web_socket(&pair.server);
        pair.server
            .serialize_attachment(SocketInfo { tenant, session })?;
        Response::from_websocket(pair.client)
    }
}

impl worker::DurableObject for ChatSession {
    fn new(state: State, env: Env) -> Self {
        Self {
            inner: Rc::new(Inner {
                state,
                env,
                core: RefCell::new(SessionCore::default()),
                bound: RefCell::new(None),
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
        let reject = |code: &str, msg: &str| send_event(&ws, &ChatEvent::error(code, msg));
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
                    &format!("expected {{\"type\":\"message\",\"content\":\"...\"}}: {e}"),
                );
                return Ok(());
            }
        };
        let ClientFrame::Message {
            content,
            model,
            max_tokens,
        } = frame;
        let turn = Turn {
            session_id: info.session.clone(),
            message: content,
            model,
            max_tokens,
        };
        if let Err(e) = turn.validate() {
            reject("invalid_message", &e.to_string());
            return Ok(());
        }
        if self.inner.core.borrow_mut().begin().is_err() {
            reject("busy", "this session is still answering an earlier message");
            return Ok(());
        }
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let inner = Rc::clone(&self.inner);
        let sink = move |event: &ChatEvent| {
            for socket in inner.state.get_websockets() {
                send_event(&socket, event);
            }
        };
        self.inner
            .run_turn(&info.tenant, &request_id, turn, &sink)
            .await;
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
}
