//! Models and how they are reached: the aliases a request may name instead
//! of a model (`chat`, `embedding`), the bound on a tenant's chat fallbacks,
//! the embedding models this platform knows with their dimensions, and a
//! tenant's AI Gateway setting.

use serde::{Deserialize, Serialize};

/// Names the tenant's current default chat model (and its fallbacks) where
/// a turn names a model.
pub const CHAT_ALIAS: &str = "chat";
/// Names the tenant's current default embedding model where a model is named.
pub const EMBEDDING_ALIAS: &str = "embedding";
/// Most fallbacks after a tenant's default chat model. Each one can cost a
/// full set of attempts (see the chat router), so a longer chain would only
/// delay the error a client gets when the platform itself is down.
pub const MAX_CHAT_FALLBACKS: usize = 3;

/// The embedding models this platform knows, with the dimensions of their
/// vectors. A tenant's `defaultModels.embedding` must be one of them, so
/// the index it writes to can be checked before a vector is written.
pub const EMBEDDING_MODELS: &[(&str, usize)] = &[
    ("@cf/baai/bge-small-en-v1.5", 384),
    ("@cf/baai/bge-base-en-v1.5", 768),
    ("@cf/baai/bge-large-en-v1.5", 1024),
    ("@cf/baai/bge-m3", 1024),
    ("local/hashed-768", 768),
];

/// The dimensions of a known embedding model's vectors.
pub fn embedding_dimensions(model: &str) -> Option<usize> {
    EMBEDDING_MODELS
        .iter()
        .find(|(name, _)| *name == model)
        .map(|(_, dims)| *dims)
}

/// A turn's model as the platform serves it: the alias `chat` means the
/// tenant's default (and its fallbacks), exactly as naming none does, so it
/// becomes `None` before any allow-list, price or route looks at it.
pub fn turn_model(model: Option<String>) -> Option<String> {
    model.filter(|m| m != CHAT_ALIAS)
}

/// Whether `name` is one of the aliases, which never name a stored default.
pub fn is_alias(name: &str) -> bool {
    name == CHAT_ALIAS || name == EMBEDDING_ALIAS
}

/// The longest AI Gateway id accepted.
pub const MAX_GATEWAY_ID_LEN: usize = 64;
/// The longest cache TTL accepted, in seconds (30 days).
pub const MAX_GATEWAY_CACHE_TTL_SECS: u32 = 30 * 24 * 60 * 60;

/// A tenant's AI Gateway: every Workers AI call of the tenant (chat and
/// embeddings) goes through the gateway `id` of the deployment's account,
/// with these cache options, tagged with the tenant, key and session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AiGateway {
    /// The gateway's id (its name in the dashboard).
    pub id: String,
    /// Bypass the gateway's cache.
    #[serde(default)]
    pub skip_cache: bool,
    /// How long the gateway caches an answer, in seconds; `None`: the
    /// gateway's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<u32>,
}

/// Why an [`AiGateway`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The id is empty, too long or has other characters.
    #[error("aiGateway.id must be 1 to {MAX_GATEWAY_ID_LEN} characters of a-z A-Z 0-9 _ -")]
    Id,
    /// The TTL is zero or too long.
    #[error("aiGateway.cacheTtl must be 1 to {MAX_GATEWAY_CACHE_TTL_SECS} seconds")]
    CacheTtl,
}

impl AiGateway {
    /// Checks the id and the TTL.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_GATEWAY_ID_LEN
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(GatewayError::Id);
        }
        if self
            .cache_ttl
            .is_some_and(|t| t == 0 || t > MAX_GATEWAY_CACHE_TTL_SECS)
        {
            return Err(GatewayError::CacheTtl);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_embedding_models_and_aliases() {
        assert_eq!(embedding_dimensions("@cf/baai/bge-base-en-v1.5"), Some(768));
        assert_eq!(
            embedding_dimensions("@cf/baai/bge-small-en-v1.5"),
            Some(384)
        );
        assert_eq!(embedding_dimensions("local/hashed-768"), Some(768));
        assert_eq!(embedding_dimensions("@cf/unknown"), None);
        assert_eq!(
            embedding_dimensions(crate::coordinator::DEFAULT_EMBEDDING_MODEL),
            Some(768),
            "the default is known"
        );
        assert!(is_alias("chat") && is_alias("embedding") && !is_alias("@cf/x"));
        assert_eq!(turn_model(Some("chat".into())), None);
        assert_eq!(turn_model(Some("@cf/x".into())).as_deref(), Some("@cf/x"));
        assert_eq!(turn_model(None), None);
    }

    #[test]
    fn gateway_validation() {
        let g = |id: &str, ttl: Option<u32>| AiGateway {
            id: id.into(),
            skip_cache: false,
            cache_ttl: ttl,
        };
        assert_eq!(g("my-gateway_1", Some(3600)).validate(), Ok(()));
        assert_eq!(g("gw", None).validate(), Ok(()));
        for bad in ["", "a b", "a/b", &"g".repeat(65)] {
            assert_eq!(g(bad, None).validate(), Err(GatewayError::Id), "{bad:?}");
        }
        assert_eq!(g("gw", Some(0)).validate(), Err(GatewayError::CacheTtl));
        assert_eq!(
            g("gw", Some(MAX_GATEWAY_CACHE_TTL_SECS + 1)).validate(),
            Err(GatewayError::CacheTtl)
        );
        let json: AiGateway = serde_json::from_str(r#"{"id":"gw"}"#).unwrap();
        assert_eq!(json, g("gw", None));
    }
}
