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
    /// What they cost in micro-dollars, when the caller fixed it (a chat
    /// turn: what its `done` event reported, priced with the settings the
    /// turn read); `None`: priced by the tenant's prices when recorded.
    pub cost_micros: Option<u64>,
}

/// How long an actor gathers usage before it writes it to the ledger: a
/// busy `IngestQueue` sends one record batch a second, not one per search.
pub const FLUSH_AFTER_MS: u64 = 1_000;

/// Usage gathered in an actor's memory until it is written: summed per
/// caller and model, so a batch holds at most one record for each. Records
/// still here when the isolate is evicted are lost (at most
/// [`FLUSH_AFTER_MS`] of them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UsageBuffer {
    pending: Vec<Used>,
}

impl UsageBuffer {
    /// Adds `used`; true when the buffer was empty (the caller then arranges
    /// a flush in [`FLUSH_AFTER_MS`]).
    pub fn add(&mut self, used: Used) -> bool {
        let was_empty = self.pending.is_empty();
        match self.pending.iter_mut().find(|u| {
            u.caller == used.caller
                && u.model == used.model
                && u.cost_micros.is_some() == used.cost_micros.is_some()
        }) {
            Some(u) => {
                u.requests = u.requests.saturating_add(used.requests);
                u.cost_micros = u
                    .cost_micros
                    .zip(used.cost_micros)
                    .map(|(a, b)| a.saturating_add(b));
                u.usage.input_tokens = u.usage.input_tokens.saturating_add(used.usage.input_tokens);
                u.usage.output_tokens = u
                    .usage
                    .output_tokens
                    .saturating_add(used.usage.output_tokens);
            }
            None => self.pending.push(used),
        }
        was_empty
    }

    /// Everything gathered, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<Used> {
        std::mem::take(&mut self.pending)
    }
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

/// The records of `used` on the day of `now_ms`, priced by `prices`
/// unless their cost is fixed.
pub fn records(used: &[Used], now_ms: u64, prices: &PriceTable) -> Vec<UsageRecord> {
    let day = day_of_ms(now_ms);
    used.iter()
        .map(|u| {
            let mut record =
                UsageRecord::new(day, &u.caller, &u.model, u.requests, u.usage, prices);
            if let Some(cost) = u.cost_micros {
                record.cost_micros = cost;
            }
            record
        })
        .collect()
}

/// Records `used` at the tenant's ledger, priced by `prices`, and hands
/// `sessions` (registry reports, at most
/// [`protocol::usage::MAX_SESSION_REPORTS`]: chat sessions' reports, none
/// for other callers) to the ledger
/// with the last records, which passes them on to the coordinator
/// ([`super::relay`]): one call for both. Whether the ledger took the
/// reports: not when nothing was `used` (nothing is sent), nor when the
/// ledger does not know the message (an older version, during a deploy:
/// the records then go alone); the caller sends them itself.
pub async fn record(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    now_ms: u64,
    used: &[Used],
    prices: &PriceTable,
    mut sessions: Vec<protocol::listing::SessionReport>,
) -> Result<bool, ActorError> {
    let ledger = LedgerHandle::new(env, tenant)?;
    let all = records(used, now_ms, prices);
    let mut batches = all.chunks(MAX_RECORDS).peekable();
    let mut taken = false;
    while let Some(batch) = batches.next() {
        if batches.peek().is_none() && !sessions.is_empty() {
            let sessions = std::mem::take(&mut sessions);
            match ledger
                .record_turns(request_id, batch.to_vec(), sessions)
                .await
            {
                Ok(_) => taken = true,
                Err(ActorError::Refused(r)) if r.code == protocol::ErrorCode::Protocol => {
                    ledger.record_usage(request_id, batch.to_vec()).await?;
                }
                Err(e) => return Err(e),
            }
        } else {
            ledger.record_usage(request_id, batch.to_vec()).await?;
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(caller: &str, model: &str, input: u64) -> Used {
        Used {
            caller: caller.into(),
            model: model.into(),
            requests: 1,
            usage: TokenUsage {
                input_tokens: input,
                output_tokens: 0,
            },
            cost_micros: None,
        }
    }

    #[test]
    fn a_buffer_sums_per_caller_and_model_and_says_when_it_starts() {
        let mut b = UsageBuffer::default();
        assert!(b.add(used("k1", "m", 5)), "the first record starts a batch");
        assert!(!b.add(used("k1", "m", 7)));
        assert!(!b.add(used("k2", "m", 1)));
        let batch = b.take();
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].requests, batch[0].usage.input_tokens), (2, 12));
        assert_eq!(batch[1].caller, "k2");
        assert!(b.take().is_empty());
        assert!(b.add(used("k1", "m", 1)), "empty again: a new batch");
    }

    #[test]
    fn records_are_priced_on_the_day_of_the_flush() {
        let prices = PriceTable::workers_ai_defaults();
        let r = records(
            &[used("k", "@cf/baai/bge-base-en-v1.5", 1_000_000)],
            20_786 * protocol::calendar::DAY_MS + 5,
            &prices,
        );
        assert_eq!((r[0].day, r[0].cost_micros), (20_786, 67_000));
    }

    #[test]
    fn a_cost_fixed_by_the_caller_is_kept_and_summed_apart() {
        let fixed = |input, cost| Used {
            cost_micros: Some(cost),
            ..used("k", "@cf/baai/bge-base-en-v1.5", input)
        };
        let mut b = UsageBuffer::default();
        b.add(fixed(1_000_000, 5));
        b.add(fixed(1_000_000, 7));
        b.add(used("k", "@cf/baai/bge-base-en-v1.5", 1_000_000));
        let batch = b.take();
        assert_eq!(batch.len(), 2, "fixed and unfixed costs are not merged");
        assert_eq!(batch[0].cost_micros, Some(12));
        // The tenant's prices at the flush do not change a fixed cost.
        let r = records(&batch, 0, &PriceTable::workers_ai_defaults());
        assert_eq!(r[0].cost_micros, 12);
        assert_eq!(r[1].cost_micros, 67_000);
    }
}
