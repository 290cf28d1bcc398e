//! Rate limits, budgets, prices, and the messages of the `RateLimiter` actor
//! (`${tenantId}:limiter:<keyId>`) and of its tenant ledger.
//!
//! The limiter has no configuration of its own: every [`Admit`] carries the
//! limits and budgets that apply (the gateway takes them from the key record
//! and the tenant's settings), so a change of a key's limits takes effect at
//! its next request, and the object never has to be told.
//!
//! Refusals are ordinary replies ([`LimiterResponse::RateLimited`],
//! [`LimiterResponse::BudgetExceeded`]), not [`crate::ErrorReply`]s: they
//! carry the numbers the gateway turns into `Retry-After`, the `RateLimit`
//! headers and the 429 / 402 bodies. An [`crate::ErrorReply`] is kept for
//! requests that are themselves invalid.
//!
//! Money is in integer micro-dollars (`u64`: one dollar is 1,000,000), so
//! sums and comparisons are exact; a cost is rounded up to the next micro.

use crate::keys::KeyLimits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Largest `rpm` a limit may name: a bucket is counted in 1/60,000ths of a
/// request, and this keeps every level well inside an `i64`.
pub const MAX_RPM: u32 = 10_000_000;
/// Largest `tpm` (tokens per minute) a limit may name, for the same reason.
pub const MAX_TPM: u64 = 1_000_000_000_000;
/// Largest `concurrency`.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// The soft threshold when a budget names none, in percent of the limit.
pub const DEFAULT_SOFT_THRESHOLD_PCT: u8 = 80;
/// Longest a reservation may be held before it expires (an hour).
pub const MAX_HOLD_MS: u64 = 3_600_000;
/// The window of every per-minute limit, in seconds (the `w` of
/// `RateLimit-Policy`).
pub const RATE_WINDOW_SECS: u64 = 60;
/// The most requests an admit may ask for in advance ([`Admit::advance`]),
/// and give back unspent ([`Admit::unspent`]).
pub const MAX_ADVANCE: u32 = 32;
/// Micro-dollars in a dollar.
pub const MICROS_PER_DOLLAR: u64 = 1_000_000;

/// Rate limits of a key or a tenant; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Model tokens (input plus output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Chat turns running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// Which rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// Concurrent chat turns.
    Concurrency,
}

impl LimitKind {
    /// The name on the wire, in errors and in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Tpm => "tpm",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose limit or budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The key's own.
    Key,
    /// The tenant's total over all its keys.
    Tenant,
}

impl LimitScope {
    /// The name on the wire and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Key => "key",
            LimitScope::Tenant => "tenant",
        }
    }
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    /// Tokens in the current UTC day.
    TokensPerDay,
    /// Tokens in the current UTC month.
    TokensPerMonth,
    /// Cost (micro-dollars) in the current UTC day.
    CostPerDay,
    /// Cost (micro-dollars) in the current UTC month.
    CostPerMonth,
}

impl BudgetKind {
    /// Every budget, in the order they are checked (day before month, so a
    /// refusal names the budget that resets first).
    pub const ALL: [BudgetKind; 4] = [
        BudgetKind::TokensPerDay,
        BudgetKind::CostPerDay,
        BudgetKind::TokensPerMonth,
        BudgetKind::CostPerMonth,
    ];

    /// The name on the wire and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::TokensPerDay => "tokens_per_day",
            BudgetKind::TokensPerMonth => "tokens_per_month",
            BudgetKind::CostPerDay => "cost_per_day",
            BudgetKind::CostPerMonth => "cost_per_month",
        }
    }

    /// The window the budget counts in.
    pub fn period(self) -> Period {
        match self {
            BudgetKind::TokensPerDay | BudgetKind::CostPerDay => Period::Day,
            BudgetKind::TokensPerMonth | BudgetKind::CostPerMonth => Period::Month,
        }
    }

    /// Whether it counts cost (micro-dollars) rather than tokens.
    pub fn is_cost(self) -> bool {
        matches!(self, BudgetKind::CostPerDay | BudgetKind::CostPerMonth)
    }
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A budget window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC day, from midnight to midnight.
    Day,
    /// A UTC calendar month, from the first at midnight.
    Month,
}

fn default_soft_threshold() -> u8 {
    DEFAULT_SOFT_THRESHOLD_PCT
}

/// Spending limits of a key or a tenant per UTC day and month; `None` is
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Tokens (input plus output) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Tokens per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    /// Cost per UTC day, in micro-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_day_micros: Option<u64>,
    /// Cost per UTC month, in micro-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_month_micros: Option<u64>,
    /// Percentage of a limit at which the key or tenant is marked (in the
    /// admin views and the logs) without being refused; 1 to 100.
    #[serde(default = "default_soft_threshold")]
    pub soft_threshold_pct: u8,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            tokens_per_day: None,
            tokens_per_month: None,
            cost_per_day_micros: None,
            cost_per_month_micros: None,
            soft_threshold_pct: DEFAULT_SOFT_THRESHOLD_PCT,
        }
    }
}

