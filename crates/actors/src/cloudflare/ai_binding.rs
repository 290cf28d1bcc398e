//! The `AI` binding's `run(model, inputs, options)`, which workers-rs's
//! `Ai::run` cannot pass options to: declared here and called with plain JS
//! objects. The options carry a tenant's AI Gateway
//! (`{gateway: {id, skipCache, cacheTtl, metadata}}`). Also here: how the
//! binding's errors become [`PortError`]s (Workers AI's internal code mapped
//! to its HTTP status, so the chat router can tell an overloaded model from
//! one that refused the request).

use crate::cloudflare::to_js;
use crate::ports::PortError;
use protocol::models::AiGateway;
use serde::Serialize;
use worker::js_sys;
use worker::wasm_bindgen::{self, prelude::wasm_bindgen, JsCast, JsValue};

const SERVICE: &str = "Workers AI";

#[wasm_bindgen]
extern "C" {
    /// The `AI` binding, seen through the method workers-rs does not expose.
    #[derive(Debug, Clone)]
    type AiRunner;

    #[wasm_bindgen(method, catch, js_name = run)]
    fn run_with_options(
        this: &AiRunner,
        model: &str,
        inputs: JsValue,
        options: JsValue,
    ) -> Result<js_sys::Promise, JsValue>;
}

/// `metadata` of a gateway call: who the call is for, in the gateway's logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayMetadata {
    /// The tenant.
    pub tenant_id: String,
    /// The API key's id, when a key made the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The chat session, for chat calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayOptions<'a> {
    id: &'a str,
    skip_cache: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_ttl: Option<u32>,
    metadata: &'a GatewayMetadata,
}

#[derive(Debug, Serialize)]
struct RunOptions<'a> {
    gateway: GatewayOptions<'a>,
}

/// How a tenant's calls reach Workers AI: directly, or through its gateway
/// with this metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The tenant's gateway, if it set one.
    pub gateway: Option<AiGateway>,
    /// What the gateway logs with each call.
    pub metadata: GatewayMetadata,
}

impl Route {
    /// The binding's third argument, as JSON: `None` without a gateway.
    pub fn options_json(&self) -> Option<serde_json::Value> {
        let gateway = self.gateway.as_ref()?;
        serde_json::to_value(RunOptions {
            gateway: GatewayOptions {
                id: &gateway.id,
                skip_cache: gateway.skip_cache,
                cache_ttl: gateway.cache_ttl,
                metadata: &self.metadata,
            },
        })
        .ok()
    }
}

/// Workers AI's internal error codes and the HTTP status each stands for
/// (developers.cloudflare.com/workers-ai/platform/errors).
const CODES: &[(u32, u16)] = &[
    (5007, 400),
    (5004, 400),
    (3039, 400),
    (3003, 400),
    (5018, 403),
    (5016, 403),
    (3023, 403),
    (3041, 403),
    (5019, 405),
    (5005, 405),
    (3042, 404),
    (3006, 413),
    (3007, 408),
    (3008, 408),
    (3036, 429),
    (3040, 429),
    (3043, 500),
];

/// Workers AI codes that no retry and no other model can help with: the
/// account's daily allocation is used up, or the account is blocked.
pub const ACCOUNT_WIDE_CODES: &[u32] = &[3036, 3023];

/// The error the binding threw (its message), as a [`PortError`]: a known
/// internal code, or an HTTP status named in the message, becomes
/// [`PortError::Upstream`]; anything else (the network, the runtime) is
/// [`PortError::Failed`].
pub fn port_error(message: String) -> PortError {
    let numbers = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| (3..=4).contains(&w.len()))
        .filter_map(|w| w.parse::<u32>().ok());
    let mut status_only = None;
    for n in numbers {
        if let Some((code, status)) = CODES.iter().find(|(c, _)| *c == n) {
            return PortError::Upstream {
                service: SERVICE,
                status: *status,
                code: Some(*code),
                message,
            };
        }
        if status_only.is_none() && (400..600).contains(&n) {
            status_only = u16::try_from(n).ok();
        }
    }
    match status_only {
        Some(status) => PortError::Upstream {
            service: SERVICE,
            status,
            code: None,
            message,
        },
        None => PortError::Failed {
            service: SERVICE,
            message,
        },
    }
}

/// Runs `model` on `inputs` through `ai`, through the route's gateway when
/// there is one; returns what the binding resolved to (an object, or a
/// `ReadableStream` when the inputs ask for a stream).
pub async fn run(
    ai: &worker::Ai,
    model: &str,
    inputs: JsValue,
    route: &Route,
) -> Result<JsValue, PortError> {
    let options = match route.options_json() {
        Some(options) => to_js(&options).map_err(|message| PortError::Failed {
            service: SERVICE,
            message,
        })?,
        None => JsValue::UNDEFINED,
    };
    let runner: &AiRunner = ai.as_ref().unchecked_ref();
    let promise = runner
        .run_with_options(model, inputs, options)
        .map_err(|e| port_error(js_message(&e)))?;
    worker::wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|e| port_error(js_message(&e)))
}

fn js_message(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => String::from(err.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateway_options_json() {
        let mut route = Route {
            gateway: None,
            metadata: GatewayMetadata {
                tenant_id: "acme".into(),
                key_id: Some("0123456789ab".into()),
                session_id: Some("user-1".into()),
            },
        };
        assert_eq!(route.options_json(), None, "no gateway: no options");
        route.gateway = Some(AiGateway {
            id: "acme-gw".into(),
            skip_cache: true,
            cache_ttl: Some(600),
        });
        assert_eq!(
            route.options_json(),
            Some(json!({"gateway": {
                "id": "acme-gw", "skipCache": true, "cacheTtl": 600,
                "metadata": {"tenantId": "acme", "keyId": "0123456789ab", "sessionId": "user-1"}
            }}))
        );
        route.gateway = Some(AiGateway {
            id: "gw".into(),
            skip_cache: false,
            cache_ttl: None,
        });
        route.metadata.key_id = None;
        route.metadata.session_id = None;
        assert_eq!(
            route.options_json(),
            Some(
                json!({"gateway": {"id": "gw", "skipCache": false, "metadata": {"tenantId": "acme"}}})
            )
        );
    }

    #[test]
    fn binding_errors_are_classified() {
        let e = port_error("3040: Capacity temporarily exceeded, please try again.".into());
        assert!(matches!(
            e,
            PortError::Upstream {
                status: 429,
                code: Some(3040),
                ..
            }
        ));
        let e = port_error("AiError: 5007: No such model @cf/x or task".into());
        assert!(matches!(
            e,
            PortError::Upstream {
                status: 400,
                code: Some(5007),
                ..
            }
        ));
        let e = port_error("InferenceUpstreamError: upstream answered 503".into());
        assert!(matches!(
            e,
            PortError::Upstream {
                status: 503,
                code: None,
                ..
            }
        ));
        let e = port_error("Network connection lost.".into());
        assert!(matches!(e, PortError::Failed { .. }));
        // Numbers that are neither a code nor a status are not mistaken for one.
        let e = port_error("model @cf/meta/llama-3.3-70b returned 12 tokens".into());
        assert!(matches!(e, PortError::Failed { .. }), "{e:?}");
    }
}
