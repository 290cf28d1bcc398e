//! `RateLimiter`: one per key (`${tenantId}:limiter:<keyId>`, and one per
//! client address for anonymous traffic), and the tenant ledger behind them
//! (`${tenantId}:limiter`).
//!
//! - [`core`]: a key's limiter (pure): `rpm` and `tpm` token buckets,
//!   concurrent turns, reservations and their expiry, UTC day and month
//!   budgets, soft thresholds, and the key's side of the tenant lease;
//! - [`ledger`]: the tenant's side of the lease (pure);
//! - [`bucket`]: the exact integer token bucket both use;
//! - [`calendar`]: UTC day and month windows.
//!
//! - [`relay`]: the session registry reports the ledger takes with turns'
//!   usage and passes on to the coordinator together (pure);
//! - [`object`]: the `RateLimiter` Durable Object, the shell of both roles;
//! - [`handle`]: typed handles, [`LimiterHandle`] and [`LedgerHandle`].
//!
//! # Tenant totals without one hot object: leases
//!
//! Enforcing a tenant's `rpm` / `tpm` in one object per tenant would put that
//! object on every request of every key. Instead each key's limiter holds a
//! **lease**: a slice of the tenant's capacity, taken out of the tenant's
//! bucket by the ledger, which the key spends locally.
//!
//! - A key asks only when its lease runs short for an admit
//!   ([`core::Outcome::NeedLease`]); the ledger lends the need, or more: up
//!   to `L = max(1, limit / 10)` ([`ledger::lease_size`]) while its bucket has
//!   it. It lends all of the need or nothing: a refusal names the tenant
//!   limit and when to retry, and the key answers 429 with `scope: tenant`
//!   until then without asking again.
//! - A lease lasts 10 s ([`ledger::LEASE_TTL_MS`]); its unused part then goes
//!   back to the tenant's bucket, with the key's next ask or, for a key that
//!   went quiet, from its alarm ([`core::Effect::ReturnLease`]). It goes back
//!   at most once: a lost return under-admits the tenant until its bucket
//!   refills, never over-admits. A settle above the estimate leaves the
//!   lease in debt, paid from the next grant.
//!
//! **Ledger load.** One ask per `L` admits of a busy key, plus at most one
//! ask and one return per key per 10 s of activity: at a tenant's full rate
//! about `limit / L = 10` asks a minute plus two per active key per 10 s,
//! however many requests the keys send. With `rpm: 60000` (1,000 requests a
//! second) that is some 10 ledger calls a minute instead of 60,000.
//!
//! **How far over the tenant total.** Everything admitted under a tenant
//! limit was taken from the tenant's bucket first, so the bucket's own bound
//! holds (at most the capacity plus the refill in any interval, as for a
//! single object), except for capacity taken *before* an interval and spent
//! inside it: the unused leases outstanding at its start. That is at most
//! `K × L` for `K` keys holding a lease (each holds at most one lease of
//! `max(L, its last need)`), and never more than was lent in the last 10 s.
//! Example: tenant `rpm: 600`, so `L = 60`; with 3 active keys a minute can
//! see at most 180 requests more than one shared bucket would allow.
//!
//! **How far under.** Capacity sitting in other keys' unused leases is not
//! available to a key that runs short: up to `(K − 1) × L` for at most 10 s,
//! until those leases end and their unused part goes back. A smaller `L`
//! tightens both bounds at the cost of more ledger calls.
//!
//! Not leased (yet): tenant `concurrency` and the tenant's budgets. Both
//! need the ledger to count reservations across keys; the same scheme
//! applies (a budget lease is a slice of the window's remainder, never
//! refilled before the window rolls over, so it cannot overshoot at all).

pub mod admission;
pub mod bucket;
pub mod calendar;
pub mod core;
mod handle;
pub mod ledger;
mod object;
pub mod recorder;
pub mod relay;
mod usage;

pub use self::core::{Effect, LimiterCore, LimiterState, Outcome};
pub use handle::{admit_applied, Admission, LedgerHandle, LimitedBy, LimiterHandle};
pub use ledger::{LedgerCore, LedgerState};
pub use object::RateLimiter;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "RATE_LIMITERS";

/// The resource part of a key limiter's name (`${tenantId}:limiter:<keyId>`)
/// and the whole of the tenant ledger's (`${tenantId}:limiter`).
pub const RESOURCE: &str = "limiter";