impl Budget {
    /// Whether nothing at all is set (no limit, no threshold).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// Whether any of its limits is set.
    pub fn is_set(&self) -> bool {
        BudgetKind::ALL.iter().any(|k| self.limit(*k).is_some())
    }

    /// The limit of one budget, if set.
    pub fn limit(&self, kind: BudgetKind) -> Option<u64> {
        match kind {
            BudgetKind::TokensPerDay => self.tokens_per_day,
            BudgetKind::TokensPerMonth => self.tokens_per_month,
            BudgetKind::CostPerDay => self.cost_per_day_micros,
            BudgetKind::CostPerMonth => self.cost_per_month_micros,
        }
    }

    /// Whether no budget is set.
    pub fn is_unlimited(&self) -> bool {
        BudgetKind::ALL.iter().all(|k| self.limit(*k).is_none())
    }

    /// Checks that every limit is positive and the threshold is 1 to 100.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for kind in BudgetKind::ALL {
            if self.limit(kind) == Some(0) {
                return Err(LimitsError::ZeroBudget { budget: kind });
            }
        }
        if !(1..=100).contains(&self.soft_threshold_pct) {
            return Err(LimitsError::SoftThreshold);
        }
        Ok(())
    }
}

/// Why limits, a budget, a price or a limiter request are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A rate limit of zero (leave it out for unlimited).
    #[error("limits.{limit} must be a positive whole number")]
    Zero {
        /// Which limit.
        limit: LimitKind,
    },
    /// A rate limit above what the limiter can count.
    #[error("limits.{limit} must be at most {max}")]
    TooLarge {
        /// Which limit.
        limit: LimitKind,
        /// The largest accepted value.
        max: u64,
    },
    /// A key's limit above the tenant's (or unlimited where the tenant has a
    /// limit).
    #[error("limits.{limit} is {}, above the tenant's {ceiling}", .value.map_or("unlimited".to_owned(), |v| v.to_string()))]
    AboveCeiling {
        /// Which limit.
        limit: LimitKind,
        /// The key's value (`None`: unlimited).
        value: Option<u64>,
        /// The tenant's.
        ceiling: u64,
    },
    /// A budget of zero (leave it out for unlimited).
    #[error("budget.{budget} must be a positive whole number")]
    ZeroBudget {
        /// Which budget.
        budget: BudgetKind,
    },
    /// A soft threshold outside 1 to 100.
    #[error("budget.softThresholdPct must be 1 to 100")]
    SoftThreshold,
    /// A price table entry with an invalid model name.
    #[error("prices: {0:?} is not a model name (1 to 128 of A-Z a-z 0-9 @ . _ / : -)")]
    PriceModel(String),
    /// A price above [`MAX_PRICE_PER_MILLION_MICROS`].
    #[error("prices: {0:?} costs more than {MAX_PRICE_PER_MILLION_MICROS} micro-dollars per million tokens")]
    PriceTooHigh(String),
    /// A reservation hold of zero or above [`MAX_HOLD_MS`].
    #[error("holdMs must be 1 to {MAX_HOLD_MS}")]
    Hold,
    /// An advance (or an unspent one) above [`MAX_ADVANCE`].
    #[error("advance and unspent must be at most {MAX_ADVANCE}")]
    Advance,
    /// A model name that cannot be one.
    #[error("model must be 1 to 128 of A-Z a-z 0-9 @ . _ / : -")]
    Model,
}

impl Limits {
    fn fields(&self) -> [(LimitKind, Option<u64>); 3] {
        [
            (LimitKind::Rpm, self.rpm.map(u64::from)),
            (LimitKind::Tpm, self.tpm),
            (LimitKind::Concurrency, self.concurrency.map(u64::from)),
        ]
    }

