//! What the RateLimiter costs, against `wrangler dev`:
//!
//! 1. `POST /api/search` latency with a key that has no limits (the gateway
//!    skips the limiter), with a key that has an `rpm` limit too high to
//!    refuse anything (a steady caller: its limiter counts requests in
//!    advance for the gateway's isolate, see `gateway_worker::advances`),
//!    and with keys like it each used only every second or so (a sporadic
//!    caller: every search is admitted at its key's limiter first),
//!    interleaved one by one on the same index and query (a cached search,
//!    so the search itself is as short as it gets and the limiter's share
//!    shows);
//! 2. decisions per second one key's limiter sustains: 32 clients search
//!    with one key limited to 10 a minute for 10 s; every answer is a
//!    decision of that one object (almost all refusals, which the gateway
//!    answers without any search), so the rate is the object's ceiling
//!    behind one gateway.
//!
//! 3. the same decisions in the limiter's pure core, natively: what one
//!    object's logic and its state's serialisation (the one JSON row it
//!    writes: before the answer for a reservation, within a second after
//!    it for a plain request's spend) cost per decision, without the
//!    runtime around it.
//!
//! Run with `cargo bench -p e2e --bench limits` after `cargo xtask build`.
//! Results go to stdout as Markdown.

use e2e::http::send;
use e2e::{percentile, Deployment, PersistDir, Server};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "mrrainbowsmoke";
const SEARCHES: usize = 400;
const CLIENTS: usize = 32;
const HAMMER: Duration = Duration::from_secs(10);
/// Keys taken in turn for the sporadic callers (each used every 40 rounds
/// of 4 searches: about 2 s apart).
const SPORADIC: usize = 40;

