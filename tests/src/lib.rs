//! The end-to-end harness: starts the built Worker under the real runtime
//! (`wrangler dev`, i.e. workerd) on a free loopback port with a fresh
//! `--persist-to` folder, waits until it answers, and stops exactly the
//! processes it started (by process group, also when a test panics).
//!
//! The Worker must be built first: `cargo xtask test` does that before it runs
//! these tests (or `cargo xtask build`, then `cargo test -p e2e`).

pub mod chat;
pub mod corpus;
pub mod http;
pub mod webdriver;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// The ingest token every test server is started with.
pub const INGEST_TOKEN: &str = "e2e-ingest-token";

/// The environment variable with which wrangler (4.x) runs a local
/// collector of the Worker's invocations and spans (default: on).
const LOCAL_OBSERVABILITY: &str = "X_LOCAL_OBSERVABILITY";

/// Which deployment to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// A tenant's dedicated Worker (`tenants/<id>/wrangler.toml`).
    Dedicated(&'static str),
    /// The shared Worker (`tenants/_shared/wrangler.toml`).
    Shared,
}

impl Deployment {
    fn config(self) -> PathBuf {
        match self {
            Deployment::Dedicated(id) => xtask::config_path(Some(id)),
            Deployment::Shared => xtask::config_path(None),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Deployment::Dedicated(id) => id,
            Deployment::Shared => "shared",
        }
    }

    /// A tenant this deployment serves, for readiness probes.
    fn probe_tenant(self) -> &'static str {
        match self {
            Deployment::Dedicated(id) => id,
            Deployment::Shared => "mrrainbowsmoke",
        }
    }
}

/// A folder for one server's state, removed when dropped.
#[derive(Debug)]
pub struct PersistDir {
    path: PathBuf,
}

