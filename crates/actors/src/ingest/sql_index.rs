//! The embedded vector index: vectors as BLOBs in the tenant's Durable Object
//! SQLite, an FTS5 index of the chunk texts beside them, and the vectors kept
//! in memory ([`MemIndex`]) once loaded, for exact cosine search.
//!
//! Unlike Vectorize it is read-your-writes: a chunk is searchable as soon as
//! its upsert returns. The whole index lives in one tenant's object, so it can
//! hold nothing of another tenant.

use crate::embedding::DIMENSIONS;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::retrieval::{fts_query, reciprocal_rank_fusion, MemIndex};
use protocol::ingest::{Metadata, SearchMode};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{SqlStorage, SqlStorageValue};

/// Tables of the embedded index.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS vectors (
        rid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        embedding BLOB NOT NULL,
        metadata TEXT NOT NULL
    )",
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_fts USING fts5(text, tokenize = 'unicode61')",
];

/// Candidates taken from each list before fusing or filtering.
const CANDIDATES: usize = 50;

const SERVICE: &str = "embedded index";

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: SERVICE,
        message: e.to_string(),
    }
}

/// The index over one object's SQLite storage, with its in-memory copy.
pub struct SqlVectorIndex {
    sql: SqlStorage,
    mem: Rc<RefCell<Option<MemIndex>>>,
}

impl SqlVectorIndex {
    /// The index in `sql`; `mem` is the object's cache of the vectors.
    pub fn new(sql: SqlStorage, mem: Rc<RefCell<Option<MemIndex>>>) -> Self {
        Self { sql, mem }
    }

    /// Loads the vectors into memory if they are not there yet.
    fn ensure_loaded(&self) -> Result<(), PortError> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        let mut index = MemIndex::new(DIMENSIONS);
        let cursor = self
            .sql
            .exec("SELECT id, embedding, metadata FROM vectors", None)
            .map_err(failed)?;
        for row in cursor.raw() {
            let row = row.map_err(failed)?;
            if let [SqlStorageValue::String(id), SqlStorageValue::Blob(blob), SqlStorageValue::String(meta)] =
                row.as_slice()
            {
                let metadata: Metadata = serde_json::from_str(meta).map_err(failed)?;
                index
                    .upsert(id, &from_blob(blob), metadata)
                    .map_err(failed)?;
            }
        }
        *self.mem.borrow_mut() = Some(index);
        Ok(())
    }

    fn rid(&self, id: &str) -> Result<Option<i64>, PortError> {
        let cursor = self
            .sql
            .exec("SELECT rid FROM vectors WHERE id = ?", vec![id.into()])
            .map_err(failed)?;
        for row in cursor.raw() {
            if let [SqlStorageValue::Integer(rid)] = row.map_err(failed)?.as_slice() {
                return Ok(Some(*rid));
            }
        }
        Ok(None)
    }

    /// Removes a row's full-text entry and, with `row_too`, the row itself.
    fn remove_row(&self, rid: i64, row_too: bool) -> Result<(), PortError> {
        self.sql
            .exec(
                "DELETE FROM chunk_fts WHERE rowid = ?",
                vec![SqlStorageValue::Integer(rid)],
            )
            .map_err(failed)?;
        if row_too {
            self.sql
                .exec(
                    "DELETE FROM vectors WHERE rid = ?",
                    vec![SqlStorageValue::Integer(rid)],
                )
                .map_err(failed)?;
        }
        Ok(())
    }

    fn vector_hits(&self, vector: &[f32], k: usize, filter: &Metadata) -> Vec<VectorHit> {
        let mem = self.mem.borrow();
        let Some(index) = mem.as_ref() else {
            return Vec::new();
        };
        index
            .nearest(vector, k, filter)
            .into_iter()
            .map(|s| VectorHit {
                id: s.id.to_owned(),
                score: f64::from(s.score),
                metadata: s.metadata.clone(),
            })
            .collect()
    }

    fn keyword_hits(
        &self,
        text: &str,
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<VectorHit>, PortError> {
        let Some(expr) = fts_query(text) else {
            return Ok(Vec::new());
        };
        // Fetch more than k when a filter may drop some.
        let limit = if filter.is_empty() {
            k
        } else {
            k.max(CANDIDATES) * 4
        };
        let cursor = self
            .sql
            .exec(
                "SELECT v.id, bm25(chunk_fts) AS rank FROM chunk_fts \
                 JOIN vectors v ON v.rid = chunk_fts.rowid \
                 WHERE chunk_fts MATCH ? ORDER BY rank LIMIT ?",
                vec![expr.into(), SqlStorageValue::Integer(limit as i64)],
            )
            .map_err(failed)?;
        let mem = self.mem.borrow();
        let mut hits = Vec::new();
        for row in cursor.raw() {
            let row = row.map_err(failed)?;
            let (id, rank) = match row.as_slice() {
                [SqlStorageValue::String(id), SqlStorageValue::Float(r)] => (id.clone(), *r),
                [SqlStorageValue::String(id), SqlStorageValue::Integer(r)] => {
                    (id.clone(), *r as f64)
                }
                _ => continue,
            };
            let Some(metadata) = mem.as_ref().and_then(|m| m.metadata(&id)) else {
                continue;
            };
            if !crate::retrieval::matches_filter(metadata, filter) {
                continue;
            }
            // bm25() is lower-is-better; flip it so every mode is higher-is-better.
            hits.push(VectorHit {
                id,
                score: -rank,
                metadata: metadata.clone(),
            });
            if hits.len() >= k {
                break;
            }
        }
        Ok(hits)
    }
}

