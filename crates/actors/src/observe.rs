//! Structured logs of the actors' significant events: one JSON object per
//! line (readable in `wrangler tail` and Workers Logs), always with
//! `"event"`, `"actor"` and `"tenant"`, then the event's own fields. The
//! fields are listed in `docs/metrics.md`; none ever holds a secret, a key
//! or a document's text.

use serde_json::{Map, Value};

/// The line for `event` of `actor` in `tenant`, with `fields` (an object;
/// anything else is put under `"detail"`).
pub fn event_line(event: &str, actor: &str, tenant: Option<&str>, fields: Value) -> String {
    let mut line = Map::new();
    line.insert("event".into(), Value::from(event));
    line.insert("actor".into(), Value::from(actor));
    line.insert("tenant".into(), tenant.map_or(Value::Null, Value::from));
    match fields {
        Value::Object(more) => {
            for (k, v) in more {
                line.entry(k).or_insert(v);
            }
        }
        Value::Null => {}
        other => {
            line.insert("detail".into(), other);
        }
    }
    Value::Object(line).to_string()
}

/// Logs [`event_line`] (`console.log` in Workers).
pub fn event(event: &str, actor: &str, tenant: Option<&str>, fields: Value) {
    let line = event_line(event, actor, tenant, fields);
    worker::console_log!("{line}");
}

/// The log events of an ingest queue's effects: a job that ended (`done`,
/// `failed`) or will be retried (`retrying`), with its counts and error.
pub fn job_events(effects: &[crate::ingest::core::Effect]) -> Vec<(&'static str, Value)> {
    use protocol::ingest::JobStatus;
    effects
        .iter()
        .filter_map(|effect| match effect {
            crate::ingest::core::Effect::SaveJob(job) => {
                let event = match job.view.status {
                    JobStatus::Done => "job_done",
                    JobStatus::Failed => "job_failed",
                    JobStatus::Retrying => "job_retrying",
                    JobStatus::Queued | JobStatus::Running => return None,
                };
                let v = &job.view;
                Some((
                    event,
                    serde_json::json!({
                        "jobId": v.job_id,
                        "documentsTotal": v.documents_total,
                        "documentsDone": v.documents_done,
                        "chunksDone": v.chunks_done,
                        "attempts": v.attempts,
                        "lastError": v.last_error,
                        "nextAttemptAtMs": v.next_attempt_at_ms,
                        "durationMs": v.updated_at_ms.saturating_sub(v.created_at_ms),
                    }),
                ))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ended_and_retried_jobs_are_events_other_effects_are_not() {
        use crate::ingest::core::{Effect, JobRecord};
        use protocol::ingest::{JobStatus, JobView};
        let job = |status| {
            Effect::SaveJob(JobRecord {
                view: JobView {
                    job_id: "job-1".into(),
                    status,
                    documents_total: 2,
                    documents_done: 1,
                    chunks_done: 3,
                    attempts: 10,
                    last_error: Some("embedder down".into()),
                    created_at_ms: 100,
                    updated_at_ms: 350,
                    next_attempt_at_ms: None,
                },
                text_bytes: 0,
                net_chunks: 0,
                caller: None,
            })
        };
        let events = job_events(&[
            job(JobStatus::Running),
            job(JobStatus::Failed),
            Effect::RemoveDocument("d".into()),
            job(JobStatus::Done),
            job(JobStatus::Retrying),
        ]);
        let names: Vec<_> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["job_failed", "job_done", "job_retrying"]);
        assert_eq!(events[0].1["lastError"], "embedder down");
        assert_eq!(events[0].1["durationMs"], 250);
    }

    #[test]
    fn one_json_object_per_line_with_the_common_fields_first_and_kept() {
        let line = event_line(
            "job_failed",
            "ingest",
            Some("acme"),
            json!({"jobId": "job-1", "attempts": 10, "event": "spoofed"}),
        );
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "job_failed", "a field cannot replace the event");
        assert_eq!(v["actor"], "ingest");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["jobId"], "job-1");
        assert_eq!(v["attempts"], 10);
        let bare: Value =
            serde_json::from_str(&event_line("alarm", "chat", None, Value::Null)).unwrap();
        assert_eq!(
            bare,
            json!({"event": "alarm", "actor": "chat", "tenant": null})
        );
        let odd: Value =
            serde_json::from_str(&event_line("x", "chat", None, json!("text"))).unwrap();
        assert_eq!(odd["detail"], "text");
    }
}
