//! The messages that cross every actor boundary of the platform.
//!
//! The gateway Worker and the Durable Object actors talk in MessagePack
//! (`rmp_serde::to_vec_named`, so a field added later does not break an older
//! reader; read back by [`msgpack`]). Encoding and decoding live only in
//! this crate.
//!
//! Layout:
//! - [`ids`]: validated identifiers ([`TenantId`], [`RequestId`]) that are
//!   prefixes of Durable Object names, KV keys and Vectorize namespaces;
//! - [`envelope`]: the versioned [`Envelope`] around every request, the
//!   [`ReplyEnvelope`] around every answer, and [`encode`]/[`decode`];
//! - [`error`]: [`ProtocolError`] (the wire failed) and [`ErrorReply`] (an
//!   actor refused a well-formed request);
//! - [`coordinator`]: the `TenantCoordinator` actor's requests and replies;
//! - [`ingest`]: the `IngestQueue` actor's requests and replies (ingest, search);
//! - [`keys`]: API keys (format, scopes, records) and the coordinator's key messages;
//! - [`limits`]: rate limits, budgets, prices, and the `RateLimiter`'s and
//!   tenant ledger's requests and replies;
//! - [`models`]: model aliases, chat fallbacks' bound, known embedding
//!   models and their dimensions, a tenant's AI Gateway;
//! - [`chat`]: the `ChatSession` actor's requests, its streamed events and their frames;
//! - [`completion`]: stateless completions in the OpenAI style, run by a `ChatSession`;
//! - [`listing`]: the operators' listings (sessions, documents, tenants),
//!   their pages and cursors;
//! - [`metrics`]: request metrics (cells, latency histograms, the report);
//! - [`replica`]: the writer's changes to its search replicas, and their copies;
//! - [`actor`]: what every actor shares, such as [`ActorKind`];
//! - [`msgpack`]: the MessagePack reader every decode goes through (the
//!   writer is `rmp_serde`'s).

pub mod actor;
pub mod calendar;
pub mod chat;
pub mod completion;
pub mod coordinator;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod listing;
pub mod metrics;
pub mod models;
pub mod msgpack;
pub mod replica;
pub mod usage;

pub use actor::ActorKind;
pub use envelope::{
    decode, decode_reply, encode, encode_reply, Envelope, ReplyEnvelope, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
};
pub use error::{ErrorCode, ErrorReply, ProtocolError};
pub use ids::{IdError, RequestId, SessionId, TenantId};
