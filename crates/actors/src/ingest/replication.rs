//! The writer's side of search replicas: every change of the tenant's index
//! is numbered once the writer's own index holds it and kept; kept changes
//! are sent to every replica ([`Replicator::flush`]) when enough are kept,
//! after an answer that reports work done is built and before it is sent
//! (an enqueue, a job lookup, a delete), and from the alarm; and the whole
//! index is read out page by page for a replica that copies it. The
//! replica's side, and why this keeps every copy equal to the writer's, is
//! in [`crate::replica`].

use crate::embedded::sql_index::from_blob;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::providers::AnyIndex;
use crate::replica::{encode_batch, ReplicaHandle};
use crate::sql::{self, int, SqlError};
use protocol::ingest::{Metadata, SearchMode};
use protocol::replica::{
    ChunkPage, ChunkRecord, ExportChunks, ReplicaChange, Replicate, ReplicateBatch,
};
use protocol::{RequestId, TenantId};
use std::cell::{Cell, RefCell};
use worker::{Env, SqlStorage};

/// The writer's last change number, the last one every replica took, how
/// many replicas took it, and how many there were before the set was
/// lowered while some left out were not yet told to forget their copy.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replication (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0, replicas INTEGER NOT NULL DEFAULT 0,
    unforgotten INTEGER NOT NULL DEFAULT 0)";

/// The writer's numbers ([`SCHEMA`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Numbers {
    /// The last change numbered.
    pub seq: u64,
    /// The last change every replica took.
    pub acked: u64,
    /// How many replicas there were when they took it.
    pub replicas: u32,
    /// Replicas below this number and at or above `replicas` left the set
    /// without being told to forget their copy (0: none).
    pub unforgotten: u32,
}

/// Most chunks (or ids) in one numbered change: a document's write is cut
/// into changes of this size, so no change is too large for a message.
/// With 768-dimension vectors (3 KiB as a MessagePack `bin`), a chunk's
/// text and its document's metadata (at most 4 KiB) a chunk is at most
/// about 10 KB, a change at most about 2.5 MB.
pub const MAX_CHANGE_RECORDS: usize = 250;

/// Most chunks in one message to a replica (at most about 5 MB, inside the
/// 16 MiB a message may hold); more kept are sent in several messages, in
/// order.
pub const MAX_BATCH_RECORDS: usize = 500;

/// Chunks kept unsent after which a write sends them at once.
pub const FLUSH_RECORDS: usize = 1000;

/// Most chunks kept while replicas do not take them (about 50 MB at most):
/// past it they are dropped, and the replicas, which then see a gap in the
/// numbers, copy the index instead.
pub const MAX_KEPT_RECORDS: usize = 5000;

/// A write's change cut into pieces of at most [`MAX_CHANGE_RECORDS`]
/// (an empty change stays one piece).
pub fn pieces(change: ReplicaChange) -> Vec<ReplicaChange> {
    match change {
        ReplicaChange::Upsert(chunks) if chunks.len() > MAX_CHANGE_RECORDS => chunks
            .chunks(MAX_CHANGE_RECORDS)
            .map(|c| ReplicaChange::Upsert(c.to_vec()))
            .collect(),
        ReplicaChange::Delete(ids) if ids.len() > MAX_CHANGE_RECORDS => ids
            .chunks(MAX_CHANGE_RECORDS)
            .map(|c| ReplicaChange::Delete(c.to_vec()))
            .collect(),
        change => vec![change],
    }
}

/// The numbered changes not yet taken by every replica, in order (pure).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Kept {
    changes: Vec<Replicate>,
    records: usize,
}

impl Kept {
    /// Keeps change `seq`. False when the bound is passed: then nothing is
    /// kept any more (the caller lets the replicas copy instead).
    pub fn push(&mut self, seq: u64, change: ReplicaChange) -> bool {
        self.records += change.records();
        self.changes.push(Replicate { seq, change });
        if self.records > MAX_KEPT_RECORDS {
            self.clear();
            return false;
        }
        true
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether enough is kept that it should be sent now.
    pub fn full(&self) -> bool {
        self.records >= FLUSH_RECORDS
    }

    /// Forgets every kept change.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.records = 0;
    }

    /// The first message of kept changes: at most [`MAX_BATCH_RECORDS`]
    /// chunks (a larger single change alone), from the oldest, in order.
    /// Only this message is copied out; the next is taken once it is sent.
    pub fn next_batch(&self) -> Vec<Replicate> {
        let mut batch = Vec::new();
        let mut records = 0;
        for change in &self.changes {
            let n = change.change.records();
            if !batch.is_empty() && records + n > MAX_BATCH_RECORDS {
                break;
            }
            batch.push(change.clone());
            records += n;
        }
        batch
    }

