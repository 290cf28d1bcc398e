//! Every way a request can fail, and the one place where failures become HTTP.

use actors::ActorError;
use protocol::limits::{BudgetExceeded, LimitKind, LimitScope, RateLimitInfo};
use protocol::ErrorCode;
use serde_json::json;

/// A failure answered to the client as
/// `{"error":{"code":"<snake_case>","message":"<human text>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Bad input: 400.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// Missing or wrong credentials: 401 (`missing_key`, `invalid_key`).
    #[error("{message}")]
    Unauthorized {
        /// Machine-readable code.
        code: &'static str,
        /// Human explanation; never names the key or why it failed.
        message: String,
    },
    /// Credentials fine, access not allowed: 403.
    #[error("{message}")]
    Forbidden {
        /// Machine-readable code.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// Unknown route, tenant or resource: 404.
    #[error("{message}")]
    NotFound {
        /// Machine-readable code.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// The route exists but not for this method: 405 with `Allow`.
    #[error("method {method} is not allowed here; allowed: {}", .allow.join(", "))]
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The methods the route accepts.
        allow: Vec<&'static str>,
    },
    /// The resource is busy with an earlier request: 409.
    #[error("{0}")]
    Conflict(String),
    /// The request conflicts with the resource's state (a change of the
    /// embedding model over a non-empty index): 409 with its own code.
    #[error("{message}")]
    StateConflict {
        /// Machine-readable code (`index_not_empty`).
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// The route needs a WebSocket upgrade: 426.
    #[error("this route needs a WebSocket upgrade (Upgrade: websocket)")]
    UpgradeRequired,
    /// The body is larger than the route accepts: 413.
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body has the wrong content type: 415.
    #[error("expected content-type {expected}")]
    UnsupportedMediaType {
        /// The content type the route accepts.
        expected: &'static str,
    },
    /// A bound of the platform would be exceeded (the tenant's index, a
    /// session's history): 413, with the bound's own code (`index_full`).
    #[error("{message}")]
    QuotaExceeded {
        /// Machine-readable code naming the bound.
        code: String,
        /// Human explanation.
        message: String,
    },
    /// A rate limit is reached: 429 `rate_limited`, naming the limit and
    /// whose it is, with `Retry-After` (and the `RateLimit` headers when the
    /// limit is the key's).
    #[error("the {} limit of this {} is reached; retry in {retry_after_secs} s", .limit.as_str(), .scope.as_str())]
    RateLimited {
        /// Which limit.
        limit: LimitKind,
        /// Whose.
        scope: LimitScope,
        /// Whole seconds until a retry can succeed.
        retry_after_secs: u64,
        /// The limit's numbers, for the headers.
        policy: Option<RateLimitInfo>,
    },
    /// A budget would be exceeded: 402 `budget_exceeded`, naming it, its
    /// limit, what is used and when it resets.
    #[error("the {} budget of this {} ({}) would be exceeded: {} used and {} reserved, this request needs {}; it resets at {} ms", .0.budget.as_str(), .0.scope.as_str(), .0.limit, .0.used, .0.reserved, .0.requested, .0.resets_at_ms)]
    BudgetExceeded(BudgetExceeded),
    /// Our own code failed (a bug, storage): 500.
    #[error("{0}")]
    Internal(String),
    /// The deployment is missing something it needs (a var, a secret): 503.
    #[error("{0}")]
    NotConfigured(String),
    /// An actor could not be reached or failed on its side: 503.
    #[error("{0}")]
    Unavailable(String),
    /// An actor answered something it should not have: 502.
    #[error("{0}")]
    BadUpstream(String),
    /// A failure of an OpenAI-compatible route, already in OpenAI's terms.
    #[error("{0}")]
    OpenAi(Box<crate::openai::errors::OpenAiError>),
}

impl ApiError {
    /// Shorthand for a 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for a 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    /// 401 `missing_key`: the route needs a credential and none came.
    pub fn missing_key() -> Self {
        Self::Unauthorized {
            code: "missing_key",
            message: "this route needs an API key: authorization: Bearer <key>".into(),
        }
    }

    /// 401 `invalid_key`: unknown, malformed, expired or revoked, and
    /// deliberately not saying which (nor echoing the key).
    pub fn invalid_key() -> Self {
        Self::Unauthorized {
            code: "invalid_key",
            message: "the key is not valid".into(),
        }
    }

    /// 403 `forbidden_scope`: a valid credential without the route's scope.
    pub fn forbidden_scope(needed: &str) -> Self {
        Self::Forbidden {
            code: "forbidden_scope",
            message: format!("this credential does not have the {needed} scope"),
        }
    }

    /// 403 `tenant_mismatch`: the tenant named by the request is not the
    /// key's, or not this deployment's.
    pub fn tenant_mismatch(message: impl Into<String>) -> Self {
        Self::Forbidden {
            code: "tenant_mismatch",
            message: message.into(),
        }
    }

    /// 403 `model_not_allowed`: the chat `model` is outside the key's (or,
    /// for an empty list or no key, the tenant's) allow-list.
    pub fn model_not_allowed() -> Self {
        Self::Forbidden {
            code: "model_not_allowed",
            message: "this caller may not use that model".into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::Conflict(_) | Self::StateConflict { .. } => 409,
            Self::UpgradeRequired => 426,
            Self::PayloadTooLarge { .. } | Self::QuotaExceeded { .. } => 413,
            Self::Internal(_) => 500,
            Self::RateLimited { .. } => 429,
            Self::BudgetExceeded(_) => 402,
            Self::UnsupportedMediaType { .. } => 415,
            Self::BadUpstream(_) => 502,
            Self::NotConfigured(_) | Self::Unavailable(_) => 503,
            Self::OpenAi(e) => e.status,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Self::QuotaExceeded { code, .. } => code,
            Self::Internal(_) => "internal",
            Self::RateLimited { .. } => "rate_limited",
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::NotFound { code, .. }
            | Self::StateConflict { code, .. } => code,
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Conflict(_) => "busy",
            Self::UpgradeRequired => "upgrade_required",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::NotConfigured(_) => "not_configured",
            Self::Unavailable(_) => "actor_unavailable",
            Self::BadUpstream(_) => "bad_upstream",
            Self::OpenAi(e) => e.code.as_deref().unwrap_or(e.kind),
        }
    }

    /// The headers the answer carries besides its JSON: `Allow` for a 405,
    /// `Retry-After` (and the IETF `RateLimit-Policy` / `RateLimit`) for a
    /// 429, `Retry-After` for a 402.
    pub fn headers(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        match self {
            Self::MethodNotAllowed { allow, .. } => vec![("allow", allow.join(", "))],
            Self::RateLimited {
                retry_after_secs,
                policy,
                ..
            } => {
                let mut headers = vec![("retry-after", retry_after_secs.max(&1).to_string())];
                if let Some(info) = policy {
                    headers.extend(rate_limit_headers(info));
                }
                headers
            }
            Self::BudgetExceeded(b) => vec![(
                "retry-after",
                b.resets_at_ms
                    .saturating_sub(now_ms)
                    .div_ceil(1000)
                    .max(1)
                    .to_string(),
            )],
            Self::OpenAi(e) => e.headers.clone(),
            _ => vec![],
        }
    }

    /// The `Allow` header value, for a 405.
    pub fn allow_header(&self) -> Option<String> {
        match self {
            Self::MethodNotAllowed { allow, .. } => Some(allow.join(", ")),
            _ => None,
        }
    }

    /// The JSON body: `{"error":{"code","message"}}`, plus the numbers of a
    /// limit or budget refusal.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        match self {
            Self::RateLimited {
                limit,
                scope,
                retry_after_secs,
                ..
            } => {
                error["limit"] = json!(limit);
                error["scope"] = json!(scope);
                error["retryAfterSecs"] = json!(retry_after_secs);
            }
            Self::BudgetExceeded(b) => {
                error["budget"] = json!(b.budget);
                error["scope"] = json!(b.scope);
                error["limit"] = json!(b.limit);
                error["used"] = json!(b.used);
                error["reserved"] = json!(b.reserved);
                error["requested"] = json!(b.requested);
                error["resetsAtMs"] = json!(b.resets_at_ms);
            }
            _ => {}
        }
        json!({ "error": error })
    }
}

