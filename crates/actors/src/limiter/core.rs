//! A key's limiter as a pure core: plain data in, reply and effects out.
//!
//! [`LimiterCore::handle`] takes a [`LimiterRequest`] and `now` (ms since the
//! Unix epoch) and returns an [`Outcome`] and the [`Effect`]s for the shell.
//! [`LimiterCore::on_alarm`] is the timer input, [`LimiterCore::poll_timeout`]
//! the timer output. The state ([`LimiterState`]) is one serde value: the
//! shell stores it as one row after every [`Effect::Persist`] and restores it
//! with [`LimiterCore::restore`].
//!
//! Rules, in the order an admit checks them (all checks before any change,
//! so a refusal changes nothing but the limits it adopts and the unspent
//! requests it gives back, [`Admit::unspent`]):
//! 1. **budgets**: for every budget set, `used + reserved + estimate <= limit`
//!    in its UTC window, day before month; a refusal names the budget. A
//!    budget is checked first because waiting for a rate limit would not help.
//! 2. **key rate limits**: a concurrency slot (turns), one request against
//!    `rpm`, the token estimate against `tpm`; when several refuse, the reply
//!    names the one with the longest wait.
//! 3. **tenant limits** through the lease (see [`super`]): if the lease lacks
//!    what the admit needs, the outcome is [`Outcome::NeedLease`] and nothing
//!    changed; the shell asks the ledger, gives the grant to
//!    [`LimiterCore::apply_grant`] and handles the admit again.
//!
//! Settle moves a reservation into `used` with the actual usage, which may
//! exceed the estimate: `tpm` and the lease take the difference (a debt the
//! refill pays back), the budgets count it. So a budget is never exceeded by
//! more than what the reservations in flight used beyond their estimates.
//! A reservation that is neither settled nor released by its deadline
//! expires: it is charged its estimate and frees its slot; a settle that
//! arrives later still corrects the charge to the actual usage.

use super::bucket::{secs_ceil, Bucket};
use super::calendar::{window_end, window_start};
use protocol::limits::{
    Admit, Admitted, Budget, BudgetExceeded, BudgetKind, LeaseAsk, LeaseGrant, LeaseReturn,
    LeaseView, LimitKind, LimitScope, LimiterRequest, LimiterResponse, LimiterSnapshot, Limits,
    Period, Price, RateLimitInfo, RateLimited, Released, ReservationView, Settled, SoftMark,
    TokenUsage, WindowView, RATE_WINDOW_SECS,
};
use protocol::{ErrorCode, ErrorReply};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Expired reservations remembered so that a late settle can correct what
/// they were charged.
pub const EXPIRED_KEPT: usize = 64;
/// `Retry-After` for a concurrency refusal: a slot frees when a turn ends,
/// which the limiter cannot predict, so the client polls.
pub const CONCURRENCY_RETRY_SECS: u64 = 1;

/// How long a [`Effect::PersistSoon`] write may wait: the requests a key
/// was admitted in that time are what an isolate reset can forget.
pub const PERSIST_SOON_MS: u64 = 1_000;

/// An advance ([`Admit::advance`]) is at most this share of what is left:
/// `1 / ADVANCE_SHARE` of the key's `rpm` bucket (and of its tenant lease).
/// So a caller that stops spending strands at most that share, and near
/// the limit (fewer than `2 * ADVANCE_SHARE` left) nothing is advanced and
/// every request is decided here, one by one.
pub const ADVANCE_SHARE: u64 = 16;

/// `request` as the shell sends it again after an [`Outcome::NeedLease`]:
/// an admit's unspent requests were given back by the first handling, so
/// the retry carries none.
pub fn once(request: LimiterRequest) -> LimiterRequest {
    match request {
        LimiterRequest::Admit(admit) => LimiterRequest::Admit(Admit {
            unspent: 0,
            ..admit
        }),
        other => other,
    }
}

/// What the shell must do after a message, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A soft threshold was crossed: log it (it is also in the snapshot).
    SoftThreshold(SoftMark),
    /// Store [`LimiterCore::state`] (one row) before answering.
    Persist,
    /// Store [`LimiterCore::state`] soon, without holding the answer for
    /// the write (at most [`PERSIST_SOON_MS`] later, unless a
    /// [`Effect::Persist`] comes first): the only change is a plain
    /// request's spend from the rate buckets (and the lease), no
    /// reservation, no budget. An isolate reset before the write forgets
    /// those spends, so a key may be admitted that many requests again: at
    /// most what it was admitted in the last [`PERSIST_SOON_MS`], plus what
    /// isolates give back of advances it granted in that time and forgot
    /// (at most [`protocol::limits::MAX_ADVANCE`] per isolate).
    PersistSoon,
    /// Set the object's alarm to this time (ms since the Unix epoch).
    SetAlarm(u64),
    /// Delete the alarm: nothing is due.
    ClearAlarm,
    /// After the write: give this unused capacity back to the tenant ledger
    /// ([`protocol::limits::LedgerRequest::Return`]), for example beside the
    /// reply (`waitUntil`). At most once: the core has already forgotten it,
    /// so a failed call loses the capacity until the tenant's bucket refills
    /// (the tenant is briefly under-admitted, never over).
    ReturnLease(LeaseReturn),
}

/// The core's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this back to the caller.
    Reply(Result<LimiterResponse, ErrorReply>),
    /// The tenant lease is short: send this ask to the tenant ledger, give
    /// the grant to [`LimiterCore::apply_grant`], then handle the same
    /// request again (a few times at most: other admits may spend the grant
    /// first while the shell awaits the ledger). Nothing was admitted; the
    /// ask may carry unused capacity back, which the core has forgotten.
    NeedLease(LeaseAsk),
}

/// One budget window's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// When it began (UTC midnight).
    pub start_ms: u64,
    /// Tokens settled in it.
    pub used_tokens: u64,
    /// Cost settled in it (micro-dollars).
    pub used_cost_micros: u64,
}

/// Work admitted and not yet settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Tokens reserved against `tpm` and the token budgets.
    pub tokens: u64,
    /// Cost reserved against the cost budgets.
    pub cost_micros: u64,
    /// Whether it holds a concurrency slot.
    pub turn: bool,
    /// Whether `tokens` were taken from the key's `tpm` bucket.
    pub tpm_taken: bool,
    /// Whether `tokens` were taken from the tenant lease.
    pub lease_taken: bool,
    /// The model, if named.
    pub model: Option<String>,
    /// When it was admitted.
    pub created_at_ms: u64,
    /// When it expires unless settled or released.
    pub expires_at_ms: u64,
}

/// A reservation that expired: its estimate was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// Its id.
    pub id: u64,
    /// The reservation as it was.
    pub reservation: Reservation,
    /// The day window it was charged to.
    pub day_start_ms: u64,
    /// The month window it was charged to.
    pub month_start_ms: u64,
}

/// The key's share of the tenant's capacity (see [`super`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Requests left (negative: owed).
    pub rpm: i64,
    /// Tokens left (negative: owed).
    pub tpm: i64,
    /// When the unused part goes back to the tenant.
    pub expires_at_ms: u64,
}

/// The tenant ledger refused a lease: until when the key answers 429 for
/// the tenant without asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantBlock {
    /// The tenant limit that is reached.
    pub limit: LimitKind,
    /// Until when (ms since the Unix epoch).
    pub until_ms: u64,
}

/// Everything the limiter keeps: stored as one row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterState {
    /// The key's limits as of the last admit.
    pub limits: Limits,
    /// The key's budget as of the last admit.
    pub budget: Budget,
    /// The tenant's limits as of the last admit.
    pub tenant_limits: Limits,
    /// The `rpm` bucket, while the key has an `rpm` limit.
    pub rpm: Option<Bucket>,
    /// The `tpm` bucket, while the key has a `tpm` limit.
    pub tpm: Option<Bucket>,
    /// Reservations in flight, by id.
    pub reservations: BTreeMap<u64, Reservation>,
    /// The next reservation id (ids are never reused).
    pub next_id: u64,
    /// The current UTC day.
    pub day: Window,
    /// The current UTC month.
    pub month: Window,
    /// Soft thresholds crossed in the current windows.
    pub soft_marks: Vec<SoftMark>,
    /// The tenant lease.
    pub lease: Lease,
    /// A refusal of the ledger still in force.
    pub tenant_block: Option<TenantBlock>,
    /// The most recently expired reservations, oldest first.
    pub expired: VecDeque<Expired>,
    /// The alarm as last reported to the shell.
    pub alarm_at: Option<u64>,
    /// Requests counted in advance for callers, in total.
    #[serde(default)]
    pub advanced: u64,
    /// Of those, how many were given back unspent.
    #[serde(default)]
    pub given_back: u64,
}

