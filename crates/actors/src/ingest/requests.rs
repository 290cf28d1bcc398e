//! The requests around the core, apart from their I/O: what an enqueue, a
//! job lookup, a delete, an inspection and an injection of faults gather,
//! ask the core, and answer, and the refusals of the shell's own.
//!
//! Pure: storage is read through [`Records`]; the shell performs the
//! returned effects, the one await of a delete, and the encoding.

use super::core::{DeletePlan, Effects, EnqueueFacts, QueueCore, Reply, Request};
use super::facts::{delete_facts, enqueue_facts, Records};
use crate::providers::Settings;
use protocol::ingest::{Enqueue, IngestResponse, IngestSnapshot, JobAccepted, JobStatus, JobView};
use protocol::{ErrorCode, ErrorReply};

/// Finished jobs an inspection shows.
pub const SNAPSHOT_RECENT_JOBS: usize = 20;

pub use crate::error::internal;

/// The client's mistake: 400.
pub fn invalid(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())
}

/// The core answered with a reply of another request.
fn unexpected(reply: &Reply) -> ErrorReply {
    internal(format!("the queue core answered {reply:?} out of turn"))
}

/// Accepts `enqueue` as job `job_id` at `now_ms`: validates it, measures it
/// ([`enqueue_facts`]) and has the core admit it. The effects store the
/// documents, then the job's row.
pub fn accept(
    core: &mut QueueCore,
    enqueue: &Enqueue,
    job_id: String,
    settings: &Settings,
    records: &impl Records,
    now_ms: u64,
) -> Result<(JobAccepted, Effects), ErrorReply> {
    enqueue.validate().map_err(invalid)?;
    let facts = EnqueueFacts {
        caller: enqueue.caller.clone(),
        ..enqueue_facts(job_id, &enqueue.documents, settings, records)?
    };
    let (reply, effects) = core.handle(Request::Enqueue(facts), now_ms);
    match reply? {
        Reply::Accepted(accepted) => Ok((accepted, effects)),
        other => Err(unexpected(&other)),
    }
}

/// The answer to an accepted enqueue once its head start is over: `done` if
/// the job (`job`, as the core now has it) finished, else `queued`.
pub fn enqueue_answer(accepted: JobAccepted, job: Option<&JobView>) -> IngestResponse {
    let status = job
        .map(|j| j.status)
        .filter(|s| *s == JobStatus::Done)
        .unwrap_or(JobStatus::Queued);
    IngestResponse::Accepted(JobAccepted { status, ..accepted })
}

/// `reply` as it may be given while the search replicas have not taken
/// every change of the index yet: a job is not reported `done` (an enqueue
/// answers `queued`, a job view `running`) until every search would see
/// its documents; anything else is unchanged.
pub fn unreplicated(reply: IngestResponse) -> IngestResponse {
    match reply {
        IngestResponse::Job(job) if job.status == JobStatus::Done => IngestResponse::Job(JobView {
            status: JobStatus::Running,
            ..job
        }),
        IngestResponse::Accepted(accepted) if accepted.status == JobStatus::Done => {
            IngestResponse::Accepted(JobAccepted {
                status: JobStatus::Queued,
                ..accepted
            })
        }
        other => other,
    }
}

/// A job's view.
pub fn get_job(
    core: &mut QueueCore,
    job_id: String,
    now_ms: u64,
) -> Result<IngestResponse, ErrorReply> {
    let (reply, _) = core.handle(Request::GetJob(job_id), now_ms);
    match reply? {
        Reply::Job(job) => Ok(IngestResponse::Job(job)),
        other => Err(unexpected(&other)),
    }
}

