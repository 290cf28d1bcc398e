//! The typed handle through which the gateway talks to a chat session.

use super::{BINDING, FRAMES_CONTENT_TYPE};
use crate::error::ActorError;
use crate::rpc::{self, reply_as, ActorStub, NamedReply};
use futures::stream::{self, LocalBoxStream, StreamExt};
use protocol::chat::{
    Access, ChatRequest, ChatResponse, ChatSnapshot, ClearHistory, Cleared, FrameDecoder,
    GetHistory, HistoryPage, Inspect, Resume, Turn, TurnFrame, UpToDate,
};
use protocol::completion::{Complete, CompletionFrame};
use protocol::{Envelope, RequestId, SessionId, TenantId};
use worker::{ByteStream, Env, Headers, Method, Request, RequestInit, Response};

impl NamedReply for ChatResponse {
    fn variant(&self) -> &'static str {
        match self {
            ChatResponse::History(_) => "History",
            ChatResponse::Cleared(_) => "Cleared",
            ChatResponse::Snapshot(_) => "Snapshot",
            ChatResponse::UpToDate(_) => "UpToDate",
        }
    }
}

/// A chat session, reached by its name `${tenantId}:${sessionId}`.
pub struct ChatHandle {
    actor: ActorStub,
    session: SessionId,
    access: Access,
}

/// A turn's events, decoded, as they are produced. A stream that breaks
/// yields one error and ends.
pub type TurnStream = LocalBoxStream<'static, Result<TurnFrame, ActorError>>;

/// The answer to a resume.
pub enum Resumed {
    /// The events after the client's last one, then the live ones.
    Stream(TurnStream),
    /// The client already has every event and nothing runs.
    UpToDate(UpToDate),
}

/// A completion's events, decoded, as they are produced.
pub type CompletionStream = LocalBoxStream<'static, Result<CompletionFrame, ActorError>>;

/// Decodes a session's frame bytes into frames, whatever the chunking.
fn decode_frames<T: serde::de::DeserializeOwned + 'static>(
    bytes: ByteStream,
) -> LocalBoxStream<'static, Result<T, ActorError>> {
    struct State<T> {
        bytes: ByteStream,
        decoder: FrameDecoder,
        ready: std::collections::VecDeque<T>,
        done: bool,
    }
    let state = State {
        bytes,
        decoder: FrameDecoder::new(),
        ready: Default::default(),
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.ready.pop_front() {
                return Some((Ok(frame), st));
            }
            if st.done {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => match st.decoder.push_as(&chunk) {
                    Ok(frames) => st.ready.extend(frames),
                    Err(e) => {
                        st.done = true;
                        return Some((Err(ActorError::Protocol(e)), st));
                    }
                },
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(ActorError::from(e)), st));
                }
                None => return None,
            }
        }
    })
    .boxed_local()
}

