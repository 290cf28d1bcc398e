//! Messages of the `ChatSession` actor (`${tenantId}:${sessionId}`), and the
//! frames in which it streams a turn's events to the gateway.
//!
//! A turn is streamed as a sequence of frames, each a big-endian `u32` length
//! and a named-MessagePack [`TurnFrame`] (a [`ChatEvent`] with the sequence id
//! under which the session stored it); [`FrameDecoder`] reassembles them from
//! chunks of any size. The gateway turns each frame into one SSE event whose
//! `id:` is the sequence id, so a client that lost the stream resumes after
//! the last id it saw ([`ChatRequest::Resume`]); WebSocket clients get the
//! same events as JSON text frames with an `eventId` field.

use crate::error::ProtocolError;
use crate::ids::SessionId;
use serde::{Deserialize, Serialize};

/// Longest user message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 8000;
/// Largest `maxTokens` a request may ask for.
pub const MAX_MAX_TOKENS: u32 = 2048;
/// `maxTokens` when a request names none.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// Largest frame accepted by [`FrameDecoder`].
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Most history messages in one page.
pub const MAX_HISTORY_PAGE: u32 = 200;

/// A request to a chat session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChatRequest {
    /// A user message; answered by a stream of frames.
    Turn(Turn),
    /// A page of the history.
    History(GetHistory),
    /// Erase the history.
    Clear(ClearHistory),
    /// An operator's look at the session.
    Inspect(Inspect),
    /// Replay a turn's events after a sequence id, then follow it live;
    /// answered by a stream of frames, or [`ChatResponse::UpToDate`].
    Resume(Resume),
    /// A stateless completion in the OpenAI style; answered by a stream of
    /// [`crate::completion::CompletionFrame`]s. Nothing is stored.
    Complete(crate::completion::Complete),
}

/// Payload of [`ChatRequest::Resume`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The session.
    pub session_id: SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
    /// The last event id the client has (`Last-Event-ID`); `None` replays the
    /// latest turn from its start.
    pub after: Option<u64>,
}

/// Who is asking, as the gateway established it: the key (or none, for an
/// anonymous request of a tenant that allows them), the end user the request
/// names inside that key, and whether the caller may see every session of
/// the tenant (the operator, or a key with the `admin` scope).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The key id; `None` for an anonymous request.
    pub key: Option<String>,
    /// The end user (`x-user-id`), inside the key.
    pub user: Option<String>,
    /// May read and erase any session of the tenant (not chat in it).
    pub privileged: bool,
    /// The SHA-256 of the key's secret (never the secret), so that a
    /// long-lived WebSocket re-checks its key before every message: a key
    /// revoked or rotated after the socket connected stops working there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Payload of [`ChatRequest::Turn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// The session.
    pub session_id: SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
    /// The user's message.
    pub message: String,
    /// A model other than the tenant's default.
    pub model: Option<String>,
    /// The answer's token budget.
    pub max_tokens: Option<u32>,
    /// What the gateway reserved for this turn at the caller's limiter:
    /// settled with the turn's usage when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<TurnReservation>,
}

/// What a turn's model calls used, as its `done` event reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnUsage {
    /// Prompt tokens, summed over the turn's model calls.
    pub input_tokens: u64,
    /// Generated tokens, summed.
    pub output_tokens: u64,
    /// Their cost in micro-dollars, by the tenant's price of the model that
    /// served the turn; absent where that model is unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
}

impl TurnUsage {
    /// `tokens`, priced at `price` if the model has one.
    pub fn new(tokens: crate::limits::TokenUsage, price: Option<crate::limits::Price>) -> Self {
        Self {
            input_tokens: tokens.input_tokens,
            output_tokens: tokens.output_tokens,
            cost_micros: price.map(|p| p.cost_micros(tokens)),
        }
    }
}

