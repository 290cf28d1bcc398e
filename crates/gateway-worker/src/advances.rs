//! Requests a limiter counted in advance for this isolate, without I/O.
//!
//! A plain request on a limited route (a search, an ingest) is one request
//! against `rpm`, decided by the caller's `RateLimiter`: a Durable Object
//! call that costs more than the decision. An isolate that sends a limiter
//! a steady stream of requests asks it, with one of them, to count a few
//! more at once ([`protocol::limits::Admit::advance`]); it then admits that
//! many itself, while they last ([`ADVANCE_MS`]). The limiter counts them
//! when it grants them, so a limit is never exceeded, whatever the number
//! of isolates; it grants at most a sixteenth of what is left and nothing
//! near the limit, so there the decisions are its own, one by one.
//!
//! What an isolate asks for follows what it saw: the requests it admitted
//! for that limiter in the last [`ADVANCE_MS`], at most
//! [`protocol::limits::MAX_ADVANCE`]. A caller that sends one request now
//! and then asks for nothing in advance and pays the call every time. An
//! advance that expires unspent is given back with the isolate's next
//! admit at that limiter; one the isolate never sends is lost, as spent
//! (the limiter under-admits until its bucket refills, never over).
//!
//! An advance belongs to the limits it was granted under: when the caller's
//! or the tenant's limits change, what is left of it is dropped (lost, as
//! spent: given back under the new limits, it could be credited to a tenant
//! lease it was never taken from).

use protocol::limits::{LimitKind, Limits, RateLimitInfo, MAX_ADVANCE};
use std::collections::HashMap;

/// How long an advance may be spent, and the span over which an isolate's
/// rate at a limiter is counted, in ms.
pub const ADVANCE_MS: u64 = 500;

/// The limiters one isolate keeps advances for. An entry is a few dozen
/// bytes; a flood of anonymous addresses cannot grow memory past this.
pub const MAX_LIMITERS: usize = 10_000;

/// The most requests an isolate holds for one limiter (two advances whose
/// asks crossed); more goes back unspent.
pub const MAX_HELD: u32 = 2 * MAX_ADVANCE;

/// What the limits were when an advance was granted: the caller's and the
/// tenant's.
pub type Terms = (Limits, Limits);

/// One limiter's advance in this isolate, and the rate it is asked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Advance {
    /// The limits it was granted under.
    terms: Option<Terms>,
    /// Requests left to admit.
    left: u32,
    /// Until when they may be (ms since the Unix epoch).
    until_ms: u64,
    /// The headers' numbers as of the grant (`remaining` leaves the advance
    /// out).
    info: Option<RateLimitInfo>,
    /// Requests expired or set aside, to give back with the next admit.
    unspent: u32,
    /// When the current rate span began.
    span_start_ms: u64,
    /// Requests admitted in the current span.
    seen: u32,
    /// Requests admitted in the span before it.
    seen_before: u32,
}

impl Advance {
    /// Rolls the rate spans and expires the advance, at `now`.
    fn tick(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.span_start_ms);
        if elapsed >= ADVANCE_MS {
            self.seen_before = if elapsed < 2 * ADVANCE_MS {
                self.seen
            } else {
                0
            };
            self.seen = 0;
            self.span_start_ms = now;
        }
        if self.left > 0 && now >= self.until_ms {
            self.set_aside();
        }
    }

    /// What is left goes back with the next admit (at most
    /// [`MAX_ADVANCE`]; the rest is lost, as spent).
    fn set_aside(&mut self) {
        self.unspent = self.unspent.saturating_add(self.left).min(MAX_ADVANCE);
        self.left = 0;
    }

    /// Drops the advance and what would go back: taken under limits that
    /// no longer apply, it is lost, as spent (the limiter under-admits
    /// until its bucket refills, never over).
    fn forget(&mut self) {
        self.left = 0;
        self.unspent = 0;
    }

    fn stale(&self, now: u64) -> bool {
        self.left == 0
            && self.unspent == 0
            && now.saturating_sub(self.span_start_ms) >= 2 * ADVANCE_MS
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Admitted here, from the advance: the headers' numbers.
    Spent(Option<RateLimitInfo>),
    /// Ask the limiter, with this advance and what goes back.
    Ask {
        /// Requests to ask for beyond this one.
        advance: u32,
        /// Requests of an earlier advance to give back.
        unspent: u32,
    },
}

/// Every limiter's advance in this isolate.
#[derive(Debug, Default)]
pub struct Advances {
    by_limiter: HashMap<String, Advance>,
}

impl Advances {
    /// Nothing advanced yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many limiters have an entry.
    pub fn len(&self) -> usize {
        self.by_limiter.len()
    }

    /// Whether no limiter has an entry.
    pub fn is_empty(&self) -> bool {
        self.by_limiter.is_empty()
    }

