//! The platform services an actor uses, each behind a small trait, and the
//! small data types of their calls. Traits only: the Cloudflare
//! implementations are in [`crate::cloudflare`], the embedded ones (hashed
//! embeddings, SQLite vector index, injected faults) in [`crate::embedded`],
//! chosen by configuration ([`crate::providers`]).
//!
//! No `Send` bounds: JavaScript futures are not `Send`, and a Durable Object
//! runs on one thread.

use protocol::ingest::{Metadata, SearchMode};
use protocol::{ErrorCode, ErrorReply};

/// A platform service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The service answered with an error or could not be reached.
    #[error("{service}: {message}")]
    Failed {
        /// Which service.
        service: &'static str,
        /// What it said.
        message: String,
    },
    /// The service answered something of the wrong shape.
    #[error("{service} answered an unexpected shape: {message}")]
    BadShape {
        /// Which service.
        service: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The service refused the call with an HTTP status (Workers AI reports
    /// its own internal code beside it): 429 and 408 (overloaded, timed
    /// out), 5xx (failed), or another 4xx (refused what it was sent).
    #[error("{service} answered {status}: {message}")]
    Upstream {
        /// Which service.
        service: &'static str,
        /// The HTTP status the service's error stands for.
        status: u16,
        /// The service's own error code, when it gave one (Workers AI's 3040, ...).
        code: Option<u32>,
        /// What it said.
        message: String,
    },
    /// The backend cannot do what was asked (for example keyword search on Vectorize).
    #[error("{0}")]
    Unsupported(String),
    /// A configured bound of the backend would be exceeded (the embedded
    /// index's chunk cap); `reason` is the client's error code.
    #[error("{message}")]
    Full {
        /// Machine-readable reason (`index_full`).
        reason: &'static str,
        /// What is full, and the bound.
        message: String,
    },
}

impl From<PortError> for ErrorReply {
    /// Where a port's failure becomes an actor's refusal: a dependency that
    /// failed or could not be reached is 503, a malformed answer 502, a
    /// request the backend cannot serve 400, a bound 413 with its reason.
    fn from(e: PortError) -> Self {
        match e {
            PortError::Failed { .. } => ErrorReply::new(ErrorCode::Unavailable, e.to_string()),
            // Overloaded, timed out or failed upstream: unavailable for now.
            PortError::Upstream { status, .. } if e.is_transient_status(status) => {
                ErrorReply::new(ErrorCode::Unavailable, e.to_string())
            }
            // Refused what we sent (a model name, a size): our side's fault
            // as far as the client can tell, answered as a bad upstream.
            PortError::Upstream { .. } => ErrorReply::new(ErrorCode::BadUpstream, e.to_string()),
            PortError::BadShape { .. } => ErrorReply::new(ErrorCode::BadUpstream, e.to_string()),
            PortError::Unsupported(m) => ErrorReply::new(ErrorCode::InvalidRequest, m),
            PortError::Full { reason, message } => {
                ErrorReply::new(ErrorCode::QuotaExceeded, message).with_reason(reason)
            }
        }
    }
}

impl PortError {
    /// Whether `status` is one a later call may not get: 408, 429, 5xx.
    fn is_transient_status(&self, status: u16) -> bool {
        status == 408 || status == 429 || status >= 500
    }
}

/// Turns texts into vectors.
#[allow(async_fn_in_trait)]
pub trait Embedder {
    /// The model name, as reported to operators.
    fn model(&self) -> &str;
    /// Embeds up to 100 texts; one vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError>;
}

/// Reranks passages against a query (a cross-encoder): one score per text,
/// in the texts' order, higher is better.
#[allow(async_fn_in_trait)]
pub trait Reranker {
    /// The model's name.
    fn model(&self) -> &str;
    /// The texts' scores.
    async fn rerank(&self, query: &str, texts: &[String]) -> Result<Vec<f64>, PortError>;
}

/// A chunk's vector on its way into an index.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    /// The vector id (at most 64 bytes).
    pub id: String,
    /// The embedding.
    pub values: Vec<f32>,
    /// The chunk's metadata, `text` and `tenantId` included.
    pub metadata: Metadata,
}

/// A query against an index.
#[derive(Debug, Clone, Copy)]
pub struct VectorQuery<'a> {
    /// The query's embedding (needed by vector and hybrid modes).
    pub vector: Option<&'a [f32]>,
    /// The query's text (needed by keyword and hybrid modes).
    pub text: &'a str,
    /// How many matches: the best chunks, however many of one document
    /// (grouping them is the search's business, not the index's).
    pub top_k: usize,
    /// Metadata equality filter.
    pub filter: &'a Metadata,
    /// How to search.
    pub mode: SearchMode,
}

