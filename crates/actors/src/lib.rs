//! The per-tenant Durable Object actors.
//!
//! Every actor is a pure core plus a thin Durable Object shell:
//! - the **core** (`*/core.rs`) holds plain data, takes a decoded message and
//!   the current time, and returns a reply and the effects to perform; it has
//!   no `worker::` types and is unit-tested natively;
//! - the **shell** (`*/object.rs`) is the `#[durable_object]`: it decodes the
//!   request ([`rpc`]), calls the core, performs the effects (storage), and
//!   encodes the reply;
//! - the **handle** (`*/handle.rs`) is what callers use: typed methods that
//!   build the envelope, reach the right object by its tenant-scoped name and
//!   decode the reply, so no call site builds a request by hand.
//!
//! Actors: [`coordinator`] (`TenantCoordinator`) and [`ingest`]
//! (`IngestQueue`), one of each per tenant.
//!
//! Around them: the [`ports`] (embedder, vector index, KV, clock) with their
//! [`cloudflare`] and embedded implementations, and the pure pieces of
//! retrieval: [`chunking`], [`embedding`] (the hashed embedder),
//! [`retrieval`] (exact cosine, filters, FTS queries, rank fusion).

pub mod chat;
pub mod chunking;
pub mod cloudflare;
pub mod coordinator;
pub mod embedding;
pub mod entropy;
pub mod error;
pub mod generation;
pub mod ingest;
pub mod ports;
pub mod retrieval;
pub mod rpc;

pub use chat::{ChatHandle, ChatSession};
pub use coordinator::{CoordinatorHandle, TenantCoordinator};
pub use error::ActorError;
pub use ingest::{IngestHandle, IngestQueue};
