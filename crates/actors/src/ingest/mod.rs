//! `IngestQueue`: one per tenant (`${tenantId}:ingest`), owner of the tenant's
//! documents, their chunks and vectors, ingestion jobs, and search.
//!
//! - [`core`]: the pure queue (admission, plans, progress, retries);
//! - `object`: the Durable Object shell (storage, the ports, the alarm);
//! - [`faults`]: where injected embedder failures are counted (tests);
//! - [`keys`], [`records`]: vector ids, cache keys, chunk metadata;
//! - [`handle`](IngestHandle): what callers use.

pub mod core;
pub mod faults;
mod handle;
pub mod keys;
mod object;
pub mod providers;
pub mod records;

pub use handle::IngestHandle;
pub use object::IngestQueue;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "INGEST_QUEUE";

/// The resource part of the object's name (`${tenantId}:ingest`).
pub const RESOURCE: &str = "ingest";