/// A match from an index.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    /// The vector id.
    pub id: String,
    /// Relevance in [0, 1], higher is better, by mode: the clamped cosine,
    /// the normalised BM25, or their weighted mean (see `retrieval`); the
    /// search plan scales it for a passage in another writing system than
    /// the query (`writing::adjust`).
    pub score: f64,
    /// Hybrid only: the vector leg's relevance, if that leg found the chunk.
    pub vector_score: Option<f64>,
    /// Hybrid only: the keyword leg's relevance, if that leg found the chunk.
    pub keyword_score: Option<f64>,
    /// The chunk's metadata.
    pub metadata: Metadata,
}

/// One tenant's vector index; the tenant is fixed when the index is built, so
/// no call can reach another tenant's vectors.
#[allow(async_fn_in_trait)]
pub trait VectorIndex {
    /// The backend's name, as reported to operators.
    fn backend(&self) -> &'static str;
    /// Whether the backend can search in `mode`.
    fn supports(&self, mode: SearchMode) -> bool;
    /// Inserts or replaces records (at most 1000 a call).
    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError>;
    /// Removes records by id; unknown ids are ignored.
    async fn delete(&self, ids: &[String]) -> Result<(), PortError>;
    /// The best matches for a query.
    async fn query(&self, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError>;
}

/// A key-value cache (keys are already tenant-scoped by the caller).
#[allow(async_fn_in_trait)]
pub trait Kv {
    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, PortError>;
    /// Stores `value` under `key` for `ttl_secs` seconds (at least 60).
    async fn put(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), PortError>;
    /// Stores `value` under `key` with no expiry.
    async fn set(&self, key: &str, value: &str) -> Result<(), PortError>;
    /// Removes `key` (absent keys are fine).
    async fn delete(&self, key: &str) -> Result<(), PortError>;
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed in the tool's result message.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed from the model's JSON.
    pub arguments: serde_json::Value,
}

/// One message of a conversation, in the shape Workers AI chat models take
/// (an assistant message may carry tool calls; a tool message answers one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Tool calls of an assistant message.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    /// The tool's name, on a tool message.
    pub name: Option<String>,
}

/// A tool the model may call, with JSON-schema parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolSpec {
    /// Name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: serde_json::Value,
}

/// A generation request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    /// The model.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Always explicit (Workers AI's default is small).
    pub max_tokens: u32,
    /// Whether and which tool must be called (a session's turns: `Auto`).
    pub tool_choice: protocol::completion::ToolChoice,
    /// Sampling and the answer's shape (a session's turns: the defaults).
    pub options: protocol::completion::GenerationOptions,
}

/// What a streaming generation produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A piece of the answer's text.
    Text(String),
    /// A complete tool call (streamed fragments already joined).
    ToolCall(ToolCall),
    /// Token counts, when the model reports them.
    Usage {
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Completion tokens.
        completion_tokens: u32,
    },
}

/// Generates text, streaming, with tool calls. Its implementations (Workers AI
/// and an embedded, deterministic generator) arrive with the chat actor.
#[allow(async_fn_in_trait)]
pub trait Generator {
    /// The model name, as reported to operators.
    fn model(&self) -> &str;
    /// Runs one generation, handing each event to `on_event` as it arrives.
    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError>;
}

/// Waits without blocking the isolate (a timer of the runtime).
#[allow(async_fn_in_trait)]
pub trait Sleep {
    /// Resolves after `ms` milliseconds.
    async fn sleep(&self, ms: u64);
}

/// The current time.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The runtime's clock, implemented in [`crate::cloudflare::clock`];
/// re-exported here so the shells' imports stay where the port is.
pub use crate::cloudflare::clock::{RuntimeSleep, SystemClock};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_failures_map_to_their_error_codes() {
        let failed = PortError::Failed {
            service: "Vectorize",
            message: "down".into(),
        };
        assert_eq!(ErrorReply::from(failed).code, ErrorCode::Unavailable);
        let bad = PortError::BadShape {
            service: "Workers AI",
            message: "3 vectors for 2 texts".into(),
        };
        assert_eq!(ErrorReply::from(bad).code, ErrorCode::BadUpstream);
        let upstream = |status| PortError::Upstream {
            service: "Workers AI",
            status,
            code: None,
            message: "x".into(),
        };
        for status in [408, 429, 500, 503] {
            assert_eq!(
                ErrorReply::from(upstream(status)).code,
                ErrorCode::Unavailable,
                "{status}"
            );
        }
        for status in [400, 403, 404, 413] {
            assert_eq!(
                ErrorReply::from(upstream(status)).code,
                ErrorCode::BadUpstream,
                "{status}"
            );
        }
        let unsupported = PortError::Unsupported("keyword on Vectorize".into());
        assert_eq!(
            ErrorReply::from(unsupported).code,
            ErrorCode::InvalidRequest
        );
        let full = ErrorReply::from(PortError::Full {
            reason: "index_full",
            message: "full".into(),
        });
        assert_eq!(
            (full.code, full.reason.as_deref()),
            (ErrorCode::QuotaExceeded, Some("index_full"))
        );
    }
}
