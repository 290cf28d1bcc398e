//! Messages of the `TenantCoordinator` actor (`${tenantId}:coordinator`),
//! which owns the tenant's record and settings.

use crate::ids::{RequestId, TenantId};
use crate::ingest::ScoreFloor;
use crate::limits::{Budget, PriceTable};
use crate::models::{AiGateway, GatewayError, MAX_CHAT_FALLBACKS};
use serde::{Deserialize, Serialize};

/// The chat model a new tenant starts with (a function-calling model).
pub const DEFAULT_CHAT_MODEL: &str = "@cf/meta/llama-3.3-70b-instruct-fp8-fast";
/// The embedding model a new tenant starts with (768 dimensions).
pub const DEFAULT_EMBEDDING_MODEL: &str = "@cf/baai/bge-base-en-v1.5";
/// The longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// The longest model name accepted, in bytes.
pub const MAX_MODEL_NAME_LEN: usize = 128;

/// A request to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorRequest {
    /// Read the tenant's record.
    GetTenant(GetTenant),
    /// Change some of the tenant's settings.
    UpdateSettings(UpdateSettings),
    /// An operator's look at the actor's whole state.
    Inspect(Inspect),
    /// Set or remove one of the tenant's configuration values.
    SetConfig(SetConfig),
    /// Create an API key (answered with its secret, once).
    CreateKey(crate::keys::CreateKey),
    /// Every key of the tenant (without secrets).
    ListKeys,
    /// One key.
    GetKey(crate::keys::KeyId),
    /// A new secret for a key (answered with it, once).
    RotateKey(crate::keys::RotateKey),
    /// Revoke a key: refused from the next request on.
    RevokeKey(crate::keys::KeyId),
    /// Change a key's limits (answered with its record).
    UpdateKey(crate::keys::UpdateKey),
    /// Check a key (from the gateway).
    VerifyKey(crate::keys::VerifyKey),
    /// A session's change, for the tenant's session registry (from the
    /// `ChatSession`).
    RecordSession(crate::listing::SessionReport),
    /// A page of the tenant's sessions.
    ListSessions(crate::listing::ListSessions),
    /// Several sessions' changes at once (at most
    /// [`crate::listing::MAX_SESSION_BATCH`]), as the tenant's ledger passes
    /// them on from the turns' usage records.
    RecordSessions(Vec<crate::listing::SessionReport>),
    /// The tenant's summary for the tenants listing; unlike every other
    /// message, it does not create the tenant's record.
    Summary,
    /// Read a configuration value back (`config:<name>`).
    GetConfig(GetConfig),
}

/// Payload of [`CoordinatorRequest::GetConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConfig {
    /// The name after `config:` (the rule of [`SetConfig`]).
    pub name: String,
}

/// The prefix of configuration keys in KV (after the tenant's own prefix):
/// `${tenantId}:config:<name>`. The chat tool `kv_get` reads only these.
pub const CONFIG_PREFIX: &str = "config:";
/// The longest configuration name (the part after `config:`).
pub const MAX_CONFIG_NAME_LEN: usize = 200;
/// The largest configuration value, in bytes.
pub const MAX_CONFIG_VALUE_BYTES: usize = 4096;

/// Payload of [`CoordinatorRequest::SetConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetConfig {
    /// The name after `config:` (1 to 200 of `A-Z a-z 0-9 : . _ -`).
    pub name: String,
    /// The value, or `None` to remove it.
    pub value: Option<String>,
}

/// Why a configuration change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The name is empty, too long or has characters outside the set.
    #[error(
        "a configuration name is 1 to {MAX_CONFIG_NAME_LEN} characters of A-Z a-z 0-9 : . _ -"
    )]
    Name,
    /// The value is too large.
    #[error("a configuration value is at most {MAX_CONFIG_VALUE_BYTES} bytes")]
    Value,
}

impl SetConfig {
    /// Checks the name and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_CONFIG_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(ConfigError::Name);
        }
        if self
            .value
            .as_ref()
            .is_some_and(|v| v.len() > MAX_CONFIG_VALUE_BYTES)
        {
            return Err(ConfigError::Value);
        }
        Ok(())
    }

    /// The key within the tenant's prefix: `config:<name>`.
    pub fn key(&self) -> String {
        format!("{CONFIG_PREFIX}{}", self.name)
    }
}

