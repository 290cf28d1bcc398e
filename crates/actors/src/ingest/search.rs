//! Search policy: which mode a search runs in, which relevance floor it
//! applies, what its cache key covers, how index hits become the answer, and
//! when an answer may be cached.
//!
//! Pure: the shell embeds the query, asks the index and the KV cache; this
//! module decides everything around those calls.

use super::core::IndexVersion;
use super::keys::search_cache_key;
use crate::ports::{VectorHit, VectorQuery};
use crate::retrieval::{one_per_document, PER_DOCUMENT_DEPTH};
use protocol::ingest::{ScoreFloor, Search, SearchGroup, SearchMatch, SearchMode, SearchResults};
use protocol::{ErrorCode, ErrorReply, TenantId};

/// How long after an index change a Vectorize search is not cached (its
/// writes become visible to queries only after a few seconds).
pub const VECTORIZE_SETTLE_MS: u64 = 10_000;
/// How long a search stays in the KV cache.
pub const CACHE_TTL_SECS: u64 = 300;

/// The mode a search runs in: the one asked for, or the backend's best
/// (hybrid where it can, else vector). A mode the backend cannot do is
/// refused, naming the backend.
pub fn choose_mode(
    requested: Option<SearchMode>,
    supports: impl Fn(SearchMode) -> bool,
    backend: &str,
) -> Result<SearchMode, ErrorReply> {
    let mode = requested.unwrap_or(if supports(SearchMode::Hybrid) {
        SearchMode::Hybrid
    } else {
        SearchMode::Vector
    });
    if !supports(mode) {
        return Err(ErrorReply::new(
            ErrorCode::InvalidRequest,
            format!(
                "mode {:?} is not supported by the {backend} backend",
                mode.as_str()
            ),
        ));
    }
    Ok(mode)
}

/// The floor a search applies: its own `minScore`, else the tenant's
/// `searchFloor` (`tenant_floor`, asked only when needed: it may cost a read
/// of the tenant's settings).
pub fn needs_tenant_floor(search: &Search) -> bool {
    search.min_score.is_none()
}

/// One search, planned before its awaits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPlan {
    /// The mode it runs in.
    pub mode: SearchMode,
    /// The index version it reflects.
    pub version: IndexVersion,
    /// The relevance floor: matches scoring below it are dropped.
    pub floor: ScoreFloor,
    /// How many matches the answer holds at most (`topK`).
    pub top_k: usize,
    /// Per document or per chunk.
    pub group: SearchGroup,
    /// Its KV key: the tenant, the normalised query, `topK`, the filter, the
    /// grouping, the mode, the floor, the index version and the reranker.
    pub key: String,
    /// The reranking model that reorders the best documents, if any.
    pub reranker: Option<String>,
    /// The question's writing system: passages in another one yield to
    /// close ones in its own ([`crate::writing::adjust`]).
    pub script: Option<crate::writing::Script>,
}

/// How many of a search's best documents (or chunks) a reranker scores, at
/// least: it can only lift what retrieval found.
pub const RERANK_CANDIDATES: usize = 20;

impl SearchPlan {
    /// Plans `search` for `tenant` in `mode` ([`choose_mode`]) against an
    /// index at `version`, with the search's own `minScore`, else
    /// `tenant_floor` (the tenant's `searchFloor`, if it set one), else the
    /// mode's default ([`ScoreFloor::default_for`]).
    pub fn new(
        tenant: &TenantId,
        search: &Search,
        mode: SearchMode,
        version: IndexVersion,
        tenant_floor: Option<ScoreFloor>,
    ) -> Self {
        let floor = search
            .min_score
            .or(tenant_floor)
            .unwrap_or(ScoreFloor::default_for(mode));
        let key = search_cache_key(tenant, search, mode, floor, version.version);
        Self {
            mode,
            version,
            floor,
            top_k: search.top_k as usize,
            group: search.group,
            key,
            reranker: None,
            script: crate::writing::question_script_of(&search.query),
        }
    }