/// Milliseconds since the Unix epoch, as the runtime's clock counts them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PersistDir {
    /// A new, empty folder under the system's temporary directory.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir()
            .join("tenant-platform-e2e")
            .join(format!("{label}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the persist folder");
        Self { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PersistDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `wrangler dev`; dropping it stops it and everything it spawned.
#[derive(Debug)]
pub struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    deployment: Deployment,
    /// Owned state folder of a server started by [`shared`].
    _owned_dir: Option<PersistDir>,
    /// The keys made by [`Server::key`], per tenant.
    keys: Mutex<Vec<(String, String)>>,
}

impl Server {
    /// Starts `deployment` with its state in `dir` and waits until it answers.
    pub fn start(deployment: Deployment, dir: &PersistDir) -> Self {
        Self::start_in(deployment, dir.path(), None, TEST_VARS, &[])
    }

    /// Starts `deployment` with extra vars (`--var NAME:VALUE`), such as a
    /// lowered bound, with its state in `dir`.
    pub fn start_with_vars(
        deployment: Deployment,
        dir: &PersistDir,
        vars: &[(&str, &str)],
    ) -> Self {
        Self::start_in(deployment, dir.path(), None, TEST_VARS, vars)
    }

    /// Starts a bench's server: the vars of [`bench_vars`] for `base`, then
    /// `fixed`, which `BENCH_VARS` does not change; the local configuration's
    /// for the rest (not [`TEST_VARS`]).
    pub fn start_bench(
        deployment: Deployment,
        dir: &PersistDir,
        base: &[(&str, &str)],
        fixed: &[(&str, &str)],
    ) -> Self {
        let vars = bench_vars(base);
        let vars: Vec<(&str, &str)> = vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(fixed.iter().copied())
            .collect();
        Self::start_in(deployment, dir.path(), None, &[], &vars)
    }

    /// Starts `deployment` with the vars `defaults`, then `extra_vars`
    /// ([`server_vars`]).
    fn start_in(
        deployment: Deployment,
        dir: &Path,
        owned: Option<PersistDir>,
        defaults: &[(&str, &str)],
        extra_vars: &[(&str, &str)],
    ) -> Self {
        let vars = server_vars(defaults, extra_vars);
        let shim = xtask::worker_shim();
        assert!(
            shim.is_file(),
            "{} is missing: build the Worker first (cargo xtask build), or run everything with cargo xtask test",
            shim.display()
        );
        let env_file = dir.join("e2e.dev.vars");
        std::fs::write(
            &env_file,
            format!("ADMIN_TOKEN={ADMIN_TOKEN}\nINGEST_TOKEN={INGEST_TOKEN}\n"),
        )
        .expect("write the secrets file");
        let state = dir.join("state");
        // Another test's server may take a port between `free_port` and
        // wrangler binding it: then ours exits at once (and the other one
        // may answer our probes), and a second pair of ports is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = Self::spawn(deployment, &env_file, &state, &vars);
            match server.wait_ready() {
                Ok(()) => {
                    server._owned_dir = owned;
                    return server;
                }
                Err(log)
                    if attempt < 3
                        && (log.contains("Address already in use")
                            || log.starts_with("another server")) =>
                {
                    continue
                }
                Err(log) => panic!(
                    "wrangler dev exited early; log {}:\n{log}",
                    server.log.display()
                ),
            }
        }
    }

    /// Starts `wrangler dev` for `deployment` on a free port.
    fn spawn(
        deployment: Deployment,
        env_file: &Path,
        state: &Path,
        vars: &[(String, String)],
    ) -> Self {
        let env_file = env_file.to_path_buf();
        let state = state.to_path_buf();
        let port = free_port();
        let opts = xtask::wrangler::DevOptions {
            config: deployment.config(),
            ip: "127.0.0.1".into(),
            port,
            inspector_port: Some(free_port()),
            persist_to: state,
            env_file,
            vars: vars.to_vec(),
        };
        let log_dir = xtask::repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/e2e-logs");
        let log = log_dir.join(format!(
            "{}-{}-{port}.log",
            deployment.label(),
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log).expect("create the server log");
        let mut cmd = xtask::wrangler::dev(&opts);
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            // Logs of wrangler itself go next to ours, not to the home folder.
            .env("WRANGLER_LOG_PATH", &log_dir);
        // Without wrangler's local observability (on by default): it streams
        // every invocation and span of the Worker to a collector in the same
        // runtime, which took 12 % of the isolate's CPU during ingest and
        // does not exist deployed. `X_LOCAL_OBSERVABILITY=true` keeps it.
        if std::env::var_os(LOCAL_OBSERVABILITY).is_none() {
            cmd.env(LOCAL_OBSERVABILITY, "false");
        }
        // Its own process group, so that stopping it also stops the workerd
        // it spawns, and nothing else.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .expect("start wrangler dev (run cargo xtask setup first)");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            deployment,
            _owned_dir: None,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// An API key of `tenant` with every scope (made once per server through
    /// the operator's `POST /admin/keys`, as a tenant's operator would).
    pub fn key(&self, tenant: &str) -> String {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = keys.iter().find(|(t, _)| t == tenant) {
            return key.clone();
        }
        let key = self.create_key(tenant, &["search", "chat", "ingest", "admin"]);
        keys.push((tenant.to_owned(), key.clone()));
        key
    }

    /// The tenant a dedicated server serves (for a shared one, the first listed).
    pub fn tenant(&self) -> &'static str {
        self.deployment.probe_tenant()
    }

    /// Makes `key` the one [`Server::key`] returns for `tenant` (a key made
    /// before a restart, which the restarted server still knows).
    pub fn adopt_key(&self, tenant: &str, key: String) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|(t, _)| t != tenant);
        keys.push((tenant.to_owned(), key));
    }

    /// `authorization: Bearer <key>` for [`Server::key`].
    pub fn bearer(&self, tenant: &str) -> String {
        format!("Bearer {}", self.key(tenant))
    }

    /// Ingests `docs` (a JSON array) for `tenant` with the legacy ingest
    /// token and checks the small job finished before the answer (200).
    pub fn ingest(&self, tenant: &str, docs: serde_json::Value) {
        let r = http::send(
            "POST",
            &self.url("/api/ingest"),
            &[
                ("x-tenant-id", tenant),
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {INGEST_TOKEN}")),
            ],
            Some(
                serde_json::json!({ "documents": docs })
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(
            r.status, 200,
            "small jobs finish before the answer: {}",
            r.body
        );
    }

    /// A request to `path` of `tenant` with the operator's token (and a JSON
    /// `body`, if any).
    pub fn as_operator(
        &self,
        tenant: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> http::Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("x-tenant-id", tenant), ("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| b.to_string());
        http::send(
            method,
            &self.url(path),
            &headers,
            body.as_deref().map(str::as_bytes),
        )
    }

    /// A request to `path` with API key `key` (and a JSON `body`, if any);
    /// the tenant is the key's.
    pub fn with_key(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> http::Reply {
        let auth = format!("Bearer {key}");
        let body = body.map(|b| b.to_string());
        http::send(
            method,
            &self.url(path),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_deref().map(str::as_bytes),
        )
    }

    /// Waits (up to 2 s) until the limiter `name` of `tenant` (a key id,
    /// `anon-<digest>` or `tenant-budget`) holds no reservation: a turn's
    /// session settles its reservation just after `done`. Whether it did.
    pub fn limiter_idle(&self, tenant: &str, name: &str) -> bool {
        (0..40).any(|_| {
            let path = format!("/admin/actors/limiter/{name}");
            let r = self.as_operator(tenant, "GET", &path, None);
            assert_eq!(r.status, 200, "{}", r.body);
            let idle = r.json()["state"]["reservations"]
                .as_array()
                .is_some_and(|v| v.is_empty());
            if !idle {
                std::thread::sleep(Duration::from_millis(50));
            }
            idle
        })
    }

    /// A new key of `tenant` with `scopes`.
    pub fn create_key(&self, tenant: &str, scopes: &[&str]) -> String {
        let body = serde_json::json!({ "name": "e2e", "scopes": scopes });
        let r = self.as_operator(tenant, "POST", "/admin/keys", Some(body));
        assert_eq!(r.status, 201, "create a key for {tenant}: {}", r.body);
        r.json()["key"]
            .as_str()
            .expect("the new key in the answer")
            .to_owned()
    }

    /// Waits until the server answers; `Err` with the log's end when
    /// wrangler exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = self.url("/health");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status})\n{}", self.log_tail()));
            }
            let probe = ureq::get(&url)
                .set("x-tenant-id", self.deployment.probe_tenant())
                .timeout(Duration::from_secs(5))
                .call();
            // An answer counts once our wrangler says it listens there: a
            // server another test started on the same port may answer first.
            let ours = || {
                std::fs::read_to_string(&self.log)
                    .is_ok_and(|log| log.contains(&format!("Ready on {}", self.base)))
            };
            match probe {
                Ok(_) | Err(ureq::Error::Status(..)) if ours() => return Ok(()),
                Ok(_) | Err(ureq::Error::Status(..)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(_) | Err(ureq::Error::Status(..)) => {
                    return Err(format!("another server answers on {}", self.base))
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!(
                    "wrangler dev did not answer within 120 s ({e}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                ),
            }
        }
    }

    /// The server's address, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log file (wrangler dev and the Worker's console).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// CPU time (user and system) spent so far by the server's processes:
    /// `wrangler dev`'s proxy and the `workerd` running the Worker (its
    /// process group). Differences of it between two points of a bench are
    /// the runtime's own work, much steadier than wall-clock latency on a
    /// shared machine. `None` where `/proc` is not Linux's.
    pub fn runtime_cpu(&self) -> Option<Duration> {
        process_group_cpu(self.child.id())
    }

    /// [`Self::runtime_cpu`] by kind of thread (see [`thread_kind`]): the
    /// runtime's main thread, V8's background threads, wrangler's.
    pub fn runtime_cpu_by_thread(&self) -> BTreeMap<&'static str, Duration> {
        process_group_cpu_by_thread(self.child.id())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn stop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &pgid])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is left (workerd may outlive wrangler briefly).
        signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server of `deployment` shared by the tests of one test binary that run
/// at the same time; it stops when the last of them drops its handle.
pub fn shared(deployment: Deployment) -> Arc<Server> {
    static SERVERS: Mutex<Vec<(Deployment, Weak<Server>)>> = Mutex::new(Vec::new());
    let mut servers = SERVERS.lock().unwrap_or_else(|p| p.into_inner());
    servers.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(server) = servers
        .iter()
        .find(|(d, _)| *d == deployment)
        .and_then(|(_, weak)| weak.upgrade())
    {
        return server;
    }
    let dir = PersistDir::new(deployment.label());
    let path = dir.path().to_path_buf();
    let server = Arc::new(Server::start_in(
        deployment,
        &path,
        Some(dir),
        TEST_VARS,
        &[],
    ));
    servers.push((deployment, Arc::downgrade(&server)));
    server
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

/// The `p`th percentile (0 to 100) of `v`, which it sorts; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len().saturating_sub(1)) as f64).round() as usize;
    v.get(rank.min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The vars a test's server starts with unless the test sets them:
/// - `FAULT_INJECTION=enabled`: the tests inject embedder and model
///   failures (deployed configurations never set it, and it only works with
///   the embedded providers);
/// - `SEARCH_REPLICAS=2`, the deployed default: the local configuration
///   runs none (`tenants/*/wrangler.toml`, `[env.local.vars]`), and with two
///   every test's searches and writes also go through the replicas.
pub const TEST_VARS: &[(&str, &str)] = &[("FAULT_INJECTION", "enabled"), ("SEARCH_REPLICAS", "2")];

/// The vars a server starts with: `defaults`, then `extra`, each replacing
/// an earlier one of the same name.
fn server_vars(defaults: &[(&str, &str)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (name, value) in defaults.iter().chain(extra) {
        vars.retain(|(n, _)| n != name);
        vars.push(((*name).to_owned(), (*value).to_owned()));
    }
    vars
}

/// A bench's server vars: `FAULT_INJECTION=disabled` (a bench measures
/// what a deployment runs, without the tests' hooks: the embedder's
/// injected failures cost a storage read per indexed document; the rest as
/// the local configuration has it, so no search replicas),
/// `REQUEST_LOG=off` (wrangler's Node process would print a line per
/// request while it proxies them: see `gateway_worker::observe`), `base`,
/// then those of `BENCH_VARS` (`"NAME=VALUE NAME=VALUE"`, e.g.
/// `SEARCH_REPLICAS=2` or `REQUEST_LOG=on`; a later one wins).
pub fn bench_vars(base: &[(&str, &str)]) -> Vec<(String, String)> {
    let extra = std::env::var("BENCH_VARS").unwrap_or_default();
    let mut vars: Vec<(String, String)> = [("FAULT_INJECTION", "disabled"), ("REQUEST_LOG", "off")]
        .iter()
        .chain(base)
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    for pair in extra.split_whitespace() {
        let (name, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("BENCH_VARS: {pair:?} is not NAME=VALUE"));
        vars.push((name.to_owned(), value.to_owned()));
    }
    vars
}

/// One line of `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`: the
/// command name, the process group (field 5) and the CPU ticks (user and
/// system, fields 14 and 15, in the kernel's fixed 100 ticks a second for
/// user space).
struct Stat {
    name: String,
    pgrp: u32,
    ticks: u64,
}

fn read_stat(path: &Path) -> Option<Stat> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: the fields that
    // follow start after its last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // rest: state(3) ppid(4) pgrp(5) ... utime(14) stime(15)
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        name,
        pgrp: u32::try_from(field(2)?).ok()?,
        ticks: field(11)? + field(12)?,
    })
}

/// The live processes of process group `pgid`: each one's folder in `/proc`
/// and its stat.
fn group_processes(pgid: u32) -> Vec<(PathBuf, Stat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let stat = read_stat(&entry.path().join("stat"))?;
            (stat.pgrp == pgid).then(|| (entry.path(), stat))
        })
        .collect()
}

