//! The queue's storage: its SQLite tables and every statement the shell
//! runs against them, rows decoded into typed values, and the [`Effect`]s
//! written as SQL. No decision is made here: the core and the pure modules
//! beside it decide, the shell calls these.
//!
//! Tables: `owner` (the tenant, [`crate::sql`]), `meta` (the index version),
//! `jobs` (one row per job), `job_docs` (the documents of unfinished jobs),
//! `documents` (chunk count per indexed document), `faults` (tests), and the
//! embedded index's `vectors` and `chunk_text`.

use super::core::{Effect, WorkItem};
use super::facts::Records;
use super::faults;
use super::requests::{internal, Counts};
use super::restore::LegacySaved;
use crate::embedded::sql_index;
use crate::sql::{self, int, SqlError};
use protocol::ingest::Document;
use protocol::listing::{encode_cursor, DocumentEntry, DocumentPage};
use protocol::{ErrorReply, TenantId};
use std::collections::HashMap;
use worker::SqlStorage;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1),
        index_version INTEGER NOT NULL, index_changed_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS job_docs (
        job_id TEXT NOT NULL, idx INTEGER NOT NULL, doc_id TEXT NOT NULL,
        text TEXT NOT NULL, metadata TEXT NOT NULL, PRIMARY KEY (job_id, idx))",
    "CREATE INDEX IF NOT EXISTS job_docs_by_doc ON job_docs (doc_id)",
    "CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, chunks INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
    // A document's `metadata.title` when it was last indexed, for the
    // documents listing (a table of its own: `documents` predates it).
    "CREATE TABLE IF NOT EXISTS document_titles (doc_id TEXT PRIMARY KEY, title TEXT)",
    faults::SCHEMA,
    super::replication::SCHEMA,
];

/// One queue's tables.
pub struct QueueStore {
    sql: SqlStorage,
}

impl QueueStore {
    /// The store over the object's SQLite storage.
    pub fn new(sql: SqlStorage) -> Self {
        Self { sql }
    }

    /// Creates the tables (the queue's and the embedded index's) if they do
    /// not exist.
    pub fn create_tables(&self) -> Result<(), SqlError> {
        for statement in SCHEMA.iter().chain(sql_index::SCHEMA) {
            sql::exec(&self.sql, statement, vec![])?;
        }
        Ok(())
    }

    /// The owner on record, claimed by `claimed` if there is none
    /// ([`sql::claim_owner`]).
    pub fn claim_owner(&self, claimed: Option<&TenantId>) -> Result<TenantId, ErrorReply> {
        Ok(sql::claim_owner(&self.sql, claimed)?)
    }

    /// The `meta` row: the index version and when it changed.
    pub fn meta(&self) -> Result<Option<(u64, u64)>, SqlError> {
        sql::first(
            &self.sql,
            "SELECT index_version, index_changed_at FROM meta WHERE id = 1",
            vec![],
        )
    }

    /// Every job's record (JSON), in the order the jobs were accepted.
    pub fn job_rows(&self) -> Result<Vec<String>, SqlError> {
        let rows =
            sql::rows::<(String,)>(&self.sql, "SELECT record FROM jobs ORDER BY seq", vec![])?;
        Ok(rows.into_iter().map(|(json,)| json).collect())
    }

    /// The jobs that have stored documents.
    pub fn jobs_with_docs(&self) -> Result<Vec<String>, SqlError> {
        let rows =
            sql::rows::<(String,)>(&self.sql, "SELECT DISTINCT job_id FROM job_docs", vec![])?;
        Ok(rows.into_iter().map(|(job,)| job).collect())
    }

    /// The `job_docs` row of `item`: doc id, text, metadata (JSON).
    pub fn job_doc(&self, item: &WorkItem) -> Result<Option<(String, String, String)>, SqlError> {
        sql::first(
            &self.sql,
            "SELECT doc_id, text, metadata FROM job_docs WHERE job_id = ? AND idx = ?",
            vec![item.job_id.as_str().into(), int(item.doc_index)],
        )
    }