/// A reservation at a `RateLimiter`, held by a turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnReservation {
    /// The limiter's resource name (`limiter:<keyId>` or
    /// `limiter:anon-<digest>`), in the turn's tenant.
    pub limiter: String,
    /// The reservation id.
    pub id: u64,
    /// The model it was admitted for (priced when the turn settles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The reservation at the tenant's budget limiter
    /// (`limiter:tenant-budget`), when the tenant has a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<u64>,
}

/// Whether `name` is the resource name of a caller's limiter
/// (`limiter:<keyId>`, `limiter:anon-<digest>`), and nothing else of the
/// tenant's.
pub fn valid_limiter_name(name: &str) -> bool {
    name.strip_prefix("limiter:").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 80
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// The resource name of the limiter that counts a tenant's budgets.
pub const TENANT_BUDGET_LIMITER: &str = "limiter:tenant-budget";

impl TurnReservation {
    /// Whether `limiter` names a caller's limiter (and nothing else).
    pub fn valid(&self) -> bool {
        valid_limiter_name(&self.limiter)
    }

    /// Every reservation the turn holds: `(limiter, reservation id)`, the
    /// caller's and the tenant budget's.
    pub fn held(&self) -> Vec<(&str, u64)> {
        let mut held = vec![(self.limiter.as_str(), self.id)];
        if let Some(id) = self.tenant {
            held.push((TENANT_BUDGET_LIMITER, id));
        }
        held
    }
}

/// Payload of [`ChatRequest::History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHistory {
    /// The session.
    pub session_id: SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
    /// Only messages with a sequence number below this (for the next page).
    pub before: Option<u64>,
    /// Most messages to return (1 to [`MAX_HISTORY_PAGE`]).
    pub limit: u32,
}

/// Payload of [`ChatRequest::Clear`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearHistory {
    /// The session.
    pub session_id: SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
}

/// Payload of [`ChatRequest::Inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {
    /// The session.
    pub session_id: SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
}

/// A non-streamed reply of a chat session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChatResponse {
    /// Answers `History`.
    History(HistoryPage),
    /// Answers `Clear`.
    Cleared(Cleared),
    /// Answers `Inspect`.
    Snapshot(ChatSnapshot),
    /// Answers `Resume` when the client already has every event of a turn
    /// that has ended: there is nothing to send.
    UpToDate(UpToDate),
}

/// The answer to a `Resume` with nothing left to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpToDate {
    /// The session's last event id.
    pub last_event_id: u64,
}

/// Where a turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// Being answered.
    Running,
    /// Answered and stored.
    Done,
    /// Ended with an error (model failure, timeout, interrupted); the history
    /// keeps the user message and every complete tool round, no partial answer.
    Failed,
}

/// A turn as the history shows it, on the user message that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnInfo {
    /// The turn's id within the session.
    pub id: u64,
    /// Where it is.
    pub status: TurnStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnError>,
}

/// Why a turn failed (the `code` and `message` of its `error` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnError {
    /// Machine-readable code.
    pub code: String,
    /// Human explanation.
    pub message: String,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    /// Position in the session, from 1.
    pub seq: u64,
    /// `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (for a tool message, the result as JSON).
    pub content: String,
    /// Tool calls of an assistant message.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    /// The tool of a tool message.
    pub name: Option<String>,
    /// Token usage of an assistant message, when the model reported it.
    pub usage: Option<Usage>,
    /// When it was stored (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// On a user message: the turn it started, and how that turn ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnInfo>,
}

/// A tool call as stored and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The call's id.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// The messages.
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` for the previous page; `None` at the start.
    pub next_before: Option<u64>,
}

/// The answer to `Clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleared {
    /// Messages erased.
    pub messages_removed: u64,
}

