//! The embedded vector index: vectors as BLOBs in the tenant's Durable Object
//! SQLite, an FTS5 index of the chunk texts beside them, and the vectors alone
//! kept in memory ([`MemIndex`]) once a vector search needs them.
//!
//! Memory is bounded: at most `cap` chunks (`EMBEDDED_MAX_CHUNKS`), and only
//! their vectors (3 KiB each at 768 dimensions) stay in memory; ids, metadata
//! and text are read from SQLite for the top k of a search. An upsert that
//! would take the index past the cap is refused before anything is written
//! ([`PortError::Full`], `index_full`). Deletes and keyword search never load
//! the vectors, so a tenant over a lowered cap can still delete its way back.
//!
//! Unlike Vectorize it is read-your-writes: a chunk is searchable as soon as
//! its upsert returns. The whole index lives in one tenant's object, so it can
//! hold nothing of another tenant.

use crate::embedding::DIMENSIONS;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::retrieval::{
    fts_query, keyword_relevance, matches_filter, rank_legs, vector_relevance, Fused, MemIndex,
    MemIndexError,
};
use crate::sql::{self, int, SqlError};
use protocol::ingest::{MetaValue, Metadata, SearchMode};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
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
    // The full-text index: each chunk's document title and its text, words
    // stemmed (Porter) so "borrowing" finds "borrowed", accents folded.
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_text USING fts5(
        title, text, tokenize = 'porter unicode61 remove_diacritics 2')",
    // The first full-text index (text only, unstemmed): what an older
    // version wrote moves to `chunk_text` once, and the table stays empty.
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_fts USING fts5(text, tokenize = 'unicode61')",
    "INSERT INTO chunk_text (rowid, title, text)
        SELECT chunk_fts.rowid, COALESCE(json_extract(vectors.metadata, '$.title'), ''), chunk_fts.text
        FROM chunk_fts JOIN vectors ON vectors.rid = chunk_fts.rowid",
    "DELETE FROM chunk_fts",
];

/// How much more a query word found in a chunk's document title counts than
/// one in its text (BM25 column weights).
pub const TITLE_WEIGHT: f64 = 2.0;

/// Candidates taken from each list before fusing or filtering.
pub const CANDIDATES: usize = 50;

/// How many candidates each leg of a hybrid search of depth `depth` brings.
pub fn candidates(depth: usize) -> usize {
    CANDIDATES.max(depth)
}

/// How deep the vector leg of a search in `mode` answering `top_k` chunks
/// goes: as deep as the answer, or for hybrid, as deep as its candidates.
pub fn leg_depth(mode: SearchMode, top_k: usize) -> usize {
    if mode == SearchMode::Hybrid {
        candidates(top_k)
    } else {
        top_k
    }
}

/// A vector leg found elsewhere, by chunk id, joined to this index's row ids
/// (`rids`): ids without a row are dropped, the order is kept.
pub fn join_leg(by_vector: &[(String, f64)], rids: &HashMap<String, i64>) -> Vec<(i64, f64)> {
    by_vector
        .iter()
        .filter_map(|(id, score)| rids.get(id).map(|rid| (*rid, *score)))
        .collect()
}

/// The service named in this index's failures.
pub const SERVICE: &str = "embedded index";

/// The client's error code when the index is full.
pub const INDEX_FULL: &str = "index_full";

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::Failed {
        service: SERVICE,
        message: e.to_string(),
    }
}

fn storage(e: SqlError) -> PortError {
    failed(e)
}

fn full(count: u64, adding: u64, cap: u64) -> PortError {
    PortError::Full {
        reason: INDEX_FULL,
        message: format!(
            "the index holds {count} chunks and this write adds {adding}; the bound is {cap} \
             (EMBEDDED_MAX_CHUNKS); delete documents first"
        ),
    }
}