    /// What an inspection shows of storage.
    pub fn counts(&self) -> Result<Counts, SqlError> {
        Ok(Counts {
            documents: sql::scalar(&self.sql, "SELECT COUNT(*) FROM documents", vec![])?,
            chunks: self.indexed_chunks()?,
            pending_faults: faults::armed(&self.sql)?,
        })
    }

    /// A page of at most `limit` indexed documents after id `after`, in id
    /// order, and how many there are.
    pub fn list_documents(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<DocumentPage, SqlError> {
        let total = sql::scalar(&self.sql, "SELECT COUNT(*) FROM documents", vec![])?;
        let rows = sql::rows::<(String, Option<String>, u32, u64)>(
            &self.sql,
            "SELECT d.doc_id, t.title, d.chunks, d.updated_at
             FROM documents d LEFT JOIN document_titles t ON t.doc_id = d.doc_id
             WHERE d.doc_id > ? ORDER BY d.doc_id LIMIT ?",
            vec![after.unwrap_or("").into(), int(u64::from(limit) + 1)],
        )?;
        let mut documents: Vec<DocumentEntry> = rows
            .into_iter()
            .map(|(id, title, chunks, updated_at_ms)| DocumentEntry {
                id,
                title,
                chunks,
                updated_at_ms,
            })
            .collect();
        let more = documents.len() > limit as usize;
        documents.truncate(limit as usize);
        let next_cursor = more
            .then(|| documents.last())
            .flatten()
            .map(|last| encode_cursor(&last.id));
        Ok(DocumentPage {
            documents,
            total,
            next_cursor,
        })
    }

    /// Arms `n` embedder failures (tests).
    pub fn arm_faults(&self, n: u32) -> Result<(), SqlError> {
        faults::arm(&self.sql, n)
    }

    /// Moves a `queue_state` value of an older version into the tables,
    /// once. Returns its tenant, the object's owner.
    pub fn migrate_legacy(&self) -> Result<Option<TenantId>, ErrorReply> {
        let sql = &self.sql;
        let exists = sql::scalar::<u64>(
            sql,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'queue_state'",
            vec![],
        )?;
        if exists == 0 {
            return Ok(None);
        }
        let Some((json,)) =
            sql::first::<(String,)>(sql, "SELECT state FROM queue_state WHERE id = 1", vec![])?
        else {
            sql::exec(sql, "DROP TABLE queue_state", vec![])?;
            return Ok(None);
        };
        let saved = LegacySaved::parse(&json)?;
        let tenant = saved.tenant().clone();
        sql::claim_owner(sql, Some(&tenant))?;
        let effects = saved.into_effects(|job_id| {
            sql::scalar::<u64>(
                sql,
                "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM job_docs WHERE job_id = ?",
                vec![job_id.into()],
            )
        })?;
        for effect in &effects {
            self.perform(effect, None)?;
        }
        sql::exec(sql, "DROP TABLE queue_state", vec![])?;
        Ok(Some(tenant))
    }

    /// Performs one effect; `documents` are the enqueue's, for
    /// [`Effect::StoreJobDocs`].
    pub fn perform(
        &self,
        effect: &Effect,
        documents: Option<&[Document]>,
    ) -> Result<(), ErrorReply> {
        let sql = &self.sql;
        match effect {
            Effect::StoreJobDocs(job_id) => {
                let documents = documents.ok_or_else(|| internal("no documents to store"))?;
                for (idx, doc) in documents.iter().enumerate() {
                    let metadata = serde_json::to_string(&doc.metadata).map_err(internal)?;
                    sql::exec(
                        sql,
                        "INSERT INTO job_docs (job_id, idx, doc_id, text, metadata) VALUES (?, ?, ?, ?, ?)",
                        vec![
                            job_id.as_str().into(),
                            int(idx),
                            doc.id.as_str().into(),
                            doc.text.as_str().into(),
                            metadata.into(),
                        ],
                    )?;
                }
            }
            Effect::SaveJob(record) => {
                let json = serde_json::to_string(record).map_err(internal)?;
                // ON CONFLICT .. DO UPDATE keeps the row's seq: the order of jobs.
                sql::exec(
                    sql,
                    "INSERT INTO jobs (job_id, record) VALUES (?, ?) \
                     ON CONFLICT(job_id) DO UPDATE SET record = excluded.record",
                    vec![record.view.job_id.as_str().into(), json.into()],
                )?;
            }
            Effect::ForgetJob(job_id) => {
                sql::exec(
                    sql,
                    "DELETE FROM jobs WHERE job_id = ?",
                    vec![job_id.as_str().into()],
                )?;
            }
            Effect::DropJobDocs(job_id) => {
                sql::exec(
                    sql,
                    "DELETE FROM job_docs WHERE job_id = ?",
                    vec![job_id.as_str().into()],
                )?;
            }
            Effect::RecordDocument {
                doc_id,
                chunks,
                at_ms,
                title,
            } => {
                sql::exec(
                    sql,
                    "INSERT INTO documents (doc_id, chunks, updated_at) VALUES (?, ?, ?) \
                     ON CONFLICT(doc_id) DO UPDATE SET chunks = excluded.chunks, updated_at = excluded.updated_at",
                    vec![doc_id.as_str().into(), int(*chunks), int(*at_ms)],
                )?;
                // The title of the version just indexed, as the work read it
                // (no second read of its stored row).
                sql::exec(
                    sql,
                    "INSERT OR REPLACE INTO document_titles (doc_id, title) VALUES (?, ?)",
                    vec![doc_id.as_str().into(), title.clone().into()],
                )?;
            }
            Effect::RemoveDocument(doc_id) => {
                sql::exec(
                    sql,
                    "DELETE FROM documents WHERE doc_id = ?",
                    vec![doc_id.as_str().into()],
                )?;
                sql::exec(
                    sql,
                    "DELETE FROM document_titles WHERE doc_id = ?",
                    vec![doc_id.as_str().into()],
                )?;
            }
            Effect::SaveIndexVersion(v) => {
                sql::exec(
                    sql,
                    "INSERT INTO meta (id, index_version, index_changed_at) VALUES (1, ?, ?) \
                     ON CONFLICT(id) DO UPDATE SET index_version = excluded.index_version, \
                     index_changed_at = excluded.index_changed_at",
                    vec![int(v.version), int(v.changed_at_ms)],
                )?;
            }
        }
        Ok(())
    }
}

impl Records for QueueStore {
    fn stored_chunks(&self, doc_id: &str) -> Result<Option<u32>, SqlError> {
        Ok(sql::first::<(u32,)>(
            &self.sql,
            "SELECT chunks FROM documents WHERE doc_id = ?",
            vec![doc_id.into()],
        )?
        .map(|(n,)| n))
    }

    fn stored_chunks_of(&self, doc_ids: &[&str]) -> Result<HashMap<String, u32>, SqlError> {
        let mut found = HashMap::with_capacity(doc_ids.len());
        // One statement per 90 ids (an enqueue holds up to 100 documents).
        for batch in doc_ids.chunks(90) {
            let marks = vec!["?"; batch.len()].join(", ");
            found.extend(sql::rows::<(String, u32)>(
                &self.sql,
                &format!("SELECT doc_id, chunks FROM documents WHERE doc_id IN ({marks})"),
                batch.iter().map(|id| (*id).into()).collect(),
            )?);
        }
        Ok(found)
    }

    fn indexed_chunks(&self) -> Result<u64, SqlError> {
        sql::scalar(
            &self.sql,
            "SELECT COALESCE(SUM(chunks), 0) FROM documents",
            vec![],
        )
    }

    fn pending_job(&self, doc_id: &str) -> Result<Option<String>, SqlError> {
        Ok(sql::first::<(String,)>(
            &self.sql,
            "SELECT job_id FROM job_docs WHERE doc_id = ? LIMIT 1",
            vec![doc_id.into()],
        )?
        .map(|(job,)| job))
    }
}