/// An operator's view of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSnapshot {
    /// Messages stored.
    pub message_count: u64,
    /// When the last message was stored.
    pub last_activity_ms: Option<u64>,
    /// WebSockets connected now.
    pub connected_sockets: u32,
    /// Whether a turn is being answered.
    pub in_flight: bool,
    /// The generator in use.
    pub generator: String,
    /// The latest turn, if any.
    #[serde(default)]
    pub latest_turn: Option<TurnInfo>,
    /// The last event id stored (what a client that saw everything has).
    #[serde(default)]
    pub last_event_id: Option<u64>,
    /// When the object's alarm runs next (ms since the epoch): a running
    /// turn's deadline, an ended turn's deadline not yet passed (the alarm
    /// then sets the next one), or the session's idle expiry; none before
    /// its first turn, nor in the first second of it (a session's alarm is
    /// written a second after a turn began).
    #[serde(default)]
    pub alarm_at_ms: Option<u64>,
}

/// One event of a turn, in order: any number of `tool_call` / `tool_result`
/// pairs, `message` pieces, then `done` (or `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The model called a tool.
    ToolCall {
        /// The call's id.
        id: String,
        /// The tool.
        tool: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// A tool's result.
    ToolResult {
        /// The call it answers.
        id: String,
        /// The tool.
        tool: String,
        /// The result, as JSON text. On the wire (JSON and MessagePack)
        /// it is the JSON value itself, an object for the built-in tools,
        /// so clients need not parse a string; text that is not JSON goes
        /// as a string ([`result_json`]).
        #[serde(with = "result_json")]
        result: String,
        /// Whether the tool refused or failed. `isError` in JSON, like
        /// every field of the API; `is_error` (what earlier versions stored
        /// and sent) still decodes.
        #[serde(rename = "isError", alias = "is_error")]
        is_error: bool,
    },
    /// A piece of the answer.
    Message {
        /// The text of this piece.
        content: String,
    },
    /// The answer is complete and stored.
    Done {
        /// Always true.
        ok: bool,
        /// Sequence number of the stored answer: `messageSeq` in JSON
        /// (`message_seq`, what earlier versions stored and sent, still
        /// decodes).
        #[serde(rename = "messageSeq", alias = "message_seq")]
        message_seq: u64,
        /// Tokens the turn's model calls used, summed (`inputTokens`,
        /// `outputTokens`), and their cost where the model is priced
        /// (`costMicros`); absent when the model reported none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<TurnUsage>,
        /// The model that served the answer (a fallback when the tenant's
        /// default failed); absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// The turn failed; what was stored stays consistent.
    Error {
        /// Machine-readable code.
        code: String,
        /// Human explanation.
        message: String,
    },
}

/// A tool result (JSON text, as the session stores it and the model reads
/// it) as the JSON value clients get: the value the text holds, or the text
/// itself as a JSON string when it is not JSON.
pub fn tool_result_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// How [`ChatEvent::ToolResult`]'s `result` (JSON text in Rust) crosses the
/// wire: as the JSON value the text holds ([`tool_result_value`]). Decoding
/// takes a value back to its text; a string is taken as the text itself,
/// which is what events stored and sent before results were values hold
/// (JSON text inside a string), so they decode to the same result.
pub mod result_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the text as the JSON value it holds.
    pub fn serialize<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
        super::tool_result_value(text).serialize(serializer)
    }

    /// Reads a JSON value (or the string of an earlier version) back as text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Ok(match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => text,
            value => value.to_string(),
        })
    }
}

impl ChatEvent {
    /// The SSE event name (`tool_call`, `tool_result`, `message`, `done`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            ChatEvent::ToolCall { .. } => "tool_call",
            ChatEvent::ToolResult { .. } => "tool_result",
            ChatEvent::Message { .. } => "message",
            ChatEvent::Done { .. } => "done",
            ChatEvent::Error { .. } => "error",
        }
    }

    /// An `error` event.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ChatEvent::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Why a turn or history request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The message is empty or too long.
    #[error("message must be 1 to {MAX_MESSAGE_CHARS} characters")]
    Message,
    /// `maxTokens` out of range.
    #[error("maxTokens must be between 1 and {MAX_MAX_TOKENS}")]
    MaxTokens,
    /// The model name is not acceptable.
    #[error("model must be 1 to 128 characters of A-Z a-z 0-9 @ . _ / : -")]
    Model,
    /// The page size is out of range.
    #[error("limit must be between 1 and {MAX_HISTORY_PAGE}")]
    Limit,
}

