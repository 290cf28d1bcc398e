//! The pinned toolchain, installed on demand and idempotently: a second run
//! finds everything in place and returns in well under a second.
//!
//! Cargo-installed tools go to a versioned folder under the user's cache
//! (`~/.cache/tenant-platform/tools/<crate>-<version>`), so they are shared by
//! every clone of the repository and never replace a tool of another version
//! that the user installed themselves. The schema fuzzer's schemathesis goes
//! beside them, in a Python virtual environment of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `worker-build` release the Worker is built with.
pub const WORKER_BUILD_VERSION: &str = "0.8.7";
/// The Rust target of the Worker.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// A failure while preparing or running a tool; the message says what to do.
#[derive(Debug)]
pub struct ToolError(pub String);

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToolError {}

/// Paths of the installed tools.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// `wasm-bindgen` at the version in `Cargo.lock`.
    pub wasm_bindgen: PathBuf,
    /// `worker-build` at [`WORKER_BUILD_VERSION`].
    pub worker_build: PathBuf,
    /// `node_modules/.bin`, holding `node` (22), `wasm-opt` and `esbuild`.
    pub npm_bin: PathBuf,
}

impl Toolchain {
    /// Where the tools would be, without installing anything.
    pub fn locate() -> Result<Self, ToolError> {
        let wasm_bindgen_version = wasm_bindgen_version()?;
        Ok(Self {
            wasm_bindgen: tool_root("wasm-bindgen-cli", &wasm_bindgen_version)
                .join("bin/wasm-bindgen"),
            worker_build: tool_root("worker-build", WORKER_BUILD_VERSION).join("bin/worker-build"),
            npm_bin: crate::repo_root().join("node_modules/.bin"),
        })
    }

    /// Installs whatever is missing, then returns the paths.
    pub fn ensure() -> Result<Self, ToolError> {
        ensure_wasm_target()?;
        let wasm_bindgen_version = wasm_bindgen_version()?;
        ensure_cargo_tool("wasm-bindgen-cli", &wasm_bindgen_version, "wasm-bindgen")?;
        ensure_cargo_tool("worker-build", WORKER_BUILD_VERSION, "worker-build")?;
        ensure_npm_packages()?;
        Self::locate()
    }

    /// `PATH` with the project's tools first (Node 22 before the system's).
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = vec![self.npm_bin.clone()];
        dirs.extend(self.wasm_bindgen.parent().map(Path::to_path_buf));
        dirs.extend(self.worker_build.parent().map(Path::to_path_buf));
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }

    /// Builds the Worker (release, wasm-opt on) into `crates/gateway-worker/build`,
    /// unless the last successful build had the same inputs and its output is
    /// still there (see [`crate::stamp`]): then it returns at once.
    pub fn build_worker(&self) -> Result<(), ToolError> {
        let root = crate::repo_root();
        let fingerprint = crate::stamp::fingerprint(&root, &self.build_identity()?)
            .map_err(|e| ToolError(format!("fingerprint of the Worker's inputs: {e}")))?;
        if crate::stamp::is_fresh(&root, &fingerprint) {
            step("the Worker is up to date (no input changed since its last build)");
            return Ok(());
        }
        crate::stamp::clear(&root).map_err(ToolError)?;
        self.run_worker_build()?;
        strip_symbol_hashes(&root.join("crates/gateway-worker/build/index_bg.wasm"))?;
        crate::stamp::write(&root, &fingerprint).map_err(ToolError)
    }

    /// What, beside the input files, decides the build's output: its
    /// arguments and the versions of the tools it runs.
    fn build_identity(&self) -> Result<Vec<String>, ToolError> {
        let rustc = output(
            Command::new("rustc")
                .arg("-vV")
                .current_dir(crate::repo_root().join("crates/gateway-worker")),
        )?;
        Ok(vec![
            format!("worker-build {WORKER_BUILD_VERSION} --release"),
            // The rewrite's own code: a change to it rebuilds.
            format!(
                "function names without symbol hashes, {}",
                crate::wasm_names::fingerprint()
            ),
            format!("wasm-bindgen {}", wasm_bindgen_version()?),
            format!("target {WASM_TARGET}"),
            rustc,
        ])
    }

    fn run_worker_build(&self) -> Result<(), ToolError> {
        let crate_dir = crate::repo_root().join("crates/gateway-worker");
        let mut cmd = Command::new(&self.worker_build);
        cmd.arg("--release")
            .current_dir(&crate_dir)
            .env("PATH", self.path_env())
            // worker-build downloads these from hosts these machines cannot
            // reach; point it at the pinned copies instead.
            .env("WASM_BINDGEN_BIN", &self.wasm_bindgen)
            .env("WASM_OPT_BIN", self.npm_bin.join("wasm-opt"))
            .env("ESBUILD_BIN", self.npm_bin.join("esbuild"));
        run(&mut cmd, "worker-build --release")
    }
}

