//! Chat benchmark through the gateway against `wrangler dev` with the
//! embedded generator: time to first event and to the full answer, over SSE
//! and over a WebSocket (50 turns on one session, answers capped at 40
//! tokens), and five rounds of 50 concurrent new sessions over WebSockets
//! (each sending one turn as soon as it is connected, and all sending one
//! turn together once all are connected); with each, the
//! runtime's CPU time per turn (`wrangler dev` and `workerd`, read from
//! `/proc`), which moves far less between runs than the latencies do, and
//! that time by kind of thread.
//!
//! Run with `cargo xtask bench`; `CHAT_ROUNDS` sets the concurrent series'
//! rounds (default 5); `BENCH_VARS` adds vars to the server's
//! (`"SEARCH_REPLICAS=2"`; the local configuration runs none). Results go
//! to stdout as Markdown.

use e2e::chat::Socket;
use e2e::http::send;
use e2e::{percentile, Deployment, PersistDir, Server};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

const TENANT: &str = "mrrainbowsmoke";
const TURNS: usize = 50;
const SESSIONS: usize = 50;
/// The concurrent series' rounds unless `CHAT_ROUNDS` says otherwise (more
/// rounds give a steadier p99: five give 250 samples, whose p99 is the
/// third-slowest turn).
const ROUNDS: usize = 5;

