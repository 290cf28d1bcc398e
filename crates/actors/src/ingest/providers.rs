//! Which implementation of each port runs, from the deployment's vars:
//! `AI_PROVIDER` (`embedded` | `workers-ai`), `VECTOR_BACKEND` (`embedded` |
//! `vectorize`), `EMBEDDING_MODEL`, `CHUNK_MAX_CHARS`, `CHUNK_OVERLAP_CHARS`,
//! and `FAULT_INJECTION` (tests only; honoured only with the embedded embedder,
//! so no deployed configuration can enable it).

use super::sql_index::SqlVectorIndex;
use crate::chunking::ChunkConfig;
use crate::cloudflare::kv::WorkersKv;
use crate::cloudflare::vectorize::VectorizeIndex;
use crate::cloudflare::workers_ai::WorkersAiEmbedder;
use crate::embedding::DIMENSIONS;
use crate::ports::{
    Embedder, HashedEmbedder, PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord,
};
use crate::retrieval::MemIndex;
use protocol::coordinator::DEFAULT_EMBEDDING_MODEL;
use protocol::ingest::SearchMode;
use protocol::TenantId;
use std::cell::RefCell;
use std::rc::Rc;
use worker::Env;

/// The deployment's choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Workers AI (`true`) or the embedded embedder.
    pub workers_ai: bool,
    /// Vectorize (`true`) or the embedded index.
    pub vectorize: bool,
    /// The Workers AI embedding model.
    pub embedding_model: String,
    /// Chunk sizes.
    pub chunking: ChunkConfig,
    /// Whether `InjectFaults` is honoured.
    pub fault_injection: bool,
}

/// Reads the settings from vars given as a lookup function.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let choice = |name: &str, embedded: &str, cloud: &str| match var(name).as_deref() {
        None | Some("") => Ok(false),
        Some(v) if v == embedded => Ok(false),
        Some(v) if v == cloud => Ok(true),
        Some(other) => Err(format!(
            "{name} is {other:?}; expected {embedded:?} or {cloud:?}"
        )),
    };
    let workers_ai = choice("AI_PROVIDER", "embedded", "workers-ai")?;
    let vectorize = choice("VECTOR_BACKEND", "embedded", "vectorize")?;
    let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    Ok(Settings {
        workers_ai,
        vectorize,
        embedding_model: var("EMBEDDING_MODEL")
            .unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.to_owned()),
        chunking: ChunkConfig::from_settings(
            number("CHUNK_MAX_CHARS"),
            number("CHUNK_OVERLAP_CHARS"),
        ),
        fault_injection: !workers_ai && var("FAULT_INJECTION").as_deref() == Some("enabled"),
    })
}

/// The embedder in use.
pub enum AnyEmbedder {
    /// `local/hashed-768`.
    Hashed(HashedEmbedder),
    /// Workers AI.
    WorkersAi(WorkersAiEmbedder),
}

impl AnyEmbedder {
    /// The embedder the settings choose.
    pub fn new(env: &Env, settings: &Settings) -> Result<Self, PortError> {
        if settings.workers_ai {
            let ai = env.ai("AI").map_err(|e| PortError::Failed {
                service: "Workers AI",
                message: e.to_string(),
            })?;
            Ok(Self::WorkersAi(WorkersAiEmbedder::new(
                ai,
                settings.embedding_model.clone(),
                DIMENSIONS,
            )))
        } else {
            Ok(Self::Hashed(HashedEmbedder))
        }
    }
}

impl Embedder for AnyEmbedder {
    fn model(&self) -> &str {
        match self {
            Self::Hashed(e) => e.model(),
            Self::WorkersAi(e) => e.model(),
        }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError> {
        match self {
            Self::Hashed(e) => e.embed(texts).await,
            Self::WorkersAi(e) => e.embed(texts).await,
        }
    }
}

/// The vector index in use.
pub enum AnyIndex {
    /// SQLite + FTS5 in the tenant's object.
    Sql(SqlVectorIndex),
    /// Vectorize.
    Vectorize(VectorizeIndex),
}

impl AnyIndex {
    /// The index the settings choose, for `tenant`.
    pub fn new(
        env: &Env,
        settings: &Settings,
        tenant: &TenantId,
        sql: worker::SqlStorage,
        mem: Rc<RefCell<Option<MemIndex>>>,
    ) -> Result<Self, PortError> {
        if settings.vectorize {
            Ok(Self::Vectorize(VectorizeIndex::from_env(
                env,
                "VECTORS",
                tenant.clone(),
            )?))
        } else {
            Ok(Self::Sql(SqlVectorIndex::new(sql, mem)))
        }
    }
}

impl VectorIndex for AnyIndex {
    fn backend(&self) -> &'static str {
        match self {
            Self::Sql(i) => i.backend(),
            Self::Vectorize(i) => i.backend(),
        }
    }

    fn supports(&self, mode: SearchMode) -> bool {
        match self {
            Self::Sql(i) => i.supports(mode),
            Self::Vectorize(i) => i.supports(mode),
        }
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        match self {
            Self::Sql(i) => i.upsert(records).await,
            Self::Vectorize(i) => i.upsert(records).await,
        }
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        match self {
            Self::Sql(i) => i.delete(ids).await,
            Self::Vectorize(i) => i.delete(ids).await,
        }
    }

    async fn query(&self, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        match self {
            Self::Sql(i) => i.query(query).await,
            Self::Vectorize(i) => i.query(query).await,
        }
    }
}

/// The search cache, if the deployment has a `CACHE` namespace.
pub fn cache(env: &Env) -> Option<WorkersKv> {
    env.kv("CACHE").ok().map(WorkersKv::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        settings(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_embedded() {
        let s = from(&[]).unwrap();
        assert!(!s.workers_ai && !s.vectorize && !s.fault_injection);
        assert_eq!(s.embedding_model, DEFAULT_EMBEDDING_MODEL);
        assert_eq!(s.chunking, ChunkConfig::default());
    }

    #[test]
    fn cloud_choices_and_errors() {
        let s = from(&[
            ("AI_PROVIDER", "workers-ai"),
            ("VECTOR_BACKEND", "vectorize"),
            ("CHUNK_MAX_CHARS", "500"),
        ])
        .unwrap();
        assert!(s.workers_ai && s.vectorize);
        assert_eq!(s.chunking.max_chars, 500);
        assert!(from(&[("AI_PROVIDER", "openai")]).is_err());
        assert!(from(&[("VECTOR_BACKEND", "pinecone")]).is_err());
    }

    #[test]
    fn fault_injection_needs_the_embedded_embedder() {
        assert!(
            from(&[("FAULT_INJECTION", "enabled")])
                .unwrap()
                .fault_injection
        );
        assert!(
            !from(&[
                ("FAULT_INJECTION", "enabled"),
                ("AI_PROVIDER", "workers-ai")
            ])
            .unwrap()
            .fault_injection
        );
        assert!(!from(&[("FAULT_INJECTION", "yes")]).unwrap().fault_injection);
    }
}
