//! API keys: their wire format, scopes, records, and the coordinator's key
//! messages (carried by [`crate::coordinator::CoordinatorRequest`]).
//!
//! A key is `tp_<tenantId>_<keyId>_<secret>`: the prefix says what it is, the
//! tenant and key id say where to verify it (the tenant's coordinator, the
//! key's record) without any lookup table, and the secret is 32 random bytes
//! in lowercase hex (256 bits). Tenant ids have no `_`, key ids and secrets
//! are hex, so the parts split unambiguously. Only the SHA-256 of the secret
//! is stored; the secret is shown once, when the key is created or rotated.

use crate::ids::TenantId;
use serde::{Deserialize, Serialize};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tp_";
/// Hex digits of a key id (48 bits: unique within a tenant).
pub const KEY_ID_HEX: usize = 12;
/// Hex digits of a secret (256 bits).
pub const SECRET_HEX: usize = 64;
/// The longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 100;
/// Most models in a key's allow-list.
pub const MAX_KEY_MODELS: usize = 32;
/// Longest rotation grace period (a day).
pub const MAX_GRACE_SECONDS: u64 = 86_400;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /api/search`.
    Search,
    /// `POST /api/chat`, the chat WebSocket, history, resume, erase.
    Chat,
    /// `POST /api/ingest`, job status, document deletes.
    Ingest,
    /// The tenant's own admin API: keys, settings, config, actor inspection.
    Admin,
}

impl Scope {
    /// The scope's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Search => "search",
            Scope::Chat => "chat",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

/// A key taken apart (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// The tenant the key names.
    pub tenant: TenantId,
    /// The key's id (12 lowercase hex digits).
    pub key_id: String,
    /// The secret (64 lowercase hex digits); never logged or stored.
    pub secret: String,
}

/// Why a string is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an API key (tp_<tenant>_<keyId>_<secret>)")]
pub struct MalformedKey;

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ParsedKey {
    /// Splits `tp_<tenant>_<keyId>_<secret>`; anything else is malformed.
    pub fn parse(raw: &str) -> Result<Self, MalformedKey> {
        let rest = raw.strip_prefix(KEY_PREFIX).ok_or(MalformedKey)?;
        let mut parts = rest.split('_');
        let (Some(tenant), Some(key_id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedKey);
        };
        if !lower_hex(key_id, KEY_ID_HEX) || !lower_hex(secret, SECRET_HEX) {
            return Err(MalformedKey);
        }
        Ok(Self {
            tenant: TenantId::parse(tenant).map_err(|_| MalformedKey)?,
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The key as a client writes it.
    pub fn format(tenant: &TenantId, key_id: &str, secret: &str) -> String {
        format!("{KEY_PREFIX}{tenant}_{key_id}_{secret}")
    }
}

/// Per-key limits (enforced by the limits issue; stored and shown now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Model tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Concurrent chat turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// A key as stored and shown: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// The key id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Models it may name; empty: the tenant's defaults only.
    pub models: Vec<String>,
    /// When it stops working (ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it was last verified (to within the gateway's cache time).
    pub last_used_at_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_at_ms: Option<u64>,
    /// When its secret was last rotated.
    pub rotated_at_ms: Option<u64>,
    /// Until when the secret before the last rotation still works.
    pub previous_valid_until_ms: Option<u64>,
    /// Rate limits (an unset one is the tenant's).
    #[serde(default)]
    pub limits: KeyLimits,
    /// Spending limits per UTC day and month (unset: none).
    #[serde(default)]
    pub budget: crate::limits::Budget,
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKey {
    /// A name for people (1–100 characters).
    pub name: String,
    /// At least one scope.
    pub scopes: Vec<Scope>,
    /// Allowed models (each 1–128 of `A-Z a-z 0-9 @ . _ / : -`), at most 32.
    pub models: Vec<String>,
    /// When it expires; must be in the future.
    pub expires_at_ms: Option<u64>,
    /// Limits.
    pub limits: KeyLimits,
    /// Budget.
    #[serde(default)]
    pub budget: crate::limits::Budget,
}

/// `GET /admin/keys/<id>`, `DELETE /admin/keys/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyId {
    /// The key id.
    pub id: String,
}

/// `POST /admin/keys/<id>/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKey {
    /// The key id.
    pub id: String,
    /// How long the old secret keeps working (0: not at all), at most a day.
    pub grace_seconds: u64,
}

/// `PATCH /admin/keys/<id>`: new limits for a key (replacing the old ones
/// whole; an unset limit is the tenant's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateKey {
    /// The key id.
    pub id: String,
    /// Its new limits, if they change.
    pub limits: Option<KeyLimits>,
    /// Its new budget, if it changes.
    #[serde(default)]
    pub budget: Option<crate::limits::Budget>,
}

/// A key check, from the gateway: the key id and the SHA-256 of the secret
/// (lowercase hex), so the secret itself never leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyKey {
    /// The key id.
    pub id: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
}

/// A key with its secret: the only answer that carries one (create, rotate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    /// The full key, `tp_<tenant>_<id>_<secret>`.
    pub key: String,
    /// Its record.
    pub record: KeyRecord,
}

/// The answer to a key check.
// One short-lived value per checked request: boxing the record would save
// nothing worth an allocation, and would change the agreed type.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verification {
    /// The key is valid now: its record.
    Valid(KeyRecord),
    /// Unknown id, wrong secret, expired or revoked: the caller says only
    /// `invalid_key`, whichever it is.
    Invalid,
}

