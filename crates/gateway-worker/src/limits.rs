//! Admission at the front door, without I/O: who a request counts against
//! (a key's limiter, or one per anonymous client), which limits apply, what
//! a chat turn reserves, and how a refusal is answered.
//!
//! Every request on a limited route ([`work_of`]) is admitted by the
//! caller's `RateLimiter` before it reaches the actor that does the work: one
//! request against `rpm`, and for a chat turn a concurrency slot and an
//! estimate of its tokens against `tpm`, settled by the session with what
//! the turn used. The operator's token and the legacy ingest token are not
//! limited.

use crate::auth::Identity;
use crate::errors::ApiError;
use crate::routing::Route;
use actors::limiter::{Admission, LimitedBy};
use protocol::limits::{Budget, Limits, RateLimitInfo};
use sha2::{Digest, Sha256};

pub use actors::limiter::admission::{
    admit, effective, turn_hold_ms, Applied, Work, TENANT_BUDGET_LIMITER, TURN_HOLD_MARGIN_MS,
    TURN_INPUT_ESTIMATE,
};

/// The work of `route` that limits apply to; `None` for routes that are not
/// limited (reads, the admin routes, health). A chat turn's work is known
/// once its body is read ([`Work::Turn`]).
pub fn work_of(route: &Route) -> Option<Work> {
    match route {
        Route::Search
        | Route::Ingest
        | Route::ChatSocket
        | Route::Chat
        | Route::V1ChatCompletions
        | Route::V1Embeddings => Some(Work::Request),
        _ => None,
    }
}

/// Whose limiter a request counts against: the key's, or one per anonymous
/// client (by a digest of its address); `None` for the operator and the
/// legacy ingest token.
pub fn limited_by(identity: &Identity, client_address: Option<&str>) -> Option<LimitedBy> {
    match identity {
        Identity::Key { id, .. } => Some(LimitedBy::Key(id.clone())),
        Identity::Anonymous => Some(LimitedBy::Anonymous(client_digest(
            client_address.unwrap_or("unknown"),
        ))),
        Identity::Operator | Identity::Legacy => None,
    }
}

/// 16 hex digits of the SHA-256 of a client address: enough to keep
/// clients apart, and the address itself is never a Durable Object name.
pub fn client_digest(address: &str) -> String {
    let digest = Sha256::digest(address.trim().as_bytes());
    hex::encode(&digest[..8])
}

/// The limits that apply to `identity`: a key's own over the tenant's
/// defaults; an anonymous client's are the tenant's defaults.
pub fn limits_for(identity: &Identity, tenant: &Limits) -> Limits {
    match identity {
        Identity::Key { limits, .. } => effective(limits, tenant),
        _ => *tenant,
    }
}

/// Whether any limit or budget applies: a caller with none of its own under
/// a tenant with none is not sent to a limiter at all.
pub fn applies(own: &Limits, tenant: &Limits, budget: &Budget) -> bool {
    *own != Limits::default() || *tenant != Limits::default() || budget.is_set()
}

/// The budget of `identity` (only keys have one).
pub fn budget_of(identity: &Identity) -> Budget {
    match identity {
        Identity::Key { budget, .. } => *budget,
        _ => Budget::default(),
    }
}

/// What an admission comes to: the reservation (if any) and the headers'
/// numbers, or the refusal.
pub fn outcome(admission: Admission) -> Result<(Option<u64>, Option<RateLimitInfo>), ApiError> {
    match admission {
        Admission::Admitted(a) => Ok((a.reservation_id, a.rate_limit)),
        Admission::RateLimited(r) => Err(ApiError::RateLimited {
            limit: r.limit,
            scope: r.scope,
            retry_after_secs: r.retry_after_secs,
            policy: r.rate_limit,
        }),
        Admission::BudgetExceeded(b) => Err(ApiError::BudgetExceeded(b)),
    }
}

