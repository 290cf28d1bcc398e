//! Credentials: who is calling, for which tenant, and whether they may use the
//! route. Pure: the pipeline ([`crate::app`]) gathers the inputs, calls
//! [`decide`], and performs the one lookup a decision may ask for (a key's
//! verification, or the tenant's anonymous setting), then finishes with
//! [`admit_key`] or [`admit_anonymous`].
//!
//! Three kinds of credential, all `authorization: Bearer <token>`:
//! - the operator's `ADMIN_TOKEN`: every route, any tenant (named by
//!   `x-tenant-id` as usual);
//! - the legacy `INGEST_TOKEN`: the ingest routes only;
//! - an API key `tp_<tenant>_<keyId>_<secret>`: the tenant comes from the
//!   key, the route needs the key's scope.
//!
//! On `GET /api/chat/ws` and `GET /api/chat/<id>/stream` the key may also
//! come as `?key=`: browsers cannot set headers on a WebSocket or an
//! EventSource.

use crate::errors::ApiError;
use crate::routing::Access;
use crate::tenant::{self, TenantMode};
use protocol::coordinator::AnonymousAccess;
use protocol::keys::{ParsedKey, Scope, Verification, VerifyKey, KEY_PREFIX};
use protocol::limits::{Budget, Limits};
use protocol::{SessionId, TenantId};
use sha2::{Digest, Sha256};

/// The header naming the end user on whose behalf a caller acts.
pub const USER_HEADER: &str = "x-user-id";

/// Who is calling, as far as the gateway could establish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The credential's holder.
    pub identity: Identity,
    /// The end user the caller names in `x-user-id` (checked like a session
    /// id), for session ownership; asserted by the caller, not proven.
    pub user: Option<String>,
}

/// The holder of the credential a request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `ADMIN_TOKEN`: everything, every tenant of the deployment.
    Operator,
    /// `INGEST_TOKEN` (legacy): the ingest routes.
    Legacy,
    /// A verified API key of the request's tenant.
    Key {
        /// The key id.
        id: String,
        /// What it may do.
        scopes: Vec<Scope>,
        /// Models it may name in a chat turn; empty: the tenant's default only.
        models: Vec<String>,
        /// Its own rate limits (a field it leaves unset takes the tenant's).
        limits: Limits,
        /// Its budget.
        budget: Budget,
    },
    /// No credential: `/health`, or a route the tenant opened to everyone.
    Anonymous,
}

impl Identity {
    /// Whom usage is charged to ([`protocol::usage::caller_of`]).
    pub fn caller(&self) -> String {
        match self {
            Identity::Key { id, .. } => protocol::usage::caller_of(Some(id), false),
            Identity::Anonymous => protocol::usage::caller_of(None, true),
            Identity::Operator | Identity::Legacy => protocol::usage::caller_of(None, false),
        }
    }
}

/// What a key's verification leaves for the gateway to decide with (kept in
/// the isolate's cache instead of the whole record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key id.
    pub id: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Its model allow-list.
    pub models: Vec<String>,
    /// When it stops working.
    pub expires_at_ms: Option<u64>,
    /// Its rate limits.
    pub limits: Limits,
    /// Its budget.
    pub budget: Budget,
}

impl KeyGrant {
    /// The grant of a verification; `None` when the key is not valid.
    pub fn from_verification(verification: Verification) -> Option<Self> {
        match verification {
            // A revoked record is never valid, whatever the answer says.
            Verification::Valid(record) if record.revoked_at_ms.is_none() => Some(Self {
                id: record.id,
                scopes: record.scopes,
                models: record.models,
                expires_at_ms: record.expires_at_ms,
                limits: Limits::from(&record.limits),
                budget: record.budget,
            }),
            _ => None,
        }
    }
}

/// What a request presents, as read from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The `authorization` header.
    pub authorization: Option<&'a str>,
    /// `?key=`: read only on the routes browsers open without headers.
    pub query_key: Option<&'a str>,
    /// The tenant the request names (`x-tenant-id`, or `?tenant=` where
    /// `?key=` is allowed).
    pub claimed_tenant: Option<&'a str>,
}

