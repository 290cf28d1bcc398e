//! The work loop's decisions, apart from its awaits: how long a run goes on
//! ([`Budget`], [`WorkRun`]), when the alarm must be set, and one document's
//! work as a sans-IO machine ([`DocRun`]).
//!
//! A [`DocRun`] is planned synchronously ([`DocRun::start`]), then asks the
//! shell for one port call at a time ([`Step`]) and is told how it went
//! ([`DocRun::advance`]). After every such await it re-checks with the core
//! that the work is still current, so a run overtaken by other requests
//! writes nothing more; it ends in a [`Finish`]: the effects to persist and
//! how the document went ([`Worked`]).

use super::core::{DocPlan, DocStep, Effects, QueueCore, WorkItem};
use super::facts::{doc_facts, JobDoc, Records};
use super::records::{chunk_ids, chunk_metadata};
use crate::chunking::{self, ChunkConfig};
use crate::ports::{PortError, VectorRecord};
use protocol::TenantId;

/// How much one run of the work loop may do before it re-arms and yields.
/// `Date.now()` only moves on I/O in Workers, and the embedded providers do
/// none, so time alone would not stop a run: the chunk bound keeps its CPU
/// time in check too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// How long it works (ms).
    pub time_ms: u64,
    /// Chunks it indexes.
    pub chunks: u32,
}

/// An enqueue's head start: small jobs are done before the answer; the rest
/// is left to the alarm.
pub const INLINE: Budget = Budget {
    time_ms: 2_000,
    chunks: 1_000,
};

/// One alarm run.
pub const ALARM: Budget = Budget {
    time_ms: 20_000,
    chunks: 10_000,
};

/// How one document went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worked {
    /// Indexed, with this many chunks.
    Indexed(u32),
    /// The attempt failed (recorded on the job), or its record could not be
    /// written.
    Failed,
    /// Not current any more, or waiting for a delete: nothing written.
    Paused,
}

/// One run of the work loop, within its [`Budget`].
#[derive(Debug, Clone)]
pub struct WorkRun {
    budget: Budget,
    started_ms: u64,
    chunks_done: u32,
}

impl WorkRun {
    /// A run that starts at `started_ms`.
    pub fn new(budget: Budget, started_ms: u64) -> Self {
        Self {
            budget,
            started_ms,
            chunks_done: 0,
        }
    }

    /// The next document to work on at `now_ms`, if the budget is not spent
    /// and work is due.
    pub fn next(&self, core: &QueueCore, now_ms: u64) -> Option<WorkItem> {
        let spent = now_ms.saturating_sub(self.started_ms) >= self.budget.time_ms
            || self.chunks_done >= self.budget.chunks;
        if spent {
            return None;
        }
        core.next_work(now_ms)
    }

    /// Counts how a document went; whether the run goes on. A failure or a
    /// pause ends it: the alarm (backoff, or the delete's completion) picks
    /// the work up again.
    pub fn worked(&mut self, worked: Worked) -> bool {
        match worked {
            Worked::Indexed(n) => {
                self.chunks_done = self.chunks_done.saturating_add(n);
                true
            }
            Worked::Failed | Worked::Paused => false,
        }
    }
}

/// When to set the alarm, at `now_ms`: the core's next deadline, never in
/// the past; `None` when no work can be done.
pub fn alarm_at(core: &QueueCore, now_ms: u64) -> Option<u64> {
    core.next_deadline().map(|at| at.max(now_ms))
}

/// Whether a request must (re)set the alarm: unfinished work must always
/// have one, even if setting it failed earlier, unless a work loop is
/// running (it sets the alarm when it ends).
pub fn must_rearm(core: &QueueCore, working: bool) -> bool {
    core.next_deadline().is_some() && !working
}

/// How one document's work ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// How it went, if `effects` are persisted.
    pub worked: Worked,
    /// What to persist, in order.
    pub effects: Effects,
}

