//! Vectorize through the `VECTORS` binding. workers-rs has no wrapper, so the
//! binding's four methods are declared here and called with plain JS objects.
//!
//! Every vector carries the tenant twice: as its namespace (applied before any
//! filter, no metadata index needed) and as `tenantId` metadata (filtered on
//! too, as a second wall). Writes are asynchronous on Cloudflare's side: a
//! vector is searchable a few seconds after its upsert returns.
//!
//! Deployed, the tenant's index is [`VectorizeIndex`] beside the full text in
//! the tenant's own SQLite ([`DeployedIndex`]): Vectorize answers the vector
//! leg (ids and scores only, so up to 100 candidates), the object's rows give
//! each chunk's metadata and text and the keyword leg, and a vector id the
//! object does not hold (another tenant's, or a chunk deleted while
//! Vectorize still answers it) is never answered: a third wall.

use crate::cloudflare::to_js;
use crate::embedded::sql_index::{leg_depth, SqlVectorIndex};
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use protocol::ingest::{MetaValue, Metadata, SearchMode};
use protocol::TenantId;
use serde::{Deserialize, Serialize};
use worker::wasm_bindgen::{self, prelude::wasm_bindgen, JsCast, JsValue};

const SERVICE: &str = "Vectorize";
/// Most vectors in one upsert from a Worker.
pub const MAX_UPSERT: usize = 1000;
/// Largest `topK` of a query that returns no metadata and no values.
pub const MAX_TOP_K: usize = 100;

#[wasm_bindgen]
extern "C" {
    /// The `VECTORS` binding (a `VectorizeIndex` in the Workers runtime).
    #[derive(Debug, Clone)]
    pub type VectorizeBinding;

    #[wasm_bindgen(method, catch)]
    fn upsert(this: &VectorizeBinding, vectors: JsValue) -> Result<js_sys::Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn query(
        this: &VectorizeBinding,
        vector: JsValue,
        options: JsValue,
    ) -> Result<js_sys::Promise, JsValue>;

    #[wasm_bindgen(method, catch, js_name = deleteByIds)]
    fn delete_by_ids(this: &VectorizeBinding, ids: JsValue) -> Result<js_sys::Promise, JsValue>;
}

use worker::js_sys;

/// One vector of an upsert: `{ id, values, namespace, metadata }`.
#[derive(Debug, Serialize)]
pub struct UpsertVector<'a> {
    /// Vector id (≤ 64 bytes).
    pub id: &'a str,
    /// The embedding.
    pub values: &'a [f32],
    /// The tenant.
    pub namespace: &'a str,
    /// Metadata (≤ 10 KiB), `tenantId` included.
    pub metadata: &'a Metadata,
}

/// Options of a query.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryOptions {
    /// How many matches (≤ 100 without metadata).
    pub top_k: usize,
    /// The tenant.
    pub namespace: String,
    /// Metadata equality filter (implicit `$eq`), `tenantId` always included.
    pub filter: Metadata,
    /// `"none"`: the tenant's object holds each chunk's metadata.
    pub return_metadata: &'static str,
    /// Values are not needed.
    pub return_values: bool,
}

/// A query's answer: `{ count, matches: [{ id, score, metadata }] }`.
#[derive(Debug, Deserialize)]
pub struct QueryResult {
    /// The matches, best first.
    #[serde(default)]
    pub matches: Vec<QueryMatch>,
}

/// One match of a query.
#[derive(Debug, Deserialize)]
pub struct QueryMatch {
    /// Vector id.
    pub id: String,
    /// Similarity.
    pub score: f64,
}

/// The query options for `tenant`: the namespace and a `tenantId` filter are
/// always set, whatever the caller's filter says.
pub fn query_options(tenant: &TenantId, top_k: usize, filter: &Metadata) -> QueryOptions {
    let mut filter = filter.clone();
    filter.insert(
        "tenantId".into(),
        MetaValue::Str(tenant.as_str().to_owned()),
    );
    QueryOptions {
        top_k: top_k.min(MAX_TOP_K),
        namespace: tenant.as_str().to_owned(),
        filter,
        return_metadata: "none",
        return_values: false,
    }
}

/// The vector leg of an answer: each match's id with its relevance, the
/// cosine the index answers (the index's metric is cosine) clamped to
/// [0, 1] as the embedded index does, best first.
pub fn vector_leg(result: QueryResult) -> Vec<(String, f64)> {
    result
        .matches
        .into_iter()
        .map(|m| (m.id, crate::retrieval::vector_relevance(m.score)))
        .collect()
}