    /// The same plan, its best candidates reordered by `model` (a reranker)
    /// when there is one; the model is part of the cache key.
    pub fn reranked_by(mut self, model: Option<&str>) -> Self {
        if let Some(model) = model {
            self.key = format!("{}:rerank:{model}", self.key);
            self.reranker = Some(model.to_owned());
        }
        self
    }

    /// How many documents (or chunks) the answer is chosen from: `topK`, or
    /// with a reranker at least [`RERANK_CANDIDATES`].
    fn candidates(&self) -> usize {
        if self.reranker.is_some() {
            self.top_k.max(RERANK_CANDIDATES)
        } else {
            self.top_k
        }
    }

    /// Whether the query must be embedded (every mode but keyword).
    pub fn embeds(&self) -> bool {
        self.mode != SearchMode::Keyword
    }

    /// Whether its answers go through the KV cache: where the search calls a
    /// remote service (Workers AI to embed the query or to rerank,
    /// Vectorize for the vector leg), a KV read is cheaper than the search.
    /// A search the object answers alone (the embedded index, or a keyword
    /// search beside Vectorize) takes less time than a KV read, so only the
    /// object's own [`ResultCache`] holds its answers.
    pub fn uses_kv(&self, workers_ai: bool, vectorize: bool) -> bool {
        self.reranker.is_some() || (self.embeds() && (workers_ai || vectorize))
    }

    /// A cached answer, from the KV value under [`SearchPlan::key`]; a value
    /// that does not decode is a miss.
    pub fn cached(&self, value: &str) -> Option<SearchResults> {
        let mut results = serde_json::from_str::<SearchResults>(value).ok()?;
        results.cached = true;
        Some(results)
    }

    /// The index query for `search`, with the query's embedding if any:
    /// grouped by document, [`PER_DOCUMENT_DEPTH`] times deeper than
    /// `topK`, so that `topK` different documents are likely among the hits.
    pub fn query<'a>(&self, search: &'a Search, vector: Option<&'a [f32]>) -> VectorQuery<'a> {
        let top_k = match self.group {
            SearchGroup::Document => self.candidates().saturating_mul(PER_DOCUMENT_DEPTH),
            SearchGroup::Chunk => self.candidates(),
        };
        VectorQuery {
            vector,
            text: &search.query,
            top_k,
            filter: &search.filter,
            mode: self.mode,
        }
    }

    /// The answer from the index's hits (chunks, ranked best first by
    /// their score), without a reranker: [`SearchPlan::shortlist`], then
    /// [`SearchPlan::finish`].
    pub fn results(&self, hits: Vec<VectorHit>) -> SearchResults {
        self.finish(self.shortlist(hits), None)
    }

    /// The candidates of the answer, from the index's hits (chunks, ranked
    /// best first by their score, then a passage in another writing system
    /// than the question's scored lower: [`crate::writing::adjust`]):
    /// grouped by document, the best chunk of
    /// each of the first documents, each match named by its document;
    /// grouped by chunk, the first chunks (`topK` of either, or with a
    /// reranker at least [`RERANK_CANDIDATES`]). Then those the floor keeps,
    /// in that order: ranking comes first, so a floor only ever shortens the
    /// answer, never reorders it.
    pub fn shortlist(&self, hits: Vec<VectorHit>) -> Vec<VectorHit> {
        let n = self.candidates();
        let hits = crate::writing::adjust(self.script, hits, |score| self.floor.keeps(score));
        let hits = match self.group {
            SearchGroup::Document => one_per_document(hits, n),
            SearchGroup::Chunk => hits.into_iter().take(n).collect(),
        };
        hits.into_iter()
            .filter(|h| self.floor.keeps(h.score))
            .collect()
    }

    /// The texts a reranker scores for `shortlist`, in its order.
    pub fn rerank_texts(shortlist: &[VectorHit]) -> Vec<String> {
        shortlist
            .iter()
            .map(|h| match h.metadata.get("text") {
                Some(protocol::ingest::MetaValue::Str(t)) => t.clone(),
                _ => String::new(),
            })
            .collect()
    }