impl Finish {
    fn paused() -> Self {
        Self {
            worked: Worked::Paused,
            effects: Vec::new(),
        }
    }

    /// The attempt on `item` failed with `error`: recorded on its job (a
    /// retry with backoff, or the job given up).
    fn failed(core: &mut QueueCore, item: &WorkItem, error: String, now_ms: u64) -> Self {
        Self {
            worked: Worked::Failed,
            effects: core.attempt_failed(item, error, now_ms),
        }
    }

    /// How the document went once its effects were (`persisted`) or could
    /// not be written: a document whose record was not written has failed.
    pub fn outcome(&self, persisted: bool) -> Worked {
        if persisted {
            self.worked
        } else {
            Worked::Failed
        }
    }
}

/// What the shell does next for a [`DocRun`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Embed [`DocRun::chunks`], then report [`Done::Embedded`].
    Embed,
    /// Upsert these records, then report [`Done::Upserted`].
    Upsert(Vec<VectorRecord>),
    /// Delete the stale chunks of an older, longer version, then report
    /// [`Done::StaleDeleted`].
    DeleteStale(Vec<String>),
    /// The document's work is over: persist and stop.
    Finish(Finish),
}

/// A port call of a [`Step`] that succeeded.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// The chunks' vectors, in order.
    Embedded(Vec<Vec<f32>>),
    /// The records are in the index.
    Upserted,
    /// The stale chunks are gone.
    StaleDeleted,
}

/// One document of one job, planned and on its way into the index.
#[derive(Debug, Clone)]
pub struct DocRun {
    tenant: TenantId,
    item: WorkItem,
    doc: JobDoc,
    chunks: Vec<String>,
    plan: DocPlan,
}

/// A document's `metadata.title`, when it is a string (what the documents
/// listing shows).
fn doc_title(metadata: &protocol::ingest::Metadata) -> Option<String> {
    match metadata.get("title") {
        Some(protocol::ingest::MetaValue::Str(title)) => Some(title.clone()),
        _ => None,
    }
}

impl DocRun {
    /// Plans the document of `item` (`doc`, as read from storage), cut into
    /// chunks. Stops at once, with what to persist, if the document cannot
    /// be read or measured (a failed attempt), or if the core says wait (a
    /// delete of it is in flight) or stale.
    pub fn start(
        core: &mut QueueCore,
        tenant: &TenantId,
        item: &WorkItem,
        doc: Result<JobDoc, String>,
        chunking: ChunkConfig,
        records: &impl Records,
        now_ms: u64,
    ) -> Result<Self, Finish> {
        let measured = doc.and_then(|doc| {
            let chunks = chunking::chunk(&doc.text, chunking);
            let facts = doc_facts(&doc, &chunks, records)?;
            Ok((doc, chunks, facts))
        });
        let (doc, chunks, facts) = match measured {
            Ok(measured) => measured,
            Err(e) => return Err(Finish::failed(core, item, e, now_ms)),
        };
        match core.plan_document(item, facts) {
            DocStep::Index(plan) => Ok(Self {
                tenant: tenant.clone(),
                item: item.clone(),
                doc,
                chunks,
                plan,
            }),
            DocStep::Wait | DocStep::Stale => Err(Finish::paused()),
        }
    }

    /// The first step.
    pub fn first(&self) -> Step {
        Step::Embed
    }

    /// The chunks' texts, to embed.
    pub fn chunks(&self) -> &[String] {
        &self.chunks
    }

    /// The plan taken before the awaits.
    pub fn plan(&self) -> &DocPlan {
        &self.plan
    }

