//! `IngestQueue`: one per tenant (`${tenantId}:ingest`), owner of the tenant's
//! documents, their chunks and vectors, ingestion jobs, and search.
//!
//! Pure, tested natively:
//! - [`core`]: the queue (admission, plans, progress, retries);
//! - [`facts`]: what storage tells the core, and how it is measured;
//! - [`requests`]: enqueue, job lookup, delete, inspection around the core;
//! - [`work`]: the work loop's budgets and one document's indexing as a
//!   sans-IO machine;
//! - [`search`]: the search mode, cache key, answer and cache policy;
//! - [`restore`]: the core from its rows, and the legacy migration;
//! - [`keys`], [`records`]: vector ids, cache keys, chunk metadata.
//!
//! Shared with the search replicas ([`crate::replica`]):
//! - [`reader`]: the read path over an object's copy of the index (search,
//!   embeddings, the usage they cost);
//! - [`replication`]: the writer's side: each change of the index numbered
//!   and sent to every replica, and the index read out page by page for a
//!   replica's copy.
//!
//! The shell:
//! - `object`: the Durable Object (decode, load, call the above, perform
//!   the effects and the port calls, the alarm);
//! - `store`: the tables and every statement, effects as SQL;
//! - [`faults`]: where injected embedder failures are counted (tests);
//! - [`handle`](IngestHandle): what callers use.

pub mod core;
pub mod facts;
pub mod faults;
mod handle;
pub mod keys;
mod object;
pub mod providers;
pub mod reader;
pub mod records;
pub mod replication;
pub mod requests;
pub mod restore;
pub mod search;
mod store;
pub mod work;

pub use handle::IngestHandle;
pub use object::IngestQueue;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "INGEST_QUEUE";

/// The resource part of the object's name (`${tenantId}:ingest`).
pub const RESOURCE: &str = "ingest";