/// The deployment's shared secrets (unset or empty: no such credential).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens<'a> {
    /// `ADMIN_TOKEN`.
    pub admin: Option<&'a str>,
    /// `INGEST_TOKEN`.
    pub ingest: Option<&'a str>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Settled: serve `tenant` as `identity`.
    Admitted {
        /// The request's tenant.
        tenant: TenantId,
        /// Who is calling.
        identity: Identity,
    },
    /// A well-formed key of a tenant this deployment serves: verify it with
    /// the tenant's coordinator, then call [`admit_key`].
    Verify {
        /// The key's tenant, which is the request's.
        tenant: TenantId,
        /// The check to send (the secret's hash, never the secret).
        verify: VerifyKey,
        /// What the route needs.
        access: Access,
    },
    /// No credential on a route the tenant may have opened: read the tenant's
    /// setting, then call [`admit_anonymous`].
    Anonymous {
        /// The tenant named by the request.
        tenant: TenantId,
        /// The route's scope.
        scope: Scope,
    },
}

/// Decides what a request's credentials mean for `access`, in `mode`.
///
/// The secrets are compared in constant time. Every `tp_` token costs one
/// SHA-256, well-formed or not, and every well-formed one of a served tenant
/// goes on to a verification, so a wrong secret and a wrong key id cannot be
/// told apart here; the coordinator compares hashes in constant time.
pub fn decide(
    access: Access,
    presented: &Presented<'_>,
    mode: &TenantMode,
    tokens: &Tokens<'_>,
) -> Result<Decision, ApiError> {
    let resolve = || mode.resolve(presented.claimed_tenant);
    if access == Access::Public {
        return Ok(Decision::Admitted {
            tenant: resolve()?,
            identity: Identity::Anonymous,
        });
    }
    let Some(token) = credential(presented.authorization, presented.query_key)? else {
        return match access {
            Access::Scoped(scope @ (Scope::Search | Scope::Chat)) => Ok(Decision::Anonymous {
                tenant: resolve()?,
                scope,
            }),
            _ => Err(ApiError::missing_key()),
        };
    };
    // Both comparisons always run, so timing says nothing about which matched.
    let is_admin = matches_token(token, tokens.admin);
    let is_ingest = matches_token(token, tokens.ingest);
    if is_admin {
        return Ok(Decision::Admitted {
            tenant: resolve()?,
            identity: Identity::Operator,
        });
    }
    if is_ingest {
        return match access {
            Access::Scoped(Scope::Ingest) => Ok(Decision::Admitted {
                tenant: resolve()?,
                identity: Identity::Legacy,
            }),
            _ => Err(ApiError::forbidden_scope(needed(access))),
        };
    }
    if !token.starts_with(KEY_PREFIX) {
        return Err(ApiError::invalid_key());
    }
    let parsed = ParsedKey::parse(token);
    // One hash whatever the parse gave: a malformed key costs what a
    // well-formed one does up to the verification.
    let secret_sha256 = sha256_hex(parsed.as_ref().map_or(token, |k| k.secret.as_str()));
    let key = parsed.map_err(|_| ApiError::invalid_key())?;
    if !mode.serves(&key.tenant) {
        return Err(ApiError::invalid_key());
    }
    if let Some(claimed) = presented.claimed_tenant {
        if tenant::parse_header(claimed)? != key.tenant {
            return Err(ApiError::tenant_mismatch(
                "the tenant named by the request is not the key's",
            ));
        }
    }
    Ok(Decision::Verify {
        tenant: key.tenant,
        verify: VerifyKey {
            id: key.key_id,
            secret_sha256,
        },
        access,
    })
}

/// Whether the request presents the operator's `ADMIN_TOKEN` in its
/// `authorization` header (compared in constant time): the routes that serve
/// no tenant (`GET /admin/tenants`) admit it without one. Anything else goes
/// through [`decide`], which refuses it as usual.
pub fn is_operator(presented: &Presented<'_>, tokens: &Tokens<'_>) -> bool {
    matches!(
        credential(presented.authorization, None),
        Ok(Some(token)) if matches_token(token, tokens.admin)
    )
}

