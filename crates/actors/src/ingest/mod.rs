//! `IngestQueue`: one per tenant (`${tenantId}:ingest`), owner of the tenant's
//! documents, their chunks and vectors, ingestion jobs, and search.

pub mod core;
mod handle;
pub mod keys;
mod object;
pub mod providers;
pub mod records;
pub mod sql_index;

pub use handle::IngestHandle;
pub use object::IngestQueue;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "INGEST_QUEUE";

/// The resource part of the object's name (`${tenantId}:ingest`).
pub const RESOURCE: &str = "ingest";
