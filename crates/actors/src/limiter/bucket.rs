//! An exact token bucket in integer arithmetic.
//!
//! A limit of `r` per minute refills `r / 60_000` of a unit per millisecond.
//! To keep that exact, the level is counted in *ticks*, 1/60,000 of a unit:
//! the bucket then refills exactly `r` ticks per millisecond and holds
//! `r * 60_000` ticks when full. No floating point, so 100 admits at the same
//! instant against `rpm: 10` admit exactly 10, on every platform.
//!
//! The level may go negative: a settle that used more than its estimate takes
//! the difference afterwards, and the refill pays the debt back before
//! anything else is admitted. Nothing already admitted is ever refused
//! retroactively.

use protocol::limits::{BucketView, LimitKind, MAX_TPM};
use serde::{Deserialize, Serialize};

/// Ticks in one unit (a request, a token).
pub const TICKS: i64 = 60_000;

/// Units as ticks, saturating (no input can overflow the level).
fn ticks(units: u64) -> i64 {
    i64::try_from(units)
        .unwrap_or(i64::MAX)
        .saturating_mul(TICKS)
}

/// A per-minute token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The limit per minute the bucket last refilled at.
    pub rate: u64,
    /// The level in ticks (negative: debt).
    pub level: i64,
    /// When `level` was computed (ms since the Unix epoch).
    pub updated_ms: u64,
}

impl Bucket {
    /// A full bucket for `rate` per minute at `now`.
    pub fn full(rate: u64, now: u64) -> Self {
        let rate = rate.clamp(1, MAX_TPM);
        Self {
            rate,
            level: ticks(rate),
            updated_ms: now,
        }
    }

    /// The capacity in ticks.
    pub fn capacity(&self) -> i64 {
        ticks(self.rate)
    }

    /// Refills up to `now` at the current rate, then adopts `rate` (a lower
    /// limit takes effect at once: the level is capped at the new capacity).
    /// Time never runs backwards here: an earlier `now` changes nothing.
    pub fn advance(&mut self, rate: u64, now: u64) {
        let elapsed = now.saturating_sub(self.updated_ms);
        let refill = i64::try_from(elapsed)
            .unwrap_or(i64::MAX)
            .saturating_mul(i64::try_from(self.rate).unwrap_or(i64::MAX));
        self.rate = rate.clamp(1, MAX_TPM);
        self.level = self.level.saturating_add(refill).min(self.capacity());
        self.updated_ms = self.updated_ms.max(now);
    }

    /// The ticks a take of `units` must find in the bucket: the amount, but
    /// never more than the capacity, so work larger than the whole limit is
    /// admitted when the bucket is full (and leaves it in debt) instead of
    /// never.
    fn needed(&self, units: u64) -> i64 {
        ticks(units).min(self.capacity())
    }

    /// Whether `units` can be taken now.
    pub fn can_take(&self, units: u64) -> bool {
        self.level >= self.needed(units)
    }

    /// Takes `units` (all of them, even past the capacity check).
    pub fn take(&mut self, units: u64) {
        self.level = self.level.saturating_sub(ticks(units));
    }

    /// Gives `units` back (a refund), never above the capacity.
    pub fn give(&mut self, units: u64) {
        self.level = self.level.saturating_add(ticks(units)).min(self.capacity());
    }

    /// Takes (positive) or gives back (negative) a difference in units.
    pub fn adjust(&mut self, take: i64) {
        if take >= 0 {
            self.take(take.unsigned_abs());
        } else {
            self.give(take.unsigned_abs());
        }
    }

    /// Milliseconds until `units` can be taken (0 if they can now).
    pub fn wait_ms(&self, units: u64) -> u64 {
        let deficit = self.needed(units).saturating_sub(self.level);
        ms_for(deficit, self.rate)
    }

    /// Milliseconds until the bucket is full again.
    pub fn reset_ms(&self) -> u64 {
        ms_for(self.capacity().saturating_sub(self.level), self.rate)
    }

    /// Whole units in the bucket, rounded down (negative: debt).
    pub fn whole(&self) -> i64 {
        self.level.div_euclid(TICKS)
    }

    /// Whole units available now, never negative.
    pub fn available(&self) -> u64 {
        self.whole().max(0).unsigned_abs()
    }

    /// The admin view of the bucket.
    pub fn view(&self, limit: LimitKind) -> BucketView {
        BucketView {
            limit,
            capacity: self.rate,
            level: self.whole(),
            updated_at_ms: self.updated_ms,
        }
    }
}

/// Milliseconds to refill `deficit` ticks at `rate` ticks per ms, rounded up.
fn ms_for(deficit: i64, rate: u64) -> u64 {
    if deficit <= 0 {
        return 0;
    }
    deficit.unsigned_abs().div_ceil(rate.max(1))
}

/// Whole seconds for a wait in ms, rounded up (`Retry-After`, `t=`).
pub fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_exactly_its_capacity() {
        let mut b = Bucket::full(10, 0);
        let admitted = (0..100)
            .filter(|_| {
                let ok = b.can_take(1);
                if ok {
                    b.take(1);
                }
                ok
            })
            .count();
        assert_eq!(admitted, 10);
        // One request per 6 s at 10 rpm.
        assert_eq!(b.wait_ms(1), 6_000);
    }

    #[test]
    fn refill_is_continuous_and_capped() {
        let mut b = Bucket::full(10, 0);
        for _ in 0..10 {
            b.take(1);
        }
        b.advance(10, 5_999);
        assert!(!b.can_take(1), "one tick short");
        assert_eq!(b.wait_ms(1), 1);
        b.advance(10, 6_000);
        assert!(b.can_take(1));
        b.advance(10, 10 * 60_000);
        assert_eq!(b.whole(), 10, "never above capacity");
        b.advance(10, 0);
        assert_eq!(b.whole(), 10, "an earlier clock changes nothing");
    }

    #[test]
    fn debt_delays_and_refunds_are_capped() {
        let mut b = Bucket::full(600, 0);
        b.take(600);
        b.adjust(300);
        assert_eq!(b.whole(), -300);
        // 600 per minute is 10 per second: 30 s to pay the debt, 0.1 s more
        // for one token.
        assert_eq!(b.wait_ms(1), 30_100);
        b.adjust(-10_000);
        assert_eq!(b.whole(), 600, "a refund never overfills");
    }

    #[test]
    fn work_above_the_capacity_needs_a_full_bucket() {
        let mut b = Bucket::full(100, 0);
        assert!(b.can_take(250));
        b.take(250);
        assert_eq!(b.whole(), -150);
        // It waits for the bucket to be full again: 250 tokens at 100/min.
        assert_eq!(b.wait_ms(250), 150_000);
        assert_eq!(b.wait_ms(250), b.reset_ms());
    }

    #[test]
    fn a_lower_rate_caps_the_level_at_once() {
        let mut b = Bucket::full(100, 0);
        b.advance(10, 0);
        assert_eq!(b.whole(), 10);
        assert_eq!(secs_ceil(1), 1);
        assert_eq!(secs_ceil(1000), 1);
        assert_eq!(secs_ceil(1001), 2);
    }
}
