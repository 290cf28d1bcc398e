//! What a turn sends to the tenant's other actors once it has ended, sent
//! in batches ([`crate::batch`]): its usage records to the tenant's ledger
//! (priced and recorded one per turn, exactly as before, many in one call)
//! and the session's registry report to the tenant's coordinator (of the
//! reports gathered for a session, only its latest is sent: the registry
//! keeps only the latest anyway, [`protocol::listing::apply_report`]).
//!
//! Gathered by the isolate, for every session in it, and sent at most
//! [`FLUSH_AFTER_MS`] after the first item: the next turn's first event no
//! longer shares the isolate with the last turn's ledger write and report.

use crate::batch::{Added, TenantBatches, FLUSH_AFTER_MS};
use crate::limiter::LedgerHandle;
use protocol::listing::{SessionChange, SessionReport};
use protocol::usage::{UsageRecord, MAX_RECORDS};
use protocol::{RequestId, TenantId};
use std::cell::RefCell;
use worker::{Env, State};

/// The most reports gathered for a tenant before they are sent at once.
const MAX_REPORTS: usize = 64;

thread_local! {
    static USAGE: RefCell<TenantBatches<UsageRecord>> =
        RefCell::new(TenantBatches::new(MAX_RECORDS));
    static REPORTS: RefCell<TenantBatches<SessionReport>> =
        RefCell::new(TenantBatches::new(MAX_REPORTS));
}

/// Of `reports`, each session's latest by the registry's own rule
/// ([`protocol::listing::apply_report`]): a newer version replaces an older
/// one, and an erase also one of the same version. In the order of each
/// session's first report.
pub fn latest_per_session(reports: Vec<SessionReport>) -> Vec<SessionReport> {
    let mut latest: Vec<SessionReport> = Vec::with_capacity(reports.len());
    for report in reports {
        let replaces = |kept: &SessionReport| match report.change {
            SessionChange::Touched(_) => report.version > kept.version,
            SessionChange::Erased { .. } => report.version >= kept.version,
        };
        match latest
            .iter_mut()
            .find(|r| r.change.session_id() == report.change.session_id())
        {
            Some(kept) if replaces(kept) => *kept = report,
            Some(_) => {}
            None => latest.push(report),
        }
    }
    latest
}

/// Sends `records` (priced already) to `tenant`'s ledger with the isolate's
/// next batch.
pub fn record_usage(state: &State, env: &Env, tenant: &TenantId, records: Vec<UsageRecord>) {
    for record in records {
        let added = USAGE.with(|u| u.borrow_mut().add(tenant, record));
        let now = match added {
            Added::Gathered => continue,
            Added::FlushNow(batch) => Some(batch),
            Added::FlushLater => None,
        };
        let (env, tenant) = (env.clone(), tenant.clone());
        state.wait_until(async move {
            let batch = match now {
                Some(batch) => batch,
                None => {
                    delay().await;
                    USAGE.with(|u| u.borrow_mut().take(&tenant))
                }
            };
            if batch.is_empty() {
                return;
            }
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let sent = match LedgerHandle::new(&env, &tenant) {
                Ok(ledger) => ledger.record_usage(&request_id, batch).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                worker::console_warn!("chat: turns' usage was not recorded: {e}");
            }
        });
    }
}

/// Sends `report` to `tenant`'s session registry with the isolate's next
/// batch.
pub fn report_session(state: &State, env: &Env, tenant: &TenantId, report: SessionReport) {
    let added = REPORTS.with(|r| r.borrow_mut().add(tenant, report));
    let now = match added {
        Added::Gathered => return,
        Added::FlushNow(batch) => Some(batch),
        Added::FlushLater => None,
    };
    let (env, tenant) = (env.clone(), tenant.clone());
    state.wait_until(async move {
        let batch = match now {
            Some(batch) => batch,
            None => {
                delay().await;
                REPORTS.with(|r| r.borrow_mut().take(&tenant))
            }
        };
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        for report in latest_per_session(batch) {
            send_report(&env, &tenant, &request_id, report).await;
        }
    });
}

/// Sends one report now; a failure is logged (the session's next report
/// corrects the registry).
pub async fn send_report(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    report: SessionReport,
) {
    let session = report.change.session_id().to_owned();
    let sent = match crate::coordinator::CoordinatorHandle::new(env, tenant) {
        Ok(coordinator) => coordinator
            .record_session(request_id, report)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        crate::observe::event(
            "session_registry_failed",
            "chat",
            Some(tenant.as_str()),
            serde_json::json!({"sessionId": session, "stage": "send", "error": e.to_string()}),
        );
    }
}

async fn delay() {
    worker::Delay::from(std::time::Duration::from_millis(FLUSH_AFTER_MS)).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::listing::SessionEntry;

    fn touched(session: &str, version: u64, messages: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Touched(SessionEntry {
                session_id: session.into(),
                message_count: messages,
                last_activity_ms: version,
                created_at_ms: 1,
                key_id: None,
                user_id: None,
            }),
            version,
        }
    }

    fn erased(session: &str, version: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Erased {
                session_id: session.into(),
            },
            version,
        }
    }

    #[test]
    fn each_session_sends_only_its_latest_report() {
        let sent = latest_per_session(vec![
            touched("a", 1, 4),
            touched("b", 1, 4),
            touched("a", 3, 12),
            touched("a", 2, 8),
            erased("b", 1),
        ]);
        assert_eq!(sent, vec![touched("a", 3, 12), erased("b", 1)]);
    }

    #[test]
    fn what_is_sent_is_what_the_registry_would_have_kept_from_every_report() {
        use protocol::listing::apply_report;
        let reports = vec![
            touched("a", 1, 4),
            touched("a", 2, 8),
            erased("a", 2),
            touched("a", 2, 8),
            touched("b", 5, 20),
            touched("b", 4, 16),
        ];
        for session in ["a", "b"] {
            let every = reports
                .iter()
                .filter(|r| r.change.session_id() == session)
                .fold(None, |row, r| apply_report(row.as_ref(), r).or(row));
            let latest = latest_per_session(reports.clone())
                .into_iter()
                .filter(|r| r.change.session_id() == session)
                .fold(None, |row, r| apply_report(row.as_ref(), &r).or(row));
            assert_eq!(every, latest, "session {session}");
        }
    }
}