    /// The next step after a port call returned `done` at `now_ms`. A port
    /// failure fails the attempt; after the embedding and after the upsert,
    /// work that is no longer current stops without writing more; the
    /// record goes through the core, which re-checks once more.
    pub fn advance(
        &self,
        core: &mut QueueCore,
        done: Result<Done, PortError>,
        now_ms: u64,
    ) -> Step {
        match done {
            Err(e) => Step::Finish(Finish::failed(core, &self.item, e.to_string(), now_ms)),
            Ok(Done::Embedded(_) | Done::Upserted) if !core.still_current(&self.item) => {
                Step::Finish(Finish::paused())
            }
            // An embedder that answers fewer (or more) vectors than chunks
            // would leave the document partly indexed but recorded whole.
            Ok(Done::Embedded(vectors)) if vectors.len() != self.chunks.len() => {
                Step::Finish(Finish::failed(
                    core,
                    &self.item,
                    format!(
                        "the embedder returned {} vectors for {} chunks",
                        vectors.len(),
                        self.chunks.len()
                    ),
                    now_ms,
                ))
            }
            Ok(Done::Embedded(vectors)) => Step::Upsert(self.records(vectors)),
            Ok(Done::Upserted) if !self.plan.stale.is_empty() => {
                Step::DeleteStale(self.plan.stale_ids(&self.tenant))
            }
            Ok(Done::Upserted | Done::StaleDeleted) => self.record(core, now_ms),
        }
    }

    /// The index records of the planned chunks: derived ids, the vectors in
    /// order, and each chunk's metadata (its number counted from 0).
    fn records(&self, vectors: Vec<Vec<f32>>) -> Vec<VectorRecord> {
        let doc = &self.doc;
        let ids = chunk_ids(
            &self.tenant,
            &doc.doc_id,
            self.plan.upsert.start,
            self.plan.upsert.end,
        );
        ids.into_iter()
            .zip(vectors)
            .zip(&self.chunks)
            .zip(0u32..)
            .map(|(((id, values), text), n)| VectorRecord {
                id,
                values,
                metadata: chunk_metadata(&self.tenant, &doc.doc_id, &doc.metadata, n, text),
            })
            .collect()
    }

