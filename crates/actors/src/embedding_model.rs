//! Which embedding model a tenant's index is written and searched with, and
//! when a tenant may change it: a tenant's `defaultModels.embedding` is used
//! or the change is refused, never silently ignored.
//!
//! - **Workers AI deployments**: the tenant's model is used, for indexing
//!   and for search. The deployment's index has fixed dimensions (those of
//!   `EMBEDDING_MODEL`, by default `@cf/baai/bge-base-en-v1.5`: 768, the
//!   dimensions the Vectorize index is created with), so a model of other
//!   dimensions is refused (400 `embedding_dimensions`). Vectors of two
//!   models cannot be compared, so a change of model while the tenant's
//!   index holds chunks is refused too (409 `index_not_empty`): delete the
//!   documents, change the model, ingest again.
//! - **Embedded deployments** have one embedder, `local/hashed-768`: any
//!   other model is refused (400 `embedding_model_unavailable`, naming it).

use crate::providers::Settings;
use protocol::models::embedding_dimensions;

/// Why a change of a tenant's embedding model is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbeddingRefusal {
    /// This deployment embeds with one model only.
    #[error("this deployment embeds with {embeds_with} only; {model} is not available here")]
    Unavailable {
        /// The model asked for.
        model: String,
        /// The deployment's embedder.
        embeds_with: String,
    },
    /// The model's vectors do not fit the deployment's index.
    #[error("{model} makes {dims}-dimension vectors; this deployment's index holds {index_dims}-dimension vectors")]
    Dimensions {
        /// The model asked for.
        model: String,
        /// Its dimensions.
        dims: usize,
        /// The index's.
        index_dims: usize,
    },
    /// The tenant's index holds vectors of the current model.
    #[error("the index holds {chunks} chunks embedded with {current}; vectors of {model} cannot be compared with them: delete the documents first, then change the model and ingest again")]
    IndexNotEmpty {
        /// The model asked for.
        model: String,
        /// The model in use.
        current: String,
        /// Chunks in the index.
        chunks: u64,
    },
}

impl EmbeddingRefusal {
    /// The client's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "embedding_model_unavailable",
            Self::Dimensions { .. } => "embedding_dimensions",
            Self::IndexNotEmpty { .. } => "index_not_empty",
        }
    }

    /// Whether the refusal is a conflict with the index's state (409) rather
    /// than a request this deployment can never serve (400).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::IndexNotEmpty { .. })
    }
}

/// The dimensions of the deployment's index.
pub fn index_dimensions(settings: &Settings) -> usize {
    if settings.workers_ai {
        embedding_dimensions(&settings.embedding_model).unwrap_or(crate::embedding::DIMENSIONS)
    } else {
        crate::embedding::DIMENSIONS
    }
}

/// Whether the tenant may change its embedding model from `current` to
/// `model` while its index holds `chunks` chunks.
pub fn check_change(
    settings: &Settings,
    current: &str,
    model: &str,
    chunks: u64,
) -> Result<(), EmbeddingRefusal> {
    if !settings.workers_ai {
        return if model == crate::embedding::HASHED_MODEL {
            Ok(())
        } else {
            Err(EmbeddingRefusal::Unavailable {
                model: model.to_owned(),
                embeds_with: crate::embedding::HASHED_MODEL.to_owned(),
            })
        };
    }
    let index_dims = index_dimensions(settings);
    match embedding_dimensions(model) {
        Some(dims) if dims == index_dims => {}
        dims => {
            return Err(EmbeddingRefusal::Dimensions {
                model: model.to_owned(),
                dims: dims.unwrap_or(0),
                index_dims,
            })
        }
    }
    if model != current && chunks > 0 {
        return Err(EmbeddingRefusal::IndexNotEmpty {
            model: model.to_owned(),
            current: current.to_owned(),
            chunks,
        });
    }
    Ok(())
}

/// The model a tenant's index is written and searched with: the tenant's
/// (Workers AI) or `local/hashed-768` (embedded). A stored model that does
/// not fit the index (set before the check existed) is an error, not
/// replaced by another.
pub fn model_in_use(settings: &Settings, tenant_model: &str) -> Result<String, EmbeddingRefusal> {
    if !settings.workers_ai {
        return Ok(crate::embedding::HASHED_MODEL.to_owned());
    }
    let index_dims = index_dimensions(settings);
    match embedding_dimensions(tenant_model) {
        Some(dims) if dims == index_dims => Ok(tenant_model.to_owned()),
        dims => Err(EmbeddingRefusal::Dimensions {
            model: tenant_model.to_owned(),
            dims: dims.unwrap_or(0),
            index_dims,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(workers_ai: bool) -> Settings {
        let provider = if workers_ai { "workers-ai" } else { "embedded" };
        crate::providers::settings(|name| (name == "AI_PROVIDER").then(|| provider.to_owned()))
            .unwrap()
    }

    const BASE: &str = "@cf/baai/bge-base-en-v1.5";
    const SMALL: &str = "@cf/baai/bge-small-en-v1.5";

    #[test]
    fn workers_ai_uses_the_tenants_model_of_the_index_dimensions() {
        let s = deployment(true);
        assert_eq!(index_dimensions(&s), 768);
        assert_eq!(check_change(&s, BASE, BASE, 10), Ok(()), "unchanged");
        assert_eq!(check_change(&s, BASE, "local/hashed-768", 0), Ok(()));
        let e = check_change(&s, BASE, SMALL, 0).unwrap_err();
        assert_eq!((e.code(), e.is_conflict()), ("embedding_dimensions", false));
        assert!(e.to_string().contains("384-dimension"), "{e}");
        let e = check_change(&s, BASE, "local/hashed-768", 3).unwrap_err();
        assert_eq!((e.code(), e.is_conflict()), ("index_not_empty", true));
        assert!(e.to_string().contains("3 chunks"), "{e}");
        assert_eq!(model_in_use(&s, BASE).as_deref(), Ok(BASE));
        assert!(model_in_use(&s, SMALL).is_err(), "never silently replaced");
    }

    #[test]
    fn the_embedded_deployment_has_one_embedder() {
        let s = deployment(false);
        assert_eq!(check_change(&s, BASE, "local/hashed-768", 50), Ok(()));
        let e = check_change(&s, BASE, BASE, 0).unwrap_err();
        assert_eq!(e.code(), "embedding_model_unavailable");
        assert!(e.to_string().contains("local/hashed-768"), "{e}");
        assert_eq!(model_in_use(&s, BASE).as_deref(), Ok("local/hashed-768"));
    }
}