impl ChatHandle {
    /// The session `session` of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId, session: &SessionId) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, session.as_str(), tenant)?,
            session: session.clone(),
            access: Access::default(),
        })
    }

    /// The same session, asked by `access` (the gateway's finding of who
    /// calls); without it, an anonymous caller.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Sends a request answered by a stream of frames, or by a reply.
    async fn stream_or_reply<T: serde::de::DeserializeOwned + 'static>(
        &self,
        request_id: &RequestId,
        message: ChatRequest,
    ) -> Result<Result<LocalBoxStream<'static, Result<T, ActorError>>, ChatResponse>, ActorError>
    {
        let envelope = Envelope::new(request_id.clone(), self.actor.tenant().clone(), message);
        let mut response = rpc::post(self.actor.stub(), &envelope).await?;
        let content_type = response.headers().get("content-type")?.unwrap_or_default();
        if content_type == FRAMES_CONTENT_TYPE {
            return Ok(Ok(decode_frames(response.stream()?)));
        }
        let bytes = response.bytes().await?;
        let reply: protocol::ReplyEnvelope<ChatResponse> = protocol::decode_reply(&bytes)?;
        reply.reply.map(Err).map_err(ActorError::Refused)
    }

    /// Starts a turn; the stream yields its events as they happen. A refusal
    /// before the turn starts (busy, invalid, full) is an error instead.
    pub async fn turn(
        &self,
        request_id: &RequestId,
        mut turn: Turn,
    ) -> Result<TurnStream, ActorError> {
        turn.access = self.access.clone();
        match self
            .stream_or_reply(request_id, ChatRequest::Turn(turn))
            .await?
        {
            Ok(stream) => Ok(stream),
            Err(reply) => Err(ActorError::UnexpectedReply {
                expected: "a stream of events",
                got: reply.variant(),
            }),
        }
    }

    /// Runs a stateless completion in this object; the stream yields its
    /// events as they happen. A refusal before it starts is an error instead.
    pub async fn complete(
        &self,
        request_id: &RequestId,
        mut complete: Complete,
    ) -> Result<CompletionStream, ActorError> {
        complete.access = self.access.clone();
        match self
            .stream_or_reply(request_id, ChatRequest::Complete(complete))
            .await?
        {
            Ok(stream) => Ok(stream),
            Err(reply) => Err(ActorError::UnexpectedReply {
                expected: "a stream of completion events",
                got: reply.variant(),
            }),
        }
    }

    /// The events after `after` (the latest turn's, without it), then the
    /// running turn's as they happen.
    pub async fn resume(
        &self,
        request_id: &RequestId,
        after: Option<u64>,
    ) -> Result<Resumed, ActorError> {
        let message = ChatRequest::Resume(Resume {
            session_id: self.session.clone(),
            access: self.access.clone(),
            after,
        });
        match self.stream_or_reply(request_id, message).await? {
            Ok(stream) => Ok(Resumed::Stream(stream)),
            Err(reply) => reply_as!(reply, ChatResponse::UpToDate).map(Resumed::UpToDate),
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
            access: self.access.clone(),
            before,
            limit,
        });
        reply_as!(
            self.actor.send(request_id, message).await?,
            ChatResponse::History
        )
    }

    /// Erases the history.
    pub async fn clear(&self, request_id: &RequestId) -> Result<Cleared, ActorError> {
        let message = ChatRequest::Clear(ClearHistory {
            session_id: self.session.clone(),
            access: self.access.clone(),
        });
        reply_as!(
            self.actor.send(request_id, message).await?,
            ChatResponse::Cleared
        )
    }

    /// The session's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<ChatSnapshot, ActorError> {
        let message = ChatRequest::Inspect(Inspect {
            session_id: self.session.clone(),
            access: self.access.clone(),
        });
        reply_as!(
            self.actor.send(request_id, message).await?,
            ChatResponse::Snapshot
        )
    }

    /// Hands a client's WebSocket upgrade to the session object: the `101`
    /// response to return, or the session's refusal as an error.
    /// `key_checked_at` is when the key's verification was fetched from the
    /// coordinator (ms since the epoch): the socket's next check falls due
    /// a second after it.
    /// `limits`: what the socket's turns are admitted with, if limits apply.
    pub async fn connect(
        &self,
        key_checked_at: Option<u64>,
        limits: Option<&crate::limiter::admission::Applied>,
    ) -> Result<Response, ActorError> {
        let headers = Headers::new();
        headers.set("upgrade", "websocket")?;
        let mut url = format!(
            "https://actor.internal/ws?tenant={}&session={}",
            self.actor.tenant().as_str(),
            self.session.as_str()
        );
        // Built here, never by a client: key ids and user ids are validated
        // (hex; the session id's alphabet), so they need no escaping.
        if let Some(key) = &self.access.key {
            url.push_str(&format!("&key={key}"));
        }
        if let Some(user) = &self.access.user {
            url.push_str(&format!("&user={user}"));
        }
        if self.access.privileged {
            url.push_str("&privileged=1");
        }
        if let Some(proof) = &self.access.proof {
            // In a header: the runtime may print the URL.
            headers.set(super::socket::PROOF_HEADER, proof)?;
            if let Some(at) = key_checked_at {
                url.push_str(&format!("&checked={at}"));
            }
        }
        if let Some(limits) = limits {
            let json = serde_json::to_string(limits)
                .map_err(|e| ActorError::Runtime(format!("limits not encoded: {e}")))?;
            let mut parsed = worker::Url::parse(&url)
                .map_err(|e| ActorError::Runtime(format!("bad actor url: {e}")))?;
            parsed.query_pairs_mut().append_pair("limits", &json);
            url = parsed.to_string();
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        let request = Request::new_with_init(&url, &init)?;
        let mut response = self.actor.stub().fetch_with_request(request).await?;
        if response.status_code() == 101 {
            return Ok(response);
        }
        let bytes = response.bytes().await?;
        let reply: protocol::ReplyEnvelope<ChatResponse> = protocol::decode_reply(&bytes)?;
        match reply.reply {
            Err(refusal) => Err(ActorError::Refused(refusal)),
            Ok(reply) => Err(ActorError::UnexpectedReply {
                expected: "a WebSocket",
                got: reply.variant(),
            }),
        }
    }
}
