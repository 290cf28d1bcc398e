//! Sends what model calls used to the tenant's ledger, priced with the
//! tenant's price table (the one I/O helper every actor that calls a model
//! shares; the records themselves are [`protocol::usage`]).

use super::handle::LedgerHandle;
use crate::error::ActorError;
use protocol::calendar::day_of_ms;
use protocol::limits::{PriceTable, TokenUsage};
use protocol::usage::{UsageRecord, MAX_RECORDS};
use protocol::{RequestId, TenantId};
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

/// The tenant's prices (its settings, as the isolate holds them: see
/// [`crate::coordinator::settings`]); the defaults when the coordinator
/// cannot answer, which is logged.
pub async fn prices(env: &Env, tenant: &TenantId, request_id: &RequestId) -> PriceTable {
    match crate::coordinator::tenant_settings(env, tenant, request_id).await {
        Ok(settings) => settings.prices(),
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