    /// The answer: the first `topK` of `shortlist`, in its order, or with
    /// `rerank` (one score per candidate, from the reranker) in the
    /// reranker's order (ties keep retrieval's order), each match carrying
    /// its `rerankScore`. A reranker's answer of the wrong length is not
    /// used.
    pub fn finish(&self, shortlist: Vec<VectorHit>, rerank: Option<Vec<f64>>) -> SearchResults {
        let mut scored: Vec<(VectorHit, Option<f64>)> = match rerank {
            Some(scores) if scores.len() == shortlist.len() => shortlist
                .into_iter()
                .zip(scores.into_iter().map(Some))
                .collect(),
            _ => shortlist.into_iter().map(|h| (h, None)).collect(),
        };
        // Stable: equal rerank scores (and no reranker) keep retrieval's order.
        scored.sort_by(|a, b| match (a.1, b.1) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            _ => std::cmp::Ordering::Equal,
        });
        scored.truncate(self.top_k);
        SearchResults {
            cached: false,
            mode: self.mode,
            index_version: self.version.version,
            min_score: self.floor.get(),
            matches: scored
                .into_iter()
                .map(|(h, rerank_score)| SearchMatch {
                    vector_score: h.vector_score,
                    keyword_score: h.keyword_score,
                    rerank_score,
                    ..SearchMatch::new(h.id, h.score, h.metadata, self.group)
                })
                .collect(),
        }
    }

    /// Whether an answer computed at `now_ms` may be cached. Vectorize
    /// (`vectorize`) shows new writes to queries only after a few seconds:
    /// an answer computed within [`VECTORIZE_SETTLE_MS`] of the index's last
    /// change may not reflect it yet, so it is not cached.
    pub fn cacheable(&self, vectorize: bool, now_ms: u64) -> bool {
        !vectorize || now_ms.saturating_sub(self.version.changed_at_ms) > VECTORIZE_SETTLE_MS
    }

    /// What to write to the cache for `results` at `now_ms`, if anything
    /// ([`SearchPlan::cacheable`]).
    pub fn cache_value(
        &self,
        results: &SearchResults,
        vectorize: bool,
        now_ms: u64,
    ) -> Option<String> {
        if !self.cacheable(vectorize, now_ms) {
            return None;
        }
        serde_json::to_string(results).ok()
    }
}

