//! Completions in the OpenAI style, run by a `ChatSession`: the request the
//! gateway sends once it has read and checked a `POST /v1/chat/completions`
//! body ([`Complete`]), and the events the session streams back
//! ([`CompletionEvent`], in the length-prefixed frames of
//! [`crate::chat::encode_frame`]).
//!
//! A completion is stateless: the client sends the whole conversation and
//! nothing is stored. The model may call the client's tools (the completion
//! then ends with `tool_calls` for the client to run) or, when the request
//! asks for them, the tenant's own tools, which the session runs itself and
//! reports as [`CompletionEvent::ToolRun`] before the model is asked again.

use crate::chat::{Access, TurnReservation, TurnUsage};
use serde::{Deserialize, Serialize};

/// Most messages in one completion request.
pub const MAX_COMPLETION_MESSAGES: usize = 256;
/// Most characters in all of a request's messages together.
pub const MAX_COMPLETION_CHARS: usize = 200_000;
/// Most client tools in one request.
pub const MAX_CLIENT_TOOLS: usize = 64;
/// Most stop sequences (OpenAI's bound).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in characters.
pub const MAX_STOP_CHARS: usize = 64;
/// The tenant's tools a completion may ask the server to run.
pub const TENANT_TOOLS: &[&str] = &["vector_search", "kv_get"];

/// Who said a message of a completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// Instructions (OpenAI's `system` and `developer`).
    System,
    /// The person.
    User,
    /// The model, possibly with tool calls.
    Assistant,
    /// A tool's result, answering one call.
    Tool,
}

/// A tool call of an assistant message, as the client sent it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOfMessage {
    /// The call's id.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, as the JSON text the model produced.
    pub arguments: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionMessage {
    /// Who said it.
    pub role: Speaker,
    /// Its text (text parts joined).
    pub content: String,
    /// An assistant message's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<CallOfMessage>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A function the client offers the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTool {
    /// Its name (`^[A-Za-z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Its parameters' JSON schema, as JSON text.
    pub parameters: String,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are given).
    #[default]
    Auto,
    /// No tool: the model answers in text.
    None,
    /// Some tool must be called.
    Required,
    /// This function must be called.
    Function(String),
}

/// The shape the answer must have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// A JSON object.
    JsonObject,
    /// JSON following this schema (OpenAI's `json_schema` object, as JSON text).
    JsonSchema(String),
}

/// How the model samples; every field is passed to the model where it
/// takes it, except `stop`, which the session applies itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationOptions {
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// A seed for repeatable sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// The answer ends before the first of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// The answer's shape.
    #[serde(default)]
    pub response_format: ResponseFormat,
}

/// A completion: `ChatRequest::Complete`, answered by a stream of
/// [`CompletionEvent`] frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Complete {
    /// The object it runs in: `v1-<caller>-<shard>`, a session that stores
    /// nothing but its binding to the tenant.
    pub session_id: crate::ids::SessionId,
    /// Who is asking.
    #[serde(default)]
    pub access: Access,
    /// The conversation; never empty.
    pub messages: Vec<CompletionMessage>,
    /// The client's functions.
    #[serde(default)]
    pub tools: Vec<ClientTool>,
    /// Whether and which tool must be called.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// The tenant's tools the session runs itself (of [`TENANT_TOOLS`]).
    #[serde(default)]
    pub tenant_tools: Vec<String>,
    /// The model; `None`: the tenant's default and its fallbacks.
    pub model: Option<String>,
    /// The answer's token budget.
    pub max_tokens: u32,
    /// Sampling and shape.
    #[serde(default)]
    pub options: GenerationOptions,
    /// What the gateway reserved at the caller's limiter (settled with the
    /// completion's usage when it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<TurnReservation>,
}

/// Why a [`Complete`] is refused (the gateway's checks, repeated by the
/// session: no message reaches a model unchecked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    /// No message, too many, or too much text.
    #[error("messages must hold 1 to {MAX_COMPLETION_MESSAGES} messages of at most {MAX_COMPLETION_CHARS} characters in all")]
    Messages,
    /// `max_tokens` out of range.
    #[error("max_tokens must be between 1 and {}", crate::chat::MAX_MAX_TOKENS)]
    MaxTokens,
    /// Too many tools, or a tenant tool that does not exist.
    #[error("at most {MAX_CLIENT_TOOLS} tools, and tenant tools among vector_search and kv_get")]
    Tools,
    /// Too many or too long stop sequences.
    #[error(
        "stop holds at most {MAX_STOP_SEQUENCES} sequences of 1 to {MAX_STOP_CHARS} characters"
    )]
    Stop,
    /// A model name that cannot be one.
    #[error("model must be 1 to 128 characters of A-Z a-z 0-9 @ . _ / : -")]
    Model,
    /// A seed JavaScript cannot hold exactly.
    #[error("seed must be at most {}", crate::ingest::MAX_SAFE_INTEGER)]
    Seed,
}