    /// A request for `limiter` (the tenant and the limiter's name) under
    /// `terms`, at `now`: admitted from its advance, or to be asked about
    /// (what is given back is then forgotten here: it travels with the ask).
    pub fn take(&mut self, limiter: &str, terms: Terms, now: u64) -> Take {
        if !self.by_limiter.contains_key(limiter) && self.by_limiter.len() >= MAX_LIMITERS {
            self.by_limiter.retain(|_, a| !a.stale(now));
            if self.by_limiter.len() >= MAX_LIMITERS {
                // Full of live entries: what they hold is lost (as spent).
                self.by_limiter.clear();
            }
        }
        let entry = self.by_limiter.entry(limiter.to_owned()).or_default();
        if entry.terms != Some(terms) {
            entry.forget();
            entry.terms = Some(terms);
        }
        entry.tick(now);
        entry.seen = entry.seen.saturating_add(1);
        if entry.left > 0 {
            entry.left -= 1;
            return Take::Spent(entry.info.map(|info| with_left(info, entry.left)));
        }
        // What this isolate sent this limiter lately, this request left out.
        let recent = entry.seen_before.max(entry.seen.saturating_sub(1));
        Take::Ask {
            advance: recent.min(MAX_ADVANCE),
            unspent: std::mem::take(&mut entry.unspent),
        }
    }

    /// The limiter admitted a request of `limiter` under `terms` at `now`
    /// and advanced `advanced` more: they may be admitted here until
    /// [`ADVANCE_MS`] from now. `info` is its answer's headers' numbers.
    /// Returns those numbers for the request that asked.
    pub fn grant(
        &mut self,
        limiter: &str,
        terms: Terms,
        advanced: u32,
        info: Option<RateLimitInfo>,
        now: u64,
    ) -> Option<RateLimitInfo> {
        if advanced == 0 {
            return info;
        }
        let entry = self.by_limiter.entry(limiter.to_owned()).or_default();
        if entry.terms != Some(terms) {
            // The limits changed while it was asked: not to be spent under
            // the new ones, nor given back under them (the limiter took it
            // under the old ones): lost, as spent.
            return info;
        }
        entry.tick(now);
        // Grants of asks that crossed: what is past the bound goes back.
        let total = entry.left.saturating_add(advanced);
        entry.left = total.min(MAX_HELD);
        entry.unspent = entry
            .unspent
            .saturating_add(total - entry.left)
            .min(MAX_ADVANCE);
        entry.until_ms = now.saturating_add(ADVANCE_MS);
        entry.info = info;
        info.map(|info| with_left(info, entry.left))
    }
}