/// The IETF httpapi draft's headers for a limit:
/// `RateLimit-Policy: "<scope>-<limit>";q=<quota>;w=<window>` and
/// `RateLimit: "<scope>-<limit>";r=<remaining>;t=<reset>`.
pub fn rate_limit_headers(info: &RateLimitInfo) -> [(&'static str, String); 2] {
    let name = format!("{}-{}", info.scope.as_str(), info.limit_kind.as_str());
    [
        (
            "ratelimit-policy",
            format!("\"{name}\";q={};w={}", info.limit, info.window_secs),
        ),
        (
            "ratelimit",
            format!("\"{name}\";r={};t={}", info.remaining, info.reset_secs),
        ),
    ]
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> Self {
        match e {
            ActorError::Refused(reply) => match reply.code {
                ErrorCode::InvalidRequest => Self::bad_request("invalid_request", reply.message),
                ErrorCode::NotFound => Self::not_found("not_found", reply.message),
                ErrorCode::WrongTenant => Self::Forbidden {
                    code: "wrong_tenant",
                    message: reply.message,
                },
                ErrorCode::Protocol => Self::BadUpstream(reply.message),
                ErrorCode::Busy => Self::Conflict(reply.message),
                ErrorCode::Internal => Self::Internal(reply.message),
                ErrorCode::Unavailable => Self::Unavailable(reply.message),
                ErrorCode::BadUpstream => Self::BadUpstream(reply.message),
                ErrorCode::QuotaExceeded => Self::QuotaExceeded {
                    code: reply.reason.unwrap_or_else(|| "quota_exceeded".to_owned()),
                    message: reply.message,
                },
            },
            ActorError::Protocol(e) => Self::BadUpstream(e.to_string()),
            ActorError::UnexpectedReply { .. } => Self::BadUpstream(e.to_string()),
            ActorError::Runtime(message) => Self::Unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ErrorReply;

    #[test]
    fn json_shape_and_status() {
        let e = ApiError::bad_request("invalid_tenant", "bad id");
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error":{"code":"invalid_tenant","message":"bad id"}})
        );
        let e = ApiError::MethodNotAllowed {
            method: "PUT".into(),
            allow: vec!["GET", "PATCH"],
        };
        assert_eq!(e.status(), 405);
        assert_eq!(e.allow_header().as_deref(), Some("GET, PATCH"));
        assert_eq!(e.body()["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn credential_errors() {
        for (e, status, code) in [
            (ApiError::missing_key(), 401, "missing_key"),
            (ApiError::invalid_key(), 401, "invalid_key"),
            (ApiError::forbidden_scope("chat"), 403, "forbidden_scope"),
            (ApiError::tenant_mismatch("x"), 403, "tenant_mismatch"),
            (ApiError::model_not_allowed(), 403, "model_not_allowed"),
        ] {
            assert_eq!((e.status(), e.code()), (status, code));
            assert_eq!(e.body()["error"]["code"], code);
            assert!(e.body()["error"]["message"].is_string());
        }
    }

    #[test]
    fn actor_refusals_map_to_client_errors() {
        let refused = |code| ApiError::from(ActorError::Refused(ErrorReply::new(code, "m")));
        assert_eq!(refused(ErrorCode::InvalidRequest).status(), 400);
        assert_eq!(refused(ErrorCode::NotFound).status(), 404);
        assert_eq!(refused(ErrorCode::WrongTenant).status(), 403);
        assert_eq!(refused(ErrorCode::Internal).status(), 500);
        assert_eq!(refused(ErrorCode::Unavailable).status(), 503);
        assert_eq!(refused(ErrorCode::BadUpstream).status(), 502);
        let full = ApiError::from(ActorError::Refused(
            ErrorReply::new(ErrorCode::QuotaExceeded, "m").with_reason("index_full"),
        ));
        assert_eq!((full.status(), full.code()), (413, "index_full"));
        assert_eq!(refused(ErrorCode::Busy).status(), 409);
    }

    #[test]
    fn transport_failures_map_to_5xx() {
        // The actor could not be reached: it may answer on a retry.
        let unreachable = ApiError::from(ActorError::Runtime("x".into()));
        assert_eq!(
            (unreachable.status(), unreachable.code()),
            (503, "actor_unavailable")
        );
        // The actor answered, but not in our protocol: retrying will not help.
        let garbled = ApiError::from(ActorError::Protocol(protocol::ProtocolError::TooLarge {
            len: 2,
            max: 1,
        }));
        assert_eq!((garbled.status(), garbled.code()), (502, "bad_upstream"));
        let refused_bytes = ApiError::from(ActorError::Refused(ErrorReply::new(
            ErrorCode::Protocol,
            "m",
        )));
        assert_eq!(refused_bytes.status(), 502);
        let wrong_kind = ApiError::from(ActorError::UnexpectedReply {
            expected: "Tenant",
            got: "Snapshot",
        });
        assert_eq!(
            (wrong_kind.status(), wrong_kind.code()),
            (502, "bad_upstream")
        );
        // A failure of the actor's own: 500, never blamed on a dependency.
        let internal = ApiError::from(ActorError::Refused(ErrorReply::new(
            ErrorCode::Internal,
            "m",
        )));
        assert_eq!((internal.status(), internal.code()), (500, "internal"));
    }
}
