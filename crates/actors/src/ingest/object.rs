//! The `IngestQueue` Durable Object (`${tenantId}:ingest`): the shell around
//! [`QueueCore`], owner of the tenant's documents and index.
//!
//! Accepted documents are written to SQLite in the same synchronous step that
//! records the job, before the answer goes out: nothing accepted is lost. The
//! work (chunk, embed, upsert, clean up) runs document by document from the
//! alarm (and, for a head start, right after an enqueue), and every step is
//! idempotent (derived vector ids, stale chunks removed), so a retry or a
//! restart in the middle of a job duplicates nothing.

use super::core::{Effects, QueueCore, QueueState, WorkItem};
use super::keys::search_cache_key;
use super::providers::{self, AnyEmbedder, AnyIndex, Settings};
use super::records::{chunk_ids, chunk_metadata};
use super::sql_index;
use crate::chunking;
use crate::ports::{
    Clock, Embedder, Kv, PortError, SystemClock, VectorIndex, VectorQuery, VectorRecord,
};
use crate::retrieval::MemIndex;
use crate::rpc;
use protocol::ingest::{
    DocumentDeleted, Enqueue, IngestRequest, IngestResponse, IngestSnapshot, JobAccepted,
    JobStatus, Metadata, Search, SearchMatch, SearchMode, SearchResults,
};
use protocol::{Envelope, ErrorCode, ErrorReply, TenantId};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{
    durable_object, Env, Request, Response, Result, ScheduledTime, SqlStorage, SqlStorageValue,
    State,
};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS queue_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS job_docs (
        job_id TEXT NOT NULL, idx INTEGER NOT NULL, doc_id TEXT NOT NULL,
        text TEXT NOT NULL, metadata TEXT NOT NULL, PRIMARY KEY (job_id, idx))",
    "CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, chunks INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
];

/// How long an enqueue keeps working before it answers `queued` and leaves
/// the rest to the alarm.
const INLINE_BUDGET_MS: u64 = 2_000;
/// Chunks an enqueue indexes before it answers. `Date.now()` only moves on
/// I/O in Workers, and the embedded providers do none, so the time budgets
/// alone would not stop a run: this bounds its CPU time too.
const INLINE_MAX_CHUNKS: u32 = 1_000;
/// Chunks one alarm run indexes before it re-arms.
const ALARM_MAX_CHUNKS: u32 = 10_000;
/// How long after an index change a Vectorize search is not cached (its
/// writes become visible to queries only after a few seconds).
const VECTORIZE_SETTLE_MS: u64 = 10_000;
/// How long one alarm run works before it re-arms and yields.
const ALARM_BUDGET_MS: u64 = 20_000;
/// How long a search stays in the KV cache.
const CACHE_TTL_SECS: u64 = 300;

/// What is persisted: the tenant (the alarm has no envelope to learn it from)
/// and the core's state.
#[derive(Serialize, Deserialize)]
struct Saved {
    tenant: TenantId,
    queue: QueueState,
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())
}

fn port_reply(e: PortError) -> ErrorReply {
    match e {
        PortError::Unsupported(m) => ErrorReply::new(ErrorCode::InvalidRequest, m),
        other => internal(other),
    }
}

/// A stored document of a job.
struct JobDoc {
    doc_id: String,
    text: String,
    metadata: Metadata,
}

/// The tenant's ingest queue and index.
#[durable_object]
pub struct IngestQueue {
    state: State,
    env: Env,
    /// Loaded on first use, with the tenant it belongs to.
    loaded: RefCell<Option<(TenantId, QueueCore)>>,
    /// The embedded index's vectors, loaded on first search or write.
    mem: Rc<RefCell<Option<MemIndex>>>,
    /// A work loop is running (they must not overlap).
    working: Cell<bool>,
}