/// One tenant's slice of a Vectorize index.
pub struct VectorizeIndex {
    binding: VectorizeBinding,
    tenant: TenantId,
}

impl VectorizeIndex {
    /// The `binding` named `name` of `env`, for `tenant`.
    pub fn from_env(env: &worker::Env, name: &str, tenant: TenantId) -> Result<Self, PortError> {
        let value = js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
            .ok()
            .filter(|v| v.is_object())
            .ok_or_else(|| PortError::Failed {
                service: SERVICE,
                message: format!("no {name} binding"),
            })?;
        Ok(Self {
            binding: value.unchecked_into(),
            tenant,
        })
    }
}

fn js_failed(e: JsValue) -> PortError {
    PortError::Failed {
        service: SERVICE,
        message: e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}

fn encode_failed(e: String) -> PortError {
    PortError::Failed {
        service: SERVICE,
        message: e,
    }
}

async fn settle(promise: Result<js_sys::Promise, JsValue>) -> Result<JsValue, PortError> {
    let promise = promise.map_err(js_failed)?;
    worker::wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(js_failed)
}

impl VectorizeIndex {
    /// Writes `records` (their metadata as given), at most [`MAX_UPSERT`] a
    /// call.
    pub async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        for batch in records.chunks(MAX_UPSERT) {
            let vectors: Vec<UpsertVector<'_>> = batch
                .iter()
                .map(|r| UpsertVector {
                    id: &r.id,
                    values: &r.values,
                    namespace: self.tenant.as_str(),
                    metadata: &r.metadata,
                })
                .collect();
            settle(self.binding.upsert(to_js(&vectors).map_err(encode_failed)?)).await?;
        }
        Ok(())
    }

    /// Deletes `ids`, at most [`MAX_UPSERT`] a call.
    pub async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        for batch in ids.chunks(MAX_UPSERT) {
            settle(
                self.binding
                    .delete_by_ids(to_js(&batch).map_err(encode_failed)?),
            )
            .await?;
        }
        Ok(())
    }

    /// The `top_k` (at most [`MAX_TOP_K`]) nearest chunk ids to `vector`
    /// within `filter`, with their relevance ([`vector_leg`]).
    pub async fn nearest(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: &Metadata,
    ) -> Result<Vec<(String, f64)>, PortError> {
        let options = query_options(&self.tenant, top_k, filter);
        let value = settle(self.binding.query(
            to_js(&vector).map_err(encode_failed)?,
            to_js(&options).map_err(encode_failed)?,
        ))
        .await?;
        let result: QueryResult =
            serde_wasm_bindgen::from_value(value).map_err(|e| PortError::BadShape {
                service: SERVICE,
                message: e.to_string(),
            })?;
        Ok(vector_leg(result))
    }
}

/// The deployed index: vectors in Vectorize, each chunk's row and the full
/// text in the tenant's object ([`SqlVectorIndex::text_only`]). Every mode
/// works: vector (Vectorize's leg), keyword (the full text, read-your-writes)
/// and hybrid (both, fused as the embedded index fuses them).
pub struct DeployedIndex {
    vectors: VectorizeIndex,
    text: SqlVectorIndex,
}

impl DeployedIndex {
    /// Vectorize's `vectors` beside the object's `text`.
    pub fn new(vectors: VectorizeIndex, text: SqlVectorIndex) -> Self {
        Self { vectors, text }
    }
}