    /// One limit as a number, if set.
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::Rpm => self.rpm.map(u64::from),
            LimitKind::Tpm => self.tpm,
            LimitKind::Concurrency => self.concurrency.map(u64::from),
        }
    }

    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// Checks that every limit is positive and countable.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (limit, value) in self.fields() {
            let max = match limit {
                LimitKind::Rpm => u64::from(MAX_RPM),
                LimitKind::Tpm => MAX_TPM,
                LimitKind::Concurrency => u64::from(MAX_CONCURRENCY),
            };
            match value {
                Some(0) => return Err(LimitsError::Zero { limit }),
                Some(v) if v > max => return Err(LimitsError::TooLarge { limit, max }),
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks that these (a key's) limits are within `ceiling` (the
    /// tenant's): where the tenant has a limit, the key must have one no
    /// larger. The first field that exceeds is named.
    pub fn within(&self, ceiling: &Limits) -> Result<(), LimitsError> {
        for ((limit, value), (_, cap)) in self.fields().into_iter().zip(ceiling.fields()) {
            if let Some(ceiling) = cap {
                if value.is_none_or(|v| v > ceiling) {
                    return Err(LimitsError::AboveCeiling {
                        limit,
                        value,
                        ceiling,
                    });
                }
            }
        }
        Ok(())
    }
}

impl From<&KeyLimits> for Limits {
    fn from(k: &KeyLimits) -> Self {
        Self {
            rpm: k.rpm,
            tpm: k.tpm.map(u64::from),
            concurrency: k.concurrency,
        }
    }
}

/// Tokens of a model call (or an estimate of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

impl TokenUsage {
    /// Input plus output (what `tpm` and the token budgets count).
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// What a model costs, per million tokens, in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    /// Micro-dollars per million input tokens.
    pub input_per_million_micros: u64,
    /// Micro-dollars per million output tokens.
    pub output_per_million_micros: u64,
}

impl Price {
    /// The cost of `usage` in micro-dollars, rounded up (so a priced call
    /// never costs 0 unless it used no priced tokens), saturating at
    /// `u64::MAX`.
    pub fn cost_micros(&self, usage: TokenUsage) -> u64 {
        let input = u128::from(usage.input_tokens) * u128::from(self.input_per_million_micros);
        let output = u128::from(usage.output_tokens) * u128::from(self.output_per_million_micros);
        // Each product fits a u128; only their sum can overflow.
        let pico = input.saturating_add(output);
        let micros = pico.div_ceil(1_000_000);
        u64::try_from(micros).unwrap_or(u64::MAX)
    }
}

/// The highest price a table may set, per million tokens in or out: $10,000
/// (a thousand times the dearest Workers AI model), so that the costs summed
/// in the usage records stay far inside SQLite's integers.
pub const MAX_PRICE_PER_MILLION_MICROS: u64 = 10_000_000_000;

/// Prices per model, set by the operator. A model without an entry is
/// unpriced: its calls count against token budgets, not cost budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable {
    /// Model name → price.
    pub models: BTreeMap<String, Price>,
}

/// `(model, input $/M, output $/M)` in micro-dollars, from Cloudflare's
/// Workers AI pricing page (per-model token prices; Workers AI bills
/// $0.011 per 1,000 Neurons and publishes these as their equivalents).
/// Embedding models have no output tokens.
const WORKERS_AI_PRICES: &[(&str, u64, u64)] = &[
    (
        "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
        293_000,
        2_253_000,
    ),
    ("@cf/meta/llama-3.1-8b-instruct", 282_000, 827_000),
    ("@cf/qwen/qwen3-30b-a3b-fp8", 51_000, 335_000),
    ("@cf/baai/bge-base-en-v1.5", 67_000, 0),
    ("@cf/baai/bge-small-en-v1.5", 20_000, 0),
];

impl Default for PriceTable {
    fn default() -> Self {
        Self::workers_ai_defaults()
    }
}

impl PriceTable {
    /// The Workers AI models this project uses, at Cloudflare's published
    /// prices. The embedded `local/*` models are not listed: they cost
    /// nothing.
    pub fn workers_ai_defaults() -> Self {
        let models = WORKERS_AI_PRICES
            .iter()
            .map(|&(model, input, output)| {
                let price = Price {
                    input_per_million_micros: input,
                    output_per_million_micros: output,
                };
                (model.to_owned(), price)
            })
            .collect();
        Self { models }
    }

    /// A model's price, if it has one.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.models.get(model).copied()
    }

    /// The cost of `usage` of `model` in micro-dollars; `None` if unpriced.
    pub fn cost_micros(&self, model: &str, usage: TokenUsage) -> Option<u64> {
        self.price(model).map(|p| p.cost_micros(usage))
    }

    /// Checks every model name and price.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if let Some(m) = self.models.keys().find(|m| !crate::keys::valid_model(m)) {
            return Err(LimitsError::PriceModel(m.clone()));
        }
        let too_high = |p: &Price| {
            p.input_per_million_micros > MAX_PRICE_PER_MILLION_MICROS
                || p.output_per_million_micros > MAX_PRICE_PER_MILLION_MICROS
        };
        match self.models.iter().find(|(_, p)| too_high(p)) {
            Some((m, _)) => Err(LimitsError::PriceTooHigh(m.clone())),
            None => Ok(()),
        }
    }
}

