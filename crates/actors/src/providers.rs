//! The deployment's configuration, in one place for every actor: the names of
//! the bindings and vars, which implementation of each port runs, and the
//! bounds.
//!
//! Vars: `AI_PROVIDER` (`embedded` | `workers-ai`), `VECTOR_BACKEND`
//! (`embedded` | `vectorize`), `EMBEDDING_MODEL`, `CHUNK_MAX_CHARS`,
//! `CHUNK_OVERLAP_CHARS`, the bounds (`INGEST_MAX_PENDING_JOBS`,
//! `INGEST_MAX_BACKLOG_BYTES`, `EMBEDDED_MAX_CHUNKS`, `INGEST_MAX_ATTEMPTS`),
//! `SEARCH_REPLICAS`, and `FAULT_INJECTION`
//! (tests only; honoured only with the embedded embedder, so no deployed
//! configuration can enable it).

use crate::chunking::ChunkConfig;
use crate::cloudflare::kv::WorkersKv;
use crate::cloudflare::vectorize::{DeployedIndex, VectorizeIndex};
use crate::cloudflare::workers_ai::{WorkersAiEmbedder, WorkersAiReranker};
use crate::embedded::{FaultBudget, FaultyEmbedder, HashedEmbedder, SqlVectorIndex};
use crate::ports::{Embedder, PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use crate::retrieval::MemIndex;
use protocol::coordinator::DEFAULT_EMBEDDING_MODEL;
use protocol::ingest::SearchMode;
use protocol::TenantId;
use std::cell::RefCell;
use std::rc::Rc;
use worker::Env;

/// Names of the bindings in every wrangler config.
pub mod bindings {
    /// Workers AI.
    pub const AI: &str = "AI";
    /// The Vectorize index.
    pub const VECTORS: &str = "VECTORS";
    /// The KV namespace (search cache, tenant config).
    pub const CACHE: &str = "CACHE";
}

/// Names of the vars this module reads.
pub mod vars {
    /// `embedded` | `workers-ai`.
    pub const AI_PROVIDER: &str = "AI_PROVIDER";
    /// `embedded` | `vectorize`.
    pub const VECTOR_BACKEND: &str = "VECTOR_BACKEND";
    /// The embedding model whose dimensions the deployment's index has
    /// (Workers AI); a tenant's own model must have the same.
    pub const EMBEDDING_MODEL: &str = "EMBEDDING_MODEL";
    /// Largest chunk, in characters.
    pub const CHUNK_MAX_CHARS: &str = "CHUNK_MAX_CHARS";
    /// Overlap of size-split chunks, in characters.
    pub const CHUNK_OVERLAP_CHARS: &str = "CHUNK_OVERLAP_CHARS";
    /// Unfinished ingest jobs a tenant may have.
    pub const INGEST_MAX_PENDING_JOBS: &str = "INGEST_MAX_PENDING_JOBS";
    /// Bytes of text a tenant's unfinished ingest jobs may hold.
    pub const INGEST_MAX_BACKLOG_BYTES: &str = "INGEST_MAX_BACKLOG_BYTES";
    /// Chunks the embedded index may hold per tenant.
    pub const EMBEDDED_MAX_CHUNKS: &str = "EMBEDDED_MAX_CHUNKS";
    /// Failed attempts after which an ingest job is given up.
    pub const INGEST_MAX_ATTEMPTS: &str = "INGEST_MAX_ATTEMPTS";
    /// `enabled`: honour injected failures (tests only).
    pub const FAULT_INJECTION: &str = "FAULT_INJECTION";
    /// A Workers AI reranking model (`@cf/baai/bge-reranker-base`) that
    /// reorders each search's best documents; unset: no reranking.
    pub const RERANK_MODEL: &str = "RERANK_MODEL";
    /// Search replicas per tenant (0 to 16): read copies of the index that
    /// answer its searches, so none runs in the object that writes it.
    pub const SEARCH_REPLICAS: &str = "SEARCH_REPLICAS";
}

/// Default of `SEARCH_REPLICAS`: two read copies, so no search runs in the
/// writer and a busy tenant's searches spread over two objects; each holds
/// its own copy of the index (with the embedded index, its vectors in
/// memory once it answers a vector search).
pub const DEFAULT_SEARCH_REPLICAS: u32 = 2;

/// Default of `INGEST_MAX_PENDING_JOBS`.
pub const DEFAULT_MAX_PENDING_JOBS: usize = 500;
/// Default of `INGEST_MAX_BACKLOG_BYTES`: 32 MiB of text (four full 8 MiB
/// requests), which the embedded providers index in well under a minute and
/// Workers AI in minutes, not hours.
pub const DEFAULT_MAX_BACKLOG_BYTES: u64 = 32 * 1024 * 1024;
/// Default of `EMBEDDED_MAX_CHUNKS`. The embedded index keeps one 768-dim
/// `f32` vector per chunk in memory, 3,072 bytes, plus about 40 bytes of
/// bookkeeping: 10,000 chunks are about 31 MB, a quarter of the isolate's
/// 128 MB, which leaves room for a request in flight (an 8 MiB body decoded
/// and chunked is a few times that), the JS heap and the code. (100,000
/// would be about 310 MB: far past the limit.)
pub const DEFAULT_EMBEDDED_MAX_CHUNKS: u64 = 10_000;

/// The bounds a deployment sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `INGEST_MAX_PENDING_JOBS`.
    pub max_pending_jobs: usize,
    /// `INGEST_MAX_BACKLOG_BYTES`.
    pub max_backlog_bytes: u64,
    /// `EMBEDDED_MAX_CHUNKS` (applies to the embedded index only).
    pub embedded_max_chunks: u64,
    /// `INGEST_MAX_ATTEMPTS`.
    pub max_attempts: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_pending_jobs: DEFAULT_MAX_PENDING_JOBS,
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
            embedded_max_chunks: DEFAULT_EMBEDDED_MAX_CHUNKS,
            max_attempts: crate::ingest::core::MAX_ATTEMPTS,
        }
    }
}