/// Payload of [`CoordinatorRequest::GetTenant`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTenant {}

/// Payload of [`CoordinatorRequest::UpdateSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSettings {
    /// The fields to change; absent fields keep their value.
    pub patch: SettingsPatch,
}

/// Payload of [`CoordinatorRequest::Inspect`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {}

/// A reply of the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorResponse {
    /// The tenant's record (answers `GetTenant` and `UpdateSettings`).
    Tenant(TenantRecord),
    /// The actor's state (answers `Inspect`).
    Snapshot(CoordinatorSnapshot),
    /// Answers `SetConfig`.
    ConfigSet(ConfigEntry),
    /// Answers `CreateKey` and `RotateKey`: the only answers with a secret.
    NewKey(crate::keys::NewKey),
    /// Answers `ListKeys`.
    Keys(Vec<crate::keys::KeyRecord>),
    /// Answers `GetKey` and `RevokeKey`.
    Key(crate::keys::KeyRecord),
    /// Answers `VerifyKey`.
    Verification(crate::keys::Verification),
    /// Answers `RecordSession`: whether the change was applied (an older
    /// report than the registry holds is not).
    SessionRecorded(bool),
    /// Answers `RecordSessions`: how many changes were applied.
    SessionsRecorded(u64),
    /// Answers `ListSessions`.
    Sessions(crate::listing::SessionPage),
    /// Answers `Summary`.
    Summary(crate::listing::TenantSummary),
    /// Answers `GetConfig`: the value, `None` when unset.
    Config(ConfigEntry),
}

/// A configuration value as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// `config:<name>`.
    pub key: String,
    /// The value, or `None` when it was removed.
    pub value: Option<String>,
}

/// What the platform knows about a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    /// The tenant.
    pub tenant_id: TenantId,
    /// When the coordinator first saw the tenant, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When the settings last changed, in ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// The tenant's settings.
    pub settings: TenantSettings,
}

/// A tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSettings {
    /// A name for people; the tenant id until an operator sets one.
    pub display_name: String,
    /// The models used when a request names none.
    pub default_models: DefaultModels,
    /// What callers without a key may do (all off unless an operator opens
    /// it, for public demos). Records stored before this setting existed
    /// read as all off.
    #[serde(default)]
    pub anonymous: AnonymousAccess,
    /// The tenant's rate limits: its totals across all keys (`rpm`, `tpm`),
    /// and the limits of a key that has none of its own. Set by the
    /// operator; unlimited until then.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// Prices per model, for usage costs and cost budgets. Set by the
    /// operator; `None`: [`PriceTable::workers_ai_defaults`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<PriceTable>,
    /// The tenant's budgets, over all its callers. Set by the operator.
    #[serde(default, skip_serializing_if = "Budget::is_unset")]
    pub budget: Budget,
    /// The tenant's AI Gateway; `None` (and in records stored before the
    /// setting existed): Workers AI is called directly.
    #[serde(default)]
    pub ai_gateway: Option<AiGateway>,
    /// The relevance floor of the tenant's searches that name no
    /// `minScore`, and of the chat tool `vector_search`; `None` (and in
    /// records stored before the setting existed):
    /// [`DEFAULT_SEARCH_FLOOR`](crate::ingest::DEFAULT_SEARCH_FLOOR).
    #[serde(default)]
    pub search_floor: Option<ScoreFloor>,
}

/// What a request without an API key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnonymousAccess {
    /// `POST /api/search` without a key.
    #[serde(default)]
    pub search: bool,
    /// Chat without a key.
    #[serde(default)]
    pub chat: bool,
}

impl TenantSettings {
    /// The settings a new tenant starts with.
    pub fn initial(tenant: &TenantId) -> Self {
        Self {
            display_name: tenant.as_str().to_owned(),
            default_models: DefaultModels {
                chat: DEFAULT_CHAT_MODEL.to_owned(),
                embedding: DEFAULT_EMBEDDING_MODEL.to_owned(),
                chat_fallbacks: Vec::new(),
            },
            anonymous: AnonymousAccess::default(),
            limits: crate::limits::Limits::default(),
            prices: None,
            budget: Budget::default(),
            ai_gateway: None,
            search_floor: None,
        }
    }

