//! The per-tenant Durable Object actors.
//!
//! Every actor is a pure core plus a thin Durable Object shell:
//! - the **core** (`*/core.rs`) holds plain data, takes a decoded message and
//!   the current time, and returns a reply and the effects to perform; it has
//!   no `worker::` types and is unit-tested natively;
//! - the **shell** (`*/object.rs`) is the `#[durable_object]`: it decodes the
//!   request ([`rpc`]), calls the core, performs the effects (storage), and
//!   encodes the reply;
//! - the **handle** (`*/handle.rs`) is what callers use: typed methods that
//!   build the envelope, reach the right object by its tenant-scoped name and
//!   decode the reply, so no call site builds a request by hand.
//!
//! Actors: [`coordinator`] (`TenantCoordinator`) and [`ingest`]
//! (`IngestQueue`), one of each per tenant; [`chat`] (`ChatSession`), one per
//! conversation; [`limiter`] (`RateLimiter`), one per key and one ledger per
//! tenant; [`replica`] (`SearchReplica`), `SEARCH_REPLICAS` read copies of a
//! tenant's index that answer its searches.
//!
//! Around them: the [`ports`] (embedder, vector index, KV, clock, sleep, generator)
//! with their [`cloudflare`] and [`embedded`] implementations, chosen by
//! [`providers`] from the deployment's vars; [`sql`], the shells' shared
//! SQLite plumbing; and the pure pieces of retrieval: [`chunking`],
//! [`embedding`] (the hashed embedder), [`retrieval`] (exact cosine, filters,
//! FTS queries, rank fusion); [`embedding_model`] (which model a tenant's
//! index uses, and when it may change); and [`generation`] (the generators
//! and the chat router: fallbacks, retries, timeouts).

pub mod batch;
pub mod chat;
pub mod chunking;
pub mod cloudflare;
pub mod coordinator;
pub mod embedded;
pub mod embedding;
pub mod embedding_model;
pub mod entropy;
pub mod error;
pub mod generation;
pub mod ingest;
pub mod isolate_cache;
pub mod limiter;
pub mod metrics;
pub mod observe;
#[cfg(test)]
mod porter;
pub mod ports;
pub mod providers;
pub mod replica;
pub mod retrieval;
pub mod rpc;
pub mod sql;
pub mod writing;

pub use chat::{ChatHandle, ChatSession};
pub use coordinator::{CoordinatorHandle, TenantCoordinator};
pub use error::ActorError;
pub use ingest::{IngestHandle, IngestQueue};
pub use limiter::{LimiterHandle, RateLimiter};
pub use replica::{SearchHandle, SearchReplica};

/// Tests of the JS glue and of the wasm-only code paths, run in Node with
/// `wasm-bindgen-test-runner` (`cargo xtask test` does).
#[cfg(all(test, target_arch = "wasm32"))]
#[allow(clippy::unwrap_used)] // test code: a panic is a failed test
mod wasm_tests {
    use crate::cloudflare::to_js;
    use protocol::ingest::{MetaValue, Metadata};
    use wasm_bindgen_test::wasm_bindgen_test;
    use worker::js_sys::{Array, Map, Object, Reflect};
    use worker::wasm_bindgen::{JsCast, JsValue};

    #[wasm_bindgen_test]
    fn simd_search_scores_are_the_plain_cosines() {
        // Over three blocks (the last part full), with sparse questions and
        // a dense query: the SIMD block scorer gives every vector's cosine.
        use crate::embedding::{embed, DIMENSIONS};
        use crate::retrieval::{cosine, MemIndex, BLOCK_VECTORS};
        let n = 2 * BLOCK_VECTORS + 21;
        let vectors: Vec<Vec<f32>> = (0..n)
            .map(|k| {
                embed(&format!(
                    "chunk {k} on borrowing, traits number {} and cargo",
                    k % 7
                ))
            })
            .collect();
        let mut idx = MemIndex::new(DIMENSIONS, n);
        for (k, v) in vectors.iter().enumerate() {
            idx.upsert(k as i64, v).unwrap();
        }
        let dense: Vec<f32> = (0..DIMENSIONS).map(|d| (d as f32 * 0.37).sin()).collect();
        for q in [embed("how do traits and borrowing work?"), dense] {
            let got = idx.nearest(&q, n, None);
            assert_eq!(got.len(), n);
            for (key, score) in got {
                let want = cosine(&q, &vectors[key as usize]);
                assert!((score - want).abs() <= 1e-5, "{key}: {score} vs {want}");
            }
        }
    }

    #[wasm_bindgen_test]
    fn a_clients_int64_bound_reaches_a_model_as_a_number() {
        // A JSON schema's int64 bound: `to_js` refuses the whole value, the
        // JSON route reads it as JSON.parse does.
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "n": { "type": "integer", "maximum": 9223372036854775807u64 } }
        });
        assert!(to_js(&schema).is_err());
        let value = crate::cloudflare::to_js_via_json(&schema).unwrap();
        assert!(value.is_instance_of::<Object>());
        let n = Reflect::get(&value, &JsValue::from_str("properties"))
            .and_then(|p| Reflect::get(&p, &JsValue::from_str("n")))
            .and_then(|n| Reflect::get(&n, &JsValue::from_str("maximum")))
            .unwrap();
        assert_eq!(n.as_f64(), Some(9.223372036854776e18));
    }

    #[wasm_bindgen_test]
    fn bindings_get_plain_objects_not_maps() {
        // Vectorize and Workers AI read plain JS objects; serde_wasm_bindgen's
        // default would turn a map into a JS `Map`, which they ignore.
        let meta = Metadata::from([
            ("source".to_owned(), MetaValue::Str("a.md".into())),
            ("chunk".to_owned(), MetaValue::Int(2)),
        ]);
        let value = to_js(&meta).unwrap();
        assert!(value.is_instance_of::<Object>());
        assert!(!value.is_instance_of::<Map>());
        assert_eq!(
            Reflect::get(&value, &JsValue::from_str("source")).unwrap(),
            JsValue::from_str("a.md")
        );
        assert_eq!(
            Reflect::get(&value, &JsValue::from_str("chunk")).unwrap(),
            JsValue::from_f64(2.0)
        );
        let ids = to_js(&["a", "b"]).unwrap();
        assert!(Array::is_array(&ids));
        assert_eq!(ids.unchecked_into::<Array>().length(), 2);
    }
}
