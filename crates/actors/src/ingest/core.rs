//! The ingest queue's pure core: which job and document to work on next, what
//! a success or a failure changes, when to wake up, and the index version.
//!
//! The documents themselves are not here: the shell stores them durably
//! before the job is accepted and reads the one the core asks for. The core
//! holds only the small bookkeeping that is persisted after every change.

use protocol::ingest::{JobAccepted, JobStatus, JobView};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// First retry delay; doubled per failed attempt.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// Finished jobs remembered for `GET /api/ingest/<jobId>`.
pub const RECENT_JOBS: usize = 200;
/// Failed attempts after which a job is given up (`failed`), so one document
/// that can never be indexed does not hold up the tenant's queue forever.
pub const MAX_ATTEMPTS: u32 = 10;
/// Unfinished jobs a tenant may have; more are refused until some finish.
pub const MAX_PENDING_JOBS: usize = 500;

/// One job's bookkeeping, kept in the shape clients see. While the job is
/// unfinished, `next_attempt_at_ms` is always set: not before then.
pub type Job = JobView;

/// What the core persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Unfinished jobs, oldest first; worked on in this order.
    pub pending: VecDeque<Job>,
    /// Finished jobs, newest last, at most [`RECENT_JOBS`].
    pub recent: VecDeque<Job>,
    /// Bumped by every indexed document and every delete.
    pub index_version: u64,
    /// Embedder failures still to inject (tests only).
    pub pending_faults: u32,
    /// When the index version last changed (ms since the Unix epoch).
    #[serde(default)]
    pub index_changed_at_ms: u64,
}

/// The next unit of work: one document of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The job.
    pub job_id: String,
    /// The document's position in the job.
    pub doc_index: u32,
}

/// What the shell must do after a call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Write [`QueueCore::state`] to storage.
    pub persist: bool,
    /// Make sure the alarm fires no later than this.
    pub wake_at: Option<u64>,
    /// The job finished: its stored documents can go.
    pub finished_job: Option<String>,
}

/// The queue.
#[derive(Debug, Default)]
pub struct QueueCore {
    state: QueueState,
}

/// Delay before attempt `attempts + 1`, after `attempts` failures.
pub fn backoff_ms(attempts: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(16);
    (BACKOFF_BASE_MS << exp).min(BACKOFF_MAX_MS)
}

impl QueueCore {
    /// A core over saved state (`None` for a new tenant).
    pub fn new(saved: Option<QueueState>) -> Self {
        Self {
            state: saved.unwrap_or_default(),
        }
    }

    /// The state to persist.
    pub fn state(&self) -> &QueueState {
        &self.state
    }

    /// The index version (part of every search cache key).
    pub fn index_version(&self) -> u64 {
        self.state.index_version
    }

    /// Whether another job can be accepted now.
    pub fn has_room(&self) -> bool {
        self.state.pending.len() < MAX_PENDING_JOBS
    }

    /// When the index version last changed.
    pub fn index_changed_at(&self) -> u64 {
        self.state.index_changed_at_ms
    }

    /// Accepts a job of `count` documents that the shell has stored.
    pub fn enqueue(&mut self, job_id: String, count: u32, now_ms: u64) -> (JobAccepted, Effects) {
        self.state.pending.push_back(Job {
            job_id: job_id.clone(),
            status: JobStatus::Queued,
            documents_total: count,
            documents_done: 0,
            chunks_done: 0,
            attempts: 0,
            last_error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            next_attempt_at_ms: Some(now_ms),
        });
        let accepted = JobAccepted {
            job_id,
            count,
            status: JobStatus::Queued,
        };
        let effects = Effects {
            persist: true,
            wake_at: self.next_deadline(),
            finished_job: None,
        };
        (accepted, effects)
    }

    /// A job by id, pending or recent.
    pub fn job(&self, job_id: &str) -> Option<&Job> {
        self.state
            .pending
            .iter()
            .chain(self.state.recent.iter())
            .find(|j| j.job_id == job_id)
    }

    /// The work due at `now_ms`: the next document of the oldest unfinished
    /// job, if that job is not waiting out a backoff. Jobs run in order, so a
    /// re-ingest in a later job always wins over an earlier one.
    pub fn next_work(&self, now_ms: u64) -> Option<WorkItem> {
        let job = self.state.pending.front()?;
        (job.next_attempt_at_ms.unwrap_or(0) <= now_ms).then(|| WorkItem {
            job_id: job.job_id.clone(),
            doc_index: job.documents_done,
        })
    }

    /// When the alarm must next fire, if any work remains.
    pub fn next_deadline(&self) -> Option<u64> {
        self.state
            .pending
            .front()
            .map(|j| j.next_attempt_at_ms.unwrap_or(0))
    }

