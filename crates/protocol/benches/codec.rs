//! What reading a message costs, natively: the platform's reader
//! (`protocol::msgpack`) against `rmp_serde`'s, on messages the platform
//! sends: a search request in its envelope, a chat frame, a replica change
//! of 250 chunks (768 floats and metadata each).
//!
//! Run with `cargo bench -p protocol --bench codec`; figures in
//! `docs/benchmarks.md`. (What matters more in the Worker is the reader's
//! size: `cargo xtask size`.)

// A bench: a failed read is a broken bench, and stops it.
#![allow(clippy::expect_used)]

mod common;

use common::{metadata, time};
use protocol::chat::{ChatEvent, TurnFrame};
use protocol::ingest::{IngestRequest, Metadata, Search, SearchGroup, SearchMode};
use protocol::replica::{ChunkRecord, ReplicaChange};
use protocol::{Envelope, RequestId, TenantId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::hint::black_box;

/// One row: the message's size and both readers' µs a read, each the
/// median of 15 rounds that alternate the two (this machine's speed moves
/// between runs; alternating keeps the comparison fair).
fn row<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &str,
    value: &T,
    n: usize,
) {
    let bytes = rmp_serde::to_vec_named(value).expect("encode");
    let ours: T = protocol::msgpack::from_slice(&bytes).expect("read");
    assert_eq!(&ours, value);
    let (mut theirs, mut mine) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        theirs.push(time(n, || {
            black_box(rmp_serde::from_slice::<T>(black_box(&bytes)).expect("read"));
        }));
        mine.push(time(n, || {
            black_box(protocol::msgpack::from_slice::<T>(black_box(&bytes)).expect("read"));
        }));
    }
    println!(
        "| {what} | {} | {:.2} | {:.2} |",
        bytes.len(),
        median(&mut theirs),
        median(&mut mine)
    );
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let tenant = TenantId::parse("mrrainbowsmoke").expect("tenant");
    let request = RequestId::parse("0123456789abcdef0123456789abcdef").expect("request id");
    let search = Envelope::new(
        request.clone(),
        tenant.clone(),
        IngestRequest::Search(Search {
            query: "How do I run code when a value goes out of scope?".into(),
            top_k: 5,
            filter: Metadata::new(),
            mode: Some(SearchMode::Hybrid),
            min_score: None,
            group: SearchGroup::default(),
            caller: Some("key:0123456789ab".into()),
        }),
    );
    let frame = TurnFrame {
        id: 4_711,
        event: ChatEvent::Message {
            content: "The lighthouse keeper ".into(),
        },
    };
    let change = ReplicaChange::Upsert(
        (0..250)
            .map(|i| ChunkRecord {
                id: format!("{i:040}"),
                values: vec![0.01; 768],
                metadata: metadata(i),
            })
            .collect(),
    );
    println!("| message | bytes | rmp_serde µs | protocol::msgpack µs |");
    println!("| --- | --- | --- | --- |");
    row("search request in its envelope", &search, 20_000);
    row("chat frame (one `message` event)", &frame, 20_000);
    row("replica change, 250 chunks", &change, 20);
}