/// A request to a key's `RateLimiter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimiterRequest {
    /// May this work start? Reserves what it may use.
    Admit(Admit),
    /// The work of a reservation is done: its actual usage.
    Settle(Settle),
    /// The work of a reservation did not happen (nothing was used).
    Release(Release),
    /// An operator's look at the limiter.
    Inspect(Inspect),
}

/// Payload of [`LimiterRequest::Admit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admit {
    /// The key's limits.
    pub limits: Limits,
    /// The key's budgets.
    pub budget: Budget,
    /// The tenant's limits (`rpm` and `tpm` are enforced through leases of
    /// the tenant ledger).
    pub tenant_limits: Limits,
    /// Whether the request counts against `rpm`.
    pub count_request: bool,
    /// The tokens to reserve against `tpm` and the token budgets (a chat
    /// turn: its prompt estimate and `max_tokens`); zero reserves nothing.
    pub estimate: TokenUsage,
    /// The model the work will call, if any (shown in the reservation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// That model's price, for the cost estimate; `None`: unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Whether the work holds a concurrency slot until settled (chat turns).
    pub turn: bool,
    /// How long the reservation may be held before it expires, in ms. A
    /// reservation whose settle never arrives is charged its estimate and
    /// frees its slot at expiry.
    pub hold_ms: u64,
    /// Requests beyond this one that the caller (a gateway isolate) would
    /// take now, to admit itself without asking again: counted at once, so
    /// never more than the limits allow. Only plain requests (no tokens, no
    /// slot) get any; the limiter grants at most a small share of what is
    /// left ([`Admitted::advanced`]), none near the limit. At most
    /// [`MAX_ADVANCE`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advance: u32,
    /// Requests of an earlier advance the caller did not spend, given back
    /// before this admit is decided. At most [`MAX_ADVANCE`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unspent: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Admit {
    /// Checks the limits, the budget, the model and the hold.
    pub fn validate(&self) -> Result<(), LimitsError> {
        self.limits.validate()?;
        self.tenant_limits.validate()?;
        self.budget.validate()?;
        if self.hold_ms == 0 || self.hold_ms > MAX_HOLD_MS {
            return Err(LimitsError::Hold);
        }
        if self.advance > MAX_ADVANCE || self.unspent > MAX_ADVANCE {
            return Err(LimitsError::Advance);
        }
        if let Some(m) = &self.model {
            if !crate::keys::valid_model(m) {
                return Err(LimitsError::Model);
            }
        }
        Ok(())
    }
}

/// Payload of [`LimiterRequest::Settle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settle {
    /// The reservation from [`Admitted::reservation_id`].
    pub reservation_id: u64,
    /// What the work actually used (summed over its model calls).
    pub usage: TokenUsage,
    /// The model that did the work (a fallback may differ from the one
    /// admitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// That model's price; `None`: unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

/// Payload of [`LimiterRequest::Release`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// The reservation from [`Admitted::reservation_id`].
    pub reservation_id: u64,
}

/// Payload of [`LimiterRequest::Inspect`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {}

/// A reply of a key's `RateLimiter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimiterResponse {
    /// Answers `Admit`: go ahead.
    Admitted(Admitted),
    /// Answers `Admit`: a rate limit is reached (429).
    RateLimited(RateLimited),
    /// Answers `Admit`: a budget would be exceeded (402).
    BudgetExceeded(BudgetExceeded),
    /// Answers `Settle`.
    Settled(Settled),
    /// Answers `Release`.
    Released(Released),
    /// Answers `Inspect`.
    Snapshot(LimiterSnapshot),
}

/// What the IETF `RateLimit-Policy` / `RateLimit` headers say about the
/// tightest limit: `RateLimit-Policy: "<name>";q=<limit>;w=<window>` and
/// `RateLimit: "<name>";r=<remaining>;t=<reset>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitInfo {
    /// Which limit (the policy's name).
    pub limit_kind: LimitKind,
    /// Whose.
    pub scope: LimitScope,
    /// The quota per window (`q`).
    pub limit: u64,
    /// What is left now (`r`).
    pub remaining: u64,
    /// Seconds until the quota is whole again (`t`).
    pub reset_secs: u64,
    /// The window in seconds (`w`).
    pub window_secs: u64,
}

/// Payload of [`LimiterResponse::Admitted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admitted {
    /// Settle or release this when the work ends; `None` when nothing was
    /// reserved (no tokens, no slot).
    pub reservation_id: Option<u64>,
    /// The tightest of the key's per-minute limits, for the headers; `None`
    /// when the key has none. Its `remaining` leaves out what was advanced.
    pub rate_limit: Option<RateLimitInfo>,
    /// Requests counted in advance for the caller ([`Admit::advance`]): it
    /// may admit that many more itself.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advanced: u32,
}