    fn record(&self, core: &mut QueueCore, now_ms: u64) -> Step {
        Step::Finish(Finish {
            worked: Worked::Indexed(self.plan.chunks()),
            effects: core.document_indexed(
                &self.item,
                &self.plan,
                doc_title(&self.doc.metadata),
                now_ms,
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ingest::core::{
        Bounds, DeleteFacts, Effect, EnqueueFacts, NewDoc, Reply, Request, MAX_ATTEMPTS,
    };
    use crate::ingest::facts::memory::MemRecords;
    use crate::ingest::keys::vector_id;
    use protocol::ingest::{JobStatus, MetaValue, Metadata};

    const BOUNDS: Bounds = Bounds {
        max_pending_jobs: 10,
        max_backlog_bytes: 1_000_000,
        max_chunks: Some(1_000),
        max_attempts: MAX_ATTEMPTS,
    };
    /// Paragraphs of 900 characters are one chunk each.
    const CHUNK: ChunkConfig = ChunkConfig {
        max_chars: 1_000,
        overlap_chars: 150,
    };

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn item(job: &str, doc_index: u32) -> WorkItem {
        WorkItem {
            job_id: job.into(),
            doc_index,
        }
    }

    /// A text of `n` chunks.
    fn text(n: usize) -> String {
        (0..n)
            .map(|i| char::from(b'a' + i as u8).to_string().repeat(900))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn doc(id: &str, chunks: usize) -> JobDoc {
        JobDoc {
            doc_id: id.into(),
            text: text(chunks),
            metadata: Metadata::from([("source".to_owned(), MetaValue::Str("a.md".into()))]),
        }
    }

    /// A core with job `j1` of one document `doc_id`, due at 0.
    fn queue(bounds: Bounds, doc_id: &str) -> QueueCore {
        let mut core = QueueCore::new(bounds);
        let facts = EnqueueFacts {
            caller: None,
            job_id: "j1".into(),
            docs: vec![NewDoc {
                doc_id: doc_id.into(),
                text_bytes: 10,
                chunks: 1,
                replaces_chunks: 0,
            }],
            indexed_chunks: 0,
        };
        let (reply, _) = core.handle(Request::Enqueue(facts), 0);
        assert!(reply.is_ok());
        core
    }

    fn start(core: &mut QueueCore, doc: JobDoc, records: &MemRecords) -> DocRun {
        DocRun::start(core, &tenant(), &item("j1", 0), Ok(doc), CHUNK, records, 1).unwrap()
    }

    fn vectors(n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|i| vec![i as f32; 3]).collect()
    }

    #[test]
    fn a_document_is_embedded_upserted_and_recorded() {
        let mut core = queue(BOUNDS, "a");
        let run = start(&mut core, doc("a", 2), &MemRecords::default());
        assert_eq!(run.first(), Step::Embed);
        assert_eq!(run.chunks().len(), 2);
        let Step::Upsert(records) = run.advance(&mut core, Ok(Done::Embedded(vectors(2))), 2)
        else {
            panic!("the upsert comes next")
        };
        assert_eq!(records.len(), 2);
        for (n, r) in records.iter().enumerate() {
            assert_eq!(r.id, vector_id(&tenant(), "a", n as u32));
            assert_eq!(r.values, vec![n as f32; 3]);
            assert_eq!(r.metadata["chunk"], MetaValue::Int(n as i64));
            assert_eq!(r.metadata["docId"], MetaValue::Str("a".into()));
            assert_eq!(r.metadata["source"], MetaValue::Str("a.md".into()));
            assert_eq!(r.metadata["text"], MetaValue::Str(run.chunks()[n].clone()));
        }
        let Step::Finish(finish) = run.advance(&mut core, Ok(Done::Upserted), 3) else {
            panic!("nothing stale: the record comes next")
        };
        assert_eq!(finish.worked, Worked::Indexed(2));
        assert_eq!(
            finish.effects[0],
            Effect::RecordDocument {
                doc_id: "a".into(),
                chunks: 2,
                at_ms: 3,
                title: None,
            }
        );
        assert_eq!(core.job("j1").unwrap().status, JobStatus::Done);
    }

    #[test]
    fn the_record_carries_the_indexed_versions_title_when_it_is_a_string() {
        for (title, expected) in [
            (Some(MetaValue::Str("The Guide".into())), Some("The Guide")),
            (Some(MetaValue::Int(7)), None),
            (None, None),
        ] {
            let mut core = queue(BOUNDS, "a");
            let mut d = doc("a", 1);
            if let Some(title) = title {
                d.metadata.insert("title".into(), title);
            }
            let run = start(&mut core, d, &MemRecords::default());
            let _ = run.advance(&mut core, Ok(Done::Embedded(vectors(1))), 2);
            let Step::Finish(finish) = run.advance(&mut core, Ok(Done::Upserted), 3) else {
                panic!("the record comes next")
            };
            assert!(
                finish.effects.contains(&Effect::RecordDocument {
                    doc_id: "a".into(),
                    chunks: 1,
                    at_ms: 3,
                    title: expected.map(str::to_owned),
                }),
                "{:?}",
                finish.effects
            );
        }
    }

    #[test]
    fn an_embedding_of_the_wrong_length_fails_the_attempt() {
        for got in [1, 3] {
            let mut core = queue(BOUNDS, "a");
            let run = start(&mut core, doc("a", 2), &MemRecords::default());
            let Step::Finish(finish) = run.advance(&mut core, Ok(Done::Embedded(vectors(got))), 2)
            else {
                panic!("{got} vectors for 2 chunks must not be upserted")
            };
            assert_eq!(finish.worked, Worked::Failed);
            assert!(
                !finish
                    .effects
                    .iter()
                    .any(|e| matches!(e, Effect::RecordDocument { .. })),
                "nothing is recorded as indexed"
            );
        }
    }

    #[test]
    fn the_stale_chunks_of_a_longer_version_go_before_the_record() {
        let mut core = queue(BOUNDS, "a");
        let mut records = MemRecords::default();
        records.documents.insert("a".into(), 5);
        let run = start(&mut core, doc("a", 2), &records);
        assert_eq!(
            (run.plan().upsert.clone(), run.plan().stale.clone()),
            (0..2, 2..5)
        );
        let upsert = run.advance(&mut core, Ok(Done::Embedded(vectors(2))), 2);
        assert!(matches!(upsert, Step::Upsert(_)));
        assert_eq!(
            run.advance(&mut core, Ok(Done::Upserted), 3),
            Step::DeleteStale(chunk_ids(&tenant(), "a", 2, 5))
        );
        let Step::Finish(finish) = run.advance(&mut core, Ok(Done::StaleDeleted), 4) else {
            panic!("the record comes last")
        };
        assert_eq!(finish.worked, Worked::Indexed(2));
        assert!(finish.effects.contains(&Effect::RecordDocument {
            doc_id: "a".into(),
            chunks: 2,
            at_ms: 4,
            title: None,
        }));
    }

    #[test]
    fn a_port_failure_is_recorded_on_the_job() {
        let mut core = queue(BOUNDS, "a");
        let run = start(&mut core, doc("a", 1), &MemRecords::default());
        let down = PortError::Failed {
            service: "Workers AI",
            message: "down".into(),
        };
        let Step::Finish(finish) = run.advance(&mut core, Err(down), 5) else {
            panic!("a failure ends the run")
        };
        assert_eq!(finish.worked, Worked::Failed);
        let [Effect::SaveJob(job)] = &finish.effects[..] else {
            panic!("the job's row: {:?}", finish.effects)
        };
        assert_eq!(job.view.status, JobStatus::Retrying);
        assert_eq!(job.view.attempts, 1);
        assert_eq!(job.view.last_error.as_deref(), Some("Workers AI: down"));
    }

    #[test]
    fn a_document_that_cannot_be_read_fails_the_attempt() {
        let mut core = queue(BOUNDS, "a");
        let missing = Err("document 0 of j1 is missing from storage".to_owned());
        let records = MemRecords::default();
        let finish = DocRun::start(
            &mut core,
            &tenant(),
            &item("j1", 0),
            missing,
            CHUNK,
            &records,
            7,
        )
        .unwrap_err();
        assert_eq!(finish.worked, Worked::Failed);
        let job = core.job("j1").unwrap();
        assert_eq!(
            job.last_error.as_deref(),
            Some("document 0 of j1 is missing from storage")
        );
        assert_eq!(job.updated_at_ms, 7);
        // And one whose version on record cannot be read.
        let broken = MemRecords {
            broken: Some(crate::sql::SqlError::Exec("disk".into())),
            ..MemRecords::default()
        };
        let finish = DocRun::start(
            &mut core,
            &tenant(),
            &item("j1", 0),
            Ok(doc("a", 1)),
            CHUNK,
            &broken,
            8,
        )
        .unwrap_err();
        assert_eq!(finish.worked, Worked::Failed);
        assert_eq!(
            core.job("j1").unwrap().last_error.as_deref(),
            Some("storage: disk")
        );
    }

    #[test]
    fn a_document_under_a_delete_waits_and_a_stale_item_stops() {
        // The delete began before the job was accepted (the interleaving
        // of the core's tests): the document waits for it, writing nothing.
        let mut core = QueueCore::new(BOUNDS);
        let facts = DeleteFacts {
            doc_id: "a".into(),
            stored_chunks: Some(1),
            pending_job: None,
        };
        let (reply, _) = core.handle(Request::BeginDelete(facts), 0);
        assert!(matches!(reply, Ok(Reply::DeletePlan(_))));
        let enqueue = EnqueueFacts {
            caller: None,
            job_id: "j1".into(),
            docs: vec![NewDoc {
                doc_id: "a".into(),
                text_bytes: 10,
                chunks: 1,
                replaces_chunks: 1,
            }],
            indexed_chunks: 1,
        };
        assert!(core.handle(Request::Enqueue(enqueue), 0).0.is_ok());
        let records = MemRecords::default();
        let finish = DocRun::start(
            &mut core,
            &tenant(),
            &item("j1", 0),
            Ok(doc("a", 1)),
            CHUNK,
            &records,
            1,
        )
        .unwrap_err();
        assert_eq!(finish, Finish::paused());
        assert_eq!(core.next_deadline(), None, "blocked until the delete ends");
        // An item that is not the head's next document is stale.
        let mut core = queue(BOUNDS, "a");
        let finish = DocRun::start(
            &mut core,
            &tenant(),
            &item("j1", 1),
            Ok(doc("a", 1)),
            CHUNK,
            &records,
            1,
        )
        .unwrap_err();
        assert_eq!(finish, Finish::paused());
    }

    #[test]
    fn work_overtaken_during_an_await_writes_nothing_more() {
        // The job is given up while the run awaits (its only attempt).
        let bounds = Bounds {
            max_attempts: 1,
            ..BOUNDS
        };
        let mut core = queue(bounds, "a");
        let mut records = MemRecords::default();
        records.documents.insert("a".into(), 3);
        let run = start(&mut core, doc("a", 1), &records);
        core.attempt_failed(&item("j1", 0), "elsewhere".into(), 2);
        assert_eq!(
            run.advance(&mut core, Ok(Done::Embedded(vectors(1))), 3),
            Step::Finish(Finish::paused())
        );
        assert_eq!(
            run.advance(&mut core, Ok(Done::Upserted), 3),
            Step::Finish(Finish::paused())
        );
        // After the stale delete the core's own re-check refuses the record
        // (the run still counts its chunks against the budget).
        let Step::Finish(finish) = run.advance(&mut core, Ok(Done::StaleDeleted), 3) else {
            panic!()
        };
        assert_eq!(finish.worked, Worked::Indexed(1));
        assert!(finish.effects.is_empty());
    }

    #[test]
    fn a_finish_whose_effects_were_not_written_has_failed() {
        let finish = Finish {
            worked: Worked::Indexed(3),
            effects: Vec::new(),
        };
        assert_eq!(finish.outcome(true), Worked::Indexed(3));
        assert_eq!(finish.outcome(false), Worked::Failed);
        assert_eq!(Finish::paused().outcome(true), Worked::Paused);
    }

    #[test]
    fn a_run_stops_at_its_time_or_chunk_budget_or_at_a_failure() {
        let core = queue(BOUNDS, "a");
        let budget = Budget {
            time_ms: 100,
            chunks: 10,
        };
        let mut run = WorkRun::new(budget, 50);
        assert_eq!(run.next(&core, 50), Some(item("j1", 0)));
        assert_eq!(run.next(&core, 149), Some(item("j1", 0)));
        assert_eq!(run.next(&core, 150), None, "out of time");
        assert!(run.worked(Worked::Indexed(9)));
        assert_eq!(run.next(&core, 60), Some(item("j1", 0)));
        assert!(run.worked(Worked::Indexed(1)));
        assert_eq!(run.next(&core, 60), None, "out of chunks");
        let mut run = WorkRun::new(budget, 0);
        assert!(!run.worked(Worked::Failed));
        assert!(!run.worked(Worked::Paused));
        assert_eq!(run.next(&QueueCore::new(BOUNDS), 0), None, "nothing due");
    }

    #[test]
    fn the_alarm_is_the_next_deadline_never_in_the_past() {
        let mut core = queue(BOUNDS, "a");
        assert_eq!(alarm_at(&core, 0), Some(0));
        assert_eq!(alarm_at(&core, 500), Some(500));
        core.attempt_failed(&item("j1", 0), "down".into(), 10);
        assert_eq!(alarm_at(&core, 20), Some(1_010));
        assert!(must_rearm(&core, false));
        assert!(!must_rearm(&core, true), "the running loop sets it");
        let idle = QueueCore::new(BOUNDS);
        assert_eq!(alarm_at(&idle, 5), None);
        assert!(!must_rearm(&idle, false));
    }
}
