//! `cargo xtask <task>`: the project's two commands and their helpers.
//!
//! - `cargo xtask dev [--tenant ID | --shared] [--port N] [--persist DIR]`:
//!   installs what is missing, builds the Worker, and runs it locally under
//!   `wrangler dev` (default: tenant mrrainbowsmoke on http://localhost:8787).
//! - `cargo xtask test`: fmt, clippy (native and wasm32), native tests, the
//!   Worker build, then the end-to-end tests against `wrangler dev`.
//! - `cargo xtask build`, `cargo xtask setup`, `cargo xtask size`,
//!   `cargo xtask deploy (ID | --all) [--dry-run]`.
//! - `cargo xtask tenant new ID`, `cargo xtask provision ID [--dry-run]`:
//!   a new tenant's configuration, and its Cloudflare resources.
//!
//! Every task that needs the Worker builds it only when one of its inputs
//! changed since the last successful build (`xtask::stamp`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use xtask::toolchain::{run, step, ToolError, Toolchain, WASM_TARGET};
use xtask::{config_path, repo_root, tenant_ids, vectorize, wrangler};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  dev [--tenant ID | --shared] [--port N] [--persist DIR]
        build and run the platform locally (default: --tenant mrrainbowsmoke --port 8787)
  test  fmt, clippy (native + wasm32), native tests, Worker build, end-to-end tests
  build install what is missing and build the Worker (skipped when no input changed
        since the last build; every task below that builds does the same)
  setup install what is missing (wasm32 target, wasm-bindgen-cli, worker-build, npm packages)
  size  build and report the bundle size of every tenant (wrangler deploy --dry-run)
  bench build, then run the benchmarks against wrangler dev (results: docs/benchmarks.md)
  deploy (ID | --all) [--dry-run]
        build and deploy one tenant or all of them (needs a Cloudflare login), after
        creating the Vectorize metadata indexes its filters need; --dry-run prints
        those commands and validates the bundle, uploading nothing
  tenant new ID
        write tenants/ID/wrangler.toml from tenants/_template/wrangler.toml and add ID
        to the shared configuration's TENANTS (refuses an invalid or existing id)
  provision ID [--dry-run]
        create what tenant ID needs on Cloudflare (KV namespace, Vectorize index and its
        metadata indexes, AI Gateway, ADMIN_TOKEN and INGEST_TOKEN secrets), keeping what
        exists, and write the KV namespace id into its configuration; needs
        CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID; --dry-run prints the plan only";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dev") => dev(&args[1..]),
        Some("test") => test(),
        Some("build") => Toolchain::ensure().and_then(|t| t.build_worker()),
        Some("setup") => Toolchain::ensure().map(|_| ()),
        Some("size") => size(),
        Some("bench") => bench(),
        Some("deploy") => deploy(&args[1..]),
        Some("tenant") => tenant(&args[1..]),
        Some("provision") => provision(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(ToolError(USAGE.into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

fn test() -> Result<(), ToolError> {
    let started = std::time::Instant::now();
    let tools = Toolchain::ensure()?;
    step("cargo fmt --check");
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    step("cargo clippy (native)");
    run(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy (native)",
    )?;
    step("cargo clippy (wasm32)");
    run(
        cargo().args([
            "clippy",
            "--all-targets",
            "--target",
            WASM_TARGET,
            "-p",
            "protocol",
            "-p",
            "actors",
            "-p",
            "gateway-worker",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy (wasm32)",
    )?;
    step("native tests");
    let mut counts = run_tests(
        cargo().args(["test", "--workspace", "--exclude", "e2e"]),
        "native tests",
    )?;
    step("wasm tests (wasm-bindgen-test in Node: SIMD search, JS glue)");
    let runner = tools
        .wasm_bindgen
        .with_file_name("wasm-bindgen-test-runner");
    counts = counts.add(run_tests(
        cargo()
            .args(["test", "--target", WASM_TARGET, "-p", "actors", "--lib"])
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner)
            .env("PATH", tools.path_env()),
        "wasm tests",
    )?);
    step("building the Worker");
    tools.build_worker()?;
    step("cargo xtask deploy --all --dry-run");
    deploy(&["--all".into(), "--dry-run".into()])?;
    // The dashboard's test drives a real browser.
    xtask::browser::Browser::ensure()?;
    step("schemathesis (the schema fuzzer of the end-to-end tests)");
    xtask::toolchain::ensure_schemathesis()?;
    step("end-to-end tests against wrangler dev");
    counts = counts.add(run_tests(
        cargo().args(["test", "-p", "e2e", "--tests"]),
        "end-to-end tests",
    )?);
    step(&format!(
        "all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    println!("xtask: {} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// Tests run by the `cargo test` invocations of a task.
#[derive(Default, Clone, Copy)]
struct TestCounts {
    passed: u64,
    failed: u64,
}

impl TestCounts {
    fn add(self, other: Self) -> Self {
        Self {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
        }
    }
}

/// Runs a `cargo test` command, passing its output through and adding up its
/// `test result:` lines, so the task can end on one total.
fn run_tests(cmd: &mut Command, what: &str) -> Result<TestCounts, ToolError> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ToolError(format!("{what}: could not start: {e}")))?;
    let mut counts = TestCounts::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                counts = counts.add(parse_result_line(rest));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| ToolError(format!("{what}: {e}")))?;
    if status.success() {
        Ok(counts)
    } else {
        Err(ToolError(format!(
            "{what} failed ({status}): {} passed, {} failed",
            counts.passed, counts.failed
        )))
    }
}

/// Reads `ok. 5 passed; 1 failed; ...` (the part after `test result: `).
fn parse_result_line(rest: &str) -> TestCounts {
    let count = |label: &str| {
        rest.split(';')
            .filter_map(|part| {
                part.trim()
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.")
                    .trim()
                    .strip_suffix(label)
            })
            .find_map(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    TestCounts {
        passed: count("passed"),
        failed: count("failed"),
    }
}

struct DevArgs {
    tenant: Option<String>,
    port: u16,
    persist: Option<PathBuf>,
}

fn parse_dev_args(args: &[String]) -> Result<DevArgs, ToolError> {
    let mut parsed = DevArgs {
        tenant: Some("mrrainbowsmoke".into()),
        port: 8787,
        persist: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| ToolError(format!("{name} needs a value\n\n{USAGE}")))
        };
        match arg.as_str() {
            "--tenant" => parsed.tenant = Some(value("--tenant")?),
            "--shared" => parsed.tenant = None,
            "--port" => {
                parsed.port = value("--port")?
                    .parse()
                    .map_err(|_| ToolError("--port needs a number from 1 to 65535".into()))?
            }
            "--persist" => parsed.persist = Some(PathBuf::from(value("--persist")?)),
            other => return Err(ToolError(format!("unknown argument {other:?}\n\n{USAGE}"))),
        }
    }
    if let Some(tenant) = &parsed.tenant {
        if !tenant_ids().contains(tenant) {
            return Err(ToolError(format!(
                "no configuration tenants/{tenant}/wrangler.toml; tenants: {}",
                tenant_ids().join(", ")
            )));
        }
    }
    Ok(parsed)
}

fn dev(args: &[String]) -> Result<(), ToolError> {
    let args = parse_dev_args(args)?;
    let tools = Toolchain::ensure()?;
    step("building the Worker");
    tools.build_worker()?;
    let root = repo_root();
    let env_file = root.join(".dev.vars");
    ensure_dev_vars(&env_file)?;
    let name = args.tenant.clone().unwrap_or_else(|| "_shared".into());
    let persist_to = args
        .persist
        .unwrap_or_else(|| root.join(".state").join(&name));
    let tenant_for_curl = args
        .tenant
        .clone()
        .unwrap_or_else(|| "mrrainbowsmoke".into());
    let mode = if args.tenant.is_some() {
        "dedicated"
    } else {
        "shared"
    };
    eprintln!(
        "\nxtask: serving {mode} mode ({}) on http://localhost:{port}\nxtask: local state in {}\nxtask: secrets in {} (ADMIN_TOKEN, INGEST_TOKEN)",
        config_path(args.tenant.as_deref()).display(),
        persist_to.display(),
        env_file.display(),
        port = args.port,
    );
    let key_file = persist_to.join(format!("dev-key-{tenant_for_curl}"));
    let opts = wrangler::DevOptions {
        config: config_path(args.tenant.as_deref()),
        ip: "localhost".into(),
        port: args.port,
        inspector_port: None,
        persist_to,
        env_file: env_file.clone(),
        vars: Vec::new(),
    };
    let mut child = wrangler::dev(&opts)
        .spawn()
        .map_err(|e| ToolError(format!("wrangler dev: could not start: {e}")))?;
    // A development key for the tenant, made (or found) once the server
    // answers, so the printed curl lines work as they are.
    let base = format!("http://localhost:{}", args.port);
    let admin = dev_var(&env_file, "ADMIN_TOKEN")?;
    let key = xtask::devkey::wait_ready(&base, &tenant_for_curl, &mut child)
        .and_then(|()| xtask::devkey::ensure(&base, &tenant_for_curl, &admin, &key_file));
    match key {
        Ok(_) => eprintln!(
            "
xtask: development key for {tenant_for_curl} (scopes search, chat, ingest, admin) in {key_file}
xtask: try:
  KEY=$(cat {key_file})
  curl -H \"authorization: Bearer $KEY\" -H \"content-type: application/json\" \\
    {base}/api/ingest -d '{{\"documents\":[{{\"id\":\"doc-1\",\"text\":\"Durable Objects keep state at the edge.\"}}]}}'
  curl -H \"authorization: Bearer $KEY\" -H \"content-type: application/json\" \\
    {base}/api/search -d '{{\"query\":\"where is state kept?\"}}'
  curl -N -H \"authorization: Bearer $KEY\" -H \"content-type: application/json\" \\
    {base}/api/chat -d '{{\"sessionId\":\"user-123\",\"message\":\"Where is state kept?\"}}'
  curl -H \"x-tenant-id: {tenant_for_curl}\" -H \"authorization: Bearer $(sed -n 's/^ADMIN_TOKEN=//p' {env})\" {base}/admin/keys
",
            key_file = key_file.display(),
            env = env_file.display(),
        ),
        Err(e) => eprintln!("xtask: no development key ({e}); the server runs on"),
    }
    // The token rides in the fragment, which the browser never sends.
    eprintln!("xtask: dashboard (signs in as the operator): {base}/admin/ui#token={admin}\n");
    let status = child
        .wait()
        .map_err(|e| ToolError(format!("wrangler dev: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ToolError(format!("wrangler dev failed ({status})")))
    }
}

/// A variable of the `.dev.vars` file.
fn dev_var(path: &std::path::Path, name: &str) -> Result<String, ToolError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ToolError(format!("cannot read {}: {e}", path.display())))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| ToolError(format!("{} has no {name}", path.display())))
}

/// Creates `.dev.vars` with random tokens if it does not exist yet.
fn ensure_dev_vars(path: &std::path::Path) -> Result<(), ToolError> {
    if path.exists() {
        return Ok(());
    }
    let token = || xtask::random_hex(24);
    let text = format!(
        "# Local secrets for `cargo xtask dev` (git-ignored). Deployed Workers use\n# `wrangler secret put` instead; see docs/deploy.md.\nADMIN_TOKEN={}\nINGEST_TOKEN={}\n",
        token()?,
        token()?
    );
    std::fs::write(path, text)
        .map_err(|e| ToolError(format!("cannot write {}: {e}", path.display())))?;
    step(&format!("created {} with random tokens", path.display()));
    Ok(())
}

fn bench() -> Result<(), ToolError> {
    let tools = Toolchain::ensure()?;
    step("building the Worker");
    tools.build_worker()?;
    step("RAG benchmark (ingest throughput, search latency, retrieval quality)");
    run(
        cargo().args(["bench", "-p", "e2e", "--bench", "rag"]),
        "cargo bench (rag)",
    )?;
    step("quality benchmark (recall and latency per mode on natural-language questions)");
    run(
        cargo().args(["bench", "-p", "e2e", "--bench", "quality"]),
        "cargo bench (quality)",
    )?;
    step("readers benchmark (200 concurrent searches of one tenant: replicas, writer)");
    run(
        cargo().args(["bench", "-p", "e2e", "--bench", "readers"]),
        "cargo bench (readers)",
    )?;
    step("chat benchmark (first event and full answer over SSE and WebSocket)");
    run(
        cargo().args(["bench", "-p", "e2e", "--bench", "chat"]),
        "cargo bench (chat)",
    )
}

fn size() -> Result<(), ToolError> {
    let tools = Toolchain::ensure()?;
    tools.build_worker()?;
    let outdir = repo_root().join("target/dry-run");
    for tenant in tenant_ids() {
        let out = wrangler::deploy_dry_run(&config_path(Some(&tenant)), &outdir.join(&tenant))
            .output()
            .map_err(|e| ToolError(format!("wrangler: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match wrangler::parse_upload_size(&text) {
            Some((raw, gzip)) if out.status.success() => {
                println!("{tenant}: Total Upload {raw} / gzip {gzip}")
            }
            _ => {
                return Err(ToolError(format!(
                    "dry run of {tenant} failed:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        }
    }
    Ok(())
}

fn deploy(args: &[String]) -> Result<(), ToolError> {
    let dry_run = args.iter().any(|a| a == "--dry-run");
    let targets: Vec<String> = match args.iter().find(|a| *a != "--dry-run").map(String::as_str) {
        Some("--all") => tenant_ids(),
        Some(id) if tenant_ids().iter().any(|t| t == id) => vec![id.to_owned()],
        Some(id) => return Err(ToolError(format!("no tenants/{id}/wrangler.toml"))),
        None => return Err(ToolError(USAGE.into())),
    };
    if !dry_run {
        for tenant in &targets {
            let text = std::fs::read_to_string(config_path(Some(tenant))).unwrap_or_default();
            if xtask::tenant::kv_namespace_id(&text).as_deref()
                == Some(xtask::tenant::UNPROVISIONED_KV_ID)
            {
                return Err(ToolError(format!(
                    "{tenant} has no KV namespace yet: run `cargo xtask provision {tenant}` first \
                     (docs/deploy.md)"
                )));
            }
        }
    }
    let tools = Toolchain::ensure()?;
    tools.build_worker()?;
    for tenant in targets {
        metadata_indexes(&tenant, dry_run)?;
        step(&format!("deploying {tenant}"));
        let mut cmd = wrangler::command(["deploy"]);
        cmd.arg("--config").arg(config_path(Some(&tenant)));
        if dry_run {
            cmd.arg("--dry-run")
                .arg("--outdir")
                .arg(repo_root().join("target/dry-run").join(&tenant));
        }
        run(&mut cmd, &format!("wrangler deploy ({tenant})"))?;
    }
    Ok(())
}

fn tenant(args: &[String]) -> Result<(), ToolError> {
    let [sub, id] = args else {
        return Err(ToolError(format!("tenant needs: new ID\n\n{USAGE}")));
    };
    if sub != "new" {
        return Err(ToolError(format!("unknown tenant task {sub:?}\n\n{USAGE}")));
    }
    let config = xtask::tenant::scaffold(&repo_root(), id).map_err(ToolError)?;
    step(&format!(
        "wrote {} and added {id} to tenants/_shared/wrangler.toml (TENANTS); next:",
        config.display()
    ));
    println!(
        "  cargo xtask dev --tenant {id}         # run it locally
  cargo xtask provision {id} --dry-run  # what it needs on Cloudflare (then without --dry-run)
  cargo xtask deploy {id} --dry-run     # validate the bundle, then deploy without --dry-run"
    );
    Ok(())
}

fn provision(args: &[String]) -> Result<(), ToolError> {
    let dry_run = args.iter().any(|a| a == "--dry-run");
    let ids: Vec<&String> = args.iter().filter(|a| *a != "--dry-run").collect();
    let [id] = ids.as_slice() else {
        return Err(ToolError(format!("provision needs one ID\n\n{USAGE}")));
    };
    if !tenant_ids().contains(id) {
        return Err(ToolError(format!(
            "no tenants/{id}/wrangler.toml (make it with `cargo xtask tenant new {id}`); \
             tenants: {}",
            tenant_ids().join(", ")
        )));
    }
    xtask::provision::provision(id, dry_run)
}

/// Creates the Vectorize metadata indexes the platform filters on (see
/// `xtask::vectorize`) that `tenant`'s index lacks, before the Worker that
/// upserts into it is deployed. With `dry_run` (no account needed) it only
/// prints the commands a deploy would run when none exists yet.
fn metadata_indexes(tenant: &str, dry_run: bool) -> Result<(), ToolError> {
    let config = config_path(Some(tenant));
    let text = std::fs::read_to_string(&config)
        .map_err(|e| ToolError(format!("{}: {e}", config.display())))?;
    if dry_run {
        step(&format!(
            "Vectorize metadata indexes of {tenant}: a deploy creates those missing with"
        ));
        for args in vectorize::plan(&text, &config) {
            println!("  wrangler {}", args.join(" "));
        }
        return Ok(());
    }
    for index in vectorize::index_names(&text) {
        vectorize::ensure_metadata_indexes(&index, &config)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_test_result_lines() {
        let c = parse_result_line(
            "ok. 15 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        assert_eq!((c.passed, c.failed), (15, 0));
        let c =
            parse_result_line("FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!((c.passed, c.failed), (8, 1));
    }
}
