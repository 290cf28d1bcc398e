//! The operators' JSON: the settings patch body, the API key bodies, and the
//! shapes of admin replies.

use crate::errors::ApiError;
use protocol::coordinator::{
    AnonymousPatch, DefaultModelsPatch, FloorPatch, GatewayPatch, SettingsPatch,
};
use protocol::ingest::ScoreFloor;
use protocol::keys::{self, CreateKey, KeyError, KeyLimits, KeyRecord, NewKey, RotateKey, Scope};
use protocol::limits::{Budget, Limits, Price, PriceTable};
use protocol::models::AiGateway;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The body of `PATCH /admin/tenant`. Unknown fields are refused so that a
/// typo is a 400, not a silent no-op.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatchBody {
    display_name: Option<String>,
    default_models: Option<DefaultModelsBody>,
    anonymous: Option<AnonymousBody>,
    limits: Option<TenantLimitsBody>,
    prices: Option<BTreeMap<String, PriceBody>>,
    budget: Option<BudgetBody>,
    /// Absent: unchanged; `null`: removed; an object: set whole.
    #[serde(default, deserialize_with = "present")]
    ai_gateway: Option<Option<AiGatewayBody>>,
    /// Absent: unchanged; `null`: the default; a number from 0 to 1: set.
    #[serde(default, deserialize_with = "present")]
    search_floor: Option<Option<f64>>,
}

/// One model's entry of `"prices"`: micro-dollars per million tokens.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PriceBody {
    input_per_million_micros: u64,
    #[serde(default)]
    output_per_million_micros: u64,
}

/// Reads a field that is present (even as `null`) as `Some`, so `null` and
/// absent differ.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `"aiGateway": {"id", "skipCache"?, "cacheTtl"?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AiGatewayBody {
    id: String,
    #[serde(default)]
    skip_cache: bool,
    cache_ttl: Option<u32>,
}

/// `"limits": {"rpm"?, "tpm"?, "concurrency"?}`: the tenant's totals and
/// its keys' defaults (each absent one: unlimited).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantLimitsBody {
    rpm: Option<u32>,
    tpm: Option<u64>,
    concurrency: Option<u32>,
}

/// `"anonymous": {"search"?: bool, "chat"?: bool}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousBody {
    search: Option<bool>,
    chat: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultModelsBody {
    chat: Option<String>,
    embedding: Option<String>,
    chat_fallbacks: Option<Vec<String>>,
}

impl SettingsPatchBody {
    /// The validated protocol patch.
    pub fn into_patch(self) -> Result<SettingsPatch, ApiError> {
        let search_floor = match self.search_floor {
            None => None,
            Some(None) => Some(FloorPatch::Default),
            Some(Some(value)) => Some(FloorPatch::Set(ScoreFloor::new(value).map_err(|_| {
                ApiError::bad_request(
                    "invalid_settings",
                    "searchFloor must be a number from 0 to 1, or null for the default",
                )
            })?)),
        };
        let patch = SettingsPatch {
            search_floor,
            budget: self.budget.map(BudgetBody::into_budget).transpose()?,
            prices: self.prices.map(|models| PriceTable {
                models: models
                    .into_iter()
                    .map(|(model, p)| {
                        let price = Price {
                            input_per_million_micros: p.input_per_million_micros,
                            output_per_million_micros: p.output_per_million_micros,
                        };
                        (model, price)
                    })
                    .collect(),
            }),
            limits: self.limits.map(|l| Limits {
                rpm: l.rpm,
                tpm: l.tpm,
                concurrency: l.concurrency,
            }),
            display_name: self.display_name,
            default_models: self.default_models.map(|m| DefaultModelsPatch {
                chat: m.chat,
                embedding: m.embedding,
                chat_fallbacks: m.chat_fallbacks,
            }),
            anonymous: self.anonymous.map(|a| AnonymousPatch {
                search: a.search,
                chat: a.chat,
            }),
            ai_gateway: self.ai_gateway.map(|g| match g {
                Some(g) => GatewayPatch::Set(AiGateway {
                    id: g.id,
                    skip_cache: g.skip_cache,
                    cache_ttl: g.cache_ttl,
                }),
                None => GatewayPatch::Remove,
            }),
        };
        patch
            .validate()
            .map_err(|e| ApiError::bad_request("invalid_settings", e.to_string()))?;
        Ok(patch)
    }
}