    /// Every replica took the changes up to `last`: they are forgotten
    /// (those kept since stay).
    pub fn sent(&mut self, last: u64) {
        self.changes.retain(|c| c.seq > last);
        self.records = self.changes.iter().map(|c| c.change.records()).sum();
    }
}

/// Whether the replicas must be shown a gap (a number skipped) before any
/// other change: the writer's index diverged from its numbered changes, or
/// changes numbered past `acked` are no longer kept to send (the object was
/// reset, or they were dropped past [`MAX_KEPT_RECORDS`]).
pub fn needs_gap(diverged: bool, seq: u64, acked: u64, has_kept: bool) -> bool {
    diverged || (seq > acked && !has_kept)
}

/// Whether `SEARCH_REPLICAS` was raised (to `replicas`) while replicas left
/// out of the set earlier were not all told to forget their copy: one of
/// them may be back in the set with a stale copy.
pub fn raised_before_told(before: Numbers, replicas: u32) -> bool {
    before.unforgotten > 0 && replicas > before.replicas
}

/// The writer's replication state in memory.
#[derive(Default)]
pub struct Replicator {
    /// Held while changes are sent: replicas receive them in order.
    sending: futures::lock::Mutex<()>,
    /// Changes numbered and not yet taken by every replica.
    kept: RefCell<Kept>,
    /// Pages exported since the object woke.
    pages: Cell<u64>,
    /// Messages of changes sent since the object woke.
    batches: Cell<u64>,
    /// The writer's index changed without a numbered change, and the gap
    /// that makes the replicas copy is not numbered yet.
    diverged: Cell<bool>,
    /// A flush failed, or replicas left out were not told to forget: the
    /// replicas are owed a flush.
    owed: Cell<bool>,
    /// The numbers as last read or written: only this object writes them,
    /// and every write goes through [`Self::store`], so they are read from
    /// storage once per wake, not once per indexed document.
    known: Cell<Option<Numbers>>,
}

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: "search replica",
        message: e.to_string(),
    }
}

/// The writer's numbers (all 0 before the first change), read from storage:
/// everyone else reads them through [`Replicator::numbers`], which keeps
/// them. The table is created with the queue's (`QueueStore::create_tables`).
fn numbers(sql: &SqlStorage) -> Result<Numbers, SqlError> {
    Ok(sql::first::<(u64, u64, u32, u32)>(
        sql,
        "SELECT seq, acked, replicas, unforgotten FROM replication WHERE id = 1",
        vec![],
    )?
    .map(|(seq, acked, replicas, unforgotten)| Numbers {
        seq,
        acked,
        replicas,
        unforgotten,
    })
    .unwrap_or_default())
}

fn store(sql: &SqlStorage, n: Numbers) -> Result<(), SqlError> {
    sql::exec(
        sql,
        "INSERT INTO replication (id, seq, acked, replicas, unforgotten) VALUES (1, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE
         SET seq = excluded.seq, acked = excluded.acked, replicas = excluded.replicas,
             unforgotten = excluded.unforgotten",
        vec![
            int(n.seq),
            int(n.acked),
            int(n.replicas),
            int(n.unforgotten),
        ],
    )
}

impl Replicator {
    /// The writer's numbers ([`numbers`]), kept in memory once read.
    pub fn numbers(&self, sql: &SqlStorage) -> Result<Numbers, SqlError> {
        if let Some(n) = self.known.get() {
            return Ok(n);
        }
        let n = numbers(sql)?;
        self.known.set(Some(n));
        Ok(n)
    }

    /// Writes the writer's numbers, and keeps them once written (forgets
    /// them if the write failed: storage may hold either).
    fn store(&self, sql: &SqlStorage, n: Numbers) -> Result<(), SqlError> {
        self.known.set(None);
        store(sql, n)?;
        self.known.set(Some(n));
        Ok(())
    }

    /// Pages exported since the object woke.
    pub fn pages_exported(&self) -> u64 {
        self.pages.get()
    }

    /// Messages of changes sent since the object woke.
    pub fn batches_sent(&self) -> u64 {
        self.batches.get()
    }

    /// Whether changes are waiting to be sent.
    pub fn has_kept(&self) -> bool {
        !self.kept.borrow().is_empty()
    }

