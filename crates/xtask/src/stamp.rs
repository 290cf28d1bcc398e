//! The fingerprint of everything the Worker build reads, so that
//! `cargo xtask dev` (and `test`, `deploy`, ...) can skip `worker-build` and
//! `wasm-opt` when nothing changed since the last successful build.
//!
//! The fingerprint is a SHA-256 over:
//! - every file under the three crates the Worker is made of
//!   (`crates/protocol`, `crates/actors`, `crates/gateway-worker`), whatever
//!   its kind (Rust, JSON, HTML, JS, CSS, ...), by path and content; the build
//!   output (`crates/gateway-worker/build`) and tool folders are left out;
//! - files outside them that their sources embed with `include_str!` or
//!   `include_bytes!` (a literal path, resolved against the source file);
//! - the workspace's `Cargo.toml`, `Cargo.lock`, `.cargo/config.toml` (the
//!   wasm32 rustflags), `package.json` and `package-lock.json` (esbuild,
//!   wasm-opt, wrangler versions), and a `rust-toolchain(.toml)` if any;
//! - the build's own arguments and the versions of the tools it runs
//!   (`rustc -vV`, worker-build, wasm-bindgen), a fingerprint of the code of
//!   the name rewrite that follows them ([`crate::wasm_names`]), and the
//!   environment variables that change what cargo builds (`RUSTFLAGS`,
//!   `CARGO_PROFILE_*`, ...).
//!
//! It is written beside the build output ([`STAMP_FILE`]) after a build
//! succeeds and removed before one starts, so a failed or interrupted build
//! never leaves a stamp that matches.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The stamp file, relative to the repository root: inside the build
/// output, so removing the output removes the stamp too.
pub const STAMP_FILE: &str = "crates/gateway-worker/build/.xtask-build-stamp";

/// The crates whose every file is an input of the Worker build.
pub const SOURCE_DIRS: &[&str] = &["crates/protocol", "crates/actors", "crates/gateway-worker"];

/// Single files of the workspace that are inputs of the build.
pub const WORKSPACE_FILES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    "package.json",
    "package-lock.json",
    "rust-toolchain",
    "rust-toolchain.toml",
];

/// The files the build writes and `wrangler` reads: a stamp matches only
/// while they are all there.
pub const OUTPUTS: &[&str] = &[
    "crates/gateway-worker/build/worker/shim.mjs",
    "crates/gateway-worker/build/index.js",
    "crates/gateway-worker/build/index_bg.wasm",
];

/// Folders under [`SOURCE_DIRS`] that are not inputs: build output, tool
/// state and dependencies.
const SKIPPED_DIRS: &[&str] = &["build", "target", "node_modules", ".wrangler", ".git"];

/// Environment variables that change what cargo or worker-build produce.
fn relevant_env(name: &str) -> bool {
    matches!(
        name,
        "RUSTFLAGS" | "CARGO_ENCODED_RUSTFLAGS" | "RUSTC" | "RUSTC_WRAPPER" | "RUSTUP_TOOLCHAIN"
    ) || name.starts_with("CARGO_PROFILE_")
        || name.starts_with("CARGO_TARGET_WASM32_")
        || name.starts_with("CARGO_BUILD_")
        || name.starts_with("WASM_")
}

/// Every input file of the build in the repository at `root`, sorted,
/// relative to `root` where they are under it.
pub fn input_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        walk(&root.join(dir), &mut files)?;
    }
    let mut embedded = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let dir = file.parent().unwrap_or(root);
        // A path that names no file (in a comment, say) cannot be an input:
        // the build would fail on it.
        embedded.extend(
            embedded_paths(&text)
                .into_iter()
                .map(|p| dir.join(p))
                .filter(|p| p.is_file()),
        );
    }
    files.extend(embedded);
    files.extend(
        WORKSPACE_FILES
            .iter()
            .map(|f| root.join(f))
            .filter(|p| p.is_file()),
    );
    let mut files: Vec<PathBuf> = files
        .into_iter()
        .map(|p| p.strip_prefix(root).map(Path::to_path_buf).unwrap_or(p))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if kind.is_dir() {
            let name = entry.file_name();
            if !SKIPPED_DIRS.iter().any(|s| name == **s) {
                walk(&path, files)?;
            }
        } else {
            // Files and symlinks alike: a symlink is read through.
            files.push(path);
        }
    }
    Ok(())
}

/// The literal paths of `include_str!("...")` and `include_bytes!("...")`
/// in a Rust source.
pub fn embedded_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for mac in ["include_str!", "include_bytes!"] {
        let mut rest = source;
        while let Some(at) = rest.find(mac) {
            rest = &rest[at + mac.len()..];
            let arg = rest.trim_start().trim_start_matches('(').trim_start();
            if let Some(lit) = arg.strip_prefix('"') {
                if let Some(end) = lit.find('"') {
                    paths.push(lit[..end].to_owned());
                }
            }
        }
    }
    paths
}