    /// A document of `item` was indexed with `chunks` chunks.
    pub fn document_done(&mut self, item: &WorkItem, chunks: u32, now_ms: u64) -> Effects {
        let Some(job) = self.state.pending.front_mut() else {
            return Effects::default();
        };
        if job.job_id != item.job_id || job.documents_done != item.doc_index {
            // Stale report (the work was already recorded): ignore it.
            return Effects::default();
        }
        job.documents_done += 1;
        job.chunks_done += chunks;
        job.updated_at_ms = now_ms;
        job.status = JobStatus::Running;
        self.state.index_version += 1;
        self.state.index_changed_at_ms = now_ms;
        let mut finished_job = None;
        if job.documents_done >= job.documents_total {
            job.status = JobStatus::Done;
            job.next_attempt_at_ms = None;
            if let Some(done) = self.state.pending.pop_front() {
                finished_job = Some(done.job_id.clone());
                self.state.recent.push_back(done);
                while self.state.recent.len() > RECENT_JOBS {
                    self.state.recent.pop_front();
                }
            }
        }
        Effects {
            persist: true,
            wake_at: self.next_deadline(),
            finished_job,
        }
    }

    /// Working on `item` failed with `error`; schedule a retry with backoff.
    pub fn attempt_failed(&mut self, item: &WorkItem, error: String, now_ms: u64) -> Effects {
        let Some(job) = self.state.pending.front_mut() else {
            return Effects::default();
        };
        if job.job_id != item.job_id {
            return Effects::default();
        }
        job.attempts += 1;
        job.status = JobStatus::Retrying;
        job.last_error = Some(error);
        job.updated_at_ms = now_ms;
        job.next_attempt_at_ms = Some(now_ms + backoff_ms(job.attempts));
        if job.attempts >= MAX_ATTEMPTS {
            // Given up: the job moves to the finished ones as `failed`. Its
            // documents are not deleted (`finished_job` stays `None`).
            job.status = JobStatus::Failed;
            job.next_attempt_at_ms = None;
            if let Some(failed) = self.state.pending.pop_front() {
                self.state.recent.push_back(failed);
                while self.state.recent.len() > RECENT_JOBS {
                    self.state.recent.pop_front();
                }
            }
        }
        Effects {
            persist: true,
            wake_at: self.next_deadline(),
            finished_job: None,
        }
    }

    /// A document was deleted from the index.
    pub fn document_deleted(&mut self, now_ms: u64) -> Effects {
        self.state.index_version += 1;
        self.state.index_changed_at_ms = now_ms;
        Effects {
            persist: true,
            ..Effects::default()
        }
    }

    /// Arms `n` injected embedder failures (the shell checks this is allowed).
    pub fn inject_faults(&mut self, n: u32) -> Effects {
        self.state.pending_faults = n;
        Effects {
            persist: true,
            ..Effects::default()
        }
    }

