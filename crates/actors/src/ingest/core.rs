//! The ingest queue's pure core: admission (the backlog and index bounds),
//! which job and document to work on next, the plan for one document (what to
//! upsert, which stale chunks to delete, what to record), the plan of a
//! delete, what a success or a failure changes, when to wake up, and the index
//! version.
//!
//! No I/O and no clock: the shell reads storage into *facts*, reads the clock
//! once and passes `now`, calls the core, and performs the [`Effect`]s it
//! returns in order, synchronously. The core never sees a document's text;
//! the shell stores it before the job is accepted and reads the one the core
//! asks for.
//!
//! Awaits that are not storage (the embedder, Vectorize) let other requests
//! run in the middle of an operation. Every such operation is therefore split
//! into a plan, taken before the await, and a completion, taken after it,
//! which re-checks what the plan assumed: a document being deleted cannot be
//! indexed until the delete completes, and a completion that is no longer
//! current changes nothing.

use super::records::chunk_ids;
use protocol::ingest::{DocumentDeleted, JobAccepted, JobStatus, JobView};
use protocol::{ErrorCode, ErrorReply, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;

/// First retry delay; doubled per failed attempt.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// Finished jobs remembered for `GET /api/ingest/<jobId>`.
pub const RECENT_JOBS: usize = 200;
/// Failed attempts after which a job is given up (`failed`) by default, so
/// one document that can never be indexed does not hold up the tenant's queue
/// forever (`INGEST_MAX_ATTEMPTS`).
pub const MAX_ATTEMPTS: u32 = 10;
/// The machine-readable reason of a refusal by the backlog bounds.
pub const BACKLOG_FULL: &str = "backlog_full";
/// The machine-readable reason of a refusal by the index bound.
pub const INDEX_FULL: &str = "index_full";

/// The queue's configurable bounds (wrangler vars, see
/// [`crate::providers::Bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Unfinished jobs a tenant may have.
    pub max_pending_jobs: usize,
    /// Bytes of document text the unfinished jobs may hold.
    pub max_backlog_bytes: u64,
    /// Chunks the tenant's index may hold; `None` when the backend has no
    /// bound of ours (Vectorize).
    pub max_chunks: Option<u64>,
    /// Failed attempts after which a job is given up.
    pub max_attempts: u32,
}

/// One job as the core keeps and persists it (one row per job): the view
/// clients see, plus what it holds of the backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The client's view. While the job is unfinished,
    /// `next_attempt_at_ms` is always set: not before then.
    pub view: JobView,
    /// Bytes of document text the job's stored documents hold.
    pub text_bytes: u64,
    /// Chunks the job adds to the index once done (its documents' chunks
    /// minus those they replace), as estimated when it was accepted.
    pub net_chunks: i64,
    /// Whom its embeddings are charged to (jobs stored before usage records
    /// existed: nobody named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl JobRecord {
    fn is_pending(&self) -> bool {
        matches!(
            self.view.status,
            JobStatus::Queued | JobStatus::Running | JobStatus::Retrying
        )
    }
}

/// The index version, bumped by every indexed document and every delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexVersion {
    /// The version (part of every search cache key).
    pub version: u64,
    /// When it last changed (ms since the Unix epoch).
    pub changed_at_ms: u64,
}

/// One document of an enqueue, as the shell measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDoc {
    /// The document id.
    pub doc_id: String,
    /// Bytes of its text.
    pub text_bytes: u64,
    /// Chunks it will have.
    pub chunks: u32,
    /// Chunks the index holds for this id now (a re-ingest replaces them).
    pub replaces_chunks: u32,
}

/// What the shell knows when an enqueue arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueFacts {
    /// The new job's id.
    pub job_id: String,
    /// Its documents.
    pub docs: Vec<NewDoc>,
    /// Chunks the index holds now.
    pub indexed_chunks: u64,
    /// Whom the job's embeddings are charged to.
    pub caller: Option<String>,
}

/// What the shell knows when a delete arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFacts {
    /// The document id.
    pub doc_id: String,
    /// Its chunk count on record, if it is indexed.
    pub stored_chunks: Option<u32>,
    /// An unfinished job that holds the document, if any.
    pub pending_job: Option<String>,
}

/// A request to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Accept a job (the shell has validated and measured it).
    Enqueue(EnqueueFacts),
    /// A job's view.
    GetJob(String),
    /// Start deleting a document: answers with a [`DeletePlan`].
    BeginDelete(DeleteFacts),
    /// The index delete of a [`DeletePlan`] has returned.
    FinishDelete {
        /// The plan that was carried out.
        plan: DeletePlan,
        /// The index's answer.
        result: Result<(), ErrorReply>,
    },
}

/// The core's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The job is accepted.
    Accepted(JobAccepted),
    /// A job's view.
    Job(JobView),
    /// Remove these chunks from the index, then send `FinishDelete`.
    DeletePlan(DeletePlan),
    /// The document is gone.
    Deleted(DocumentDeleted),
}

/// A delete in progress: the document and the chunks to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePlan {
    /// The document id.
    pub doc_id: String,
    /// Its chunk count: chunks `0..chunks` go.
    pub chunks: u32,
}

impl DeletePlan {
    /// The vector ids to remove.
    pub fn ids(&self, tenant: &TenantId) -> Vec<String> {
        chunk_ids(tenant, &self.doc_id, 0, self.chunks)
    }
}

/// The next unit of work: one document of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The job.
    pub job_id: String,
    /// The document's position in the job.
    pub doc_index: u32,
}