/// CPU time of the live processes of process group `pgid`, from
/// `/proc/<pid>/stat`.
pub fn process_group_cpu(pgid: u32) -> Option<Duration> {
    let processes = group_processes(pgid);
    let found = !processes.is_empty();
    let ticks: u64 = processes.iter().map(|(_, stat)| stat.ticks).sum();
    found.then(|| Duration::from_millis(ticks * 10))
}

/// The kind of a thread of the local runtime's processes, for
/// [`process_group_cpu_by_thread`].
pub fn thread_kind(process: &str, thread: &str) -> &'static str {
    match (process, thread) {
        ("workerd", "workerd") => "workerd main thread",
        // V8's platform workers ("V8 DefaultWorker", cut to 15 bytes):
        // its optimising compiler and the concurrent parts of its GC.
        ("workerd", t) if t.starts_with("V8 ") => "V8 background threads",
        ("workerd", _) => "workerd, other threads",
        ("node", _) => "wrangler (node)",
        ("esbuild", _) => "esbuild (wrangler's bundler)",
        _ => "other",
    }
}

/// CPU time of the live threads of process group `pgid`, summed by
/// [`thread_kind`], from `/proc/<pid>/task/<tid>/stat`. The time of threads
/// that have ended is missing here (it is in [`process_group_cpu`]).
pub fn process_group_cpu_by_thread(pgid: u32) -> BTreeMap<&'static str, Duration> {
    let mut by_kind = BTreeMap::new();
    for (folder, process) in group_processes(pgid) {
        let Ok(tasks) = std::fs::read_dir(folder.join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Some(thread) = read_stat(&task.path().join("stat")) {
                *by_kind
                    .entry(thread_kind(&process.name, &thread.name))
                    .or_insert(Duration::ZERO) += Duration::from_millis(thread.ticks * 10);
            }
        }
    }
    by_kind
}