    /// Consumes one injected failure, if any is armed.
    pub fn take_fault(&mut self) -> bool {
        if self.state.pending_faults > 0 {
            self.state.pending_faults -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(job: &str, doc: u32) -> WorkItem {
        WorkItem {
            job_id: job.into(),
            doc_index: doc,
        }
    }

    #[test]
    fn a_job_runs_document_by_document() {
        let mut q = QueueCore::new(None);
        let (accepted, fx) = q.enqueue("j1".into(), 2, 100);
        assert_eq!(accepted.status, JobStatus::Queued);
        assert_eq!((fx.persist, fx.wake_at), (true, Some(100)));
        assert_eq!(q.next_work(99), None, "not due yet");
        assert_eq!(q.next_work(100), Some(item("j1", 0)));
        let fx = q.document_done(&item("j1", 0), 3, 110);
        assert_eq!(fx.finished_job, None);
        assert_eq!(q.job("j1").unwrap().status, JobStatus::Running);
        assert_eq!(q.next_work(110), Some(item("j1", 1)));
        let fx = q.document_done(&item("j1", 1), 2, 120);
        assert_eq!(fx.finished_job.as_deref(), Some("j1"));
        assert_eq!(fx.wake_at, None, "nothing left");
        let job = q.job("j1").unwrap();
        assert_eq!(
            (job.status, job.documents_done, job.chunks_done),
            (JobStatus::Done, 2, 5)
        );
        assert_eq!(job.next_attempt_at_ms, None);
        assert_eq!(q.index_version(), 2);
        assert_eq!(q.next_work(1_000), None);
    }

    #[test]
    fn failures_back_off_and_the_job_completes_later() {
        let mut q = QueueCore::new(None);
        q.enqueue("j1".into(), 1, 0);
        let fx = q.attempt_failed(&item("j1", 0), "embedder down".into(), 10);
        assert_eq!(fx.wake_at, Some(10 + BACKOFF_BASE_MS));
        let job = q.job("j1").unwrap();
        assert_eq!((job.status, job.attempts), (JobStatus::Retrying, 1));
        assert_eq!(job.last_error.as_deref(), Some("embedder down"));
        assert_eq!(q.next_work(10 + BACKOFF_BASE_MS - 1), None);
        q.attempt_failed(&item("j1", 0), "again".into(), 2_000);
        assert_eq!(q.next_deadline(), Some(2_000 + 2 * BACKOFF_BASE_MS));
        // Recovers: same document, nothing lost, nothing doubled.
        let due = q.next_deadline().unwrap();
        assert_eq!(q.next_work(due), Some(item("j1", 0)));
        q.document_done(&item("j1", 0), 4, due);
        let job = q.job("j1").unwrap();
        assert_eq!(
            (job.status, job.chunks_done, job.attempts),
            (JobStatus::Done, 4, 2)
        );
    }

    #[test]
    fn a_job_that_keeps_failing_is_given_up_and_the_queue_moves_on() {
        let mut q = QueueCore::new(None);
        q.enqueue("bad".into(), 1, 0);
        q.enqueue("good".into(), 1, 0);
        let mut now = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            assert_eq!(q.next_work(now), Some(item("bad", 0)), "attempt {attempt}");
            q.attempt_failed(&item("bad", 0), format!("error {attempt}"), now);
            now = q.next_deadline().unwrap_or(now);
        }
        let bad = q.job("bad").unwrap();
        assert_eq!(
            (bad.status, bad.attempts),
            (JobStatus::Failed, MAX_ATTEMPTS)
        );
        assert_eq!(bad.last_error.as_deref(), Some("error 10"));
        assert_eq!(bad.next_attempt_at_ms, None);
        assert_eq!(q.next_work(now), Some(item("good", 0)));
    }

    #[test]
    fn the_queue_has_a_bound() {
        let mut q = QueueCore::new(None);
        for i in 0..MAX_PENDING_JOBS {
            assert!(q.has_room());
            q.enqueue(format!("j{i}"), 1, 0);
        }
        assert!(!q.has_room());
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
        let mut q = QueueCore::new(None);
        q.enqueue("j1".into(), 1, 0);
        q.enqueue("j2".into(), 1, 0);
        assert_eq!(q.next_work(0), Some(item("j1", 0)));
        assert_eq!(q.document_done(&item("j2", 0), 1, 1), Effects::default());
        assert_eq!(q.document_done(&item("j1", 5), 1, 1), Effects::default());
        q.document_done(&item("j1", 0), 1, 1);
        assert_eq!(
            q.document_done(&item("j1", 0), 1, 2),
            Effects::default(),
            "reported twice"
        );
        assert_eq!(q.next_work(2), Some(item("j2", 0)));
        assert_eq!(q.index_version(), 1);
    }

    #[test]
    fn resumes_from_saved_state() {
        let mut q = QueueCore::new(None);
        q.enqueue("j1".into(), 3, 0);
        q.document_done(&item("j1", 0), 2, 1);
        q.attempt_failed(&item("j1", 1), "crash".into(), 2);
        let saved = q.state().clone();
        let json = serde_json::to_string(&saved).unwrap();
        let restored = QueueCore::new(Some(serde_json::from_str(&json).unwrap()));
        let due = restored.next_deadline().unwrap();
        assert_eq!(restored.next_work(due), Some(item("j1", 1)));
        assert_eq!(restored.index_version(), 1);
    }

    #[test]
    fn faults_are_consumed_one_by_one() {
        let mut q = QueueCore::new(None);
        q.inject_faults(2);
        assert!(q.take_fault());
        assert!(q.take_fault());
        assert!(!q.take_fault());
    }

    #[test]
    fn recent_jobs_are_bounded() {
        let mut q = QueueCore::new(None);
        for i in 0..(RECENT_JOBS + 5) {
            let id = format!("j{i}");
            q.enqueue(id.clone(), 1, 0);
            q.document_done(&item(&id, 0), 1, 0);
        }
        assert_eq!(q.state().recent.len(), RECENT_JOBS);
        assert!(q.job("j0").is_none());
        assert!(q.job(&format!("j{}", RECENT_JOBS + 4)).is_some());
        let before = q.index_version();
        assert!(q.document_deleted(7).persist);
        assert_eq!(q.index_changed_at(), 7);
        assert_eq!(q.index_version(), before + 1);
    }
}