/// The fingerprint of the build in the repository at `root`: the input
/// files' paths and contents, then `extra` (the build's arguments and tool
/// versions, one per line), then the relevant environment, as hex.
pub fn fingerprint(root: &Path, extra: &[String]) -> Result<String, String> {
    let mut hash = Sha256::new();
    for file in input_files(root)? {
        let bytes = std::fs::read(root.join(&file))
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        // Length-prefixed, so no two different sets of files hash alike.
        let name = file.to_string_lossy();
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    for line in extra {
        hash.update((line.len() as u64).to_le_bytes());
        hash.update(line.as_bytes());
    }
    let mut env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| relevant_env(k)).collect();
    env.sort();
    for (k, v) in env {
        let line = format!("{k}={v}");
        hash.update((line.len() as u64).to_le_bytes());
        hash.update(line.as_bytes());
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether the last successful build in `root` had `fingerprint` and its
/// output is all still there.
pub fn is_fresh(root: &Path, fingerprint: &str) -> bool {
    let stamped = std::fs::read_to_string(root.join(STAMP_FILE)).ok();
    stamped.as_deref().map(str::trim) == Some(fingerprint)
        && OUTPUTS.iter().all(|o| root.join(o).is_file())
}

/// Removes the stamp (before a build starts).
pub fn clear(root: &Path) -> Result<(), String> {
    match std::fs::remove_file(root.join(STAMP_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {STAMP_FILE}: {e}")),
    }
}

/// Writes the stamp (after a build succeeded).
pub fn write(root: &Path, fingerprint: &str) -> Result<(), String> {
    std::fs::write(root.join(STAMP_FILE), format!("{fingerprint}\n"))
        .map_err(|e| format!("cannot write {STAMP_FILE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small repository with the layout the stamp reads.
    fn scratch(label: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "xtask-stamp-{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let files = [
            ("Cargo.toml", "[workspace]\n"),
            ("Cargo.lock", "# lock\n"),
            ("crates/protocol/src/lib.rs", "pub fn p() {}\n"),
            ("crates/actors/src/lib.rs", "pub fn a() {}\n"),
            (
                "crates/gateway-worker/src/lib.rs",
                "const PAGE: &str = include_str!(\"../../../ui/page.html\");\n",
            ),
            ("crates/gateway-worker/src/openapi.json", "{}"),
            ("ui/page.html", "<p>hi</p>"),
            ("crates/gateway-worker/build/worker/shim.mjs", "shim"),
            ("crates/gateway-worker/build/index.js", "js"),
            ("crates/gateway-worker/build/index_bg.wasm", "wasm"),
        ];
        for (rel, text) in files {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn finds_embedded_paths() {
        let src = r#"
            const A: &str = include_str!("../assets/app.js");
            const B: &[u8] = include_bytes!( "logo.png" );
            const C: &str = include_str!(concat!(env!("OUT_DIR"), "/x"));
        "#;
        assert_eq!(embedded_paths(src), ["../assets/app.js", "logo.png"]);
    }

    #[test]
    fn inputs_are_every_crate_file_and_embedded_ones_but_not_the_output() {
        let root = scratch("inputs");
        let files = input_files(&root).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"crates/gateway-worker/src/openapi.json".into()));
        assert!(names.contains(&"Cargo.lock".into()));
        assert!(
            names.iter().any(|n| n.ends_with("ui/page.html")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("/build/")), "{names:?}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn any_input_change_changes_the_fingerprint_and_outputs_must_exist() {
        let root = scratch("fresh");
        let extra = vec!["worker-build 0.8.7 --release".to_owned()];
        let first = fingerprint(&root, &extra).unwrap();
        assert_eq!(fingerprint(&root, &extra).unwrap(), first, "deterministic");
        assert!(!is_fresh(&root, &first), "no stamp yet");
        write(&root, &first).unwrap();
        assert!(is_fresh(&root, &first));

        // Each kind of input, changed then restored.
        for rel in [
            "crates/actors/src/lib.rs",
            "crates/gateway-worker/src/openapi.json",
            "ui/page.html",
            "Cargo.lock",
        ] {
            let path = root.join(rel);
            let before = std::fs::read(&path).unwrap();
            std::fs::write(&path, [before.as_slice(), b" "].concat()).unwrap();
            let changed = fingerprint(&root, &extra).unwrap();
            assert_ne!(changed, first, "{rel}");
            assert!(!is_fresh(&root, &changed), "{rel}");
            std::fs::write(&path, before).unwrap();
        }
        // A new file counts too, and so do the build's arguments.
        std::fs::write(root.join("crates/protocol/src/new.rs"), "").unwrap();
        assert_ne!(fingerprint(&root, &extra).unwrap(), first);
        std::fs::remove_file(root.join("crates/protocol/src/new.rs")).unwrap();
        assert_ne!(fingerprint(&root, &["--dev".to_owned()]).unwrap(), first);
        assert_eq!(fingerprint(&root, &extra).unwrap(), first);

        // The output is an input of freshness, not of the fingerprint.
        std::fs::write(root.join(OUTPUTS[2]), "other wasm").unwrap();
        assert_eq!(fingerprint(&root, &extra).unwrap(), first);
        std::fs::remove_file(root.join(OUTPUTS[2])).unwrap();
        assert!(!is_fresh(&root, &first), "the output is gone");

        clear(&root).unwrap();
        clear(&root).unwrap();
        assert!(!root.join(STAMP_FILE).exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