/// The headers' numbers of a request admitted here: what the limiter had
/// left, plus what remains of the advance when the numbers are about
/// requests (`rpm`; an advance is no tokens).
fn with_left(info: RateLimitInfo, left: u32) -> RateLimitInfo {
    if info.limit_kind != LimitKind::Rpm {
        return info;
    }
    RateLimitInfo {
        remaining: info.remaining.saturating_add(u64::from(left)),
        ..info
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use protocol::limits::LimitScope;

    fn terms(rpm: u32) -> Terms {
        (
            Limits {
                rpm: Some(rpm),
                ..Limits::default()
            },
            Limits::default(),
        )
    }

    fn info(remaining: u64) -> RateLimitInfo {
        RateLimitInfo {
            limit_kind: LimitKind::Rpm,
            scope: LimitScope::Key,
            limit: 1_000,
            remaining,
            reset_secs: 1,
            window_secs: 60,
        }
    }

    fn ask(take: Take) -> (u32, u32) {
        match take {
            Take::Ask { advance, unspent } => (advance, unspent),
            other => panic!("expected an ask: {other:?}"),
        }
    }

    #[test]
    fn a_lone_request_asks_for_nothing_in_advance() {
        let mut a = Advances::new();
        let t = 1_000_000;
        assert_eq!(ask(a.take("acme:limiter:k", terms(10), t)), (0, 0));
        // Long after: still alone.
        assert_eq!(ask(a.take("acme:limiter:k", terms(10), t + 5_000)), (0, 0));
    }

    #[test]
    fn a_steady_caller_asks_for_what_it_sent_lately_and_spends_it_here() {
        let mut a = Advances::new();
        let k = "acme:limiter:k";
        let t = 1_000_000;
        // Ten requests 10 ms apart, each asked about (nothing granted): the
        // ask grows with what was sent.
        for i in 0..10 {
            assert_eq!(ask(a.take(k, terms(1_000), t + i * 10)), (i as u32, 0));
        }
        // The limiter grants 3: the next three are admitted here, with the
        // headers counting what is left of the advance.
        let now = t + 100;
        assert_eq!(
            a.grant(k, terms(1_000), 3, Some(info(500)), now),
            Some(info(503))
        );
        assert_eq!(
            a.take(k, terms(1_000), now + 1),
            Take::Spent(Some(info(502)))
        );
        assert_eq!(
            a.take(k, terms(1_000), now + 2),
            Take::Spent(Some(info(501)))
        );
        assert_eq!(
            a.take(k, terms(1_000), now + 3),
            Take::Spent(Some(info(500)))
        );
        assert!(matches!(a.take(k, terms(1_000), now + 4), Take::Ask { .. }));
        // Never more than the most a limiter grants.
        for i in 0..100 {
            a.take(k, terms(1_000), now + 5 + i);
        }
        assert_eq!(ask(a.take(k, terms(1_000), now + 200)).0, MAX_ADVANCE);
    }

    #[test]
    fn an_expired_advance_goes_back_with_the_next_ask() {
        let mut a = Advances::new();
        let k = "acme:limiter:k";
        let t = 1_000_000;
        a.take(k, terms(1_000), t);
        a.grant(k, terms(1_000), 5, None, t);
        assert_eq!(a.take(k, terms(1_000), t + 1), Take::Spent(None));
        // Past its time the four left are not spent but given back, once.
        let (_, unspent) = ask(a.take(k, terms(1_000), t + ADVANCE_MS));
        assert_eq!(unspent, 4);
        assert_eq!(ask(a.take(k, terms(1_000), t + ADVANCE_MS + 1)).1, 0);
    }

    #[test]
    fn new_limits_drop_an_advance() {
        let mut a = Advances::new();
        let k = "acme:limiter:k";
        let t = 1_000_000;
        a.take(k, terms(1_000), t);
        a.grant(k, terms(1_000), 5, None, t);
        // The key's limit was lowered: what is left is neither spent under
        // it nor given back (it was taken under the old one).
        assert_eq!(ask(a.take(k, terms(10), t + 1)).1, 0);
        // Nor is a grant made under the old limits arriving after the change.
        a.grant(k, terms(1_000), 2, None, t + 2);
        assert_eq!(ask(a.take(k, terms(10), t + 3)).1, 0);
        // What expired under the old limits does not go back under the new.
        let j = "acme:limiter:j";
        a.take(j, terms(1_000), t);
        a.grant(j, terms(1_000), 5, None, t);
        assert_eq!(ask(a.take(j, terms(10), t + ADVANCE_MS + 1)).1, 0);
    }

    #[test]
    fn crossed_grants_beyond_the_bound_go_back() {
        let mut a = Advances::new();
        let k = "acme:limiter:k";
        let t = 1_000_000;
        a.take(k, terms(1_000), t);
        a.grant(k, terms(1_000), MAX_ADVANCE, None, t);
        a.grant(k, terms(1_000), MAX_ADVANCE, None, t);
        a.grant(k, terms(1_000), 3, None, t);
        for _ in 0..MAX_HELD {
            assert!(matches!(a.take(k, terms(1_000), t + 1), Take::Spent(_)));
        }
        assert_eq!(ask(a.take(k, terms(1_000), t + 2)).1, 3);
    }

    #[test]
    fn token_headers_do_not_count_an_advance() {
        let mut a = Advances::new();
        let k = "acme:limiter:k";
        let t = 1_000_000;
        let tokens = RateLimitInfo {
            limit_kind: LimitKind::Tpm,
            ..info(50_000)
        };
        a.take(k, terms(1_000), t);
        assert_eq!(
            a.grant(k, terms(1_000), 4, Some(tokens), t),
            Some(tokens),
            "the advance is requests, not tokens"
        );
        assert_eq!(a.take(k, terms(1_000), t + 1), Take::Spent(Some(tokens)));
    }

    #[test]
    fn limiters_and_tenants_do_not_share_advances() {
        let mut a = Advances::new();
        let t = 1_000_000;
        a.take("acme:limiter:k", terms(1_000), t);
        a.grant("acme:limiter:k", terms(1_000), 5, None, t);
        assert!(matches!(
            a.take("other:limiter:k", terms(1_000), t),
            Take::Ask { .. }
        ));
        assert!(matches!(
            a.take("acme:limiter:j", terms(1_000), t),
            Take::Ask { .. }
        ));
        assert_eq!(a.take("acme:limiter:k", terms(1_000), t), Take::Spent(None));
    }

    #[test]
    fn the_map_stays_bounded() {
        let mut a = Advances::new();
        let t = 1_000_000;
        for i in 0..(MAX_LIMITERS + 10) {
            a.take(&format!("acme:limiter:anon-{i}"), terms(1_000), t);
        }
        assert!(a.len() <= MAX_LIMITERS);
    }
}
