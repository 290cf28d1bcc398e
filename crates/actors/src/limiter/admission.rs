//! What a limiter is asked for a piece of work, without I/O: the gateway
//! admits requests and the turns of `POST /api/chat` with it, a session the
//! turns of its WebSockets (whose frames never pass the gateway).

use protocol::limits::{Admit, Budget, Limits, PriceTable, TokenUsage};
use serde::{Deserialize, Serialize};

/// The limits that apply to a caller, as the gateway found them, and whose
/// limiter counts them (its resource name, `limiter:<keyId>` or
/// `limiter:anon-<digest>`): what a socket keeps so that each of its turns
/// is admitted like a `POST /api/chat` turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The limiter's resource name in the tenant.
    pub limiter: String,
    /// The caller's limits (its own over the tenant's defaults).
    pub limits: Limits,
    /// The tenant's totals.
    pub tenant_limits: Limits,
    /// The caller's budget.
    pub budget: Budget,
}

impl Applied {
    /// The admit request for `work`.
    pub fn admit(&self, work: &Work) -> Admit {
        admit(work, self.limits, self.tenant_limits, self.budget)
    }
}

/// Input tokens a chat turn reserves before its prompt is known (the system
/// prompt, the history that fits and the question). The turn settles with
/// what the model reported, so this only decides how much `tpm` a turn needs
/// free to start.
pub const TURN_INPUT_ESTIMATE: u64 = 1_000;

/// What a turn's reservation is held for beyond the session's turn deadline
/// before the limiter expires it (and charges its estimate) if the session
/// never settles it.
pub const TURN_HOLD_MARGIN_MS: u64 = 60_000;

/// How long a turn's reservation is held: the session's turn deadline
/// (`CHAT_TURN_TIMEOUT_SECS`, read from the same deployment's `var`s) and a
/// margin, within the limiter's bound.
pub fn turn_hold_ms(var: impl Fn(&str) -> Option<String>) -> u64 {
    let timeout_ms = crate::chat::core::ChatLimits::from_vars(var)
        .map(|l| l.turn_timeout_ms)
        .unwrap_or(120_000);
    timeout_ms
        .saturating_add(TURN_HOLD_MARGIN_MS)
        .min(protocol::limits::MAX_HOLD_MS)
}

/// A request that reserves nothing still names a hold (the limiter checks
/// it); nothing is held.
const REQUEST_HOLD_MS: u64 = 60_000;

/// What a limited route asks of the caller's limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// One request against `rpm`.
    Request,
    /// One request, a concurrency slot and the turn's token estimate.
    Turn {
        /// The answer's token budget.
        max_tokens: u32,
        /// The model it will use, if known (for the cost estimate).
        model: Option<String>,
        /// How long the reservation is held ([`turn_hold_ms`]).
        hold_ms: u64,
    },
}

impl Work {
    fn estimate(&self) -> TokenUsage {
        match self {
            Work::Request => TokenUsage::default(),
            Work::Turn { max_tokens, .. } => TokenUsage {
                input_tokens: TURN_INPUT_ESTIMATE,
                output_tokens: u64::from(*max_tokens),
            },
        }
    }
}

/// The admit request for `work` under `limits`, the tenant's totals and the
/// caller's `budget`.
pub fn admit(work: &Work, limits: Limits, tenant: Limits, budget: Budget) -> Admit {
    let (turn, model, hold_ms) = match work {
        Work::Request => (false, None, REQUEST_HOLD_MS),
        Work::Turn { model, hold_ms, .. } => (true, model.clone(), *hold_ms),
    };
    // Budgets count model tokens: a request that spends none (a search, an
    // ingest, an upgrade) is never refused by one, even once it is spent.
    let budget = if turn { budget } else { Budget::default() };
    let price = model
        .as_deref()
        .and_then(|m| PriceTable::workers_ai_defaults().price(m));
    Admit {
        limits,
        budget,
        tenant_limits: tenant,
        count_request: true,
        estimate: work.estimate(),
        model,
        price,
        turn,
        hold_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reserves_its_estimate_and_a_slot_and_a_request_nothing() {
        let applied = Applied {
            limiter: "limiter:0123456789ab".into(),
            limits: Limits {
                rpm: Some(5),
                ..Limits::default()
            },
            tenant_limits: Limits::default(),
            budget: Budget::default(),
        };
        let spent = Applied {
            budget: Budget {
                tokens_per_day: Some(10),
                ..Budget::default()
            },
            ..applied.clone()
        };
        assert!(
            !spent.admit(&Work::Request).budget.is_set(),
            "a request is not held to the budget"
        );
        let request = applied.admit(&Work::Request);
        assert!(request.count_request && !request.turn);
        assert_eq!(request.estimate.total(), 0);
        assert!(request.validate().is_ok());
        let turn = applied.admit(&Work::Turn {
            max_tokens: 300,
            model: Some("@cf/meta/llama-3.1-8b-instruct".into()),
            hold_ms: turn_hold_ms(|_| None),
        });
        assert!(turn.turn && turn.count_request);
        assert_eq!(turn.limits.rpm, Some(5));
        assert_eq!(
            (turn.estimate.input_tokens, turn.estimate.output_tokens),
            (TURN_INPUT_ESTIMATE, 300)
        );
        assert_eq!(turn.hold_ms, 120_000 + TURN_HOLD_MARGIN_MS);
        assert!(turn.price.is_some(), "a priced model is priced");
        assert!(turn.validate().is_ok());
        let long = turn_hold_ms(|n| (n == "CHAT_TURN_TIMEOUT_SECS").then(|| "3600".to_owned()));
        assert_eq!(
            long,
            protocol::limits::MAX_HOLD_MS,
            "within the limiter's bound"
        );
        let json = serde_json::to_string(&applied).unwrap();
        assert_eq!(serde_json::from_str::<Applied>(&json).unwrap(), applied);
    }
}