/// Payload of [`LimiterResponse::RateLimited`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimited {
    /// Which limit.
    pub limit: LimitKind,
    /// Whose.
    pub scope: LimitScope,
    /// Whole seconds until a retry can succeed (`Retry-After`).
    pub retry_after_secs: u64,
    /// The headers' view of the limit that refused, when it is the key's.
    pub rate_limit: Option<RateLimitInfo>,
}

/// Payload of [`LimiterResponse::BudgetExceeded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetExceeded {
    /// Which budget.
    pub budget: BudgetKind,
    /// Whose.
    pub scope: LimitScope,
    /// Its limit (tokens, or micro-dollars for a cost budget).
    pub limit: u64,
    /// What is used in the current window (settled work).
    pub used: u64,
    /// What reservations in flight hold.
    pub reserved: u64,
    /// What this request would have reserved.
    pub requested: u64,
    /// When the window resets (ms since the Unix epoch): the next UTC
    /// midnight, or the first of the next month.
    pub resets_at_ms: u64,
}

/// Payload of [`LimiterResponse::Settled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settled {
    /// The reservation.
    pub reservation_id: u64,
    /// Whether the limiter knew it (false: already settled, released, or
    /// long expired; nothing changed).
    pub known: bool,
    /// The usage recorded.
    pub usage: TokenUsage,
    /// Its cost, where priced.
    pub cost_micros: Option<u64>,
}

/// Payload of [`LimiterResponse::Released`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// The reservation.
    pub reservation_id: u64,
    /// Whether the limiter knew it (false: nothing changed).
    pub known: bool,
}

/// A token bucket as the admin view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketView {
    /// Which limit.
    pub limit: LimitKind,
    /// Its capacity per minute.
    pub capacity: u64,
    /// Whole tokens in the bucket (negative: debt from settles above their
    /// estimate, paid back by the refill).
    pub level: i64,
    /// When the level was last computed.
    pub updated_at_ms: u64,
}

/// A reservation in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    /// Its id.
    pub id: u64,
    /// The tokens reserved.
    pub tokens: u64,
    /// The cost reserved (micro-dollars).
    pub cost_micros: u64,
    /// Whether it holds a concurrency slot.
    pub turn: bool,
    /// The model, if named.
    pub model: Option<String>,
    /// When it was admitted.
    pub created_at_ms: u64,
    /// When it expires if not settled.
    pub expires_at_ms: u64,
}

/// A budget window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowView {
    /// Day or month.
    pub period: Period,
    /// When it began (ms since the Unix epoch, UTC midnight).
    pub start_ms: u64,
    /// When it resets.
    pub resets_at_ms: u64,
    /// Tokens used (settled).
    pub used_tokens: u64,
    /// Cost used (settled, micro-dollars).
    pub used_cost_micros: u64,
}

/// A soft threshold crossed in the current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SoftMark {
    /// Which budget.
    pub budget: BudgetKind,
    /// When it was crossed.
    pub at_ms: u64,
    /// What was used then.
    pub used: u64,
    /// The budget's limit.
    pub limit: u64,
}

/// The key's lease of the tenant's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    /// Requests left in the lease (negative: owed to the tenant).
    pub rpm: i64,
    /// Tokens left in the lease (negative: owed to the tenant).
    pub tpm: i64,
    /// When the lease's unused part goes back to the tenant.
    pub expires_at_ms: u64,
}

/// Payload of [`LimiterResponse::Snapshot`]: an operator's look inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimiterSnapshot {
    /// The limits of the last admit.
    pub limits: Limits,
    /// The budget of the last admit.
    pub budget: Budget,
    /// The key's buckets.
    pub buckets: Vec<BucketView>,
    /// Reservations in flight, oldest first.
    pub reservations: Vec<ReservationView>,
    /// The day and month windows.
    pub windows: Vec<WindowView>,
    /// Soft thresholds crossed in the current windows.
    pub soft_marks: Vec<SoftMark>,
    /// The tenant lease, if one is held.
    pub lease: Option<LeaseView>,
    /// When the alarm is due, if set.
    pub next_alarm_ms: Option<u64>,
    /// Requests counted in advance for gateway isolates
    /// ([`Admit::advance`]), in total since the limiter began.
    #[serde(default)]
    pub advanced: u64,
    /// Of those, how many came back unspent.
    #[serde(default)]
    pub given_back: u64,
}

/// A request to a tenant's ledger (`${tenantId}:limiter`), which lends each
/// key's limiter a slice of the tenant's `rpm` and `tpm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerRequest {
    /// Lend capacity (and take back what an earlier lease did not use).
    Lease(LeaseAsk),
    /// Take back the unused part of an expired lease.
    Return(LeaseReturn),
    /// An operator's look at the ledger.
    Inspect(Inspect),
}

