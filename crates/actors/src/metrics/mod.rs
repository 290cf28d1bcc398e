//! Request metrics, per tenant: [`SHARDS`](protocol::metrics::SHARDS)
//! objects of the `RateLimiter` class (`${tenantId}:metrics:<n>`, the
//! class's third role beside a key's limiter and the tenant's ledger, so
//! the deployments need no new binding), each holding 5-minute cells per
//! route for a day.
//!
//! - [`core`]: the pure core (cells in memory, what to store, the windows),
//!   natively tested with a manual clock;
//! - [`store`]: its SQLite table;
//! - [`handle`]: what the gateway uses to record and to read.

pub mod core;
pub mod handle;
pub mod store;

pub use handle::MetricsHandle;

/// The resource part of a metrics object's name: `metrics:<shard>`.
pub fn resource(shard: u32) -> String {
    format!("metrics:{shard}")
}