/// What the shell knows about the document of a [`WorkItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFacts {
    /// The document id.
    pub doc_id: String,
    /// Chunks of the new text.
    pub chunks: u32,
    /// Chunks on record for this id (an earlier version), 0 if none.
    pub previous_chunks: u32,
}

/// What to do with one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocPlan {
    /// The document id.
    pub doc_id: String,
    /// Chunk numbers to embed and upsert.
    pub upsert: Range<u32>,
    /// Chunk numbers an earlier, longer version had: delete them.
    pub stale: Range<u32>,
}

impl DocPlan {
    /// The vector ids of the stale chunks.
    pub fn stale_ids(&self, tenant: &TenantId) -> Vec<String> {
        chunk_ids(tenant, &self.doc_id, self.stale.start, self.stale.end)
    }

    /// The chunk count to record once done.
    pub fn chunks(&self) -> u32 {
        self.upsert.end
    }
}

/// The answer to [`QueueCore::plan_document`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocStep {
    /// Index the document as planned.
    Index(DocPlan),
    /// A delete of this document is in flight: stop; its completion wakes
    /// the queue again.
    Wait,
    /// The item is not the current work any more: drop it.
    Stale,
}

/// A storage write for the shell, performed in order and synchronously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store the enqueue's documents as rows of this job (before its row).
    StoreJobDocs(String),
    /// Insert or replace a job's row.
    SaveJob(JobRecord),
    /// Remove a job's row (it fell off the recent list).
    ForgetJob(String),
    /// Remove a job's stored documents: the job is done or given up, and
    /// they must not keep its documents looking busy.
    DropJobDocs(String),
    /// Record a document's chunk count.
    RecordDocument {
        /// The document id.
        doc_id: String,
        /// Its chunks.
        chunks: u32,
        /// When (ms since the Unix epoch).
        at_ms: u64,
        /// The indexed version's `metadata.title`, if it is a string (for
        /// the documents listing).
        title: Option<String>,
    },
    /// Remove a document's record.
    RemoveDocument(String),
    /// Write the index version.
    SaveIndexVersion(IndexVersion),
}

/// Effects of one call, in order.
pub type Effects = Vec<Effect>;

/// The queue.
#[derive(Debug, Clone)]
pub struct QueueCore {
    bounds: Bounds,
    /// Unfinished jobs, oldest first; worked on in this order.
    pending: VecDeque<JobRecord>,
    /// Finished jobs, newest last, at most [`RECENT_JOBS`].
    recent: VecDeque<JobRecord>,
    index: IndexVersion,
    /// Documents whose delete is in flight (not persisted: a delete does not
    /// outlive the object's memory).
    deleting: BTreeSet<String>,
    /// The head job's next document is one of `deleting`: no work until that
    /// delete completes.
    blocked: bool,
}

/// Delay before attempt `attempts + 1`, after `attempts` failures.
pub fn backoff_ms(attempts: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(16);
    (BACKOFF_BASE_MS << exp).min(BACKOFF_MAX_MS)
}