/// The deployment's choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Workers AI (`true`) or the embedded embedder.
    pub workers_ai: bool,
    /// Vectorize (`true`) or the embedded index.
    pub vectorize: bool,
    /// The embedding model whose dimensions the deployment's index has
    /// (Workers AI); each tenant embeds with its own model of those
    /// dimensions ([`crate::embedding_model`]).
    pub embedding_model: String,
    /// Chunk sizes.
    pub chunking: ChunkConfig,
    /// Whether injected failures are honoured.
    pub fault_injection: bool,
    /// The reranking model, if searches are reranked (Workers AI only).
    pub reranker: Option<String>,
    /// The bounds.
    pub bounds: Bounds,
    /// Search replicas per tenant (`SEARCH_REPLICAS`; 0: the writer
    /// answers searches itself).
    pub search_replicas: u32,
}

impl Settings {
    /// The ingest queue's bounds under these settings: the chunk bound only
    /// where the index is ours.
    pub fn queue_bounds(&self) -> crate::ingest::core::Bounds {
        crate::ingest::core::Bounds {
            max_pending_jobs: self.bounds.max_pending_jobs,
            max_backlog_bytes: self.bounds.max_backlog_bytes,
            max_chunks: (!self.vectorize).then_some(self.bounds.embedded_max_chunks),
            max_attempts: self.bounds.max_attempts,
        }
    }

    /// The embedding model's name, as reported to operators.
    pub fn embedder_name(&self) -> &str {
        if self.workers_ai {
            &self.embedding_model
        } else {
            crate::embedding::HASHED_MODEL
        }
    }
}