/// The body of `POST /admin/keys`:
/// `{"name","scopes","models"?,"expiresAtMs"?,"limits"?}` (`expiresAt` is
/// accepted for `expiresAtMs`). Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyBody {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default, alias = "expiresAt")]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    limits: LimitsBody,
    #[serde(default)]
    budget: BudgetBody,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    rpm: Option<u32>,
    tpm: Option<u32>,
    concurrency: Option<u32>,
}

impl LimitsBody {
    fn into_limits(self) -> KeyLimits {
        KeyLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
        }
    }
}

/// `"budget": {"tokensPerDay"?, "tokensPerMonth"?, "costPerDayMicros"?,
/// "costPerMonthMicros"?, "softThresholdPct"?}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BudgetBody {
    tokens_per_day: Option<u64>,
    tokens_per_month: Option<u64>,
    cost_per_day_micros: Option<u64>,
    cost_per_month_micros: Option<u64>,
    soft_threshold_pct: Option<u8>,
}

impl BudgetBody {
    fn into_budget(self) -> Result<Budget, ApiError> {
        let budget = Budget {
            tokens_per_day: self.tokens_per_day,
            tokens_per_month: self.tokens_per_month,
            cost_per_day_micros: self.cost_per_day_micros,
            cost_per_month_micros: self.cost_per_month_micros,
            soft_threshold_pct: self
                .soft_threshold_pct
                .unwrap_or(protocol::limits::DEFAULT_SOFT_THRESHOLD_PCT),
        };
        budget
            .validate()
            .map_err(|e| ApiError::bad_request("invalid_budget", e.to_string()))?;
        Ok(budget)
    }
}

impl CreateKeyBody {
    /// The validated protocol request, checked against `now_ms` (the expiry
    /// must be in the future).
    pub fn into_create(self, now_ms: u64) -> Result<CreateKey, ApiError> {
        let create = CreateKey {
            budget: self.budget.into_budget()?,
            name: self.name,
            scopes: self.scopes,
            models: self.models,
            expires_at_ms: self.expires_at_ms,
            limits: self.limits.into_limits(),
        };
        create.validate(now_ms).map_err(invalid_key_request)?;
        Ok(create)
    }
}

/// The body of `PATCH /admin/keys/<id>`: `{"limits"?: {"rpm"?, "tpm"?,
/// "concurrency"?}, "budget"?: {...}}`, at least one; each given one
/// replaces the key's whole. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyBody {
    limits: Option<LimitsBody>,
    budget: Option<BudgetBody>,
}

impl UpdateKeyBody {
    /// The protocol request for key `id` (its limits checked by the caller
    /// against the tenant's).
    pub fn into_update(self, id: String) -> Result<protocol::keys::UpdateKey, ApiError> {
        if self.limits.is_none() && self.budget.is_none() {
            return Err(ApiError::bad_request(
                "invalid_key_request",
                "a key's patch names limits, a budget, or both",
            ));
        }
        Ok(protocol::keys::UpdateKey {
            budget: self.budget.map(BudgetBody::into_budget).transpose()?,
            id,
            limits: self.limits.map(LimitsBody::into_limits),
        })
    }
}

/// The body of `POST /admin/keys/<id>/rotate`, itself optional:
/// `{"graceSeconds"?:n}` (default 0: the old secret stops at once).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateKeyBody {
    #[serde(default)]
    grace_seconds: u64,
}

impl RotateKeyBody {
    /// The validated protocol request for key `id`.
    pub fn into_rotate(self, id: String) -> Result<RotateKey, ApiError> {
        let rotate = RotateKey {
            id,
            grace_seconds: self.grace_seconds,
        };
        rotate.validate().map_err(|e| match e {
            KeyError::Id => invalid_key_id(),
            other => invalid_key_request(other),
        })?;
        Ok(rotate)
    }
}

/// Checks a key id from a path (400 `invalid_key_id`).
pub fn check_key_id(id: &str) -> Result<(), ApiError> {
    if keys::valid_key_id(id) {
        Ok(())
    } else {
        Err(invalid_key_id())
    }
}

fn invalid_key_id() -> ApiError {
    ApiError::bad_request("invalid_key_id", KeyError::Id.to_string())
}

fn invalid_key_request(e: KeyError) -> ApiError {
    ApiError::bad_request("invalid_key_request", e.to_string())
}

/// The answer to a create or a rotation: the record's fields plus `key`,
/// the only answers that ever carry the secret.
#[derive(Debug, Serialize)]
pub struct NewKeyReply<'a> {
    /// The full key, shown once.
    pub key: &'a str,
    /// Its record.
    #[serde(flatten)]
    pub record: &'a KeyRecord,
}

