//! The project's tooling, as a library shared by the `cargo xtask` binary and
//! the end-to-end tests.
//!
//! - [`toolchain`]: where the pinned tools live and how a missing one is
//!   installed (the wasm32 target, `wasm-bindgen-cli`, `worker-build`, and the
//!   npm packages: `wrangler`, a Node 22 for it, binaryen's `wasm-opt`);
//! - [`wrangler`]: commands that run the pinned wrangler on the pinned Node;
//! - [`vectorize`]: the Vectorize metadata indexes a deployment needs, and
//!   the commands that create them;
//! - [`tenant`]: the one template of every tenant's configuration, and
//!   `cargo xtask tenant new`;
//! - [`provision`]: what a tenant needs on Cloudflare (`cargo xtask provision`);
//! - [`stamp`]: the fingerprint of the Worker's inputs that lets a build be
//!   skipped when nothing changed;
//! - [`wasm_names`]: the built Worker's function names without rustc's
//!   symbol hashes.

pub mod browser;
pub mod devkey;
pub mod provision;
pub mod stamp;
pub mod tenant;
pub mod toolchain;
pub mod vectorize;
pub mod wasm_names;
pub mod wrangler;

use std::path::{Path, PathBuf};

/// The repository root (where the workspace `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    // crates/xtask -> crates -> root. Known at compile time, so it works from
    // any current directory.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Every tenant that has a configuration under `tenants/<id>/wrangler.toml`,
/// sorted. The `_shared` folder (shared mode) is not a tenant.
pub fn tenant_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo_root().join("tenants"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("wrangler.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('_'))
        .collect();
    ids.sort();
    ids
}

/// The wrangler configuration of `tenant`, or of the shared deployment for `None`.
pub fn config_path(tenant: Option<&str>) -> PathBuf {
    repo_root()
        .join("tenants")
        .join(tenant.unwrap_or("_shared"))
        .join("wrangler.toml")
}

/// The Worker entry point that every configuration's `main` points at.
pub fn worker_shim() -> PathBuf {
    repo_root().join("crates/gateway-worker/build/worker/shim.mjs")
}

/// `bytes` random bytes from the system's generator, as lowercase hex (the
/// tokens of `.dev.vars` and of a provisioned tenant's secrets).
pub fn random_hex(bytes: usize) -> Result<String, toolchain::ToolError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| toolchain::ToolError(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