impl IngestQueue {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn settings(&self) -> std::result::Result<Settings, ErrorReply> {
        providers::settings(|name| self.env.var(name).ok().map(|v| v.to_string()))
            .map_err(|e| internal(format!("misconfigured: {e}")))
    }

    fn exec(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> std::result::Result<Vec<Vec<SqlStorageValue>>, ErrorReply> {
        let cursor = self.sql().exec(query, bindings).map_err(internal)?;
        cursor.raw().collect::<Result<Vec<_>>>().map_err(internal)
    }

    /// Loads the state (creating the tables on first use). `claimed` is the
    /// tenant of the request, if there is one: the first one owns the object,
    /// any other is refused.
    fn load(&self, claimed: Option<&TenantId>) -> std::result::Result<TenantId, ErrorReply> {
        if let Some((tenant, _)) = self.loaded.borrow().as_ref() {
            return check_tenant(tenant, claimed);
        }
        for statement in SCHEMA.iter().chain(sql_index::SCHEMA) {
            self.sql().exec(statement, None).map_err(internal)?;
        }
        let rows = self.exec("SELECT state FROM queue_state WHERE id = 1", vec![])?;
        let saved = match rows.first().map(Vec::as_slice) {
            Some([SqlStorageValue::String(json)]) => Some(
                serde_json::from_str::<Saved>(json)
                    .map_err(|e| internal(format!("stored state is unreadable: {e}")))?,
            ),
            _ => None,
        };
        let (tenant, core) = match (saved, claimed) {
            (Some(saved), _) => (saved.tenant, QueueCore::new(Some(saved.queue))),
            (None, Some(claimed)) => (claimed.clone(), QueueCore::new(None)),
            (None, None) => return Err(internal("the queue has no tenant yet")),
        };
        check_tenant(&tenant, claimed)?;
        *self.loaded.borrow_mut() = Some((tenant.clone(), core));
        Ok(tenant)
    }

    fn with_core<T>(
        &self,
        f: impl FnOnce(&mut QueueCore) -> T,
    ) -> std::result::Result<T, ErrorReply> {
        let mut loaded = self.loaded.borrow_mut();
        let (_, core) = loaded
            .as_mut()
            .ok_or_else(|| internal("queue not loaded"))?;
        Ok(f(core))
    }

    /// Performs the storage part of `effects` (synchronous); the alarm is
    /// handled by [`Self::rearm`].
    fn apply(&self, effects: &Effects) -> std::result::Result<(), ErrorReply> {
        if effects.persist {
            let json = {
                let loaded = self.loaded.borrow();
                let (tenant, core) = loaded
                    .as_ref()
                    .ok_or_else(|| internal("queue not loaded"))?;
                serde_json::to_string(&Saved {
                    tenant: tenant.clone(),
                    queue: core.state().clone(),
                })
                .map_err(internal)?
            };
            let written = self.exec(
                "INSERT INTO queue_state (id, state) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                vec![json.into()],
            );
            if let Err(e) = written {
                // Memory is ahead of storage now: forget it, reload next time.
                *self.loaded.borrow_mut() = None;
                return Err(e);
            }
        }
        if let Some(job) = &effects.finished_job {
            self.exec(
                "DELETE FROM job_docs WHERE job_id = ?",
                vec![job.as_str().into()],
            )?;
        }
        Ok(())
    }

    /// Sets the alarm for the next deadline, if work remains.
    async fn rearm(&self) {
        let deadline = self.with_core(|c| c.next_deadline()).ok().flatten();
        if let Some(at) = deadline {
            let at = at.max(now_ms());
            let date =
                worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(at as f64));
            if let Err(e) = self
                .state
                .storage()
                .set_alarm(ScheduledTime::new(date))
                .await
            {
                worker::console_error!("ingest queue: could not set the alarm: {e}");
            }
        }
    }

