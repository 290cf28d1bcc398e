//! One tenant, many readers: 200 concurrent searches of one tenant at 10k
//! chunks, answered by its search replicas and then, for comparison, by its
//! writer (`SEARCH_REPLICAS=0`, every search in the `IngestQueue`); how many
//! of them reached the writer; and what a new replica costs: its first
//! search (answered by the writer while the replica copies the index in the
//! background), how long the copy takes, and its first search of its own
//! (it loads the vectors).
//!
//! `cargo xtask build && cargo bench -p e2e --bench readers` (about 3
//! minutes). The questions are the natural-language ones of
//! `tests/questions/rust-docs.jsonl`; each burst uses its own `topK`s, so
//! none is answered from a cache. Locally every object runs on one thread
//! of one `workerd`, so replicas cannot make a burst faster here; what this
//! shows is where the work runs (none of it in the writer).

use e2e::corpus::{index_chunks, ingest, load_corpus, search_with, with_prefix, TENANT};
use e2e::http::get;
use e2e::{Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use std::time::Instant;

const CONCURRENT: usize = 200;
const ADMIN: &str = "Bearer e2e-admin-token";

fn questions() -> Vec<String> {
    let path = xtask::repo_root().join("tests/questions/rust-docs.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["question"].as_str().expect("question").to_owned()
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn state(server: &Server, kind: &str, name: &str) -> Value {
    let r = get(
        &server.url(&format!("/admin/actors/{kind}/{name}")),
        &[("x-tenant-id", TENANT), ("authorization", ADMIN)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"].clone()
}

/// Waits until each of `replicas` replicas holds a usable copy at the
/// writer's last change.
fn caught_up(server: &Server, replicas: u32) {
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let seq = state(server, "ingest", TENANT)["replication"]["seq"].clone();
        if (0..replicas).all(|k| state(server, "search", &k.to_string())["seq"] == seq) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas hold no copy after 600 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn writer_searches(server: &Server) -> u64 {
    state(server, "ingest", TENANT)["replication"]["searches"]
        .as_u64()
        .unwrap_or(0)
}

/// 200 hybrid searches sent at once, questions taken in turn, each with a
/// `topK` of `top_ks` (so none is cached): (p50 ms, p99 ms, wall ms).
fn burst(server: &Arc<Server>, questions: &[String], top_ks: [u32; 2]) -> (f64, f64, f64) {
    let barrier = Arc::new(Barrier::new(CONCURRENT + 1));
    let threads: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let (server, barrier) = (Arc::clone(server), Arc::clone(&barrier));
            let q = questions[i % questions.len()].clone();
            let top_k = top_ks[(i / questions.len()) % 2];
            std::thread::spawn(move || {
                barrier.wait();
                let (answer, ms) = search_with(
                    &server,
                    json!({ "query": q, "mode": "hybrid", "topK": top_k, "minScore": 0 }),
                );
                assert_eq!(answer["cached"], false, "{answer}");
                ms
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut times: Vec<f64> = threads
        .into_iter()
        .map(|t| t.join().expect("a search thread"))
        .collect();
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    times.sort_by(f64::total_cmp);
    (percentile(&times, 50.0), percentile(&times, 99.0), wall)
}

fn start(dir: &PersistDir, replicas: &str) -> Arc<Server> {
    // The replica count is this bench's own, whatever `BENCH_VARS` says.
    Arc::new(Server::start_bench(
        Deployment::Dedicated(TENANT),
        dir,
        &[("EMBEDDED_MAX_CHUNKS", "20000")],
        &[("SEARCH_REPLICAS", replicas)],
    ))
}

/// One search per replica (or the writer), so each has loaded its vectors
/// before the burst: (the first search's ms, per replica). `round` makes
/// the questions new ones (none answered from a cache).
fn warm(server: &Server, replicas: u32, round: u32) -> Vec<f64> {
    let mut firsts = vec![f64::NAN; replicas.max(1) as usize];
    let mut n = 0;
    while firsts.iter().any(|t| t.is_nan()) {
        n += 1;
        let q = format!("warm up question {n} of round {round}");
        let k = actors::replica::replica_for(&q, replicas).unwrap_or(0) as usize;
        let (_, ms) = search_with(server, json!({ "query": q, "mode": "hybrid", "topK": 3 }));
        if firsts[k].is_nan() {
            firsts[k] = ms;
        }
    }
    firsts
}

fn main() {
    let corpus = load_corpus();
    let questions = questions();
    let dir = PersistDir::new("bench-readers");
    let mut rows = Vec::new();
    let key;
    {
        let server = start(&dir, "2");
        let (mut chunks, _) = ingest(&server, &corpus);
        let copy = with_prefix(&corpus, "copy-");
        let mut next = 0;
        while chunks < 10_000 && next < copy.len() {
            let end = (next + 100).min(copy.len());
            chunks += ingest(&server, &copy[next..end]).0;
            next = end;
        }
        key = server.key(TENANT);
        caught_up(&server, 2);
        warm(&server, 2, 0);
        let before = writer_searches(&server);
        let (p50, p99, wall) = burst(&server, &questions, [5, 6]);
        let in_writer = writer_searches(&server) - before;
        let per: Vec<String> = (0..2)
            .map(|k| state(&server, "search", &k.to_string())["searches"].to_string())
            .collect();
        rows.push(format!(
            "| 2 replicas | {} | {CONCURRENT} | {p50:.0} | {p99:.0} | {wall:.0} | {in_writer} | {} |",
            index_chunks(&server),
            per.join(" / ")
        ));
    }
    {
        let server = start(&dir, "0");
        server.adopt_key(TENANT, key.clone());
        warm(&server, 0, 0);
        let before = writer_searches(&server);
        let (p50, p99, wall) = burst(&server, &questions, [7, 8]);
        let in_writer = writer_searches(&server) - before;
        rows.push(format!(
            "| none (the writer answers) | {} | {CONCURRENT} | {p50:.0} | {p99:.0} | {wall:.0} | {in_writer} | - |",
            index_chunks(&server)
        ));
    }
    let new_replica;
    {
        let server = start(&dir, "4");
        server.adopt_key(TENANT, key.clone());
        // Replicas 2 and 3 are new: their first search starts their copy
        // and is answered by the writer; once copied, they answer.
        let started = Instant::now();
        let firsts = warm(&server, 4, 0);
        caught_up(&server, 4);
        let copied = started.elapsed().as_secs_f64() * 1000.0;
        let own = warm(&server, 4, 1);
        new_replica = (firsts[2], firsts[3], copied, own[2], own[3], firsts[0]);
        let copies = state(&server, "search", "2")["copies"]
            .as_u64()
            .unwrap_or(0);
        assert!(copies >= 1, "replica 2 copied the index");
        let before = writer_searches(&server);
        let (p50, p99, wall) = burst(&server, &questions, [9, 10]);
        let in_writer = writer_searches(&server) - before;
        let per: Vec<String> = (0..4)
            .map(|k| state(&server, "search", &k.to_string())["searches"].to_string())
            .collect();
        rows.push(format!(
            "| 4 replicas | {} | {CONCURRENT} | {p50:.0} | {p99:.0} | {wall:.0} | {in_writer} | {} |",
            index_chunks(&server),
            per.join(" / ")
        ));
    }
    println!("\n### {CONCURRENT} concurrent hybrid searches of one tenant (ms)\n");
    println!("| who answers | chunks | searches | p50 | p99 | wall | answered by the writer | answered per replica (since wake) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
    println!("\n| first search after a restart (ms) | |\n| --- | --- |");
    println!(
        "| a new replica's first search (answered by the writer; the replica starts its copy) | {:.0} / {:.0} |",
        new_replica.0, new_replica.1
    );
    println!(
        "| until both new replicas hold their copy (from the first warm-up search) | {:.0} |",
        new_replica.2
    );
    println!(
        "| a new replica's first search of its own (loads the vectors) | {:.0} / {:.0} |",
        new_replica.3, new_replica.4
    );
    println!(
        "| a replica that holds its copy (loads the vectors) | {:.0} |",
        new_replica.5
    );
}