impl<'a> From<&'a NewKey> for NewKeyReply<'a> {
    fn from(new: &'a NewKey) -> Self {
        Self {
            key: &new.key,
            record: &new.record,
        }
    }
}

/// A refused change of the tenant's embedding model, as the client's error:
/// 409 when the index's contents are in the way, else 400.
pub fn embedding_refused(refusal: actors::embedding_model::EmbeddingRefusal) -> ApiError {
    if refusal.is_conflict() {
        ApiError::StateConflict {
            code: refusal.code(),
            message: refusal.to_string(),
        }
    } else {
        ApiError::bad_request(refusal.code(), refusal.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(body: &str) -> Result<CreateKey, ApiError> {
        serde_json::from_str::<CreateKeyBody>(body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .into_create(1_000)
    }

    #[test]
    fn create_bodies() {
        let c = create(r#"{"name":"ci","scopes":["search","chat"]}"#).unwrap();
        assert_eq!(c.scopes, vec![Scope::Search, Scope::Chat]);
        assert!(c.models.is_empty() && c.expires_at_ms.is_none());
        let c = create(
            r#"{"name":"ci","scopes":["admin"],"models":["@cf/x/y"],"expiresAt":2000,"limits":{"rpm":60,"tpm":1000,"concurrency":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.expires_at_ms, c.limits.rpm, c.limits.concurrency),
            (Some(2000), Some(60), Some(2))
        );
        let c = create(r#"{"name":"ci","scopes":["ingest"],"expiresAtMs":3000}"#).unwrap();
        assert_eq!(c.expires_at_ms, Some(3000));
        for (bad, code) in [
            (r#"{"name":"","scopes":["search"]}"#, "invalid_key_request"),
            (r#"{"name":"ci","scopes":[]}"#, "invalid_key_request"),
            (
                r#"{"name":"ci","scopes":["chat","chat"]}"#,
                "invalid_key_request",
            ),
            (
                r#"{"name":"ci","scopes":["chat"],"models":["a b"]}"#,
                "invalid_key_request",
            ),
            (
                r#"{"name":"ci","scopes":["chat"],"expiresAt":999}"#,
                "invalid_key_request",
            ),
            (
                r#"{"name":"ci","scopes":["chat"],"limits":{"rpm":0}}"#,
                "invalid_key_request",
            ),
            (r#"{"name":"ci","scopes":["root"]}"#, "invalid_json"),
            (r#"{"name":"ci","scopes":["chat"],"x":1}"#, "invalid_json"),
            (
                r#"{"name":"ci","scopes":["chat"],"limits":{"rps":1}}"#,
                "invalid_json",
            ),
            (r#"{"scopes":["chat"]}"#, "invalid_json"),
        ] {
            let e = create(bad).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, code), "{bad}");
        }
    }

    #[test]
    fn rotate_bodies_and_ids() {
        let id = "0123456789ab".to_owned();
        assert_eq!(
            RotateKeyBody::default().into_rotate(id.clone()).unwrap(),
            RotateKey {
                id: id.clone(),
                grace_seconds: 0
            }
        );
        let body: RotateKeyBody = serde_json::from_str(r#"{"graceSeconds":60}"#).unwrap();
        assert_eq!(body.into_rotate(id.clone()).unwrap().grace_seconds, 60);
        let body: RotateKeyBody = serde_json::from_str(r#"{"graceSeconds":86401}"#).unwrap();
        assert_eq!(
            body.into_rotate(id).unwrap_err().code(),
            "invalid_key_request"
        );
        assert!(serde_json::from_str::<RotateKeyBody>(r#"{"grace":1}"#).is_err());
        assert!(check_key_id("0123456789ab").is_ok());
        for bad in ["", "0123456789AB", "0123456789a", "0123456789abc", "../x"] {
            let e = check_key_id(bad).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_key_id"), "{bad}");
        }
    }

    #[test]
    fn new_keys_answer_the_record_and_the_key() {
        let record = KeyRecord {
            budget: Default::default(),
            id: "0123456789ab".into(),
            name: "ci".into(),
            scopes: vec![Scope::Chat],
            models: vec![],
            expires_at_ms: None,
            created_at_ms: 7,
            last_used_at_ms: None,
            revoked_at_ms: None,
            rotated_at_ms: None,
            previous_valid_until_ms: None,
            limits: KeyLimits::default(),
        };
        let new = NewKey {
            key: "tp_acme_0123456789ab_s".into(),
            record,
        };
        assert_eq!(
            serde_json::to_value(NewKeyReply::from(&new)).unwrap(),
            json!({
                "key": "tp_acme_0123456789ab_s", "id": "0123456789ab", "name": "ci",
                "scopes": ["chat"], "models": [], "expiresAtMs": null, "createdAtMs": 7,
                "lastUsedAtMs": null, "revokedAtMs": null, "rotatedAtMs": null,
                "previousValidUntilMs": null, "limits": {},
                "budget": { "softThresholdPct": 80 }
            })
        );
    }

    fn parse(json: &str) -> Result<SettingsPatch, ApiError> {
        serde_json::from_str::<SettingsPatchBody>(json)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .into_patch()
    }

    #[test]
    fn patches() {
        let p = parse(r#"{"displayName":"Acme","defaultModels":{"chat":"@cf/x/y"}}"#).unwrap();
        assert_eq!(p.display_name.as_deref(), Some("Acme"));
        assert_eq!(p.default_models.unwrap().chat.as_deref(), Some("@cf/x/y"));
        for bad in [
            r#"{}"#,
            r#"{"displayname":"x"}"#,
            r#"{"displayName":""}"#,
            r#"{"displayName":5}"#,
            r#"{"defaultModels":{"chat":"a b"}}"#,
            r#"{"defaultModels":{"vision":"x"}}"#,
            r#"[]"#,
            r#"{"defaultModels":{"chatFallbacks":["a","b","c","d"]}}"#,
            r#"{"defaultModels":{"chatFallbacks":["chat"]}}"#,
            r#"{"defaultModels":{"embedding":"@cf/not/known"}}"#,
            r#"{"aiGateway":{"id":""}}"#,
            r#"{"aiGateway":{"id":"gw","cacheTtl":0}}"#,
            r#"{"aiGateway":{"id":"gw","ttl":5}}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn embedding_refusals_are_400_or_409() {
        use actors::embedding_model::EmbeddingRefusal;
        let conflict = embedding_refused(EmbeddingRefusal::IndexNotEmpty {
            model: "a".into(),
            current: "b".into(),
            chunks: 2,
        });
        assert_eq!(
            (conflict.status(), conflict.code()),
            (409, "index_not_empty")
        );
        let unavailable = embedding_refused(EmbeddingRefusal::Unavailable {
            model: "a".into(),
            embeds_with: "local/hashed-768".into(),
        });
        assert_eq!(
            (unavailable.status(), unavailable.code()),
            (400, "embedding_model_unavailable")
        );
    }

    #[test]
    fn fallbacks_and_gateway_patches() {
        let p = parse(r#"{"defaultModels":{"chatFallbacks":["@cf/a/b"]}}"#).unwrap();
        assert_eq!(
            p.default_models.unwrap().chat_fallbacks,
            Some(vec!["@cf/a/b".to_owned()])
        );
        let p = parse(r#"{"aiGateway":{"id":"gw","skipCache":true,"cacheTtl":300}}"#).unwrap();
        assert_eq!(
            p.ai_gateway,
            Some(GatewayPatch::Set(AiGateway {
                id: "gw".into(),
                skip_cache: true,
                cache_ttl: Some(300)
            }))
        );
        let p = parse(r#"{"aiGateway":null}"#).unwrap();
        assert_eq!(p.ai_gateway, Some(GatewayPatch::Remove));
        let p = parse(r#"{"displayName":"x"}"#).unwrap();
        assert_eq!(p.ai_gateway, None, "absent is unchanged");
    }

    #[test]
    fn search_floor_patches() {
        let p = parse(r#"{"searchFloor":0.25}"#).unwrap();
        assert_eq!(
            p.search_floor,
            Some(FloorPatch::Set(ScoreFloor::new(0.25).unwrap()))
        );
        assert!(!p.operator_only(), "tenant admins may set it");
        for edge in ["0", "1"] {
            assert!(parse(&format!(r#"{{"searchFloor":{edge}}}"#)).is_ok());
        }
        let p = parse(r#"{"searchFloor":null}"#).unwrap();
        assert_eq!(p.search_floor, Some(FloorPatch::Default));
        let p = parse(r#"{"displayName":"x"}"#).unwrap();
        assert_eq!(p.search_floor, None, "absent is unchanged");
        for bad in [
            r#"{"searchFloor":1.5}"#,
            r#"{"searchFloor":-0.1}"#,
            r#"{"searchFloor":"0.3"}"#,
            r#"{"searchFloor":[0.3]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad}");
        }
        let e = parse(r#"{"searchFloor":2}"#).unwrap_err();
        assert_eq!(e.code(), "invalid_settings");
        assert!(e.to_string().contains("searchFloor"), "{e}");
    }
}