    /// Numbers `change`, already written to the writer's index (in pieces
    /// of at most [`MAX_CHANGE_RECORDS`]), and keeps it for the next
    /// [`Self::flush`]. Returns whether enough is kept that it should be
    /// sent now. Past [`MAX_KEPT_RECORDS`] nothing is kept: the numbers
    /// go on, so the replicas see a gap and copy the index.
    pub fn keep(&self, sql: &SqlStorage, change: ReplicaChange) -> Result<bool, PortError> {
        let n = self.numbers(sql).map_err(failed)?;
        let pieces = pieces(change);
        let seq = n.seq + pieces.len() as u64;
        self.store(sql, Numbers { seq, ..n }).map_err(failed)?;
        let mut kept = self.kept.borrow_mut();
        for (i, piece) in pieces.into_iter().enumerate() {
            if !kept.push(n.seq + 1 + i as u64, piece) {
                self.owed.set(true);
                worker::console_warn!(
                    "ingest queue: over {MAX_KEPT_RECORDS} chunks not taken by the search replicas; \
                     they will copy the index instead"
                );
                return Ok(false);
            }
        }
        Ok(kept.full())
    }

    /// The writer's index changed without a numbered change (a write failed
    /// part way, or its number could not be stored): the kept changes are
    /// dropped and the next flush skips a number, so every replica sees a
    /// gap and copies the index.
    pub fn diverged(&self) {
        self.diverged.set(true);
        self.owed.set(true);
        self.kept.borrow_mut().clear();
    }

    /// After the object loads its state: changes numbered past the last one
    /// every replica took are owed (the object was reset before it sent
    /// them), so the next flush numbers their gap and the alarm comes
    /// within a second.
    pub fn on_load(&self, sql: &SqlStorage) -> Result<(), PortError> {
        let n = self.numbers(sql).map_err(failed)?;
        if n.seq > n.acked {
            self.owed.set(true);
        }
        Ok(())
    }

    /// Whether the replicas are owed a flush (changes kept, a gap to
    /// number, a flush that failed, replicas to tell to forget).
    pub fn owes_replicas(&self) -> bool {
        self.has_kept() || self.diverged.get() || self.owed.get()
    }

    /// Numbers what the replicas must be told before anything else: after a
    /// divergence, or changes numbered that none of them may have taken
    /// while none is kept (the object was reset with changes in memory, or
    /// they were dropped past the bound), a number is skipped and an empty
    /// change numbered past it, so every replica sees the gap and copies.
    /// `acked` is the last change every replica took, as this flush knows it.
    fn recover(&self, sql: &SqlStorage, acked: u64) -> Result<(), PortError> {
        let n = self.numbers(sql).map_err(failed)?;
        if needs_gap(self.diverged.get(), n.seq, acked, self.has_kept()) {
            self.store(
                sql,
                Numbers {
                    seq: n.seq + 1,
                    ..n
                },
            )
            .map_err(failed)?;
            self.kept.borrow_mut().clear();
            self.keep(sql, ReplicaChange::Delete(Vec::new()))?;
            self.diverged.set(false);
        }
        Ok(())
    }