/// The index over one object's SQLite storage, with its in-memory vectors.
///
/// Beside Vectorize ([`SqlVectorIndex::text_only`]) it keeps each chunk's row
/// (id, metadata, text) and the full-text index but no embedding (an empty
/// BLOB): the vectors are in Vectorize, and the vector leg of a search comes
/// from there ([`SqlVectorIndex::rank_with`]).
pub struct SqlVectorIndex {
    sql: SqlStorage,
    mem: Rc<RefCell<Option<MemIndex>>>,
    /// The object's count of the index's chunks, once counted; changed by
    /// every write and delete, forgotten by one that fails.
    chunks: Rc<Cell<Option<u64>>>,
    cap: u64,
    /// Whether the embeddings are stored here (the embedded index) or
    /// elsewhere (beside Vectorize).
    vectors: bool,
    /// A copy that follows a writer (a search replica): it takes every
    /// write the writer made, whatever the cap, and a write the loaded
    /// vectors cannot hold drops them (the next vector search answers
    /// `index_full`, as the writer's would).
    follower: bool,
}

impl SqlVectorIndex {
    /// The index in `sql`; `mem` is the object's cache of the vectors,
    /// `chunks` its count of the chunks, `cap` the most chunks the index may
    /// hold.
    pub fn new(
        sql: SqlStorage,
        mem: Rc<RefCell<Option<MemIndex>>>,
        chunks: Rc<Cell<Option<u64>>>,
        cap: u64,
    ) -> Self {
        Self {
            sql,
            mem,
            chunks,
            cap,
            vectors: true,
            follower: false,
        }
    }

    /// The index of a search replica in `sql`: as [`SqlVectorIndex::new`],
    /// but writes are never refused for the cap (the writer decided them),
    /// and `vectors` says whether embeddings are kept (the embedded index)
    /// or live in Vectorize.
    pub fn follower(
        sql: SqlStorage,
        mem: Rc<RefCell<Option<MemIndex>>>,
        chunks: Rc<Cell<Option<u64>>>,
        cap: u64,
        vectors: bool,
    ) -> Self {
        Self {
            vectors,
            follower: true,
            ..Self::new(sql, mem, chunks, cap)
        }
    }

    /// The rows and full-text index alone, beside a vector index kept
    /// elsewhere (Vectorize): no embedding is stored or loaded, and no chunk
    /// cap applies (nothing of it is held in memory).
    pub fn text_only(sql: SqlStorage, chunks: Rc<Cell<Option<u64>>>) -> Self {
        Self {
            sql,
            mem: Rc::new(RefCell::new(None)),
            chunks,
            cap: u64::MAX,
            vectors: false,
            follower: false,
        }
    }

    /// Answers `q` with a vector leg found elsewhere (`by_vector`: chunk ids
    /// with their relevance, best first, e.g. Vectorize's): in vector mode
    /// that leg alone, in hybrid mode fused with this index's keyword leg,
    /// in keyword mode this index alone. Chunks of the vector leg that this
    /// index does not hold are dropped ([`join_leg`]): only this tenant's
    /// current chunks are ever answered.
    pub fn rank_with(
        &self,
        q: &VectorQuery<'_>,
        by_vector: &[(String, f64)],
    ) -> Result<Vec<VectorHit>, PortError> {
        let ids: Vec<&str> = by_vector.iter().map(|(id, _)| id.as_str()).collect();
        let rids = self.rids(&ids)?;
        let by_vector = join_leg(by_vector, &rids);
        let ranked = self.rank(q, by_vector)?;
        self.hits(&ranked, q.filter)
    }

    /// The ranking of `q` given its vector leg (row ids with relevances):
    /// the keyword leg is asked only where the mode uses it.
    fn rank(
        &self,
        q: &VectorQuery<'_>,
        by_vector: Vec<(i64, f64)>,
    ) -> Result<Vec<Fused<i64>>, PortError> {
        let by_keyword = match q.mode {
            SearchMode::Vector => Vec::new(),
            SearchMode::Keyword => self.keyword_relevances(q.text, q.top_k, q.filter)?,
            SearchMode::Hybrid => self.keyword_relevances(q.text, candidates(q.top_k), q.filter)?,
        };
        Ok(rank_legs(q.mode, q.top_k, by_vector, by_keyword))
    }