impl Turn {
    /// Checks the message, model and token budget.
    pub fn validate(&self) -> Result<(), ChatError> {
        let chars = self.message.trim().chars().count();
        if chars == 0 || self.message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ChatError::Message);
        }
        if self
            .max_tokens
            .is_some_and(|t| t == 0 || t > MAX_MAX_TOKENS)
        {
            return Err(ChatError::MaxTokens);
        }
        if let Some(model) = &self.model {
            let ok = !model.is_empty()
                && model.len() <= 128
                && model
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@._/:-".contains(&b));
            if !ok {
                return Err(ChatError::Model);
            }
        }
        Ok(())
    }
}

impl GetHistory {
    /// Checks the page size.
    pub fn validate(&self) -> Result<(), ChatError> {
        if self.limit == 0 || self.limit > MAX_HISTORY_PAGE {
            return Err(ChatError::Limit);
        }
        Ok(())
    }
}

/// One event of a turn as streamed: the event and the sequence id the session
/// stored it under (ids grow across the session's turns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnFrame {
    /// The event's sequence id (the SSE `id:`).
    pub id: u64,
    /// The event.
    pub event: ChatEvent,
}

/// Encodes one frame: big-endian `u32` length, then named MessagePack. A frame
/// larger than [`MAX_FRAME_BYTES`] is refused here, as the decoder would.
pub fn encode_frame(frame: &TurnFrame) -> Result<Vec<u8>, ProtocolError> {
    encode_frame_of(frame)
}

/// Encodes `frame`, or, if it is too large for one frame, a stand-in of the
/// same kind under the same id ([`ChatEvent::stand_in`]), so a stream and
/// every replay of it go past the event: never a gap, and never an error that
/// each resume would meet again.
pub fn encode_frame_or_stand_in(frame: &TurnFrame) -> Result<Vec<u8>, ProtocolError> {
    match encode_frame(frame) {
        Err(ProtocolError::TooLarge { .. }) => encode_frame(&TurnFrame {
            id: frame.id,
            event: frame.event.stand_in(),
        }),
        other => other,
    }
}

/// The longest id, name or code a stand-in keeps, in characters.
const STAND_IN_NAME_CHARS: usize = 256;

impl ChatEvent {
    /// This event, small enough for a frame: its large text replaced by a
    /// note (a tool call's arguments, a tool result, then marked an error),
    /// an answer piece cut to half a frame, ids and names cut to 256
    /// characters.
    pub fn stand_in(&self) -> ChatEvent {
        const NOTE: &str = r#"{"error":"this event was too large to send"}"#;
        let clip = |s: &str| s.chars().take(STAND_IN_NAME_CHARS).collect::<String>();
        match self {
            ChatEvent::ToolCall { id, tool, .. } => ChatEvent::ToolCall {
                id: clip(id),
                tool: clip(tool),
                arguments: NOTE.into(),
            },
            ChatEvent::ToolResult { id, tool, .. } => ChatEvent::ToolResult {
                id: clip(id),
                tool: clip(tool),
                result: NOTE.into(),
                is_error: true,
            },
            ChatEvent::Message { content } => {
                let mut end = content.len().min(MAX_FRAME_BYTES / 2);
                while !content.is_char_boundary(end) {
                    end -= 1;
                }
                ChatEvent::Message {
                    content: content[..end].to_owned(),
                }
            }
            ChatEvent::Done {
                ok,
                message_seq,
                usage,
                model,
            } => ChatEvent::Done {
                ok: *ok,
                message_seq: *message_seq,
                usage: *usage,
                model: model.as_deref().map(clip),
            },
            ChatEvent::Error { code, .. } => ChatEvent::Error {
                code: clip(code),
                message: "this event was too large to send".into(),
            },
        }
    }
}

