//! What a limiter is asked for a piece of work, without I/O: the gateway
//! admits requests and the turns of `POST /api/chat` with it, a session the
//! turns of its WebSockets (whose frames never pass the gateway).

use protocol::limits::{Admit, Budget, Limits, Price, TokenUsage};
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
    /// The tenant's budget, over all its callers (counted at
    /// [`TENANT_BUDGET_LIMITER`]).
    #[serde(default, skip_serializing_if = "Budget::is_unset")]
    pub tenant_budget: Budget,
}

/// The limiter (resource name) that counts the tenant's budgets: one object
/// per tenant, asked only for the chat turns of a tenant that has a budget
/// (turns last seconds, so it sees a few messages a second at most where a
/// per-request object would see every request). Not a key id (those are hex)
/// nor an anonymous client's (`anon-`).
pub use protocol::chat::TENANT_BUDGET_LIMITER;

impl Applied {
    /// The admit request for `work` at the caller's limiter.
    pub fn admit(&self, work: &Work) -> Admit {
        admit(work, self.limits, self.tenant_limits, self.budget)
    }

    /// The admit request for `work` at [`TENANT_BUDGET_LIMITER`]: a turn
    /// under a tenant budget reserves its estimate there too (no rate limit,
    /// no slot: those are the caller's); `None` when there is nothing to
    /// count.
    pub fn tenant_admit(&self, work: &Work) -> Option<Admit> {
        if !self.tenant_budget.is_set() || !matches!(work, Work::Turn { .. }) {
            return None;
        }
        let key = admit(
            work,
            Limits::default(),
            Limits::default(),
            self.tenant_budget,
        );
        Some(Admit {
            count_request: false,
            turn: false,
            ..key
        })
    }
}

/// A caller's limits: each one its key sets, else the tenant's default.
pub fn effective(key: &Limits, tenant: &Limits) -> Limits {
    Limits {
        rpm: key.rpm.or(tenant.rpm),
        tpm: key.tpm.or(tenant.tpm),
        concurrency: key.concurrency.or(tenant.concurrency),
    }
}

/// The limits a chat turn is admitted with at `limiter` (the caller's
/// limiter's resource name), from the caller's own limits and budget (a
/// key's; none for an anonymous caller) and the tenant's as they are now:
/// `None` when nothing applies (no limiter is asked). A WebSocket admits each
/// of its turns with these, re-read as its key is re-checked, so a change of
/// the key's or the tenant's limits reaches an open socket.
pub fn applied_now(
    limiter: String,
    own: &Limits,
    budget: Budget,
    tenant_limits: Limits,
    tenant_budget: Budget,
) -> Option<Applied> {
    let limits = effective(own, &tenant_limits);
    let applies = limits != Limits::default()
        || tenant_limits != Limits::default()
        || budget.is_set()
        || tenant_budget.is_set();
    applies.then_some(Applied {
        limiter,
        limits,
        tenant_limits,
        budget,
        tenant_budget,
    })
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
        /// The model it will use, if known (shown in the reservation).
        model: Option<String>,
        /// That model's price (the tenant's table), for the cost estimate.
        price: Option<Price>,
        /// How long the reservation is held ([`turn_hold_ms`]).
        hold_ms: u64,
        /// The input tokens it reserves: [`TURN_INPUT_ESTIMATE`] for a
        /// session's turn (its context is bounded), the request's own size
        /// for an OpenAI-style completion that brings its conversation.
        input_tokens: u64,
    },
}

impl Work {
    fn estimate(&self) -> TokenUsage {
        match self {
            Work::Request => TokenUsage::default(),
            Work::Turn {
                max_tokens,
                input_tokens,
                ..
            } => TokenUsage {
                input_tokens: *input_tokens,
                output_tokens: u64::from(*max_tokens),
            },
        }
    }
}

/// The admit request for `work` under `limits`, the tenant's totals and the
/// caller's `budget`.
pub fn admit(work: &Work, limits: Limits, tenant: Limits, budget: Budget) -> Admit {
    let (turn, model, price, hold_ms) = match work {
        Work::Request => (false, None, None, REQUEST_HOLD_MS),
        Work::Turn {
            model,
            price,
            hold_ms,
            ..
        } => (true, model.clone(), *price, *hold_ms),
    };
    // Budgets count model tokens: a request that spends none (a search, an
    // ingest, an upgrade) is never refused by one, even once it is spent.
    let budget = if turn { budget } else { Budget::default() };
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
        advance: 0,
        unspent: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::limits::PriceTable;

    #[test]
    fn a_sockets_limits_follow_the_key_and_the_tenant() {
        let limiter = || "limiter:0123456789ab".to_owned();
        let rpm = |n| Limits {
            rpm: Some(n),
            ..Limits::default()
        };
        let none = Limits::default();
        // The key's own limit over the tenant's default.
        let now = applied_now(
            limiter(),
            &rpm(1),
            Budget::default(),
            rpm(10),
            Budget::default(),
        )
        .expect("limits apply");
        assert_eq!((now.limits.rpm, now.tenant_limits.rpm), (Some(1), Some(10)));
        // Unset on the key: the tenant's.
        let now = applied_now(
            limiter(),
            &none,
            Budget::default(),
            rpm(10),
            Budget::default(),
        )
        .expect("the tenant's apply");
        assert_eq!(now.limits.rpm, Some(10));
        // Nothing set anywhere: no limiter at all.
        assert_eq!(
            applied_now(limiter(), &none, Budget::default(), none, Budget::default()),
            None
        );
        // A budget alone (the key's or the tenant's) applies.
        let budget = Budget {
            tokens_per_day: Some(100),
            ..Budget::default()
        };
        assert!(applied_now(limiter(), &none, budget, none, Budget::default()).is_some());
        let now = applied_now(limiter(), &none, Budget::default(), none, budget).unwrap();
        assert_eq!(now.tenant_budget, budget);
        assert_eq!(now.limiter, limiter());
    }

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
            tenant_budget: Budget::default(),
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
            input_tokens: TURN_INPUT_ESTIMATE,
            max_tokens: 300,
            model: Some("@cf/meta/llama-3.1-8b-instruct".into()),
            price: PriceTable::workers_ai_defaults().price("@cf/meta/llama-3.1-8b-instruct"),
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
        assert_eq!(applied.tenant_admit(&Work::Request), None);
        let turn_work = Work::Turn {
            input_tokens: TURN_INPUT_ESTIMATE,
            max_tokens: 300,
            model: None,
            price: None,
            hold_ms: 1_000,
        };
        assert_eq!(applied.tenant_admit(&turn_work), None, "no tenant budget");
        let budgeted = Applied {
            tenant_budget: Budget {
                tokens_per_day: Some(5_000),
                ..Budget::default()
            },
            ..applied.clone()
        };
        let at_tenant = budgeted.tenant_admit(&turn_work).unwrap();
        assert_eq!(at_tenant.budget.tokens_per_day, Some(5_000));
        assert!(
            !at_tenant.turn && !at_tenant.count_request,
            "no slot, no rpm"
        );
        assert_eq!(at_tenant.limits, Limits::default());
        assert_eq!(at_tenant.estimate.total(), TURN_INPUT_ESTIMATE + 300);
        assert!(at_tenant.validate().is_ok());
        assert!(protocol::chat::valid_limiter_name(TENANT_BUDGET_LIMITER));
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