/// A key's rate limiter, budgets and usage windows.
#[derive(Debug, Default)]
pub struct LimiterCore {
    state: LimiterState,
    /// Whether the state changed since the last [`Effect::Persist`].
    dirty: bool,
    /// Whether plain requests spent from the buckets since the last write
    /// ([`Effect::PersistSoon`]).
    spent: bool,
    /// Unused lease capacity to give back at the end of this call.
    returning: LeaseReturn,
}

fn err(e: impl ToString) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())
}

/// The answer to a settle or release of a reservation the core does not know.
fn unknown(id: u64, usage: TokenUsage, cost: Option<u64>) -> Settled {
    Settled {
        reservation_id: id,
        known: false,
        usage,
        cost_micros: cost,
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `value + delta`, within `0..=u64::MAX`.
fn add_signed(value: u64, delta: i128) -> u64 {
    let sum = i128::from(value).saturating_add(delta);
    u64::try_from(sum.max(0)).unwrap_or(u64::MAX)
}

impl LimiterCore {
    /// A limiter that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A limiter over the state loaded from storage.
    pub fn restore(state: LimiterState) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// The state to store.
    pub fn state(&self) -> &LimiterState {
        &self.state
    }

    /// When the alarm should fire, if anything is due.
    pub fn poll_timeout(&self) -> Option<u64> {
        let reservations = self.state.reservations.values().map(|r| r.expires_at_ms);
        let lease = (self.state.lease.rpm > 0 || self.state.lease.tpm > 0)
            .then_some(self.state.lease.expires_at_ms);
        reservations.chain(lease).min()
    }

    /// Handles one request at `now` (ms since the Unix epoch).
    pub fn handle(&mut self, request: LimiterRequest, now: u64) -> (Outcome, Vec<Effect>) {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        let mut outcome = match request {
            LimiterRequest::Admit(admit) => self.admit(admit, now),
            LimiterRequest::Settle(s) => {
                let reply = self.settle(s.reservation_id, s.usage, s.price, now, &mut effects);
                Outcome::Reply(Ok(LimiterResponse::Settled(reply)))
            }
            LimiterRequest::Release(r) => {
                let settled = self.settle(
                    r.reservation_id,
                    TokenUsage::default(),
                    None,
                    now,
                    &mut effects,
                );
                Outcome::Reply(Ok(LimiterResponse::Released(Released {
                    reservation_id: r.reservation_id,
                    known: settled.known,
                })))
            }
            LimiterRequest::Inspect(_) => {
                Outcome::Reply(Ok(LimiterResponse::Snapshot(self.snapshot(now))))
            }
        };
        if let Outcome::NeedLease(ask) = &mut outcome {
            // The ask carries what goes back, saving a call.
            ask.returned = std::mem::take(&mut self.returning);
        }
        self.finish(&mut effects);
        (outcome, effects)
    }

    /// The alarm fired at `now`: expire what is due.
    pub fn on_alarm(&mut self, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        // The alarm that fired is gone: whatever is due next must be set again.
        if self.state.alarm_at.take().is_some() {
            self.dirty = true;
        }
        self.finish(&mut effects);
        effects
    }

    /// The tenant ledger answered a [`Outcome::NeedLease`] ask with `grant`
    /// at `now`.
    pub fn apply_grant(&mut self, grant: LeaseGrant, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.tick(now, &mut effects);
        let s = &mut self.state;
        match grant.limited {
            Some(limit) => {
                let wait_ms = grant.retry_after_secs.max(1).saturating_mul(1000);
                let until_ms = now.saturating_add(wait_ms);
                s.tenant_block = Some(TenantBlock { limit, until_ms });
            }
            None => {
                s.tenant_block = None;
                s.lease.rpm = s.lease.rpm.saturating_add(signed(grant.rpm));
                s.lease.tpm = s.lease.tpm.saturating_add(signed(grant.tpm));
                s.lease.expires_at_ms = s.lease.expires_at_ms.max(grant.expires_at_ms);
            }
        }
        self.dirty = true;
        self.finish(&mut effects);
        effects
    }

    /// Rolls the windows over, expires reservations and the lease, lifts a
    /// tenant block that is over.
    fn tick(&mut self, now: u64, effects: &mut Vec<Effect>) {
        for period in [Period::Day, Period::Month] {
            let start = window_start(period, now);
            let window = match period {
                Period::Day => &mut self.state.day,
                Period::Month => &mut self.state.month,
            };
            if window.start_ms < start {
                *window = Window {
                    start_ms: start,
                    ..Window::default()
                };
                self.state
                    .soft_marks
                    .retain(|m| m.budget.period() != period);
                self.dirty = true;
            }
        }
        let due: Vec<u64> = self
            .state
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_at_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(reservation) = self.state.reservations.remove(&id) {
                // A lost settle: charge the estimate, so the budget counts
                // what the work may have used.
                self.charge(reservation.tokens, reservation.cost_micros);
                self.state.expired.push_back(Expired {
                    id,
                    reservation,
                    day_start_ms: self.state.day.start_ms,
                    month_start_ms: self.state.month.start_ms,
                });
                while self.state.expired.len() > EXPIRED_KEPT {
                    self.state.expired.pop_front();
                }
                self.dirty = true;
            }
        }
        self.check_soft(now, effects);
        let lease = &mut self.state.lease;
        if lease.expires_at_ms <= now && (lease.rpm > 0 || lease.tpm > 0) {
            let back = LeaseReturn {
                rpm: lease.rpm.max(0).unsigned_abs(),
                tpm: lease.tpm.max(0).unsigned_abs(),
            };
            // A debt stays (it is paid by the next grant); what is left over
            // goes back to the tenant.
            lease.rpm = lease.rpm.min(0);
            lease.tpm = lease.tpm.min(0);
            self.returning.rpm = self.returning.rpm.saturating_add(back.rpm);
            self.returning.tpm = self.returning.tpm.saturating_add(back.tpm);
            self.dirty = true;
        }
        if self.state.tenant_block.is_some_and(|b| b.until_ms <= now) {
            self.state.tenant_block = None;
            self.dirty = true;
        }
    }

    /// Reports the alarm if it moved, asks for a write if anything changed,
    /// and hands over capacity to give back.
    fn finish(&mut self, effects: &mut Vec<Effect>) {
        let next = self.poll_timeout();
        let alarm = (next != self.state.alarm_at).then(|| {
            self.state.alarm_at = next;
            self.dirty = true;
            match next {
                Some(at) => Effect::SetAlarm(at),
                None => Effect::ClearAlarm,
            }
        });
        if self.dirty {
            effects.push(Effect::Persist);
            self.dirty = false;
            self.spent = false;
        } else if self.spent {
            effects.push(Effect::PersistSoon);
            self.spent = false;
        }
        effects.extend(alarm);
        let back = std::mem::take(&mut self.returning);
        if back != LeaseReturn::default() {
            effects.push(Effect::ReturnLease(back));
        }
    }

    /// Takes the limits of an admit: buckets appear full for a new limit,
    /// follow a changed one, and go with a removed one.
    fn adopt(&mut self, admit: &Admit, now: u64) {
        let s = &mut self.state;
        if s.limits != admit.limits || s.budget != admit.budget {
            self.dirty = true;
        }
        s.limits = admit.limits;
        s.budget = admit.budget;
        s.tenant_limits = admit.tenant_limits;
        for (slot, rate) in [
            (&mut s.rpm, admit.limits.rpm.map(u64::from)),
            (&mut s.tpm, admit.limits.tpm),
        ] {
            match (slot.as_mut(), rate) {
                (Some(bucket), Some(rate)) => bucket.advance(rate, now),
                (None, Some(rate)) => *slot = Some(Bucket::full(rate, now)),
                (Some(_), None) => *slot = None,
                (None, None) => {}
            }
        }
    }

    fn turns_held(&self) -> u64 {
        self.state.reservations.values().filter(|r| r.turn).count() as u64
    }

    fn reserved(&self, cost: bool) -> u64 {
        self.state
            .reservations
            .values()
            .map(|r| if cost { r.cost_micros } else { r.tokens })
            .fold(0, u64::saturating_add)
    }

    fn window(&self, period: Period) -> &Window {
        match period {
            Period::Day => &self.state.day,
            Period::Month => &self.state.month,
        }
    }

    fn used(&self, kind: BudgetKind) -> u64 {
        let w = self.window(kind.period());
        if kind.is_cost() {
            w.used_cost_micros
        } else {
            w.used_tokens
        }
    }

    fn budget_refusal(&self, tokens: u64, cost: u64, now: u64) -> Option<BudgetExceeded> {
        BudgetKind::ALL.into_iter().find_map(|kind| {
            let limit = self.state.budget.limit(kind)?;
            let used = self.used(kind);
            let reserved = self.reserved(kind.is_cost());
            let requested = if kind.is_cost() { cost } else { tokens };
            let total = used.saturating_add(reserved).saturating_add(requested);
            (total > limit).then(|| BudgetExceeded {
                budget: kind,
                scope: LimitScope::Key,
                limit,
                used,
                reserved,
                requested,
                resets_at_ms: window_end(kind.period(), now),
            })
        })
    }

    fn bucket(&self, kind: LimitKind) -> Option<&Bucket> {
        match kind {
            LimitKind::Rpm => self.state.rpm.as_ref(),
            LimitKind::Tpm => self.state.tpm.as_ref(),
            LimitKind::Concurrency => None,
        }
    }

    fn info(&self, kind: LimitKind) -> Option<RateLimitInfo> {
        let (limit, remaining, reset_secs) = match kind {
            LimitKind::Concurrency => {
                let limit = u64::from(self.state.limits.concurrency?);
                let held = self.turns_held();
                let reset = if held >= limit {
                    CONCURRENCY_RETRY_SECS
                } else {
                    0
                };
                (limit, limit.saturating_sub(held), reset)
            }
            _ => {
                let b = self.bucket(kind)?;
                (b.rate, b.available(), secs_ceil(b.reset_ms()))
            }
        };
        Some(RateLimitInfo {
            limit_kind: kind,
            scope: LimitScope::Key,
            limit,
            remaining,
            reset_secs,
            window_secs: RATE_WINDOW_SECS,
        })
    }

    /// The key's per-minute limit with the least left, relative to its size.
    fn tightest(&self) -> Option<RateLimitInfo> {
        [LimitKind::Rpm, LimitKind::Tpm]
            .into_iter()
            .filter_map(|k| self.info(k))
            .min_by(|a, b| {
                // a.remaining / a.limit against b.remaining / b.limit, exactly.
                let left = u128::from(a.remaining) * u128::from(b.limit);
                let right = u128::from(b.remaining) * u128::from(a.limit);
                left.cmp(&right)
            })
    }

    fn admit(&mut self, admit: Admit, now: u64) -> Outcome {
        if let Err(e) = admit.validate() {
            return Outcome::Reply(Err(err(e)));
        }
        self.adopt(&admit, now);
        self.give_back(admit.unspent, &admit, now);
        let tokens = admit.estimate.total();
        let cost = admit.price.map_or(0, |p| p.cost_micros(admit.estimate));

        if let Some(refusal) = self.budget_refusal(tokens, cost, now) {
            return Outcome::Reply(Ok(LimiterResponse::BudgetExceeded(refusal)));
        }

        // Key rate limits: every one that refuses, the longest wait wins.
        let mut waits: Vec<(LimitKind, u64)> = Vec::new();
        if let Some(c) = admit.limits.concurrency {
            if admit.turn && self.turns_held() >= u64::from(c) {
                waits.push((LimitKind::Concurrency, CONCURRENCY_RETRY_SECS * 1000));
            }
        }
        if let Some(b) = &self.state.rpm {
            if admit.count_request && !b.can_take(1) {
                waits.push((LimitKind::Rpm, b.wait_ms(1)));
            }
        }
        if let Some(b) = &self.state.tpm {
            if tokens > 0 && !b.can_take(tokens) {
                waits.push((LimitKind::Tpm, b.wait_ms(tokens)));
            }
        }
        if let Some(&(limit, wait)) = waits.iter().max_by_key(|(_, wait)| *wait) {
            return Outcome::Reply(Ok(LimiterResponse::RateLimited(RateLimited {
                limit,
                scope: LimitScope::Key,
                retry_after_secs: secs_ceil(wait).max(1),
                rate_limit: self.info(limit),
            })));
        }

        // Tenant limits, from the lease.
        let need_rpm = i64::from(admit.count_request && admit.tenant_limits.rpm.is_some());
        let need_tpm = if admit.tenant_limits.tpm.is_some() {
            signed(tokens)
        } else {
            0
        };
        let lease = self.state.lease;
        let live = lease.expires_at_ms > now;
        let (have_rpm, have_tpm) = if live {
            (lease.rpm, lease.tpm)
        } else {
            (lease.rpm.min(0), lease.tpm.min(0))
        };
        let short_rpm = need_rpm.saturating_sub(have_rpm).max(0);
        let short_tpm = need_tpm.saturating_sub(have_tpm).max(0);
        // Only what this admit needs is asked for: a kind it does not use is
        // not checked, even if its balance is in debt.
        let short_rpm = if need_rpm > 0 { short_rpm } else { 0 };
        let short_tpm = if need_tpm > 0 { short_tpm } else { 0 };
        if short_rpm > 0 || short_tpm > 0 {
            if let Some(block) = self.state.tenant_block {
                return Outcome::Reply(Ok(LimiterResponse::RateLimited(RateLimited {
                    limit: block.limit,
                    scope: LimitScope::Tenant,
                    retry_after_secs: secs_ceil(block.until_ms.saturating_sub(now)).max(1),
                    rate_limit: None,
                })));
            }
            return Outcome::NeedLease(LeaseAsk {
                tenant_limits: admit.tenant_limits,
                rpm: short_rpm.unsigned_abs(),
                tpm: short_tpm.unsigned_abs(),
                // Filled in by `handle` with what goes back.
                returned: LeaseReturn::default(),
            });
        }

        // Every check passed: take.
        let s = &mut self.state;
        if admit.count_request {
            if let Some(b) = &mut s.rpm {
                b.take(1);
            }
        }
        let tpm_taken = tokens > 0 && s.tpm.is_some();
        if let (true, Some(b)) = (tpm_taken, &mut s.tpm) {
            b.take(tokens);
        }
        s.lease.rpm = s.lease.rpm.saturating_sub(need_rpm);
        s.lease.tpm = s.lease.tpm.saturating_sub(need_tpm);
        let advanced = self.advance(&admit, tokens, now);
        let s = &mut self.state;
        let reservation_id = (admit.turn || tokens > 0).then(|| {
            let id = s.next_id;
            s.next_id = s.next_id.saturating_add(1);
            s.reservations.insert(
                id,
                Reservation {
                    tokens,
                    cost_micros: cost,
                    turn: admit.turn,
                    tpm_taken,
                    lease_taken: need_tpm > 0,
                    model: admit.model,
                    created_at_ms: now,
                    expires_at_ms: now.saturating_add(admit.hold_ms),
                },
            );
            id
        });
        // A reservation is stored before the answer; a plain request's
        // spend from the buckets may be stored just after it.
        if reservation_id.is_some() {
            self.dirty = true;
        } else {
            self.spent = true;
        }
        Outcome::Reply(Ok(LimiterResponse::Admitted(Admitted {
            reservation_id,
            rate_limit: self.tightest(),
            advanced,
        })))
    }

    /// Counts up to `admit.advance` more requests for the caller, once this
    /// one is taken: only for a plain request (no tokens, no slot), and at
    /// most [`ADVANCE_SHARE`]'s share of what the key's `rpm` bucket and
    /// its tenant lease have left, so a limit near its end is decided here
    /// request by request.
    fn advance(&mut self, admit: &Admit, tokens: u64, now: u64) -> u32 {
        if admit.advance == 0 || !admit.count_request || admit.turn || tokens > 0 {
            return 0;
        }
        let s = &mut self.state;
        // What a counter that has `left` may advance.
        let share = |left: u64| {
            if left < 2 * ADVANCE_SHARE {
                0
            } else {
                left / ADVANCE_SHARE
            }
        };
        let mut grant = u64::from(admit.advance);
        if let Some(b) = &s.rpm {
            grant = grant.min(share(b.available()));
        }
        let tenant_rpm = admit.tenant_limits.rpm.is_some();
        if tenant_rpm {
            let have = if s.lease.expires_at_ms > now {
                s.lease.rpm.max(0).unsigned_abs()
            } else {
                0
            };
            grant = grant.min(share(have));
        }
        if grant == 0 {
            return 0;
        }
        if let Some(b) = &mut s.rpm {
            b.take(grant);
        }
        if tenant_rpm {
            s.lease.rpm = s.lease.rpm.saturating_sub(signed(grant));
        }
        s.advanced = s.advanced.saturating_add(grant);
        u32::try_from(grant).unwrap_or(0)
    }

    /// Takes back `unspent` requests of an earlier advance: into the key's
    /// `rpm` bucket (never above its capacity) and the tenant lease while it
    /// lasts (a lease that is over was already settled with the ledger, so
    /// they are lost to it: the tenant is under-admitted, never over).
    fn give_back(&mut self, unspent: u32, admit: &Admit, now: u64) {
        if unspent == 0 {
            return;
        }
        let s = &mut self.state;
        if let Some(b) = &mut s.rpm {
            b.give(u64::from(unspent));
        }
        if admit.tenant_limits.rpm.is_some() && s.lease.expires_at_ms > now {
            s.lease.rpm = s.lease.rpm.saturating_add(i64::from(unspent));
        }
        s.given_back = s.given_back.saturating_add(u64::from(unspent));
        self.spent = true;
    }

    /// Adds settled (or expired) usage to both windows.
    fn charge(&mut self, tokens: u64, cost: u64) {
        for w in [&mut self.state.day, &mut self.state.month] {
            w.used_tokens = w.used_tokens.saturating_add(tokens);
            w.used_cost_micros = w.used_cost_micros.saturating_add(cost);
        }
    }

    /// Settles (or, with zero usage, releases) a reservation.
    fn settle(
        &mut self,
        id: u64,
        usage: TokenUsage,
        price: Option<Price>,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Settled {
        let cost = price.map(|p| p.cost_micros(usage));
        let actual = usage.total();
        let actual_cost = cost.unwrap_or(0);
        // The windows the estimate was charged to, if it expired.
        let (reservation, charged) = if let Some(r) = self.state.reservations.remove(&id) {
            (r, None)
        } else if let Some(pos) = self.state.expired.iter().position(|e| e.id == id) {
            match self.state.expired.remove(pos) {
                Some(e) => (e.reservation, Some((e.day_start_ms, e.month_start_ms))),
                None => return unknown(id, usage, cost),
            }
        } else {
            return unknown(id, usage, cost);
        };
        let windows = [
            (&mut self.state.day, charged.map(|c| c.0)),
            (&mut self.state.month, charged.map(|c| c.1)),
        ];
        for (w, charged_to) in windows {
            let (tokens_delta, cost_delta) = match charged_to {
                None => (i128::from(actual), i128::from(actual_cost)),
                // Expired: the estimate was charged; correct it to the actual
                // usage in the window it was charged to.
                Some(start) if start == w.start_ms => (
                    i128::from(actual) - i128::from(reservation.tokens),
                    i128::from(actual_cost) - i128::from(reservation.cost_micros),
                ),
                // That window is over: it keeps what it was charged.
                Some(_) => (0, 0),
            };
            w.used_tokens = add_signed(w.used_tokens, tokens_delta);
            w.used_cost_micros = add_signed(w.used_cost_micros, cost_delta);
        }
        // Per-minute tokens: refund or debit the difference from the estimate.
        let diff = i128::from(actual) - i128::from(reservation.tokens);
        let diff = i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX });
        if reservation.tpm_taken {
            if let Some(b) = &mut self.state.tpm {
                b.advance(b.rate, now);
                b.adjust(diff);
            }
        }
        if reservation.lease_taken {
            let lease = &mut self.state.lease;
            lease.tpm = lease.tpm.saturating_sub(diff);
            if lease.expires_at_ms <= now && lease.tpm > 0 {
                // A refund to a lease that is over goes back to the tenant.
                let back = lease.tpm.unsigned_abs();
                lease.tpm = 0;
                self.returning.tpm = self.returning.tpm.saturating_add(back);
            }
        }
        self.dirty = true;
        self.check_soft(now, effects);
        Settled {
            reservation_id: id,
            known: true,
            usage,
            cost_micros: cost,
        }
    }

    /// Marks every budget whose soft threshold the used amount has crossed.
    fn check_soft(&mut self, now: u64, effects: &mut Vec<Effect>) {
        let pct = u128::from(self.state.budget.soft_threshold_pct);
        for kind in BudgetKind::ALL {
            let Some(limit) = self.state.budget.limit(kind) else {
                continue;
            };
            let used = self.used(kind);
            let crossed = u128::from(used) * 100 >= u128::from(limit) * pct;
            let marked = self.state.soft_marks.iter().any(|m| m.budget == kind);
            if crossed && !marked {
                let mark = SoftMark {
                    budget: kind,
                    at_ms: now,
                    used,
                    limit,
                };
                self.state.soft_marks.push(mark.clone());
                effects.push(Effect::SoftThreshold(mark));
                self.dirty = true;
            }
        }
    }

    fn snapshot(&self, now: u64) -> LimiterSnapshot {
        let s = &self.state;
        let buckets = [(LimitKind::Rpm, &s.rpm), (LimitKind::Tpm, &s.tpm)]
            .into_iter()
            .filter_map(|(kind, b)| b.as_ref().map(|b| b.view(kind)))
            .collect();
        let reservations = s
            .reservations
            .iter()
            .map(|(id, r)| ReservationView {
                id: *id,
                tokens: r.tokens,
                cost_micros: r.cost_micros,
                turn: r.turn,
                model: r.model.clone(),
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect();
        let windows = [(Period::Day, &s.day), (Period::Month, &s.month)]
            .into_iter()
            .map(|(period, w)| WindowView {
                period,
                start_ms: w.start_ms,
                resets_at_ms: window_end(period, w.start_ms.max(now)),
                used_tokens: w.used_tokens,
                used_cost_micros: w.used_cost_micros,
            })
            .collect();
        let lease = (s.lease != Lease::default()).then_some(LeaseView {
            rpm: s.lease.rpm,
            tpm: s.lease.tpm,
            expires_at_ms: s.lease.expires_at_ms,
        });
        LimiterSnapshot {
            limits: s.limits,
            budget: s.budget,
            buckets,
            reservations,
            windows,
            soft_marks: s.soft_marks.clone(),
            lease,
            next_alarm_ms: s.alarm_at,
            advanced: s.advanced,
            given_back: s.given_back,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::calendar::{days_from_civil, DAY_MS};
    use super::super::ledger::{LedgerCore, LEASE_TTL_MS};
    use super::*;
    use protocol::limits::{Inspect, LedgerRequest, LedgerResponse, Release, Settle, MAX_ADVANCE};

    /// Midnight UTC of a date, in ms.
    fn at(year: i64, month: u32, day: u32) -> u64 {
        u64::try_from(days_from_civil(year, month, day)).unwrap() * DAY_MS
    }

    /// Noon of an ordinary day, far from any window boundary.
    fn noon() -> u64 {
        at(2026, 11, 18) + DAY_MS / 2
    }

    fn usage(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
        }
    }

    fn limits(rpm: Option<u32>, tpm: Option<u64>, concurrency: Option<u32>) -> Limits {
        Limits {
            rpm,
            tpm,
            concurrency,
        }
    }

    /// A search-like admit: one request, no tokens.
    fn request(limits: Limits) -> Admit {
        Admit {
            limits,
            budget: Budget::default(),
            tenant_limits: Limits::default(),
            count_request: true,
            estimate: TokenUsage::default(),
            model: None,
            price: None,
            turn: false,
            hold_ms: 60_000,
            advance: 0,
            unspent: 0,
        }
    }

    /// A chat-turn-like admit: a slot, a token estimate.
    fn turn(limits: Limits, output: u64) -> Admit {
        Admit {
            estimate: usage(0, output),
            turn: true,
            model: Some("@cf/meta/llama-3.3-70b-instruct-fp8-fast".into()),
            ..request(limits)
        }
    }

    fn reply(core: &mut LimiterCore, admit: &Admit, now: u64) -> LimiterResponse {
        match core.handle(LimiterRequest::Admit(admit.clone()), now).0 {
            Outcome::Reply(r) => r.unwrap(),
            Outcome::NeedLease(ask) => panic!("unexpected lease ask {ask:?}"),
        }
    }

    fn admitted(core: &mut LimiterCore, admit: &Admit, now: u64) -> Option<u64> {
        match reply(core, admit, now) {
            LimiterResponse::Admitted(a) => a.reservation_id,
            other => panic!("refused: {other:?}"),
        }
    }

    fn settle(core: &mut LimiterCore, id: u64, used: TokenUsage, price: Option<Price>, now: u64) {
        let request = LimiterRequest::Settle(Settle {
            reservation_id: id,
            usage: used,
            model: None,
            price,
        });
        match core.handle(request, now).0 {
            Outcome::Reply(Ok(LimiterResponse::Settled(s))) => assert!(s.known, "{s:?}"),
            other => panic!("{other:?}"),
        }
    }

    fn snapshot(core: &mut LimiterCore, now: u64) -> LimiterSnapshot {
        match core.handle(LimiterRequest::Inspect(Inspect {}), now).0 {
            Outcome::Reply(Ok(LimiterResponse::Snapshot(s))) => s,
            other => panic!("{other:?}"),
        }
    }

    fn day_used(core: &mut LimiterCore, now: u64) -> (u64, u64) {
        let s = snapshot(core, now);
        let w = s.windows.iter().find(|w| w.period == Period::Day).unwrap();
        (w.used_tokens, w.used_cost_micros)
    }

    #[test]
    fn exactly_rpm_requests_are_admitted_at_one_instant() {
        let mut core = LimiterCore::new();
        let admit = request(limits(Some(10), None, None));
        let replies: Vec<_> = (0..100).map(|_| reply(&mut core, &admit, noon())).collect();
        let ok = replies
            .iter()
            .filter(|r| matches!(r, LimiterResponse::Admitted(_)))
            .count();
        assert_eq!(ok, 10);
        for r in &replies[10..] {
            let LimiterResponse::RateLimited(r) = r else {
                panic!("{r:?}")
            };
            assert_eq!((r.limit, r.scope), (LimitKind::Rpm, LimitScope::Key));
            // The next token arrives 6 s later (10 a minute).
            assert_eq!(r.retry_after_secs, 6);
            assert_eq!(r.rate_limit.map(|i| (i.limit, i.remaining)), Some((10, 0)));
        }
    }

    #[test]
    fn a_plain_requests_spend_does_not_hold_its_answer_for_a_write() {
        let mut core = LimiterCore::new();
        let admit = request(limits(Some(10), None, None));
        // The first admit adopts the key's limits: stored before the answer.
        let (_, effects) = core.handle(LimiterRequest::Admit(admit.clone()), noon());
        assert_eq!(effects, vec![Effect::Persist]);
        // Later ones only spend from the bucket: stored soon after.
        let (outcome, effects) = core.handle(LimiterRequest::Admit(admit.clone()), noon() + 1);
        assert!(matches!(
            outcome,
            Outcome::Reply(Ok(LimiterResponse::Admitted(_)))
        ));
        assert_eq!(effects, vec![Effect::PersistSoon]);
        // A refusal changes nothing.
        for _ in 0..8 {
            core.handle(LimiterRequest::Admit(admit.clone()), noon() + 2);
        }
        let (_, effects) = core.handle(LimiterRequest::Admit(admit.clone()), noon() + 2);
        assert!(effects.is_empty(), "{effects:?}");
        // A turn's reservation is stored before its answer, and the spends
        // before it with it.
        let (_, effects) = core.handle(
            LimiterRequest::Admit(turn(limits(Some(10), Some(100_000), None), 10)),
            noon() + 60_000,
        );
        assert!(effects.contains(&Effect::Persist), "{effects:?}");
        assert!(!effects.contains(&Effect::PersistSoon), "{effects:?}");
    }

    #[test]
    fn the_rpm_bucket_refills_continuously() {
        let mut core = LimiterCore::new();
        let admit = request(limits(Some(10), None, None));
        let t0 = noon();
        for _ in 0..10 {
            admitted(&mut core, &admit, t0);
        }
        match reply(&mut core, &admit, t0 + 5_001) {
            LimiterResponse::RateLimited(r) => assert_eq!(r.retry_after_secs, 1, "999 ms left"),
            other => panic!("{other:?}"),
        }
        admitted(&mut core, &admit, t0 + 6_000);
        assert!(matches!(
            reply(&mut core, &admit, t0 + 6_000),
            LimiterResponse::RateLimited(_)
        ));
        // A whole minute later the bucket is full again, and not fuller.
        let later = t0 + 10 * 60_000;
        let ok = (0..20)
            .filter(|_| {
                matches!(
                    reply(&mut core, &admit, later),
                    LimiterResponse::Admitted(_)
                )
            })
            .count();
        assert_eq!(ok, 10);
    }

    #[test]
    fn admitted_reports_the_tightest_limit() {
        let mut core = LimiterCore::new();
        let mut admit = turn(limits(Some(10), Some(1_000), None), 500);
        admit.turn = false;
        let LimiterResponse::Admitted(a) = reply(&mut core, &admit, noon()) else {
            panic!()
        };
        // rpm has 9 of 10 left, tpm 500 of 1000: tpm is the tighter.
        let info = a.rate_limit.unwrap();
        assert_eq!(
            (
                info.limit_kind,
                info.limit,
                info.remaining,
                info.window_secs
            ),
            (LimitKind::Tpm, 1_000, 500, 60)
        );
        // 500 tokens at 1000 a minute: 30 s to be whole again.
        assert_eq!(info.reset_secs, 30);
    }

    #[test]
    fn tpm_settles_refund_and_debit_the_difference() {
        let mut core = LimiterCore::new();
        let lim = limits(None, Some(1_000), None);
        let t = noon();
        let first = admitted(&mut core, &turn(lim, 600), t).unwrap();
        assert!(matches!(
            reply(&mut core, &turn(lim, 600), t),
            LimiterResponse::RateLimited(RateLimited {
                limit: LimitKind::Tpm,
                ..
            })
        ));
        // Used 200 of the 600 reserved: 400 come back.
        settle(&mut core, first, usage(50, 150), None, t);
        let second = admitted(&mut core, &turn(lim, 600), t).unwrap();
        // Used 1500 of 600: the bucket (200 left) goes 900 into debt.
        settle(&mut core, second, usage(500, 1_000), None, t);
        let tpm = snapshot(&mut core, t).buckets[0].clone();
        assert_eq!((tpm.limit, tpm.level), (LimitKind::Tpm, -700));
        // One token needs 701 at 1000 a minute: 42.06 s, so 43.
        match reply(&mut core, &turn(lim, 1), t) {
            LimiterResponse::RateLimited(r) => assert_eq!(r.retry_after_secs, 43),
            other => panic!("{other:?}"),
        }
        admitted(&mut core, &turn(lim, 1), t + 42_060);
    }

    #[test]
    fn concurrency_slots_are_held_until_settle_or_release() {
        let mut core = LimiterCore::new();
        let lim = limits(None, None, Some(2));
        let t = noon();
        let a = admitted(&mut core, &turn(lim, 10), t).unwrap();
        let b = admitted(&mut core, &turn(lim, 10), t).unwrap();
        assert_ne!(a, b);
        match reply(&mut core, &turn(lim, 10), t) {
            LimiterResponse::RateLimited(r) => {
                assert_eq!((r.limit, r.retry_after_secs), (LimitKind::Concurrency, 1))
            }
            other => panic!("{other:?}"),
        }
        // Work that is not a turn needs no slot.
        admitted(&mut core, &request(lim), t);
        let (out, _) = core.handle(LimiterRequest::Release(Release { reservation_id: a }), t);
        assert_eq!(
            out,
            Outcome::Reply(Ok(LimiterResponse::Released(Released {
                reservation_id: a,
                known: true
            })))
        );
        let c = admitted(&mut core, &turn(lim, 10), t).unwrap();
        settle(&mut core, b, usage(1, 1), None, t);
        admitted(&mut core, &turn(lim, 10), t);
        assert!(matches!(
            reply(&mut core, &turn(lim, 10), t),
            LimiterResponse::RateLimited(_)
        ));
        settle(&mut core, c, usage(1, 1), None, t);
        // A released reservation used nothing; the settled ones used 2 each.
        assert_eq!(day_used(&mut core, t).0, 4);
    }

    #[test]
    fn a_lost_settle_expires_frees_the_slot_and_is_charged() {
        let mut core = LimiterCore::new();
        let lim = limits(None, None, Some(1));
        let t = noon();
        let mut admit = turn(lim, 300);
        admit.hold_ms = 30_000;
        let (out, effects) = core.handle(LimiterRequest::Admit(admit.clone()), t);
        let Outcome::Reply(Ok(LimiterResponse::Admitted(a))) = out else {
            panic!()
        };
        let id = a.reservation_id.unwrap();
        assert_eq!(effects, vec![Effect::Persist, Effect::SetAlarm(t + 30_000)]);
        assert_eq!(core.poll_timeout(), Some(t + 30_000));
        assert!(matches!(
            reply(&mut core, &admit, t + 29_999),
            LimiterResponse::RateLimited(_)
        ));
        let effects = core.on_alarm(t + 30_000);
        assert!(effects.contains(&Effect::Persist), "{effects:?}");
        assert!(!effects.iter().any(|e| matches!(e, Effect::SetAlarm(_))));
        assert_eq!(core.poll_timeout(), None);
        // The estimate is charged, since the work may have run.
        assert_eq!(day_used(&mut core, t + 30_000).0, 300);
        let next = admitted(&mut core, &admit, t + 30_000).unwrap();
        assert_ne!(next, id, "ids are never reused");
        // A settle that arrives late corrects the charge to the actual usage.
        settle(&mut core, id, usage(20, 80), None, t + 31_000);
        assert_eq!(day_used(&mut core, t + 31_000).0, 100);
        // Only once.
        let (out, effects) = core.handle(
            LimiterRequest::Settle(Settle {
                reservation_id: id,
                usage: usage(1, 1),
                model: None,
                price: None,
            }),
            t + 31_000,
        );
        assert!(matches!(
            out,
            Outcome::Reply(Ok(LimiterResponse::Settled(Settled { known: false, .. })))
        ));
        assert!(!effects.contains(&Effect::Persist));
        assert_eq!(day_used(&mut core, t + 31_000).0, 100);
    }

    #[test]
    fn a_budget_refusal_names_the_budget() {
        let mut core = LimiterCore::new();
        let t = noon();
        let mut admit = turn(Limits::default(), 600);
        admit.budget.tokens_per_day = Some(1_000);
        let first = admitted(&mut core, &admit, t).unwrap();
        let mut second = admit.clone();
        second.estimate = usage(100, 400);
        match reply(&mut core, &second, t) {
            LimiterResponse::BudgetExceeded(b) => assert_eq!(
                b,
                BudgetExceeded {
                    budget: BudgetKind::TokensPerDay,
                    scope: LimitScope::Key,
                    limit: 1_000,
                    used: 0,
                    reserved: 600,
                    requested: 500,
                    resets_at_ms: at(2026, 11, 19),
                }
            ),
            other => panic!("{other:?}"),
        }
        // Exactly up to the limit is allowed.
        second.estimate = usage(100, 300);
        admitted(&mut core, &second, t);
        settle(&mut core, first, usage(0, 100), None, t);
        assert_eq!(day_used(&mut core, t).0, 100);
    }

    #[test]
    fn cost_budgets_use_the_price_and_name_the_month() {
        let mut core = LimiterCore::new();
        let t = noon();
        let price = Price {
            input_per_million_micros: 293_000,
            output_per_million_micros: 2_253_000,
        };
        let mut admit = turn(Limits::default(), 1_000);
        admit.estimate = usage(1_000, 1_000);
        admit.price = Some(price);
        // 293 + 2253 = 2546 micro-dollars an admit; room for 3 of them.
        admit.budget.cost_per_month_micros = Some(8_000);
        let ids: Vec<u64> = (0..3)
            .map(|_| admitted(&mut core, &admit, t).unwrap())
            .collect();
        match reply(&mut core, &admit, t) {
            LimiterResponse::BudgetExceeded(b) => {
                assert_eq!(b.budget, BudgetKind::CostPerMonth);
                assert_eq!((b.reserved, b.requested), (3 * 2_546, 2_546));
                assert_eq!(b.resets_at_ms, at(2026, 12, 1));
            }
            other => panic!("{other:?}"),
        }
        // Actual usage at the model's price: 10 input tokens cost 2.93
        // micro-dollars, rounded up to 3.
        settle(&mut core, ids[0], usage(10, 0), Some(price), t);
        assert_eq!(day_used(&mut core, t), (10, 3));
        admitted(&mut core, &admit, t);
    }

    #[test]
    fn settles_may_exceed_the_estimate_then_the_budget_refuses() {
        let mut core = LimiterCore::new();
        let t = noon();
        let mut admit = turn(Limits::default(), 100);
        admit.budget.tokens_per_day = Some(1_000);
        let a = admitted(&mut core, &admit, t).unwrap();
        let b = admitted(&mut core, &admit, t).unwrap();
        settle(&mut core, a, usage(0, 700), None, t);
        // Over by what b used beyond its estimate, never more.
        settle(&mut core, b, usage(0, 400), None, t);
        assert_eq!(day_used(&mut core, t).0, 1_100);
        let mut small = admit.clone();
        small.estimate = usage(0, 1);
        assert!(matches!(
            reply(&mut core, &small, t),
            LimiterResponse::BudgetExceeded(_)
        ));
    }

    #[test]
    fn windows_roll_over_at_utc_midnight() {
        let mut core = LimiterCore::new();
        let midnight = at(2026, 11, 30);
        let mut admit = turn(Limits::default(), 1_000);
        admit.budget.tokens_per_day = Some(1_000);
        admit.budget.tokens_per_month = Some(10_000);
        let id = admitted(&mut core, &admit, midnight - 10).unwrap();
        settle(&mut core, id, usage(0, 1_000), None, midnight - 5);
        match reply(&mut core, &admit, midnight - 1) {
            LimiterResponse::BudgetExceeded(b) => {
                assert_eq!(
                    (b.budget, b.used, b.resets_at_ms),
                    (BudgetKind::TokensPerDay, 1_000, midnight)
                )
            }
            other => panic!("{other:?}"),
        }
        admitted(&mut core, &admit, midnight);
        let s = snapshot(&mut core, midnight);
        let day = s.windows.iter().find(|w| w.period == Period::Day).unwrap();
        let month = s
            .windows
            .iter()
            .find(|w| w.period == Period::Month)
            .unwrap();
        assert_eq!((day.start_ms, day.used_tokens), (midnight, 0));
        // The month goes on: November still counts the day before.
        assert_eq!(
            (month.start_ms, month.used_tokens),
            (at(2026, 11, 1), 1_000)
        );
    }

    #[test]
    fn month_windows_roll_over_at_month_end() {
        let mut core = LimiterCore::new();
        // A leap year's February.
        let march = at(2024, 3, 1);
        let mut admit = turn(Limits::default(), 500);
        admit.budget.tokens_per_month = Some(500);
        let id = admitted(&mut core, &admit, at(2024, 2, 29)).unwrap();
        settle(&mut core, id, usage(0, 500), None, at(2024, 2, 29) + 1);
        match reply(&mut core, &admit, march - 1) {
            LimiterResponse::BudgetExceeded(b) => {
                assert_eq!(
                    (b.budget, b.resets_at_ms),
                    (BudgetKind::TokensPerMonth, march)
                )
            }
            other => panic!("{other:?}"),
        }
        admitted(&mut core, &admit, march);
        // And at the year's end.
        let mut core = LimiterCore::new();
        let id = admitted(&mut core, &admit, at(2026, 12, 31)).unwrap();
        settle(&mut core, id, usage(0, 500), None, at(2026, 12, 31));
        match reply(&mut core, &admit, at(2027, 1, 1) - 1) {
            LimiterResponse::BudgetExceeded(b) => assert_eq!(b.resets_at_ms, at(2027, 1, 1)),
            other => panic!("{other:?}"),
        }
        admitted(&mut core, &admit, at(2027, 1, 1));
    }

    #[test]
    fn soft_thresholds_are_marked_once_per_window() {
        let mut core = LimiterCore::new();
        let t = noon();
        let mut admit = turn(Limits::default(), 10);
        admit.budget.tokens_per_day = Some(1_000);
        let spend = |core: &mut LimiterCore, tokens: u64, now: u64| {
            let id = admitted(core, &admit, now).unwrap();
            let request = LimiterRequest::Settle(Settle {
                reservation_id: id,
                usage: usage(0, tokens),
                model: None,
                price: None,
            });
            let (_, effects) = core.handle(request, now);
            effects
                .into_iter()
                .filter_map(|e| match e {
                    Effect::SoftThreshold(m) => Some(m),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(spend(&mut core, 799, t), vec![]);
        let marks = spend(&mut core, 1, t);
        assert_eq!(
            marks,
            vec![SoftMark {
                budget: BudgetKind::TokensPerDay,
                at_ms: t,
                used: 800,
                limit: 1_000
            }]
        );
        assert_eq!(spend(&mut core, 50, t), vec![]);
        assert_eq!(snapshot(&mut core, t).soft_marks.len(), 1);
        // A new day clears the mark.
        let tomorrow = at(2026, 11, 19);
        assert_eq!(snapshot(&mut core, tomorrow).soft_marks, vec![]);
        assert_eq!(spend(&mut core, 900, tomorrow).len(), 1);
    }

    #[test]
    fn invalid_admits_and_unknown_reservations() {
        let mut core = LimiterCore::new();
        let mut admit = request(limits(Some(10), None, None));
        admit.hold_ms = 0;
        match core.handle(LimiterRequest::Admit(admit), noon()).0 {
            Outcome::Reply(Err(e)) => assert_eq!(e.code, ErrorCode::InvalidRequest),
            other => panic!("{other:?}"),
        }
        let (out, effects) = core.handle(
            LimiterRequest::Release(Release { reservation_id: 7 }),
            noon(),
        );
        assert_eq!(
            out,
            Outcome::Reply(Ok(LimiterResponse::Released(Released {
                reservation_id: 7,
                known: false
            })))
        );
        assert!(!effects.contains(&Effect::Persist));
    }

    /// Drives an admit through the lease protocol as the shell will.
    fn admit_leased(
        core: &mut LimiterCore,
        ledger: &mut LedgerCore,
        admit: &Admit,
        now: u64,
    ) -> LimiterResponse {
        for _ in 0..2 {
            match core.handle(LimiterRequest::Admit(admit.clone()), now).0 {
                Outcome::Reply(r) => return r.unwrap(),
                Outcome::NeedLease(ask) => {
                    let grant = match ledger.handle(LedgerRequest::Lease(ask), now).0 {
                        Ok(LedgerResponse::Lease(g)) => g,
                        other => panic!("{other:?}"),
                    };
                    core.apply_grant(grant, now);
                }
            }
        }
        panic!("a grant did not settle the admit")
    }

    /// The advance an admit got (panics on a refusal).
    fn advanced(core: &mut LimiterCore, admit: &Admit, now: u64) -> u32 {
        match reply(core, admit, now) {
            LimiterResponse::Admitted(a) => a.advanced,
            other => panic!("refused: {other:?}"),
        }
    }

    fn rpm_level(core: &LimiterCore) -> i64 {
        core.state().rpm.as_ref().unwrap().whole()
    }

    #[test]
    fn an_advance_is_a_share_of_what_is_left() {
        let t = noon();
        let mut ask = request(limits(Some(1_000_000), None, None));
        ask.advance = MAX_ADVANCE;
        let mut core = LimiterCore::new();
        assert_eq!(advanced(&mut core, &ask, t), MAX_ADVANCE);
        // This request and the advance are both counted at once.
        assert_eq!(rpm_level(&core), 1_000_000 - 1 - i64::from(MAX_ADVANCE));

        // 99 left after this one: a sixteenth of it.
        let mut ask = request(limits(Some(100), None, None));
        ask.advance = MAX_ADVANCE;
        let mut core = LimiterCore::new();
        assert_eq!(advanced(&mut core, &ask, t), 6);
        assert_eq!(rpm_level(&core), 100 - 1 - 6);

        // Near the limit nothing is advanced: every request is decided here.
        let mut ask = request(limits(Some(10), None, None));
        ask.advance = MAX_ADVANCE;
        let mut core = LimiterCore::new();
        let mut admitted = 0;
        for _ in 0..100 {
            match reply(&mut core, &ask, t) {
                LimiterResponse::Admitted(a) => {
                    assert_eq!(a.advanced, 0);
                    admitted += 1;
                }
                LimiterResponse::RateLimited(r) => assert_eq!(r.limit, LimitKind::Rpm),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 10);

        // Fewer than 32 left (19 here): nothing is advanced.
        let mut ask = request(limits(Some(20), None, None));
        ask.advance = MAX_ADVANCE;
        assert_eq!(advanced(&mut LimiterCore::new(), &ask, t), 0);

        // Without any `rpm` (a key with only other limits) there is nothing
        // to count: the whole advance is granted.
        let mut ask = request(limits(None, Some(1_000), None));
        ask.advance = 5;
        assert_eq!(advanced(&mut LimiterCore::new(), &ask, t), 5);
    }

    #[test]
    fn work_that_reserves_gets_no_advance() {
        let t = noon();
        let mut core = LimiterCore::new();
        let mut ask = turn(limits(Some(1_000), Some(100_000), Some(4)), 100);
        ask.advance = MAX_ADVANCE;
        assert_eq!(advanced(&mut core, &ask, t), 0);
        assert_eq!(rpm_level(&core), 999);
    }

    #[test]
    fn callers_spending_advances_are_admitted_exactly_the_limit() {
        // Four callers (gateway isolates) at one instant, each spending what
        // it was advanced before it asks again: together they get exactly
        // the limit, whatever the limit.
        for limit in [1_u32, 10, 31, 32, 100, 600, 1_000, 5_000] {
            let t = noon();
            let mut core = LimiterCore::new();
            let mut pools = [0_u32; 4];
            let (mut spent, mut refusals) = (0_u32, 0);
            let mut i = 0;
            while refusals < 8 {
                let caller = i % pools.len();
                i += 1;
                if pools[caller] > 0 {
                    pools[caller] -= 1;
                    spent += 1;
                    continue;
                }
                let mut ask = request(limits(Some(limit), None, None));
                ask.advance = MAX_ADVANCE;
                match reply(&mut core, &ask, t) {
                    LimiterResponse::Admitted(a) => {
                        spent += 1;
                        pools[caller] += a.advanced;
                    }
                    LimiterResponse::RateLimited(_) => refusals += 1,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(pools, [0; 4], "limit {limit}");
            assert_eq!(spent, limit, "limit {limit}");
        }
    }

    #[test]
    fn unspent_requests_come_back_once() {
        let t = noon();
        let mut core = LimiterCore::new();
        let mut ask = request(limits(Some(100), None, None));
        ask.advance = MAX_ADVANCE;
        assert_eq!(advanced(&mut core, &ask, t), 6);
        assert_eq!(rpm_level(&core), 93);
        // The caller spent 2 of the 6 and gives 4 back with its next admit.
        let mut next = request(limits(Some(100), None, None));
        next.unspent = 4;
        assert_eq!(advanced(&mut core, &next, t), 0);
        assert_eq!(rpm_level(&core), 93 + 4 - 1);
        let seen = snapshot(&mut core, t);
        assert_eq!((seen.advanced, seen.given_back), (6, 4));
        // Never above the capacity.
        let mut core = LimiterCore::new();
        next.unspent = MAX_ADVANCE;
        advanced(&mut core, &next, t);
        assert_eq!(rpm_level(&core), 99);
        // Sent again after a lease ask, an admit gives nothing back twice.
        match once(LimiterRequest::Admit(next.clone())) {
            LimiterRequest::Admit(a) => assert_eq!(a, Admit { unspent: 0, ..next }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_advance_under_a_tenant_limit_comes_from_the_lease() {
        let t = noon();
        let mut core = LimiterCore::new();
        let mut ledger = LedgerCore::default();
        let mut ask = request(Limits::default());
        ask.tenant_limits = limits(Some(1_000), None, None);
        ask.advance = MAX_ADVANCE;
        // The first admit leases a tenth of the tenant's 1,000 (100), takes
        // one and is advanced a sixteenth of the other 99.
        let LimiterResponse::Admitted(a) = admit_leased(&mut core, &mut ledger, &ask, t) else {
            panic!("refused")
        };
        assert_eq!(a.advanced, 6);
        assert_eq!(core.state().lease.rpm, 100 - 1 - 6);
        // Given back while the lease lasts, they are the lease's again.
        let mut back = ask.clone();
        back.advance = 0;
        back.unspent = 6;
        admit_leased(&mut core, &mut ledger, &back, t);
        assert_eq!(core.state().lease.rpm, 100 - 1 - 6 + 6 - 1);
    }

    #[test]
    fn a_key_spends_its_lease_locally() {
        let mut core = LimiterCore::new();
        let mut ledger = LedgerCore::default();
        let mut admit = request(Limits::default());
        admit.tenant_limits = limits(Some(100), None, None);
        let t = noon();
        let ask = match core.handle(LimiterRequest::Admit(admit.clone()), t).0 {
            Outcome::NeedLease(ask) => ask,
            other => panic!("{other:?}"),
        };
        assert_eq!((ask.rpm, ask.tpm), (1, 0));
        let grant = match ledger.handle(LedgerRequest::Lease(ask), t).0 {
            Ok(LedgerResponse::Lease(g)) => g,
            other => panic!("{other:?}"),
        };
        // A lease is a tenth of the tenant's limit.
        assert_eq!((grant.rpm, grant.limited), (10, None));
        assert_eq!(grant.expires_at_ms, t + LEASE_TTL_MS);
        core.apply_grant(grant, t);
        for _ in 0..10 {
            assert!(matches!(
                reply(&mut core, &admit, t),
                LimiterResponse::Admitted(_)
            ));
        }
        assert!(matches!(
            core.handle(LimiterRequest::Admit(admit.clone()), t).0,
            Outcome::NeedLease(_)
        ));
    }

    #[test]
    fn tenant_totals_hold_across_keys() {
        let mut ledger = LedgerCore::default();
        let mut keys: Vec<LimiterCore> = (0..3).map(|_| LimiterCore::new()).collect();
        let mut admit = request(limits(Some(1_000), None, None));
        admit.tenant_limits = limits(Some(25), None, None);
        let t = noon();
        let mut ok = 0;
        let mut tenant_refusals = 0;
        for round in 0..40 {
            let key = &mut keys[round % 3];
            match admit_leased(key, &mut ledger, &admit, t) {
                LimiterResponse::Admitted(_) => ok += 1,
                LimiterResponse::RateLimited(r) => {
                    assert_eq!((r.limit, r.scope), (LimitKind::Rpm, LimitScope::Tenant));
                    assert!(r.retry_after_secs >= 1);
                    tenant_refusals += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        // At one instant the tenant admits exactly its capacity in total.
        assert_eq!((ok, tenant_refusals), (25, 15));
    }

    #[test]
    fn unused_leases_go_back_to_the_tenant() {
        let mut ledger = LedgerCore::default();
        let mut core = LimiterCore::new();
        let mut admit = turn(Limits::default(), 100);
        admit.turn = false;
        admit.tenant_limits = limits(None, Some(10_000), None);
        let t = noon();
        let id = match admit_leased(&mut core, &mut ledger, &admit, t) {
            LimiterResponse::Admitted(a) => a.reservation_id.unwrap(),
            other => panic!("{other:?}"),
        };
        // Lent 1000 (a tenth), spent 100 of them.
        assert_eq!(ledger.state().tpm.as_ref().unwrap().whole(), 9_000);
        // Used 40 of the 100: the lease (900 left) gets 60 back.
        settle(&mut core, id, usage(10, 30), None, t);
        let lease = snapshot(&mut core, t).lease.unwrap();
        assert_eq!(lease.tpm, 960);
        assert_eq!(core.poll_timeout(), Some(t + LEASE_TTL_MS));
        let effects = core.on_alarm(t + LEASE_TTL_MS);
        let back = effects
            .iter()
            .find_map(|e| match e {
                Effect::ReturnLease(r) => Some(*r),
                _ => None,
            })
            .unwrap();
        assert_eq!((back.rpm, back.tpm), (0, 960));
        let (out, _) = ledger.handle(LedgerRequest::Return(back), t + LEASE_TTL_MS);
        assert!(out.is_ok());
        // Given back once: the lease holds nothing more to return.
        assert_eq!(core.poll_timeout(), None);
        assert!(!core
            .on_alarm(t + 2 * LEASE_TTL_MS)
            .iter()
            .any(|e| matches!(e, Effect::ReturnLease(_))));
        // 9000 + 10 s of refill (1666) + 960 returned, capped at 10,000.
        assert_eq!(ledger.state().tpm.as_ref().unwrap().whole(), 10_000);
    }

    #[test]
    fn a_tenant_refusal_is_remembered_until_its_retry() {
        let mut ledger = LedgerCore::default();
        let mut a = LimiterCore::new();
        let mut b = LimiterCore::new();
        let mut admit = request(Limits::default());
        admit.tenant_limits = limits(Some(1), None, None);
        let t = noon();
        assert!(matches!(
            admit_leased(&mut a, &mut ledger, &admit, t),
            LimiterResponse::Admitted(_)
        ));
        match admit_leased(&mut b, &mut ledger, &admit, t) {
            LimiterResponse::RateLimited(r) => {
                assert_eq!(
                    (r.limit, r.scope, r.retry_after_secs),
                    (LimitKind::Rpm, LimitScope::Tenant, 60)
                )
            }
            other => panic!("{other:?}"),
        }
        // Without asking the ledger again (reply() panics on an ask).
        match reply(&mut b, &admit, t + 30_000) {
            LimiterResponse::RateLimited(r) => assert_eq!(r.retry_after_secs, 30),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            admit_leased(&mut b, &mut ledger, &admit, t + 60_000),
            LimiterResponse::Admitted(_)
        ));
    }

    #[test]
    fn state_round_trips_and_restores() {
        let mut core = LimiterCore::new();
        let mut ledger = LedgerCore::default();
        let t = noon();
        let mut admit = turn(limits(Some(5), Some(2_000), Some(3)), 300);
        admit.budget.tokens_per_day = Some(5_000);
        admit.tenant_limits = limits(Some(50), None, None);
        let mut ids = Vec::new();
        for _ in 0..3 {
            if let LimiterResponse::Admitted(a) = admit_leased(&mut core, &mut ledger, &admit, t) {
                ids.push(a.reservation_id.unwrap());
            }
        }
        settle(&mut core, ids[0], usage(100, 500), None, t);
        let json = serde_json::to_string(core.state()).unwrap();
        let back: LimiterState = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, core.state());
        let mut restored = LimiterCore::restore(back);
        let ledger_json = serde_json::to_string(ledger.state()).unwrap();
        let mut ledger2 = LedgerCore::restore(serde_json::from_str(&ledger_json).unwrap());
        // The restored pair answers a sequence of requests exactly as the
        // original does.
        for step in 0..8u64 {
            let now = t + step * 7_000;
            let x = admit_leased(&mut core, &mut ledger, &admit, now);
            let y = admit_leased(&mut restored, &mut ledger2, &admit, now);
            assert_eq!(x, y, "step {step}");
        }
        assert_eq!(
            snapshot(&mut core, t + 60_000),
            snapshot(&mut restored, t + 60_000)
        );
    }
}
