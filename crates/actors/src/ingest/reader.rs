//! The read side of a tenant's index, shared by the two objects that answer
//! searches: the tenant's `IngestQueue` (when the deployment runs no search
//! replicas) and its `SearchReplica`s. Each holds a [`Reader`] over its own
//! SQLite copy of the index: the embedder and reranker calls, the relevance
//! floor, the caches and the usage charged for them are the same wherever a
//! search runs.

use super::faults::SqlFaults;
use super::requests;
use super::search::{choose_mode, needs_tenant_floor, ResultCache, SearchPlan, CACHE_TTL_SECS};
use crate::cloudflare::ai_binding::{GatewayMetadata, Route};
use crate::embedding_model;
use crate::limiter::recorder::{self, Used};
use crate::ports::{Clock, Embedder, Kv, PortError, Reranker, SystemClock, VectorIndex};
use crate::providers::{self, AnyEmbedder, AnyIndex, Settings, TenantAi};
use crate::retrieval::MemIndex;
use protocol::ingest::{Embed, Embeddings, IngestResponse, ScoreFloor, Search};
use protocol::limits::TokenUsage;
use protocol::{ErrorCode, ErrorReply, RequestId, TenantId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{Env, State};

/// Most texts in one embedder call (Workers AI takes 100).
pub const EMBED_BATCH: usize = 100;

/// One model call's usage: `texts` embedded (or reranked) by `model` for
/// `caller`.
fn used(caller: Option<String>, model: &str, texts: &[String]) -> Used {
    Used {
        caller: caller.unwrap_or_else(|| protocol::usage::OPERATOR.to_owned()),
        model: model.to_owned(),
        requests: 1,
        usage: TokenUsage {
            input_tokens: protocol::usage::embedding_tokens(texts),
            output_tokens: 0,
        },
        cost_micros: None,
    }
}

/// What a search runs over: the object, its copy of the index at
/// `version`, and whether that copy is still the one searched (`current`).
#[derive(Clone, Copy)]
pub struct SearchScope<'a> {
    /// The object (its `waitUntil`, for cache writes and charges).
    pub state: &'a State,
    /// Its copy of the index.
    pub index: &'a AnyIndex,
    /// The tenant searched.
    pub tenant: &'a TenantId,
    /// The deployment's settings.
    pub settings: &'a Settings,
    /// The copy's version (the cache key's).
    pub version: super::core::IndexVersion,
    /// Whether the copy is still the one searched.
    pub current: &'a dyn Fn() -> bool,
}

/// One object's read path over its copy of the index.
pub struct Reader {
    env: Env,
    /// The embedded index's vectors, loaded on first vector search.
    mem: Rc<RefCell<Option<MemIndex>>>,
    /// The index's chunk count, once counted (changed by every write,
    /// forgotten by one that fails or a copy).
    chunks: Rc<Cell<Option<u64>>>,
    /// Embedding usage not yet written to the ledger.
    usage: Rc<RefCell<recorder::UsageBuffer>>,
    /// Recent search answers.
    answers: RefCell<ResultCache>,
    /// Searches answered since the object woke.
    searches: Cell<u64>,
}

impl Reader {
    /// The read path of the object whose `env` this is.
    pub fn new(env: Env) -> Self {
        Self {
            env,
            mem: Rc::new(RefCell::new(None)),
            chunks: Rc::default(),
            usage: Rc::default(),
            answers: RefCell::default(),
            searches: Cell::new(0),
        }
    }

    /// Searches answered since the object woke.
    pub fn searches(&self) -> u64 {
        self.searches.get()
    }

    /// The index over `sql`, as the settings choose it.
    pub fn index(
        &self,
        sql: worker::SqlStorage,
        tenant: &TenantId,
        settings: &Settings,
    ) -> Result<AnyIndex, PortError> {
        AnyIndex::new(
            &self.env,
            settings,
            tenant,
            sql,
            self.mem.clone(),
            self.chunks.clone(),
        )
    }

    /// Where a replica writes what the writer sends: its own rows and full
    /// text, and with the embedded index the vectors (with Vectorize they
    /// are there already). Never refused for the chunk cap: the writer
    /// enforced it.
    pub fn follower_index(
        &self,
        sql: worker::SqlStorage,
        settings: &Settings,
    ) -> crate::embedded::SqlVectorIndex {
        crate::embedded::SqlVectorIndex::follower(
            sql,
            self.mem.clone(),
            self.chunks.clone(),
            settings.bounds.embedded_max_chunks,
            !settings.vectorize,
        )
    }

    /// Forgets what was derived from the index (the loaded vectors, the
    /// count, the answers): the shell replaced its tables.
    pub fn forget(&self) {
        *self.mem.borrow_mut() = None;
        self.chunks.set(None);
        *self.answers.borrow_mut() = ResultCache::default();
    }