fn refuse(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl QueueCore {
    /// A core over what storage holds: the index version and every job row,
    /// in the order they were accepted.
    pub fn restore(
        bounds: Bounds,
        index: IndexVersion,
        jobs: impl IntoIterator<Item = JobRecord>,
    ) -> Self {
        let (pending, recent) = jobs.into_iter().partition(JobRecord::is_pending);
        Self {
            bounds,
            pending,
            recent,
            index,
            deleting: BTreeSet::new(),
            blocked: false,
        }
    }

    /// A core for a new tenant.
    pub fn new(bounds: Bounds) -> Self {
        Self::restore(bounds, IndexVersion::default(), [])
    }

    /// Replaces the bounds (the deployment's vars are read per request).
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
    }

    /// The index version (part of every search cache key).
    pub fn index(&self) -> IndexVersion {
        self.index
    }

    /// Unfinished jobs, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &JobView> {
        self.pending.iter().map(|j| &j.view)
    }

    /// Finished jobs, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &JobView> {
        self.recent.iter().rev().map(|j| &j.view)
    }

    /// Bytes of text the unfinished jobs hold.
    pub fn backlog_bytes(&self) -> u64 {
        self.pending.iter().map(|j| j.text_bytes).sum()
    }

    /// A job by id, pending or recent.
    /// Whom a job's embeddings are charged to.
    pub fn job_caller(&self, job_id: &str) -> Option<&str> {
        self.pending
            .iter()
            .find(|r| r.view.job_id == job_id)
            .and_then(|r| r.caller.as_deref())
    }

    pub fn job(&self, job_id: &str) -> Option<&JobView> {
        self.pending
            .iter()
            .chain(self.recent.iter())
            .map(|j| &j.view)
            .find(|j| j.job_id == job_id)
    }

    /// Handles a request at `now_ms`.
    pub fn handle(
        &mut self,
        request: Request,
        now_ms: u64,
    ) -> (Result<Reply, ErrorReply>, Effects) {
        match request {
            Request::Enqueue(facts) => self.enqueue(facts, now_ms),
            Request::GetJob(job_id) => {
                let reply = self
                    .job(&job_id)
                    .cloned()
                    .map(Reply::Job)
                    .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {job_id:?}")));
                (reply, Vec::new())
            }
            Request::BeginDelete(facts) => (self.begin_delete(facts), Vec::new()),
            Request::FinishDelete { plan, result } => self.finish_delete(plan, result, now_ms),
        }
    }

    fn enqueue(
        &mut self,
        facts: EnqueueFacts,
        now_ms: u64,
    ) -> (Result<Reply, ErrorReply>, Effects) {
        if let Err(e) = self.admit(&facts) {
            return (Err(e), Vec::new());
        }
        let count = u32::try_from(facts.docs.len()).unwrap_or(u32::MAX);
        let record = JobRecord {
            view: JobView {
                job_id: facts.job_id.clone(),
                status: JobStatus::Queued,
                documents_total: count,
                documents_done: 0,
                chunks_done: 0,
                attempts: 0,
                last_error: None,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                next_attempt_at_ms: Some(now_ms),
            },
            text_bytes: facts.docs.iter().map(|d| d.text_bytes).sum(),
            net_chunks: net_chunks(&facts.docs),
            caller: facts.caller.clone(),
        };
        self.pending.push_back(record.clone());
        let accepted = JobAccepted {
            job_id: facts.job_id.clone(),
            count,
            status: JobStatus::Queued,
        };
        let effects = vec![Effect::StoreJobDocs(facts.job_id), Effect::SaveJob(record)];
        (Ok(Reply::Accepted(accepted)), effects)
    }

    /// Checks the bounds: unfinished jobs, backlog bytes, and (where the
    /// backend has one) the index's chunks once every unfinished job is done.
    fn admit(&self, facts: &EnqueueFacts) -> Result<(), ErrorReply> {
        let b = self.bounds;
        if self.pending.len() >= b.max_pending_jobs {
            return Err(refuse(
                ErrorCode::QuotaExceeded,
                format!(
                    "this tenant has {} unfinished ingest jobs (the bound is {}); retry when some are done",
                    self.pending.len(),
                    b.max_pending_jobs
                ),
            )
            .with_reason(BACKLOG_FULL));
        }
        let bytes: u64 = facts.docs.iter().map(|d| d.text_bytes).sum();
        let backlog = self.backlog_bytes();
        if backlog.saturating_add(bytes) > b.max_backlog_bytes {
            return Err(refuse(
                ErrorCode::QuotaExceeded,
                format!(
                    "unfinished ingest jobs hold {backlog} bytes of text and this request {bytes} more; \
                     the bound is {} bytes; retry when some jobs are done",
                    b.max_backlog_bytes
                ),
            )
            .with_reason(BACKLOG_FULL));
        }
        if let Some(max) = b.max_chunks {
            let queued: i64 = self.pending.iter().map(|j| j.net_chunks).sum();
            let projected = i64::try_from(facts.indexed_chunks)
                .unwrap_or(i64::MAX)
                .saturating_add(queued)
                .saturating_add(net_chunks(&facts.docs));
            if projected > i64::try_from(max).unwrap_or(i64::MAX) {
                return Err(refuse(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "the index would hold {projected} chunks with this request and the unfinished jobs; \
                         the bound is {max} (EMBEDDED_MAX_CHUNKS); delete documents first"
                    ),
                )
                .with_reason(INDEX_FULL));
            }
        }
        Ok(())
    }

    fn begin_delete(&mut self, facts: DeleteFacts) -> Result<Reply, ErrorReply> {
        let doc_id = facts.doc_id;
        if self.deleting.contains(&doc_id) {
            return Err(refuse(
                ErrorCode::Busy,
                format!("document {doc_id:?} is being deleted already"),
            ));
        }
        // A document that an unfinished job will (re)write cannot be deleted
        // now: the job would bring it back.
        if let Some(job) = facts.pending_job {
            return Err(refuse(
                ErrorCode::Busy,
                format!(
                    "document {doc_id:?} has an unfinished ingest job ({job}); delete it when the job is done"
                ),
            ));
        }
        let Some(chunks) = facts.stored_chunks else {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("no document {doc_id:?}"),
            ));
        };
        self.deleting.insert(doc_id.clone());
        Ok(Reply::DeletePlan(DeletePlan { doc_id, chunks }))
    }

    fn finish_delete(
        &mut self,
        plan: DeletePlan,
        result: Result<(), ErrorReply>,
        now_ms: u64,
    ) -> (Result<Reply, ErrorReply>, Effects) {
        if !self.deleting.remove(&plan.doc_id) {
            let e = refuse(
                ErrorCode::Internal,
                format!("no delete of {:?} was in progress", plan.doc_id),
            );
            return (Err(e), Vec::new());
        }
        // Work that waited for this delete may go on, whatever its outcome.
        self.blocked = false;
        if let Err(e) = result {
            return (Err(e), Vec::new());
        }
        // A job accepted during the await holds this document, but it could
        // not index it (plan_document waits for the delete): the record
        // removed here is the old one, and the job writes the new one after.
        let effects = vec![
            Effect::RemoveDocument(plan.doc_id.clone()),
            self.bump_version(now_ms),
        ];
        let deleted = DocumentDeleted {
            doc_id: plan.doc_id,
            chunks_removed: plan.chunks,
        };
        (Ok(Reply::Deleted(deleted)), effects)
    }

    fn bump_version(&mut self, now_ms: u64) -> Effect {
        self.index.version += 1;
        self.index.changed_at_ms = now_ms;
        Effect::SaveIndexVersion(self.index)
    }

    /// The work due at `now_ms`: the next document of the oldest unfinished
    /// job, if that job is not waiting out a backoff or a delete. Jobs run in
    /// order, so a re-ingest in a later job always wins over an earlier one.
    pub fn next_work(&self, now_ms: u64) -> Option<WorkItem> {
        let job = &self.pending.front()?.view;
        (!self.blocked && job.next_attempt_at_ms.unwrap_or(0) <= now_ms).then(|| WorkItem {
            job_id: job.job_id.clone(),
            doc_index: job.documents_done,
        })
    }

    /// When the alarm must next fire, if any work can be done then.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.blocked {
            return None;
        }
        self.pending
            .front()
            .map(|j| j.view.next_attempt_at_ms.unwrap_or(0))
    }

    fn is_current(&self, item: &WorkItem) -> bool {
        self.pending.front().is_some_and(|j| {
            j.view.job_id == item.job_id && j.view.documents_done == item.doc_index
        })
    }

    /// Whether `item` is still the work to do (checked after every await
    /// that is not storage).
    pub fn still_current(&self, item: &WorkItem) -> bool {
        self.is_current(item) && !self.blocked
    }

    /// The plan for the document of `item`, from what storage says about it.
    pub fn plan_document(&mut self, item: &WorkItem, facts: DocFacts) -> DocStep {
        if !self.is_current(item) {
            return DocStep::Stale;
        }
        if self.deleting.contains(&facts.doc_id) {
            self.blocked = true;
            return DocStep::Wait;
        }
        DocStep::Index(DocPlan {
            upsert: 0..facts.chunks,
            stale: facts.chunks..facts.previous_chunks.max(facts.chunks),
            doc_id: facts.doc_id,
        })
    }

    /// The document of `item` was indexed as `plan` says, with `title` (its
    /// `metadata.title`). Re-checks that the item is still current; a stale
    /// report changes nothing.
    pub fn document_indexed(
        &mut self,
        item: &WorkItem,
        plan: &DocPlan,
        title: Option<String>,
        now_ms: u64,
    ) -> Effects {
        if !self.is_current(item) || self.deleting.contains(&plan.doc_id) {
            return Vec::new();
        }
        let version = self.bump_version(now_ms);
        let Some(job) = self.pending.front_mut() else {
            return Vec::new();
        };
        let v = &mut job.view;
        v.documents_done += 1;
        v.chunks_done = v.chunks_done.saturating_add(plan.chunks());
        v.updated_at_ms = now_ms;
        v.status = JobStatus::Running;
        let mut effects = vec![
            Effect::RecordDocument {
                doc_id: plan.doc_id.clone(),
                chunks: plan.chunks(),
                at_ms: now_ms,
                title,
            },
            version,
        ];
        if v.documents_done >= v.documents_total {
            v.status = JobStatus::Done;
            v.next_attempt_at_ms = None;
            self.finish_head(&mut effects);
        } else {
            effects.push(Effect::SaveJob(job.clone()));
        }
        effects
    }

    /// Working on `item` failed with `error`: retry with backoff, or give the
    /// job up after `max_attempts` ([`MAX_ATTEMPTS`] by default).
    pub fn attempt_failed(&mut self, item: &WorkItem, error: String, now_ms: u64) -> Effects {
        let Some(job) = self.pending.front_mut() else {
            return Vec::new();
        };
        let v = &mut job.view;
        if v.job_id != item.job_id {
            return Vec::new();
        }
        v.attempts += 1;
        v.status = JobStatus::Retrying;
        v.last_error = Some(error);
        v.updated_at_ms = now_ms;
        v.next_attempt_at_ms = Some(now_ms.saturating_add(backoff_ms(v.attempts)));
        if v.attempts >= self.bounds.max_attempts.max(1) {
            v.status = JobStatus::Failed;
            v.next_attempt_at_ms = None;
            let mut effects = Vec::new();
            self.finish_head(&mut effects);
            effects
        } else {
            vec![Effect::SaveJob(job.clone())]
        }
    }

    /// Moves the head job (done or failed) to the recent ones. Its stored
    /// documents go either way: a failed job's documents kept in `job_docs`
    /// would make every later delete of them a 409 forever.
    fn finish_head(&mut self, effects: &mut Effects) {
        let Some(done) = self.pending.pop_front() else {
            return;
        };
        effects.push(Effect::DropJobDocs(done.view.job_id.clone()));
        effects.push(Effect::SaveJob(done.clone()));
        self.recent.push_back(done);
        while self.recent.len() > RECENT_JOBS {
            if let Some(old) = self.recent.pop_front() {
                effects.push(Effect::ForgetJob(old.view.job_id));
            }
        }
    }
}