#[cfg(test)]
mod vars_tests {
    use super::{bench_vars, server_vars, TEST_VARS};

    #[test]
    fn a_later_var_replaces_an_earlier_one() {
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        // A test's server has the tests' hooks and the deployed replicas,
        // unless the test says otherwise.
        assert_eq!(
            server_vars(TEST_VARS, &[]),
            owned(&[("FAULT_INJECTION", "enabled"), ("SEARCH_REPLICAS", "2")])
        );
        assert_eq!(
            server_vars(TEST_VARS, &[("SEARCH_REPLICAS", "0")]),
            owned(&[("FAULT_INJECTION", "enabled"), ("SEARCH_REPLICAS", "0")])
        );
        assert_eq!(
            server_vars(
                TEST_VARS,
                &[("FAULT_INJECTION", "disabled"), ("A", "1"), ("A", "2")]
            ),
            owned(&[
                ("SEARCH_REPLICAS", "2"),
                ("FAULT_INJECTION", "disabled"),
                ("A", "2")
            ])
        );
        // A bench's server runs without the tests' hooks, and with the local
        // configuration's replicas (none) unless BENCH_VARS sets them.
        let bench = bench_vars(&[("EMBEDDED_MAX_CHUNKS", "20000")]);
        let bench: Vec<(&str, &str)> = bench
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let started = server_vars(&[], &bench);
        assert!(started.contains(&("FAULT_INJECTION".to_owned(), "disabled".to_owned())));
        if std::env::var_os("BENCH_VARS").is_none() {
            assert!(started.contains(&("REQUEST_LOG".to_owned(), "off".to_owned())));
        }
        assert!(!started.contains(&("FAULT_INJECTION".to_owned(), "enabled".to_owned())));
        if std::env::var_os("BENCH_VARS").is_none() {
            assert!(!started.iter().any(|(n, _)| n == "SEARCH_REPLICAS"));
        }
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn a_busy_process_groups_cpu_time_grows_and_an_empty_group_has_none() {
        use std::os::unix::process::CommandExt;
        let mut busy = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .process_group(0)
            .spawn()
            .expect("start a busy shell");
        let pgid = busy.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = None;
        while Instant::now() < deadline {
            seen = process_group_cpu(pgid);
            if seen.is_some_and(|c| c >= Duration::from_millis(100)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let by_thread = process_group_cpu_by_thread(pgid);
        let _ = busy.kill();
        let _ = busy.wait();
        let seen = seen.expect("the group's process is found in /proc");
        assert!(seen >= Duration::from_millis(100), "{seen:?}");
        // The shell is not the runtime: all its time is "other".
        assert_eq!(by_thread.keys().copied().collect::<Vec<_>>(), ["other"]);
        assert!(
            by_thread["other"] >= Duration::from_millis(100),
            "{by_thread:?}"
        );
        // The shell is gone (reaped): nothing of its group is left.
        assert_eq!(process_group_cpu(pgid), None);
        assert!(process_group_cpu_by_thread(pgid).is_empty());
    }

    #[test]
    fn the_runtimes_threads_are_told_apart() {
        assert_eq!(thread_kind("workerd", "workerd"), "workerd main thread");
        assert_eq!(
            thread_kind("workerd", "V8 DefaultWorke"),
            "V8 background threads"
        );
        assert_eq!(
            thread_kind("workerd", "kj-thread"),
            "workerd, other threads"
        );
        assert_eq!(thread_kind("node", "libuv-worker"), "wrangler (node)");
        assert_eq!(
            thread_kind("esbuild", "esbuild"),
            "esbuild (wrangler's bundler)"
        );
        assert_eq!(thread_kind("sh", "sh"), "other");
    }
}