/// Most answers the object keeps in memory.
pub const RESULT_CACHE_ENTRIES: usize = 256;
/// Most bytes of answers (as JSON) the object keeps in memory.
pub const RESULT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The tenant's recent answers, in the object's memory (the first level of
/// the cache, before KV): keyed by [`SearchPlan::key`], which names the
/// index version, so an answer is never older than the content. Bounded in
/// answers and in bytes (each answer counted by its JSON's length): the
/// least recently used answer goes first, and answers of an older index
/// version go as soon as one of a newer version is kept.
#[derive(Debug)]
pub struct ResultCache {
    entries: std::collections::HashMap<String, (u64, usize, SearchResults)>,
    version: u64,
    tick: u64,
    cap: usize,
    bytes: usize,
    max_bytes: usize,
}

impl Default for ResultCache {
    fn default() -> Self {
        Self::new(RESULT_CACHE_ENTRIES, RESULT_CACHE_BYTES)
    }
}

impl ResultCache {
    /// A cache of at most `cap` answers and `max_bytes` bytes of them.
    pub fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            entries: std::collections::HashMap::new(),
            version: 0,
            tick: 0,
            cap,
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes of answers held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many answers it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer of `plan`, if kept, marked `cached`.
    pub fn get(&mut self, plan: &SearchPlan) -> Option<SearchResults> {
        self.tick += 1;
        let tick = self.tick;
        let (used, _, results) = self.entries.get_mut(&plan.key)?;
        *used = tick;
        let mut results = results.clone();
        results.cached = true;
        Some(results)
    }

    /// Keeps `results`, the answer of `plan`.
    pub fn put(&mut self, plan: &SearchPlan, results: &SearchResults) {
        let size = serde_json::to_string(results).map_or(usize::MAX, |j| j.len());
        if self.cap == 0 || size > self.max_bytes || plan.version.version < self.version {
            return;
        }
        if plan.version.version > self.version {
            self.entries.clear();
            self.bytes = 0;
            self.version = plan.version.version;
        }
        if let Some((_, old, _)) = self.entries.remove(&plan.key) {
            self.bytes -= old;
        }
        while self.entries.len() >= self.cap || self.bytes + size > self.max_bytes {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _, _))| *used)
                .map(|(key, _)| key.clone());
            match oldest.and_then(|key| self.entries.remove(&key)) {
                Some((_, old, _)) => self.bytes -= old,
                None => break,
            }
        }
        self.tick += 1;
        self.bytes += size;
        self.entries
            .insert(plan.key.clone(), (self.tick, size, results.clone()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::ingest::{MetaValue, Metadata};

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn search(mode: Option<SearchMode>) -> Search {
        Search {
            caller: None,
            query: "Where is state kept?".into(),
            top_k: 3,
            filter: Metadata::from([("source".to_owned(), MetaValue::Str("a.md".into()))]),
            mode,
            min_score: None,
            group: SearchGroup::Document,
        }
    }

    const VERSION: IndexVersion = IndexVersion {
        version: 7,
        changed_at_ms: 100_000,
    };

    /// Plans `search` as the shell does: the mode, then the plan.
    fn plan_for(
        search: &Search,
        version: IndexVersion,
        supports: fn(SearchMode) -> bool,
        backend: &str,
    ) -> Result<SearchPlan, ErrorReply> {
        let mode = choose_mode(search.mode, supports, backend)?;
        Ok(SearchPlan::new(&tenant(), search, mode, version, None))
    }

    fn everything(_: SearchMode) -> bool {
        true
    }

    fn vector_only(mode: SearchMode) -> bool {
        mode == SearchMode::Vector
    }

    #[test]
    fn the_default_mode_is_the_backends_best() {
        assert_eq!(
            choose_mode(None, everything, "embedded-sqlite"),
            Ok(SearchMode::Hybrid)
        );
        assert_eq!(
            choose_mode(None, vector_only, "vectorize"),
            Ok(SearchMode::Vector)
        );
        assert_eq!(
            choose_mode(Some(SearchMode::Keyword), everything, "embedded-sqlite"),
            Ok(SearchMode::Keyword)
        );
    }

    #[test]
    fn a_mode_the_backend_cannot_do_is_refused_by_name() {
        for mode in [SearchMode::Keyword, SearchMode::Hybrid] {
            let e = choose_mode(Some(mode), vector_only, "vectorize").unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert_eq!(
                e.message,
                format!(
                    "mode \"{}\" is not supported by the vectorize backend",
                    mode.as_str()
                )
            );
        }
        let e = plan_for(
            &search(Some(SearchMode::Hybrid)),
            VERSION,
            vector_only,
            "vectorize",
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn the_key_covers_the_chosen_mode_and_the_version() {
        let s = search(None);
        let plan = plan_for(&s, VERSION, everything, "embedded-sqlite").unwrap();
        assert_eq!(plan.mode, SearchMode::Hybrid);
        assert_eq!(
            plan.key,
            search_cache_key(&tenant(), &s, SearchMode::Hybrid, ScoreFloor::DEFAULT, 7)
        );
        let by_chunk = Search {
            group: SearchGroup::Chunk,
            ..s.clone()
        };
        let chunks = plan_for(&by_chunk, VERSION, everything, "embedded-sqlite").unwrap();
        assert_ne!(chunks.key, plan.key, "another grouping, another answer");
        let explicit = plan_for(
            &search(Some(SearchMode::Hybrid)),
            VERSION,
            everything,
            "embedded-sqlite",
        )
        .unwrap();
        assert_eq!(
            explicit.key, plan.key,
            "the default and its name share a key"
        );
        let newer = IndexVersion {
            version: 8,
            ..VERSION
        };
        let later = plan_for(&s, newer, everything, "embedded-sqlite").unwrap();
        assert_ne!(later.key, plan.key);
        let vector = plan_for(&s, VERSION, vector_only, "vectorize").unwrap();
        assert_ne!(vector.key, plan.key);
    }

    #[test]
    fn only_keyword_search_skips_the_embedding() {
        let plan = |mode| plan_for(&search(Some(mode)), VERSION, everything, "x").unwrap();
        assert!(!plan(SearchMode::Keyword).embeds());
        assert!(plan(SearchMode::Vector).embeds());
        assert!(plan(SearchMode::Hybrid).embeds());
    }

    #[test]
    fn hits_become_matches_and_round_trip_through_the_cache() {
        let s = search(None);
        let plan = plan_for(&s, VERSION, everything, "x").unwrap();
        let v = [0.5f32, 0.5];
        let q = plan.query(&s, Some(&v));
        assert_eq!(
            (q.text, q.top_k, q.mode, q.vector),
            (s.query.as_str(), 9, SearchMode::Hybrid, Some(&v[..])),
            "grouped by document: three times deeper than topK"
        );
        assert_eq!(q.filter, &s.filter);
        let hits = vec![
            VectorHit {
                id: "v1".into(),
                score: 0.9,
                vector_score: Some(0.8),
                keyword_score: Some(1.0),
                metadata: Metadata::from([("docId".to_owned(), MetaValue::Str("a".into()))]),
            },
            VectorHit {
                id: "v2".into(),
                score: 0.4,
                vector_score: Some(0.8),
                keyword_score: None,
                metadata: Metadata::new(),
            },
        ];
        let results = plan.results(hits);
        assert!(!results.cached);
        assert_eq!(
            (results.mode, results.index_version),
            (SearchMode::Hybrid, 7)
        );
        let ids: Vec<_> = results.matches.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "v2"],
            "best first, as the index said; named by their document (a chunk without one by itself)"
        );
        assert_eq!(results.matches[0].chunk_id, "v1");
        assert_eq!(results.matches[0].score, 0.9);
        assert_eq!(
            (
                results.matches[0].vector_score,
                results.matches[0].keyword_score
            ),
            (Some(0.8), Some(1.0)),
            "the legs go through"
        );
        assert_eq!(results.min_score, ScoreFloor::DEFAULT.get());
        assert_eq!(
            results.matches[0].metadata["docId"],
            MetaValue::Str("a".into())
        );
        let value = plan.cache_value(&results, false, 0).unwrap();
        let hit = plan.cached(&value).unwrap();
        assert!(hit.cached);
        assert_eq!(hit.matches, results.matches);
        assert_eq!(plan.cached("not json"), None, "a bad value is a miss");
    }

    fn chunk_of(id: &str, doc: &str, chunk: i64, score: f64) -> VectorHit {
        VectorHit {
            id: id.into(),
            score,
            vector_score: None,
            keyword_score: None,
            metadata: Metadata::from([
                ("docId".to_owned(), MetaValue::Str(doc.into())),
                ("chunk".to_owned(), MetaValue::Int(chunk)),
                ("text".to_owned(), MetaValue::Str(format!("{doc} #{chunk}"))),
            ]),
        }
    }

    #[test]
    fn a_translation_yields_to_a_close_passage_in_the_questions_writing_system() {
        let with_text = |id: &str, doc: &str, score: f64, text: &str| {
            let mut h = chunk_of(id, doc, 0, score);
            h.metadata
                .insert("text".to_owned(), MetaValue::Str(text.to_owned()));
            h
        };
        let hits = || {
            vec![
                with_text("ja0", "ja-cfg", 0.62, "環境に応じたコンパイルをするには2種類の方法があります。#[cfg(...)]"),
                with_text("en0", "en-cfg", 0.58, "Configuration conditional checks are possible through two different operators: #[cfg(...)]"),
                with_text("ja1", "ja-attr", 0.57, "アトリビュートはモジュール、クレート、要素に対するメタデータです。"),
                with_text("en1", "en-attr", 0.2, "An attribute is metadata applied to some module, crate or item."),
            ]
        };
        let mut s = search(None);
        s.min_score = Some(ScoreFloor::new(0.4).unwrap());
        s.query = "how do I compile code only on linux?".into();
        let plan = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        let r = plan.results(hits());
        let ids: Vec<_> = r.matches.iter().map(|m| m.id.as_str()).collect();
        // The Japanese passages score 0.8 of their relevance (0.496, 0.456):
        // behind the English one, and still above the floor.
        assert_eq!(ids, ["en-cfg", "ja-cfg", "ja-attr"]);
        assert!((r.matches[1].score - 0.62 * crate::writing::OTHER_SCRIPT_FACTOR).abs() < 1e-9);

        s.query = "linux でだけコンパイルするには?".into();
        let plan = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        let ids: Vec<_> = plan
            .results(hits())
            .matches
            .iter()
            .map(|m| m.id.clone())
            .collect();
        assert_eq!(ids, ["ja-cfg", "ja-attr", "en-cfg"], "asked in Japanese");
    }

    #[test]
    fn matches_are_documents_by_default_and_chunks_on_request() {
        let hits = || {
            vec![
                chunk_of("a3", "doc-a", 3, 0.9),
                chunk_of("a0", "doc-a", 0, 0.8),
                chunk_of("b1", "doc-b", 1, 0.7),
                chunk_of("a1", "doc-a", 1, 0.6),
                chunk_of("c0", "doc-c", 0, 0.5),
                chunk_of("d0", "doc-d", 0, 0.4),
            ]
        };
        let mut s = search(None);
        s.min_score = Some(ScoreFloor::NONE);
        let plan = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        let r = plan.results(hits());
        let view: Vec<_> = r
            .matches
            .iter()
            .map(|m| (m.id.as_str(), m.chunk_id.as_str(), m.chunk, m.text.as_str()))
            .collect();
        assert_eq!(
            view,
            [
                ("doc-a", "a3", 3, "doc-a #3"),
                ("doc-b", "b1", 1, "doc-b #1"),
                ("doc-c", "c0", 0, "doc-c #0"),
            ],
            "topK documents, each with its best chunk"
        );
        assert!(r.matches.iter().all(|m| m.doc_id == m.id));

        s.group = SearchGroup::Chunk;
        let plan = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        assert_eq!(plan.query(&s, None).top_k, 3, "raw chunks: no deeper ask");
        let r = plan.results(hits());
        let view: Vec<_> = r
            .matches
            .iter()
            .map(|m| (m.id.as_str(), m.doc_id.as_str(), m.chunk))
            .collect();
        assert_eq!(
            view,
            [("a3", "doc-a", 3), ("a0", "doc-a", 0), ("b1", "doc-b", 1)],
            "topK chunks, named by their vector ids, several of one document"
        );
        assert!(r.matches.iter().all(|m| m.chunk_id == m.id));

        // The floor applies after grouping: a document whose best chunk is
        // below it is gone, and so are its weaker chunks.
        s.group = SearchGroup::Document;
        s.min_score = Some(ScoreFloor::new(0.75).unwrap());
        let plan = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        let ids: Vec<_> = plan
            .results(hits())
            .matches
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["doc-a"]);
    }

    #[test]
    fn vectorize_answers_are_cached_only_once_the_index_has_settled() {
        let plan = plan_for(&search(None), VERSION, vector_only, "v").unwrap();
        let results = plan.results(Vec::new());
        let changed = VERSION.changed_at_ms;
        assert_eq!(plan.cache_value(&results, true, changed), None);
        assert_eq!(
            plan.cache_value(&results, true, changed + VECTORIZE_SETTLE_MS),
            None
        );
        assert!(plan
            .cache_value(&results, true, changed + VECTORIZE_SETTLE_MS + 1)
            .is_some());
        // The embedded index reads its own writes: always cached.
        assert!(plan.cache_value(&results, false, changed).is_some());
        // A clock behind the change is not settled either.
        assert_eq!(plan.cache_value(&results, true, 0), None);
    }

    fn hit(id: &str, score: f64) -> VectorHit {
        VectorHit {
            id: id.into(),
            score,
            vector_score: None,
            keyword_score: None,
            metadata: Metadata::new(),
        }
    }

    #[test]
    fn the_floor_is_the_requests_else_the_tenants_and_drops_what_scores_below() {
        let floor = |v| ScoreFloor::new(v).unwrap();
        let tenant_floor = floor(0.3);
        let mut s = search(None);
        s.top_k = 4;
        assert!(needs_tenant_floor(&s));
        let by_tenant = SearchPlan::new(
            &tenant(),
            &s,
            SearchMode::Hybrid,
            VERSION,
            Some(tenant_floor),
        );
        assert_eq!(by_tenant.floor, tenant_floor);
        let hits = || vec![hit("a", 0.8), hit("b", 0.3), hit("c", 0.29), hit("d", 0.0)];
        let ids = |r: &SearchResults| r.matches.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let r = by_tenant.results(hits());
        assert_eq!(
            ids(&r),
            ["a", "b"],
            "kept in rank order, the floor included"
        );
        assert_eq!(r.min_score, 0.3);

        s.min_score = Some(floor(0.0));
        assert!(!needs_tenant_floor(&s));
        let everything = SearchPlan::new(
            &tenant(),
            &s,
            SearchMode::Hybrid,
            VERSION,
            Some(tenant_floor),
        );
        assert_eq!(everything.floor, floor(0.0), "the request's own wins");
        assert_eq!(ids(&everything.results(hits())), ["a", "b", "c", "d"]);
        assert_ne!(
            everything.key, by_tenant.key,
            "another floor, another answer"
        );

        s.min_score = Some(floor(1.0));
        let strict = SearchPlan::new(
            &tenant(),
            &s,
            SearchMode::Hybrid,
            VERSION,
            Some(tenant_floor),
        );
        let r = strict.results(hits());
        assert!(
            r.matches.is_empty(),
            "nothing relevant enough: an empty answer"
        );
        assert_ne!(strict.key, everything.key);
        // The same floor, asked for or inherited, is the same answer.
        s.min_score = Some(tenant_floor);
        let same = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, Some(floor(0.9)));
        assert_eq!(same.key, by_tenant.key);
    }

    #[test]
    fn a_reranker_reorders_the_documents_retrieval_found_and_the_floor_kept() {
        let mut s = search(None);
        s.top_k = 2;
        s.min_score = Some(ScoreFloor::new(0.45).unwrap());
        let plain = SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, VERSION, None);
        let plan = plain
            .clone()
            .reranked_by(Some("@cf/baai/bge-reranker-base"));
        assert_ne!(plan.key, plain.key, "the reranker is part of the cache key");
        assert_eq!(plain.clone().reranked_by(None), plain);
        // Without a reranker, 3 chunks a document; with one, at least 20
        // documents' worth.
        assert_eq!(plain.query(&s, None).top_k, 6);
        assert_eq!(
            plan.query(&s, None).top_k,
            RERANK_CANDIDATES * PER_DOCUMENT_DEPTH
        );

        let hits = vec![
            chunk_of("a3", "doc-a", 3, 0.9),
            chunk_of("a0", "doc-a", 0, 0.8),
            chunk_of("b1", "doc-b", 1, 0.7),
            chunk_of("c0", "doc-c", 0, 0.5),
            chunk_of("d0", "doc-d", 0, 0.4),
        ];
        let shortlist = plan.shortlist(hits.clone());
        let ids: Vec<&str> = shortlist.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["a3", "b1", "c0"],
            "best chunk per document, floor 0.45"
        );
        assert_eq!(
            SearchPlan::rerank_texts(&shortlist),
            vec!["doc-a #3", "doc-b #1", "doc-c #0"]
        );

        let r = plan.finish(shortlist.clone(), Some(vec![0.1, 0.9, 0.5]));
        let got: Vec<(&str, f64, Option<f64>)> = r
            .matches
            .iter()
            .map(|m| (m.id.as_str(), m.score, m.rerank_score))
            .collect();
        assert_eq!(
            got,
            vec![("doc-b", 0.7, Some(0.9)), ("doc-c", 0.5, Some(0.5))],
            "the reranker's order, topK of it, retrieval's score kept"
        );

        // Equal rerank scores keep retrieval's order; a wrong-length answer
        // is not used; no reranker: retrieval's order.
        let tie = plan.finish(shortlist.clone(), Some(vec![0.3, 0.3, 0.3]));
        assert_eq!(tie.matches[0].id, "doc-a");
        let short = plan.finish(shortlist.clone(), Some(vec![0.9]));
        assert_eq!(short.matches[0].id, "doc-a");
        assert_eq!(short.matches[0].rerank_score, None);
        assert_eq!(plain.results(hits).matches, {
            let mut m = plan.finish(shortlist, None).matches;
            m.truncate(2);
            m
        });
    }

    #[test]
    fn the_object_keeps_recent_answers_of_the_current_index_version() {
        let mut s = search(None);
        s.min_score = Some(ScoreFloor::NONE);
        let plan = |query: &str, version: u64| {
            let mut s = s.clone();
            s.query = query.to_owned();
            let v = IndexVersion {
                version,
                changed_at_ms: 0,
            };
            SearchPlan::new(&tenant(), &s, SearchMode::Hybrid, v, None)
        };
        let answer = |p: &SearchPlan| p.results(vec![chunk_of("a0", "doc-a", 0, 0.5)]);
        let mut cache = ResultCache::new(2, RESULT_CACHE_BYTES);
        let (a, b, c) = (plan("a", 7), plan("b", 7), plan("c", 7));
        assert_eq!(cache.get(&a), None);
        cache.put(&a, &answer(&a));
        let hit = cache.get(&a).unwrap();
        assert!(hit.cached);
        assert_eq!(hit.matches, answer(&a).matches);
        cache.put(&b, &answer(&b));
        // a was used after b was kept: b is the least recently used.
        assert!(cache.get(&a).is_some());
        cache.put(&c, &answer(&c));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&b).is_none(), "the least recently used went");
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());

        // A newer index version empties it; an answer of an older one is
        // not kept.
        let newer = plan("a", 8);
        assert!(cache.get(&newer).is_none(), "another version, another key");
        cache.put(&newer, &answer(&newer));
        assert_eq!(cache.len(), 1);
        cache.put(&b, &answer(&b));
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&b).is_none());
        let mut off = ResultCache::new(0, RESULT_CACHE_BYTES);
        off.put(&a, &answer(&a));
        assert!(off.is_empty());

        // Bounded in bytes: two answers fit, the third pushes out the least
        // recently used; one larger than the whole budget is not kept.
        let one = serde_json::to_string(&answer(&a)).unwrap().len();
        let mut small = ResultCache::new(10, 2 * one + 1);
        small.put(&a, &answer(&a));
        small.put(&b, &answer(&b));
        assert_eq!(small.bytes(), 2 * one);
        small.put(&c, &answer(&c));
        assert_eq!((small.len(), small.bytes()), (2, 2 * one));
        assert!(small.get(&a).is_none() && small.get(&c).is_some());
        small.put(&c, &answer(&c));
        assert_eq!(small.bytes(), 2 * one, "a key kept again is counted once");
        let mut tiny = ResultCache::new(10, one - 1);
        tiny.put(&a, &answer(&a));
        assert!(tiny.is_empty());
    }

    #[test]
    fn kv_is_read_where_a_search_costs_a_remote_call() {
        let plan = |mode| SearchPlan::new(&tenant(), &search(None), mode, VERSION, None);
        let (vector, keyword) = (plan(SearchMode::Vector), plan(SearchMode::Keyword));
        assert!(
            !vector.uses_kv(false, false),
            "the embedded index is faster than a KV read"
        );
        assert!(
            vector.uses_kv(true, false),
            "the query is embedded by Workers AI"
        );
        assert!(
            vector.uses_kv(false, true),
            "Vectorize answers the vector leg"
        );
        assert!(!keyword.uses_kv(true, true), "the object's full text alone");
        let reranked = keyword.reranked_by(Some("@cf/baai/bge-reranker-base"));
        assert!(
            reranked.uses_kv(true, true),
            "the reranker is a Workers AI call"
        );
    }
}