    /// The tenant's embedding model and route to Workers AI; nothing to
    /// read in an embedded deployment. Settings that cannot be read are an
    /// error (the work is retried, the search fails): another model would
    /// write vectors that cannot be compared with the index's.
    pub async fn tenant_ai(
        &self,
        tenant: &TenantId,
        settings: &Settings,
    ) -> Result<TenantAi, PortError> {
        if !settings.workers_ai {
            return Ok(TenantAi::default());
        }
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let current = crate::coordinator::tenant_settings(&self.env, tenant, &request_id)
            .await
            .map_err(|e| PortError::Failed {
                service: "TenantCoordinator",
                message: format!("the tenant's embedding model could not be read: {e}"),
            })?;
        let model = embedding_model::model_in_use(settings, &current.default_models.embedding)
            .map_err(|e| PortError::Unsupported(e.to_string()))?;
        Ok(TenantAi {
            embedding_model: model,
            route: Route {
                gateway: current.ai_gateway,
                metadata: GatewayMetadata {
                    tenant_id: tenant.as_str().to_owned(),
                    key_id: None,
                    session_id: None,
                },
            },
        })
    }

    /// The tenant's `searchFloor`, if it set one, from its settings as
    /// every actor reads them (cached 1 s in the isolate).
    async fn tenant_floor(&self, tenant: &TenantId) -> Result<Option<ScoreFloor>, PortError> {
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        crate::coordinator::tenant_settings(&self.env, tenant, &request_id)
            .await
            .map(|settings| settings.search_floor)
            .map_err(|e| PortError::Failed {
                service: "TenantCoordinator",
                message: format!("the tenant's search floor could not be read: {e}"),
            })
    }

    /// Counts what embedding `texts` used. Usage is gathered in memory and
    /// written to the ledger at most once a second
    /// ([`recorder::FLUSH_AFTER_MS`]), beside the work: a search or an
    /// indexed document never waits for it, and the ledger takes one batch
    /// a second from a busy object, not one message per search.
    pub fn charge(
        &self,
        state: &State,
        tenant: &TenantId,
        caller: Option<String>,
        model: &str,
        texts: &[String],
    ) {
        self.charge_used(state, tenant, used(caller, model, texts));
    }

    fn charge_used(&self, state: &State, tenant: &TenantId, used: Used) {
        if !self.usage.borrow_mut().add(used) {
            return;
        }
        let (env, tenant, usage) = (self.env.clone(), tenant.clone(), Rc::clone(&self.usage));
        state.wait_until(async move {
            worker::Delay::from(std::time::Duration::from_millis(recorder::FLUSH_AFTER_MS)).await;
            let batch = usage.borrow_mut().take();
            if batch.is_empty() {
                return;
            }
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let prices = recorder::prices(&env, &tenant, &request_id).await;
            let now = SystemClock.now_ms();
            if let Err(e) =
                recorder::record(&env, &tenant, &request_id, now, &batch, &prices, Vec::new()).await
            {
                worker::console_warn!("embedding usage not recorded: {e}");
            }
        });
    }

    /// Answers `search` over `scope` (this object's copy of the index).
    /// The answer is cached only if `scope.current()` still holds once it
    /// is computed (a replica's copy may have been replaced meanwhile).
    ///
    /// What the search used (its query's embedding, the reranker) is charged
    /// once it is known whether the outcome is given, that is if `current()`
    /// still holds: a replica throws away what it computed over a copy that
    /// changed under it and the writer searches again, charging that search
    /// itself (nothing, should the writer answer from a cache: the caller is
    /// charged for one search, at most).
    pub async fn search(
        &self,
        scope: &SearchScope<'_>,
        search: Search,
    ) -> Result<IngestResponse, ErrorReply> {
        let used = RefCell::new(Vec::new());
        let answer = self.answer(scope, search, &used).await;
        if (scope.current)() {
            for used in used.into_inner() {
                self.charge_used(scope.state, scope.tenant, used);
            }
        }
        answer
    }

