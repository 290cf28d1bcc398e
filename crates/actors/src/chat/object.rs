//! The `ChatSession` Durable Object's entry points: requests (turns, resumes,
//! history, erase, inspection), WebSocket upgrades and frames, and the alarm.
//! Each decodes, asks the pure modules ([`super::core`], [`super::socket`])
//! and hands the I/O to the runtime ([`super::runtime`]).
//!
//! The shell stores, sends and calls; the cores decide. A turn runs the same
//! way whichever client started it: its events are stored (`turn_events`,
//! each under the session's next sequence id) and then sent to every listener
//! of the turn: the SSE stream that started it, any stream that resumed it,
//! and every WebSocket of the session. The turn itself runs beside the
//! request that started it (`waitUntil`), so a client that goes away does not
//! stop it; its durable state (`turns`) and the alarm finish or fail a turn
//! whose isolate was reset. History is one SQLite row per message.

use super::core::{Action, Arming, SessionCore};
use super::events::EventIds;
use super::runtime::{key_verified, send_rejection, FrameReceiver, Inner, Listener, ResumeAnswer};
use super::socket::{
    close_code, may_attach, read_frame, refused_turn, socket_turn, ClientFrame, KeyChecks,
    Rejected, SocketInfo, Upgrade, PROOF_HEADER,
};
use super::store::SessionStore;
use super::FRAMES_CONTENT_TYPE;
use crate::rpc;
use futures::channel::mpsc;
use protocol::chat::{encode_frame_or_stand_in, ChatRequest, ChatResponse};
use protocol::{ErrorCode, ErrorReply, RequestId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{
    durable_object, Env, Headers, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

/// A conversation.
#[durable_object]
pub struct ChatSession {
    inner: Rc<Inner>,
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
                // Read before the turn is stored: see
                // `Inner::tenant_settings`.
                let settings = inner.tenant_settings(&tenant, &rid).await;
                let (tx, rx) = mpsc::unbounded();
                match inner.begin(&tenant, &rid, turn, Some(tx), settings) {
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
                        let mut whole = true;
                        for frame in &frames {
                            match encode_frame_or_stand_in(frame) {
                                Ok(bytes) => {
                                    let _ = tx.unbounded_send(Ok(bytes));
                                }
                                // Never a gap: the replay ends here with an
                                // error, after the last event it could send.
                                Err(e) => {
                                    let message =
                                        format!("event {} could not be sent: {e}", frame.id);
                                    let _ =
                                        tx.unbounded_send(Err(worker::Error::RustError(message)));
                                    whole = false;
                                    break;
                                }
                            }
                        }
                        // Registered in the same step as the replay read: the
                        // next event it gets is the one after the replay.
                        if let (true, Some(turn)) = (whole, follow) {
                            inner.listeners.borrow_mut().push(Listener { turn, tx });
                        }
                        frames_response(rx)
                    }
                    Ok(ResumeAnswer::UpToDate(u)) => reply(Ok(ChatResponse::UpToDate(u))),
                    Err(e) => reply(Err(e)),
                }
            }
            ChatRequest::Complete(complete) => {
                if let Err(e) = complete.validate() {
                    return reply(Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        e.to_string(),
                    )));
                }
                if let Err(e) = inner.bind(&tenant, &complete.session_id) {
                    return reply(Err(e));
                }
                let (tx, rx) = mpsc::unbounded();
                // Like a turn, it runs beside the request: a client that goes
                // away does not stop its accounting.
                let running = Rc::clone(inner);
                inner
                    .state
                    .wait_until(running.complete(tenant, rid, complete, tx));
                frames_response(rx)
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
            ChatRequest::Clear(clear) => {
                let erased = inner
                    .bind(&tenant, &clear.session_id)
                    .and_then(|()| inner.allow(&clear.access, Action::Erase))
                    .and_then(|()| inner.store.max_turn_id())
                    .and_then(|version| inner.clear().map(|cleared| (version, cleared)));
                match erased {
                    Ok((version, cleared)) => {
                        // Awaited (an erase is not on a turn's path), so a
                        // listing right after the answer no longer shows it;
                        // a failure is logged, the erase stands.
                        inner.report_erased(&tenant, &rid, version).await;
                        reply(Ok(cleared))
                    }
                    Err(e) => reply(Err(e)),
                }
            }
            ChatRequest::Inspect(inspect) => {
                let alarm = match inner.state.storage().get_alarm().await {
                    Ok(at) => at.and_then(|ms| u64::try_from(ms).ok()),
                    Err(e) => {
                        return reply(Err(ErrorReply::new(ErrorCode::Internal, e.to_string())))
                    }
                };
                reply(
                    inner
                        .bind(&tenant, &inspect.session_id)
                        .and_then(|_| inner.snapshot(alarm))
                        .map(ChatResponse::Snapshot),
                )
            }
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
        let Some(Upgrade {
            tenant,
            session,
            mut access,
            key_checked_at,
            limits,
        }) = Upgrade::from_query(url.query_pairs())
        else {
            return refuse(ErrorCode::Protocol, "tenant and session are required");
        };
        access.proof = req.headers().get(PROOF_HEADER)?;
        let attach = self.inner.bind(&tenant, &session).and_then(|()| {
            if may_attach(self.inner.store.owner()?.as_ref(), &access) {
                Ok(())
            } else {
                Err(ErrorReply::new(ErrorCode::NotFound, "no such session"))
            }
        });
        if let Err(e) = attach {
            return Ok(rpc::reply_response::<ChatResponse>(None, Err(e)));
        }
        // The gateway has just verified the key: the socket's first check is
        // due a second after that, not at its first message (fifty new
        // sockets would otherwise ask the tenant's coordinator fifty times).
        if let (Some(key), Some(proof), Some(at)) = (&access.key, &access.proof, key_checked_at) {
            key_verified(&KeyChecks::name(&tenant, key, proof), at, self.inner.now());
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
            limits,
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
                turn_prices: RefCell::new(None),
                bound: RefCell::new(None),
                listeners: RefCell::new(Vec::new()),
                alarm_at: Cell::new(None),
                events: RefCell::new(EventIds::default()),
                arming: RefCell::new(Arming::default()),
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
        let reject = |rejected: Rejected| send_rejection(&ws, &rejected);
        let Ok(Some(info)) = ws.deserialize_attachment::<SocketInfo>() else {
            reject(Rejected::new("not_bound", "this socket has no session"));
            return Ok(());
        };
        let frame = match &message {
            WebSocketIncomingMessage::String(text) => read_frame(Some(text)),
            WebSocketIncomingMessage::Binary(_) => read_frame(None),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(rejected) => {
                reject(rejected);
                return Ok(());
            }
        };
        if let Err(e) = self.inner.bind(&info.tenant, &info.session) {
            reject(Rejected::new("session_unavailable", e.message));
            return Ok(());
        }
        // The key was checked when the socket connected; a socket lives for
        // hours, so it is checked again (at most once a second).
        if !self.inner.key_still_valid(&info).await {
            reject(Rejected::new(
                "invalid_key",
                "the key this socket connected with is no longer valid",
            ));
            let _ = ws.close(Some(4001), Some("invalid key"));
            return Ok(());
        }
        let turn = match frame {
            ClientFrame::Message {
                content,
                model,
                max_tokens,
            } => socket_turn(&info, content, model, max_tokens),
            ClientFrame::Resume { after } => {
                self.inner.resume_socket(&ws, &info, after);
                return Ok(());
            }
        };
        let mut turn = match turn {
            Ok(turn) => turn,
            Err(rejected) => {
                reject(rejected);
                return Ok(());
            }
        };
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let settings = self.inner.tenant_settings(&info.tenant, &request_id).await;
        // Admitted like a `POST /api/chat` turn, with the limits the socket
        // was admitted with, kept current with the key's and the tenant's:
        // a socket is no way around them.
        if let Some(applied) = &self.inner.socket_limits(&info, settings.as_ref()) {
            match self
                .inner
                .admit_turn(&info.tenant, &request_id, applied, &turn, settings.as_ref())
                .await
            {
                Ok(reservation) => turn.reservation = reservation,
                Err(rejected) => {
                    reject(rejected);
                    return Ok(());
                }
            }
        }
        let reservation = turn.reservation.clone();
        match self
            .inner
            .begin(&info.tenant, &request_id, turn, None, settings)
        {
            Ok((ctx, waiting)) => {
                let running = Rc::clone(&self.inner);
                self.inner.state.wait_until(running.drive(ctx, waiting));
            }
            Err(e) => {
                // The turn never started: its slot and estimate go back.
                if let Some(reservation) = reservation {
                    self.inner
                        .release(&info.tenant, &request_id, &reservation)
                        .await;
                }
                reject(refused_turn(&e));
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
        let _ = ws.close(Some(close_code(code)), Some(reason));
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
        // Woken with nothing in memory, the binding comes from storage.
        let binding = inner
            .bind_stored()
            .map_err(|e| worker::Error::RustError(e.message))?;
        let Some((tenant, session)) = binding else {
            return Response::ok("nothing stored");
        };
        let now = inner.now();
        let (turn, effects) = inner.core.borrow_mut().on_alarm(now);
        crate::observe::event(
            "alarm",
            "chat",
            Some(tenant.as_str()),
            serde_json::json!({"sessionId": session.as_str(), "endsTurn": turn}),
        );
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
            let version = inner.store.max_turn_id().unwrap_or(0);
            if inner.clear().is_ok() {
                crate::observe::event(
                    "session_expired",
                    "chat",
                    Some(tenant.as_str()),
                    serde_json::json!({"sessionId": session.as_str()}),
                );
                let request_id = RequestId::from_random(crate::entropy::random_bytes());
                inner.report_erased(&tenant, &request_id, version).await;
            }
            return Response::ok("expired");
        }
        inner.rearm().await;
        Response::ok("done")
    }

    rpc::refuse_connect!("ChatSession");
}
