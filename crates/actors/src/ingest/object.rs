//! The `IngestQueue` Durable Object (`${tenantId}:ingest`): the shell around
//! [`QueueCore`], owner of the tenant's documents and index.
//!
//! Plumbing only: it decodes, loads the core from storage
//! ([`restore`](super::restore)), reads the clock once per event, calls the
//! pure code ([`requests`], [`work`], [`search`](super::search)), performs
//! the effects it returns ([`QueueStore`]: synchronous SQLite writes, so the
//! runtime commits each batch together) and the port calls it asks for, and
//! encodes the reply. Every await that is not storage (the embedder,
//! Vectorize) is followed by a call into the pure code that re-checks what
//! the plan taken before it assumed.

use super::core::{Effect, QueueCore, WorkItem};
use super::facts::JobDoc;
use super::faults::SqlFaults;
use super::reader::{Reader, SearchScope};
use super::replication::{ReplicatedIndex, Replicator};
use super::requests::{self, internal};
use super::restore;
use super::store::QueueStore;
use super::work::{self, Budget, DocRun, Done, Finish, Step, WorkRun, Worked};
use crate::ports::{Clock, Embedder, PortError, SystemClock, VectorIndex};
use crate::providers::{self, AnyEmbedder, Settings};
use crate::rpc;
use protocol::ingest::{Document, Enqueue, IngestRequest, IngestResponse};
use protocol::replica::Replication;
use protocol::{Envelope, ErrorCode, ErrorReply, TenantId};
use std::cell::{Cell, RefCell};
use worker::{durable_object, Env, Request as HttpRequest, Response, ScheduledTime, State};

/// How soon the alarm sends again changes a replica did not take (ms).
const REFLUSH_MS: u64 = 1_000;

/// Clears the "a work run is going" flag when dropped.
struct Working<'a>(&'a Cell<bool>);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
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
    /// A work loop is running (they must not overlap).
    working: Cell<bool>,
    /// The read path (searches where no replica answers them, embeddings,
    /// the embedder's usage).
    reader: Reader,
    /// Numbers the index's changes and sends them to the replicas.
    replicator: Replicator,
}

