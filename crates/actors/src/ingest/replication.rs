//! The writer's side of search replicas: every change of the tenant's index
//! is numbered once the writer's own index holds it, kept, and sent with the
//! others kept since to every replica ([`Replicator::flush`]) before the
//! writer answers anything that reports work done (a job's progress, an
//! enqueue, a delete, the documents listing) and at the end of every work
//! run; and the whole index is read out page by page for a replica that
//! copies it. The replica's side, and why this keeps every copy equal to the
//! writer's, is in [`crate::replica`].

use crate::embedded::sql_index::from_blob;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::providers::AnyIndex;
use crate::replica::ReplicaHandle;
use crate::sql::{self, int, SqlError};
use protocol::ingest::{Metadata, SearchMode};
use protocol::replica::{
    ChunkPage, ChunkRecord, ExportChunks, ReplicaChange, Replicate, ReplicateBatch,
};
use protocol::{RequestId, TenantId};
use std::cell::{Cell, RefCell};
use worker::{Env, SqlStorage};

/// The writer's last change number, and the last one every replica took.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replication (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0)";

/// Chunks kept unsent after which a write sends them at once (about 3 MB of
/// vectors): the kept changes stay bounded in memory and in message size.
pub const FLUSH_RECORDS: usize = 1000;

/// The writer's replication state in memory.
#[derive(Default)]
pub struct Replicator {
    /// Held while changes are sent: replicas receive them in order.
    sending: futures::lock::Mutex<()>,
    /// Changes numbered and not yet taken by every replica, in order.
    kept: RefCell<Vec<Replicate>>,
    /// Chunks (and ids) in `kept`.
    kept_records: Cell<usize>,
    /// Pages exported since the object woke.
    pages: Cell<u64>,
    /// Batches sent since the object woke.
    batches: Cell<u64>,
}

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: "search replica",
        message: e.to_string(),
    }
}

/// The writer's last change number and the last one every replica took (0
/// before the first). The table is created with the queue's
/// (`QueueStore::create_tables`).
pub fn numbers(sql: &SqlStorage) -> Result<(u64, u64), SqlError> {
    Ok(sql::first::<(u64, u64)>(
        sql,
        "SELECT seq, acked FROM replication WHERE id = 1",
        vec![],
    )?
    .unwrap_or((0, 0)))
}

fn store(sql: &SqlStorage, seq: u64, acked: u64) -> Result<(), SqlError> {
    sql::exec(
        sql,
        "INSERT INTO replication (id, seq, acked) VALUES (1, ?, ?)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, acked = excluded.acked",
        vec![int(seq), int(acked)],
    )
}

fn size(change: &ReplicaChange) -> usize {
    match change {
        ReplicaChange::Upsert(chunks) => chunks.len(),
        ReplicaChange::Delete(ids) => ids.len(),
    }
}

impl Replicator {
    /// Pages exported since the object woke.
    pub fn pages_exported(&self) -> u64 {
        self.pages.get()
    }

    /// Batches sent since the object woke.
    pub fn batches_sent(&self) -> u64 {
        self.batches.get()
    }

    /// Whether changes are waiting to be sent.
    pub fn has_kept(&self) -> bool {
        !self.kept.borrow().is_empty()
    }

    /// Numbers `change`, already written to the writer's index, and keeps
    /// it for the next [`Self::flush`]. Returns whether enough is kept that
    /// it should be sent now.
    pub fn keep(&self, sql: &SqlStorage, change: ReplicaChange) -> Result<bool, PortError> {
        let (last, acked) = numbers(sql).map_err(failed)?;
        let seq = last + 1;
        store(sql, seq, acked).map_err(failed)?;
        self.kept_records
            .set(self.kept_records.get() + size(&change).max(1));
        self.kept.borrow_mut().push(Replicate { seq, change });
        Ok(self.kept_records.get() >= FLUSH_RECORDS)
    }

    /// Changes numbered in an earlier life of the object that no replica
    /// may have taken (they were kept in memory when it was reset): one
    /// empty change is numbered past them, so every replica that missed
    /// them sees the gap and copies the index. Nothing to do otherwise.
    pub fn recover(&self, sql: &SqlStorage) -> Result<(), PortError> {
        let (last, acked) = numbers(sql).map_err(failed)?;
        if last > acked && !self.has_kept() {
            self.keep(sql, ReplicaChange::Delete(Vec::new()))?;
        }
        Ok(())
    }

