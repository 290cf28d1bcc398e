//! Errors of the `/v1` routes in OpenAI's shape,
//! `{"error":{"message","type","param","code"}}`, with its statuses: what
//! OpenAI's SDKs turn into their typed exceptions. Our own routes keep our
//! shape ([`crate::errors::ApiError::body`]).

use crate::errors::ApiError;
use serde_json::json;

/// A failure of a `/v1` route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenAiError {
    /// The HTTP status.
    pub status: u16,
    /// For people.
    pub message: String,
    /// OpenAI's `type` (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `rate_limit_exceeded`, ...).
    pub code: Option<String>,
    /// Headers to send with it (`Retry-After`, the `RateLimit` pair, `Allow`).
    pub headers: Vec<(&'static str, String)>,
}

impl OpenAiError {
    /// 400 `invalid_request_error`, naming the parameter.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
            headers: vec![],
        }
    }

    /// 404 `model_not_found`: unknown, or not for this caller (OpenAI does
    /// not tell the two apart either).
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: 404,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found".into()),
            headers: vec![],
        }
    }

    /// With this code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// The body.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Our error, as OpenAI would say it: the same status (a budget, 402
    /// here, is OpenAI's 429 `insufficient_quota`), our code as `code`, and
    /// the same headers.
    pub fn from_api(e: &ApiError, now_ms: u64) -> Self {
        let status = match e {
            ApiError::BudgetExceeded(_) => 429,
            ApiError::Forbidden { code, .. } if *code == "model_not_allowed" => 404,
            other => other.status(),
        };
        let kind = match (e, status) {
            (ApiError::BudgetExceeded(_), _) => "insufficient_quota",
            (_, 401) => "authentication_error",
            (_, 403) => "permission_error",
            (_, 404) => "not_found_error",
            (_, 429) => "rate_limit_error",
            (_, 400..=499) => "invalid_request_error",
            _ => "server_error",
        };
        let code = match e {
            ApiError::RateLimited { .. } => "rate_limit_exceeded".to_owned(),
            ApiError::BudgetExceeded(_) => "insufficient_quota".to_owned(),
            ApiError::Forbidden { code, .. } if *code == "model_not_allowed" => {
                "model_not_found".to_owned()
            }
            other => other.code().to_owned(),
        };
        let mut headers = e.headers(now_ms);
        if let Some(allow) = e.allow_header() {
            headers.retain(|(name, _)| *name != "allow");
            headers.push(("allow", allow));
        }
        Self {
            status,
            message: e.to_string(),
            kind,
            param: None,
            code: Some(code),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::limits::{LimitKind, LimitScope};

    #[test]
    fn our_errors_in_openais_shape() {
        let e = OpenAiError::from_api(&ApiError::invalid_key(), 0);
        assert_eq!((e.status, e.kind), (401, "authentication_error"));
        assert_eq!(e.body()["error"]["code"], "invalid_key");
        assert!(e.body()["error"]["param"].is_null());
        let e = OpenAiError::from_api(&ApiError::forbidden_scope("chat"), 0);
        assert_eq!((e.status, e.kind), (403, "permission_error"));
        let e = OpenAiError::from_api(&ApiError::model_not_allowed(), 0);
        assert_eq!(
            (e.status, e.code.as_deref()),
            (404, Some("model_not_found"))
        );
        let limited = ApiError::RateLimited {
            limit: LimitKind::Rpm,
            scope: LimitScope::Key,
            retry_after_secs: 7,
            policy: None,
        };
        let e = OpenAiError::from_api(&limited, 0);
        assert_eq!((e.status, e.kind), (429, "rate_limit_error"));
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(e.headers.contains(&("retry-after", "7".to_owned())));
        let e = OpenAiError::from_api(&ApiError::Unavailable("x".into()), 0);
        assert_eq!((e.status, e.kind), (503, "server_error"));
        let e = OpenAiError::invalid("bad", Some("messages"));
        assert_eq!(
            e.body(),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": null}})
        );
    }
}
