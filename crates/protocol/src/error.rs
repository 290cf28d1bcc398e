//! Errors of the wire and errors an actor replies with.

use serde::{Deserialize, Serialize};

/// The bytes could not be turned into a message, or a message into bytes.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The input is larger than [`crate::MAX_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message speaks a protocol version this build does not.
    #[error("protocol version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version in the message.
        got: u16,
        /// The version this build speaks.
        supported: u16,
    },
    /// The input is not a well-formed message (garbage, truncated, wrong shape).
    #[error("malformed message: {0}")]
    Decode(#[from] crate::msgpack::DecodeError),
    /// A message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// What kind of refusal an actor answers with; the gateway maps it to HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is well-formed on the wire but its content is invalid.
    InvalidRequest,
    /// The thing asked for does not exist.
    NotFound,
    /// The request does not belong to this actor (for example another tenant's).
    WrongTenant,
    /// The actor is busy with an earlier request that must finish first.
    Busy,
    /// The request could not be decoded or spoke another protocol version.
    Protocol,
    /// The actor failed for a reason of its own (a bug, storage): HTTP 500.
    Internal,
    /// A platform service the actor depends on could not be reached or
    /// failed (Workers AI, Vectorize, KV): HTTP 503.
    Unavailable,
    /// A platform service answered something of the wrong shape: HTTP 502.
    BadUpstream,
    /// A configured bound would be exceeded (the index, a session's history);
    /// [`ErrorReply::reason`] names which: HTTP 413.
    QuotaExceeded,
}

/// An actor's refusal of a request it could read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The kind of refusal.
    pub code: ErrorCode,
    /// A human-readable explanation, safe to show to the client.
    pub message: String,
    /// A machine-readable detail the client sees as its error code (for
    /// example `index_full`), where the kind alone does not say enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorReply {
    /// Builds a reply from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
        }
    }

    /// The same reply with a machine-readable `reason`.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }
}