/// Checks that limits a tenant admin sets on a key stay within the tenant's
/// (the operator may set any).
pub fn check_key_limits(key: &Limits, tenant: &Limits, by_operator: bool) -> Result<(), ApiError> {
    key.validate()
        .map_err(|e| ApiError::bad_request("invalid_limits", e.to_string()))?;
    if by_operator {
        return Ok(());
    }
    // A limit the key leaves unset is the tenant's own.
    effective(key, tenant)
        .within(tenant)
        .map_err(|e| ApiError::bad_request("limits_above_tenant", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::limits::{
        Admitted, BudgetExceeded, BudgetKind, LimitKind, LimitScope, RateLimited,
    };

    fn key(limits: Limits) -> Identity {
        Identity::Key {
            budget: Default::default(),
            id: "0123456789ab".into(),
            scopes: vec![],
            models: vec![],
            limits,
        }
    }

    #[test]
    fn a_client_digest_is_sixteen_hex_digits_of_the_trimmed_address() {
        // SHA-256("127.0.0.1") begins 12ca17b49af22894.
        assert_eq!(client_digest(" 127.0.0.1 "), "12ca17b49af22894");
        assert_ne!(client_digest("127.0.0.1"), client_digest("127.0.0.2"));
    }

    #[test]
    fn work_routes_are_limited_and_reads_are_not() {
        assert_eq!(work_of(&Route::Search), Some(Work::Request));
        assert_eq!(work_of(&Route::Ingest), Some(Work::Request));
        assert_eq!(work_of(&Route::ChatSocket), Some(Work::Request));
        assert_eq!(work_of(&Route::Health), None);
        assert_eq!(work_of(&Route::ListKeys), None);
        assert_eq!(
            work_of(&Route::History {
                session: "s".into()
            }),
            None
        );
    }

    #[test]
    fn who_is_limited() {
        assert_eq!(
            limited_by(&key(Limits::default()), Some("1.2.3.4")),
            Some(LimitedBy::Key("0123456789ab".into()))
        );
        let a = limited_by(&Identity::Anonymous, Some("1.2.3.4"));
        let b = limited_by(&Identity::Anonymous, Some("5.6.7.8"));
        assert_ne!(a, b, "clients are apart");
        let Some(LimitedBy::Anonymous(digest)) = a else {
            panic!("anonymous traffic has a limiter per client")
        };
        assert_eq!(digest.len(), 16);
        assert!(!digest.contains('.'), "never the address itself");
        assert_eq!(limited_by(&Identity::Operator, None), None);
        assert_eq!(limited_by(&Identity::Legacy, None), None);
    }

    #[test]
    fn a_keys_own_limits_win_field_by_field() {
        let tenant = Limits {
            rpm: Some(600),
            tpm: Some(100_000),
            concurrency: Some(8),
        };
        let own = Limits {
            rpm: Some(10),
            ..Limits::default()
        };
        let got = limits_for(&key(own), &tenant);
        assert_eq!(
            got,
            Limits {
                rpm: Some(10),
                tpm: Some(100_000),
                concurrency: Some(8)
            }
        );
        assert_eq!(limits_for(&Identity::Anonymous, &tenant), tenant);
        let no_budget = Budget::default();
        assert!(applies(&got, &tenant, &no_budget));
        let none = Limits::default();
        assert!(
            !applies(&none, &none, &no_budget),
            "no limits: no limiter call"
        );
        assert!(
            applies(&none, &tenant, &no_budget),
            "the tenant's total still counts"
        );
        let budget = Budget {
            tokens_per_day: Some(1_000),
            ..Budget::default()
        };
        assert!(applies(&none, &none, &budget), "a budget alone counts too");
    }

    #[test]
    fn refusals_become_429_and_402() {
        let ok = outcome(Admission::Admitted(Admitted {
            reservation_id: Some(7),
            rate_limit: None,
            advanced: 0,
        }));
        assert_eq!(ok, Ok((Some(7), None)));
        let limited = outcome(Admission::RateLimited(RateLimited {
            limit: LimitKind::Rpm,
            scope: LimitScope::Key,
            retry_after_secs: 6,
            rate_limit: None,
        }))
        .unwrap_err();
        assert_eq!((limited.status(), limited.code()), (429, "rate_limited"));
        assert_eq!(limited.body()["error"]["limit"], "rpm");
        assert_eq!(limited.body()["error"]["scope"], "key");
        assert!(limited
            .headers(0)
            .contains(&("retry-after", "6".to_owned())));
        let spent = outcome(Admission::BudgetExceeded(BudgetExceeded {
            budget: BudgetKind::TokensPerDay,
            scope: LimitScope::Key,
            limit: 100,
            used: 100,
            reserved: 0,
            requested: 5,
            resets_at_ms: 86_400_000,
        }))
        .unwrap_err();
        assert_eq!((spent.status(), spent.code()), (402, "budget_exceeded"));
        assert_eq!(spent.body()["error"]["budget"], "tokens_per_day");
        assert_eq!(spent.body()["error"]["resetsAtMs"], 86_400_000);
    }

    #[test]
    fn a_tenant_admin_stays_within_the_tenant() {
        let tenant = Limits {
            rpm: Some(100),
            ..Limits::default()
        };
        let above = Limits {
            rpm: Some(101),
            ..Limits::default()
        };
        let err = check_key_limits(&above, &tenant, false).unwrap_err();
        assert_eq!(err.code(), "limits_above_tenant");
        assert!(
            check_key_limits(&above, &tenant, true).is_ok(),
            "the operator may"
        );
        let unset = Limits::default();
        assert!(
            check_key_limits(&unset, &tenant, false).is_ok(),
            "an unset limit is the tenant's"
        );
        let zero = Limits {
            rpm: Some(0),
            ..Limits::default()
        };
        assert_eq!(
            check_key_limits(&zero, &tenant, true).unwrap_err().code(),
            "invalid_limits"
        );
    }
}
