//! What reading a chunk's metadata costs, natively: from the JSON a search
//! reads from SQLite for each hit, and inside a replica change (MessagePack)
//! as the writer sends it. Beside it, the same input read through an
//! untagged enum, the way `MetaValue` was read before it had its own
//! `Deserialize`. MessagePack is read with the platform's reader
//! (`protocol::msgpack`; `rmp_serde`'s before the thirteenth session).
//!
//! Run with `cargo bench -p protocol --bench metadata`; figures in
//! `docs/benchmarks.md`.

// A bench: a failed read is a broken bench, and stops it.
#![allow(clippy::expect_used)]

mod common;

use common::{metadata, time};
use protocol::ingest::Metadata;
use protocol::replica::{ChunkRecord, ReplicaChange};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hint::black_box;

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
        black_box(
            protocol::msgpack::from_slice::<ReplicaChange>(black_box(&packed)).expect("read"),
        );
    });
    // The old reader, for the metadata maps alone.
    let maps: Vec<Metadata> = (0..250).map(metadata).collect();
    let maps_packed = rmp_serde::to_vec_named(&maps).expect("encode");
    let maps_new = time(200, || {
        black_box(
            protocol::msgpack::from_slice::<Vec<Metadata>>(black_box(&maps_packed)).expect("read"),
        );
    });
    let maps_old = time(200, || {
        black_box(
            protocol::msgpack::from_slice::<Vec<BTreeMap<String, Untagged>>>(black_box(
                &maps_packed,
            ))
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
