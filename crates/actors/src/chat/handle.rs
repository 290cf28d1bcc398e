//! The typed handle through which the gateway talks to a chat session.

use super::{BINDING, FRAMES_CONTENT_TYPE};
use crate::error::ActorError;
use crate::rpc::{self, ActorStub};
use protocol::chat::{
    ChatRequest, ChatResponse, ChatSnapshot, ClearHistory, Cleared, GetHistory, HistoryPage,
    Inspect, Turn,
};
use protocol::{Envelope, RequestId, SessionId, TenantId};
use worker::{ByteStream, Env, Headers, Method, Request, RequestInit, Response};

/// A chat session, reached by its name `${tenantId}:${sessionId}`.
pub struct ChatHandle {
    actor: ActorStub,
    session: SessionId,
}

/// A turn's event frames, as they are produced (decode with
/// `protocol::chat::FrameDecoder`).
pub type TurnStream = ByteStream;

impl ChatHandle {
    /// The session `session` of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId, session: &SessionId) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, session.as_str(), tenant)?,
            session: session.clone(),
        })
    }

    /// Starts a turn; the stream yields its events as they happen. A refusal
    /// before the turn starts (busy, invalid) is an error instead.
    pub async fn turn(&self, request_id: &RequestId, turn: Turn) -> Result<TurnStream, ActorError> {
        let envelope = Envelope::new(
            request_id.clone(),
            self.actor.tenant().clone(),
            ChatRequest::Turn(turn),
        );
        let mut response = rpc::post(self.actor.stub(), &envelope).await?;
        let content_type = response.headers().get("content-type")?.unwrap_or_default();
        if content_type == FRAMES_CONTENT_TYPE {
            return Ok(response.stream()?);
        }
        let bytes = response.bytes().await?;
        let reply: protocol::ReplyEnvelope<ChatResponse> = protocol::decode_reply(&bytes)?;
        match reply.reply {
            Err(refusal) => Err(ActorError::Refused(refusal)),
            Ok(_) => Err(ActorError::UnexpectedReply {
                expected: "a stream of events",
                got: "a reply",
            }),
        }
    }

    /// A page of history.
    pub async fn history(
        &self,
        request_id: &RequestId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, ActorError> {
        let message = ChatRequest::History(GetHistory {
            session_id: self.session.clone(),
            before,
            limit,
        });
        match self.actor.send(request_id, message).await? {
            ChatResponse::History(page) => Ok(page),
            _ => Err(unexpected("History")),
        }
    }

    /// Erases the history.
    pub async fn clear(&self, request_id: &RequestId) -> Result<Cleared, ActorError> {
        let message = ChatRequest::Clear(ClearHistory {
            session_id: self.session.clone(),
        });
        match self.actor.send(request_id, message).await? {
            ChatResponse::Cleared(c) => Ok(c),
            _ => Err(unexpected("Cleared")),
        }
    }

    /// The session's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<ChatSnapshot, ActorError> {
        let message = ChatRequest::Inspect(Inspect {
            session_id: self.session.clone(),
        });
        match self.actor.send(request_id, message).await? {
            ChatResponse::Snapshot(s) => Ok(s),
            _ => Err(unexpected("Snapshot")),
        }
    }

    /// Hands a client's WebSocket upgrade to the session object.
    pub async fn connect(&self) -> Result<Response, ActorError> {
        let headers = Headers::new();
        headers.set("upgrade", "websocket")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        let url = format!(
            "https://actor.internal/ws?tenant={}&session={}",
            self.actor.tenant().as_str(),
            self.session.as_str()
        );
        let request = Request::new_with_init(&url, &init)?;
        Ok(self.actor.stub().fetch_with_request(request).await?)
    }
}

fn unexpected(expected: &'static str) -> ActorError {
    ActorError::UnexpectedReply {
        expected,
        got: "another reply",
    }
}