/// Finishes a [`Decision::Verify`] with its answer (`None`: not valid) at
/// `now_ms`: refused unless valid, unexpired and holding the route's scope.
pub fn admit_key(
    grant: Option<&KeyGrant>,
    access: Access,
    now_ms: u64,
) -> Result<Identity, ApiError> {
    let grant = grant
        // A cached answer may outlive the expiry by up to the cache's age.
        .filter(|g| g.expires_at_ms.is_none_or(|t| t > now_ms))
        .ok_or_else(ApiError::invalid_key)?;
    let allowed = match access {
        Access::Public => true,
        Access::Scoped(scope) => grant.scopes.contains(&scope),
        Access::AnyKey => !grant.scopes.is_empty(),
        Access::Operator => false,
    };
    if !allowed {
        return Err(ApiError::forbidden_scope(needed(access)));
    }
    Ok(Identity::Key {
        id: grant.id.clone(),
        scopes: grant.scopes.clone(),
        models: grant.models.clone(),
        limits: grant.limits,
        budget: grant.budget,
    })
}

/// Finishes a [`Decision::Anonymous`] with the tenant's setting.
pub fn admit_anonymous(open: AnonymousAccess, scope: Scope) -> Result<Identity, ApiError> {
    let allowed = match scope {
        Scope::Search => open.search,
        Scope::Chat => open.chat,
        Scope::Ingest | Scope::Admin => false,
    };
    if allowed {
        Ok(Identity::Anonymous)
    } else {
        Err(ApiError::missing_key())
    }
}

/// Whether `identity` may name `model` in a chat turn, given the tenant's
/// default chat model. The operator may name any; a key with a list, those;
/// a key with an empty list and an anonymous caller, the default only. A turn
/// that names no model uses the default and needs no check.
pub fn check_model(identity: &Identity, model: &str, default_chat: &str) -> Result<(), ApiError> {
    let allowed = match identity {
        Identity::Operator => true,
        Identity::Key { models, .. } if !models.is_empty() => models.iter().any(|m| m == model),
        Identity::Key { .. } | Identity::Legacy | Identity::Anonymous => model == default_chat,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::model_not_allowed())
    }
}

/// Whether [`check_model`] needs the tenant's default model for `identity`.
pub fn model_check_needs_default(identity: &Identity) -> bool {
    match identity {
        Identity::Operator => false,
        Identity::Key { models, .. } => models.is_empty(),
        Identity::Legacy | Identity::Anonymous => true,
    }
}

/// Checks the `x-user-id` header (the session id rule); absent is fine.
pub fn user(header: Option<&str>) -> Result<Option<String>, ApiError> {
    header
        .map(|raw| {
            SessionId::parse(raw)
                .map(|id| id.as_str().to_owned())
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_user",
                        format!("{USER_HEADER} must match ^[a-z0-9][a-z0-9-]{{0,127}}$"),
                    )
                })
        })
        .transpose()
}

/// SHA-256 of `s` in lowercase hex (what the coordinator stores of a secret).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The bearer token of a request: the `authorization` header's, or `?key=`
/// where that is read. A header that is not `Bearer <token>`, an empty token,
/// or a header and a query that disagree, is an invalid key.
fn credential<'a>(
    authorization: Option<&'a str>,
    query_key: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    // The scheme's name is case-insensitive (RFC 9110): `bearer` is Bearer.
    let header = authorization
        .map(|h| {
            h.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .and_then(|_| h.get(7..))
                .filter(|t| !t.is_empty())
        })
        .map(|t| t.ok_or_else(ApiError::invalid_key))
        .transpose()?;
    // Only an API key may travel in a URL (URLs are logged, kept in browser
    // history and by proxies): never the operator's or the ingest token.
    let query = query_key
        .map(|q| {
            Some(q)
                .filter(|t| t.starts_with(KEY_PREFIX))
                .ok_or_else(ApiError::invalid_key)
        })
        .transpose()?;
    match (header, query) {
        (Some(h), Some(q)) if !constant_time_eq(h.as_bytes(), q.as_bytes()) => {
            Err(ApiError::invalid_key())
        }
        (h, q) => Ok(h.or(q)),
    }
}