    /// The tenant's floor, else the default of the default mode (hybrid);
    /// a search in another mode uses [`ScoreFloor::default_for`] its mode.
    pub fn search_floor(&self) -> ScoreFloor {
        self.search_floor.unwrap_or(ScoreFloor::DEFAULT)
    }

    /// The prices in force.
    pub fn prices(&self) -> PriceTable {
        self.prices.clone().unwrap_or_default()
    }

    /// Applies a validated patch; returns whether anything changed.
    pub fn apply(&mut self, patch: &SettingsPatch) -> bool {
        let before = self.clone();
        if let Some(name) = &patch.display_name {
            name.trim().clone_into(&mut self.display_name);
        }
        if let Some(models) = &patch.default_models {
            if let Some(chat) = &models.chat {
                chat.clone_into(&mut self.default_models.chat);
            }
            if let Some(embedding) = &models.embedding {
                embedding.clone_into(&mut self.default_models.embedding);
            }
            if let Some(fallbacks) = &models.chat_fallbacks {
                fallbacks.clone_into(&mut self.default_models.chat_fallbacks);
            }
        }
        match &patch.ai_gateway {
            Some(GatewayPatch::Set(gateway)) => self.ai_gateway = Some(gateway.clone()),
            Some(GatewayPatch::Remove) => self.ai_gateway = None,
            None => {}
        }
        if let Some(limits) = &patch.limits {
            self.limits = *limits;
        }
        if let Some(prices) = &patch.prices {
            self.prices = Some(prices.clone());
        }
        if let Some(budget) = &patch.budget {
            self.budget = *budget;
        }
        match patch.search_floor {
            Some(FloorPatch::Set(floor)) => self.search_floor = Some(floor),
            Some(FloorPatch::Default) => self.search_floor = None,
            None => {}
        }
        if let Some(anonymous) = &patch.anonymous {
            if let Some(search) = anonymous.search {
                self.anonymous.search = search;
            }
            if let Some(chat) = anonymous.chat {
                self.anonymous.chat = chat;
            }
        }
        before != *self
    }
}

/// The models a tenant uses by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultModels {
    /// Text generation (chat) model.
    pub chat: String,
    /// Embedding model (one of [`crate::models::EMBEDDING_MODELS`]).
    pub embedding: String,
    /// The chat models tried, in order, when the default fails, times out
    /// or is overloaded (at most [`MAX_CHAT_FALLBACKS`]); empty in records
    /// stored before the setting existed.
    #[serde(default)]
    pub chat_fallbacks: Vec<String>,
}

impl DefaultModels {
    /// The chat chain: the default, then its fallbacks.
    pub fn chat_chain(&self) -> Vec<String> {
        std::iter::once(self.chat.clone())
            .chain(self.chat_fallbacks.iter().cloned())
            .collect()
    }
}

/// A partial change of [`TenantSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New default models.
    pub default_models: Option<DefaultModelsPatch>,
    /// New anonymous access. Left out of the encoding when absent, so that a
    /// patch without it has the same bytes as before the setting existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<AnonymousPatch>,
    /// New rate limits (replacing the old ones whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::Limits>,
    /// A new price table (replacing the old one whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<PriceTable>,
    /// New tenant budgets (replacing the old ones whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// A new AI Gateway, or its removal; absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_gateway: Option<GatewayPatch>,
    /// A new search floor, or back to the default; absent: unchanged. A
    /// tenant admin may set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_floor: Option<FloorPatch>,
}

/// A change of [`TenantSettings::search_floor`] (an enum for the reason
/// [`GatewayPatch`] is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FloorPatch {
    /// Use this floor.
    Set(ScoreFloor),
    /// Use the platform's default.
    Default,
}

/// A change of [`TenantSettings::ai_gateway`]. An enum, not an
/// `Option<Option<_>>`: MessagePack's nil would read back as "absent".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GatewayPatch {
    /// Use this gateway (replacing the old setting whole).
    Set(AiGateway),
    /// Call Workers AI directly.
    Remove,
}