impl VectorIndex for DeployedIndex {
    fn backend(&self) -> &'static str {
        "vectorize"
    }

    fn supports(&self, _mode: SearchMode) -> bool {
        true
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
        // Both writes replace what a previous attempt wrote: a retry after
        // either fails converges.
        self.vectors.upsert(records).await?;
        self.text.upsert(records).await
    }

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        // Vectorize first: if it fails, nothing changed and the delete is
        // retried whole. Then the rows: from then on no leg answers these
        // chunks (a vector Vectorize still returns for a few seconds has no
        // row and is dropped).
        self.vectors.delete(ids).await?;
        self.text.delete(ids).await
    }

    async fn query(&self, q: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        if q.mode == SearchMode::Keyword {
            return self.text.query(q).await;
        }
        let vector = q.vector.ok_or_else(|| {
            PortError::Unsupported("this mode needs the query's embedding".into())
        })?;
        let leg = self
            .vectors
            .nearest(vector, leg_depth(q.mode, q.top_k).min(MAX_TOP_K), q.filter)
            .await?;
        self.text.rank_with(&q, &leg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn upsert_shape() {
        let meta = Metadata::from([("tenantId".to_owned(), MetaValue::Str("acme".into()))]);
        let v = UpsertVector {
            id: "abc",
            values: &[0.5, -0.25],
            namespace: "acme",
            metadata: &meta,
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            json!({"id":"abc","values":[0.5,-0.25],"namespace":"acme","metadata":{"tenantId":"acme"}})
        );
    }

    #[test]
    fn query_options_always_scope_to_the_tenant() {
        // Even a filter that names another tenant is overridden.
        let filter = Metadata::from([
            ("tenantId".to_owned(), MetaValue::Str("evil".into())),
            ("source".to_owned(), MetaValue::Str("a.md".into())),
        ]);
        let opts = query_options(&acme(), 500, &filter);
        assert_eq!(
            serde_json::to_value(&opts).unwrap(),
            json!({"topK":100,"namespace":"acme","filter":{"source":"a.md","tenantId":"acme"},
                   "returnMetadata":"none","returnValues":false})
        );
    }

    #[test]
    fn vectorize_is_asked_as_deep_as_the_embedded_leg() {
        assert_eq!(leg_depth(SearchMode::Vector, 15), 15);
        assert_eq!(leg_depth(SearchMode::Hybrid, 15), 50);
        assert_eq!(leg_depth(SearchMode::Hybrid, 60), 60);
        // The deepest search (topK 20, three chunks a document) stays within
        // what Vectorize answers without metadata.
        assert!(leg_depth(SearchMode::Hybrid, 60) <= MAX_TOP_K);
    }

    /// A query answer as Vectorize gives it with `returnMetadata: "none"`.
    fn answer() -> QueryResult {
        serde_json::from_value(json!({
            "count": 4,
            "matches": [
                {"id":"a","score":0.9},
                {"id":"other-tenant","score":0.8},
                {"id":"c","score":0.5},
                {"id":"d","score":-0.2}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn query_answers_become_a_vector_leg() {
        let leg = vector_leg(answer());
        assert_eq!(
            leg,
            vec![
                ("a".to_owned(), 0.9),
                ("other-tenant".to_owned(), 0.8),
                ("c".to_owned(), 0.5),
                ("d".to_owned(), 0.0),
            ],
            "ids in Vectorize's order, a negative cosine is no relevance"
        );
        let empty: QueryResult = serde_json::from_value(json!({"count":0})).unwrap();
        assert!(vector_leg(empty).is_empty());
        let missing_score = serde_json::from_value::<QueryResult>(json!({"matches":[{"id":"a"}]}));
        assert!(
            missing_score.is_err(),
            "a match without a score is a bad shape"
        );
    }

    /// The deployed hybrid path, from Vectorize's answer to the ranking:
    /// ids joined to the object's rows (an id it does not hold is dropped),
    /// then fused with the full text's leg exactly as the embedded index
    /// fuses.
    #[test]
    fn the_vector_leg_joins_the_tenants_rows_and_fuses_with_the_full_text() {
        use crate::embedded::sql_index::join_leg;
        use crate::retrieval::{hybrid_relevance, rank_legs};
        use std::collections::HashMap;
        // The object holds a, c, d and e (e found by keyword only); not
        // "other-tenant".
        let rows: HashMap<String, i64> = [("a", 1), ("c", 3), ("d", 4), ("e", 5)]
            .into_iter()
            .map(|(id, rid)| (id.to_owned(), rid))
            .collect();
        let by_vector = join_leg(&vector_leg(answer()), &rows);
        assert_eq!(by_vector, vec![(1, 0.9), (3, 0.5), (4, 0.0)]);
        let by_keyword = vec![(5, 0.8), (3, 0.6)];

        let vector_only = rank_legs(SearchMode::Vector, 2, by_vector.clone(), by_keyword.clone());
        let keys: Vec<i64> = vector_only.iter().map(|f| f.key).collect();
        assert_eq!(keys, vec![1, 3]);
        assert_eq!(vector_only[0].score, 0.9);

        let hybrid = rank_legs(SearchMode::Hybrid, 10, by_vector, by_keyword);
        let ranked: Vec<(i64, Option<f64>, Option<f64>)> = hybrid
            .iter()
            .map(|f| (f.key, f.vector, f.keyword))
            .collect();
        // c: both legs; e: keyword only; a: vector only; d: vector 0.
        assert_eq!(
            ranked,
            vec![
                (3, Some(0.5), Some(0.6)),
                (5, None, Some(0.8)),
                (1, Some(0.9), None),
                (4, Some(0.0), None),
            ]
        );
        assert_eq!(hybrid[0].score, hybrid_relevance(Some(0.5), Some(0.6)));
        assert!(hybrid.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