/// The concurrent series' rounds: `CHAT_ROUNDS`, or [`ROUNDS`].
fn round_count() -> usize {
    std::env::var("CHAT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}
/// How long a turn's bookkeeping (usage record, registry report) may take to
/// leave after the turn: about a second.
const SETTLE: Duration = Duration::from_millis(1500);

fn row(
    label: &str,
    first: &mut [f64],
    full: &mut [f64],
    tokens: &[usize],
    cpu: Option<Duration>,
) -> String {
    let avg_tokens = tokens.iter().sum::<usize>() as f64 / tokens.len().max(1) as f64;
    let cpu = cpu.map_or("-".to_owned(), |c| {
        format!(
            "{:.1}",
            c.as_secs_f64() * 1000.0 / first.len().max(1) as f64
        )
    });
    format!(
        "| {label} | {} | {avg_tokens:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {cpu} |",
        first.len(),
        percentile(first, 50.0),
        percentile(first, 99.0),
        percentile(full, 50.0),
        percentile(full, 99.0),
    )
}

/// The runtime's CPU time so far: in all (see [`Server::runtime_cpu`]) and
/// by kind of thread (see [`Server::runtime_cpu_by_thread`]).
struct Cpu {
    total: Option<Duration>,
    by_thread: BTreeMap<&'static str, Duration>,
}

impl Cpu {
    fn now(server: &Server) -> Self {
        Self {
            total: server.runtime_cpu(),
            by_thread: server.runtime_cpu_by_thread(),
        }
    }

    /// The CPU time spent since `self`, read once the turns' bookkeeping
    /// (usage records and registry reports, sent about a second after a
    /// turn) has run, so that it is counted too.
    fn since(&self, server: &Server) -> Self {
        std::thread::sleep(SETTLE);
        let now = Self::now(server);
        Self {
            total: now.total.zip(self.total).map(|(n, s)| n.saturating_sub(s)),
            by_thread: now
                .by_thread
                .iter()
                .map(|(kind, n)| {
                    let before = self.by_thread.get(kind).copied().unwrap_or_default();
                    (*kind, n.saturating_sub(before))
                })
                .collect(),
        }
    }
}

/// One SSE turn: (ms to the first event, ms to the end, message events).
fn sse_turn(server: &Server, session: &str, n: usize) -> (f64, f64, usize) {
    let body = json!({ "sessionId": session, "message": format!("how do lighthouses guide ships, question {n}?"), "maxTokens": 40 });
    let started = Instant::now();
    let response = ureq::post(&server.url("/api/chat"))
        .set("x-tenant-id", TENANT)
        .set("authorization", &server.bearer(TENANT))
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_string(&body.to_string())
        .expect("chat request");
    let mut reader = response.into_reader();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first = None;
    loop {
        let n = reader.read(&mut chunk).expect("read the stream");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if first.is_none() && buf.windows(2).any(|w| w == b"\n\n") {
            first = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let full = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("event: done"), "turn did not finish: {text}");
    (
        first.unwrap_or(full),
        full,
        text.matches("event: message").count(),
    )
}

/// One WebSocket turn on `socket`.
fn ws_turn(socket: &mut Socket, n: usize) -> (f64, f64, usize) {
    let started = Instant::now();
    socket.send(&json!({ "type": "message", "content": format!("how do lighthouses guide ships, question {n}?"), "maxTokens": 40 }).to_string());
    let first_event = socket.next_event();
    let first = started.elapsed().as_secs_f64() * 1000.0;
    let mut events = vec![first_event];
    if !matches!(events[0]["type"].as_str(), Some("done" | "error")) {
        events.extend(socket.events_until_end());
    }
    let full = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(events.last().unwrap()["type"], "done", "{events:?}");
    (
        first,
        full,
        events.iter().filter(|e| e["type"] == "message").count(),
    )
}

fn main() {
    let dir = PersistDir::new("bench-chat");
    // The writer answers the searches, as the local configuration has it;
    // `BENCH_VARS="SEARCH_REPLICAS=2"`: two replicas do, as deployed.
    let server = Server::start_bench(Deployment::Dedicated(TENANT), &dir, &[], &[]);
    let docs: Vec<_> = (0..20)
        .map(|i| json!({ "id": format!("light-{i}"), "text": format!("Lighthouse {i} guides ships past the reef with a rotating lamp and a foghorn. Keepers log every ship that passes.") }))
        .collect();
    let r = send(
        "POST",
        &server.url("/api/ingest"),
        &[
            ("x-tenant-id", TENANT),
            ("content-type", "application/json"),
            ("authorization", "Bearer e2e-ingest-token"),
        ],
        Some(json!({ "documents": docs }).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // No relevance floor for the search tool (`searchFloor: 0`): the same
    // passages reach the extractive generator as before the floor existed
    // (commit fa62616), so every answer is 40 `message` events as it was
    // then, and the figures stay comparable with that baseline.
    let r = send(
        "PATCH",
        &server.url("/admin/tenant"),
        &[
            ("x-tenant-id", TENANT),
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {}", e2e::ADMIN_TOKEN)),
        ],
        Some(br#"{"searchFloor":0}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Warm up the objects and the isolate.
    for i in 0..3 {
        sse_turn(&server, "warmup", i);
    }

    let mut rows = Vec::new();
    let (mut first, mut full, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_thread = Vec::new();
    let cpu = Cpu::now(&server);
    for n in 0..TURNS {
        let (a, b, t) = sse_turn(&server, "sse-bench", n);
        first.push(a);
        full.push(b);
        tokens.push(t);
    }
    let sse_cpu = cpu.since(&server);
    let label = format!("SSE, {TURNS} turns on one session");
    rows.push(row(&label, &mut first, &mut full, &tokens, sse_cpu.total));
    by_thread.push((label, sse_cpu.by_thread));

    let ws_url = format!(
        "{}/api/chat/ws?sessionId=ws-bench&key={}",
        server.base().replace("http://", "ws://"),
        server.key(TENANT)
    );
    let mut socket = Socket::connect(&ws_url, &[("x-tenant-id", TENANT)]).expect("connect");
    let (mut first, mut full, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    let cpu = Cpu::now(&server);
    for n in 0..TURNS {
        let (a, b, t) = ws_turn(&mut socket, n);
        first.push(a);
        full.push(b);
        tokens.push(t);
    }
    socket.close();
    let ws_cpu = cpu.since(&server);
    let label = format!("WebSocket, {TURNS} turns on one session");
    rows.push(row(&label, &mut first, &mut full, &tokens, ws_cpu.total));
    by_thread.push((label, ws_cpu.by_thread));

    // The concurrent series are ROUNDS rounds (or CHAT_ROUNDS) of SESSIONS
    // new sessions, one after another: one round is 50 samples, and its p50
    // varied twofold between runs of one build (the order in which the
    // runtime takes fifty connects and fifty turns); five rounds give a p99
    // that is not the slowest turn of one round, twenty a steadier one. The
    // runtime CPU and the threads' table cover all the rounds.
    // - "each connecting and sending at once": a session sends its turn as
    //   soon as it is connected, while the others still connect. The
    //   connects end together, about 300 ms into a round, on both sides of
    //   every comparison here; a session connected in the first 50 ms waits
    //   for its first event until they have, so this series' p99s are
    //   mostly how long the round's connects take.
    // - "all connected, then one turn each at once": the same sessions
    //   send their turns together once all fifty are connected, so the
    //   latencies are those of fifty concurrent turns alone.
    let base = server.base().replace("http://", "ws://");
    let key = server.key(TENANT);
    let mut walls = Vec::new();
    for (series, together) in [
        ("each connecting and sending at once", false),
        ("all connected, then one turn each at once", true),
    ] {
        let cpu = Cpu::now(&server);
        let rounds = concurrent(&base, &key, together);
        let concurrent_cpu = cpu.since(&server);
        let mut results = Vec::new();
        for mut round in rounds {
            walls.push(format!(
                "{series}: {:.2} s, connects done by {:.0} ms (median {:.0})",
                round.wall,
                round.connects.iter().copied().fold(0.0, f64::max),
                percentile(&mut round.connects, 50.0)
            ));
            results.extend(round.turns);
        }
        let mut first: Vec<f64> = results.iter().map(|r| r.0).collect();
        let mut full: Vec<f64> = results.iter().map(|r| r.1).collect();
        let tokens: Vec<usize> = results.iter().map(|r| r.2).collect();
        let label = format!(
            "WebSocket, {SESSIONS} new sessions {series}, {} rounds",
            round_count()
        );
        rows.push(row(
            &label,
            &mut first,
            &mut full,
            &tokens,
            concurrent_cpu.total,
        ));
        by_thread.push((label, concurrent_cpu.by_thread));
    }

    println!("\n### Chat latency through the gateway (ms)\n");
    println!("| what | turns | message events per answer | first event p50 | first event p99 | full answer p50 | full answer p99 | runtime CPU ms per turn |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\n{SESSIONS} new sessions, each round's wall time (connects included) and when its connects were done:\n"
    );
    for w in walls {
        println!("- {w}");
    }
    print_threads(&by_thread);
}

/// One round of [`concurrent`].
struct Round {
    /// Its wall time (s).
    wall: f64,
    /// When each session was connected (ms from the round's start).
    connects: Vec<f64>,
    /// Each turn's first event and full answer (ms from its sending) and
    /// its message events.
    turns: Vec<(f64, f64, usize)>,
}

/// [`round_count`] rounds of [`SESSIONS`] new sessions with one turn each, over
/// WebSockets at `base` with `key`, each round [`SETTLE`] after the last:
/// each session sends its turn once it is connected, or, `together`, once
/// every session of the round is.
fn concurrent(base: &str, key: &str, together: bool) -> Vec<Round> {
    let mut rounds = Vec::new();
    for round in 0..round_count() {
        // Each round starts once the last one's bookkeeping has left.
        std::thread::sleep(SETTLE);
        let started = Instant::now();
        let all_connected = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
        let threads: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let mode = if together { "together" } else { "at-once" };
                let url = format!("{base}/api/chat/ws?sessionId={mode}-{round}-{i}&key={key}");
                let all_connected = all_connected.clone();
                std::thread::spawn(move || {
                    let socket = Socket::connect(&url, &[("x-tenant-id", TENANT)]);
                    let connected = started.elapsed().as_secs_f64() * 1000.0;
                    if together {
                        // Every thread reaches the barrier, connected or not.
                        all_connected.wait();
                    }
                    let mut socket = socket.expect("connect");
                    let result = ws_turn(&mut socket, i);
                    socket.close();
                    (connected, result)
                })
            })
            .collect();
        let (connects, turns): (Vec<f64>, Vec<_>) = threads
            .into_iter()
            .map(|t| t.join().expect("a session thread"))
            .unzip();
        rounds.push(Round {
            wall: started.elapsed().as_secs_f64(),
            connects,
            turns,
        });
    }
    rounds
}

/// Each series' runtime CPU by kind of thread, in ms for the whole series
/// (its 1.5 s of settling included): which of the runtime's threads did the
/// work, e.g. V8 compiling the Worker's wasm in the background.
fn print_threads(series: &[(String, BTreeMap<&'static str, Duration>)]) {
    let mut kinds: Vec<&'static str> = series
        .iter()
        .flat_map(|(_, by_thread)| by_thread.keys().copied())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    println!("\n### The runtime's CPU by thread (ms per series, live threads)\n");
    println!("| what | {} |", kinds.join(" | "));
    println!("| --- |{}", " --- |".repeat(kinds.len()));
    for (label, by_thread) in series {
        let cells: Vec<String> = kinds
            .iter()
            .map(|kind| {
                let ms = by_thread.get(kind).copied().unwrap_or_default().as_millis();
                ms.to_string()
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}