    /// The chunks the index holds: from memory where the vectors are
    /// loaded, else counted once (a scan of the table, which Durable Object
    /// storage bills row by row) and kept: every write through this index
    /// adds what it inserted and takes off what it deleted, and one that
    /// fails forgets it.
    fn count(&self) -> Result<u64, PortError> {
        if let Some(mem) = self.mem.borrow().as_ref() {
            return Ok(mem.len() as u64);
        }
        if let Some(n) = self.chunks.get() {
            return Ok(n);
        }
        let n = sql::scalar(&self.sql, "SELECT COUNT(*) FROM vectors", vec![]).map_err(storage)?;
        self.chunks.set(Some(n));
        Ok(n)
    }

    /// Loads the vectors into memory if they are not there yet.
    fn ensure_loaded(&self) -> Result<(), PortError> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        let count = self.count()?;
        if count > self.cap {
            // Loading would take more memory than the bound allows (the cap
            // was lowered after the index grew): refuse rather than risk the
            // isolate; deletes and keyword search still work.
            return Err(full(count, 0, self.cap));
        }
        let cap = usize::try_from(self.cap).unwrap_or(usize::MAX);
        let mut index = MemIndex::new(DIMENSIONS, cap);
        let cursor = self
            .sql
            .exec("SELECT rid, embedding FROM vectors", None)
            .map_err(failed)?;
        for row in cursor.raw() {
            let row = row.map_err(failed)?;
            // The blob is decoded once, into the index's buffer, then its block.
            let (Some(SqlStorageValue::Integer(rid)), Some(SqlStorageValue::Blob(blob))) =
                (row.first(), row.get(1))
            else {
                return Err(failed(format!(
                    "a vectors row is not (integer, blob): {:?}",
                    row.first()
                )));
            };
            index
                .upsert_le_bytes(*rid, blob)
                .map_err(|e| mem_error(e, count))?;
        }
        *self.mem.borrow_mut() = Some(index);
        Ok(())
    }

    /// The row ids of those of `ids` that are stored, in one statement per
    /// 90 ids (not one per chunk).
    fn rids(&self, ids: &[&str]) -> Result<HashMap<String, i64>, PortError> {
        let mut found = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(90) {
            let marks = vec!["?"; batch.len()].join(", ");
            let rows = sql::rows::<(String, i64)>(
                &self.sql,
                &format!("SELECT id, rid FROM vectors WHERE id IN ({marks})"),
                batch.iter().map(|id| (*id).into()).collect(),
            )
            .map_err(storage)?;
            found.extend(rows);
        }
        Ok(found)
    }

    fn rid(&self, id: &str) -> Result<Option<i64>, PortError> {
        sql::first::<(i64,)>(
            &self.sql,
            "SELECT rid FROM vectors WHERE id = ?",
            vec![id.into()],
        )
        .map(|r| r.map(|(rid,)| rid))
        .map_err(storage)
    }

    /// Row ids whose metadata matches `filter` (equality on every key).
    fn filtered(&self, filter: &Metadata) -> Result<HashSet<i64>, PortError> {
        let (condition, bindings) = filter_sql(filter);
        let query = format!("SELECT rid FROM vectors WHERE {condition}");
        Ok(sql::rows::<(i64,)>(&self.sql, &query, bindings)
            .map_err(storage)?
            .into_iter()
            .map(|(rid,)| rid)
            .collect())
    }

    /// The hits for scored row ids, in their order, read in one statement
    /// per 90 rows (not one per row: a hybrid query reads up to 100
    /// candidates), dropping rows gone meanwhile or outside `filter`.
    fn hits(&self, scored: &[Fused<i64>], filter: &Metadata) -> Result<Vec<VectorHit>, PortError> {
        let mut found: HashMap<i64, (String, String)> = HashMap::with_capacity(scored.len());
        for batch in scored.chunks(90) {
            let marks = vec!["?"; batch.len()].join(", ");
            let rows = sql::rows::<(i64, String, String)>(
                &self.sql,
                &format!("SELECT rid, id, metadata FROM vectors WHERE rid IN ({marks})"),
                batch.iter().map(|f| int(f.key)).collect(),
            )
            .map_err(storage)?;
            found.extend(rows.into_iter().map(|(rid, id, meta)| (rid, (id, meta))));
        }
        let mut hits = Vec::with_capacity(scored.len());
        for f in scored {
            let Some((id, meta)) = found.remove(&f.key) else {
                continue;
            };
            let metadata: Metadata = serde_json::from_str(&meta).map_err(failed)?;
            // The SQL filter already chose; this is the exact rule, kept as
            // the final word (numbers of either type, booleans).
            if matches_filter(&metadata, filter) {
                hits.push(VectorHit {
                    id,
                    score: f.score,
                    vector_score: f.vector,
                    keyword_score: f.keyword,
                    metadata,
                });
            }
        }
        Ok(hits)
    }

    /// The `k` nearest row ids with their cosine scores (no row read).
    fn vector_candidates(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(i64, f64)>, PortError> {
        self.ensure_loaded()?;
        let allowed = if filter.is_empty() {
            None
        } else {
            Some(self.filtered(filter)?)
        };
        Ok(match self.mem.borrow().as_ref() {
            Some(index) => index
                .nearest(vector, k, allowed.as_ref())
                .into_iter()
                .map(|(rid, score)| (rid, f64::from(score)))
                .collect(),
            None => Vec::new(),
        })
    }

    /// The `k` nearest row ids with their relevance (the clamped cosine).
    fn vector_relevances(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(i64, f64)>, PortError> {
        Ok(self
            .vector_candidates(vector, k, filter)?
            .into_iter()
            .map(|(rid, cosine)| (rid, vector_relevance(cosine)))
            .collect())
    }

    /// The best `k` row ids by BM25 with their relevance in [0, 1]
    /// ([`keyword_relevance`], which needs the number of indexed chunks).
    fn keyword_relevances(
        &self,
        text: &str,
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(i64, f64)>, PortError> {
        let best = self.keyword_candidates(text, k, filter)?;
        if best.is_empty() {
            return Ok(best);
        }
        let chunks = self.count()?;
        Ok(best
            .into_iter()
            .map(|(rid, bm25)| (rid, keyword_relevance(bm25, chunks)))
            .collect())
    }

    /// The best `k` row ids by BM25 (higher is better), within `filter`.
    /// Without a filter, the full-text index alone answers: no `vectors` row
    /// is touched (each holds a 3 KiB embedding) until the top k are read.
    fn keyword_candidates(
        &self,
        text: &str,
        k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(i64, f64)>, PortError> {
        let Some(expr) = fts_query(text) else {
            return Ok(Vec::new());
        };
        let rows = if filter.is_empty() {
            sql::rows::<(i64, f64)>(
                &self.sql,
                "SELECT rowid, bm25(chunk_text, ?, 1.0) AS score FROM chunk_text \
                 WHERE chunk_text MATCH ? ORDER BY score LIMIT ?",
                vec![TITLE_WEIGHT.into(), expr.into(), int(k)],
            )
        } else {
            let (condition, mut bindings) = filter_sql(filter);
            let mut all = vec![
                SqlStorageValue::from(TITLE_WEIGHT),
                SqlStorageValue::from(expr),
            ];
            all.append(&mut bindings);
            all.push(int(k));
            sql::rows::<(i64, f64)>(
                &self.sql,
                &format!(
                    "SELECT chunk_text.rowid, bm25(chunk_text, ?, 1.0) AS score FROM chunk_text \
                     JOIN vectors ON vectors.rid = chunk_text.rowid \
                     WHERE chunk_text MATCH ? AND {condition} ORDER BY score LIMIT ?"
                ),
                all,
            )
        }
        .map_err(storage)?;
        // bm25() is lower-is-better; flip it so every mode is higher-is-better.
        Ok(rows.into_iter().map(|(rid, rank)| (rid, -rank)).collect())
    }

    /// Forgets the in-memory vectors (reloaded on next use): after a failure
    /// part way through a write, memory may disagree with storage.
    fn forget_memory(&self) {
        *self.mem.borrow_mut() = None;
    }

    /// Writes `records`; `stored` holds the row ids of those already stored.
    /// Returns how many rows it inserted.
    ///
    /// New rows go in with [`ROWS_PER_INSERT`] rows a statement, and so do
    /// their full-text rows: FTS5 writes what it holds in memory to a new
    /// segment of its index at every statement that begins while it holds
    /// something (the statement's savepoint), so a statement per chunk made
    /// a segment per chunk, and the merging of them, on the writer and on
    /// every replica.
    fn write(
        &self,
        records: &[VectorRecord],
        stored: HashMap<String, i64>,
    ) -> Result<u64, PortError> {
        let records = latest_by_id(records);
        let mut rids: HashMap<&str, i64> = HashMap::with_capacity(records.len());
        let (replaced, new): (Vec<&VectorRecord>, Vec<&VectorRecord>) = records
            .iter()
            .partition(|r| stored.contains_key(r.id.as_str()));
        for batch in replaced.chunks(90) {
            let marks = vec!["?"; batch.len()].join(", ");
            sql::exec(
                &self.sql,
                &format!("DELETE FROM chunk_text WHERE rowid IN ({marks})"),
                batch
                    .iter()
                    .filter_map(|r| stored.get(r.id.as_str()).copied().map(int))
                    .collect(),
            )
            .map_err(storage)?;
        }
        for r in &replaced {
            let Some(&rid) = stored.get(r.id.as_str()) else {
                continue;
            };
            sql::exec(
                &self.sql,
                "UPDATE vectors SET embedding = ?, metadata = ? WHERE rid = ?",
                vec![self.embedding(r).into(), metadata_json(r)?.into(), int(rid)],
            )
            .map_err(storage)?;
            rids.insert(r.id.as_str(), rid);
        }
        for batch in new.chunks(ROWS_PER_INSERT) {
            let marks = vec!["(?, ?, ?)"; batch.len()].join(", ");
            let mut bindings = Vec::with_capacity(3 * batch.len());
            for r in batch {
                bindings.push(r.id.as_str().into());
                bindings.push(self.embedding(r).into());
                bindings.push(metadata_json(r)?.into());
            }
            let inserted = sql::rows::<(String, i64)>(
                &self.sql,
                &format!(
                    "INSERT INTO vectors (id, embedding, metadata) VALUES {marks} RETURNING id, rid"
                ),
                bindings,
            )
            .map_err(storage)?;
            for (id, rid) in inserted {
                if let Some(r) = batch.iter().find(|r| r.id == id) {
                    rids.insert(r.id.as_str(), rid);
                }
            }
        }
        let written: Vec<(&VectorRecord, i64)> = records
            .iter()
            .map(|r| {
                rids.get(r.id.as_str())
                    .map(|rid| (*r, *rid))
                    .ok_or_else(|| failed(format!("no row id for {} after its write", r.id)))
            })
            .collect::<Result<_, _>>()?;
        for batch in written.chunks(ROWS_PER_INSERT) {
            let marks = vec!["(?, ?, ?)"; batch.len()].join(", ");
            let mut bindings = Vec::with_capacity(3 * batch.len());
            for (r, rid) in batch {
                bindings.push(int(*rid));
                bindings.push(title_of(&r.metadata).into());
                bindings.push(text_of(&r.metadata).into());
            }
            sql::exec(
                &self.sql,
                &format!("INSERT INTO chunk_text (rowid, title, text) VALUES {marks}"),
                bindings,
            )
            .map_err(storage)?;
        }
        let mut loaded = self.mem.borrow_mut();
        if let Some(mem) = loaded.as_mut() {
            for (r, rid) in &written {
                let len = mem.len() as u64;
                if let Err(e) = mem.upsert(*rid, &r.values) {
                    if !self.follower {
                        return Err(mem_error(e, len));
                    }
                    // Stored; the vectors are read again on next use.
                    *loaded = None;
                    break;
                }
            }
        }
        Ok(new.len() as u64)
    }

    /// What `r`'s row stores as its embedding: nothing beside Vectorize.
    fn embedding(&self, r: &VectorRecord) -> Vec<u8> {
        if self.vectors {
            to_blob(&r.values)
        } else {
            Vec::new()
        }
    }
}

/// `records` with each id once: the later of two records of an id is the
/// one kept, as if the earlier were written, then replaced (a replica
/// writes the changes of a message together, and a document may change
/// twice in one). In the order of the records kept.
fn latest_by_id(records: &[VectorRecord]) -> Vec<&VectorRecord> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    records
        .iter()
        .enumerate()
        .filter(|(i, r)| last.get(r.id.as_str()) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

/// Rows a multi-row `INSERT` writes: three values each, within the 100
/// bound parameters a statement may have.
const ROWS_PER_INSERT: usize = 33;
const _: () = assert!(3 * ROWS_PER_INSERT <= 100);

fn metadata_json(r: &VectorRecord) -> Result<String, PortError> {
    serde_json::to_string(&r.metadata).map_err(failed)
}

fn mem_error(e: MemIndexError, count: u64) -> PortError {
    match e {
        MemIndexError::Full { cap } => full(count, 1, cap as u64),
        other => failed(other),
    }
}

/// A SQL condition (and its bindings) that holds for rows whose `metadata`
/// JSON has every key of `filter` with an equal value of the same kind
/// (numbers compare across integer and float, as [`matches_filter`] does).
/// Keys are bound as JSON paths, never spliced into the statement.
pub fn filter_sql(filter: &Metadata) -> (String, Vec<SqlStorageValue>) {
    let mut conditions = Vec::new();
    let mut bindings = Vec::new();
    for (key, value) in filter {
        let path = format!("$.\"{}\"", key.replace('"', ""));
        match value {
            MetaValue::Bool(b) => {
                conditions.push("json_type(metadata, ?) = ?");
                bindings.push(path.into());
                bindings.push(if *b { "true" } else { "false" }.into());
            }
            MetaValue::Str(s) => {
                conditions
                    .push("(json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?)");
                bindings.push(path.clone().into());
                bindings.push(path.into());
                bindings.push(s.as_str().into());
            }
            MetaValue::Int(n) => {
                conditions.push(
                    "(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?)",
                );
                bindings.push(path.clone().into());
                bindings.push(path.into());
                bindings.push(int(*n));
            }
            MetaValue::Float(f) => {
                conditions.push(
                    "(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?)",
                );
                bindings.push(path.clone().into());
                bindings.push(path.into());
                bindings.push(SqlStorageValue::Float(*f));
            }
        }
    }
    if conditions.is_empty() {
        ("1".to_owned(), bindings)
    } else {
        (conditions.join(" AND "), bindings)
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
        .map(|c| match c {
            [a, b, c, d] => f32::from_le_bytes([*a, *b, *c, *d]),
            _ => 0.0,
        })
        .collect()
}

fn title_of(metadata: &Metadata) -> String {
    match metadata.get("title") {
        Some(MetaValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

fn text_of(metadata: &Metadata) -> String {
    match metadata.get("text") {
        Some(MetaValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

impl VectorIndex for SqlVectorIndex {
    fn backend(&self) -> &'static str {
        "embedded-sqlite"
    }

    fn supports(&self, mode: SearchMode) -> bool {
        self.vectors || mode == SearchMode::Keyword
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        let added = self.upsert_rows(records);
        self.recount(added.as_ref().ok().map(|n| i128::from(*n)));
        added.map(|_| ())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        let deleted = self.delete_rows(ids);
        self.recount(deleted.as_ref().ok().map(|n| -i128::from(*n)));
        deleted.map(|_| ())
    }

    async fn query(&self, q: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        self.answer(q)
    }
}

impl SqlVectorIndex {
    /// Keeps the known chunk count ([`Self::count`]) after a write that
    /// changed it by `by` rows; `None`, a write that failed (part of it may
    /// be stored), forgets it.
    fn recount(&self, by: Option<i128>) {
        let kept = match (self.chunks.get(), by) {
            (Some(n), Some(by)) => u64::try_from(i128::from(n) + by).ok(),
            _ => None,
        };
        self.chunks.set(kept);
    }

    /// Writes `records`; returns how many rows it inserted (the rest
    /// replaced stored ones).
    fn upsert_rows(&self, records: &[VectorRecord]) -> Result<u64, PortError> {
        // Refuse before writing anything if the new ids would not fit: the
        // stored ids in one read, the count counted once and then kept.
        // Only the embedded index has a cap: beside Vectorize nothing is
        // held in memory.
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let stored = self.rids(&ids)?;
        let adding = records
            .iter()
            .filter(|r| !stored.contains_key(&r.id))
            .map(|r| r.id.as_str())
            .collect::<HashSet<_>>()
            .len() as u64;
        if self.vectors && !self.follower && adding > 0 {
            let count = self.count()?;
            if count.saturating_add(adding) > self.cap {
                return Err(full(count, adding, self.cap));
            }
        }
        self.write(records, stored)
            .inspect_err(|_| self.forget_memory())
    }

    /// Deletes the rows of `ids`; returns how many were stored.
    fn delete_rows(&self, ids: &[String]) -> Result<u64, PortError> {
        let mut deleted = 0;
        for id in ids {
            let Some(rid) = self.rid(id)? else {
                continue;
            };
            sql::exec(
                &self.sql,
                "DELETE FROM chunk_text WHERE rowid = ?",
                vec![int(rid)],
            )
            .and_then(|()| {
                sql::exec(
                    &self.sql,
                    "DELETE FROM vectors WHERE rid = ?",
                    vec![int(rid)],
                )
            })
            .map_err(|e| {
                self.forget_memory();
                storage(e)
            })?;
            deleted += 1;
            if let Some(mem) = self.mem.borrow_mut().as_mut() {
                mem.remove(rid);
            }
        }
        Ok(deleted)
    }

    fn answer(&self, q: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        // The best `top_k` chunks; the search groups them by document
        // (and asks deep enough for that: `SearchPlan::query`).
        let by_vector = match q.mode {
            SearchMode::Keyword => Vec::new(),
            mode => {
                let vector = match (self.vectors, q.vector) {
                    (true, Some(vector)) => vector,
                    (true, None) => {
                        return Err(PortError::Unsupported(
                            "this mode needs the query's embedding".into(),
                        ))
                    }
                    (false, _) => {
                        return Err(PortError::Unsupported(
                            "this index holds no vectors; its vector leg is elsewhere".into(),
                        ))
                    }
                };
                self.vector_relevances(vector, leg_depth(mode, q.top_k), q.filter)?
            }
        };
        let ranked = self.rank(&q, by_vector)?;
        self.hits(&ranked, q.filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_keeps_the_latest_record_of_each_id_in_order() {
        let record = |id: &str, v: f32| VectorRecord {
            id: id.to_owned(),
            values: vec![v],
            metadata: Metadata::new(),
        };
        let records = [
            record("a", 1.0),
            record("b", 2.0),
            record("a", 3.0),
            record("c", 4.0),
            record("b", 5.0),
        ];
        let kept: Vec<(&str, f32)> = latest_by_id(&records)
            .into_iter()
            .map(|r| (r.id.as_str(), r.values[0]))
            .collect();
        assert_eq!(kept, vec![("a", 3.0), ("c", 4.0), ("b", 5.0)]);
        assert!(latest_by_id(&[]).is_empty());
    }

    #[test]
    fn blobs_round_trip() {
        let v = vec![0.0, -1.5, 3.25, f32::MIN_POSITIVE];
        assert_eq!(from_blob(&to_blob(&v)), v);
        assert_eq!(to_blob(&v).len(), 16);
        assert_eq!(from_blob(&[0, 0, 128, 63, 1]), vec![1.0]);
    }

    #[test]
    fn filters_become_bound_json_conditions() {
        assert_eq!(filter_sql(&Metadata::new()), ("1".to_owned(), vec![]));
        let filter = Metadata::from([
            ("page".to_owned(), MetaValue::Int(3)),
            ("draft".to_owned(), MetaValue::Bool(false)),
            (
                "source".to_owned(),
                MetaValue::Str("a'; DROP TABLE vectors".into()),
            ),
        ]);
        let (condition, bindings) = filter_sql(&filter);
        assert!(!condition.contains("DROP"), "values are bound: {condition}");
        assert_eq!(condition.matches(" = ?").count(), 3);
        assert_eq!(condition.matches('?').count(), bindings.len());
        assert_eq!(bindings.len(), 2 + 3 + 3);
        assert_eq!(bindings[0], SqlStorageValue::String("$.\"draft\"".into()));
        assert_eq!(bindings[1], SqlStorageValue::String("false".into()));
        assert_eq!(bindings[4], SqlStorageValue::Integer(3));
    }
}