fn key(server: &Server, limits: serde_json::Value) -> String {
    let r = server.as_operator(
        TENANT,
        "POST",
        "/admin/keys",
        Some(json!({ "name": "bench", "scopes": ["search"], "limits": limits })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["key"].as_str().expect("key").to_owned()
}

/// One search: (ms, status).
fn search(server: &Server, key: &str) -> (f64, u16) {
    let auth = format!("Bearer {key}");
    let started = Instant::now();
    let r = send(
        "POST",
        &server.url("/api/search"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(br#"{"query":"how often is the lighthouse lamp trimmed?","topK":3}"#),
    );
    (started.elapsed().as_secs_f64() * 1e3, r.status)
}

/// Decisions per second of the pure core: admits of one request each at
/// a key with `rpm: 600`, the clock advancing 1 ms per decision (so the
/// bucket refills and some are admitted), the state serialised after each
/// (what the shell writes).
fn core_decisions() -> (usize, f64, usize) {
    use actors::limiter::{LimiterCore, Outcome};
    use protocol::limits::{Admit, Budget, LimiterRequest, LimiterResponse, Limits, TokenUsage};
    const N: usize = 200_000;
    let admit = Admit {
        limits: Limits {
            rpm: Some(600),
            ..Limits::default()
        },
        budget: Budget::default(),
        tenant_limits: Limits::default(),
        count_request: true,
        estimate: TokenUsage::default(),
        model: None,
        price: None,
        turn: false,
        hold_ms: 60_000,
        advance: 0,
        unspent: 0,
    };
    let mut core = LimiterCore::new();
    let mut admitted = 0;
    let mut bytes = 0;
    let started = Instant::now();
    for i in 0..N {
        let (outcome, _) = core.handle(LimiterRequest::Admit(admit.clone()), 1_000_000 + i as u64);
        if let Outcome::Reply(Ok(LimiterResponse::Admitted(_))) = outcome {
            admitted += 1;
        }
        bytes += serde_json::to_string(core.state()).expect("state").len();
    }
    let secs = started.elapsed().as_secs_f64();
    (admitted, N as f64 / secs, bytes / N)
}

fn main() {
    let (admitted, rate, row) = core_decisions();
    println!("| the pure core, natively (`rpm: 600`, 1 ms apart) | decisions/s | admitted of 200,000 | state row |");
    println!("|---|---|---|---|");
    println!("| admit + state serialised | {rate:.0} | {admitted} | {row} bytes |\n");
    let dir = PersistDir::new("bench-limits");
    let server = Server::start_bench(Deployment::Dedicated(TENANT), &dir, &[], &[]);
    server.ingest(
        TENANT,
        json!([
            { "id": "lamp", "text": "The keeper trims the lighthouse lamp's wick every evening before dusk." },
            { "id": "fog", "text": "In fog the keeper sounds the horn every thirty seconds until it lifts." }
        ]),
    );
    let free = key(&server, json!({}));
    let limited = key(&server, json!({ "rpm": 1_000_000 }));
    // Each used once every `SPORADIC` rounds (well over a second apart), so
    // its isolate never asks for an advance.
    let sporadic: Vec<String> = (0..SPORADIC)
        .map(|_| key(&server, json!({ "rpm": 1_000_000 })))
        .collect();
    // The same without limits: their verifications leave the isolate's
    // cache (1 s) between uses too, so only the limiter call differs.
    let sporadic_free: Vec<String> = (0..SPORADIC).map(|_| key(&server, json!({}))).collect();
    // Warm every path (isolate caches, the limiter objects, the search cache).
    for _ in 0..20 {
        assert_eq!(search(&server, &free).1, 200);
        assert_eq!(search(&server, &limited).1, 200);
    }
    for k in sporadic.iter().chain(&sporadic_free) {
        assert_eq!(search(&server, k).1, 200);
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut alone, mut asked) = (Vec::new(), Vec::new());
    for i in 0..SEARCHES {
        let (ms, status) = search(&server, &free);
        assert_eq!(status, 200);
        without.push(ms);
        let (ms, status) = search(&server, &limited);
        assert_eq!(status, 200);
        with.push(ms);
        let (ms, status) = search(&server, &sporadic_free[i % SPORADIC]);
        assert_eq!(status, 200);
        alone.push(ms);
        let (ms, status) = search(&server, &sporadic[i % SPORADIC]);
        assert_eq!(status, 200);
        asked.push(ms);
    }
    println!(
        "| `POST /api/search` (cached), {SEARCHES} each, interleaved | p50 ms | p90 ms | p99 ms |"
    );
    println!("|---|---|---|---|");
    for (label, v) in [
        ("steady: key without limits (no limiter call)", &mut without),
        ("steady: key with `rpm` (advances)", &mut with),
        ("sporadic: keys without limits", &mut alone),
        (
            "sporadic: keys with `rpm` (a limiter call each)",
            &mut asked,
        ),
    ] {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} |",
            percentile(v, 50.0),
            percentile(v, 90.0),
            percentile(v, 99.0)
        );
    }
    println!(
        "\nThe limiter adds {:.2} ms to the p50 of a steady caller, {:.2} ms to a sporadic one's.\n",
        percentile(&mut with, 50.0) - percentile(&mut without, 50.0),
        percentile(&mut asked, 50.0) - percentile(&mut alone, 50.0),
    );

    let hammered = key(&server, json!({ "rpm": 10 }));
    let server = Arc::new(server);
    let (admitted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + HAMMER;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (server, key) = (Arc::clone(&server), hammered.clone());
            let (admitted, refused) = (Arc::clone(&admitted), Arc::clone(&refused));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match search(&server, &key).1 {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let (a, r) = (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!("| one key's limiter, {CLIENTS} clients, {} s | decisions | admitted | refused | decisions/s |", HAMMER.as_secs());
    println!("|---|---|---|---|---|");
    println!(
        "| `rpm: 10` | {} | {a} | {r} | {:.0} |",
        a + r,
        (a + r) as f64 / HAMMER.as_secs_f64()
    );
    // A full bucket of 10, and one more each 6 s of the run (10 a minute).
    let most = 10 + HAMMER.as_secs() as usize / 6 + 1;
    assert!(a <= most, "never more than the quota: {a} > {most}");
}