fn matches_token(presented: &str, expected: Option<&str>) -> bool {
    expected
        .filter(|t| !t.is_empty())
        .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes()))
}

fn needed(access: Access) -> &'static str {
    match access {
        Access::Scoped(scope) => scope.as_str(),
        Access::AnyKey => "search, chat, ingest or admin",
        Access::Public | Access::Operator => "operator",
    }
}

/// Compares two byte strings in time that does not depend on where they
/// differ (`subtle`, whose comparison the optimizer cannot turn back into an
/// early exit). A length mismatch answers at once: the length of a token may
/// leak through timing, its content does not.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keys::{KeyLimits, KeyRecord};

    const ADMIN: &str = "admin-secret";
    const INGEST: &str = "ingest-secret";
    const KEY_ID: &str = "0123456789ab";

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn secret() -> String {
        "5e".repeat(32)
    }

    fn key(tenant: &str) -> String {
        ParsedKey::format(&id(tenant), KEY_ID, &secret())
    }

    fn dedicated() -> TenantMode {
        TenantMode::Dedicated(id("acme"))
    }

    fn shared() -> TenantMode {
        TenantMode::Shared(vec![id("acme"), id("beta")])
    }

    const TOKENS: Tokens<'static> = Tokens {
        admin: Some(ADMIN),
        ingest: Some(INGEST),
    };

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn run(
        access: Access,
        auth: Option<&str>,
        tenant: Option<&str>,
        mode: &TenantMode,
    ) -> Result<Decision, ApiError> {
        let presented = Presented {
            authorization: auth,
            query_key: None,
            claimed_tenant: tenant,
        };
        decide(access, &presented, mode, &TOKENS)
    }

    fn code(r: Result<Decision, ApiError>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.status(), e.code().to_owned())
    }

    const SEARCH: Access = Access::Scoped(Scope::Search);
    const CHAT: Access = Access::Scoped(Scope::Chat);
    const INGESTING: Access = Access::Scoped(Scope::Ingest);
    const ADMINS: Access = Access::Scoped(Scope::Admin);

    #[test]
    fn the_operator_token_opens_every_route() {
        for access in [SEARCH, CHAT, INGESTING, ADMINS, Access::Operator] {
            let d = run(access, Some(&bearer(ADMIN)), Some("beta"), &shared()).unwrap();
            assert_eq!(
                d,
                Decision::Admitted {
                    tenant: id("beta"),
                    identity: Identity::Operator
                }
            );
        }
        // The tenant still comes from the header, with today's errors.
        let auth = bearer(ADMIN);
        assert_eq!(
            code(run(ADMINS, Some(&auth), None, &shared())),
            (400, "missing_tenant".into())
        );
        assert_eq!(
            code(run(ADMINS, Some(&auth), Some("other"), &dedicated())),
            (403, "tenant_mismatch".into())
        );
        assert_eq!(
            run(ADMINS, Some(&auth), None, &dedicated()),
            Ok(Decision::Admitted {
                tenant: id("acme"),
                identity: Identity::Operator
            })
        );
    }

    #[test]
    fn the_ingest_token_opens_the_ingest_routes_only() {
        let auth = bearer(INGEST);
        assert_eq!(
            run(INGESTING, Some(&auth), Some("acme"), &shared()),
            Ok(Decision::Admitted {
                tenant: id("acme"),
                identity: Identity::Legacy
            })
        );
        for access in [SEARCH, CHAT, ADMINS, Access::Operator] {
            assert_eq!(
                code(run(access, Some(&auth), Some("acme"), &shared())),
                (403, "forbidden_scope".into())
            );
        }
    }

    #[test]
    fn the_operator_is_recognised_without_a_tenant() {
        let tokens = Tokens {
            admin: Some("op-secret"),
            ingest: Some("in-secret"),
        };
        let presented = |authorization| Presented {
            authorization,
            query_key: None,
            claimed_tenant: None,
        };
        assert!(is_operator(&presented(Some("Bearer op-secret")), &tokens));
        // The scheme's name in any case (RFC 9110), the token as it is.
        assert!(is_operator(&presented(Some("bearer op-secret")), &tokens));
        assert!(is_operator(&presented(Some("BEARER op-secret")), &tokens));
        for other in [
            None,
            Some("Bearer in-secret"),
            Some("Bearer op-secre"),
            Some("Bearer OP-SECRET"),
            Some("op-secret"),
            Some("Bearer "),
            Some("Bearerop-secret"),
            Some("Basic op-secret"),
            Some("béarer op-secret"),
        ] {
            assert!(!is_operator(&presented(other), &tokens), "{other:?}");
        }
        assert!(!is_operator(
            &presented(Some("Bearer op-secret")),
            &Tokens::default()
        ));
    }

    #[test]
    fn unset_or_empty_tokens_match_nothing() {
        let none = Tokens::default();
        let empty = Tokens {
            admin: Some(""),
            ingest: Some(""),
        };
        for tokens in [none, empty] {
            for auth in ["Bearer ", "Bearer x", "Bearer admin-secret"] {
                let presented = Presented {
                    authorization: Some(auth),
                    ..Presented::default()
                };
                let e = decide(ADMINS, &presented, &dedicated(), &tokens).unwrap_err();
                assert_eq!(e.code(), "invalid_key", "{auth}");
            }
        }
    }

    #[test]
    fn a_key_names_its_tenant() {
        let k = key("acme");
        let want = Decision::Verify {
            tenant: id("acme"),
            verify: VerifyKey {
                id: KEY_ID.into(),
                secret_sha256: sha256_hex(&secret()),
            },
            access: CHAT,
        };
        // No header needed, in either mode; the same header is fine.
        for mode in [dedicated(), shared()] {
            assert_eq!(run(CHAT, Some(&bearer(&k)), None, &mode), Ok(want.clone()));
            assert_eq!(
                run(CHAT, Some(&bearer(&k)), Some("acme"), &mode),
                Ok(want.clone())
            );
            // A header naming another tenant: 403, in both modes.
            assert_eq!(
                code(run(CHAT, Some(&bearer(&k)), Some("beta"), &mode)),
                (403, "tenant_mismatch".into())
            );
            assert_eq!(
                code(run(CHAT, Some(&bearer(&k)), Some("Bad!"), &mode)),
                (400, "invalid_tenant".into())
            );
        }
        // A key of a tenant this deployment does not serve: not a key here.
        let beta = key("beta");
        assert_eq!(
            code(run(CHAT, Some(&bearer(&beta)), None, &dedicated())),
            (401, "invalid_key".into())
        );
        assert!(run(CHAT, Some(&bearer(&beta)), None, &shared()).is_ok());
        let gamma = key("gamma");
        assert_eq!(
            code(run(CHAT, Some(&bearer(&gamma)), Some("gamma"), &shared())),
            (401, "invalid_key".into())
        );
        // The secret's hash is sent, never the secret.
        let Ok(Decision::Verify { verify, .. }) = run(CHAT, Some(&bearer(&k)), None, &shared())
        else {
            panic!("not a verification")
        };
        assert_eq!(verify.secret_sha256.len(), 64);
        assert!(!verify.secret_sha256.contains(&secret()));
        // Even /admin/faults goes to verification first: an invalid key is
        // then a 401 like anywhere else, a valid one a 403.
        assert!(matches!(
            run(Access::Operator, Some(&bearer(&k)), None, &dedicated()),
            Ok(Decision::Verify { .. })
        ));
    }

    #[test]
    fn malformed_and_wrong_credentials_are_invalid_keys() {
        let k = key("acme");
        for auth in [
            "Bearer tp_".to_owned(),
            "Bearer tp_acme_0123456789ab_00".to_owned(),
            format!("Bearer {}", k.to_uppercase()),
            format!("Bearer {k}_x"),
            "Bearer wrong-token".into(),
            "Bearer admin-secre".into(),
            format!("Basic {k}"),
            format!("bearer{k}"),
            k.clone(),
            "Bearer ".into(),
        ] {
            assert_eq!(
                code(run(SEARCH, Some(&auth), Some("acme"), &shared())),
                (401, "invalid_key".into()),
                "{auth}"
            );
            // A presented but invalid credential never falls back to anonymous.
        }
        // The scheme's name is case-insensitive: the key is checked.
        for auth in [format!("bearer {k}"), format!("BEARER {k}")] {
            assert!(
                matches!(
                    decide(
                        SEARCH,
                        &Presented {
                            authorization: Some(&auth),
                            query_key: None,
                            claimed_tenant: Some("acme"),
                        },
                        &shared(),
                        &Tokens::default()
                    ),
                    Ok(Decision::Verify { .. })
                ),
                "{auth}"
            );
        }
    }

    #[test]
    fn no_credential() {
        for access in [INGESTING, ADMINS, Access::Operator] {
            assert_eq!(
                code(run(access, None, Some("acme"), &shared())),
                (401, "missing_key".into())
            );
        }
        for (access, scope) in [(SEARCH, Scope::Search), (CHAT, Scope::Chat)] {
            assert_eq!(
                run(access, None, Some("acme"), &shared()),
                Ok(Decision::Anonymous {
                    tenant: id("acme"),
                    scope
                })
            );
        }
        assert_eq!(
            code(run(SEARCH, None, None, &shared())),
            (400, "missing_tenant".into())
        );
        // /health needs nothing and ignores what it is given.
        assert_eq!(
            run(Access::Public, Some("Bearer junk"), None, &dedicated()),
            Ok(Decision::Admitted {
                tenant: id("acme"),
                identity: Identity::Anonymous
            })
        );
    }

    #[test]
    fn browsers_may_send_the_key_in_the_query() {
        let k = key("acme");
        let with = |auth: Option<&str>, q: Option<&str>| {
            let presented = Presented {
                authorization: auth,
                query_key: q,
                claimed_tenant: None,
            };
            decide(CHAT, &presented, &shared(), &TOKENS)
        };
        assert!(matches!(with(None, Some(&k)), Ok(Decision::Verify { .. })));
        let auth = bearer(&k);
        assert!(matches!(
            with(Some(&auth), Some(&k)),
            Ok(Decision::Verify { .. })
        ));
        assert_eq!(code(with(Some(&auth), Some("other"))).1, "invalid_key");
        assert_eq!(code(with(None, Some(""))).1, "invalid_key");
        // Only an API key may come in the URL, never the operator's token.
        assert_eq!(code(with(None, Some(ADMIN))).1, "invalid_key");
    }

    fn grant(scopes: Vec<Scope>, models: Vec<&str>, expires: Option<u64>) -> KeyGrant {
        KeyGrant {
            budget: Default::default(),
            limits: Limits::default(),
            id: KEY_ID.into(),
            scopes,
            models: models.into_iter().map(String::from).collect(),
            expires_at_ms: expires,
        }
    }

    #[test]
    fn verified_keys_need_the_routes_scope() {
        let g = grant(vec![Scope::Search, Scope::Admin], vec![], None);
        let ok = admit_key(Some(&g), SEARCH, 10).unwrap();
        assert_eq!(
            ok,
            Identity::Key {
                budget: Default::default(),
                limits: Limits::default(),
                id: KEY_ID.into(),
                scopes: vec![Scope::Search, Scope::Admin],
                models: vec![]
            }
        );
        assert!(admit_key(Some(&g), ADMINS, 10).is_ok());
        for access in [CHAT, INGESTING, Access::Operator] {
            let e = admit_key(Some(&g), access, 10).unwrap_err();
            assert_eq!((e.status(), e.code()), (403, "forbidden_scope"));
        }
        let e = admit_key(None, SEARCH, 10).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "invalid_key"));
        // Expired since it was cached: refused, and not told why.
        let expiring = grant(vec![Scope::Search], vec![], Some(10));
        assert!(admit_key(Some(&expiring), SEARCH, 9).is_ok());
        assert_eq!(
            admit_key(Some(&expiring), SEARCH, 10).unwrap_err().code(),
            "invalid_key"
        );
        // Without the route's scope and invalid: invalid wins.
        assert_eq!(
            admit_key(Some(&expiring), CHAT, 10).unwrap_err().code(),
            "invalid_key"
        );
    }

    #[test]
    fn verifications_become_grants() {
        let record = KeyRecord {
            budget: Default::default(),
            id: KEY_ID.into(),
            name: "ci".into(),
            scopes: vec![Scope::Chat],
            models: vec!["m".into()],
            expires_at_ms: Some(5),
            created_at_ms: 1,
            last_used_at_ms: None,
            revoked_at_ms: None,
            rotated_at_ms: None,
            previous_valid_until_ms: None,
            limits: KeyLimits::default(),
        };
        assert_eq!(
            KeyGrant::from_verification(Verification::Valid(record.clone())),
            Some(grant(vec![Scope::Chat], vec!["m"], Some(5)))
        );
        assert_eq!(KeyGrant::from_verification(Verification::Invalid), None);
        let revoked = KeyRecord {
            revoked_at_ms: Some(2),
            ..record
        };
        assert_eq!(
            KeyGrant::from_verification(Verification::Valid(revoked)),
            None
        );
    }

    #[test]
    fn anonymous_access_is_the_tenants_choice() {
        let closed = AnonymousAccess::default();
        let search_only = AnonymousAccess {
            search: true,
            chat: false,
        };
        let both = AnonymousAccess {
            search: true,
            chat: true,
        };
        assert_eq!(
            admit_anonymous(closed, Scope::Search).unwrap_err().code(),
            "missing_key"
        );
        assert_eq!(
            admit_anonymous(search_only, Scope::Search),
            Ok(Identity::Anonymous)
        );
        assert_eq!(
            admit_anonymous(search_only, Scope::Chat)
                .unwrap_err()
                .status(),
            401
        );
        assert!(admit_anonymous(both, Scope::Chat).is_ok());
        assert!(admit_anonymous(both, Scope::Ingest).is_err());
        assert!(admit_anonymous(both, Scope::Admin).is_err());
    }

    #[test]
    fn models() {
        let listed = Identity::Key {
            budget: Default::default(),
            limits: Limits::default(),
            id: KEY_ID.into(),
            scopes: vec![Scope::Chat],
            models: vec!["@cf/a".into(), "@cf/b".into()],
        };
        let unlisted = Identity::Key {
            budget: Default::default(),
            limits: Limits::default(),
            id: KEY_ID.into(),
            scopes: vec![Scope::Chat],
            models: vec![],
        };
        assert!(check_model(&listed, "@cf/b", "@cf/default").is_ok());
        let e = check_model(&listed, "@cf/default", "@cf/default").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "model_not_allowed"));
        assert!(check_model(&unlisted, "@cf/default", "@cf/default").is_ok());
        assert!(check_model(&unlisted, "@cf/a", "@cf/default").is_err());
        assert!(check_model(&Identity::Anonymous, "@cf/a", "@cf/default").is_err());
        assert!(check_model(&Identity::Operator, "@cf/anything", "@cf/default").is_ok());
        assert!(!model_check_needs_default(&Identity::Operator));
        assert!(!model_check_needs_default(&listed));
        assert!(model_check_needs_default(&unlisted));
        assert!(model_check_needs_default(&Identity::Anonymous));
    }

    #[test]
    fn users() {
        assert_eq!(user(None), Ok(None));
        assert_eq!(user(Some("user-1")), Ok(Some("user-1".into())));
        for bad in ["", "User", "a:b", "a b", &"a".repeat(129)] {
            let e = user(Some(bad)).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_user"), "{bad:?}");
        }
    }

    #[test]
    fn no_error_carries_the_key() {
        let k = key("acme");
        for auth in [bearer(&k), bearer(&format!("{k}x")), bearer(&key("gamma"))] {
            for access in [SEARCH, Access::Operator] {
                for tenant in [None, Some("beta"), Some("acme")] {
                    if let Err(e) = run(access, Some(&auth), tenant, &shared()) {
                        let body = e.body().to_string();
                        assert!(!body.contains(&secret()), "{body}");
                        assert!(!body.contains(KEY_ID), "{body}");
                    }
                }
            }
        }
    }

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"\0\0\0", b"\0\0"));
    }
}