/// The first half of a delete of `doc_id`: checks the id, reads what is
/// indexed and which unfinished job holds the document, and has the core
/// plan it. While the plan is out the core holds the document.
pub fn begin_delete(
    core: &mut QueueCore,
    doc_id: &str,
    records: &impl Records,
    now_ms: u64,
) -> Result<DeletePlan, ErrorReply> {
    if !protocol::ingest::valid_doc_id(doc_id) {
        return Err(invalid(
            "the document id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    let facts = delete_facts(doc_id, records)?;
    let (reply, _) = core.handle(Request::BeginDelete(facts), now_ms);
    match reply? {
        Reply::DeletePlan(plan) => Ok(plan),
        other => Err(unexpected(&other)),
    }
}

/// The second half, once the index delete of `plan` returned `result`: the
/// answer and the effects (the record and the index version, if it went
/// through). The shell persists the effects before it answers.
pub fn finish_delete(
    core: &mut QueueCore,
    plan: DeletePlan,
    result: Result<(), ErrorReply>,
    now_ms: u64,
) -> (Result<IngestResponse, ErrorReply>, Effects) {
    let (reply, effects) = core.handle(Request::FinishDelete { plan, result }, now_ms);
    let answer = reply.and_then(|reply| match reply {
        Reply::Deleted(deleted) => Ok(IngestResponse::Deleted(deleted)),
        other => Err(unexpected(&other)),
    });
    (answer, effects)
}

/// What storage counts for an inspection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Indexed documents.
    pub documents: u64,
    /// Their chunks.
    pub chunks: u64,
    /// Embedder failures still armed.
    pub pending_faults: u32,
}

/// An operator's view of the queue.
pub fn snapshot(core: &QueueCore, settings: &Settings, counts: Counts) -> IngestSnapshot {
    IngestSnapshot {
        index_version: core.index().version,
        documents: counts.documents,
        chunks: counts.chunks,
        pending_jobs: core.pending().cloned().collect(),
        recent_jobs: core.recent().take(SNAPSHOT_RECENT_JOBS).cloned().collect(),
        embedder: settings.embedder_name().to_owned(),
        vector_backend: if settings.vectorize {
            "vectorize"
        } else {
            "embedded-sqlite"
        }
        .to_owned(),
        pending_faults: counts.pending_faults,
        // Filled in by the shell, which holds the replication state.
        replication: Default::default(),
    }
}

/// Whether this deployment takes injected faults (`FAULT_INJECTION`).
pub fn allow_fault_injection(settings: &Settings) -> Result<(), ErrorReply> {
    if settings.fault_injection {
        Ok(())
    } else {
        Err(invalid("fault injection is not enabled in this deployment"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ingest::core::{Bounds, Effect, WorkItem, BACKLOG_FULL, MAX_ATTEMPTS};
    use crate::ingest::facts::memory::MemRecords;
    use crate::providers;
    use crate::sql::SqlError;
    use protocol::ingest::{Document, DocumentDeleted, Metadata};

    const BOUNDS: Bounds = Bounds {
        max_pending_jobs: 2,
        max_backlog_bytes: 1_000_000,
        max_chunks: Some(1_000),
        max_attempts: MAX_ATTEMPTS,
    };

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        providers::settings(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    }

    fn enqueue(ids: &[&str]) -> Enqueue {
        Enqueue {
            caller: None,
            documents: ids
                .iter()
                .map(|id| Document {
                    id: (*id).into(),
                    text: format!("the text of {id}"),
                    metadata: Metadata::new(),
                })
                .collect(),
        }
    }

    fn accepted(core: &mut QueueCore, job: &str, ids: &[&str]) -> JobAccepted {
        let records = MemRecords::default();
        accept(core, &enqueue(ids), job.into(), &settings(&[]), &records, 0)
            .unwrap()
            .0
    }

    #[test]
    fn an_enqueue_is_validated_measured_and_admitted() {
        let mut core = QueueCore::new(BOUNDS);
        let records = MemRecords::default();
        let (accepted, effects) = accept(
            &mut core,
            &enqueue(&["a", "b"]),
            "j1".into(),
            &settings(&[]),
            &records,
            5,
        )
        .unwrap();
        assert_eq!(
            accepted,
            JobAccepted {
                job_id: "j1".into(),
                count: 2,
                status: JobStatus::Queued,
            }
        );
        assert_eq!(effects[0], Effect::StoreJobDocs("j1".into()));
        let Effect::SaveJob(row) = &effects[1] else {
            panic!("{effects:?}")
        };
        assert_eq!(row.view.created_at_ms, 5);
        assert_eq!(row.text_bytes, 2 * "the text of a".len() as u64);
        assert_eq!(row.net_chunks, 2, "measured: one chunk each");
    }

    #[test]
    fn an_invalid_or_refused_enqueue_writes_nothing() {
        let mut core = QueueCore::new(BOUNDS);
        let records = MemRecords::default();
        let s = settings(&[]);
        let e = accept(&mut core, &enqueue(&[]), "j0".into(), &s, &records, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(records.reads.get(), 0, "validated before anything is read");
        let e = accept(
            &mut core,
            &enqueue(&["a", "a"]),
            "j0".into(),
            &s,
            &records,
            0,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        accepted(&mut core, "j1", &["a"]);
        accepted(&mut core, "j2", &["b"]);
        let e = accept(&mut core, &enqueue(&["c"]), "j3".into(), &s, &records, 0).unwrap_err();
        assert_eq!(e.reason.as_deref(), Some(BACKLOG_FULL));
        let broken = MemRecords {
            broken: Some(SqlError::Exec("disk".into())),
            ..MemRecords::default()
        };
        let mut core = QueueCore::new(BOUNDS);
        let e = accept(&mut core, &enqueue(&["c"]), "j3".into(), &s, &broken, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(core.pending().count(), 0);
    }

    #[test]
    fn an_enqueue_answers_done_only_if_its_job_finished() {
        let accepted = JobAccepted {
            job_id: "j1".into(),
            count: 1,
            status: JobStatus::Queued,
        };
        let mut job = JobView {
            job_id: "j1".into(),
            status: JobStatus::Running,
            documents_total: 1,
            documents_done: 0,
            chunks_done: 0,
            attempts: 0,
            last_error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            next_attempt_at_ms: Some(0),
        };
        let status = |job: Option<&JobView>| match enqueue_answer(accepted.clone(), job) {
            IngestResponse::Accepted(a) => a.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(None), JobStatus::Queued);
        assert_eq!(status(Some(&job)), JobStatus::Queued);
        job.status = JobStatus::Failed;
        assert_eq!(status(Some(&job)), JobStatus::Queued);
        job.status = JobStatus::Done;
        assert_eq!(status(Some(&job)), JobStatus::Done);
    }

    #[test]
    fn a_job_is_looked_up_or_not_found() {
        let mut core = QueueCore::new(BOUNDS);
        accepted(&mut core, "j1", &["a"]);
        let IngestResponse::Job(job) = get_job(&mut core, "j1".into(), 0).unwrap() else {
            panic!()
        };
        assert_eq!(job.job_id, "j1");
        let e = get_job(&mut core, "nope".into(), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    #[test]
    fn a_delete_checks_the_id_then_asks_the_core() {
        let mut core = QueueCore::new(BOUNDS);
        let mut records = MemRecords::default();
        let e = begin_delete(&mut core, "no/slash", &records, 0).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::InvalidRequest,
                "the document id must be 1 to 128 characters of A-Z a-z 0-9 . _ -"
            )
        );
        assert_eq!(records.reads.get(), 0);
        let e = begin_delete(&mut core, "a", &records, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        records.documents.insert("a".into(), 4);
        records.job_docs.insert("b".into(), "j1".into());
        records.documents.insert("b".into(), 1);
        let e = begin_delete(&mut core, "b", &records, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy, "an unfinished job holds it");
        let plan = begin_delete(&mut core, "a", &records, 0).unwrap();
        assert_eq!(plan.chunks, 4);
        let e = begin_delete(&mut core, "a", &records, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy, "one delete at a time");
        let (answer, effects) = finish_delete(&mut core, plan, Ok(()), 9);
        assert_eq!(
            answer,
            Ok(IngestResponse::Deleted(DocumentDeleted {
                doc_id: "a".into(),
                chunks_removed: 4,
            }))
        );
        assert_eq!(effects[0], Effect::RemoveDocument("a".into()));
        assert_eq!(core.index().version, 1);
    }

    #[test]
    fn a_failed_index_delete_is_the_answer_and_writes_nothing() {
        let mut core = QueueCore::new(BOUNDS);
        let mut records = MemRecords::default();
        records.documents.insert("a".into(), 2);
        let plan = begin_delete(&mut core, "a", &records, 0).unwrap();
        let down = ErrorReply::new(ErrorCode::Unavailable, "Vectorize: down");
        let (answer, effects) = finish_delete(&mut core, plan, Err(down.clone()), 1);
        assert_eq!(answer, Err(down));
        assert!(effects.is_empty());
        assert!(
            begin_delete(&mut core, "a", &records, 2).is_ok(),
            "released"
        );
    }

    #[test]
    fn a_snapshot_shows_the_queue_and_the_backends() {
        let mut core = QueueCore::new(Bounds {
            max_pending_jobs: 100,
            ..BOUNDS
        });
        for i in 0..25 {
            let job = format!("done-{i}");
            accepted(&mut core, &job, &["a"]);
            let plan = crate::ingest::core::DocPlan {
                doc_id: "a".into(),
                upsert: 0..1,
                stale: 1..1,
            };
            let item = WorkItem {
                job_id: job,
                doc_index: 0,
            };
            core.document_indexed(&item, &plan, None, 1);
        }
        accepted(&mut core, "waiting", &["b"]);
        let counts = Counts {
            documents: 3,
            chunks: 12,
            pending_faults: 2,
        };
        let snap = snapshot(&core, &settings(&[]), counts);
        assert_eq!(snap.index_version, 25);
        assert_eq!(
            (snap.documents, snap.chunks, snap.pending_faults),
            (3, 12, 2)
        );
        assert_eq!(snap.pending_jobs.len(), 1);
        assert_eq!(snap.recent_jobs.len(), SNAPSHOT_RECENT_JOBS);
        assert_eq!(snap.recent_jobs[0].job_id, "done-24", "newest first");
        assert_eq!(snap.embedder, crate::embedding::HASHED_MODEL);
        assert_eq!(snap.vector_backend, "embedded-sqlite");
        let cloud = settings(&[
            ("AI_PROVIDER", "workers-ai"),
            ("VECTOR_BACKEND", "vectorize"),
            ("EMBEDDING_MODEL", "@cf/some/model"),
        ]);
        let snap = snapshot(&core, &cloud, counts);
        assert_eq!(snap.embedder, "@cf/some/model");
        assert_eq!(snap.vector_backend, "vectorize");
    }

    #[test]
    fn faults_are_injected_only_where_the_deployment_allows() {
        let e = allow_fault_injection(&settings(&[])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::InvalidRequest,
                "fault injection is not enabled in this deployment"
            )
        );
        assert!(allow_fault_injection(&settings(&[("FAULT_INJECTION", "enabled")])).is_ok());
    }

    #[test]
    fn a_job_is_not_reported_done_before_the_replicas_hold_it() {
        let accepted = JobAccepted {
            job_id: "j".into(),
            count: 1,
            status: JobStatus::Done,
        };
        let queued = JobAccepted {
            status: JobStatus::Queued,
            ..accepted.clone()
        };
        assert_eq!(
            unreplicated(IngestResponse::Accepted(accepted)),
            IngestResponse::Accepted(queued.clone())
        );
        assert_eq!(
            unreplicated(IngestResponse::Accepted(queued.clone())),
            IngestResponse::Accepted(queued)
        );
        let job = |status| JobView {
            job_id: "j".into(),
            status,
            documents_total: 2,
            documents_done: 2,
            chunks_done: 3,
            attempts: 0,
            last_error: None,
            created_at_ms: 1,
            updated_at_ms: 2,
            next_attempt_at_ms: None,
        };
        assert_eq!(
            unreplicated(IngestResponse::Job(job(JobStatus::Done))),
            IngestResponse::Job(job(JobStatus::Running))
        );
        for other in [JobStatus::Failed, JobStatus::Retrying, JobStatus::Running] {
            assert_eq!(
                unreplicated(IngestResponse::Job(job(other))),
                IngestResponse::Job(job(other))
            );
        }
    }
}