impl Complete {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), CompletionError> {
        let chars: usize = self
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        if self.messages.is_empty()
            || self.messages.len() > MAX_COMPLETION_MESSAGES
            || chars > MAX_COMPLETION_CHARS
        {
            return Err(CompletionError::Messages);
        }
        if self.max_tokens == 0 || self.max_tokens > crate::chat::MAX_MAX_TOKENS {
            return Err(CompletionError::MaxTokens);
        }
        if self.tools.len() > MAX_CLIENT_TOOLS
            || self
                .tenant_tools
                .iter()
                .any(|t| !TENANT_TOOLS.contains(&t.as_str()))
        {
            return Err(CompletionError::Tools);
        }
        let stop_ok = |s: &String| (1..=MAX_STOP_CHARS).contains(&s.chars().count());
        if self.options.stop.len() > MAX_STOP_SEQUENCES || !self.options.stop.iter().all(stop_ok) {
            return Err(CompletionError::Stop);
        }
        if self
            .model
            .as_deref()
            .is_some_and(|m| !crate::keys::valid_model(m))
        {
            return Err(CompletionError::Model);
        }
        if self
            .options
            .seed
            .is_some_and(|s| s > crate::ingest::MAX_SAFE_INTEGER)
        {
            return Err(CompletionError::Seed);
        }
        Ok(())
    }
}

/// Why a completion ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished, or a stop sequence was met.
    Stop,
    /// The token budget ran out.
    Length,
    /// The model called the client's tools.
    ToolCalls,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// What a completion streams, in order: text pieces, tenant tool runs, the
/// client's tool calls, then `Done` (or `Error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CompletionEvent {
    /// A piece of the answer.
    Text {
        /// The piece.
        content: String,
    },
    /// A call of one of the client's tools, for the client to run.
    ToolCall {
        /// Its position among the completion's calls (OpenAI's `index`).
        index: u32,
        /// The call's id.
        id: String,
        /// The function.
        name: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// A tenant tool the session ran, with its result.
    ToolRun {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, as JSON text.
        arguments: String,
        /// The result, as JSON text.
        result: String,
        /// Whether the tool refused or failed.
        is_error: bool,
    },
    /// The completion ended.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// What its model calls used, summed (and priced where the model is).
        usage: TurnUsage,
        /// The model that answered.
        model: String,
    },
    /// The completion failed.
    Error {
        /// Machine-readable code.
        code: String,
        /// For people.
        message: String,
    },
}

/// One completion event as streamed (the frame shape of the session's turns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionFrame {
    /// The event's position in the completion, from 1.
    pub id: u64,
    /// The event.
    pub event: CompletionEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_round_trips() {
        let complete = Complete {
            session_id: crate::ids::SessionId::parse("v1-k1-0").unwrap(),
            access: Access::default(),
            messages: vec![
                CompletionMessage {
                    role: Speaker::Assistant,
                    content: String::new(),
                    tool_calls: vec![CallOfMessage {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
                CompletionMessage {
                    role: Speaker::Tool,
                    content: "42".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("c1".into()),
                },
            ],
            tools: vec![ClientTool {
                name: "f".into(),
                description: "d".into(),
                parameters: r#"{"type":"object"}"#.into(),
            }],
            tool_choice: ToolChoice::Function("f".into()),
            tenant_tools: vec!["vector_search".into()],
            model: Some("chat".into()),
            max_tokens: 64,
            options: GenerationOptions {
                temperature: Some(0.5),
                stop: vec!["\n\n".into()],
                response_format: ResponseFormat::JsonSchema("{}".into()),
                ..GenerationOptions::default()
            },
            reservation: None,
        };
        assert_eq!(complete.validate(), Ok(()));
        let mut bad = complete.clone();
        bad.tenant_tools = vec!["rm_rf".into()];
        assert_eq!(bad.validate(), Err(CompletionError::Tools));
        let mut bad = complete.clone();
        bad.max_tokens = 0;
        assert_eq!(bad.validate(), Err(CompletionError::MaxTokens));
        let mut bad = complete.clone();
        bad.messages.clear();
        assert_eq!(bad.validate(), Err(CompletionError::Messages));
        let mut bad = complete.clone();
        bad.options.stop = vec![String::new()];
        assert_eq!(bad.validate(), Err(CompletionError::Stop));
        // A model name is ASCII of the allowed characters (a generator cuts
        // it by bytes), and a seed is what JavaScript holds exactly.
        for name in ["é".repeat(64), "a b".into(), String::new(), "m".repeat(129)] {
            let mut bad = complete.clone();
            bad.model = Some(name.clone());
            assert_eq!(bad.validate(), Err(CompletionError::Model), "{name:?}");
        }
        let mut ok = complete.clone();
        ok.model = Some("@cf/meta/llama-3.1-8b-instruct".into());
        ok.options.seed = Some(crate::ingest::MAX_SAFE_INTEGER);
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = complete.clone();
        bad.options.seed = Some(crate::ingest::MAX_SAFE_INTEGER + 1);
        assert_eq!(bad.validate(), Err(CompletionError::Seed));
        let bytes = rmp_serde::to_vec_named(&complete).unwrap();
        let back: Complete = crate::msgpack::from_slice(&bytes).unwrap();
        assert_eq!(back, complete);
        let done = CompletionFrame {
            id: 3,
            event: CompletionEvent::Done {
                finish_reason: FinishReason::ToolCalls,
                usage: TurnUsage::default(),
                model: "m".into(),
            },
        };
        let bytes = crate::chat::encode_frame_of(&done).unwrap();
        let mut decoder = crate::chat::FrameDecoder::new();
        let frames: Vec<CompletionFrame> = decoder.push_as(&bytes).unwrap();
        assert_eq!(frames, vec![done]);
        assert_eq!(FinishReason::ToolCalls.as_str(), "tool_calls");
    }
}