impl IngestQueue {
    fn store(&self) -> QueueStore {
        QueueStore::new(self.state.storage().sql())
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn settings(&self) -> Result<Settings, ErrorReply> {
        providers::from_env(&self.env).map_err(|e| internal(format!("misconfigured: {e}")))
    }

    /// The writer's index: its own, each write then sent to every search
    /// replica as a numbered change.
    fn index<'a>(
        &'a self,
        tenant: &'a TenantId,
        settings: &Settings,
    ) -> Result<ReplicatedIndex<'a>, PortError> {
        Ok(ReplicatedIndex {
            index: self
                .reader
                .index(self.state.storage().sql(), tenant, settings)?,
            replicator: &self.replicator,
            env: &self.env,
            sql: self.state.storage().sql(),
            tenant,
            replicas: settings.search_replicas,
            with_vectors: !settings.vectorize,
        })
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
            return Ok(crate::sql::check_owner(Some(&loaded.tenant), claimed)?);
        }
        let store = self.store();
        store.create_tables()?;
        self.replicator
            .on_load(&self.state.storage().sql())
            .map_err(ErrorReply::from)?;
        let legacy_owner = store.migrate_legacy()?;
        let tenant = store.claim_owner(legacy_owner.as_ref().or(claimed))?;
        let tenant = crate::sql::check_owner(Some(&tenant), claimed)?;
        let core = restore::restore(settings.queue_bounds(), store.meta()?, store.job_rows()?)?;
        for job in restore::dead_job_docs(&core, store.jobs_with_docs()?) {
            store.perform(&Effect::DropJobDocs(job), None)?;
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

    /// Performs `effects` in order, synchronously; `documents` are the
    /// enqueue's, for [`Effect::StoreJobDocs`]. Memory is ahead of storage
    /// after a failed write: the core is dropped, so the next message starts
    /// from what storage really holds.
    fn perform(
        &self,
        effects: &[Effect],
        documents: Option<&[Document]>,
    ) -> Result<(), ErrorReply> {
        let store = self.store();
        let result = effects
            .iter()
            .try_for_each(|effect| store.perform(effect, documents));
        if result.is_err() {
            *self.loaded.borrow_mut() = None;
        } else {
            let tenant = self.loaded.borrow().as_ref().map(|l| l.tenant.clone());
            for (event, fields) in crate::observe::job_events(effects) {
                crate::observe::event(event, "ingest", tenant.as_ref().map(|t| t.as_str()), fields);
            }
        }
        result
    }

    /// Sets the alarm for the next deadline, if work remains.
    async fn rearm(&self) {
        let now = self.now();
        let work_at = self.with_core(|c| work::alarm_at(c, now)).ok().flatten();
        // Changes a replica has not taken are sent again within a second,
        // whatever the work's own deadline.
        let flush_at = self.replicator.owes_replicas().then_some(now + REFLUSH_MS);
        let Some(at) = [work_at, flush_at].into_iter().flatten().min() else {
            return;
        };
        let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(at as f64));
        let scheduled = ScheduledTime::new(date);
        if let Err(e) = self.state.storage().set_alarm(scheduled).await {
            worker::console_error!("ingest queue: could not set the alarm: {e}");
        }
    }

    async fn enqueue(
        &self,
        tenant: &TenantId,
        enqueue: Enqueue,
        settings: &Settings,
    ) -> Result<IngestResponse, ErrorReply> {
        let job_id = format!("job-{}", crate::entropy::random_hex(12));
        let store = self.store();
        let now = self.now();
        let (accepted, effects) = self.with_core(|c| {
            requests::accept(c, &enqueue, job_id.clone(), settings, &store, now)
        })??;
        // The documents, then the job, with no await in between: the runtime
        // commits them together before the answer leaves. A failure part way
        // removes what was written, so no document is left without a job.
        if let Err(e) = self.perform(&effects, Some(&enqueue.documents)) {
            let _ = store.perform(&Effect::DropJobDocs(job_id), None);
            return Err(e);
        }
        self.rearm().await;
        // A head start: small jobs are done before the answer.
        self.work(tenant, settings, work::INLINE).await;
        let job = self.with_core(|c| c.job(&job_id).cloned()).ok().flatten();
        let answer = requests::enqueue_answer(accepted, job.as_ref());
        Ok(self.replicated(tenant, settings, answer).await)
    }

    /// Works through due documents within `budget`, then re-arms.
    async fn work(&self, tenant: &TenantId, settings: &Settings, budget: Budget) {
        if self.working.replace(true) {
            return;
        }
        // Cleared however the run ends, even if its future is dropped
        // mid-await: a flag left set would stop every later run.
        let working = Working(&self.working);
        let mut run = WorkRun::new(budget, self.now());
        loop {
            let now = self.now();
            let Ok(Some(item)) = self.with_core(|c| run.next(c, now)) else {
                break;
            };
            if !run.worked(self.process(tenant, settings, &item).await) {
                break;
            }
        }
        drop(working);
        self.rearm().await;
    }

    /// Sends the index's kept changes to the search replicas. Whatever an
    /// answer built before this call reports done was kept by then, so
    /// once this succeeds every search sees it. A replica that does not
    /// take them leaves them kept: the alarm sends them again in a second.
    async fn flush(&self, tenant: &TenantId, settings: &Settings) -> Result<(), ErrorReply> {
        let sql = self.state.storage().sql();
        let flushed = self
            .replicator
            .flush(&self.env, &sql, tenant, settings.search_replicas)
            .await;
        if let Err(e) = &flushed {
            worker::console_error!("ingest queue: changes not sent to the search replicas: {e}");
        }
        if self.replicator.owes_replicas() {
            self.rearm().await;
        }
        flushed.map_err(ErrorReply::from)
    }

    /// `answer`, built before the flush, once the replicas hold what it
    /// reports; while they do not, a job is not reported done yet
    /// ([`requests::unreplicated`]).
    async fn replicated(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        answer: IngestResponse,
    ) -> IngestResponse {
        match self.flush(tenant, settings).await {
            Ok(()) => answer,
            Err(_) => requests::unreplicated(answer),
        }
    }

    /// Indexes one document: the [`DocRun`] plans it, then asks for one port
    /// call at a time until it finishes.
    async fn process(&self, tenant: &TenantId, settings: &Settings, item: &WorkItem) -> Worked {
        let store = self.store();
        let doc = JobDoc::from_row(item, store.job_doc(item));
        let now = self.now();
        let started =
            self.with_core(|c| DocRun::start(c, tenant, item, doc, settings.chunking, &store, now));
        let run = match started {
            Ok(Ok(run)) => run,
            Ok(Err(finish)) => return self.finish(finish),
            Err(e) => return self.stop(&e),
        };
        let faults = Some(SqlFaults::new(self.state.storage().sql()));
        let ports = match self.reader.tenant_ai(tenant, settings).await {
            Ok(ai) => AnyEmbedder::new(&self.env, settings, faults, &ai)
                .and_then(|embedder| Ok((embedder, self.index(tenant, settings)?))),
            Err(e) => Err(e),
        };
        let caller = self
            .with_core(|c| c.job_caller(&item.job_id).map(str::to_owned))
            .ok()
            .flatten();
        let mut step = run.first();
        loop {
            let done = match (step, &ports) {
                (Step::Finish(finish), _) => return self.finish(finish),
                (_, Err(e)) => Err(e.clone()),
                (Step::Embed, Ok((embedder, _))) => {
                    let embedded = embedder.embed(run.chunks()).await;
                    if embedded.is_ok() {
                        self.reader.charge(
                            &self.state,
                            tenant,
                            caller.clone(),
                            embedder.model(),
                            run.chunks(),
                        );
                    }
                    embedded.map(Done::Embedded)
                }
                (Step::Upsert(records), Ok((_, index))) => {
                    index.upsert(&records).await.map(|()| Done::Upserted)
                }
                (Step::DeleteStale(ids), Ok((_, index))) => {
                    index.delete(&ids).await.map(|()| Done::StaleDeleted)
                }
            };
            let now = self.now();
            step = match self.with_core(|c| run.advance(c, done, now)) {
                Ok(step) => step,
                Err(e) => return self.stop(&e),
            };
        }
    }

    /// Persists how a document's work ended.
    fn finish(&self, finish: Finish) -> Worked {
        let persisted = self.perform(&finish.effects, None);
        if let Err(e) = &persisted {
            worker::console_error!("ingest queue: {}", e.message);
        }
        finish.outcome(persisted.is_ok())
    }

    /// The core is gone (a write failed meanwhile): stop the run.
    fn stop(&self, e: &ErrorReply) -> Worked {
        worker::console_error!("ingest queue: {}", e.message);
        Worked::Paused
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        doc_id: &str,
    ) -> Result<IngestResponse, ErrorReply> {
        let store = self.store();
        let now = self.now();
        let plan = match self.with_core(|c| requests::begin_delete(c, doc_id, &store, now))? {
            Ok(plan) => plan,
            Err(refused) if refused.code == ErrorCode::NotFound => {
                // Perhaps deleted by an earlier request whose answer was a
                // 503 (not on every replica yet): a retry learns whether the
                // replicas hold it now, not a bare 404.
                if self.flush(tenant, settings).await.is_err() {
                    return Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        "no such document, but changes to the index (perhaps its delete) have not \
                         reached every search replica yet, so searches may still show it for a \
                         while (retried every second)",
                    ));
                }
                return Err(refused);
            }
            Err(refused) => return Err(refused),
        };
        // The one await: the core holds the document meanwhile, so an
        // enqueue of it is accepted but not indexed until this completes.
        let result = match self.index(tenant, settings) {
            Ok(index) => index.delete(&plan.ids(tenant)).await,
            Err(e) => Err(e),
        }
        .map_err(ErrorReply::from);
        let now = self.now();
        let (answer, effects) =
            self.with_core(|c| requests::finish_delete(c, plan, result, now))?;
        self.perform(&effects, None)?;
        // Work that waited for this delete may go on.
        self.rearm().await;
        let answer = answer?;
        self.flush(tenant, settings).await.map_err(|e| {
            ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "the document is deleted, but not every search replica has taken the \
                     delete yet, so searches may still show it for a while (retried every \
                     second): {}",
                    e.message
                ),
            )
        })?;
        Ok(answer)
    }

    async fn handle(
        &self,
        envelope: Envelope<IngestRequest>,
    ) -> Result<IngestResponse, ErrorReply> {
        let settings = self.settings()?;
        let fresh = self.loaded.borrow().is_none();
        let tenant = self.load(Some(&envelope.tenant_id), &settings)?;
        // Loaded with changes the replicas may not hold: the alarm sends
        // them within a second, whatever this request is.
        let owed = fresh && self.replicator.owes_replicas();
        if owed || self.with_core(|c| work::must_rearm(c, self.working.get()))? {
            self.rearm().await;
        }
        match envelope.message {
            IngestRequest::Enqueue(enqueue) => self.enqueue(&tenant, enqueue, &settings).await,
            IngestRequest::GetJob(get) => {
                let now = self.now();
                let answer = self.with_core(|c| requests::get_job(c, get.job_id, now))??;
                Ok(self.replicated(&tenant, &settings, answer).await)
            }
            IngestRequest::DeleteDocument(delete) => {
                self.delete_document(&tenant, &settings, &delete.doc_id)
                    .await
            }
            IngestRequest::Search(search) => {
                // Where the deployment runs no replicas, or a caller still
                // sends here: the writer's own copy answers.
                let index = self
                    .reader
                    .index(self.state.storage().sql(), &tenant, &settings)?;
                // The change number, as the replicas count: one numbering
                // for every cache key, whoever answers.
                let changed_at_ms = self.with_core(|c| c.index().changed_at_ms)?;
                let version = crate::ingest::core::IndexVersion {
                    version: self
                        .replicator
                        .numbers(&self.state.storage().sql())
                        .map_err(|e| internal(e.to_string()))?
                        .seq,
                    changed_at_ms,
                };
                let scope = SearchScope {
                    state: &self.state,
                    index: &index,
                    tenant: &tenant,
                    settings: &settings,
                    version,
                    current: &|| true,
                };
                self.reader.search(&scope, search).await
            }
            IngestRequest::Inspect(_) => {
                let counts = self.store().counts()?;
                let mut snapshot = self.with_core(|c| requests::snapshot(c, &settings, counts))?;
                let seq = self
                    .replicator
                    .numbers(&self.state.storage().sql())
                    .map_err(|e| internal(e.to_string()))?
                    .seq;
                // The version searches answer with and cache under.
                snapshot.index_version = seq;
                snapshot.replication = Replication {
                    replicas: settings.search_replicas,
                    seq,
                    batches_sent: self.replicator.batches_sent(),
                    searches: self.reader.searches(),
                    pages_exported: self.replicator.pages_exported(),
                };
                Ok(IngestResponse::Snapshot(snapshot))
            }
            IngestRequest::ExportChunks(export) => {
                let page = self
                    .replicator
                    .export(&self.state.storage().sql(), export)
                    .map_err(|e| internal(e.to_string()))?;
                Ok(IngestResponse::Chunks(page))
            }
            IngestRequest::Replicate(_) => Err(ErrorReply::new(
                ErrorCode::InvalidRequest,
                "the tenant's index is written here; changes go to its search replicas",
            )),
            IngestRequest::InjectFaults(injected) => {
                requests::allow_fault_injection(&settings)?;
                self.store().arm_faults(injected.embed_failures)?;
                Ok(IngestResponse::FaultsInjected(injected))
            }
            IngestRequest::Embed(embed) => {
                self.reader
                    .embed(&self.state, &tenant, &settings, embed)
                    .await
            }
            IngestRequest::ListDocuments(list) => {
                if !(1..=protocol::listing::MAX_PAGE_LIMIT).contains(&list.limit) {
                    return Err(ErrorReply::new(
                        protocol::ErrorCode::InvalidRequest,
                        protocol::listing::ListingError::Limit.to_string(),
                    ));
                }
                let page = self
                    .store()
                    .list_documents(list.limit, list.after.as_deref())?;
                Ok(IngestResponse::Documents(page))
            }
        }
    }
}

impl worker::DurableObject for IngestQueue {
    rpc::no_websockets!("IngestQueue");

    fn new(state: State, env: Env) -> Self {
        Self {
            reader: Reader::new(env.clone()),
            state,
            env,
            clock: SystemClock,
            loaded: RefCell::new(None),
            working: Cell::new(false),
            replicator: Replicator::default(),
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
                crate::observe::event(
                    "alarm",
                    "ingest",
                    Some(tenant.as_str()),
                    serde_json::Value::Null,
                );
                self.work(&tenant, &settings, work::ALARM).await;
                // Sets the alarm again if a replica did not take the changes.
                let _ = self.flush(&tenant, &settings).await;
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
