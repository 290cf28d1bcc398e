//! The writer's side of search replicas: every change of the tenant's index
//! is numbered and sent to every replica before the work that made it is
//! reported done, and the whole index is read out page by page for a
//! replica that copies it. The replica's side, and why this keeps every
//! copy equal to the writer's, is in [`crate::replica`].

use crate::embedded::sql_index::from_blob;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::providers::AnyIndex;
use crate::replica::ReplicaHandle;
use crate::sql::{self, int, SqlError};
use protocol::ingest::{Metadata, SearchMode};
use protocol::replica::{ChunkPage, ChunkRecord, ExportChunks, ReplicaChange, Replicate};
use protocol::{RequestId, TenantId};
use std::cell::Cell;
use worker::{Env, SqlStorage};

/// The writer's last change number.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replication (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)";

/// The writer's replication state in memory.
#[derive(Default)]
pub struct Replicator {
    /// Held while a change is numbered and sent: replicas receive changes
    /// in their numbers' order.
    sending: futures::lock::Mutex<()>,
    /// Pages exported since the object woke.
    pages: Cell<u64>,
}

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: "search replica",
        message: e.to_string(),
    }
}

/// The writer's last change number (0 before the first). The table is
/// created with the queue's (`QueueStore::create_tables`).
pub fn last_seq(sql: &SqlStorage) -> Result<u64, SqlError> {
    Ok(
        sql::first::<(u64,)>(sql, "SELECT seq FROM replication WHERE id = 1", vec![])?
            .map_or(0, |(seq,)| seq),
    )
}

/// Numbers the next change and stores the number.
fn next_seq(sql: &SqlStorage) -> Result<u64, SqlError> {
    let seq = last_seq(sql)? + 1;
    sql::exec(
        sql,
        "INSERT INTO replication (id, seq) VALUES (1, ?)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
        vec![int(seq)],
    )?;
    Ok(seq)
}

impl Replicator {
    /// Pages exported since the object woke.
    pub fn pages_exported(&self) -> u64 {
        self.pages.get()
    }

    /// Numbers `change` (already written to the writer's index) and sends it
    /// to each of `replicas` replicas, all at once; fails if any of them did
    /// not take it, so the work is retried (a replica that missed a number
    /// copies the index again when the next one arrives).
    pub async fn send(
        &self,
        env: &Env,
        sql: &SqlStorage,
        tenant: &TenantId,
        replicas: u32,
        change: ReplicaChange,
    ) -> Result<(), PortError> {
        if replicas == 0 {
            return Ok(());
        }
        let _turn = self.sending.lock().await;
        let seq = next_seq(sql).map_err(failed)?;
        let message = Replicate { seq, change };
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let sends = (0..replicas).map(|k| {
            let message = message.clone();
            let request_id = &request_id;
            async move {
                ReplicaHandle::new(env, tenant, k)
                    .map_err(failed)?
                    .replicate(request_id, message)
                    .await
                    .map_err(|e| failed(format!("replica {k}: {e}")))
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        Ok(())
    }

    /// A page of the index for a replica's copy: the rows after
    /// `export.after`, read with the last change number in one synchronous
    /// step (no change can come between them).
    pub fn export(&self, sql: &SqlStorage, export: ExportChunks) -> Result<ChunkPage, SqlError> {
        let limit = export.limit.clamp(1, protocol::replica::MAX_PAGE_CHUNKS);
        let seq = last_seq(sql)?;
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

/// The writer's index: each write goes to its own index first, then, as a
/// numbered change, to every search replica.
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

impl VectorIndex for ReplicatedIndex<'_> {
    fn backend(&self) -> &'static str {
        self.index.backend()
    }

    fn supports(&self, mode: SearchMode) -> bool {
        self.index.supports(mode)
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        self.index.upsert(records).await?;
        let change = upsert_change(records, self.with_vectors);
        self.replicator
            .send(self.env, &self.sql, self.tenant, self.replicas, change)
            .await
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        self.index.delete(ids).await?;
        let change = ReplicaChange::Delete(ids.to_vec());
        self.replicator
            .send(self.env, &self.sql, self.tenant, self.replicas, change)
            .await
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