    async fn answer(
        &self,
        scope: &SearchScope<'_>,
        search: Search,
        charges: &RefCell<Vec<Used>>,
    ) -> Result<IngestResponse, ErrorReply> {
        let SearchScope {
            state,
            index,
            tenant,
            settings,
            version,
            current,
        } = *scope;
        search.validate().map_err(requests::invalid)?;
        self.searches.set(self.searches.get() + 1);
        let mode = choose_mode(search.mode, |m| index.supports(m), index.backend())?;
        let tenant_floor = if needs_tenant_floor(&search) {
            self.tenant_floor(tenant).await?
        } else {
            None
        };
        let plan = SearchPlan::new(tenant, &search, mode, version, tenant_floor)
            .reranked_by(settings.reranker.as_deref());
        if let Some(results) = self.answers.borrow_mut().get(&plan) {
            return Ok(IngestResponse::Results(results));
        }
        let cache = providers::cache(&self.env)
            .filter(|_| plan.uses_kv(settings.workers_ai, settings.vectorize));
        if let Some(cache) = &cache {
            if let Some(hit) = cache.get(&plan.key).await.ok().flatten() {
                if let Some(results) = plan.cached(&hit) {
                    self.answers.borrow_mut().put(&plan, &results);
                    return Ok(IngestResponse::Results(results));
                }
            }
        }
        let vector = if plan.embeds() {
            // Injected failures are for indexing: a search never takes one.
            let ai = self.tenant_ai(tenant, settings).await?;
            let embedder = AnyEmbedder::new(&self.env, settings, None::<SqlFaults>, &ai)?;
            let query = std::slice::from_ref(&search.query);
            let vector = embedder.embed(query).await?.into_iter().next();
            charges
                .borrow_mut()
                .push(used(search.caller.clone(), embedder.model(), query));
            vector
        } else {
            None
        };
        let hits = index.query(plan.query(&search, vector.as_deref())).await?;
        let shortlist = plan.shortlist(hits);
        let (scores, complete) = self
            .rerank(tenant, settings, &search, &shortlist, charges)
            .await;
        let results = plan.finish(shortlist, scores);
        let now = SystemClock.now_ms();
        if !(complete && plan.cacheable(settings.vectorize, now) && current()) {
            return Ok(IngestResponse::Results(results));
        }
        self.answers.borrow_mut().put(&plan, &results);
        let value = cache
            .as_ref()
            .and_then(|_| plan.cache_value(&results, settings.vectorize, now));
        if let (Some(cache), Some(value)) = (cache, value) {
            // The answer does not wait for the cache write.
            let key = plan.key;
            state.wait_until(async move {
                if let Err(e) = cache.put(&key, &value, CACHE_TTL_SECS).await {
                    worker::console_warn!("search cache write failed: {e}");
                }
            });
        }
        Ok(IngestResponse::Results(results))
    }

    /// The reranker's scores for `shortlist`, where the deployment reranks
    /// and there is an order to choose, charged to the caller; and whether
    /// the answer is complete. A reranker that fails leaves retrieval's
    /// order (the search still answers) in an answer that is not cached.
    async fn rerank(
        &self,
        tenant: &TenantId,
        settings: &Settings,
        search: &Search,
        shortlist: &[crate::ports::VectorHit],
        charges: &RefCell<Vec<Used>>,
    ) -> (Option<Vec<f64>>, bool) {
        if settings.reranker.is_none() || shortlist.len() < 2 {
            return (None, true);
        }
        let texts = SearchPlan::rerank_texts(shortlist);
        let scored = match self.tenant_ai(tenant, settings).await {
            Ok(ai) => match providers::reranker(&self.env, settings, &ai) {
                Ok(Some(reranker)) => reranker
                    .rerank(&search.query, &texts)
                    .await
                    .map(|scores| (scores, reranker.model().to_owned())),
                Ok(None) => return (None, true),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match scored {
            Ok((scores, model)) => {
                let mut charged = texts;
                charged.push(search.query.clone());
                charges
                    .borrow_mut()
                    .push(used(search.caller.clone(), &model, &charged));
                (Some(scores), true)
            }
            Err(e) => {
                worker::console_warn!("search: the reranker failed, retrieval's order kept: {e}");
                (None, false)
            }
        }
    }

    /// Embeds texts with the tenant's model, in calls of at most
    /// [`EMBED_BATCH`] texts, and charges them to the caller.
    pub async fn embed(
        &self,
        state: &State,
        tenant: &TenantId,
        settings: &Settings,
        embed: Embed,
    ) -> Result<IngestResponse, ErrorReply> {
        embed
            .validate()
            .map_err(|m| ErrorReply::new(ErrorCode::InvalidRequest, m))?;
        let ai = self.tenant_ai(tenant, settings).await?;
        let embedder = AnyEmbedder::new(&self.env, settings, None::<SqlFaults>, &ai)?;
        let mut vectors = Vec::with_capacity(embed.texts.len());
        for batch in embed.texts.chunks(EMBED_BATCH) {
            let got = embedder.embed(batch).await?;
            if got.len() != batch.len() {
                return Err(ErrorReply::new(
                    ErrorCode::BadUpstream,
                    format!("{} vectors for {} texts", got.len(), batch.len()),
                ));
            }
            vectors.extend(got);
        }
        self.charge(
            state,
            tenant,
            embed.caller.clone(),
            embedder.model(),
            &embed.texts,
        );
        Ok(IngestResponse::Embeddings(Embeddings {
            model: embedder.model().to_owned(),
            vectors,
            tokens: protocol::usage::embedding_tokens(&embed.texts),
        }))
    }
}
