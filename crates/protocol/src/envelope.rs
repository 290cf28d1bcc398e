//! The versioned envelopes and the only encode/decode functions of the platform.

use crate::error::{ErrorReply, ProtocolError};
use crate::ids::{RequestId, TenantId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bump it when a change is not
/// backward compatible (a removed or retyped field, a renamed variant).
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest message accepted by [`decode`] and [`decode_reply`].
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A request on its way to an actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// Protocol version; [`PROTOCOL_VERSION`] when built by [`Envelope::new`].
    pub v: u16,
    /// The id that the gateway answered the client with (`x-request-id`).
    pub request_id: RequestId,
    /// The tenant the request belongs to; the actor checks it is its own.
    pub tenant_id: TenantId,
    /// The actor-specific request.
    pub message: M,
}

impl<M> Envelope<M> {
    /// Wraps `message` at the current protocol version.
    pub fn new(request_id: RequestId, tenant_id: TenantId, message: M) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            request_id,
            tenant_id,
            message,
        }
    }
}

/// An actor's answer to one [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEnvelope<R> {
    /// Protocol version of the reply.
    pub v: u16,
    /// The request id of the envelope this answers, when it could be read.
    pub request_id: Option<RequestId>,
    /// The reply, or the actor's refusal.
    pub reply: Result<R, ErrorReply>,
}

impl<R> ReplyEnvelope<R> {
    /// Wraps a reply at the current protocol version.
    pub fn new(request_id: Option<RequestId>, reply: Result<R, ErrorReply>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            request_id,
            reply,
        }
    }
}

/// Encodes a request envelope as named MessagePack.
pub fn encode<M: Serialize>(envelope: &Envelope<M>) -> Result<Vec<u8>, ProtocolError> {
    Ok(rmp_serde::to_vec_named(envelope)?)
}

/// Decodes a request envelope, checking size and version first.
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<M>, ProtocolError> {
    check(bytes)?;
    Ok(crate::msgpack::from_slice(bytes)?)
}

/// Encodes a reply envelope as named MessagePack.
pub fn encode_reply<R: Serialize>(reply: &ReplyEnvelope<R>) -> Result<Vec<u8>, ProtocolError> {
    Ok(rmp_serde::to_vec_named(reply)?)
}

/// Decodes a reply envelope, checking size and version first.
pub fn decode_reply<R: DeserializeOwned>(bytes: &[u8]) -> Result<ReplyEnvelope<R>, ProtocolError> {
    check(bytes)?;
    Ok(crate::msgpack::from_slice(bytes)?)
}

fn check(bytes: &[u8]) -> Result<(), ProtocolError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    // Only the version is read here (the envelope's first field); the
    // decode that follows reads the rest.
    let v = crate::msgpack::field::<u16>(bytes, "v")?
        .ok_or_else(|| <crate::msgpack::DecodeError as serde::de::Error>::missing_field("v"))?;
    if v != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            got: v,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(())
}
