//! Vectorize through the `VECTORS` binding. workers-rs has no wrapper, so the
//! binding's four methods are declared here and called with plain JS objects.
//!
//! Every vector carries the tenant twice: as its namespace (applied before any
//! filter, no metadata index needed) and as `tenantId` metadata (filtered on
//! too, as a second wall). Writes are asynchronous on Cloudflare's side: a
//! vector is searchable a few seconds after its upsert returns.

use crate::cloudflare::to_js;
use crate::ports::{PortError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use protocol::ingest::{MetaValue, Metadata, SearchMode};
use protocol::TenantId;
use serde::{Deserialize, Serialize};
use worker::wasm_bindgen::{self, prelude::wasm_bindgen, JsCast, JsValue};

const SERVICE: &str = "Vectorize";
/// Most vectors in one upsert from a Worker.
pub const MAX_UPSERT: usize = 1000;
/// Largest `topK` with `returnMetadata: "all"`.
pub const MAX_TOP_K_WITH_METADATA: usize = 20;

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
    /// How many matches (≤ 20 with metadata).
    pub top_k: usize,
    /// The tenant.
    pub namespace: String,
    /// Metadata equality filter (implicit `$eq`), `tenantId` always included.
    pub filter: Metadata,
    /// `"all"`: return every metadata field.
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
    /// Metadata, when asked for.
    #[serde(default)]
    pub metadata: Metadata,
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
        top_k: top_k.min(MAX_TOP_K_WITH_METADATA),
        namespace: tenant.as_str().to_owned(),
        filter,
        return_metadata: "all",
        return_values: false,
    }
}

/// Keeps only matches that really are `tenant`'s (defence in depth), each
/// scored by its relevance: the cosine the index answers (the index's metric
/// is cosine), clamped to [0, 1] as the embedded index does.
pub fn own_matches(tenant: &TenantId, result: QueryResult) -> Vec<VectorHit> {
    result
        .matches
        .into_iter()
        .filter(|m| m.metadata.get("tenantId") == Some(&MetaValue::Str(tenant.as_str().to_owned())))
        .map(|m| VectorHit {
            id: m.id,
            score: crate::retrieval::vector_relevance(m.score),
            vector_score: None,
            keyword_score: None,
            metadata: m.metadata,
        })
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

impl VectorIndex for VectorizeIndex {
    fn backend(&self) -> &'static str {
        "vectorize"
    }

    fn supports(&self, mode: SearchMode) -> bool {
        mode == SearchMode::Vector
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), PortError> {
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

    async fn delete(&self, ids: &[String]) -> Result<(), PortError> {
        for batch in ids.chunks(MAX_UPSERT) {
            settle(
                self.binding
                    .delete_by_ids(to_js(&batch).map_err(encode_failed)?),
            )
            .await?;
        }
        Ok(())
    }

    async fn query(&self, q: VectorQuery<'_>) -> Result<Vec<VectorHit>, PortError> {
        if q.mode != SearchMode::Vector {
            return Err(PortError::Unsupported(format!(
                "mode {:?} is not supported by Vectorize; use \"vector\"",
                q.mode.as_str()
            )));
        }
        let vector = q.vector.ok_or_else(|| {
            PortError::Unsupported("vector search needs the query's embedding".into())
        })?;
        let options = query_options(&self.tenant, q.top_k, q.filter);
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
        Ok(own_matches(&self.tenant, result))
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
        let opts = query_options(&acme(), 50, &filter);
        assert_eq!(
            serde_json::to_value(&opts).unwrap(),
            json!({"topK":20,"namespace":"acme","filter":{"source":"a.md","tenantId":"acme"},
                   "returnMetadata":"all","returnValues":false})
        );
    }

    #[test]
    fn query_results_are_parsed_and_filtered_by_tenant() {
        let result: QueryResult = serde_json::from_value(json!({
            "count": 3,
            "matches": [
                {"id":"a","score":0.9,"metadata":{"tenantId":"acme","text":"hi","chunk":0}},
                {"id":"b","score":0.8,"metadata":{"tenantId":"other","text":"leak"}},
                {"id":"c","score":0.7},
                {"id":"d","score":-0.2,"metadata":{"tenantId":"acme","text":"opposite"}}
            ]
        }))
        .unwrap();
        let hits = own_matches(&acme(), result);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].id, "a");
        assert_eq!(hits[0].score, 0.9);
        assert_eq!(hits[1].score, 0.0, "a negative cosine is no relevance");
        assert_eq!(hits[0].metadata["chunk"], MetaValue::Int(0));
        let empty: QueryResult = serde_json::from_value(json!({"count":0})).unwrap();
        assert!(own_matches(&acme(), empty).is_empty());
    }
}
