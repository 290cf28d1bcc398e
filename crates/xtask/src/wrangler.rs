//! Commands that run the pinned wrangler on the pinned Node (22; wrangler 4
//! refuses older ones, and these machines ship Node 20).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Node binary from the npm registry's `node` package.
pub fn node() -> PathBuf {
    crate::repo_root().join("node_modules/.bin/node")
}

/// The wrangler CLI script.
pub fn script() -> PathBuf {
    crate::repo_root().join("node_modules/wrangler/bin/wrangler.js")
}

/// `wrangler <args>`, with telemetry off (there is no route to it here) and
/// the project's `node_modules/.bin` first on `PATH`.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(node());
    cmd.arg(script()).args(args);
    cmd.env("WRANGLER_SEND_METRICS", "false");
    let bin = crate::repo_root().join("node_modules/.bin");
    let mut path = vec![bin];
    if let Some(existing) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&existing));
    }
    if let Ok(joined) = std::env::join_paths(path) {
        cmd.env("PATH", joined);
    }
    cmd
}

/// How to run `wrangler dev` locally.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The tenant's (or the shared) `wrangler.toml`.
    pub config: PathBuf,
    /// Address to listen on.
    pub ip: String,
    /// Port to listen on.
    pub port: u16,
    /// Port of the inspector (each concurrent `wrangler dev` needs its own).
    pub inspector_port: Option<u16>,
    /// Where Durable Objects and KV keep their state.
    pub persist_to: PathBuf,
    /// The dotenv file with the secrets (`ADMIN_TOKEN`, `INGEST_TOKEN`).
    pub env_file: PathBuf,
    /// Extra vars (`--var NAME:VALUE`), such as the tests' `FAULT_INJECTION`.
    pub vars: Vec<(String, String)>,
}

/// `wrangler dev` for the `local` environment of a configuration: no remote
/// bindings, embedded providers, everything on this machine.
pub fn dev(opts: &DevOptions) -> Command {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("dev"),
        OsStr::new("--config"),
        opts.config.as_os_str(),
        OsStr::new("--env"),
        OsStr::new("local"),
        OsStr::new("--ip"),
        OsStr::new(&opts.ip),
        OsStr::new("--persist-to"),
        opts.persist_to.as_os_str(),
        OsStr::new("--env-file"),
        opts.env_file.as_os_str(),
        OsStr::new("--show-interactive-dev-session=false"),
    ];
    let port = opts.port.to_string();
    args.extend([OsStr::new("--port"), OsStr::new(&port)]);
    let inspector = opts.inspector_port.map(|p| p.to_string());
    if let Some(p) = &inspector {
        args.extend([OsStr::new("--inspector-port"), OsStr::new(p)]);
    }
    let vars: Vec<String> = opts.vars.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    for var in &vars {
        args.extend([OsStr::new("--var"), OsStr::new(var)]);
    }
    command(args)
}

/// `wrangler deploy --dry-run` of a configuration: builds and validates the
/// bundle and its bindings offline, uploads nothing.
pub fn deploy_dry_run(config: &Path, outdir: &Path) -> Command {
    let mut cmd = command([
        OsStr::new("deploy"),
        OsStr::new("--dry-run"),
        OsStr::new("--outdir"),
    ]);
    cmd.arg(outdir).arg("--config").arg(config);
    cmd
}

/// The bundle size line of `wrangler deploy --dry-run`
/// (`Total Upload: 447.28 KiB / gzip: 170.42 KiB`), as (raw, gzip).
pub fn parse_upload_size(output: &str) -> Option<(String, String)> {
    let line = output.lines().find(|l| l.contains("Total Upload:"))?;
    let rest = line.split("Total Upload:").nth(1)?;
    let mut parts = rest.split("/ gzip:");
    let raw = parts.next()?.trim().to_owned();
    let gzip = parts.next()?.trim().to_owned();
    Some((raw, gzip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_size_line() {
        let out =
            "Attaching...\nTotal Upload: 447.28 KiB / gzip: 170.42 KiB\nYour Worker has access";
        assert_eq!(
            parse_upload_size(out),
            Some(("447.28 KiB".into(), "170.42 KiB".into()))
        );
        assert_eq!(parse_upload_size("nothing here"), None);
    }
}
