//! WebSocket upgrades alone through the gateway against `wrangler dev`:
//! rounds of 50 new sessions connecting at once, with no turn, each round
//! 1.5 s after the last (as the chat bench's concurrent series). It prints,
//! as Markdown, when a round's connects were done (the median over the
//! rounds, and the median connect), and the runtime's CPU time per connect
//! by kind of thread. It separates what an upgrade costs (the key check,
//! the tenant's policy, the admission, a new session's object and schema)
//! from the turns that share the runtime's thread with it in the chat
//! bench's "at once" series.
//!
//! Run with `cargo bench -p e2e --bench connects`; `CONNECT_ROUNDS` sets
//! the rounds (default 20); `BENCH_VARS` adds vars to the server's.

use e2e::chat::Socket;
use e2e::{percentile, Deployment, PersistDir, Server};
use std::time::{Duration, Instant};

const TENANT: &str = "mrrainbowsmoke";
const SESSIONS: usize = 50;
const ROUNDS: usize = 20;
/// Between rounds, as the chat bench's concurrent series.
const SETTLE: Duration = Duration::from_millis(1500);

fn main() {
    let rounds = std::env::var("CONNECT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(ROUNDS);
    let dir = PersistDir::new("bench-connects");
    let server = Server::start_bench(Deployment::Dedicated(TENANT), &dir, &[], &[]);
    let base = server.base().replace("http://", "ws://");
    let key = server.key(TENANT);
    let url = |session: &str| format!("{base}/api/chat/ws?sessionId={session}&key={key}");
    // Warm up the isolate and the gateway's caches.
    for i in 0..3 {
        Socket::connect(&url(&format!("warmup-{i}")), &[("x-tenant-id", TENANT)])
            .expect("connect")
            .close();
    }
    let before = server.runtime_cpu_by_thread();
    let (mut done_by, mut medians) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(SETTLE);
        let started = Instant::now();
        let threads: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let url = url(&format!("connect-{round}-{i}"));
                std::thread::spawn(move || {
                    let socket =
                        Socket::connect(&url, &[("x-tenant-id", TENANT)]).expect("connect");
                    (started.elapsed().as_secs_f64() * 1000.0, socket)
                })
            })
            .collect();
        let connected: Vec<(f64, Socket)> = threads
            .into_iter()
            .map(|t| t.join().expect("a session thread"))
            .collect();
        let mut times: Vec<f64> = connected.iter().map(|(t, _)| *t).collect();
        done_by.push(times.iter().copied().fold(0.0, f64::max));
        medians.push(percentile(&mut times, 50.0));
        for (_, socket) in connected {
            socket.close();
        }
    }
    // The closes' work, counted too.
    std::thread::sleep(SETTLE);
    let after = server.runtime_cpu_by_thread();
    let connects = (rounds * SESSIONS) as f64;
    println!("\n### {SESSIONS} WebSocket upgrades at once, no turn, {rounds} rounds\n");
    println!(
        "- a round's connects done by {:.0} ms (median of the rounds); its median connect {:.0} ms",
        percentile(&mut done_by, 50.0),
        percentile(&mut medians, 50.0)
    );
    for (kind, total) in &after {
        let spent = total.saturating_sub(before.get(kind).copied().unwrap_or_default());
        println!(
            "- {kind}: {:.2} ms of CPU per connect",
            spent.as_secs_f64() * 1000.0 / connects
        );
    }
}
