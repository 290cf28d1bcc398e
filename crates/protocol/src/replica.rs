//! Search replicas: the messages between a tenant's `IngestQueue` (the one
//! writer of its index) and its `SearchReplica` objects
//! (`${tenantId}:search-<k>`), which answer its searches.
//!
//! The writer numbers every change of its index (`seq`, 1, 2, 3, … with no
//! gap) and sends them, in batches, to every replica before it reports the
//! work done; a replica applies a change only on top of the one before it, and
//! otherwise copies the whole index again from the writer, one
//! [`ChunkPage`] at a time.

use crate::ingest::Metadata;
use serde::{Deserialize, Serialize};

/// Most chunks in one [`ChunkPage`]: about 1 MB of MessagePack at 768
/// dimensions, far inside [`crate::MAX_MESSAGE_BYTES`].
pub const MAX_PAGE_CHUNKS: u32 = 256;

/// Most replicas a deployment may run per tenant (`SEARCH_REPLICAS`).
pub const MAX_REPLICAS: u32 = 16;

/// One chunk of the index as the writer holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The chunk's vector id.
    pub id: String,
    /// Its embedding; empty where the vectors live in Vectorize.
    pub values: Vec<f32>,
    /// Its metadata, `text` and `title` included.
    pub metadata: Metadata,
}

/// One change of the writer's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicaChange {
    /// Chunks written (new or replaced).
    Upsert(Vec<ChunkRecord>),
    /// Chunks removed, by id.
    Delete(Vec<String>),
}

/// Writer → replica: change number `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    /// The change's number; the one before it is `seq - 1`.
    pub seq: u64,
    /// The change.
    pub change: ReplicaChange,
}

/// Writer → replica: changes in number order, sent together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicateBatch {
    /// The changes, numbers rising by one.
    pub changes: Vec<Replicate>,
    /// The replica has left the deployment's set (`SEARCH_REPLICAS` was
    /// lowered) and will get no more changes: it drops its copy's number,
    /// so it copies the index again if it is ever used again.
    #[serde(default)]
    pub forget: bool,
}

/// Answers [`ReplicateBatch`]: where the replica stands after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replicated {
    /// The last change the replica holds; `None` while it has no copy of
    /// the index it can answer from (it is copying one, or will on its
    /// next search).
    pub seq: Option<u64>,
}

/// Replica → writer: the chunks after row `after`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportChunks {
    /// The row id after which to start (0 for the first page).
    pub after: i64,
    /// 1 to [`MAX_PAGE_CHUNKS`].
    pub limit: u32,
}

/// Answers [`ExportChunks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPage {
    /// The writer's last change when the page was read.
    pub seq: u64,
    /// The chunks, in row order.
    pub records: Vec<ChunkRecord>,
    /// The row id to ask after for the next page; `None` on the last one.
    pub next: Option<i64>,
}

/// An operator's view of one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    /// The last change it holds; `None` while it holds no usable copy.
    pub seq: Option<u64>,
    /// Chunks it holds.
    pub chunks: u64,
    /// Searches it answered since it last woke.
    pub searches: u64,
    /// Whole copies of the index it took from the writer since it last woke.
    pub copies: u64,
    /// Changes it applied since it last woke.
    pub applied: u64,
}

/// The writer's side of replication, in its [`crate::ingest::IngestSnapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    /// Replicas every change is sent to (`SEARCH_REPLICAS`; 0: the writer
    /// answers searches itself).
    pub replicas: u32,
    /// The writer's last change.
    pub seq: u64,
    /// Searches the writer itself answered since it last woke (none while
    /// replicas serve them).
    pub searches: u64,
    /// Pages of its index it exported to replicas since it last woke.
    pub pages_exported: u64,
    /// Batches of changes it sent to the replicas since it last woke.
    pub batches_sent: u64,
}