/// Why a key request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Bad name.
    #[error("name must be 1 to {MAX_KEY_NAME_CHARS} characters, none of them control characters")]
    Name,
    /// No scope, or one listed twice.
    #[error("scopes must list at least one of search, chat, ingest, admin, each once")]
    Scopes,
    /// A bad model name, or too many.
    #[error("models must be at most {MAX_KEY_MODELS} names of 1 to 128 characters of A-Z a-z 0-9 @ . _ / : -")]
    Models,
    /// An expiry in the past.
    #[error("expiresAt must be in the future")]
    Expiry,
    /// A grace period out of range.
    #[error("graceSeconds must be 0 to {MAX_GRACE_SECONDS}")]
    Grace,
    /// A limit of zero.
    #[error("limits must be positive whole numbers")]
    Limits,
    /// A key id that cannot be one.
    #[error("a key id is {KEY_ID_HEX} lowercase hex digits")]
    Id,
}

/// Checks a model name (the chat `model` field's rule).
pub fn valid_model(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 128
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._/:-".contains(&b))
}

/// Checks a key id.
pub fn valid_key_id(id: &str) -> bool {
    lower_hex(id, KEY_ID_HEX)
}

impl CreateKey {
    /// Checks every field against `now_ms`.
    pub fn validate(&self, now_ms: u64) -> Result<(), KeyError> {
        let chars = self.name.trim().chars().count();
        if chars == 0
            || self.name.chars().count() > MAX_KEY_NAME_CHARS
            || self.name.chars().any(char::is_control)
        {
            return Err(KeyError::Name);
        }
        let mut scopes = self.scopes.clone();
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() || scopes.len() != self.scopes.len() {
            return Err(KeyError::Scopes);
        }
        if self.models.len() > MAX_KEY_MODELS || !self.models.iter().all(|m| valid_model(m)) {
            return Err(KeyError::Models);
        }
        if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return Err(KeyError::Expiry);
        }
        let l = &self.limits;
        if [l.rpm, l.tpm, l.concurrency].contains(&Some(0)) {
            return Err(KeyError::Limits);
        }
        self.budget.validate().map_err(|_| KeyError::Limits)?;
        Ok(())
    }
}

impl RotateKey {
    /// Checks the id and the grace period.
    pub fn validate(&self) -> Result<(), KeyError> {
        if !valid_key_id(&self.id) {
            return Err(KeyError::Id);
        }
        if self.grace_seconds > MAX_GRACE_SECONDS {
            return Err(KeyError::Grace);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_format() {
        let t = TenantId::parse("acme-1").unwrap();
        let secret = "ab".repeat(32);
        let key = ParsedKey::format(&t, "0123456789ab", &secret);
        assert_eq!(key, format!("tp_acme-1_0123456789ab_{secret}"));
        let p = ParsedKey::parse(&key).unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.key_id.as_str(), p.secret.as_str()),
            ("acme-1", "0123456789ab", secret.as_str())
        );
        for bad in [
            "",
            "tp_",
            "sk_acme_0123456789ab_00",
            &format!("tp_acme_0123456789ab_{}", "AB".repeat(32)),
            &format!("tp_acme_0123456789a_{secret}"),
            &format!("tp_acme_0123456789ab_{secret}_x"),
            &format!("tp_Acme_0123456789ab_{secret}"),
            &format!("tp__0123456789ab_{secret}"),
        ] {
            assert_eq!(ParsedKey::parse(bad), Err(MalformedKey), "{bad}");
        }
    }

    #[test]
    fn create_requests_are_checked() {
        let ok = CreateKey {
            budget: Default::default(),
            name: "ci".into(),
            scopes: vec![Scope::Search, Scope::Chat],
            models: vec!["@cf/meta/llama-3.3-70b-instruct-fp8-fast".into()],
            expires_at_ms: Some(2_000),
            limits: KeyLimits::default(),
        };
        assert_eq!(ok.validate(1_000), Ok(()));
        let with = |f: &dyn Fn(&mut CreateKey)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate(1_000)
        };
        assert_eq!(with(&|c| c.name = " ".into()), Err(KeyError::Name));
        assert_eq!(
            with(&|c| c.name = "\u{0}\u{1b}".into()),
            Err(KeyError::Name)
        );
        assert_eq!(with(&|c| c.name = "my app\n".into()), Err(KeyError::Name));
        assert_eq!(with(&|c| c.scopes = vec![]), Err(KeyError::Scopes));
        assert_eq!(
            with(&|c| c.scopes = vec![Scope::Chat, Scope::Chat]),
            Err(KeyError::Scopes)
        );
        assert_eq!(
            with(&|c| c.models = vec!["a b".into()]),
            Err(KeyError::Models)
        );
        assert_eq!(
            with(&|c| c.expires_at_ms = Some(1_000)),
            Err(KeyError::Expiry)
        );
        assert_eq!(with(&|c| c.limits.rpm = Some(0)), Err(KeyError::Limits));
        let rotate = |g| RotateKey {
            id: "0123456789ab".into(),
            grace_seconds: g,
        };
        assert_eq!(rotate(60).validate(), Ok(()));
        assert_eq!(
            rotate(MAX_GRACE_SECONDS + 1).validate(),
            Err(KeyError::Grace)
        );
    }
}