/// Removes rustc's symbol hashes from the built module's function names
/// ([`crate::wasm_names`]), in place. A module whose names it cannot read
/// is left as worker-build wrote it (the names only make it larger).
fn strip_symbol_hashes(wasm: &Path) -> Result<(), ToolError> {
    let fail = |e: String| ToolError(format!("{}: {e}", wasm.display()));
    let bytes = std::fs::read(wasm).map_err(|e| fail(e.to_string()))?;
    let (stripped, what) = match crate::wasm_names::strip_symbol_hashes(&bytes) {
        Ok(done) => done,
        Err(e) => {
            step(&format!(
                "warning: function names left as they are ({e}): the Worker is about \
                 75 KiB larger in gzip, over the 1 MB target of docs/benchmarks.md"
            ));
            return Ok(());
        }
    };
    std::fs::write(wasm, stripped).map_err(|e| fail(e.to_string()))?;
    step(&format!(
        "function names: {} symbol hashes removed ({:.1} KiB)",
        what.names,
        what.bytes as f64 / 1024.0
    ));
    Ok(())
}

/// The versioned install folder of a cargo-installed tool.
pub fn tool_root(krate: &str, version: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| crate::repo_root().join("target"));
    cache
        .join("tenant-platform/tools")
        .join(format!("{krate}-{version}"))
}

/// The `wasm-bindgen` version pinned in `Cargo.lock`: the CLI must match it exactly.
pub fn wasm_bindgen_version() -> Result<String, ToolError> {
    let lock_path = crate::repo_root().join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .map_err(|e| ToolError(format!("cannot read {}: {e}", lock_path.display())))?;
    locked_version(&lock, "wasm-bindgen")
        .ok_or_else(|| ToolError("Cargo.lock has no wasm-bindgen package".into()))
}

/// Finds `version = "..."` of package `name` in the text of a `Cargo.lock`.
pub fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim();
            return version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

fn ensure_wasm_target() -> Result<(), ToolError> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    step(&format!("installing the {WASM_TARGET} target"));
    run(
        Command::new("rustup").args(["target", "add", WASM_TARGET]),
        "rustup target add",
    )
}

fn ensure_cargo_tool(krate: &str, version: &str, bin: &str) -> Result<(), ToolError> {
    let root = tool_root(krate, version);
    if root.join("bin").join(bin).is_file() {
        return Ok(());
    }
    step(&format!(
        "installing {krate} {version} into {} (once per machine; a few minutes)",
        root.display()
    ));
    let install = |locked: bool| {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["install", krate, "--version", version, "--root"])
            .arg(&root);
        if locked {
            cmd.arg("--locked");
        }
        run(&mut cmd, &format!("cargo install {krate}"))
    };
    // --locked first, for the versions the tool was released with; a lock file
    // that names a crate version the registry no longer serves makes that fail,
    // and then the newest compatible versions are the next best thing.
    install(true).or_else(|e| {
        step(&format!("{e}; retrying without --locked"));
        install(false)
    })
}

fn ensure_npm_packages() -> Result<(), ToolError> {
    let root = crate::repo_root();
    let lock = std::fs::read(root.join("package-lock.json"))
        .map_err(|e| ToolError(format!("cannot read package-lock.json: {e}")))?;
    let stamp = root.join("node_modules/.xtask-installed-lock");
    if std::fs::read(&stamp).ok().as_deref() == Some(lock.as_slice())
        && root.join("node_modules/wrangler/bin/wrangler.js").is_file()
        && root.join("node_modules/.bin/node").is_file()
    {
        return Ok(());
    }
    step("installing the npm packages of package-lock.json (wrangler, node 22, binaryen)");
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&root),
        "npm ci",
    )?;
    std::fs::write(&stamp, &lock)
        .map_err(|e| ToolError(format!("cannot write {}: {e}", stamp.display())))
}

/// The schemathesis release the schema fuzzer (`tests/tests/fuzz.rs`) runs.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The `st` command of the pinned schemathesis, installed on demand from
/// PyPI into its own virtual environment beside the cargo-installed tools
/// (`python3` with `venv` is all it needs; about 100 MB, once per machine).
pub fn ensure_schemathesis() -> Result<PathBuf, ToolError> {
    let root = tool_root("schemathesis", SCHEMATHESIS_VERSION);
    let st = root.join("bin/st");
    if st.is_file() {
        return Ok(st);
    }
    step(&format!(
        "installing schemathesis {SCHEMATHESIS_VERSION} into {} (once per machine)",
        root.display()
    ));
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&root),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    )?;
    let installed = run(
        Command::new(root.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        ]),
        "pip install schemathesis",
    );
    if let Err(e) = installed {
        // No half-made environment: the next run starts again.
        let _ = std::fs::remove_dir_all(&root);
        return Err(e);
    }
    Ok(st)
}

/// Prints a step of a task, in the same style everywhere.
pub fn step(message: &str) {
    eprintln!("xtask: {message}");
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming `what`.
pub fn run(cmd: &mut Command, what: &str) -> Result<(), ToolError> {
    let status = cmd
        .status()
        .map_err(|e| ToolError(format!("{what}: could not start: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ToolError(format!("{what} failed ({status})")))
    }
}

fn output(cmd: &mut Command) -> Result<String, ToolError> {
    let out = cmd
        .output()
        .map_err(|e| ToolError(format!("{cmd:?}: could not start: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_locked_version() {
        let lock = "[[package]]\nname = \"wasm-bindgen-macro\"\nversion = \"9.9.9\"\n\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\nsource = \"x\"\n";
        assert_eq!(
            locked_version(lock, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(locked_version(lock, "serde"), None);
    }

    #[test]
    fn the_real_lock_pins_wasm_bindgen() {
        let v = wasm_bindgen_version().unwrap();
        assert!(v.starts_with("0.2."), "{v}");
    }
}