/// Chunks a job adds once done: its documents' chunks minus those they replace.
fn net_chunks(docs: &[NewDoc]) -> i64 {
    docs.iter()
        .map(|d| i64::from(d.chunks) - i64::from(d.replaces_chunks))
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const BOUNDS: Bounds = Bounds {
        max_pending_jobs: 500,
        max_backlog_bytes: 1_000_000,
        max_chunks: Some(1_000),
        max_attempts: MAX_ATTEMPTS,
    };

    fn item(job: &str, doc: u32) -> WorkItem {
        WorkItem {
            job_id: job.into(),
            doc_index: doc,
        }
    }

    fn doc(id: &str, chunks: u32) -> NewDoc {
        NewDoc {
            doc_id: id.into(),
            text_bytes: 100,
            chunks,
            replaces_chunks: 0,
        }
    }

    fn enqueue(q: &mut QueueCore, job: &str, docs: Vec<NewDoc>, now: u64) -> Effects {
        let facts = EnqueueFacts {
            caller: None,
            job_id: job.into(),
            docs,
            indexed_chunks: 0,
        };
        let (reply, fx) = q.handle(Request::Enqueue(facts), now);
        assert!(matches!(reply, Ok(Reply::Accepted(_))), "{reply:?}");
        fx
    }

    fn indexed(q: &mut QueueCore, it: &WorkItem, chunks: u32, now: u64) -> Effects {
        let plan = DocPlan {
            doc_id: "d".into(),
            upsert: 0..chunks,
            stale: chunks..chunks,
        };
        q.document_indexed(it, &plan, None, now)
    }

    fn view<'a>(q: &'a QueueCore, job: &str) -> &'a JobView {
        q.job(job).expect("the job")
    }

    /// A model of the shell and its storage: it performs effects on plain
    /// maps and replays interleavings of requests and awaits.
    #[derive(Default)]
    struct Sim {
        /// (job, doc index) → doc id and chunk count of its text.
        job_docs: BTreeMap<(String, u32), (String, u32)>,
        jobs: BTreeMap<String, JobRecord>,
        documents: BTreeMap<String, u32>,
        /// The vector ids in the index, as (doc id, chunk number).
        vectors: BTreeSet<(String, u32)>,
        version: IndexVersion,
        /// The request's documents an `Enqueue` will store.
        incoming: Vec<(String, u32)>,
    }

    impl Sim {
        fn apply(&mut self, effects: Effects) {
            for e in effects {
                match e {
                    Effect::StoreJobDocs(job) => {
                        for (i, d) in std::mem::take(&mut self.incoming).into_iter().enumerate() {
                            self.job_docs.insert((job.clone(), i as u32), d);
                        }
                    }
                    Effect::SaveJob(r) => {
                        self.jobs.insert(r.view.job_id.clone(), r);
                    }
                    Effect::ForgetJob(j) => {
                        self.jobs.remove(&j);
                    }
                    Effect::DropJobDocs(j) => self.job_docs.retain(|(job, _), _| *job != j),
                    Effect::RecordDocument { doc_id, chunks, .. } => {
                        self.documents.insert(doc_id, chunks);
                    }
                    Effect::RemoveDocument(d) => {
                        self.documents.remove(&d);
                    }
                    Effect::SaveIndexVersion(v) => self.version = v,
                }
            }
        }

        fn enqueue(&mut self, q: &mut QueueCore, job: &str, docs: &[(&str, u32)], now: u64) {
            self.incoming = docs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect();
            let new = docs
                .iter()
                .map(|(d, n)| NewDoc {
                    doc_id: (*d).into(),
                    text_bytes: 10,
                    chunks: *n,
                    replaces_chunks: self.documents.get(*d).copied().unwrap_or(0),
                })
                .collect();
            let facts = EnqueueFacts {
                caller: None,
                job_id: job.into(),
                docs: new,
                indexed_chunks: self.documents.values().map(|n| u64::from(*n)).sum(),
            };
            let (reply, fx) = q.handle(Request::Enqueue(facts), now);
            assert!(reply.is_ok(), "{reply:?}");
            self.apply(fx);
        }

        fn delete_facts(&self, doc_id: &str) -> DeleteFacts {
            DeleteFacts {
                doc_id: doc_id.into(),
                stored_chunks: self.documents.get(doc_id).copied(),
                pending_job: self
                    .job_docs
                    .iter()
                    .find(|(_, (d, _))| d == doc_id)
                    .map(|((j, _), _)| j.clone()),
            }
        }

        /// Plans the next document, as the shell does before its awaits.
        fn plan(&self, q: &mut QueueCore, now: u64) -> Option<(WorkItem, DocStep)> {
            let it = q.next_work(now)?;
            let (doc_id, chunks) = self.job_docs[&(it.job_id.clone(), it.doc_index)].clone();
            let facts = DocFacts {
                previous_chunks: self.documents.get(&doc_id).copied().unwrap_or(0),
                doc_id,
                chunks,
            };
            let step = q.plan_document(&it, facts);
            Some((it, step))
        }

        /// The index writes of a plan (what the awaits do).
        fn write_index(&mut self, plan: &DocPlan) {
            for n in plan.upsert.clone() {
                self.vectors.insert((plan.doc_id.clone(), n));
            }
            for n in plan.stale.clone() {
                self.vectors.remove(&(plan.doc_id.clone(), n));
            }
        }

        /// Runs every due document to the end.
        fn drain(&mut self, q: &mut QueueCore, now: u64) {
            while let Some((it, step)) = self.plan(q, now) {
                let DocStep::Index(plan) = step else { break };
                self.write_index(&plan);
                let fx = q.document_indexed(&it, &plan, None, now);
                self.apply(fx);
            }
        }
    }

    #[test]
    fn a_job_runs_document_by_document() {
        let mut q = QueueCore::new(BOUNDS);
        let fx = enqueue(&mut q, "j1", vec![doc("a", 3), doc("b", 2)], 100);
        assert_eq!(fx[0], Effect::StoreJobDocs("j1".into()), "documents first");
        assert!(matches!(fx[1], Effect::SaveJob(_)));
        assert_eq!(q.next_deadline(), Some(100));
        assert_eq!(q.next_work(99), None, "not due yet");
        assert_eq!(q.next_work(100), Some(item("j1", 0)));
        let fx = indexed(&mut q, &item("j1", 0), 3, 110);
        assert!(!fx.iter().any(|e| matches!(e, Effect::DropJobDocs(_))));
        assert_eq!(view(&q, "j1").status, JobStatus::Running);
        assert_eq!(q.next_work(110), Some(item("j1", 1)));
        let fx = indexed(&mut q, &item("j1", 1), 2, 120);
        assert!(fx.contains(&Effect::DropJobDocs("j1".into())));
        assert_eq!(q.next_deadline(), None, "nothing left");
        let job = view(&q, "j1");
        assert_eq!(
            (job.status, job.documents_done, job.chunks_done),
            (JobStatus::Done, 2, 5)
        );
        assert_eq!(job.next_attempt_at_ms, None);
        assert_eq!(q.index().version, 2);
        assert_eq!(q.next_work(1_000), None);
    }

    #[test]
    fn the_plan_upserts_the_new_chunks_and_deletes_the_stale_ones() {
        let mut q = QueueCore::new(BOUNDS);
        enqueue(&mut q, "j1", vec![doc("a", 2)], 0);
        let facts = |chunks, previous_chunks| DocFacts {
            doc_id: "a".into(),
            chunks,
            previous_chunks,
        };
        let DocStep::Index(plan) = q.plan_document(&item("j1", 0), facts(2, 5)) else {
            panic!("expected a plan")
        };
        assert_eq!((plan.upsert.clone(), plan.stale.clone()), (0..2, 2..5));
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(plan.stale_ids(&t), chunk_ids(&t, "a", 2, 5));
        let DocStep::Index(plan) = q.plan_document(&item("j1", 0), facts(4, 1)) else {
            panic!("expected a plan")
        };
        assert!(
            plan.stale.is_empty(),
            "a longer version leaves nothing stale"
        );
        assert_eq!(q.plan_document(&item("j1", 1), facts(1, 0)), DocStep::Stale);
        assert_eq!(q.plan_document(&item("j0", 0), facts(1, 0)), DocStep::Stale);
    }

    #[test]
    fn failures_back_off_and_the_job_completes_later() {
        let mut q = QueueCore::new(BOUNDS);
        enqueue(&mut q, "j1", vec![doc("a", 1)], 0);
        let fx = q.attempt_failed(&item("j1", 0), "embedder down".into(), 10);
        assert!(
            matches!(&fx[..], [Effect::SaveJob(_)]),
            "one row written: {fx:?}"
        );
        assert_eq!(q.next_deadline(), Some(10 + BACKOFF_BASE_MS));
        let job = view(&q, "j1");
        assert_eq!((job.status, job.attempts), (JobStatus::Retrying, 1));
        assert_eq!(job.last_error.as_deref(), Some("embedder down"));
        assert_eq!(q.next_work(10 + BACKOFF_BASE_MS - 1), None);
        q.attempt_failed(&item("j1", 0), "again".into(), 2_000);
        assert_eq!(q.next_deadline(), Some(2_000 + 2 * BACKOFF_BASE_MS));
        let due = q.next_deadline().unwrap();
        assert_eq!(q.next_work(due), Some(item("j1", 0)));
        indexed(&mut q, &item("j1", 0), 4, due);
        let job = view(&q, "j1");
        assert_eq!(
            (job.status, job.chunks_done, job.attempts),
            (JobStatus::Done, 4, 2)
        );
    }

    #[test]
    fn a_job_that_keeps_failing_is_given_up_and_the_queue_moves_on() {
        let mut q = QueueCore::new(BOUNDS);
        enqueue(&mut q, "bad", vec![doc("a", 1)], 0);
        enqueue(&mut q, "good", vec![doc("b", 1)], 0);
        let mut now = 0;
        let mut last = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            assert_eq!(q.next_work(now), Some(item("bad", 0)), "attempt {attempt}");
            last = q.attempt_failed(&item("bad", 0), format!("error {attempt}"), now);
            now = q.next_deadline().unwrap_or(now);
        }
        let bad = view(&q, "bad");
        assert_eq!(
            (bad.status, bad.attempts),
            (JobStatus::Failed, MAX_ATTEMPTS)
        );
        assert_eq!(bad.last_error.as_deref(), Some("error 10"));
        assert_eq!(bad.next_attempt_at_ms, None);
        assert!(
            last.contains(&Effect::DropJobDocs("bad".into())),
            "a given-up job's documents go: {last:?}"
        );
        assert_eq!(q.next_work(now), Some(item("good", 0)));
    }

    /// Bug: a job that failed for good kept its `job_docs` rows, so every
    /// later delete of its documents was a 409 forever.
    #[test]
    fn documents_of_a_failed_job_can_be_deleted() {
        let mut q = QueueCore::new(BOUNDS);
        let mut sim = Sim::default();
        // "a" is indexed, then re-ingested by a job that never succeeds.
        sim.enqueue(&mut q, "j1", &[("a", 2)], 0);
        sim.drain(&mut q, 0);
        sim.enqueue(&mut q, "j2", &[("a", 3)], 1);
        let mut now = 1;
        while let Some(it) = q.next_work(now) {
            let fx = q.attempt_failed(&it, "embedder down".into(), now);
            sim.apply(fx);
            now = q.next_deadline().unwrap_or(now + 1);
        }
        assert_eq!(view(&q, "j2").status, JobStatus::Failed);
        let (reply, _) = q.handle(Request::BeginDelete(sim.delete_facts("a")), now);
        let Ok(Reply::DeletePlan(plan)) = reply else {
            panic!("the delete must be allowed: {reply:?}")
        };
        assert_eq!(plan.chunks, 2, "the indexed version's chunks");
        let (reply, fx) = q.handle(
            Request::FinishDelete {
                plan,
                result: Ok(()),
            },
            now,
        );
        assert!(matches!(reply, Ok(Reply::Deleted(_))));
        sim.apply(fx);
        assert!(!sim.documents.contains_key("a"));
    }

    /// Bug: the delete's index call is network I/O; an enqueue of the same
    /// document taken meanwhile was indexed, then the delete's completion
    /// removed its fresh record (orphaned vectors, an undeletable document).
    /// Replays that interleaving: the document must end up indexed, with a
    /// record that matches its vectors.
    #[test]
    fn an_enqueue_during_a_delete_is_indexed_after_it() {
        let t = TenantId::parse("acme").unwrap();
        let mut q = QueueCore::new(BOUNDS);
        let mut sim = Sim::default();
        sim.enqueue(&mut q, "j1", &[("a", 3)], 0);
        sim.drain(&mut q, 0);
        assert_eq!(sim.documents.get("a"), Some(&3));

        // DELETE a: planned, then the index delete is in flight...
        let (reply, fx) = q.handle(Request::BeginDelete(sim.delete_facts("a")), 10);
        assert!(fx.is_empty());
        let Ok(Reply::DeletePlan(plan)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(plan.ids(&t).len(), 3);
        // ...meanwhile a new version of a arrives, and the work loop runs.
        sim.enqueue(&mut q, "j2", &[("a", 2)], 11);
        let (it, step) = sim.plan(&mut q, 11).expect("work is due");
        assert_eq!(step, DocStep::Wait, "a cannot be indexed under its delete");
        assert_eq!(q.next_work(11), None);
        assert_eq!(q.next_deadline(), None, "no alarm spins while blocked");
        assert!(!q.still_current(&it));
        // The index delete returns.
        for n in 0..plan.chunks {
            sim.vectors.remove(&("a".to_owned(), n));
        }
        let (reply, fx) = q.handle(
            Request::FinishDelete {
                plan,
                result: Ok(()),
            },
            12,
        );
        assert!(matches!(reply, Ok(Reply::Deleted(_))), "{reply:?}");
        sim.apply(fx);
        assert_eq!(q.next_deadline(), Some(11), "the waiting job is due again");
        sim.drain(&mut q, 13);
        assert_eq!(view(&q, "j2").status, JobStatus::Done);
        assert_eq!(
            sim.documents.get("a"),
            Some(&2),
            "the new version is on record"
        );
        let want: BTreeSet<_> = (0..2).map(|n| ("a".to_owned(), n)).collect();
        assert_eq!(sim.vectors, want, "its vectors, and nothing else");
        // And it can be deleted again.
        let (reply, _) = q.handle(Request::BeginDelete(sim.delete_facts("a")), 14);
        assert!(matches!(
            reply,
            Ok(Reply::DeletePlan(DeletePlan { chunks: 2, .. }))
        ));
    }

    #[test]
    fn a_failed_index_delete_releases_the_document() {
        let mut q = QueueCore::new(BOUNDS);
        let facts = DeleteFacts {
            doc_id: "a".into(),
            stored_chunks: Some(1),
            pending_job: None,
        };
        let (reply, _) = q.handle(Request::BeginDelete(facts.clone()), 0);
        let Ok(Reply::DeletePlan(plan)) = reply else {
            panic!()
        };
        let (again, _) = q.handle(Request::BeginDelete(facts.clone()), 0);
        assert_eq!(
            again.unwrap_err().code,
            ErrorCode::Busy,
            "one delete at a time"
        );
        let down = ErrorReply::new(ErrorCode::Unavailable, "Vectorize: down");
        let (reply, fx) = q.handle(
            Request::FinishDelete {
                plan,
                result: Err(down.clone()),
            },
            1,
        );
        assert_eq!(reply, Err(down));
        assert!(fx.is_empty(), "the record stays: the delete can be retried");
        assert_eq!(q.index().version, 0);
        let (retry, _) = q.handle(Request::BeginDelete(facts), 2);
        assert!(retry.is_ok());
    }

    #[test]
    fn deletes_are_refused_while_a_job_holds_the_document_or_it_is_unknown() {
        let mut q = QueueCore::new(BOUNDS);
        let busy = DeleteFacts {
            doc_id: "a".into(),
            stored_chunks: Some(1),
            pending_job: Some("j1".into()),
        };
        let (reply, _) = q.handle(Request::BeginDelete(busy), 0);
        assert_eq!(reply.unwrap_err().code, ErrorCode::Busy);
        let unknown = DeleteFacts {
            doc_id: "a".into(),
            stored_chunks: None,
            pending_job: None,
        };
        let (reply, _) = q.handle(Request::BeginDelete(unknown), 0);
        assert_eq!(reply.unwrap_err().code, ErrorCode::NotFound);
        let plan = DeletePlan {
            doc_id: "zz".into(),
            chunks: 0,
        };
        let (reply, fx) = q.handle(
            Request::FinishDelete {
                plan,
                result: Ok(()),
            },
            0,
        );
        assert_eq!(reply.unwrap_err().code, ErrorCode::Internal);
        assert!(fx.is_empty());
    }

    #[test]
    fn the_backlog_is_bounded_in_jobs_and_bytes() {
        let bounds = Bounds {
            max_pending_jobs: 3,
            max_backlog_bytes: 250,
            max_chunks: None,
            max_attempts: MAX_ATTEMPTS,
        };
        let mut q = QueueCore::new(bounds);
        enqueue(&mut q, "j1", vec![doc("a", 1)], 0);
        enqueue(&mut q, "j2", vec![doc("b", 1)], 0);
        assert_eq!(q.backlog_bytes(), 200);
        let facts = |job: &str, bytes| EnqueueFacts {
            caller: None,
            job_id: job.into(),
            docs: vec![NewDoc {
                text_bytes: bytes,
                ..doc("c", 1)
            }],
            indexed_chunks: 0,
        };
        let (reply, fx) = q.handle(Request::Enqueue(facts("j3", 51)), 0);
        let e = reply.unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_deref()),
            (ErrorCode::QuotaExceeded, Some(BACKLOG_FULL))
        );
        assert!(fx.is_empty(), "a refusal writes nothing");
        assert!(q.handle(Request::Enqueue(facts("j3", 50)), 0).0.is_ok());
        let (reply, _) = q.handle(Request::Enqueue(facts("j4", 0)), 0);
        assert_eq!(reply.unwrap_err().reason.as_deref(), Some(BACKLOG_FULL));
        // Finishing a job frees its share.
        indexed(&mut q, &item("j1", 0), 1, 1);
        assert_eq!(q.backlog_bytes(), 150);
        assert!(q.handle(Request::Enqueue(facts("j4", 100)), 1).0.is_ok());
    }

    #[test]
    fn the_index_bound_counts_queued_work_and_replacements() {
        let bounds = Bounds {
            max_chunks: Some(10),
            ..BOUNDS
        };
        let mut q = QueueCore::new(bounds);
        let facts = |job: &str, chunks, replaces_chunks, indexed_chunks| EnqueueFacts {
            caller: None,
            job_id: job.into(),
            docs: vec![NewDoc {
                doc_id: "a".into(),
                text_bytes: 1,
                chunks,
                replaces_chunks,
            }],
            indexed_chunks,
        };
        assert!(q
            .handle(Request::Enqueue(facts("j1", 6, 0, 0)), 0)
            .0
            .is_ok());
        let (reply, _) = q.handle(Request::Enqueue(facts("j2", 5, 0, 0)), 0);
        let e = reply.unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_deref()),
            (ErrorCode::QuotaExceeded, Some(INDEX_FULL)),
            "6 queued + 5 > 10"
        );
        // A re-ingest replaces what it had: 8 indexed, 9 replacing 8.
        let mut q = QueueCore::new(bounds);
        assert!(q
            .handle(Request::Enqueue(facts("j1", 9, 8, 8)), 0)
            .0
            .is_ok());
        // Vectorize: no bound of ours.
        let mut q = QueueCore::new(Bounds {
            max_chunks: None,
            ..bounds
        });
        assert!(q
            .handle(Request::Enqueue(facts("j1", 500, 0, 0)), 0)
            .0
            .is_ok());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(7), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(1_000), BACKOFF_MAX_MS);
    }

    #[test]
    fn jobs_run_in_order_and_stale_reports_are_ignored() {
        let mut q = QueueCore::new(BOUNDS);
        enqueue(&mut q, "j1", vec![doc("a", 1)], 0);
        enqueue(&mut q, "j2", vec![doc("b", 1)], 0);
        assert_eq!(q.next_work(0), Some(item("j1", 0)));
        assert!(indexed(&mut q, &item("j2", 0), 1, 1).is_empty());
        assert!(indexed(&mut q, &item("j1", 5), 1, 1).is_empty());
        assert!(!q.still_current(&item("j2", 0)));
        indexed(&mut q, &item("j1", 0), 1, 1);
        assert!(
            indexed(&mut q, &item("j1", 0), 1, 2).is_empty(),
            "reported twice"
        );
        assert_eq!(q.next_work(2), Some(item("j2", 0)));
        assert_eq!(q.index().version, 1);
    }

    #[test]
    fn resumes_from_its_rows() {
        let mut q = QueueCore::new(BOUNDS);
        let mut sim = Sim::default();
        sim.enqueue(&mut q, "j0", &[("z", 1)], 0);
        sim.drain(&mut q, 0);
        sim.enqueue(&mut q, "j1", &[("a", 2), ("b", 1), ("c", 1)], 0);
        let fx = indexed(&mut q, &item("j1", 0), 2, 1);
        sim.apply(fx);
        let fx = q.attempt_failed(&item("j1", 1), "crash".into(), 2);
        sim.apply(fx);
        // Rows come back in acceptance order (the shell sorts by seq).
        let order = ["j0", "j1"];
        let rows: Vec<JobRecord> = order.iter().map(|j| sim.jobs[*j].clone()).collect();
        let json = serde_json::to_string(&rows).unwrap();
        let rows: Vec<JobRecord> = serde_json::from_str(&json).unwrap();
        let restored = QueueCore::restore(BOUNDS, sim.version, rows);
        let due = restored.next_deadline().unwrap();
        assert_eq!(restored.next_work(due), Some(item("j1", 1)));
        assert_eq!(restored.index().version, 2);
        assert_eq!(restored.recent().count(), 1);
        assert_eq!(restored.backlog_bytes(), 30);
    }

    #[test]
    fn recent_jobs_are_bounded_and_forgotten_rows_removed() {
        let mut q = QueueCore::new(BOUNDS);
        let mut forgotten = Vec::new();
        for i in 0..(RECENT_JOBS + 5) {
            let id = format!("j{i}");
            enqueue(&mut q, &id, vec![doc("a", 1)], 0);
            for e in indexed(&mut q, &item(&id, 0), 1, 0) {
                if let Effect::ForgetJob(j) = e {
                    forgotten.push(j);
                }
            }
        }
        assert_eq!(q.recent().count(), RECENT_JOBS);
        assert!(q.job("j0").is_none());
        assert_eq!(forgotten.len(), 5);
        assert_eq!(forgotten[0], "j0");
        assert!(q.job(&format!("j{}", RECENT_JOBS + 4)).is_some());
        let (reply, _) = q.handle(Request::GetJob("j0".into()), 0);
        assert_eq!(reply.unwrap_err().code, ErrorCode::NotFound);
    }
}