    /// Tells replicas `from..to` that they left the set: they forget their
    /// copy. Whether every one of them answered.
    async fn forget(
        &self,
        env: &Env,
        tenant: &TenantId,
        request_id: &RequestId,
        from: u32,
        to: u32,
    ) -> bool {
        let body = match encode_batch(
            request_id,
            tenant,
            ReplicateBatch {
                changes: Vec::new(),
                forget: true,
            },
        ) {
            Ok(body) => body,
            Err(e) => {
                worker::console_error!("ingest queue: {e}");
                return false;
            }
        };
        let forgets = (from..to).map(|k| {
            let body = &body;
            async move {
                match ReplicaHandle::new(env, tenant, k) {
                    Ok(replica) => replica.replicate_encoded(body).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            }
        });
        match futures::future::join_all(forgets)
            .await
            .into_iter()
            .find_map(Result::err)
        {
            None => true,
            Some(e) => {
                worker::console_error!(
                    "ingest queue: a replica left out could not be told to forget its copy: {e}"
                );
                false
            }
        }
    }

    /// Sends every kept change to each of `replicas` replicas, a message at
    /// a time in order, each encoded once and sent to all replicas at once,
    /// and records which they took. On a failure the changes not taken stay
    /// kept and are sent again next time (a replica that took them ignores
    /// them).
    ///
    /// Replicas that left the set (`SEARCH_REPLICAS` was lowered) are told
    /// to forget their copy, so they cannot answer from it if the var is
    /// raised again; a failure there holds nothing back and is retried at
    /// each flush. Should the var be raised before they all were told, a
    /// number is skipped for every replica, so all of them copy.
    pub async fn flush(
        &self,
        env: &Env,
        sql: &SqlStorage,
        tenant: &TenantId,
        replicas: u32,
    ) -> Result<(), PortError> {
        let _turn = self.sending.lock().await;
        let before = self.numbers(sql).map_err(failed)?;
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let left_out = before.replicas.max(before.unforgotten);
        let mut unforgotten = 0;
        if left_out > replicas
            && !self
                .forget(env, tenant, &request_id, replicas, left_out)
                .await
        {
            unforgotten = left_out;
        }
        if raised_before_told(before, replicas) {
            // Raised again before the ones left out were all told: any of
            // them back in the set may hold a stale copy, so every replica
            // copies.
            self.diverged.set(true);
        }
        let mut acked = before.acked;
        let mut result = Ok(());
        loop {
            // Before every message: a divergence or kept changes dropped
            // while the last one was sent are numbered as a gap now, so an
            // answer built before this flush never reports done what no
            // replica may hold.
            if let Err(e) = self.recover(sql, acked) {
                // What was sent is still stored below.
                result = Err(e);
                break;
            }
            let changes = self.kept.borrow().next_batch();
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let batch = ReplicateBatch {
                changes,
                forget: false,
            };
            let body = encode_batch(&request_id, tenant, batch).map_err(failed)?;
            let sends = (0..replicas).map(|k| {
                let body = &body;
                async move {
                    ReplicaHandle::new(env, tenant, k)
                        .map_err(failed)?
                        .replicate_encoded(body)
                        .await
                        .map(|_| ())
                        .map_err(|e| failed(format!("replica {k}: {e}")))
                }
            });
            let sent = futures::future::join_all(sends)
                .await
                .into_iter()
                .find_map(Result::err);
            if let Some(e) = sent {
                result = Err(e);
                break;
            }
            self.batches.set(self.batches.get() + 1);
            self.kept.borrow_mut().sent(last);
            acked = last;
        }
        self.owed
            .set(result.is_err() || unforgotten > 0 || self.has_kept() || self.diverged.get());
        let now = self.numbers(sql).map_err(failed)?;
        let after = Numbers {
            seq: now.seq,
            acked,
            replicas,
            unforgotten,
        };
        if after != now {
            self.store(sql, after).map_err(failed)?;
        }
        result
    }

    /// A page of the index for a replica's copy: the rows after
    /// `export.after`, read with the last change number in one synchronous
    /// step (no change can come between them).
    pub fn export(&self, sql: &SqlStorage, export: ExportChunks) -> Result<ChunkPage, SqlError> {
        let limit = export.limit.clamp(1, protocol::replica::MAX_PAGE_CHUNKS);
        let seq = self.numbers(sql)?.seq;
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
    /// Keeps the change of a write that succeeded, and sends what is kept
    /// when it is enough. A replica that does not take it fails nothing
    /// here: the write is done, and the changes stay kept for the writer's
    /// next flush, which decides what may be reported.
    async fn keep(&self, change: ReplicaChange) -> Result<(), PortError> {
        match self.replicator.keep(&self.sql, change) {
            Ok(true) => {
                let sent = self
                    .replicator
                    .flush(self.env, &self.sql, self.tenant, self.replicas)
                    .await;
                if let Err(e) = sent {
                    worker::console_warn!("ingest queue: changes kept for the replicas: {e}");
                }
            }
            Ok(false) => {}
            // Written but not numbered: the replicas must copy.
            Err(_) => self.replicator.diverged(),
        }
        Ok(())
    }

    /// The writer's own write failed, perhaps part way: the replicas cannot
    /// be told exactly what changed, so they copy.
    fn failed_write(&self, e: PortError) -> PortError {
        // Only the object's own rows are copied to replicas: a failure of
        // theirs (storage) may have changed some. A refusal (`Full`) or a
        // failure of Vectorize (written before the rows) changed none.
        if matches!(&e, PortError::Failed { service, .. } if *service == crate::embedded::sql_index::SERVICE)
        {
            self.replicator.diverged();
        }
        e
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
        self.index
            .upsert(records)
            .await
            .map_err(|e| self.failed_write(e))?;
        self.keep(upsert_change(records, self.with_vectors)).await
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        self.index
            .delete(ids)
            .await
            .map_err(|e| self.failed_write(e))?;
        self.keep(ReplicaChange::Delete(ids.to_vec())).await
    }

    async fn query(&self, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        self.index.query(query).await
    }
}

/// The records of a change, for a replica's index.
pub fn vector_records(chunks: Vec<ChunkRecord>) -> Vec<VectorRecord> {
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

    fn upsert(n: usize) -> ReplicaChange {
        ReplicaChange::Upsert(
            (0..n)
                .map(|i| ChunkRecord {
                    id: format!("c{i}"),
                    values: vec![],
                    metadata: Metadata::new(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_large_write_is_cut_into_changes_that_fit_a_message() {
        let cut = pieces(upsert(2 * MAX_CHANGE_RECORDS + 1));
        assert_eq!(
            cut.iter().map(ReplicaChange::records).collect::<Vec<_>>(),
            vec![MAX_CHANGE_RECORDS, MAX_CHANGE_RECORDS, 1]
        );
        let ReplicaChange::Upsert(last) = &cut[2] else {
            unreachable!("upserts stay upserts")
        };
        assert_eq!(last[0].id, format!("c{}", 2 * MAX_CHANGE_RECORDS));
        let ids: Vec<String> = (0..MAX_CHANGE_RECORDS + 1).map(|i| i.to_string()).collect();
        assert_eq!(pieces(ReplicaChange::Delete(ids)).len(), 2);
        assert_eq!(pieces(ReplicaChange::Delete(vec![])).len(), 1);
    }

    #[test]
    fn kept_changes_go_in_ordered_messages_and_only_what_was_sent_is_forgotten() {
        let mut kept = Kept::default();
        assert!(kept.is_empty() && kept.next_batch().is_empty());
        for seq in 1..=5 {
            assert!(kept.push(seq, upsert(200)));
        }
        assert!(kept.full(), "1,000 chunks");
        let numbers = |batch: &[Replicate]| batch.iter().map(|c| c.seq).collect::<Vec<_>>();
        let first = kept.next_batch();
        assert_eq!(numbers(&first), vec![1, 2]);
        assert_eq!(kept.next_batch(), first, "taking a message changes nothing");
        kept.sent(2);
        let second = kept.next_batch();
        assert_eq!(numbers(&second), vec![3, 4]);
        // Sent up to 4; 6 was kept meanwhile.
        assert!(kept.push(6, ReplicaChange::Delete(vec![])));
        kept.sent(4);
        assert_eq!(numbers(&kept.next_batch()), vec![5, 6]);
        assert!(!kept.full());
        kept.sent(6);
        assert!(kept.is_empty());
        // Two of the largest changes fill a message.
        assert!(kept.push(7, upsert(MAX_CHANGE_RECORDS)));
        assert!(kept.push(8, upsert(MAX_CHANGE_RECORDS)));
        assert!(kept.push(9, upsert(1)));
        let full = kept.next_batch();
        assert_eq!(numbers(&full), vec![7, 8]);
        let n: usize = full.iter().map(|c| c.change.records()).sum();
        assert_eq!(n, MAX_BATCH_RECORDS);
    }

    #[test]
    fn a_gap_is_numbered_when_changes_past_the_acked_one_are_no_longer_kept() {
        // Everything numbered was taken: nothing to show.
        assert!(!needs_gap(false, 7, 7, false));
        // Numbered and still kept: they are sent, no gap.
        assert!(!needs_gap(false, 9, 7, true));
        // Numbered, not taken, and gone (dropped past the bound, or cleared
        // by a divergence while the last message was being sent): a gap.
        assert!(needs_gap(false, 9, 7, false));
        // A divergence always is one.
        assert!(needs_gap(true, 7, 7, false));
        assert!(needs_gap(true, 9, 7, true));
    }

    #[test]
    fn raising_the_replicas_before_every_left_out_one_was_told_makes_all_copy() {
        let n = |replicas, unforgotten| Numbers {
            seq: 5,
            acked: 5,
            replicas,
            unforgotten,
        };
        // 3 lowered to 1 with replicas 1 and 2 not told (unforgotten 3).
        assert!(raised_before_told(n(1, 3), 3));
        // Raised part of the way: replica 1 is back, maybe stale.
        assert!(raised_before_told(n(1, 3), 2));
        // Not raised, or every one told: nobody needs to copy.
        assert!(!raised_before_told(n(1, 3), 1));
        assert!(!raised_before_told(n(1, 0), 3));
        // Lowered again: those still out are told, nothing is copied.
        assert!(!raised_before_told(n(2, 3), 1));
    }

    #[test]
    fn past_the_bound_nothing_is_kept() {
        let mut kept = Kept::default();
        let mut seq = 0;
        while kept.push(seq + 1, upsert(MAX_CHANGE_RECORDS)) {
            seq += 1;
            assert!(seq as usize * MAX_CHANGE_RECORDS <= MAX_KEPT_RECORDS);
        }
        assert!(kept.is_empty(), "dropped: the replicas copy instead");
        assert_eq!(seq as usize, MAX_KEPT_RECORDS / MAX_CHANGE_RECORDS);
    }

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
        assert_eq!(vector_records(with), records);
    }
}
