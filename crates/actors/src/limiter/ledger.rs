//! The tenant ledger as a pure core: it lends each key's limiter a slice of
//! the tenant's `rpm` and `tpm` (see [`super`] for the scheme and its
//! numbers).
//!
//! The ledger holds one bucket per tenant limit, exactly like a key's
//! ([`Bucket`]). A lease takes what it lends out of the bucket at once, so
//! everything a key admits under a tenant limit was first taken from the
//! tenant's bucket; what a key did not use comes back (capped at the
//! capacity) when its lease ends.

use super::bucket::{secs_ceil, Bucket};
use super::core::Effect;
use protocol::limits::{
    LeaseAsk, LeaseGrant, LeaseReturn, LedgerRequest, LedgerResponse, LedgerSnapshot, LimitKind,
    Limits,
};
use protocol::{ErrorCode, ErrorReply};
use serde::{Deserialize, Serialize};

/// A lease is at least this fraction of the tenant's limit
/// (`max(1, limit / LEASE_FRACTION)`).
pub const LEASE_FRACTION: u64 = 10;
/// How long a lease lasts; its unused part then goes back to the tenant.
pub const LEASE_TTL_MS: u64 = 10_000;

/// The size of a lease for a tenant limit of `limit` per minute.
pub fn lease_size(limit: u64) -> u64 {
    (limit / LEASE_FRACTION).max(1)
}

/// Everything the ledger keeps: stored as one row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// The tenant's limits as of the last ask.
    pub limits: Limits,
    /// The tenant's `rpm` bucket, while it has an `rpm` limit.
    pub rpm: Option<Bucket>,
    /// The tenant's `tpm` bucket, while it has a `tpm` limit.
    pub tpm: Option<Bucket>,
    /// Requests lent, in total.
    pub lent_rpm: u64,
    /// Tokens lent, in total.
    pub lent_tpm: u64,
    /// Requests given back, in total.
    pub returned_rpm: u64,
    /// Tokens given back, in total.
    pub returned_tpm: u64,
}

/// A tenant's ledger.
#[derive(Debug, Default)]
pub struct LedgerCore {
    state: LedgerState,
}

impl LedgerCore {
    /// A ledger over the state loaded from storage.
    pub fn restore(state: LedgerState) -> Self {
        Self { state }
    }

    /// The state to store.
    pub fn state(&self) -> &LedgerState {
        &self.state
    }