/// `SEARCH_REPLICAS` from its value, if set: a whole number from 0 to
/// [`protocol::replica::MAX_REPLICAS`], else [`DEFAULT_SEARCH_REPLICAS`].
/// Read alone where a caller needs only it (every search picks a replica).
pub fn search_replicas(value: Option<&str>) -> Result<u32, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_SEARCH_REPLICAS),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n <= protocol::replica::MAX_REPLICAS => Ok(n),
            _ => Err(format!(
                "{} is {v:?}; expected a whole number from 0 to {}",
                vars::SEARCH_REPLICAS,
                protocol::replica::MAX_REPLICAS
            )),
        },
    }
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
    let workers_ai = choice(vars::AI_PROVIDER, "embedded", "workers-ai")?;
    let vectorize = choice(vars::VECTOR_BACKEND, "embedded", "vectorize")?;
    let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    // A bound that is set must be a positive whole number: a typo must not
    // silently lift or zero it.
    let bound = |name: &str, default: u64| -> Result<u64, String> {
        match var(name).as_deref().map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => match v.replace('_', "").parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name} is {v:?}; expected a positive whole number")),
            },
        }
    };
    let reranker = match var(vars::RERANK_MODEL).as_deref().map(str::trim) {
        None | Some("") => None,
        Some(model) if workers_ai => Some(model.to_owned()),
        Some(model) => {
            return Err(format!(
                "{} is {model:?}, but a reranking model runs on Workers AI: set {}=workers-ai or unset it",
                vars::RERANK_MODEL,
                vars::AI_PROVIDER
            ))
        }
    };
    let search_replicas = search_replicas(var(vars::SEARCH_REPLICAS).as_deref())?;
    let d = Bounds::default();
    let bounds = Bounds {
        max_pending_jobs: usize::try_from(bound(
            vars::INGEST_MAX_PENDING_JOBS,
            d.max_pending_jobs as u64,
        )?)
        .unwrap_or(usize::MAX),
        max_backlog_bytes: bound(vars::INGEST_MAX_BACKLOG_BYTES, d.max_backlog_bytes)?,
        embedded_max_chunks: bound(vars::EMBEDDED_MAX_CHUNKS, d.embedded_max_chunks)?,
        max_attempts: u32::try_from(bound(vars::INGEST_MAX_ATTEMPTS, u64::from(d.max_attempts))?)
            .unwrap_or(u32::MAX),
    };
    Ok(Settings {
        workers_ai,
        vectorize,
        embedding_model: var(vars::EMBEDDING_MODEL)
            .unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.to_owned()),
        chunking: ChunkConfig::from_settings(
            number(vars::CHUNK_MAX_CHARS),
            number(vars::CHUNK_OVERLAP_CHARS),
        ),
        fault_injection: !workers_ai && var(vars::FAULT_INJECTION).as_deref() == Some("enabled"),
        reranker,
        bounds,
        search_replicas,
    })
}

/// The settings of a Worker's `env`.
pub fn from_env(env: &Env) -> Result<Settings, String> {
    settings(|name| env.var(name).ok().map(|v| v.to_string()))
}

/// How a tenant's embeddings are made on Workers AI: its model and the way
/// to it (its AI Gateway).
#[derive(Debug, Clone, Default)]
pub struct TenantAi {
    /// The tenant's embedding model ([`crate::embedding_model::model_in_use`]).
    pub embedding_model: String,
    /// Direct, or through the tenant's gateway.
    pub route: crate::cloudflare::ai_binding::Route,
}

/// The embedder in use.
pub enum AnyEmbedder<B> {
    /// `local/hashed-768`.
    Hashed(HashedEmbedder),
    /// `local/hashed-768` behind injected failures (`FAULT_INJECTION`).
    Faulty(FaultyEmbedder<HashedEmbedder, B>),
    /// Workers AI.
    WorkersAi(WorkersAiEmbedder),
}

impl<B: FaultBudget> AnyEmbedder<B> {
    /// The embedder the settings choose. `faults` is where armed failures
    /// are counted: with it, and with fault injection enabled, the embedder
    /// fails while failures are armed; without it (search, which the faults
    /// are not meant for) it never does. With Workers AI, `tenant` says
    /// which model and which way (the tenant's AI Gateway).
    pub fn new(
        env: &Env,
        settings: &Settings,
        faults: Option<B>,
        tenant: &TenantAi,
    ) -> Result<Self, PortError> {
        if settings.workers_ai {
            let ai = env.ai(bindings::AI).map_err(|e| PortError::Failed {
                service: "Workers AI",
                message: e.to_string(),
            })?;
            Ok(Self::WorkersAi(WorkersAiEmbedder::new(
                ai,
                tenant.embedding_model.clone(),
                crate::embedding_model::index_dimensions(settings),
                tenant.route.clone(),
            )))
        } else if let (true, Some(faults)) = (settings.fault_injection, faults) {
            Ok(Self::Faulty(FaultyEmbedder::new(HashedEmbedder, faults)))
        } else {
            Ok(Self::Hashed(HashedEmbedder))
        }
    }
}