/// Payload of [`LedgerRequest::Lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAsk {
    /// The tenant's limits (from its settings, as in [`Admit`]).
    pub tenant_limits: Limits,
    /// Requests the key needs at least (0: none).
    pub rpm: u64,
    /// Tokens the key needs at least (0: none).
    pub tpm: u64,
    /// What the key gives back from an earlier lease.
    pub returned: LeaseReturn,
}

/// Payload of [`LedgerRequest::Return`]: unused capacity given back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseReturn {
    /// Requests.
    pub rpm: u64,
    /// Tokens.
    pub tpm: u64,
}

/// A reply of the tenant ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResponse {
    /// Answers `Lease`.
    Lease(LeaseGrant),
    /// Answers `Return`.
    Returned(LeaseReturn),
    /// Answers `Inspect`.
    Snapshot(LedgerSnapshot),
}

/// Payload of [`LedgerResponse::Lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseGrant {
    /// Requests lent (0 when refused).
    pub rpm: u64,
    /// Tokens lent (0 when refused).
    pub tpm: u64,
    /// When the lease's unused part goes back.
    pub expires_at_ms: u64,
    /// Set when the ask could not be met: the tenant limit that is reached.
    pub limited: Option<LimitKind>,
    /// With `limited`: whole seconds until it could be.
    pub retry_after_secs: u64,
}

/// Payload of [`LedgerResponse::Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSnapshot {
    /// The tenant's limits as of the last ask.
    pub limits: Limits,
    /// The tenant's buckets.
    pub buckets: Vec<BucketView>,
    /// Requests lent since the ledger was created.
    pub lent_rpm: u64,
    /// Tokens lent since the ledger was created.
    pub lent_tpm: u64,
    /// Requests given back.
    pub returned_rpm: u64,
    /// Tokens given back.
    pub returned_tpm: u64,
}

/// What a `RateLimiter` object is asked: a key's limiter
/// (`${tenantId}:limiter:<keyId>`) takes [`LimiterRequest`]s, the tenant's
/// ledger (`${tenantId}:limiter`) [`LedgerRequest`]s. One class serves both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimiterRequest {
    /// To a key's limiter.
    Key(LimiterRequest),
    /// To the tenant's ledger.
    Ledger(LedgerRequest),
    /// To the tenant's ledger: usage records and reports.
    Usage(crate::usage::UsageRequest),
    /// To one of the tenant's metrics objects (`${tenantId}:metrics:<n>`).
    Metrics(crate::metrics::MetricsRequest),
}

