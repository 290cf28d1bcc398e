//! Rebuilding the queue from storage: the core from its rows, which stored
//! job documents are dead weight, and the one-time migration of the single
//! `queue_state` value of earlier versions into rows.
//!
//! Pure: the shell reads the rows and performs what is returned.

use super::core::{Bounds, Effect, Effects, IndexVersion, JobRecord, QueueCore};
use super::requests::internal;
use crate::sql::SqlError;
use protocol::ingest::JobView;
use protocol::{ErrorReply, TenantId};

/// The core over the stored rows: the `meta` row (index version, when it
/// changed), if any, and every job's JSON record in the order the jobs were
/// accepted. A record that does not decode is an error: the queue must not
/// start from a guess.
pub fn restore(
    bounds: Bounds,
    meta: Option<(u64, u64)>,
    job_rows: impl IntoIterator<Item = String>,
) -> Result<QueueCore, ErrorReply> {
    let index = meta
        .map(|(version, changed_at_ms)| IndexVersion {
            version,
            changed_at_ms,
        })
        .unwrap_or_default();
    let jobs = job_rows
        .into_iter()
        .map(|json| serde_json::from_str::<JobRecord>(&json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(format!("a stored job is unreadable: {e}")))?;
    Ok(QueueCore::restore(bounds, index, jobs))
}

/// The jobs among `stored` (the jobs that have rows in `job_docs`) whose
/// documents are dead weight: the job is no longer pending, so they would
/// only keep their documents undeletable (left by older versions, which
/// kept a failed job's documents).
pub fn dead_job_docs(core: &QueueCore, stored: impl IntoIterator<Item = String>) -> Vec<String> {
    stored
        .into_iter()
        .filter(|job| !core.pending().any(|p| p.job_id == *job))
        .collect()
}

/// The state of versions before jobs became rows: one JSON value.
#[derive(Debug, serde::Deserialize)]
pub struct LegacySaved {
    tenant: TenantId,
    queue: LegacyQueue,
}

#[derive(Debug, serde::Deserialize)]
struct LegacyQueue {
    pending: Vec<JobView>,
    recent: Vec<JobView>,
    index_version: u64,
    #[serde(default)]
    index_changed_at_ms: u64,
}

impl LegacySaved {
    /// Decodes the stored value.
    pub fn parse(json: &str) -> Result<Self, ErrorReply> {
        serde_json::from_str(json).map_err(|e| internal(format!("stored state is unreadable: {e}")))
    }

    /// The tenant it belonged to: the object's owner.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The rows it becomes: every job (the finished ones first, then the
    /// unfinished, the order the old queue kept them in) with the bytes of
    /// text its stored documents hold (`text_bytes`, read per job), then the
    /// index version.
    pub fn into_effects(
        self,
        mut text_bytes: impl FnMut(&str) -> Result<u64, SqlError>,
    ) -> Result<Effects, SqlError> {
        let q = self.queue;
        let mut effects = Vec::with_capacity(q.recent.len() + q.pending.len() + 1);
        for view in q.recent.into_iter().chain(q.pending) {
            let text_bytes = text_bytes(&view.job_id)?;
            effects.push(Effect::SaveJob(JobRecord {
                caller: None,
                view,
                text_bytes,
                net_chunks: 0,
            }));
        }
        effects.push(Effect::SaveIndexVersion(IndexVersion {
            version: q.index_version,
            changed_at_ms: q.index_changed_at_ms,
        }));
        Ok(effects)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ingest::core::MAX_ATTEMPTS;
    use protocol::ingest::JobStatus;
    use protocol::ErrorCode;

    const BOUNDS: Bounds = Bounds {
        max_pending_jobs: 10,
        max_backlog_bytes: 1_000,
        max_chunks: None,
        max_attempts: MAX_ATTEMPTS,
    };

    fn view(job: &str, status: JobStatus) -> JobView {
        JobView {
            job_id: job.into(),
            status,
            documents_total: 1,
            documents_done: 0,
            chunks_done: 0,
            attempts: 0,
            last_error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            next_attempt_at_ms: (status != JobStatus::Done).then_some(0),
        }
    }

    fn row(job: &str, status: JobStatus) -> String {
        serde_json::to_string(&JobRecord {
            caller: None,
            view: view(job, status),
            text_bytes: 7,
            net_chunks: 1,
        })
        .unwrap()
    }

    #[test]
    fn the_core_comes_back_from_its_rows() {
        let rows = [
            row("j0", JobStatus::Done),
            row("j1", JobStatus::Retrying),
            row("j2", JobStatus::Queued),
        ];
        let core = restore(BOUNDS, Some((4, 99)), rows).unwrap();
        assert_eq!(
            core.index(),
            IndexVersion {
                version: 4,
                changed_at_ms: 99
            }
        );
        let pending: Vec<_> = core.pending().map(|j| j.job_id.as_str()).collect();
        assert_eq!(pending, ["j1", "j2"], "in the order they were accepted");
        assert_eq!(core.recent().count(), 1);
        assert_eq!(core.backlog_bytes(), 14);
        let fresh = restore(BOUNDS, None, []).unwrap();
        assert_eq!(fresh.index(), IndexVersion::default());
    }

    #[test]
    fn an_unreadable_job_row_is_an_error_not_a_guess() {
        let rows = [row("j0", JobStatus::Done), "{\"view\":".to_owned()];
        let e = restore(BOUNDS, None, rows).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            e.message.starts_with("a stored job is unreadable: "),
            "{e:?}"
        );
    }

    #[test]
    fn only_the_documents_of_unfinished_jobs_are_kept() {
        let rows = [
            row("done", JobStatus::Done),
            row("failed", JobStatus::Failed),
            row("running", JobStatus::Running),
        ];
        let core = restore(BOUNDS, None, rows).unwrap();
        let stored = ["done", "failed", "running", "gone"].map(String::from);
        assert_eq!(dead_job_docs(&core, stored), ["done", "failed", "gone"]);
        assert!(dead_job_docs(&core, []).is_empty());
    }

    #[test]
    fn the_legacy_value_becomes_rows_in_the_old_order() {
        let json = serde_json::json!({
            "tenant": "acme",
            "queue": {
                "pending": [view("p1", JobStatus::Queued), view("p2", JobStatus::Retrying)],
                "recent": [view("r1", JobStatus::Done)],
                "index_version": 12,
            }
        })
        .to_string();
        let saved = LegacySaved::parse(&json).unwrap();
        assert_eq!(saved.tenant().as_str(), "acme");
        let mut asked = Vec::new();
        let effects = saved
            .into_effects(|job| {
                asked.push(job.to_owned());
                Ok(if job == "p1" { 30 } else { 0 })
            })
            .unwrap();
        assert_eq!(asked, ["r1", "p1", "p2"]);
        let jobs: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::SaveJob(r) => Some((r.view.job_id.as_str(), r.text_bytes, r.net_chunks)),
                _ => None,
            })
            .collect();
        assert_eq!(jobs, [("r1", 0, 0), ("p1", 30, 0), ("p2", 0, 0)]);
        assert_eq!(
            effects.last(),
            Some(&Effect::SaveIndexVersion(IndexVersion {
                version: 12,
                changed_at_ms: 0,
            })),
            "a value without the time of the last change"
        );
    }

    #[test]
    fn an_unreadable_legacy_value_or_read_is_an_error() {
        let e = LegacySaved::parse("{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.starts_with("stored state is unreadable: "));
        let json = r#"{"tenant":"acme","queue":{"pending":[],"recent":[],"index_version":1}}"#;
        let saved = LegacySaved::parse(json).unwrap();
        assert!(saved.into_effects(|_| Ok(0)).is_ok());
        let json = serde_json::json!({
            "tenant": "acme",
            "queue": {"pending": [view("p1", JobStatus::Queued)], "recent": [], "index_version": 1},
        })
        .to_string();
        let broken = SqlError::Exec("disk".into());
        let saved = LegacySaved::parse(&json).unwrap();
        assert_eq!(saved.into_effects(|_| Err(broken.clone())), Err(broken));
    }
}