impl<B: FaultBudget> Embedder for AnyEmbedder<B> {
    fn model(&self) -> &str {
        match self {
            Self::Hashed(e) => e.model(),
            Self::Faulty(e) => e.model(),
            Self::WorkersAi(e) => e.model(),
        }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError> {
        match self {
            Self::Hashed(e) => e.embed(texts).await,
            Self::Faulty(e) => e.embed(texts).await,
            Self::WorkersAi(e) => e.embed(texts).await,
        }
    }
}

/// The reranker the settings choose, if any: Workers AI's model reached by
/// the tenant's route (`tenant`).
pub fn reranker(
    env: &Env,
    settings: &Settings,
    tenant: &TenantAi,
) -> Result<Option<WorkersAiReranker>, PortError> {
    let Some(model) = &settings.reranker else {
        return Ok(None);
    };
    let ai = env.ai(bindings::AI).map_err(|e| PortError::Failed {
        service: "Workers AI",
        message: e.to_string(),
    })?;
    Ok(Some(WorkersAiReranker::new(
        ai,
        model.clone(),
        tenant.route.clone(),
    )))
}

/// The vector index in use.
pub enum AnyIndex {
    /// SQLite + FTS5 in the tenant's object.
    Sql(SqlVectorIndex),
    /// Vectorize, with the full text in the tenant's object.
    Vectorize(DeployedIndex),
}

impl AnyIndex {
    /// The index the settings choose, for `tenant`; `mem` is the object's
    /// in-memory copy of the embedded index's vectors, `chunks` its count of
    /// the index's chunks.
    pub fn new(
        env: &Env,
        settings: &Settings,
        tenant: &TenantId,
        sql: worker::SqlStorage,
        mem: Rc<RefCell<Option<MemIndex>>>,
        chunks: Rc<std::cell::Cell<Option<u64>>>,
    ) -> Result<Self, PortError> {
        if settings.vectorize {
            Ok(Self::Vectorize(DeployedIndex::new(
                VectorizeIndex::from_env(env, bindings::VECTORS, tenant.clone())?,
                SqlVectorIndex::text_only(sql, chunks),
            )))
        } else {
            Ok(Self::Sql(SqlVectorIndex::new(
                sql,
                mem,
                chunks,
                settings.bounds.embedded_max_chunks,
            )))
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

/// The KV namespace, if the deployment has one.
pub fn cache(env: &Env) -> Option<WorkersKv> {
    env.kv(bindings::CACHE).ok().map(WorkersKv::new)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        assert_eq!(s.bounds, Bounds::default());
        assert_eq!(
            s.queue_bounds().max_chunks,
            Some(DEFAULT_EMBEDDED_MAX_CHUNKS)
        );
        assert_eq!(s.embedder_name(), crate::embedding::HASHED_MODEL);
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
        assert_eq!(s.queue_bounds().max_chunks, None, "Vectorize has its own");
        assert!(from(&[("AI_PROVIDER", "openai")]).is_err());
        assert!(from(&[("VECTOR_BACKEND", "pinecone")]).is_err());
    }

    #[test]
    fn bounds_are_read_and_checked() {
        let s = from(&[
            ("EMBEDDED_MAX_CHUNKS", "20_000"),
            ("INGEST_MAX_PENDING_JOBS", " 7 "),
            ("INGEST_MAX_BACKLOG_BYTES", "1048576"),
        ])
        .unwrap();
        assert_eq!(
            s.bounds,
            Bounds {
                max_pending_jobs: 7,
                max_backlog_bytes: 1_048_576,
                embedded_max_chunks: 20_000,
                max_attempts: 10,
            }
        );
        for bad in ["0", "-1", "lots", "1e6"] {
            assert!(from(&[("EMBEDDED_MAX_CHUNKS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_replicas_default_to_two_and_are_checked() {
        assert_eq!(from(&[]).unwrap().search_replicas, DEFAULT_SEARCH_REPLICAS);
        assert_eq!(
            from(&[("SEARCH_REPLICAS", " 0 ")]).unwrap().search_replicas,
            0
        );
        assert_eq!(
            from(&[("SEARCH_REPLICAS", "16")]).unwrap().search_replicas,
            16
        );
        for bad in ["17", "-1", "two", "1.5"] {
            let e = from(&[("SEARCH_REPLICAS", bad)]).unwrap_err();
            assert!(e.contains("SEARCH_REPLICAS"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_reranker_needs_workers_ai() {
        assert_eq!(from(&[]).unwrap().reranker, None);
        let s = from(&[
            ("AI_PROVIDER", "workers-ai"),
            ("RERANK_MODEL", " @cf/baai/bge-reranker-base "),
        ])
        .unwrap();
        assert_eq!(s.reranker.as_deref(), Some("@cf/baai/bge-reranker-base"));
        let e = from(&[("RERANK_MODEL", "@cf/baai/bge-reranker-base")]).unwrap_err();
        assert!(
            e.contains("RERANK_MODEL") && e.contains("AI_PROVIDER=workers-ai"),
            "{e}"
        );
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