    /// Handles one request at `now` (ms since the Unix epoch).
    pub fn handle(
        &mut self,
        request: LedgerRequest,
        now: u64,
    ) -> (Result<LedgerResponse, ErrorReply>, Vec<Effect>) {
        match request {
            LedgerRequest::Lease(ask) => match ask.tenant_limits.validate() {
                Err(e) => (
                    Err(ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())),
                    vec![],
                ),
                Ok(()) => {
                    let grant = self.lease(&ask, now);
                    (Ok(LedgerResponse::Lease(grant)), vec![Effect::Persist])
                }
            },
            LedgerRequest::Return(back) => {
                self.take_back(back, now);
                (Ok(LedgerResponse::Returned(back)), vec![Effect::Persist])
            }
            LedgerRequest::Inspect(_) => {
                let s = &self.state;
                let buckets = [(LimitKind::Rpm, &s.rpm), (LimitKind::Tpm, &s.tpm)]
                    .into_iter()
                    .filter_map(|(kind, b)| b.as_ref().map(|b| b.view(kind)))
                    .collect();
                let snapshot = LedgerSnapshot {
                    limits: s.limits,
                    buckets,
                    lent_rpm: s.lent_rpm,
                    lent_tpm: s.lent_tpm,
                    returned_rpm: s.returned_rpm,
                    returned_tpm: s.returned_tpm,
                };
                (Ok(LedgerResponse::Snapshot(snapshot)), vec![])
            }
        }
    }

    fn adopt(&mut self, limits: Limits, now: u64) {
        let s = &mut self.state;
        s.limits = limits;
        for (slot, rate) in [
            (&mut s.rpm, limits.rpm.map(u64::from)),
            (&mut s.tpm, limits.tpm),
        ] {
            match (slot.as_mut(), rate) {
                (Some(bucket), Some(rate)) => bucket.advance(rate, now),
                (None, Some(rate)) => *slot = Some(Bucket::full(rate, now)),
                (Some(_), None) => *slot = None,
                (None, None) => {}
            }
        }
    }

    fn take_back(&mut self, back: LeaseReturn, now: u64) {
        let s = &mut self.state;
        for (slot, units) in [(&mut s.rpm, back.rpm), (&mut s.tpm, back.tpm)] {
            if let Some(b) = slot {
                b.advance(b.rate, now);
                b.give(units);
            }
        }
        s.returned_rpm = s.returned_rpm.saturating_add(back.rpm);
        s.returned_tpm = s.returned_tpm.saturating_add(back.tpm);
    }

    /// Lends at least what `ask` needs of each limit it names, and up to a
    /// lease's size where the bucket has it; or nothing, if a need cannot be
    /// met now (all or nothing, so a refused ask holds nothing back).
    fn lease(&mut self, ask: &LeaseAsk, now: u64) -> LeaseGrant {
        self.adopt(ask.tenant_limits, now);
        self.take_back(ask.returned, now);
        let wants = [(LimitKind::Rpm, ask.rpm), (LimitKind::Tpm, ask.tpm)];
        let refusal = wants
            .iter()
            .filter_map(|&(kind, want)| {
                let b = self.bucket(kind)?;
                (want > 0 && !b.can_take(want)).then(|| (kind, b.wait_ms(want)))
            })
            .max_by_key(|(_, wait)| *wait);
        if let Some((kind, wait)) = refusal {
            return LeaseGrant {
                rpm: 0,
                tpm: 0,
                expires_at_ms: now,
                limited: Some(kind),
                retry_after_secs: secs_ceil(wait).max(1),
            };
        }
        let mut lent = [0u64; 2];
        for (slot, (kind, want)) in lent.iter_mut().zip(wants) {
            if want == 0 {
                continue;
            }
            *slot = match self.bucket_mut(kind) {
                // The tenant has no such limit (any more): the need is free.
                None => want,
                Some(b) => {
                    let size = want.max(lease_size(b.rate));
                    // At least the need (the check above passed), more while
                    // the bucket has it.
                    let amount = size.min(b.available()).max(want);
                    b.take(amount);
                    amount
                }
            };
        }
        let [rpm, tpm] = lent;
        self.state.lent_rpm = self.state.lent_rpm.saturating_add(rpm);
        self.state.lent_tpm = self.state.lent_tpm.saturating_add(tpm);
        LeaseGrant {
            rpm,
            tpm,
            expires_at_ms: now.saturating_add(LEASE_TTL_MS),
            limited: None,
            retry_after_secs: 0,
        }
    }

    fn bucket(&self, kind: LimitKind) -> Option<&Bucket> {
        match kind {
            LimitKind::Rpm => self.state.rpm.as_ref(),
            LimitKind::Tpm => self.state.tpm.as_ref(),
            LimitKind::Concurrency => None,
        }
    }

    fn bucket_mut(&mut self, kind: LimitKind) -> Option<&mut Bucket> {
        match kind {
            LimitKind::Rpm => self.state.rpm.as_mut(),
            LimitKind::Tpm => self.state.tpm.as_mut(),
            LimitKind::Concurrency => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn ask(rpm: u64, tpm: u64) -> LeaseAsk {
        LeaseAsk {
            tenant_limits: Limits {
                rpm: Some(100),
                tpm: Some(10_000),
                concurrency: None,
            },
            rpm,
            tpm,
            returned: LeaseReturn::default(),
        }
    }

    fn grant(ledger: &mut LedgerCore, ask: LeaseAsk, now: u64) -> LeaseGrant {
        match ledger.handle(LedgerRequest::Lease(ask), now).0 {
            Ok(LedgerResponse::Lease(g)) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_are_a_tenth_or_the_need_if_larger() {
        assert_eq!(
            (lease_size(100), lease_size(5), lease_size(10_000)),
            (10, 1, 1_000)
        );
        let mut ledger = LedgerCore::default();
        let g = grant(&mut ledger, ask(1, 0), 0);
        assert_eq!((g.rpm, g.tpm, g.expires_at_ms), (10, 0, LEASE_TTL_MS));
        let g = grant(&mut ledger, ask(0, 4_000), 0);
        assert_eq!((g.rpm, g.tpm), (0, 4_000));
        let g = grant(&mut ledger, ask(0, 5_500), 0);
        assert_eq!(g.tpm, 5_500);
        // Near the end of the bucket: the need, and whatever else is left.
        let g = grant(&mut ledger, ask(0, 200), 0);
        assert_eq!(g.tpm, 500);
        let s = ledger.state();
        assert_eq!((s.lent_rpm, s.lent_tpm), (10, 10_000));
    }

    #[test]
    fn a_lease_is_all_or_nothing() {
        let mut ledger = LedgerCore::default();
        grant(&mut ledger, ask(0, 9_990), 0);
        // rpm could be lent, tpm cannot: nothing is.
        let g = grant(&mut ledger, ask(1, 20), 0);
        assert_eq!((g.rpm, g.tpm, g.limited), (0, 0, Some(LimitKind::Tpm)));
        // 10 tokens short at 10,000 a minute: 60 ms, so 1 s.
        assert_eq!(g.retry_after_secs, 1);
        assert_eq!(ledger.state().rpm.as_ref().unwrap().whole(), 100);
        // The refill makes it possible.
        let g = grant(&mut ledger, ask(1, 20), 60);
        assert_eq!((g.rpm, g.tpm, g.limited), (10, 20, None));
    }

    #[test]
    fn returns_refill_the_tenant_up_to_its_capacity() {
        let mut ledger = LedgerCore::default();
        grant(&mut ledger, ask(50, 0), 0);
        let back = LeaseReturn { rpm: 30, tpm: 5 };
        let (out, effects) = ledger.handle(LedgerRequest::Return(back), 0);
        assert_eq!(out, Ok(LedgerResponse::Returned(back)));
        assert_eq!(effects, vec![Effect::Persist]);
        assert_eq!(ledger.state().rpm.as_ref().unwrap().whole(), 80);
        // A full bucket stays full.
        assert_eq!(ledger.state().tpm.as_ref().unwrap().whole(), 10_000);
        let mut ask = ask(0, 0);
        ask.returned = LeaseReturn { rpm: 500, tpm: 0 };
        grant(&mut ledger, ask, 0);
        assert_eq!(ledger.state().rpm.as_ref().unwrap().whole(), 100);
    }
}