/// Encodes any frame the way [`encode_frame`] does (completions stream
/// [`crate::completion::CompletionFrame`]s in the same framing).
pub fn encode_frame_of<T: Serialize>(frame: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = rmp_serde::to_vec_named(frame)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| ProtocolError::TooLarge {
        len: body.len(),
        max: MAX_FRAME_BYTES,
    })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reassembles frames from a byte stream cut anywhere.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns every frame now complete, in order. A frame
    /// larger than [`MAX_FRAME_BYTES`] or one that does not decode is an error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<TurnFrame>, ProtocolError> {
        self.push_as(bytes)
    }

    /// [`FrameDecoder::push`] for frames of any type.
    pub fn push_as<T: serde::de::DeserializeOwned>(
        &mut self,
        bytes: &[u8],
    ) -> Result<Vec<T>, ProtocolError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(&[a, b, c, d]) = self.buf.get(..4) {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(ProtocolError::TooLarge {
                    len,
                    max: MAX_FRAME_BYTES,
                });
            }
            let Some(body) = self.buf.get(4..4 + len) else {
                break;
            };
            events.push(crate::msgpack::from_slice(body)?);
            self.buf.drain(..4 + len);
        }
        Ok(events)
    }

    /// Whether bytes of an unfinished frame are left (a stream cut short).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<ChatEvent> {
        vec![
            ChatEvent::ToolCall {
                id: "c1".into(),
                tool: "vector_search".into(),
                arguments: r#"{"query":"x"}"#.into(),
            },
            ChatEvent::ToolResult {
                id: "c1".into(),
                tool: "vector_search".into(),
                result: "{}".into(),
                is_error: false,
            },
            ChatEvent::Message {
                content: "héllo ".into(),
            },
            ChatEvent::Done {
                ok: true,
                message_seq: 4,
                usage: Some(TurnUsage {
                    input_tokens: 10,
                    output_tokens: 3,
                    cost_micros: Some(7),
                }),
                model: Some("@cf/m".into()),
            },
            ChatEvent::error("model_failed", "boom"),
        ]
    }

    fn frames() -> Vec<TurnFrame> {
        events()
            .into_iter()
            .zip(1..)
            .map(|(event, id)| TurnFrame { id, event })
            .collect()
    }

    #[test]
    fn frames_survive_any_cut() {
        let all: Vec<u8> = frames()
            .iter()
            .flat_map(|f| encode_frame(f).unwrap())
            .collect();
        for step in [1, 2, 3, 5, 7, 64, all.len()] {
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            for piece in all.chunks(step) {
                out.extend(d.push(piece).unwrap());
            }
            assert_eq!(out, frames(), "step {step}");
            assert!(!d.has_partial());
        }
        let mut d = FrameDecoder::new();
        assert!(d.push(&all[..all.len() - 1]).unwrap().len() == 4);
        assert!(d.has_partial());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut d = FrameDecoder::new();
        assert!(d.push(&[0xff, 0xff, 0xff, 0xff]).is_err(), "too large");
        let mut d = FrameDecoder::new();
        assert!(d.push(&[0, 0, 0, 2, 0xc1, 0xc1]).is_err(), "garbage body");
    }

    #[test]
    fn the_encoder_enforces_the_decoders_limit() {
        let frame = |n: usize| TurnFrame {
            id: 1,
            event: ChatEvent::Message {
                content: "x".repeat(n),
            },
        };
        // Just under the limit encodes and decodes; just over is refused at
        // the encoder, not left for the decoder to reject mid-stream.
        let fits = encode_frame(&frame(MAX_FRAME_BYTES - 64)).unwrap();
        assert_eq!(FrameDecoder::new().push(&fits).unwrap().len(), 1);
        assert!(matches!(
            encode_frame(&frame(MAX_FRAME_BYTES)),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_event_too_large_for_a_frame_goes_as_a_stand_in_under_its_id() {
        let big = "é".repeat(MAX_FRAME_BYTES);
        let decode = |bytes: Vec<u8>| {
            let mut frames = FrameDecoder::new().push(&bytes).unwrap();
            assert_eq!(frames.len(), 1);
            frames.remove(0)
        };
        let piece = TurnFrame {
            id: 7,
            event: ChatEvent::Message {
                content: big.clone(),
            },
        };
        assert!(encode_frame(&piece).is_err());
        let sent = decode(encode_frame_or_stand_in(&piece).unwrap());
        assert_eq!(sent.id, 7);
        match sent.event {
            ChatEvent::Message { content } => {
                assert!(!content.is_empty() && content.len() <= MAX_FRAME_BYTES / 2);
                assert!(
                    big.starts_with(&content),
                    "a prefix, cut between characters"
                );
            }
            other => panic!("expected a message, got {other:?}"),
        }
        let result = TurnFrame {
            id: 8,
            event: ChatEvent::ToolResult {
                id: "call-1".into(),
                tool: "vector_search".into(),
                result: format!("{{\"text\":\"{big}\"}}"),
                is_error: false,
            },
        };
        match decode(encode_frame_or_stand_in(&result).unwrap()).event {
            ChatEvent::ToolResult {
                id,
                tool,
                result,
                is_error,
            } => {
                assert_eq!((id.as_str(), tool.as_str()), ("call-1", "vector_search"));
                assert!(is_error && result.contains("too large"));
            }
            other => panic!("expected a tool result, got {other:?}"),
        }
        let call = TurnFrame {
            id: 9,
            event: ChatEvent::ToolCall {
                id: "x".repeat(MAX_FRAME_BYTES),
                tool: "kv_get".into(),
                arguments: big,
            },
        };
        match decode(encode_frame_or_stand_in(&call).unwrap()).event {
            ChatEvent::ToolCall { id, arguments, .. } => {
                assert_eq!(id.len(), STAND_IN_NAME_CHARS);
                assert!(arguments.contains("too large"));
            }
            other => panic!("expected a tool call, got {other:?}"),
        }
        // A frame that fits goes as it is.
        for event in events() {
            let frame = TurnFrame { id: 3, event };
            assert_eq!(
                encode_frame_or_stand_in(&frame).unwrap(),
                encode_frame(&frame).unwrap()
            );
        }
    }

    #[test]
    fn events_as_json_carry_their_type() {
        let json = serde_json::to_value(&events()[0]).unwrap();
        assert_eq!(json["type"], "tool_call");
        assert_eq!(json["tool"], "vector_search");
        assert_eq!(events()[3].name(), "done");
        let done = serde_json::to_value(&events()[3]).unwrap();
        assert_eq!(
            done,
            serde_json::json!({"type":"done","ok":true,"messageSeq":4,
                               "usage":{"inputTokens":10,"outputTokens":3,"costMicros":7},
                               "model":"@cf/m"})
        );
        // Without usage and model, the fields are left out (the shape clients had).
        let bare = ChatEvent::Done {
            ok: true,
            message_seq: 4,
            usage: None,
            model: None,
        };
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            serde_json::json!({"type":"done","ok":true,"messageSeq":4})
        );
    }

    #[test]
    fn a_tool_result_is_a_json_value_on_the_wire() {
        let event = |result: &str| ChatEvent::ToolResult {
            id: "c1".into(),
            tool: "vector_search".into(),
            result: result.into(),
            is_error: false,
        };
        let found = event(r#"{"matches":[{"id":"doc-a","score":0.5}]}"#);
        let json = serde_json::to_value(&found).unwrap();
        assert_eq!(
            json["result"],
            serde_json::json!({"matches":[{"id":"doc-a","score":0.5}]}),
            "an object, not JSON text in a string"
        );
        // It decodes back to the same text, from JSON (stored events) and
        // from MessagePack (frames).
        let back: ChatEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, found);
        let bytes = rmp_serde::to_vec_named(&found).unwrap();
        assert_eq!(
            crate::msgpack::from_slice::<ChatEvent>(&bytes).unwrap(),
            found
        );
        // Text that is not JSON goes as a JSON string, and comes back.
        let plain = event("the tool broke");
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(json["result"], "the tool broke");
        assert_eq!(serde_json::from_value::<ChatEvent>(json).unwrap(), plain);
        // An event stored by an earlier version (the result as a string of
        // JSON text) replays as an object.
        let old: ChatEvent = serde_json::from_str(
            r#"{"type":"tool_result","id":"c1","tool":"kv_get","result":"{\"key\":\"config:a\",\"value\":null}","is_error":false}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&old).unwrap()["result"],
            serde_json::json!({"key":"config:a","value":null})
        );
        assert_eq!(tool_result_value("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(tool_result_value("{"), serde_json::json!("{"));
    }

    #[test]
    fn every_json_field_is_camel_case_and_old_names_still_decode() {
        // The clients' view: no snake_case field in any event.
        for event in events() {
            let json = serde_json::to_value(&event).unwrap();
            for key in json.as_object().unwrap().keys() {
                assert!(!key.contains('_'), "{key} in {json}");
            }
        }
        let result = serde_json::to_value(&events()[1]).unwrap();
        assert_eq!(result["isError"], false);
        // Events stored (as JSON) by an earlier version replay unchanged.
        let old: ChatEvent = serde_json::from_str(
            r#"{"type":"tool_result","id":"c1","tool":"kv_get","result":"{}","is_error":true}"#,
        )
        .unwrap();
        assert!(matches!(old, ChatEvent::ToolResult { is_error: true, .. }));
        let old: ChatEvent =
            serde_json::from_str(r#"{"type":"done","ok":true,"message_seq":9}"#).unwrap();
        assert!(matches!(old, ChatEvent::Done { message_seq: 9, .. }));
        // And frames of an earlier sender (named MessagePack) decode too.
        #[derive(Serialize)]
        struct OldDone {
            r#type: &'static str,
            ok: bool,
            message_seq: u64,
        }
        let bytes = rmp_serde::to_vec_named(&OldDone {
            r#type: "done",
            ok: true,
            message_seq: 5,
        })
        .unwrap();
        let old: ChatEvent = crate::msgpack::from_slice(&bytes).unwrap();
        assert!(matches!(old, ChatEvent::Done { message_seq: 5, .. }));
    }

    #[test]
    fn a_reservation_names_a_limiter_and_nothing_else() {
        let r = |limiter: &str| TurnReservation {
            tenant: None,
            limiter: limiter.into(),
            id: 1,
            model: None,
        };
        assert!(r("limiter:0123456789ab").valid());
        assert!(r("limiter:anon-00ff00ff00ff00ff").valid());
        assert!(!r("limiter:").valid());
        assert!(!r("coordinator").valid());
        assert!(!r("limiter:../x").valid());
        assert!(!r("limiter:a:b").valid());
    }

    #[test]
    fn turn_validation() {
        let turn = |m: &str, t: Option<u32>, model: Option<&str>| Turn {
            reservation: None,
            session_id: SessionId::parse("s").unwrap(),
            access: Access::default(),
            message: m.into(),
            model: model.map(str::to_owned),
            max_tokens: t,
        };
        assert_eq!(turn("hi", None, None).validate(), Ok(()));
        assert_eq!(turn("  ", None, None).validate(), Err(ChatError::Message));
        assert_eq!(
            turn(&"x".repeat(8001), None, None).validate(),
            Err(ChatError::Message)
        );
        assert_eq!(
            turn("hi", Some(0), None).validate(),
            Err(ChatError::MaxTokens)
        );
        assert_eq!(
            turn("hi", Some(4096), None).validate(),
            Err(ChatError::MaxTokens)
        );
        assert_eq!(
            turn("hi", None, Some("a b")).validate(),
            Err(ChatError::Model)
        );
        assert_eq!(turn("hi", Some(64), Some("@cf/x/y")).validate(), Ok(()));
    }
}