    async fn enqueue(
        &self,
        tenant: &TenantId,
        enqueue: Enqueue,
    ) -> std::result::Result<IngestResponse, ErrorReply> {
        enqueue.validate().map_err(invalid)?;
        if !self.with_core(|c| c.has_room())? {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                format!(
                    "this tenant has {} unfinished ingest jobs; retry when some are done",
                    super::core::MAX_PENDING_JOBS
                ),
            ));
        }
        let job_id = format!("job-{}", crate::entropy::random_hex(12));
        let count = u32::try_from(enqueue.documents.len()).map_err(internal)?;
        // Store every document, then the job, with no await in between: the
        // runtime commits them together before the answer leaves. A failure
        // part way removes what was written, so no document is left without
        // a job.
        let stored = self.store_documents(&job_id, &enqueue);
        let accepted = stored.and_then(|()| {
            let (accepted, effects) =
                self.with_core(|c| c.enqueue(job_id.clone(), count, now_ms()))?;
            self.apply(&effects)?;
            Ok(accepted)
        });
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let _ = self.exec(
                    "DELETE FROM job_docs WHERE job_id = ?",
                    vec![job_id.as_str().into()],
                );
                return Err(e);
            }
        };
        self.rearm().await;
        // A head start: small jobs are done before the answer.
        self.work(tenant, INLINE_BUDGET_MS, INLINE_MAX_CHUNKS).await;
        let status = self
            .with_core(|c| c.job(&job_id).map(|j| j.status))?
            .filter(|s| *s == JobStatus::Done)
            .unwrap_or(JobStatus::Queued);
        Ok(IngestResponse::Accepted(JobAccepted { status, ..accepted }))
    }

    fn store_documents(
        &self,
        job_id: &str,
        enqueue: &Enqueue,
    ) -> std::result::Result<(), ErrorReply> {
        for (idx, doc) in enqueue.documents.iter().enumerate() {
            let metadata = serde_json::to_string(&doc.metadata).map_err(internal)?;
            self.exec(
                "INSERT INTO job_docs (job_id, idx, doc_id, text, metadata) VALUES (?, ?, ?, ?, ?)",
                vec![
                    job_id.into(),
                    SqlStorageValue::Integer(idx as i64),
                    doc.id.as_str().into(),
                    doc.text.as_str().into(),
                    metadata.into(),
                ],
            )?;
        }
        Ok(())
    }

    /// Works through due documents for up to `budget_ms` or `max_chunks`
    /// chunks, whichever comes first, then re-arms.
    async fn work(&self, tenant: &TenantId, budget_ms: u64, max_chunks: u32) {
        if self.working.replace(true) {
            return;
        }
        let started = now_ms();
        let mut chunks_done: u32 = 0;
        while now_ms().saturating_sub(started) < budget_ms && chunks_done < max_chunks {
            let Ok(Some(item)) = self.with_core(|c| c.next_work(now_ms())) else {
                break;
            };
            let outcome = self.process(tenant, &item).await;
            let failed = outcome.is_err();
            chunks_done = chunks_done.saturating_add(*outcome.as_ref().unwrap_or(&0));
            let effects = self.with_core(|c| match outcome {
                Ok(chunks) => c.document_done(&item, chunks, now_ms()),
                Err(e) => c.attempt_failed(&item, e, now_ms()),
            });
            match effects.map(|fx| self.apply(&fx)) {
                Ok(Ok(())) if !failed => {}
                Ok(Ok(())) => break,
                Ok(Err(e)) | Err(e) => {
                    worker::console_error!("ingest queue: {}", e.message);
                    break;
                }
            }
        }
        self.working.set(false);
        self.rearm().await;
    }

    fn job_doc(&self, item: &WorkItem) -> std::result::Result<JobDoc, String> {
        let rows = self
            .exec(
                "SELECT doc_id, text, metadata FROM job_docs WHERE job_id = ? AND idx = ?",
                vec![
                    item.job_id.as_str().into(),
                    SqlStorageValue::Integer(i64::from(item.doc_index)),
                ],
            )
            .map_err(|e| e.message)?;
        match rows.first().map(Vec::as_slice) {
            Some(
                [SqlStorageValue::String(doc_id), SqlStorageValue::String(text), SqlStorageValue::String(meta)],
            ) => Ok(JobDoc {
                doc_id: doc_id.clone(),
                text: text.clone(),
                metadata: serde_json::from_str(meta).map_err(|e| e.to_string())?,
            }),
            _ => Err(format!(
                "document {} of {} is missing from storage",
                item.doc_index, item.job_id
            )),
        }
    }

    fn stored_chunks(&self, doc_id: &str) -> std::result::Result<u32, String> {
        let rows = self
            .exec(
                "SELECT chunks FROM documents WHERE doc_id = ?",
                vec![doc_id.into()],
            )
            .map_err(|e| e.message)?;
        Ok(match rows.first().map(Vec::as_slice) {
            Some([SqlStorageValue::Integer(n)]) => u32::try_from(*n).unwrap_or(0),
            _ => 0,
        })
    }

    /// Indexes one document: chunk, embed, upsert, then remove the chunks an
    /// earlier version had beyond the new count. Returns the chunk count.
    async fn process(
        &self,
        tenant: &TenantId,
        item: &WorkItem,
    ) -> std::result::Result<u32, String> {
        let settings = self.settings().map_err(|e| e.message)?;
        let doc = self.job_doc(item)?;
        let chunks = chunking::chunk(&doc.text, settings.chunking);
        let count = u32::try_from(chunks.len()).map_err(|e| e.to_string())?;
        if self.with_core(|c| c.take_fault()).unwrap_or(false) {
            return Err("embedded embedder: injected failure (FAULT_INJECTION)".into());
        }
        let embedder = AnyEmbedder::new(&self.env, &settings).map_err(|e| e.to_string())?;
        let index = AnyIndex::new(&self.env, &settings, tenant, self.sql(), self.mem.clone())
            .map_err(|e| e.to_string())?;
        let vectors = embedder.embed(&chunks).await.map_err(|e| e.to_string())?;
        let ids = chunk_ids(tenant, &doc.doc_id, 0, count);
        let records: Vec<VectorRecord> = ids
            .into_iter()
            .zip(vectors)
            .zip(&chunks)
            .zip(0u32..)
            .map(|(((id, values), text), n)| VectorRecord {
                id,
                values,
                metadata: chunk_metadata(tenant, &doc.doc_id, &doc.metadata, n, text),
            })
            .collect();
        index.upsert(&records).await.map_err(|e| e.to_string())?;
        let previous = self.stored_chunks(&doc.doc_id)?;
        if previous > count {
            index
                .delete(&chunk_ids(tenant, &doc.doc_id, count, previous))
                .await
                .map_err(|e| e.to_string())?;
        }
        self.exec(
            "INSERT INTO documents (doc_id, chunks, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT(doc_id) DO UPDATE SET chunks = excluded.chunks, updated_at = excluded.updated_at",
            vec![
                doc.doc_id.as_str().into(),
                SqlStorageValue::Integer(i64::from(count)),
                SqlStorageValue::Integer(now_ms() as i64),
            ],
        )
        .map_err(|e| e.message)?;
        Ok(count)
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        doc_id: &str,
    ) -> std::result::Result<IngestResponse, ErrorReply> {
        if !protocol::ingest::valid_doc_id(doc_id) {
            return Err(invalid(
                "the document id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        // A document that an unfinished job will (re)write cannot be deleted
        // now: the job would bring it back, or race the delete.
        let pending = self.exec(
            "SELECT job_id FROM job_docs WHERE doc_id = ? LIMIT 1",
            vec![doc_id.into()],
        )?;
        if let Some([SqlStorageValue::String(job)]) = pending.first().map(Vec::as_slice) {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                format!("document {doc_id:?} has an unfinished ingest job ({job}); delete it when the job is done"),
            ));
        }
        let rows = self.exec(
            "SELECT chunks FROM documents WHERE doc_id = ?",
            vec![doc_id.into()],
        )?;
        let chunks = match rows.first().map(Vec::as_slice) {
            Some([SqlStorageValue::Integer(n)]) => u32::try_from(*n).unwrap_or(0),
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::NotFound,
                    format!("no document {doc_id:?}"),
                ))
            }
        };
        let settings = self.settings()?;
        let index = AnyIndex::new(&self.env, &settings, tenant, self.sql(), self.mem.clone())
            .map_err(port_reply)?;
        index
            .delete(&chunk_ids(tenant, doc_id, 0, chunks))
            .await
            .map_err(port_reply)?;
        self.exec(
            "DELETE FROM documents WHERE doc_id = ?",
            vec![doc_id.into()],
        )?;
        let effects = self.with_core(|c| c.document_deleted(now_ms()))?;
        self.apply(&effects)?;
        Ok(IngestResponse::Deleted(DocumentDeleted {
            doc_id: doc_id.to_owned(),
            chunks_removed: chunks,
        }))
    }

    async fn search(
        &self,
        tenant: &TenantId,
        search: Search,
    ) -> std::result::Result<IngestResponse, ErrorReply> {
        search.validate().map_err(invalid)?;
        let settings = self.settings()?;
        let index = AnyIndex::new(&self.env, &settings, tenant, self.sql(), self.mem.clone())
            .map_err(port_reply)?;
        let mode = search
            .mode
            .unwrap_or(if index.supports(SearchMode::Hybrid) {
                SearchMode::Hybrid
            } else {
                SearchMode::Vector
            });
        if !index.supports(mode) {
            return Err(invalid(format!(
                "mode {:?} is not supported by the {} backend",
                mode.as_str(),
                index.backend()
            )));
        }
        let version = self.with_core(|c| c.index_version())?;
        let key = search_cache_key(
            tenant,
            &search.query,
            search.top_k,
            &search.filter,
            mode,
            version,
        );
        let cache = providers::cache(&self.env);
        if let Some(cache) = &cache {
            if let Ok(Some(hit)) = cache.get(&key).await {
                if let Ok(mut results) = serde_json::from_str::<SearchResults>(&hit) {
                    results.cached = true;
                    return Ok(IngestResponse::Results(results));
                }
            }
        }
        let vector = if mode == SearchMode::Keyword {
            None
        } else {
            let embedder = AnyEmbedder::new(&self.env, &settings).map_err(port_reply)?;
            embedder
                .embed(std::slice::from_ref(&search.query))
                .await
                .map_err(port_reply)?
                .into_iter()
                .next()
        };
        let hits = index
            .query(VectorQuery {
                vector: vector.as_deref(),
                text: &search.query,
                top_k: search.top_k as usize,
                filter: &search.filter,
                mode,
            })
            .await
            .map_err(port_reply)?;
        let results = SearchResults {
            cached: false,
            mode,
            index_version: version,
            matches: hits
                .into_iter()
                .map(|h| SearchMatch {
                    id: h.id,
                    score: h.score,
                    metadata: h.metadata,
                })
                .collect(),
        };
        // Vectorize shows new writes to queries only after a few seconds: an
        // answer computed right after a change may not reflect it yet, so it
        // is not cached.
        let settled = !settings.vectorize
            || now_ms().saturating_sub(self.with_core(|c| c.index_changed_at())?)
                > VECTORIZE_SETTLE_MS;
        if let (Some(cache), Ok(json), true) = (cache, serde_json::to_string(&results), settled) {
            // The answer does not wait for the cache write.
            self.state.wait_until(async move {
                if let Err(e) = cache.put(&key, &json, CACHE_TTL_SECS).await {
                    worker::console_warn!("search cache write failed: {e}");
                }
            });
        }
        Ok(IngestResponse::Results(results))
    }

    fn snapshot(&self) -> std::result::Result<IngestResponse, ErrorReply> {
        let settings = self.settings()?;
        let count = |q: &str| -> std::result::Result<u64, ErrorReply> {
            Ok(match self.exec(q, vec![])?.first().map(Vec::as_slice) {
                Some([SqlStorageValue::Integer(n)]) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            })
        };
        let documents = count("SELECT COUNT(*) FROM documents")?;
        let chunks = count("SELECT COALESCE(SUM(chunks), 0) FROM documents")?;
        self.with_core(|c| {
            let state = c.state();
            IngestResponse::Snapshot(IngestSnapshot {
                index_version: state.index_version,
                documents,
                chunks,
                pending_jobs: state.pending.iter().cloned().collect(),
                recent_jobs: state.recent.iter().rev().take(20).cloned().collect(),
                embedder: if settings.workers_ai {
                    settings.embedding_model.clone()
                } else {
                    crate::embedding::HASHED_MODEL.to_owned()
                },
                vector_backend: if settings.vectorize {
                    "vectorize"
                } else {
                    "embedded-sqlite"
                }
                .to_owned(),
                pending_faults: state.pending_faults,
            })
        })
    }

    async fn handle(
        &self,
        envelope: Envelope<IngestRequest>,
    ) -> std::result::Result<IngestResponse, ErrorReply> {
        let tenant = self.load(Some(&envelope.tenant_id))?;
        // Unfinished work must always have an alarm, even if setting one
        // failed earlier: any request makes sure it does.
        if self.with_core(|c| c.next_deadline().is_some())? && !self.working.get() {
            self.rearm().await;
        }
        match envelope.message {
            IngestRequest::Enqueue(enqueue) => self.enqueue(&tenant, enqueue).await,
            IngestRequest::GetJob(get) => self
                .with_core(|c| c.job(&get.job_id).cloned())?
                .map(IngestResponse::Job)
                .ok_or_else(|| {
                    ErrorReply::new(ErrorCode::NotFound, format!("no job {:?}", get.job_id))
                }),
            IngestRequest::DeleteDocument(delete) => {
                self.delete_document(&tenant, &delete.doc_id).await
            }
            IngestRequest::Search(search) => self.search(&tenant, search).await,
            IngestRequest::Inspect(_) => self.snapshot(),
            IngestRequest::InjectFaults(faults) => {
                if !self.settings()?.fault_injection {
                    return Err(invalid("fault injection is not enabled in this deployment"));
                }
                let effects = self.with_core(|c| c.inject_faults(faults.embed_failures))?;
                self.apply(&effects)?;
                Ok(IngestResponse::FaultsInjected(faults))
            }
        }
    }
}

fn check_tenant(
    own: &TenantId,
    claimed: Option<&TenantId>,
) -> std::result::Result<TenantId, ErrorReply> {
    match claimed {
        Some(claimed) if claimed != own => Err(ErrorReply::new(
            ErrorCode::WrongTenant,
            "this ingest queue belongs to another tenant",
        )),
        _ => Ok(own.clone()),
    }
}

impl worker::DurableObject for IngestQueue {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            loaded: RefCell::new(None),
            mem: Rc::new(RefCell::new(None)),
            working: Cell::new(false),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let envelope = match rpc::read_request::<IngestRequest, IngestResponse>(req).await {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let request_id = envelope.request_id.clone();
        let reply = self.handle(envelope).await;
        Ok(rpc::reply_response(Some(request_id), reply))
    }

    async fn alarm(&self) -> Result<Response> {
        match self.load(None) {
            Ok(tenant) => {
                self.work(&tenant, ALARM_BUDGET_MS, ALARM_MAX_CHUNKS).await;
                Response::ok("done")
            }
            // An error makes the runtime retry the alarm later.
            Err(e) => Err(worker::Error::RustError(format!(
                "ingest queue alarm: {}",
                e.message
            ))),
        }
    }
}
