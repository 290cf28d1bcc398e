//! What reading a chunk's metadata costs, natively: from the JSON a search
//! reads from SQLite for each hit, and inside a replica change (MessagePack)
//! as the writer sends it. Beside it, the same input read through an
//! untagged enum, the way `MetaValue` was read before it had its own
//! `Deserialize`.
//!
//! Run with `cargo bench -p protocol --bench metadata`; figures in
//! `docs/benchmarks.md`.

// A bench: a failed read is a broken bench, and stops it.
#![allow(clippy::expect_used)]

use protocol::ingest::{MetaValue, Metadata};
use protocol::replica::{ChunkRecord, ReplicaChange};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

/// `MetaValue` as an untagged enum, for comparison.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Untagged {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A chunk's metadata as the platform writes it: its document, position,
/// title, source and about 1,200 characters of text.
fn metadata(i: usize) -> Metadata {
    let text = "Closures can capture values from their environment in three ways, \
                which directly map to the three ways a function can take a parameter. "
        .repeat(9);
    Metadata::from([
        (
            "docId".to_owned(),
            MetaValue::Str(format!("book-ch13-01-closures-{i}")),
        ),
        ("chunk".to_owned(), MetaValue::Int(i as i64 % 7)),
        (
            "title".to_owned(),
            MetaValue::Str("Capturing References or Moving Ownership".into()),
        ),
        (
            "source".to_owned(),
            MetaValue::Str("book/ch13-01-closures.html".into()),
        ),
        ("book".to_owned(), MetaValue::Str("book".into())),
        (
            "tenantId".to_owned(),
            MetaValue::Str("mrrainbowsmoke".into()),
        ),
        ("text".to_owned(), MetaValue::Str(text)),
    ])
}

/// Mean µs of `f` over `n` runs, after a warm-up.
fn time(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let json = serde_json::to_string(&metadata(3)).expect("metadata as JSON");
    let json_new = time(20_000, || {
        black_box(serde_json::from_str::<Metadata>(black_box(&json)).expect("read"));
    });
    let json_old = time(20_000, || {
        black_box(
            serde_json::from_str::<BTreeMap<String, Untagged>>(black_box(&json)).expect("read"),
        );
    });

    let records: Vec<ChunkRecord> = (0..250)
        .map(|i| ChunkRecord {
            id: format!("{i:040}"),
            values: vec![0.01; 768],
            metadata: metadata(i),
        })
        .collect();
    let packed = rmp_serde::to_vec_named(&ReplicaChange::Upsert(records)).expect("encode");
    let change_new = time(200, || {
        black_box(rmp_serde::from_slice::<ReplicaChange>(black_box(&packed)).expect("read"));
    });
    // The old reader, for the metadata maps alone.
    let maps: Vec<Metadata> = (0..250).map(metadata).collect();
    let maps_packed = rmp_serde::to_vec_named(&maps).expect("encode");
    let maps_new = time(200, || {
        black_box(rmp_serde::from_slice::<Vec<Metadata>>(black_box(&maps_packed)).expect("read"));
    });
    let maps_old = time(200, || {
        black_box(
            rmp_serde::from_slice::<Vec<BTreeMap<String, Untagged>>>(black_box(&maps_packed))
                .expect("read"),
        );
    });

    println!("| what | untagged enum, µs | MetaValue's reader, µs |");
    println!("| --- | --- | --- |");
    println!(
        "| one chunk's metadata from JSON ({} bytes) | {json_old:.2} | {json_new:.2} |",
        json.len()
    );
    println!(
        "| 250 chunks' metadata from MessagePack ({} bytes) | {maps_old:.1} | {maps_new:.1} |",
        maps_packed.len()
    );
    println!(
        "| a replica change of 250 chunks, vectors included ({} bytes) | - | {change_new:.1} |",
        packed.len()
    );
}
