//! `SearchReplica`: read copies of a tenant's index
//! (`${tenantId}:search-<k>`, `k` below `SEARCH_REPLICAS`), which answer its
//! searches and embeddings so that none of them runs in the tenant's
//! `IngestQueue`, the one object that writes the index.
//!
//! - [`core`]: which of the writer's numbered changes a replica holds and
//!   applies, and how a whole copy is taken while changes keep arriving
//!   (pure, tested natively); [`replica_for`]: which replica a question goes to;
//! - `object`: the Durable Object (its own SQLite copy of the index, with
//!   the same tables as the writer's, and the shared read path
//!   [`crate::ingest::reader::Reader`]);
//! - [`handle`](SearchHandle): where callers send a search.
//!
//! Read-your-writes: the writer sends each change to every replica before
//! the work that made it is reported (a job's document is `done` only once
//! every replica holds it), so a search sent after a job is done, or after a
//! delete answered, sees it on whichever replica answers.
//!
//! A replica without a usable copy (new, or one that missed a change) does
//! not hold a search while it copies the index: it starts the copy in the
//! background (at most one attempt per [`COPY_RETRY_MS`] after one that
//! failed) and refuses the search as [`NOT_READY`], and [`SearchHandle`]
//! asks the writer instead, which holds every change.

pub mod core;
mod handle;
mod object;

pub use self::core::replica_for;
pub use handle::{encode_batch, replicas, ReplicaHandle, SearchHandle};
pub use object::SearchReplica;

/// The reason a replica refuses a search it cannot answer now (no usable
/// copy yet, or it left the set): the caller asks the writer instead.
pub const NOT_READY: &str = "replica_not_ready";

/// Least time between two copies a replica starts (the first starts at
/// once): searches that find no usable copy while copies keep failing do
/// not make it empty its tables and read the whole index again each time.
pub const COPY_RETRY_MS: u64 = 5_000;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "SEARCH_REPLICA";

/// The resource part of replica `k`'s name (`${tenantId}:search-<k>`).
pub fn resource(k: u32) -> String {
    format!("search-{k}")
}