    /// Sends every kept change to each of `replicas` replicas, all at once,
    /// and records that they took them. On a failure the changes stay kept
    /// and are sent again next time (a replica that took them ignores them).
    pub async fn flush(
        &self,
        env: &Env,
        sql: &SqlStorage,
        tenant: &TenantId,
        replicas: u32,
    ) -> Result<(), PortError> {
        let _turn = self.sending.lock().await;
        let changes: Vec<Replicate> = self.kept.borrow().clone();
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(());
        };
        if replicas > 0 {
            let batch = ReplicateBatch { changes };
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let sends = (0..replicas).map(|k| {
                let (batch, request_id) = (batch.clone(), &request_id);
                async move {
                    ReplicaHandle::new(env, tenant, k)
                        .map_err(failed)?
                        .replicate(request_id, batch)
                        .await
                        .map_err(|e| failed(format!("replica {k}: {e}")))
                }
            });
            for sent in futures::future::join_all(sends).await {
                sent?;
            }
            self.batches.set(self.batches.get() + 1);
        }
        // Changes kept while this batch was out stay for the next one.
        let mut kept = self.kept.borrow_mut();
        kept.retain(|c| c.seq > last);
        self.kept_records
            .set(kept.iter().map(|c| size(&c.change).max(1)).sum());
        drop(kept);
        let (seq, _) = numbers(sql).map_err(failed)?;
        store(sql, seq, last).map_err(failed)
    }

    /// A page of the index for a replica's copy: the rows after
    /// `export.after`, read with the last change number in one synchronous
    /// step (no change can come between them).
    pub fn export(&self, sql: &SqlStorage, export: ExportChunks) -> Result<ChunkPage, SqlError> {
        let limit = export.limit.clamp(1, protocol::replica::MAX_PAGE_CHUNKS);
        let (seq, _) = numbers(sql)?;
        let rows = sql::rows::<(i64, String, Vec<u8>, String)>(
            sql,
            "SELECT rid, id, embedding, metadata FROM vectors WHERE rid > ? ORDER BY rid LIMIT ?",
            vec![int(export.after), int(limit)],
        )?;
        let full = rows.len() == limit as usize;
        let next = rows.last().map(|(rid, ..)| *rid).filter(|_| full);
        let mut records = Vec::with_capacity(rows.len());
        for (_, id, embedding, metadata) in rows {
            let metadata: Metadata =
                serde_json::from_str(&metadata).map_err(|e| SqlError::Shape {
                    query: "SELECT metadata FROM vectors".into(),
                    message: e.to_string(),
                })?;
            records.push(ChunkRecord {
                id,
                values: from_blob(&embedding),
                metadata,
            });
        }
        self.pages.set(self.pages.get() + 1);
        Ok(ChunkPage { seq, records, next })
    }
}

/// The chunks of `records` as a change; without their vectors where those
/// live in Vectorize (a replica keeps only the rows and the full text).
pub fn upsert_change(records: &[VectorRecord], with_vectors: bool) -> ReplicaChange {
    ReplicaChange::Upsert(
        records
            .iter()
            .map(|r| ChunkRecord {
                id: r.id.clone(),
                values: if with_vectors {
                    r.values.clone()
                } else {
                    Vec::new()
                },
                metadata: r.metadata.clone(),
            })
            .collect(),
    )
}

/// The writer's index: each write goes to its own index first, then is
/// kept as a numbered change for the search replicas (sent at once when
/// [`FLUSH_RECORDS`] are kept, else by the writer's next flush).
pub struct ReplicatedIndex<'a> {
    /// The writer's own index.
    pub index: AnyIndex,
    /// Where changes are numbered and sent from.
    pub replicator: &'a Replicator,
    /// The object's `env`, to reach the replicas.
    pub env: &'a Env,
    /// The writer's storage (the change number).
    pub sql: SqlStorage,
    /// The tenant.
    pub tenant: &'a TenantId,
    /// How many replicas there are.
    pub replicas: u32,
    /// Whether replicas hold the vectors (the embedded index) or not (Vectorize).
    pub with_vectors: bool,
}

impl ReplicatedIndex<'_> {
    async fn keep(&self, change: ReplicaChange) -> Result<(), PortError> {
        if self.replicator.keep(&self.sql, change)? {
            self.replicator
                .flush(self.env, &self.sql, self.tenant, self.replicas)
                .await?;
        }
        Ok(())
    }
}

impl VectorIndex for ReplicatedIndex<'_> {
    fn backend(&self) -> &'static str {
        self.index.backend()
    }

    fn supports(&self, mode: SearchMode) -> bool {
        self.index.supports(mode)
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        self.index.upsert(records).await?;
        self.keep(upsert_change(records, self.with_vectors)).await
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        self.index.delete(ids).await?;
        self.keep(ReplicaChange::Delete(ids.to_vec())).await
    }

    async fn query(&self, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        self.index.query(query).await
    }
}

/// The records of a change, for a replica's index.
pub fn records(chunks: Vec<ChunkRecord>) -> Vec<VectorRecord> {
    chunks
        .into_iter()
        .map(|c| VectorRecord {
            id: c.id,
            values: c.values,
            metadata: c.metadata,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ingest::MetaValue;

    #[test]
    fn a_change_carries_vectors_only_where_replicas_hold_them() {
        let records = vec![VectorRecord {
            id: "c1".into(),
            values: vec![0.25, 0.5],
            metadata: Metadata::from([("text".to_owned(), MetaValue::Str("hi".into()))]),
        }];
        let ReplicaChange::Upsert(with) = upsert_change(&records, true) else {
            unreachable!("an upsert")
        };
        assert_eq!(with[0].values, vec![0.25, 0.5]);
        assert_eq!(with[0].metadata, records[0].metadata);
        let ReplicaChange::Upsert(without) = upsert_change(&records, false) else {
            unreachable!("an upsert")
        };
        assert!(without[0].values.is_empty());
        assert_eq!(super::records(with), records);
    }
}
