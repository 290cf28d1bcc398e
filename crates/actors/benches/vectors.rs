//! The embedded index's exact vector search, natively: loading 10,000
//! vectors of the shared corpus (as a wake does, from their stored blobs)
//! and the nearest 50 to each question of `tests/questions` (as the vector
//! leg of a hybrid search asks), with the questions' own embeddings (sparse:
//! a question fills few of the 768 buckets), with chunks' embeddings (about
//! half filled) and with queries that fill every bucket (as a neural
//! model's would).
//!
//! ```bash
//! cargo bench -p actors --bench vectors
//! ```
//!
//! The corpus is `../shared/corpus/rust-docs.jsonl` beside the repository,
//! or the file named by `RAG_CORPUS`.

// A bench: a missing corpus or a bad line ends it with the reason.
#![allow(clippy::expect_used, clippy::panic)]

use actors::embedded::sql_index::to_blob;
use actors::embedding::{embed, DIMENSIONS};
use actors::retrieval::MemIndex;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

const VECTORS: usize = 10_000;
const K: usize = 50;

fn lines(path: PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = std::env::var_os("RAG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/corpus/rust-docs.jsonl"));
    let sections = lines(corpus);
    // Whole sections and their halves, as chunks of several sizes.
    let mut texts: Vec<String> = Vec::new();
    for s in &sections {
        let text = s["text"].as_str().unwrap_or_default();
        texts.push(text.to_owned());
        let mid = text
            .char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        texts.push(text[..mid].to_owned());
        texts.push(text[mid..].to_owned());
    }
    texts.truncate(VECTORS);
    let blobs: Vec<Vec<u8>> = texts.iter().map(|t| to_blob(&embed(t))).collect();
    let questions: Vec<Vec<f32>> = lines(root.join("tests/questions/rust-docs.jsonl"))
        .iter()
        .filter_map(|q| q["question"].as_str().map(embed))
        .collect();
    let filled = |v: &Vec<f32>| v.iter().filter(|x| **x != 0.0).count();
    let sparse = median(questions.iter().map(|q| filled(q) as f64).collect());
    let dense_queries: Vec<Vec<f32>> = blobs
        .iter()
        .step_by((blobs.len() / questions.len().max(1)).max(1))
        .take(questions.len())
        .map(|b| actors::embedded::sql_index::from_blob(b))
        .collect();
    let dense = median(dense_queries.iter().map(|q| filled(q) as f64).collect());
    // Every bucket filled, as a neural embedding (`bge-base-en-v1.5`) would.
    let full_queries: Vec<Vec<f32>> = (0..questions.len())
        .map(|i| {
            (0..DIMENSIONS)
                .map(|d| ((d * 31 + i * 17) as f32 * 0.37).sin())
                .collect()
        })
        .collect();

    let mut loads = Vec::new();
    let mut index = MemIndex::new(DIMENSIONS, VECTORS);
    for _ in 0..5 {
        let t = Instant::now();
        let mut fresh = MemIndex::new(DIMENSIONS, VECTORS);
        for (rid, blob) in blobs.iter().enumerate() {
            fresh.upsert_le_bytes(rid as i64 + 1, blob).expect("fits");
        }
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        index = fresh;
    }
    println!("| what | ms |\n| --- | --- |");
    println!(
        "| load {} vectors (median of 5) | {:.1} |",
        index.len(),
        median(loads)
    );
    for (name, queries, filled) in [
        ("questions", &questions, sparse),
        ("chunks", &dense_queries, dense),
        ("dense queries", &full_queries, DIMENSIONS as f64),
    ] {
        let mut ms = Vec::new();
        for _ in 0..5 {
            for q in queries.iter() {
                let t = Instant::now();
                black_box(index.nearest(black_box(q), K, None));
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        println!(
            "| nearest {K} of {} for {} {name} ({filled:.0} of {DIMENSIONS} buckets filled, median) | {:.3} |",
            index.len(),
            queries.len(),
            median(ms)
        );
    }
    // With a metadata filter: the keys it keeps (every n-th).
    for every in [100, 5] {
        let allowed: std::collections::HashSet<i64> = (1..=index.len() as i64)
            .filter(|k| k % every == 0)
            .collect();
        let mut ms = Vec::new();
        for _ in 0..5 {
            for q in questions.iter() {
                let t = Instant::now();
                black_box(index.nearest(black_box(q), K, Some(&allowed)));
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        println!(
            "| nearest {K} of {} for {} questions, a filter keeping {} (median) | {:.3} |",
            index.len(),
            questions.len(),
            allowed.len(),
            median(ms)
        );
    }
}
