//! What the gateway observes of each request: one structured JSON log line
//! after the answer, and the metrics sample it records for the tenant
//! (beside the answer, with `waitUntil`). Pure, tested natively; the
//! fields are listed in `docs/metrics.md`.

use crate::auth::Identity;
use protocol::metrics::RequestSample;
use protocol::TenantId;
use serde_json::{json, Value};

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The variable that turns the requests' log lines off.
pub const REQUEST_LOG_VAR: &str = "REQUEST_LOG";

/// Whether each request's log line is written: unless `REQUEST_LOG` is
/// `off`. The benches turn it off: under `wrangler dev` every console line
/// is carried and printed by wrangler's Node process, which also proxies
/// every request and WebSocket, so fifty lines at once delay fifty
/// upgrades; deployed, Workers collects logs off the request's path. The
/// metrics samples and the actors' event lines are written either way.
pub fn request_log_on(value: Option<&str>) -> bool {
    !value.is_some_and(|v| v.trim().eq_ignore_ascii_case("off"))
}

/// What the pipeline learned of a request while serving it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The route's method and path template, once routed.
    pub route: Option<(&'static str, &'static str)>,
    /// The tenant, once known (admitted, or the one the request named in
    /// a deployment that serves it).
    pub tenant: Option<TenantId>,
    /// Who called: a key id, `operator`, `ingest-token` or `anonymous`;
    /// never a secret.
    pub caller: Option<String>,
    /// The error code answered, if any.
    pub code: Option<String>,
    /// Whether a search was answered from the cache.
    pub cache_hit: Option<bool>,
}

impl Observation {
    /// Notes who called.
    pub fn caller_is(&mut self, identity: &Identity) {
        self.caller = Some(match identity {
            Identity::Key { id, .. } => id.clone(),
            Identity::Operator => "operator".into(),
            Identity::Legacy => "ingest-token".into(),
            Identity::Anonymous => "anonymous".into(),
        });
    }

    /// Notes what a JSON answer says of itself: its error code
    /// (`error.code`, in our shape and OpenAI's) and a search's `cached`.
    pub fn answered(&mut self, body: &Value) {
        if let Some(code) = body
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
        {
            self.code = Some(code.to_owned());
        }
        if let Some(cached) = body.get("cached").and_then(Value::as_bool) {
            self.cache_hit = Some(cached);
        }
    }

    /// The route label for logs and metrics: `POST /api/search`,
    /// `GET /admin/keys/{id}` (no ids), or [`UNMATCHED`].
    pub fn route_label(&self) -> String {
        match self.route {
            Some((method, path)) => format!("{method} {path}"),
            None => UNMATCHED.to_owned(),
        }
    }

    /// The request's log line: one JSON object.
    pub fn log_line(&self, request_id: &str, method: &str, status: u16, latency_ms: u64) -> String {
        json!({
            "event": "request",
            "requestId": request_id,
            "tenant": self.tenant.as_ref().map(TenantId::as_str),
            "keyId": self.caller,
            "method": method,
            "route": self.route_label(),
            "status": status,
            "code": self.code,
            "latencyMs": latency_ms,
            "cacheHit": self.cache_hit,
        })
        .to_string()
    }

    /// The metrics sample of the request, and its tenant; `None` when no
    /// tenant is known (nothing to count it against).
    pub fn sample(&self, status: u16, latency_ms: u64) -> Option<(TenantId, RequestSample)> {
        let tenant = self.tenant.clone()?;
        Some((
            tenant,
            RequestSample {
                route: self.route_label(),
                status,
                code: if status >= 400 {
                    self.code.clone()
                } else {
                    None
                },
                latency_ms,
            },
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_on_unless_turned_off() {
        assert!(request_log_on(None));
        assert!(request_log_on(Some("on")));
        assert!(request_log_on(Some("")));
        assert!(!request_log_on(Some("off")));
        assert!(!request_log_on(Some(" OFF ")));
    }

    #[test]
    fn a_refused_search_logs_and_samples_its_code_and_never_a_secret() {
        let mut obs = Observation {
            route: Some(("POST", "/api/search")),
            tenant: Some(TenantId::parse("acme").unwrap()),
            ..Observation::default()
        };
        obs.caller_is(&Identity::Operator);
        obs.answered(&json!({"error": {"code": "invalid_search", "message": "no"}}));
        let line: Value = serde_json::from_str(&obs.log_line("rid-1", "POST", 400, 7)).unwrap();
        assert_eq!(
            line,
            json!({"event": "request", "requestId": "rid-1", "tenant": "acme",
                "keyId": "operator", "method": "POST", "route": "POST /api/search",
                "status": 400, "code": "invalid_search", "latencyMs": 7, "cacheHit": null})
        );
        let (tenant, sample) = obs.sample(400, 7).unwrap();
        assert_eq!(tenant.as_str(), "acme");
        assert_eq!(sample.code.as_deref(), Some("invalid_search"));
        assert_eq!(sample.validate(), Ok(()));
    }

    #[test]
    fn hits_callers_and_unknown_tenants() {
        let mut obs = Observation::default();
        obs.answered(&json!({"cached": true, "matches": []}));
        assert_eq!(obs.cache_hit, Some(true));
        assert_eq!(obs.route_label(), UNMATCHED);
        assert_eq!(obs.sample(404, 1), None, "no tenant, nothing to count");
        obs.caller_is(&Identity::Anonymous);
        assert_eq!(obs.caller.as_deref(), Some("anonymous"));
        // OpenAI's error shape carries its code the same way.
        obs.answered(
            &json!({"error": {"message": "m", "type": "t", "param": null, "code": "rate_limited"}}),
        );
        assert_eq!(obs.code.as_deref(), Some("rate_limited"));
        obs.tenant = Some(TenantId::parse("acme").unwrap());
        // A success carries no code.
        assert_eq!(obs.sample(200, 1).unwrap().1.code, None);
    }
}