/// What a `RateLimiter` object answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimiterResponse {
    /// From a key's limiter.
    Key(LimiterResponse),
    /// From the tenant's ledger.
    Ledger(LedgerResponse),
    /// From the tenant's ledger, about usage.
    Usage(crate::usage::UsageResponse),
    /// From a metrics object.
    Metrics(crate::metrics::MetricsResponse),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u32>, tpm: Option<u64>, concurrency: Option<u32>) -> Limits {
        Limits {
            rpm,
            tpm,
            concurrency,
        }
    }

    #[test]
    fn limits_validate() {
        assert_eq!(limits(Some(1), Some(1), Some(1)).validate(), Ok(()));
        assert_eq!(Limits::default().validate(), Ok(()));
        assert_eq!(
            limits(None, Some(0), None).validate(),
            Err(LimitsError::Zero {
                limit: LimitKind::Tpm
            })
        );
        assert_eq!(
            limits(Some(MAX_RPM + 1), None, None).validate(),
            Err(LimitsError::TooLarge {
                limit: LimitKind::Rpm,
                max: u64::from(MAX_RPM)
            })
        );
    }

    #[test]
    fn a_key_stays_within_the_tenant() {
        let tenant = limits(Some(100), None, Some(5));
        assert_eq!(limits(Some(100), Some(9), Some(1)).within(&tenant), Ok(()));
        assert_eq!(Limits::default().within(&Limits::default()), Ok(()));
        let err = limits(Some(101), None, Some(1))
            .within(&tenant)
            .unwrap_err();
        assert_eq!(
            err,
            LimitsError::AboveCeiling {
                limit: LimitKind::Rpm,
                value: Some(101),
                ceiling: 100
            }
        );
        assert_eq!(err.to_string(), "limits.rpm is 101, above the tenant's 100");
        let err = limits(Some(1), None, None).within(&tenant).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.concurrency is unlimited, above the tenant's 5"
        );
    }

    #[test]
    fn budgets_validate_and_default_their_threshold() {
        let b: Budget = serde_json::from_str(r#"{"tokensPerDay":1000}"#).unwrap();
        assert_eq!(b.soft_threshold_pct, 80);
        assert_eq!(b.limit(BudgetKind::TokensPerDay), Some(1000));
        assert_eq!(b.validate(), Ok(()));
        let zero = Budget {
            cost_per_month_micros: Some(0),
            ..Budget::default()
        };
        assert_eq!(
            zero.validate(),
            Err(LimitsError::ZeroBudget {
                budget: BudgetKind::CostPerMonth
            })
        );
        let pct = Budget {
            soft_threshold_pct: 101,
            ..Budget::default()
        };
        assert_eq!(pct.validate(), Err(LimitsError::SoftThreshold));
        assert_eq!(
            serde_json::to_string(&Budget::default()).unwrap(),
            r#"{"softThresholdPct":80}"#
        );
    }

    #[test]
    fn costs_round_up_in_micro_dollars() {
        let p = Price {
            input_per_million_micros: 293_000,
            output_per_million_micros: 2_253_000,
        };
        let usage = |i, o| TokenUsage {
            input_tokens: i,
            output_tokens: o,
        };
        // A million of each: exactly the two prices.
        assert_eq!(p.cost_micros(usage(1_000_000, 1_000_000)), 2_546_000);
        // One input token: 0.293 micro-dollars, rounded up to 1.
        assert_eq!(p.cost_micros(usage(1, 0)), 1);
        // 1000 in + 500 out = 293 + 1126.5 = 1419.5 → 1420.
        assert_eq!(p.cost_micros(usage(1000, 500)), 1420);
        assert_eq!(p.cost_micros(usage(0, 0)), 0);
        let huge = Price {
            input_per_million_micros: u64::MAX,
            output_per_million_micros: u64::MAX,
        };
        assert_eq!(huge.cost_micros(usage(u64::MAX, u64::MAX)), u64::MAX);
    }

    #[test]
    fn the_default_table_prices_the_models_in_use() {
        let table = PriceTable::default();
        assert_eq!(table.validate(), Ok(()));
        for model in [
            crate::coordinator::DEFAULT_CHAT_MODEL,
            crate::coordinator::DEFAULT_EMBEDDING_MODEL,
        ] {
            assert!(table.price(model).is_some(), "{model}");
        }
        assert_eq!(
            table.cost_micros("local/extractive", TokenUsage::default()),
            None
        );
        let json = serde_json::to_string(&table).unwrap();
        assert!(json.starts_with(r#"{"@cf/baai/bge-base-en-v1.5":{"inputPerMillionMicros":67000,"#));
        let back: PriceTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
        let bad = PriceTable {
            models: BTreeMap::from([("a b".to_owned(), Price::default())]),
        };
        assert_eq!(bad.validate(), Err(LimitsError::PriceModel("a b".into())));
        let dear = PriceTable {
            models: BTreeMap::from([(
                "m".to_owned(),
                Price {
                    input_per_million_micros: MAX_PRICE_PER_MILLION_MICROS + 1,
                    output_per_million_micros: 0,
                },
            )]),
        };
        assert_eq!(dear.validate(), Err(LimitsError::PriceTooHigh("m".into())));
    }

    #[test]
    fn admits_validate() {
        let ok = Admit {
            limits: limits(Some(10), None, None),
            budget: Budget::default(),
            tenant_limits: Limits::default(),
            count_request: true,
            estimate: TokenUsage::default(),
            model: Some("@cf/qwen/qwen3-30b-a3b-fp8".into()),
            price: None,
            turn: false,
            hold_ms: 1_000,
            advance: MAX_ADVANCE,
            unspent: MAX_ADVANCE,
        };
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = ok.clone();
        bad.hold_ms = 0;
        assert_eq!(bad.validate(), Err(LimitsError::Hold));
        let mut bad = ok.clone();
        bad.advance = MAX_ADVANCE + 1;
        assert_eq!(bad.validate(), Err(LimitsError::Advance));
        let mut bad = ok.clone();
        bad.unspent = MAX_ADVANCE + 1;
        assert_eq!(bad.validate(), Err(LimitsError::Advance));
        let mut bad = ok.clone();
        bad.model = Some(String::new());
        assert_eq!(bad.validate(), Err(LimitsError::Model));
        let mut bad = ok;
        bad.tenant_limits.concurrency = Some(0);
        assert!(matches!(bad.validate(), Err(LimitsError::Zero { .. })));
    }

    #[test]
    fn key_limits_convert() {
        let k = KeyLimits {
            rpm: Some(5),
            tpm: Some(7),
            concurrency: None,
        };
        assert_eq!(Limits::from(&k), limits(Some(5), Some(7), None));
    }

    #[test]
    fn every_limiter_message_round_trips() {
        use crate::{decode, decode_reply, encode, encode_reply, Envelope, ReplyEnvelope};
        use crate::{RequestId, TenantId};
        let rid = RequestId::parse("req-1").unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let price = Some(Price {
            input_per_million_micros: 1,
            output_per_million_micros: 2,
        });
        let estimate = TokenUsage {
            input_tokens: 3,
            output_tokens: 4,
        };
        let requests = vec![
            LimiterRequest::Admit(Admit {
                limits: limits(Some(1), Some(2), Some(3)),
                budget: Budget {
                    tokens_per_day: Some(5),
                    ..Budget::default()
                },
                tenant_limits: limits(Some(10), None, None),
                count_request: true,
                estimate,
                model: Some("@cf/x/y".into()),
                price,
                turn: true,
                hold_ms: 120_000,
                advance: 0,
                unspent: 0,
            }),
            LimiterRequest::Admit(Admit {
                limits: limits(Some(1), None, None),
                budget: Budget::default(),
                tenant_limits: Limits::default(),
                count_request: true,
                estimate: TokenUsage::default(),
                model: None,
                price: None,
                turn: false,
                hold_ms: 60_000,
                advance: MAX_ADVANCE,
                unspent: 3,
            }),
            LimiterRequest::Settle(Settle {
                reservation_id: 9,
                usage: estimate,
                model: None,
                price,
            }),
            LimiterRequest::Release(Release { reservation_id: 9 }),
            LimiterRequest::Inspect(Inspect {}),
        ];
        for message in requests {
            let env = Envelope::new(rid.clone(), tenant.clone(), message);
            let back: Envelope<LimiterRequest> = decode(&encode(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
        let info = RateLimitInfo {
            limit_kind: LimitKind::Rpm,
            scope: LimitScope::Key,
            limit: 10,
            remaining: 0,
            reset_secs: 6,
            window_secs: RATE_WINDOW_SECS,
        };
        let replies = vec![
            LimiterResponse::Admitted(Admitted {
                reservation_id: Some(1),
                rate_limit: Some(info),
                advanced: 0,
            }),
            LimiterResponse::Admitted(Admitted {
                reservation_id: None,
                rate_limit: Some(info),
                advanced: 7,
            }),
            LimiterResponse::RateLimited(RateLimited {
                limit: LimitKind::Concurrency,
                scope: LimitScope::Tenant,
                retry_after_secs: 1,
                rate_limit: None,
            }),
            LimiterResponse::BudgetExceeded(BudgetExceeded {
                budget: BudgetKind::CostPerMonth,
                scope: LimitScope::Key,
                limit: 1,
                used: 2,
                reserved: 3,
                requested: 4,
                resets_at_ms: 5,
            }),
            LimiterResponse::Settled(Settled {
                reservation_id: 1,
                known: true,
                usage: estimate,
                cost_micros: Some(1),
            }),
            LimiterResponse::Released(Released {
                reservation_id: 1,
                known: false,
            }),
            LimiterResponse::Snapshot(LimiterSnapshot {
                limits: Limits::default(),
                budget: Budget::default(),
                buckets: vec![BucketView {
                    limit: LimitKind::Tpm,
                    capacity: 10,
                    level: -3,
                    updated_at_ms: 1,
                }],
                reservations: vec![],
                windows: vec![WindowView {
                    period: Period::Month,
                    start_ms: 0,
                    resets_at_ms: 1,
                    used_tokens: 2,
                    used_cost_micros: 3,
                }],
                soft_marks: vec![SoftMark {
                    budget: BudgetKind::TokensPerDay,
                    at_ms: 1,
                    used: 80,
                    limit: 100,
                }],
                lease: Some(LeaseView {
                    rpm: -1,
                    tpm: 2,
                    expires_at_ms: 3,
                }),
                next_alarm_ms: None,
                advanced: 40,
                given_back: 2,
            }),
        ];
        for reply in replies {
            let env = ReplyEnvelope::new(Some(rid.clone()), Ok(reply));
            let back: ReplyEnvelope<LimiterResponse> =
                decode_reply(&encode_reply(&env).unwrap()).unwrap();
            assert_eq!(back, env);
        }
        // What the gateway's admin view shows is camelCase JSON.
        let json = serde_json::to_string(&BudgetExceeded {
            budget: BudgetKind::TokensPerDay,
            scope: LimitScope::Key,
            limit: 1,
            used: 2,
            reserved: 0,
            requested: 3,
            resets_at_ms: 4,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"budget":"tokens_per_day","scope":"key","limit":1,"used":2,"reserved":0,"requested":3,"resetsAtMs":4}"#
        );
    }
}