/// Little-endian `f32`s as bytes.
pub fn to_blob(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Bytes back to `f32`s (a trailing partial value is ignored).
pub fn from_blob(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn text_of(metadata: &Metadata) -> String {
    match metadata.get("text") {
        Some(protocol::ingest::MetaValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

impl VectorIndex for SqlVectorIndex {
    fn backend(&self) -> &'static str {
        "embedded-sqlite"
    }

    fn supports(&self, _mode: SearchMode) -> bool {
        true
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        self.ensure_loaded()?;
        for r in records {
            let meta = serde_json::to_string(&r.metadata).map_err(failed)?;
            if let Some(rid) = self.rid(&r.id)? {
                self.remove_row(rid, false)?;
                self.sql
                    .exec(
                        "UPDATE vectors SET embedding = ?, metadata = ? WHERE rid = ?",
                        vec![
                            to_blob(&r.values).into(),
                            meta.into(),
                            SqlStorageValue::Integer(rid),
                        ],
                    )
                    .map_err(failed)?;
            } else {
                self.sql
                    .exec(
                        "INSERT INTO vectors (id, embedding, metadata) VALUES (?, ?, ?)",
                        vec![r.id.as_str().into(), to_blob(&r.values).into(), meta.into()],
                    )
                    .map_err(failed)?;
            }
            let rid = self
                .rid(&r.id)?
                .ok_or_else(|| failed(format!("vector {} vanished after its write", r.id)))?;
            self.sql
                .exec(
                    "INSERT INTO chunk_fts (rowid, text) VALUES (?, ?)",
                    vec![SqlStorageValue::Integer(rid), text_of(&r.metadata).into()],
                )
                .map_err(failed)?;
            if let Some(mem) = self.mem.borrow_mut().as_mut() {
                mem.upsert(&r.id, &r.values, r.metadata.clone())
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        self.ensure_loaded()?;
        for id in ids {
            if let Some(rid) = self.rid(id)? {
                self.remove_row(rid, true)?;
            }
            if let Some(mem) = self.mem.borrow_mut().as_mut() {
                mem.remove(id);
            }
        }
        Ok(())
    }

    async fn query(&self, q: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        self.ensure_loaded()?;
        let need_vector = || {
            q.vector.ok_or_else(|| {
                PortError::Unsupported("this mode needs the query's embedding".into())
            })
        };
        match q.mode {
            SearchMode::Vector => Ok(self.vector_hits(need_vector()?, q.top_k, q.filter)),
            SearchMode::Keyword => self.keyword_hits(q.text, q.top_k, q.filter),
            SearchMode::Hybrid => {
                let n = CANDIDATES.max(q.top_k);
                let by_vector = self.vector_hits(need_vector()?, n, q.filter);
                let by_keyword = self.keyword_hits(q.text, n, q.filter)?;
                let mut metadata: std::collections::HashMap<String, Metadata> =
                    std::collections::HashMap::new();
                let lists: Vec<Vec<String>> = [by_vector, by_keyword]
                    .into_iter()
                    .map(|hits| {
                        hits.into_iter()
                            .map(|h| {
                                metadata.entry(h.id.clone()).or_insert(h.metadata);
                                h.id
                            })
                            .collect()
                    })
                    .collect();
                Ok(reciprocal_rank_fusion(&lists)
                    .into_iter()
                    .take(q.top_k)
                    .filter_map(|(id, score)| {
                        let metadata = metadata.remove(&id)?;
                        Some(VectorHit {
                            id,
                            score,
                            metadata,
                        })
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip() {
        let v = vec![0.0, -1.5, 3.25, f32::MIN_POSITIVE];
        assert_eq!(from_blob(&to_blob(&v)), v);
        assert_eq!(to_blob(&v).len(), 16);
        assert_eq!(from_blob(&[0, 0, 128, 63, 1]), vec![1.0]);
    }
}
