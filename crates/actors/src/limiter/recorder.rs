//! Sends what model calls used to the tenant's ledger, priced with the
//! tenant's price table (the one I/O helper every actor that calls a model
//! shares; the records themselves are [`protocol::usage`]).

use super::handle::LedgerHandle;
use crate::error::ActorError;
use crate::ports::{Clock, SystemClock};
use crate::CoordinatorHandle;
use protocol::calendar::day_of_ms;
use protocol::limits::{PriceTable, TokenUsage};
use protocol::usage::{UsageRecord, MAX_RECORDS};
use protocol::{RequestId, TenantId};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// What one caller's calls of one model used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// The caller ([`protocol::usage::caller_of`]).
    pub caller: String,
    /// The model that served the calls.
    pub model: String,
    /// How many requests.
    pub requests: u64,
    /// Their tokens.
    pub usage: TokenUsage,
}

/// How long an isolate reuses a tenant's prices: a price change reaches the
/// usage records within this time.
pub const PRICES_TTL_MS: u64 = 2_000;

thread_local! {
    /// Each tenant's prices and when they were read (the isolate's one
    /// thread).
    static PRICES: RefCell<HashMap<TenantId, (PriceTable, u64)>> = RefCell::new(HashMap::new());
}

/// The tenant's prices (its coordinator's settings, reused for
/// [`PRICES_TTL_MS`]; the defaults when the coordinator cannot answer, which
/// is logged and not kept).
pub async fn prices(env: &Env, tenant: &TenantId, request_id: &RequestId) -> PriceTable {
    let now = SystemClock.now_ms();
    let kept = PRICES.with(|p| {
        p.borrow()
            .get(tenant)
            .filter(|(_, at)| now.saturating_sub(*at) < PRICES_TTL_MS)
            .map(|(table, _)| table.clone())
    });
    if let Some(table) = kept {
        return table;
    }
    let record = match CoordinatorHandle::new(env, tenant) {
        Ok(c) => c.get_tenant(request_id).await,
        Err(e) => Err(e),
    };
    match record {
        Ok(r) => {
            let table = r.settings.prices();
            PRICES.with(|p| {
                let mut p = p.borrow_mut();
                // Bounded: an isolate serves few tenants, but never grows
                // past a handful of entries of stale ones.
                p.retain(|_, (_, at)| now.saturating_sub(*at) < PRICES_TTL_MS);
                p.insert(tenant.clone(), (table.clone(), now));
            });
            table
        }
        Err(e) => {
            worker::console_warn!("usage: the tenant's prices are unavailable, defaults used: {e}");
            PriceTable::default()
        }
    }
}

/// The records of `used` on the day of `now_ms`, priced by `prices`.
pub fn records(used: &[Used], now_ms: u64, prices: &PriceTable) -> Vec<UsageRecord> {
    let day = day_of_ms(now_ms);
    used.iter()
        .map(|u| UsageRecord::new(day, &u.caller, &u.model, u.requests, u.usage, prices))
        .collect()
}

/// Records `used` at the tenant's ledger, priced by `prices`.
pub async fn record(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    now_ms: u64,
    used: &[Used],
    prices: &PriceTable,
) -> Result<(), ActorError> {
    let ledger = LedgerHandle::new(env, tenant)?;
    for batch in records(used, now_ms, prices).chunks(MAX_RECORDS) {
        ledger.record_usage(request_id, batch.to_vec()).await?;
    }
    Ok(())
}
