//! The session registry reports that ended turns send to the tenant's
//! ledger with their usage ([`UsageRequest::RecordTurns`]), held there for
//! a moment and passed on to the coordinator together (pure): one call to
//! the coordinator for the turns of a second, instead of one per turn.
//!
//! A report of a session replaces a held one of a lower version (the
//! registry would ignore the older anyway). Held reports live in memory
//! only: a reset of the ledger before they are passed on loses them, and
//! the registry is corrected by each session's next report, as when a
//! report fails on the way.
//!
//! [`UsageRequest::RecordTurns`]: protocol::usage::UsageRequest::RecordTurns

use protocol::listing::{SessionReport, MAX_SESSION_BATCH};
use std::collections::BTreeMap;

/// How long a report is held before it is passed on (with every report
/// that arrived meanwhile).
pub const RELAY_AFTER_MS: u64 = 1000;

/// Most sessions held at once (about 3 MB at most): a report of another
/// session beyond it is dropped, and its session's next report corrects
/// the registry.
pub const MAX_HELD: usize = 10_000;

/// What [`Relay::hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Held, and nothing was held before: the caller schedules the send.
    First,
    /// Held (or an older report of its session replaced, or it was older
    /// than the held one); a send is scheduled already.
    Added,
    /// Dropped: [`MAX_HELD`] sessions are held.
    Full,
}

/// The reports held, by session.
#[derive(Debug, Default)]
pub struct Relay {
    held: BTreeMap<String, SessionReport>,
}

impl Relay {
    /// Holds `report` until the next [`Relay::take`].
    pub fn hold(&mut self, report: SessionReport) -> Held {
        let first = self.held.is_empty();
        let id = report.change.session_id().to_owned();
        match self.held.get(&id) {
            Some(held) if held.version >= report.version => {}
            Some(_) => {
                self.held.insert(id, report);
            }
            None if self.held.len() >= MAX_HELD => return Held::Full,
            None => {
                self.held.insert(id, report);
            }
        }
        if first {
            Held::First
        } else {
            Held::Added
        }
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Every held report, in batches of at most [`MAX_SESSION_BATCH`].
    pub fn take(&mut self) -> Vec<Vec<SessionReport>> {
        let all: Vec<SessionReport> = std::mem::take(&mut self.held).into_values().collect();
        all.chunks(MAX_SESSION_BATCH).map(<[_]>::to_vec).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::listing::{SessionChange, SessionEntry};

    fn touched(session: &str, version: u64, messages: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Touched(SessionEntry {
                session_id: session.into(),
                message_count: messages,
                last_activity_ms: version * 10,
                created_at_ms: 1,
                key_id: None,
                user_id: None,
            }),
            version,
        }
    }

    #[test]
    fn the_first_report_schedules_the_send_and_the_newest_per_session_is_kept() {
        let mut relay = Relay::default();
        assert_eq!(relay.hold(touched("a", 2, 4)), Held::First);
        assert_eq!(relay.hold(touched("b", 1, 2)), Held::Added);
        // A newer report of `a` replaces the held one; an older one does not.
        assert_eq!(relay.hold(touched("a", 3, 6)), Held::Added);
        assert_eq!(relay.hold(touched("a", 1, 2)), Held::Added);
        assert_eq!(relay.len(), 2);
        let batches = relay.take();
        assert_eq!(batches, vec![vec![touched("a", 3, 6), touched("b", 1, 2)]]);
        assert!(relay.is_empty());
        // Taken: the next report schedules a send again.
        assert_eq!(relay.hold(touched("c", 1, 2)), Held::First);
    }

    #[test]
    fn an_erase_of_a_higher_version_replaces_a_touch() {
        let mut relay = Relay::default();
        relay.hold(touched("a", 2, 4));
        let erased = SessionReport {
            change: SessionChange::Erased {
                session_id: "a".into(),
            },
            version: 2,
        };
        // Same version: the held one stays (the registry orders by version).
        relay.hold(erased.clone());
        assert_eq!(relay.take(), vec![vec![touched("a", 2, 4)]]);
        relay.hold(touched("a", 2, 4));
        let later = SessionReport {
            version: 3,
            ..erased
        };
        relay.hold(later.clone());
        assert_eq!(relay.take(), vec![vec![later]]);
    }

    #[test]
    fn many_sessions_go_in_batches_and_past_the_bound_are_dropped() {
        let mut relay = Relay::default();
        for i in 0..MAX_HELD {
            relay.hold(touched(&format!("s{i:05}"), 1, 2));
        }
        assert_eq!(relay.hold(touched("late", 1, 2)), Held::Full);
        // A held session still takes its newer report.
        assert_eq!(relay.hold(touched("s00000", 2, 4)), Held::Added);
        let batches = relay.take();
        assert_eq!(batches.len(), MAX_HELD.div_ceil(MAX_SESSION_BATCH));
        assert!(batches.iter().all(|b| b.len() <= MAX_SESSION_BATCH));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), MAX_HELD);
        assert_eq!(batches[0][0], touched("s00000", 2, 4));
    }
}
