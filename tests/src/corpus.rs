//! The shared documentation corpus over HTTP, for the benchmarks: loading
//! it, ingesting it in batches and waiting for the jobs, the index's size,
//! and one search.

use crate::http::{get, send};
use crate::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The tenant the benchmarks use.
pub const TENANT: &str = "mrrainbowsmoke";
const INGEST: &str = "Bearer e2e-ingest-token";
const ADMIN: &str = "Bearer e2e-admin-token";
const MAX_BATCH_DOCS: usize = 100;
const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024;

/// The tenant header and JSON, with `auth` if given.
pub fn headers(auth: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("x-tenant-id", TENANT),
        ("content-type", "application/json"),
    ];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    h
}

/// The corpus: `../shared/corpus/rust-docs.jsonl`, or the file named by
/// `RAG_CORPUS`, one document per line.
pub fn load_corpus() -> Vec<Value> {
    let path = std::env::var("RAG_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| xtask::repo_root().join("../shared/corpus/rust-docs.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the corpus {}: {e} (set RAG_CORPUS)",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `docs` under ids with `prefix`.
pub fn with_prefix(docs: &[Value], prefix: &str) -> Vec<Value> {
    docs.iter()
        .map(|d| {
            let mut d = d.clone();
            let id = format!("{prefix}{}", d["id"].as_str().unwrap_or_default());
            d["id"] = json!(id);
            d
        })
        .collect()
}

/// Posts `docs` in batches and waits until every job is done. Returns the
/// chunks written and the seconds it took.
pub fn ingest(server: &Server, docs: &[Value]) -> (u64, f64) {
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut batch: Vec<Value> = Vec::new();
    let mut bytes = 0;
    let flush = |batch: &mut Vec<Value>, jobs: &mut Vec<String>| {
        if batch.is_empty() {
            return;
        }
        let body = json!({ "documents": batch }).to_string();
        let r = send(
            "POST",
            &server.url("/api/ingest"),
            &headers(Some(INGEST)),
            Some(body.as_bytes()),
        );
        assert!(matches!(r.status, 200 | 202), "ingest failed: {}", r.body);
        jobs.push(r.json()["jobId"].as_str().unwrap_or_default().to_owned());
        batch.clear();
    };
    for doc in docs {
        let size = doc.to_string().len();
        if batch.len() == MAX_BATCH_DOCS || bytes + size > MAX_BATCH_BYTES {
            flush(&mut batch, &mut jobs);
            bytes = 0;
        }
        bytes += size;
        batch.push(doc.clone());
    }
    flush(&mut batch, &mut jobs);
    let mut chunks = 0;
    for job in &jobs {
        loop {
            let r = get(
                &server.url(&format!("/api/ingest/{job}")),
                &headers(Some(INGEST)),
            );
            let j = r.json();
            if j["status"] == "done" {
                chunks += j["chunksDone"].as_u64().unwrap_or(0);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (chunks, started.elapsed().as_secs_f64())
}

/// Chunks in the tenant's index.
pub fn index_chunks(server: &Server) -> u64 {
    let r = get(
        &server.url(&format!("/admin/actors/ingest/{TENANT}")),
        &headers(Some(ADMIN)),
    );
    r.json()["state"]["chunks"].as_u64().unwrap_or(0)
}

/// One search as the tenant's key, ranking only (`minScore: 0`: the
/// relevance floor keeps everything): (the answer, ms).
pub fn search(server: &Server, query: &str, mode: &str, top_k: u32) -> (Value, f64) {
    search_with(
        server,
        json!({ "query": query, "mode": mode, "topK": top_k, "minScore": 0 }),
    )
}

/// One search with this body as the tenant's key: (the answer, ms).
pub fn search_with(server: &Server, body: Value) -> (Value, f64) {
    let body = body.to_string();
    let t = Instant::now();
    let auth = server.bearer(TENANT);
    let r = send(
        "POST",
        &server.url("/api/search"),
        &headers(Some(&auth)),
        Some(body.as_bytes()),
    );
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.status, 200, "{}", r.body);
    (r.json(), ms)
}
