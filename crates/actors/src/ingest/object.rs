//! The `IngestQueue` Durable Object (`${tenantId}:ingest`): the shell around
//! [`QueueCore`], owner of the tenant's documents and index.
//!
//! The shell decodes, reads storage into the core's facts, reads the clock
//! once per event, calls the core, performs the [`Effect`]s it returns
//! (synchronous SQLite writes, so the runtime commits each batch together),
//! and calls the ports. Every await that is not storage (the embedder,
//! Vectorize) is followed by a call into the core that re-checks what the
//! plan taken before it assumed.
//!
//! Tables: `owner` (the tenant, [`crate::sql`]), `meta` (the index version),
//! `jobs` (one row per job), `job_docs` (the documents of unfinished jobs),
//! `documents` (chunk count per indexed document), `faults` (tests), and the
//! embedded index's `vectors` and `chunk_fts`.

use super::core::{
    DeleteFacts, DocFacts, DocPlan, DocStep, Effect, EnqueueFacts, IndexVersion, JobRecord, NewDoc,
    QueueCore, Reply, Request, WorkItem,
};
use super::faults::{self, SqlFaults};
use super::keys::search_cache_key;
use super::records::{chunk_ids, chunk_metadata};
use crate::chunking;
use crate::embedded::sql_index;
use crate::ports::{
    Clock, Embedder, Kv, PortError, SystemClock, VectorIndex, VectorQuery, VectorRecord,
};
use crate::providers::{self, AnyEmbedder, AnyIndex, Settings};
use crate::retrieval::MemIndex;
use crate::rpc;
use crate::sql::{self, int, SqlError};
use protocol::ingest::{
    Document, Enqueue, IngestRequest, IngestResponse, IngestSnapshot, JobAccepted, JobStatus,
    Metadata, Search, SearchMatch, SearchMode, SearchResults,
};
use protocol::{Envelope, ErrorCode, ErrorReply, TenantId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{
    durable_object, Env, Request as HttpRequest, Response, ScheduledTime, SqlStorage, State,
};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1),
        index_version INTEGER NOT NULL, index_changed_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS job_docs (
        job_id TEXT NOT NULL, idx INTEGER NOT NULL, doc_id TEXT NOT NULL,
        text TEXT NOT NULL, metadata TEXT NOT NULL, PRIMARY KEY (job_id, idx))",
    "CREATE INDEX IF NOT EXISTS job_docs_by_doc ON job_docs (doc_id)",
    "CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, chunks INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
    faults::SCHEMA,
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

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())
}

fn unexpected(reply: &Reply) -> ErrorReply {
    internal(format!("the queue core answered {reply:?} out of turn"))
}

/// A stored document of a job.
struct JobDoc {
    doc_id: String,
    text: String,
    metadata: Metadata,
}

/// What the shell prepared for one document, before any await.
enum Prepared {
    Index {
        doc: JobDoc,
        chunks: Vec<String>,
        plan: DocPlan,
    },
    /// The core said wait (a delete in flight) or stale.
    Pause,
}

/// How one document went.
enum Worked {
    Indexed(u32),
    Failed,
    Paused,
}

/// The queue, once loaded: the tenant it belongs to and the core.
struct Loaded {
    tenant: TenantId,
    core: QueueCore,
}

/// The tenant's ingest queue and index.
#[durable_object]
pub struct IngestQueue {
    state: State,
    env: Env,
    clock: SystemClock,
    /// Loaded on first use.
    loaded: RefCell<Option<Loaded>>,
    /// The embedded index's vectors, loaded on first vector search.
    mem: Rc<RefCell<Option<MemIndex>>>,
    /// A work loop is running (they must not overlap).
    working: Cell<bool>,
}

impl IngestQueue {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn settings(&self) -> Result<Settings, ErrorReply> {
        providers::from_env(&self.env).map_err(|e| internal(format!("misconfigured: {e}")))
    }