impl SettingsPatch {
    /// Whether the patch changes what only the operator may set.
    pub fn operator_only(&self) -> bool {
        self.limits.is_some()
            || self.prices.is_some()
            || self.budget.is_some()
            || self.ai_gateway.is_some()
    }
}

/// A partial change of [`AnonymousAccess`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnonymousPatch {
    /// Allow or refuse search without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<bool>,
    /// Allow or refuse chat without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<bool>,
}

/// A partial change of [`DefaultModels`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultModelsPatch {
    /// New chat model.
    pub chat: Option<String>,
    /// New embedding model.
    pub embedding: Option<String>,
    /// New chat fallbacks (replacing the old list whole; empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_fallbacks: Option<Vec<String>>,
}

/// Why a [`SettingsPatch`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The patch changes nothing at all.
    #[error("the patch names no setting to change")]
    Empty,
    /// The display name is empty, too long or has control characters.
    #[error("displayName must be 1 to {MAX_DISPLAY_NAME_CHARS} printable characters")]
    DisplayName,
    /// A model name is empty, too long or has characters a model name never has.
    #[error("defaultModels.{field} must be 1 to {MAX_MODEL_NAME_LEN} characters of A-Z a-z 0-9 @ . _ / : -")]
    ModelName {
        /// Which model field.
        field: &'static str,
    },
    /// A limit is zero or above its bound.
    #[error("{0}")]
    Limits(String),
    /// More chat fallbacks than [`MAX_CHAT_FALLBACKS`].
    #[error("defaultModels.chatFallbacks holds at most {MAX_CHAT_FALLBACKS} models")]
    TooManyFallbacks,
    /// An alias (`chat`, `embedding`) where a model must be named: a default
    /// cannot point at itself.
    #[error("defaultModels.{field} must name a model, not the alias {alias:?}")]
    Alias {
        /// Which model field.
        field: &'static str,
        /// The alias given.
        alias: String,
    },
    /// The embedding model is not one this platform knows the dimensions of.
    #[error("defaultModels.embedding {model:?} is not a known embedding model; known: {known}")]
    UnknownEmbeddingModel {
        /// The model given.
        model: String,
        /// The known ones, comma-separated.
        known: String,
    },
    /// The AI Gateway setting is invalid.
    #[error("{0}")]
    Gateway(#[from] GatewayError),
}

impl SettingsPatch {
    /// Checks every field of the patch.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let models = self.default_models.as_ref();
        let empty_models = models.is_none_or(|m| {
            m.chat.is_none() && m.embedding.is_none() && m.chat_fallbacks.is_none()
        });
        let empty_anonymous = self
            .anonymous
            .is_none_or(|a| a.search.is_none() && a.chat.is_none());
        if self.display_name.is_none()
            && empty_models
            && empty_anonymous
            && !self.operator_only()
            && self.ai_gateway.is_none()
            && self.search_floor.is_none()
        {
            return Err(SettingsError::Empty);
        }
        if let Some(name) = &self.display_name {
            let trimmed = name.trim();
            let chars = trimmed.chars().count();
            if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS || trimmed.chars().any(char::is_control)
            {
                return Err(SettingsError::DisplayName);
            }
        }
        if let Some(limits) = &self.limits {
            limits
                .validate()
                .map_err(|e| SettingsError::Limits(e.to_string()))?;
        }
        if let Some(prices) = &self.prices {
            prices
                .validate()
                .map_err(|e| SettingsError::Limits(e.to_string()))?;
        }
        if let Some(budget) = &self.budget {
            budget
                .validate()
                .map_err(|e| SettingsError::Limits(e.to_string()))?;
        }
        if let Some(models) = models {
            models.validate()?;
        }
        if let Some(GatewayPatch::Set(gateway)) = &self.ai_gateway {
            gateway.validate()?;
        }
        Ok(())
    }
}

