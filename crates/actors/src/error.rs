//! The actors crate's error type.

use protocol::{ErrorCode, ErrorReply, ProtocolError};

/// An actor's own failure (a bug, storage, a misconfiguration): 500.
pub fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// A call to an actor failed.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    /// The actor read the request and refused it.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The message could not be encoded or the reply decoded.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The runtime failed to reach the actor or to read its answer.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The actor answered with a reply of the wrong kind for the request.
    #[error("the actor answered {got} to a request that expects {expected}")]
    UnexpectedReply {
        /// What the request expects.
        expected: &'static str,
        /// What came back.
        got: &'static str,
    },
}

impl From<worker::Error> for ActorError {
    fn from(e: worker::Error) -> Self {
        ActorError::Runtime(e.to_string())
    }
}