    /// Loads the queue (creating the tables on first use). `claimed` is the
    /// tenant of the request, if there is one: the first one owns the object,
    /// any other is refused.
    fn load(
        &self,
        claimed: Option<&TenantId>,
        settings: &Settings,
    ) -> Result<TenantId, ErrorReply> {
        if let Some(loaded) = self.loaded.borrow_mut().as_mut() {
            loaded.core.set_bounds(settings.queue_bounds());
            return Ok(sql::check_owner(Some(&loaded.tenant), claimed)?);
        }
        let sql = self.sql();
        for statement in SCHEMA.iter().chain(sql_index::SCHEMA) {
            sql::exec(&sql, statement, vec![])?;
        }
        let legacy_owner = migrate_legacy(&sql)?;
        let tenant = sql::claim_owner(&sql, legacy_owner.as_ref().or(claimed))?;
        let tenant = sql::check_owner(Some(&tenant), claimed)?;
        let index = sql::first::<(u64, u64)>(
            &sql,
            "SELECT index_version, index_changed_at FROM meta WHERE id = 1",
            vec![],
        )?
        .map(|(version, changed_at_ms)| IndexVersion {
            version,
            changed_at_ms,
        })
        .unwrap_or_default();
        let jobs = sql::rows::<(String,)>(&sql, "SELECT record FROM jobs ORDER BY seq", vec![])?
            .into_iter()
            .map(|(json,)| serde_json::from_str::<JobRecord>(&json))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(format!("a stored job is unreadable: {e}")))?;
        let core = QueueCore::restore(settings.queue_bounds(), index, jobs);
        // Documents of jobs that are no longer pending are dead weight that
        // would keep their documents undeletable (left by older versions,
        // which kept a failed job's documents).
        let pending: Vec<String> = core.pending().map(|j| j.job_id.clone()).collect();
        for (job,) in sql::rows::<(String,)>(&sql, "SELECT DISTINCT job_id FROM job_docs", vec![])?
        {
            if !pending.contains(&job) {
                sql::exec(
                    &sql,
                    "DELETE FROM job_docs WHERE job_id = ?",
                    vec![job.into()],
                )?;
            }
        }
        *self.loaded.borrow_mut() = Some(Loaded {
            tenant: tenant.clone(),
            core,
        });
        Ok(tenant)
    }

    fn with_core<T>(&self, f: impl FnOnce(&mut QueueCore) -> T) -> Result<T, ErrorReply> {
        let mut loaded = self.loaded.borrow_mut();
        let loaded = loaded
            .as_mut()
            .ok_or_else(|| internal("queue not loaded"))?;
        Ok(f(&mut loaded.core))
    }

    /// Memory is ahead of storage after a failed write: forget it, so the
    /// next message starts from what storage really holds.
    fn forget(&self) {
        *self.loaded.borrow_mut() = None;
    }

    /// Performs `effects` in order, synchronously; `documents` are the
    /// enqueue's, for [`Effect::StoreJobDocs`].
    fn perform(
        &self,
        effects: &[Effect],
        documents: Option<&[Document]>,
    ) -> Result<(), ErrorReply> {
        let sql = self.sql();
        let result = effects
            .iter()
            .try_for_each(|effect| perform_one(&sql, effect, documents));
        if result.is_err() {
            self.forget();
        }
        result
    }

    /// Sets the alarm for the next deadline, if work remains.
    async fn rearm(&self) {
        let deadline = self.with_core(|c| c.next_deadline()).ok().flatten();
        if let Some(at) = deadline {
            let at = at.max(self.now());
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

    /// Measures an enqueue for the core: text bytes, and where the index has
    /// a bound of ours, the chunks each document will have and replace.
    fn enqueue_facts(
        &self,
        job_id: String,
        documents: &[Document],
        settings: &Settings,
    ) -> Result<EnqueueFacts, SqlError> {
        let sql = self.sql();
        let counting = settings.queue_bounds().max_chunks.is_some();
        let mut docs = Vec::with_capacity(documents.len());
        for d in documents {
            let (chunks, replaces_chunks) = if counting {
                let chunks = chunking::chunk(&d.text, settings.chunking).len();
                let stored = stored_chunks(&sql, &d.id)?.unwrap_or(0);
                (u32::try_from(chunks).unwrap_or(u32::MAX), stored)
            } else {
                (0, 0)
            };
            docs.push(NewDoc {
                doc_id: d.id.clone(),
                text_bytes: d.text.len() as u64,
                chunks,
                replaces_chunks,
            });
        }
        let indexed_chunks = if counting {
            sql::scalar(
                &sql,
                "SELECT COALESCE(SUM(chunks), 0) FROM documents",
                vec![],
            )?
        } else {
            0
        };
        Ok(EnqueueFacts {
            job_id,
            docs,
            indexed_chunks,
        })
    }

    async fn enqueue(
        &self,
        tenant: &TenantId,
        enqueue: Enqueue,
        settings: &Settings,
    ) -> Result<IngestResponse, ErrorReply> {
        enqueue.validate().map_err(invalid)?;
        let job_id = format!("job-{}", crate::entropy::random_hex(12));
        let facts = self.enqueue_facts(job_id.clone(), &enqueue.documents, settings)?;
        let now = self.now();
        let (reply, effects) = self.with_core(|c| c.handle(Request::Enqueue(facts), now))?;
        let accepted = match reply? {
            Reply::Accepted(accepted) => accepted,
            other => return Err(unexpected(&other)),
        };
        // The documents, then the job, with no await in between: the runtime
        // commits them together before the answer leaves. A failure part way
        // removes what was written, so no document is left without a job.
        if let Err(e) = self.perform(&effects, Some(&enqueue.documents)) {
            let _ = sql::exec(
                &self.sql(),
                "DELETE FROM job_docs WHERE job_id = ?",
                vec![job_id.as_str().into()],
            );
            return Err(e);
        }
        self.rearm().await;
        // A head start: small jobs are done before the answer.
        self.work(tenant, settings, INLINE_BUDGET_MS, INLINE_MAX_CHUNKS)
            .await;
        let status = self
            .with_core(|c| c.job(&job_id).map(|j| j.status))
            .ok()
            .flatten()
            .filter(|s| *s == JobStatus::Done)
            .unwrap_or(JobStatus::Queued);
        Ok(IngestResponse::Accepted(JobAccepted { status, ..accepted }))
    }

    /// Works through due documents for up to `budget_ms` or `max_chunks`
    /// chunks, whichever comes first, then re-arms.
    async fn work(&self, tenant: &TenantId, settings: &Settings, budget_ms: u64, max_chunks: u32) {
        if self.working.replace(true) {
            return;
        }
        let started = self.now();
        let mut chunks_done: u32 = 0;
        loop {
            let now = self.now();
            if now.saturating_sub(started) >= budget_ms || chunks_done >= max_chunks {
                break;
            }
            let Ok(Some(item)) = self.with_core(|c| c.next_work(now)) else {
                break;
            };
            match self.process(tenant, settings, &item).await {
                Worked::Indexed(n) => chunks_done = chunks_done.saturating_add(n),
                Worked::Failed | Worked::Paused => break,
            }
        }
        self.working.set(false);
        self.rearm().await;
    }

    /// Reads the item's document and plans it (synchronous).
    fn prepare(&self, item: &WorkItem, settings: &Settings) -> Result<Prepared, String> {
        let sql = self.sql();
        let doc = job_doc(&sql, item)?;
        let chunks = chunking::chunk(&doc.text, settings.chunking);
        let facts = DocFacts {
            doc_id: doc.doc_id.clone(),
            chunks: u32::try_from(chunks.len()).map_err(|e| e.to_string())?,
            previous_chunks: stored_chunks(&sql, &doc.doc_id)
                .map_err(|e| e.to_string())?
                .unwrap_or(0),
        };
        match self
            .with_core(|c| c.plan_document(item, facts))
            .map_err(|e| e.message)?
        {
            DocStep::Index(plan) => Ok(Prepared::Index { doc, chunks, plan }),
            DocStep::Wait | DocStep::Stale => Ok(Prepared::Pause),
        }
    }

    /// Indexes one document: plan, embed, upsert, delete the stale chunks,
    /// then record it through the core, which re-checks that the work is
    /// still current.
    async fn process(&self, tenant: &TenantId, settings: &Settings, item: &WorkItem) -> Worked {
        let (doc, chunks, plan) = match self.prepare(item, settings) {
            Ok(Prepared::Index { doc, chunks, plan }) => (doc, chunks, plan),
            Ok(Prepared::Pause) => return Worked::Paused,
            Err(e) => return self.failed(item, e),
        };
        match self
            .write_index(tenant, settings, item, &doc, &chunks, &plan)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Worked::Paused,
            Err(e) => return self.failed(item, e.to_string()),
        }
        let now = self.now();
        let Ok(effects) = self.with_core(|c| c.document_indexed(item, &plan, now)) else {
            return Worked::Paused;
        };
        match self.perform(&effects, None) {
            Ok(()) => Worked::Indexed(plan.chunks()),
            Err(e) => {
                worker::console_error!("ingest queue: {}", e.message);
                Worked::Failed
            }
        }
    }

    /// The awaits of one document. `Ok(false)`: the work stopped being
    /// current during an await, and nothing more is written.
    async fn write_index(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        item: &WorkItem,
        doc: &JobDoc,
        chunks: &[String],
        plan: &DocPlan,
    ) -> Result<bool, PortError> {
        let current = || self.with_core(|c| c.still_current(item)).unwrap_or(false);
        let embedder = AnyEmbedder::new(&self.env, settings, Some(SqlFaults::new(self.sql())))?;
        let index = AnyIndex::new(&self.env, settings, tenant, self.sql(), self.mem.clone())?;
        let vectors = embedder.embed(chunks).await?;
        if !current() {
            return Ok(false);
        }
        let ids = chunk_ids(tenant, &doc.doc_id, plan.upsert.start, plan.upsert.end);
        let records: Vec<VectorRecord> = ids
            .into_iter()
            .zip(vectors)
            .zip(chunks)
            .zip(0u32..)
            .map(|(((id, values), text), n)| VectorRecord {
                id,
                values,
                metadata: chunk_metadata(tenant, &doc.doc_id, &doc.metadata, n, text),
            })
            .collect();
        index.upsert(&records).await?;
        if !current() {
            return Ok(false);
        }
        if !plan.stale.is_empty() {
            index.delete(&plan.stale_ids(tenant)).await?;
        }
        Ok(true)
    }

    fn failed(&self, item: &WorkItem, error: String) -> Worked {
        let now = self.now();
        let recorded = self
            .with_core(|c| c.attempt_failed(item, error, now))
            .and_then(|effects| self.perform(&effects, None));
        if let Err(e) = recorded {
            worker::console_error!("ingest queue: {}", e.message);
        }
        Worked::Failed
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        doc_id: &str,
    ) -> Result<IngestResponse, ErrorReply> {
        if !protocol::ingest::valid_doc_id(doc_id) {
            return Err(invalid(
                "the document id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let sql = self.sql();
        let facts = DeleteFacts {
            doc_id: doc_id.to_owned(),
            stored_chunks: stored_chunks(&sql, doc_id)?,
            pending_job: sql::first::<(String,)>(
                &sql,
                "SELECT job_id FROM job_docs WHERE doc_id = ? LIMIT 1",
                vec![doc_id.into()],
            )?
            .map(|(job,)| job),
        };
        let now = self.now();
        let (reply, _) = self.with_core(|c| c.handle(Request::BeginDelete(facts), now))?;
        let plan = match reply? {
            Reply::DeletePlan(plan) => plan,
            other => return Err(unexpected(&other)),
        };
        // The one await: the core holds the document meanwhile, so an
        // enqueue of it is accepted but not indexed until this completes.
        let result = match AnyIndex::new(&self.env, settings, tenant, self.sql(), self.mem.clone())
        {
            Ok(index) => index
                .delete(&plan.ids(tenant))
                .await
                .map_err(ErrorReply::from),
            Err(e) => Err(ErrorReply::from(e)),
        };
        let now = self.now();
        let (reply, effects) =
            self.with_core(|c| c.handle(Request::FinishDelete { plan, result }, now))?;
        self.perform(&effects, None)?;
        // Work that waited for this delete may go on.
        self.rearm().await;
        match reply? {
            Reply::Deleted(deleted) => Ok(IngestResponse::Deleted(deleted)),
            other => Err(unexpected(&other)),
        }
    }

    async fn search(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        search: Search,
    ) -> Result<IngestResponse, ErrorReply> {
        search.validate().map_err(invalid)?;
        let index = AnyIndex::new(&self.env, settings, tenant, self.sql(), self.mem.clone())?;
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
        let version = self.with_core(|c| c.index())?;
        let key = search_cache_key(
            tenant,
            &search.query,
            search.top_k,
            &search.filter,
            mode,
            version.version,
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
            // Injected failures are for indexing: a search never takes one.
            let embedder = AnyEmbedder::new(&self.env, settings, None::<SqlFaults>)?;
            embedder
                .embed(std::slice::from_ref(&search.query))
                .await?
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
            .await?;
        let results = SearchResults {
            cached: false,
            mode,
            index_version: version.version,
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
            || self.now().saturating_sub(version.changed_at_ms) > VECTORIZE_SETTLE_MS;
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

    fn snapshot(&self, settings: &Settings) -> Result<IngestResponse, ErrorReply> {
        let sql = self.sql();
        let documents = sql::scalar(&sql, "SELECT COUNT(*) FROM documents", vec![])?;
        let chunks = sql::scalar(
            &sql,
            "SELECT COALESCE(SUM(chunks), 0) FROM documents",
            vec![],
        )?;
        let pending_faults = faults::armed(&sql)?;
        self.with_core(|c| {
            IngestResponse::Snapshot(IngestSnapshot {
                index_version: c.index().version,
                documents,
                chunks,
                pending_jobs: c.pending().cloned().collect(),
                recent_jobs: c.recent().take(20).cloned().collect(),
                embedder: settings.embedder_name().to_owned(),
                vector_backend: if settings.vectorize {
                    "vectorize"
                } else {
                    "embedded-sqlite"
                }
                .to_owned(),
                pending_faults,
            })
        })
    }

    async fn handle(
        &self,
        envelope: Envelope<IngestRequest>,
    ) -> Result<IngestResponse, ErrorReply> {
        let settings = self.settings()?;
        let tenant = self.load(Some(&envelope.tenant_id), &settings)?;
        // Unfinished work must always have an alarm, even if setting one
        // failed earlier: any request makes sure it does.
        if self.with_core(|c| c.next_deadline().is_some())? && !self.working.get() {
            self.rearm().await;
        }
        match envelope.message {
            IngestRequest::Enqueue(enqueue) => self.enqueue(&tenant, enqueue, &settings).await,
            IngestRequest::GetJob(get) => {
                let now = self.now();
                let (reply, _) = self.with_core(|c| c.handle(Request::GetJob(get.job_id), now))?;
                match reply? {
                    Reply::Job(job) => Ok(IngestResponse::Job(job)),
                    other => Err(unexpected(&other)),
                }
            }
            IngestRequest::DeleteDocument(delete) => {
                self.delete_document(&tenant, &settings, &delete.doc_id)
                    .await
            }
            IngestRequest::Search(search) => self.search(&tenant, &settings, search).await,
            IngestRequest::Inspect(_) => self.snapshot(&settings),
            IngestRequest::InjectFaults(injected) => {
                if !settings.fault_injection {
                    return Err(invalid("fault injection is not enabled in this deployment"));
                }
                faults::arm(&self.sql(), injected.embed_failures)?;
                Ok(IngestResponse::FaultsInjected(injected))
            }
        }
    }
}

/// Performs one effect.
fn perform_one(
    sql: &SqlStorage,
    effect: &Effect,
    documents: Option<&[Document]>,
) -> Result<(), ErrorReply> {
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
        } => {
            sql::exec(
                sql,
                "INSERT INTO documents (doc_id, chunks, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT(doc_id) DO UPDATE SET chunks = excluded.chunks, updated_at = excluded.updated_at",
                vec![doc_id.as_str().into(), int(*chunks), int(*at_ms)],
            )?;
        }
        Effect::RemoveDocument(doc_id) => {
            sql::exec(
                sql,
                "DELETE FROM documents WHERE doc_id = ?",
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

/// The chunk count on record for `doc_id`, if it is indexed.
fn stored_chunks(sql: &SqlStorage, doc_id: &str) -> Result<Option<u32>, SqlError> {
    Ok(sql::first::<(u32,)>(
        sql,
        "SELECT chunks FROM documents WHERE doc_id = ?",
        vec![doc_id.into()],
    )?
    .map(|(n,)| n))
}

fn job_doc(sql: &SqlStorage, item: &WorkItem) -> Result<JobDoc, String> {
    let row = sql::first::<(String, String, String)>(
        sql,
        "SELECT doc_id, text, metadata FROM job_docs WHERE job_id = ? AND idx = ?",
        vec![item.job_id.as_str().into(), int(item.doc_index)],
    )
    .map_err(|e| e.to_string())?;
    let Some((doc_id, text, meta)) = row else {
        return Err(format!(
            "document {} of {} is missing from storage",
            item.doc_index, item.job_id
        ));
    };
    Ok(JobDoc {
        doc_id,
        text,
        metadata: serde_json::from_str(&meta).map_err(|e| e.to_string())?,
    })
}

/// The state of versions before jobs became rows: one JSON value.
#[derive(serde::Deserialize)]
struct LegacySaved {
    tenant: TenantId,
    queue: LegacyQueue,
}

#[derive(serde::Deserialize)]
struct LegacyQueue {
    pending: Vec<protocol::ingest::JobView>,
    recent: Vec<protocol::ingest::JobView>,
    index_version: u64,
    #[serde(default)]
    index_changed_at_ms: u64,
}

/// Moves a `queue_state` value of an older version into the tables, once.
/// Returns its tenant, the object's owner.
fn migrate_legacy(sql: &SqlStorage) -> Result<Option<TenantId>, ErrorReply> {
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
    let saved: LegacySaved = serde_json::from_str(&json)
        .map_err(|e| internal(format!("stored state is unreadable: {e}")))?;
    sql::claim_owner(sql, Some(&saved.tenant))?;
    let q = saved.queue;
    let jobs = q.recent.into_iter().chain(q.pending);
    for view in jobs {
        let text_bytes = sql::scalar::<u64>(
            sql,
            "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM job_docs WHERE job_id = ?",
            vec![view.job_id.as_str().into()],
        )?;
        let record = JobRecord {
            view,
            text_bytes,
            net_chunks: 0,
        };
        perform_one(sql, &Effect::SaveJob(record), None)?;
    }
    let version = IndexVersion {
        version: q.index_version,
        changed_at_ms: q.index_changed_at_ms,
    };
    perform_one(sql, &Effect::SaveIndexVersion(version), None)?;
    sql::exec(sql, "DROP TABLE queue_state", vec![])?;
    Ok(Some(saved.tenant))
}

impl worker::DurableObject for IngestQueue {
    rpc::no_websockets!("IngestQueue");

    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            clock: SystemClock,
            loaded: RefCell::new(None),
            mem: Rc::new(RefCell::new(None)),
            working: Cell::new(false),
        }
    }

    async fn fetch(&self, req: HttpRequest) -> worker::Result<Response> {
        let envelope = match rpc::read_request::<IngestRequest, IngestResponse>(req).await {
            Ok(envelope) => envelope,
            Err(response) => return Ok(response),
        };
        let request_id = envelope.request_id.clone();
        let reply = self.handle(envelope).await;
        Ok(rpc::reply_response(Some(request_id), reply))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let loaded = self
            .settings()
            .and_then(|settings| Ok((self.load(None, &settings)?, settings)));
        match loaded {
            Ok((tenant, settings)) => {
                self.work(&tenant, &settings, ALARM_BUDGET_MS, ALARM_MAX_CHUNKS)
                    .await;
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