impl DefaultModelsPatch {
    /// Checks every model name: the model-name rule, no alias, at most
    /// [`MAX_CHAT_FALLBACKS`] fallbacks, a known embedding model.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let fallbacks = self.chat_fallbacks.iter().flatten();
        let named = [("chat", &self.chat), ("embedding", &self.embedding)]
            .into_iter()
            .filter_map(|(field, value)| value.as_ref().map(|v| (field, v)))
            .chain(fallbacks.map(|v| ("chatFallbacks", v)));
        for (field, value) in named {
            if !valid_model_name(value) {
                return Err(SettingsError::ModelName { field });
            }
            if crate::models::is_alias(value) {
                return Err(SettingsError::Alias {
                    field,
                    alias: value.clone(),
                });
            }
        }
        if self
            .chat_fallbacks
            .as_ref()
            .is_some_and(|f| f.len() > MAX_CHAT_FALLBACKS)
        {
            return Err(SettingsError::TooManyFallbacks);
        }
        if let Some(model) = &self.embedding {
            if crate::models::embedding_dimensions(model).is_none() {
                let known: Vec<&str> = crate::models::EMBEDDING_MODELS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect();
                return Err(SettingsError::UnknownEmbeddingModel {
                    model: model.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }
}

fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._/:-".contains(&b))
}

/// An operator's view of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSnapshot {
    /// The tenant's record.
    pub record: TenantRecord,
    /// Requests handled since the record was created.
    pub requests_handled: u64,
    /// The id of the last request handled before this one.
    pub last_request_id: Option<RequestId>,
    /// How many API keys the tenant has (revoked ones included); never
    /// their hashes or secrets.
    #[serde(default)]
    pub key_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(name: Option<&str>, chat: Option<&str>) -> SettingsPatch {
        SettingsPatch {
            display_name: name.map(str::to_owned),
            default_models: chat.map(|c| DefaultModelsPatch {
                chat: Some(c.to_owned()),
                ..DefaultModelsPatch::default()
            }),
            ..SettingsPatch::default()
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            SettingsPatch::default().validate(),
            Err(SettingsError::Empty)
        );
        assert_eq!(
            SettingsPatch {
                default_models: Some(DefaultModelsPatch::default()),
                anonymous: Some(AnonymousPatch::default()),
                ..SettingsPatch::default()
            }
            .validate(),
            Err(SettingsError::Empty)
        );
        assert_eq!(patch(Some("Acme"), None).validate(), Ok(()));
        assert_eq!(
            patch(Some("  "), None).validate(),
            Err(SettingsError::DisplayName)
        );
        assert_eq!(
            patch(Some("a\u{7}b"), None).validate(),
            Err(SettingsError::DisplayName)
        );
        assert_eq!(
            patch(Some(&"é".repeat(100)), None).validate(),
            Ok(()),
            "the limit counts characters, not bytes"
        );
        assert_eq!(
            patch(Some(&"é".repeat(101)), None).validate(),
            Err(SettingsError::DisplayName)
        );
        assert_eq!(
            patch(None, Some("@cf/qwen/qwen3-30b-a3b-fp8")).validate(),
            Ok(())
        );
        assert_eq!(
            patch(None, Some("model with spaces")).validate(),
            Err(SettingsError::ModelName { field: "chat" })
        );
    }

    #[test]
    fn config_validation() {
        let c = |name: &str, value: Option<&str>| SetConfig {
            name: name.into(),
            value: value.map(str::to_owned),
        };
        assert_eq!(c("support_email", Some("a@b")).validate(), Ok(()));
        assert_eq!(
            c("support_email", Some("a@b")).key(),
            "config:support_email"
        );
        assert_eq!(c("x", None).validate(), Ok(()));
        for bad in ["", "a b", "a/b", &"n".repeat(201)] {
            assert_eq!(
                c(bad, Some("v")).validate(),
                Err(ConfigError::Name),
                "{bad:?}"
            );
        }
        assert_eq!(
            c("x", Some(&"v".repeat(4097))).validate(),
            Err(ConfigError::Value)
        );
    }

    #[test]
    fn apply_reports_change_and_trims() {
        let mut settings = TenantSettings::initial(&TenantId::parse("acme").unwrap());
        assert!(settings.apply(&patch(Some("  Acme Corp "), None)));
        assert_eq!(settings.display_name, "Acme Corp");
        assert!(!settings.apply(&patch(Some("Acme Corp"), None)));
        assert!(settings.apply(&patch(None, Some("@cf/x/y"))));
        assert_eq!(settings.default_models.chat, "@cf/x/y");
        assert_eq!(settings.default_models.embedding, DEFAULT_EMBEDDING_MODEL);
    }

    #[test]
    fn anonymous_access_is_off_by_default_and_patched_field_by_field() {
        let mut settings = TenantSettings::initial(&TenantId::parse("acme").unwrap());
        assert_eq!(settings.anonymous, AnonymousAccess::default());
        let json = serde_json::to_value(&settings).unwrap();
        assert_eq!(
            json["anonymous"],
            serde_json::json!({"search": false, "chat": false})
        );
        let patch: SettingsPatch =
            serde_json::from_str(r#"{"anonymous":{"search":true}}"#).unwrap();
        assert_eq!(patch.validate(), Ok(()));
        assert!(settings.apply(&patch));
        assert_eq!(
            settings.anonymous,
            AnonymousAccess {
                search: true,
                chat: false
            }
        );
        assert!(
            !settings.apply(&patch),
            "the same patch again changes nothing"
        );
        let patch: SettingsPatch = serde_json::from_str(r#"{"anonymous":{"chat":true}}"#).unwrap();
        assert!(settings.apply(&patch));
        assert_eq!(
            settings.anonymous,
            AnonymousAccess {
                search: true,
                chat: true
            }
        );
        let empty: SettingsPatch = serde_json::from_str(r#"{"anonymous":{}}"#).unwrap();
        assert_eq!(empty.validate(), Err(SettingsError::Empty));
    }

    #[test]
    fn settings_stored_before_anonymous_existed_still_read() {
        let old = r#"{"displayName":"Acme","defaultModels":{"chat":"a","embedding":"b"}}"#;
        let settings: TenantSettings = serde_json::from_str(old).unwrap();
        assert_eq!(settings.anonymous, AnonymousAccess::default());
        assert!(settings.default_models.chat_fallbacks.is_empty());
        assert_eq!(settings.ai_gateway, None);
        assert_eq!(settings.default_models.chat_chain(), vec!["a".to_owned()]);
        assert_eq!(settings.search_floor, None);
        assert_eq!(settings.search_floor(), ScoreFloor::DEFAULT);
    }

    #[test]
    fn the_search_floor_is_set_by_anyone_with_admin_and_reset_to_the_default() {
        let mut settings = TenantSettings::initial(&TenantId::parse("acme").unwrap());
        assert_eq!(settings.search_floor(), ScoreFloor::DEFAULT);
        let floor = ScoreFloor::new(0.2).unwrap();
        let set = SettingsPatch {
            search_floor: Some(FloorPatch::Set(floor)),
            ..SettingsPatch::default()
        };
        assert_eq!(set.validate(), Ok(()), "a floor alone is a change");
        assert!(!set.operator_only(), "a tenant admin may set it");
        assert!(settings.apply(&set));
        assert_eq!(settings.search_floor(), floor);
        assert!(
            !settings.apply(&set),
            "the same floor again changes nothing"
        );
        // Stored and read back, as JSON (the record) and MessagePack (replies).
        let json = serde_json::to_string(&settings).unwrap();
        assert!(json.contains(r#""searchFloor":0.2"#), "{json}");
        assert_eq!(
            serde_json::from_str::<TenantSettings>(&json).unwrap(),
            settings
        );
        let bytes = rmp_serde::to_vec_named(&set).unwrap();
        assert_eq!(
            crate::msgpack::from_slice::<SettingsPatch>(&bytes).unwrap(),
            set
        );
        let reset = SettingsPatch {
            search_floor: Some(FloorPatch::Default),
            ..SettingsPatch::default()
        };
        let bytes = rmp_serde::to_vec_named(&reset).unwrap();
        assert_eq!(
            crate::msgpack::from_slice::<SettingsPatch>(&bytes).unwrap(),
            reset
        );
        assert!(settings.apply(&reset));
        assert_eq!(settings.search_floor, None);
        assert_eq!(settings.search_floor(), ScoreFloor::DEFAULT);
        // A stored floor out of range does not decode (never applied).
        let bad = json.replace(r#""searchFloor":0.2"#, r#""searchFloor":7"#);
        assert!(serde_json::from_str::<TenantSettings>(&bad).is_err());
    }

    fn models(f: impl FnOnce(&mut DefaultModelsPatch)) -> SettingsPatch {
        let mut m = DefaultModelsPatch::default();
        f(&mut m);
        SettingsPatch {
            default_models: Some(m),
            ..SettingsPatch::default()
        }
    }

    #[test]
    fn fallbacks_are_bounded_and_checked_like_model_names() {
        let three = vec!["@cf/a/b".to_owned(), "@cf/c/d".into(), "@cf/e/f".into()];
        let ok = models(|m| m.chat_fallbacks = Some(three.clone()));
        assert_eq!(ok.validate(), Ok(()));
        let mut settings = TenantSettings::initial(&TenantId::parse("acme").unwrap());
        assert!(settings.apply(&ok));
        assert_eq!(settings.default_models.chat_chain().len(), 4);
        let mut four = three.clone();
        four.push("@cf/g/h".into());
        assert_eq!(
            models(|m| m.chat_fallbacks = Some(four)).validate(),
            Err(SettingsError::TooManyFallbacks)
        );
        assert_eq!(
            models(|m| m.chat_fallbacks = Some(vec!["bad name".into()])).validate(),
            Err(SettingsError::ModelName {
                field: "chatFallbacks"
            })
        );
        assert!(matches!(
            models(|m| m.chat_fallbacks = Some(vec!["chat".into()])).validate(),
            Err(SettingsError::Alias { .. })
        ));
        // An empty list is a change (it removes the fallbacks), not an empty patch.
        let none = models(|m| m.chat_fallbacks = Some(vec![]));
        assert_eq!(none.validate(), Ok(()));
        assert!(settings.apply(&none));
        assert!(settings.default_models.chat_fallbacks.is_empty());
    }

    #[test]
    fn embedding_model_must_be_known() {
        assert_eq!(
            models(|m| m.embedding = Some("@cf/baai/bge-small-en-v1.5".into())).validate(),
            Ok(())
        );
        let unknown = models(|m| m.embedding = Some("@cf/some/other".into())).validate();
        assert!(
            matches!(&unknown, Err(SettingsError::UnknownEmbeddingModel { known, .. }) if known.contains("bge-base")),
            "{unknown:?}"
        );
        assert!(matches!(
            models(|m| m.embedding = Some("embedding".into())).validate(),
            Err(SettingsError::Alias { .. })
        ));
    }

    #[test]
    fn gateway_is_set_replaced_and_removed() {
        let mut settings = TenantSettings::initial(&TenantId::parse("acme").unwrap());
        let gw = AiGateway {
            id: "gw-1".into(),
            skip_cache: true,
            cache_ttl: Some(60),
        };
        let set = SettingsPatch {
            ai_gateway: Some(GatewayPatch::Set(gw.clone())),
            ..SettingsPatch::default()
        };
        assert_eq!(set.validate(), Ok(()));
        assert!(settings.apply(&set));
        assert_eq!(settings.ai_gateway.as_ref(), Some(&gw));
        let bad = SettingsPatch {
            ai_gateway: Some(GatewayPatch::Set(AiGateway {
                id: String::new(),
                ..gw
            })),
            ..SettingsPatch::default()
        };
        assert_eq!(
            bad.validate(),
            Err(SettingsError::Gateway(GatewayError::Id))
        );
        let remove = SettingsPatch {
            ai_gateway: Some(GatewayPatch::Remove),
            ..SettingsPatch::default()
        };
        assert_eq!(remove.validate(), Ok(()), "a removal alone is a change");
        assert!(settings.apply(&remove));
        assert_eq!(settings.ai_gateway, None);
        // The removal survives the wire (MessagePack), unlike a nil would.
        let bytes = rmp_serde::to_vec_named(&remove).unwrap();
        let back: SettingsPatch = crate::msgpack::from_slice(&bytes).unwrap();
        assert_eq!(back, remove);
    }
}
