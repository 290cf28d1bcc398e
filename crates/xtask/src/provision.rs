//! `cargo xtask provision <id> [--dry-run]`: what a tenant needs on
//! Cloudflare before its Worker deploys, created idempotently.
//!
//! The [`plan`] of a tenant, in order:
//! 1. its KV namespace (`<id>-cache`), whose id is then written into the
//!    tenant's configuration (the `[[kv_namespaces]]` id, see
//!    [`crate::tenant::set_kv_namespace_id`]);
//! 2. its Vectorize index (the configuration's `index_name`, 768 dimensions
//!    for `@cf/baai/bge-base-en-v1.5`, cosine) and the metadata indexes the
//!    platform filters on ([`crate::vectorize::METADATA_INDEXES`]);
//! 3. its AI Gateway (`<id>-gateway`), through the Cloudflare REST API (no
//!    wrangler command creates one); the platform reads the gateway from the
//!    tenant's settings, so the `PATCH /admin/tenant` that selects it is
//!    printed, to apply once the Worker is deployed;
//! 4. its secrets `ADMIN_TOKEN` and `INGEST_TOKEN`: random, kept in
//!    `.secrets/<id>.vars` (git-ignored, readable by the owner only) so a
//!    second run puts the same values, and given to `wrangler secret put` on
//!    stdin; never printed in full.
//!
//! Every step first looks for what exists: an existing resource is reported
//! and kept, not an error. `--dry-run` prints the plan and touches neither
//! the network nor any file.

use crate::tenant::{self, ResourceNames, UNPROVISIONED_KV_ID};
use crate::toolchain::{step, ToolError};
use crate::{vectorize, wrangler};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Dimensions of the tenant's Vectorize index: `@cf/baai/bge-base-en-v1.5`.
pub const DIMENSIONS: u32 = 768;
/// Distance metric of the tenant's Vectorize index.
pub const METRIC: &str = "cosine";
/// The secrets every tenant's Worker reads.
pub const SECRETS: &[&str] = &["ADMIN_TOKEN", "INGEST_TOKEN"];
/// The Cloudflare REST API.
pub const API_BASE: &str = "https://api.cloudflare.com/client/v4";

/// One thing a tenant needs on Cloudflare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The KV namespace of the tenant's cache, by title.
    KvNamespace {
        /// Its title.
        title: String,
    },
    /// The Vectorize index, by name.
    VectorizeIndex {
        /// Its name.
        name: String,
    },
    /// A metadata index of a Vectorize index.
    MetadataIndex {
        /// The Vectorize index.
        index: String,
        /// The metadata property.
        property: &'static str,
        /// Its Vectorize type.
        kind: &'static str,
    },
    /// The AI Gateway, by id.
    AiGateway {
        /// Its id.
        id: String,
    },
    /// A Worker secret, by name.
    Secret {
        /// Its name.
        name: &'static str,
    },
}

/// The steps that provision `tenant`, whose configuration is `config_text`
/// (the Vectorize index names come from it, as the Worker binds them).
pub fn plan(tenant: &str, config_text: &str) -> Vec<Step> {
    let names = ResourceNames::of(tenant);
    let mut steps = vec![Step::KvNamespace {
        title: names.kv_namespace,
    }];
    for index in vectorize::index_names(config_text) {
        steps.push(Step::VectorizeIndex {
            name: index.clone(),
        });
        for &(property, kind) in vectorize::METADATA_INDEXES {
            steps.push(Step::MetadataIndex {
                index: index.clone(),
                property,
                kind,
            });
        }
    }
    steps.push(Step::AiGateway {
        id: names.ai_gateway,
    });
    steps.extend(SECRETS.iter().map(|&name| Step::Secret { name }));
    steps
}

impl Step {
    /// What this step runs when the resource is missing, as one printable
    /// line (what `--dry-run` shows); `secrets` is the file the secret
    /// values are kept in.
    pub fn describe(&self, config: &Path, secrets: &Path) -> String {
        match self {
            Step::KvNamespace { title } => format!(
                "wrangler {}   # then its id goes into {} ([[kv_namespaces]] id)",
                kv_create_args(title, config).join(" "),
                config.display()
            ),
            Step::VectorizeIndex { name } => {
                format!("wrangler {}", vectorize_create_args(name, config).join(" "))
            }
            Step::MetadataIndex {
                index,
                property,
                kind,
            } => format!(
                "wrangler {}",
                vectorize::create_args(index, property, kind, config).join(" ")
            ),
            Step::AiGateway { id } => format!(
                "POST {API_BASE}/accounts/$CLOUDFLARE_ACCOUNT_ID/ai-gateway/gateways {}",
                gateway_body(id)
            ),
            Step::Secret { name } => format!(
                "wrangler {}   # value on stdin: 48 random hex characters, kept in {}",
                secret_put_args(name, config).join(" "),
                secrets.display()
            ),
        }
    }
}

/// `wrangler kv namespace create <title>`.
pub fn kv_create_args(title: &str, config: &Path) -> Vec<String> {
    vec![
        "kv".into(),
        "namespace".into(),
        "create".into(),
        title.into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// `wrangler kv namespace list` (JSON on stdout).
pub fn kv_list_args(config: &Path) -> Vec<String> {
    vec![
        "kv".into(),
        "namespace".into(),
        "list".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// `wrangler vectorize create <name>` with the platform's dimensions and metric.
pub fn vectorize_create_args(name: &str, config: &Path) -> Vec<String> {
    vec![
        "vectorize".into(),
        "create".into(),
        name.into(),
        format!("--dimensions={DIMENSIONS}"),
        format!("--metric={METRIC}"),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// `wrangler vectorize list --json`.
pub fn vectorize_list_args(config: &Path) -> Vec<String> {
    vec![
        "vectorize".into(),
        "list".into(),
        "--json".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// `wrangler secret put <name>` (the value comes on stdin).
pub fn secret_put_args(name: &str, config: &Path) -> Vec<String> {
    vec![
        "secret".into(),
        "put".into(),
        name.into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// The body that creates the AI Gateway `id`: logs collected (the gateway's
/// point), no cache or rate limit of its own (the tenant's `aiGateway`
/// setting chooses caching per call; the platform enforces the limits).
pub fn gateway_body(id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "collect_logs": true,
        "cache_ttl": 0,
        "cache_invalidate_on_update": false,
        "rate_limiting_interval": 0,
        "rate_limiting_limit": 0,
    })
}

/// The JSON list in a command's output (wrangler may print lines before it).
fn json_list(out: &str, what: &str) -> Result<Vec<serde_json::Value>, String> {
    let start = out
        .find('[')
        .ok_or_else(|| format!("no JSON list in the output of {what}: {out}"))?;
    serde_json::from_str(out[start..].trim())
        .map_err(|e| format!("the output of {what} is not a JSON list ({e}): {out}"))
}

/// The id of the namespace titled `title` in `wrangler kv namespace list`'s output.
pub fn find_kv_namespace(listed: &str, title: &str) -> Result<Option<String>, String> {
    Ok(json_list(listed, "kv namespace list")?
        .iter()
        .find(|ns| ns["title"].as_str() == Some(title))
        .and_then(|ns| ns["id"].as_str())
        .map(str::to_owned))
}

/// The new namespace's id in `wrangler kv namespace create`'s output: the
/// 32 hex digits quoted on the `id` line of the snippet it prints (TOML
/// `id = "…"` or JSON `"id": "…"`).
pub fn created_kv_id(out: &str) -> Option<String> {
    out.lines()
        .filter(|line| line.contains("id"))
        .flat_map(|line| line.split('"').skip(1).step_by(2))
        .find(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// The configuration (dimensions, metric) of the index `name` in
/// `wrangler vectorize list --json`'s output, if it exists.
pub fn find_vectorize_index(listed: &str, name: &str) -> Result<Option<(u64, String)>, String> {
    Ok(json_list(listed, "vectorize list")?
        .iter()
        .find(|ix| ix["name"].as_str() == Some(name))
        .map(|ix| {
            (
                ix["config"]["dimensions"].as_u64().unwrap_or_default(),
                ix["config"]["metric"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }))
}

/// Reads `NAME=value` lines (`#` comments and blank lines skipped).
pub fn parse_vars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A tenant's secrets, by name, in the order of [`SECRETS`].
pub type Secrets = Vec<(&'static str, String)>;

/// The secrets of [`SECRETS`]: those in `existing` (a `.secrets/<id>.vars`
/// text) kept, the missing ones made by `fresh`. Returns them and whether
/// any was made.
pub fn complete_secrets(
    existing: &str,
    mut fresh: impl FnMut() -> Result<String, ToolError>,
) -> Result<(Secrets, bool), ToolError> {
    let have = parse_vars(existing);
    let mut made = false;
    let mut out = Vec::new();
    for &name in SECRETS {
        let value = match have.iter().find(|(k, v)| k == name && !v.is_empty()) {
            Some((_, v)) => v.clone(),
            None => {
                made = true;
                fresh()?
            }
        };
        out.push((name, value));
    }
    Ok((out, made))
}

/// A secret as it may be printed: its first four characters and its length.
pub fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}… ({} characters)", secret.chars().count())
}

/// The file that keeps a tenant's deployed secrets.
pub fn secrets_path(tenant: &str) -> PathBuf {
    crate::repo_root()
        .join(".secrets")
        .join(format!("{tenant}.vars"))
}

/// What the AI Gateway step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It existed already and was kept.
    Existed,
    /// It was created.
    Created,
}

/// Makes sure the AI Gateway `id` exists in `account`: `GET` it, and `POST`
/// it when the answer is 404. `api_base` is [`API_BASE`] (a test server in
/// tests).
pub fn ensure_gateway(
    api_base: &str,
    account: &str,
    token: &str,
    id: &str,
) -> Result<Outcome, String> {
    let gateways = format!("{api_base}/accounts/{account}/ai-gateway/gateways");
    let auth = format!("Bearer {token}");
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(30))
        .build();
    match agent
        .get(&format!("{gateways}/{id}"))
        .set("authorization", &auth)
        .call()
    {
        Ok(_) => return Ok(Outcome::Existed),
        Err(ureq::Error::Status(404, _)) => {}
        Err(ureq::Error::Status(code, resp)) => {
            return Err(format!(
                "GET AI Gateway {id}: {code} {}",
                resp.into_string().unwrap_or_default()
            ))
        }
        Err(e) => return Err(format!("GET AI Gateway {id}: {e}")),
    }
    match agent
        .post(&gateways)
        .set("authorization", &auth)
        .send_json(gateway_body(id))
    {
        Ok(_) => Ok(Outcome::Created),
        Err(ureq::Error::Status(code, resp)) => Err(format!(
            "POST AI Gateway {id}: {code} {}",
            resp.into_string().unwrap_or_default()
        )),
        Err(e) => Err(format!("POST AI Gateway {id}: {e}")),
    }
}

/// The `PATCH /admin/tenant` that routes the tenant's Workers AI calls
/// through its gateway, for the operator to run once the Worker is deployed.
pub fn gateway_patch_hint(tenant: &str, gateway: &str, secrets: &Path) -> String {
    let worker = ResourceNames::of(tenant).worker;
    format!(
        "curl -X PATCH -H \"authorization: Bearer $(sed -n 's/^ADMIN_TOKEN=//p' {})\" \\\n    \
         -H \"content-type: application/json\" \\\n    \
         https://{worker}.<your-subdomain>.workers.dev/admin/tenant \\\n    \
         -d '{{\"aiGateway\":{{\"id\":\"{gateway}\"}}}}'",
        secrets.display()
    )
}

/// `cargo xtask provision <tenant> [--dry-run]`.
pub fn provision(tenant: &str, dry_run: bool) -> Result<(), ToolError> {
    tenant::check_deployable(tenant).map_err(ToolError)?;
    let config = crate::config_path(Some(tenant));
    let text = std::fs::read_to_string(&config).map_err(|e| {
        ToolError(format!(
            "no configuration {} ({e}); make it with `cargo xtask tenant new {tenant}`",
            config.display()
        ))
    })?;
    let secrets = secrets_path(tenant);
    let steps = plan(tenant, &text);
    let gateway = ResourceNames::of(tenant).ai_gateway;
    if dry_run {
        step(&format!(
            "provisioning {tenant} (dry run: nothing is called or written); each step first \
             looks for what exists, and runs this only when it is missing:"
        ));
        for s in &steps {
            println!("  {}", s.describe(&config, &secrets));
        }
        step("then, once the Worker is deployed, select the AI Gateway with:");
        println!("  {}", gateway_patch_hint(tenant, &gateway, &secrets));
        return Ok(());
    }
    let account = std::env::var("CLOUDFLARE_ACCOUNT_ID").unwrap_or_default();
    let token = std::env::var("CLOUDFLARE_API_TOKEN").unwrap_or_default();
    if account.is_empty() || token.is_empty() {
        return Err(ToolError(
            "provision needs CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID in the environment \
             (wrangler uses them too; the AI Gateway is created through the REST API). \
             `cargo xtask provision <id> --dry-run` shows the plan without them"
                .into(),
        ));
    }
    for s in &steps {
        match s {
            Step::KvNamespace { title } => kv_namespace(title, &config)?,
            Step::VectorizeIndex { name } => {
                vectorize_index(name, &config)?;
                vectorize::ensure_metadata_indexes(name, &config)?;
            }
            // Made with their index above, and all secrets together below.
            Step::MetadataIndex { .. } | Step::Secret { .. } => {}
            Step::AiGateway { id } => {
                step(&format!("AI Gateway {id}"));
                match ensure_gateway(API_BASE, &account, &token, id).map_err(ToolError)? {
                    Outcome::Existed => step(&format!("AI Gateway {id} exists; kept")),
                    Outcome::Created => step(&format!("AI Gateway {id} created")),
                }
            }
        }
    }
    put_secrets(tenant, &config, &secrets)?;
    step(&format!(
        "{tenant} is provisioned; deploy it with `cargo xtask deploy {tenant}`, then select its \
         AI Gateway:"
    ));
    println!("  {}", gateway_patch_hint(tenant, &gateway, &secrets));
    Ok(())
}

/// Output of a wrangler command that must succeed.
fn wrangler_output(args: &[String], what: &str) -> Result<String, ToolError> {
    let out = wrangler::command(args)
        .output()
        .map_err(|e| ToolError(format!("wrangler {what}: could not start: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(ToolError(format!(
            "wrangler {what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn kv_namespace(title: &str, config: &Path) -> Result<(), ToolError> {
    step(&format!("KV namespace {title}"));
    let listed = wrangler_output(&kv_list_args(config), "kv namespace list")?;
    let id = match find_kv_namespace(&listed, title).map_err(ToolError)? {
        Some(id) => {
            step(&format!("KV namespace {title} exists ({id}); kept"));
            id
        }
        None => {
            let out = wrangler_output(&kv_create_args(title, config), "kv namespace create")?;
            let id = created_kv_id(&out).ok_or_else(|| {
                ToolError(format!(
                    "wrangler kv namespace create printed no namespace id:\n{out}"
                ))
            })?;
            step(&format!("KV namespace {title} created ({id})"));
            id
        }
    };
    let text = std::fs::read_to_string(config)
        .map_err(|e| ToolError(format!("{}: {e}", config.display())))?;
    if tenant::kv_namespace_id(&text).as_deref() == Some(id.as_str()) {
        return Ok(());
    }
    let was = tenant::kv_namespace_id(&text).unwrap_or_default();
    if was != UNPROVISIONED_KV_ID {
        step(&format!(
            "{} named KV namespace {was}; it now names {id}, the one titled {title}",
            config.display()
        ));
    }
    let rewritten = tenant::set_kv_namespace_id(&text, &id).map_err(ToolError)?;
    std::fs::write(config, rewritten)
        .map_err(|e| ToolError(format!("cannot write {}: {e}", config.display())))?;
    step(&format!("wrote its id into {}", config.display()));
    Ok(())
}

fn vectorize_index(name: &str, config: &Path) -> Result<(), ToolError> {
    step(&format!("Vectorize index {name}"));
    let listed = wrangler_output(&vectorize_list_args(config), "vectorize list")?;
    match find_vectorize_index(&listed, name).map_err(ToolError)? {
        Some((dims, metric)) if dims == u64::from(DIMENSIONS) && metric == METRIC => {
            step(&format!(
                "Vectorize index {name} exists ({dims}, {metric}); kept"
            ));
            Ok(())
        }
        Some((dims, metric)) => Err(ToolError(format!(
            "the Vectorize index {name} exists with {dims} dimensions and metric {metric:?}; \
             the platform needs {DIMENSIONS} and {METRIC:?}. Delete it (wrangler vectorize \
             delete {name}) and provision again, or bind another index"
        ))),
        None => crate::toolchain::run(
            &mut wrangler::command(vectorize_create_args(name, config)),
            &format!("wrangler vectorize create {name}"),
        ),
    }
}

fn put_secrets(tenant: &str, config: &Path, path: &Path) -> Result<(), ToolError> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let (secrets, made) = complete_secrets(&existing, || crate::random_hex(24))?;
    if made {
        write_private(path, &secrets_file(tenant, &secrets))?;
        step(&format!("secrets kept in {}", path.display()));
    }
    for (name, value) in &secrets {
        step(&format!("secret {name} = {}", mask(value)));
        let mut child = wrangler::command(secret_put_args(name, config))
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| ToolError(format!("wrangler secret put: could not start: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(value.as_bytes())
                .map_err(|e| ToolError(format!("wrangler secret put {name}: {e}")))?;
        }
        let status = child
            .wait()
            .map_err(|e| ToolError(format!("wrangler secret put {name}: {e}")))?;
        if !status.success() {
            return Err(ToolError(format!(
                "wrangler secret put {name} failed ({status})"
            )));
        }
    }
    Ok(())
}

/// The text of `.secrets/<tenant>.vars`.
fn secrets_file(tenant: &str, secrets: &[(&str, String)]) -> String {
    let mut text = format!(
        "# Secrets of the deployed tenant {tenant}, put by `cargo xtask provision {tenant}`.\n\
         # Keep this file private; a second provision puts the same values.\n"
    );
    for (name, value) in secrets {
        text.push_str(&format!("{name}={value}\n"));
    }
    text
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), ToolError> {
    let fail = |e: std::io::Error| ToolError(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        }
    }
    // A file that already exists keeps its mode on open: narrow it first,
    // before the secrets are written into it.
    #[cfg(unix)]
    if path.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};

    #[test]
    fn the_plan_for_a_tenant() {
        let template = tenant::read_template(&crate::repo_root()).unwrap();
        let text = tenant::render(&template, "acme", UNPROVISIONED_KV_ID);
        let config = Path::new("tenants/acme/wrangler.toml");
        let secrets = Path::new(".secrets/acme.vars");
        let lines: Vec<String> = plan("acme", &text)
            .iter()
            .map(|s| s.describe(config, secrets))
            .collect();
        let c = "--config tenants/acme/wrangler.toml";
        assert_eq!(
            lines,
            [
                format!("wrangler kv namespace create acme-cache {c}   # then its id goes into tenants/acme/wrangler.toml ([[kv_namespaces]] id)"),
                format!("wrangler vectorize create acme-vectors --dimensions=768 --metric=cosine {c}"),
                format!("wrangler vectorize create-metadata-index acme-vectors --property-name=tenantId --type=string {c}"),
                format!("wrangler vectorize create-metadata-index acme-vectors --property-name=docId --type=string {c}"),
                "POST https://api.cloudflare.com/client/v4/accounts/$CLOUDFLARE_ACCOUNT_ID/ai-gateway/gateways {\"cache_invalidate_on_update\":false,\"cache_ttl\":0,\"collect_logs\":true,\"id\":\"acme-gateway\",\"rate_limiting_interval\":0,\"rate_limiting_limit\":0}".to_owned(),
                format!("wrangler secret put ADMIN_TOKEN {c}   # value on stdin: 48 random hex characters, kept in .secrets/acme.vars"),
                format!("wrangler secret put INGEST_TOKEN {c}   # value on stdin: 48 random hex characters, kept in .secrets/acme.vars"),
            ]
        );
    }

    #[test]
    fn every_tenant_plan_names_its_own_resources() {
        for t in crate::tenant_ids() {
            let text = std::fs::read_to_string(crate::config_path(Some(&t))).unwrap();
            let steps = plan(&t, &text);
            assert_eq!(steps.len(), 7, "{t}: {steps:?}");
            assert!(steps.contains(&Step::VectorizeIndex {
                name: format!("{t}-vectors")
            }));
            assert!(steps.contains(&Step::KvNamespace {
                title: format!("{t}-cache")
            }));
            assert!(steps.contains(&Step::AiGateway {
                id: format!("{t}-gateway")
            }));
        }
    }

    #[test]
    fn reads_wrangler_outputs() {
        let created = "🌀 Creating namespace with title \"acme-cache\"\n✨ Success!\nTo access your new KV Namespace in your Worker, add the following snippet to your configuration file:\n[[kv_namespaces]]\nbinding = \"acme_cache\"\nid = \"0f2ac74b498b48028cb68387c421e279\"\n";
        assert_eq!(
            created_kv_id(created).as_deref(),
            Some("0f2ac74b498b48028cb68387c421e279")
        );
        let json = "{\n  \"kv_namespaces\": [\n    {\n      \"binding\": \"x\",\n      \"id\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n    }\n  ]\n}";
        assert_eq!(
            created_kv_id(json).as_deref(),
            Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        assert_eq!(created_kv_id("✨ Success!"), None);

        let listed = r#"[
  {"id": "11111111111111111111111111111111", "title": "other-cache", "supports_url_encoding": true},
  {"id": "22222222222222222222222222222222", "title": "acme-cache", "supports_url_encoding": true}
]"#;
        assert_eq!(
            find_kv_namespace(listed, "acme-cache").unwrap().as_deref(),
            Some("22222222222222222222222222222222")
        );
        assert_eq!(find_kv_namespace(listed, "new-cache").unwrap(), None);
        assert!(find_kv_namespace("not json", "x").is_err());

        let indexes = r#"📋 Listing Vectorize indexes...
[{"name":"acme-vectors","config":{"dimensions":768,"metric":"cosine"},"created_on":"x"},
 {"name":"old","config":{"dimensions":384,"metric":"euclidean"}}]"#;
        assert_eq!(
            find_vectorize_index(indexes, "acme-vectors").unwrap(),
            Some((768, "cosine".to_owned()))
        );
        assert_eq!(
            find_vectorize_index(indexes, "old").unwrap(),
            Some((384, "euclidean".to_owned()))
        );
        assert_eq!(find_vectorize_index("[]", "acme-vectors").unwrap(), None);
    }

    #[test]
    fn secrets_are_kept_across_runs_and_printed_masked() {
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            Ok(format!("{n:0>48}"))
        };
        let (first, made) = complete_secrets("", &mut fresh).unwrap();
        assert!(made);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].0, "ADMIN_TOKEN");
        assert_ne!(first[0].1, first[1].1);
        let file = secrets_file("acme", &first);
        let (again, made) = complete_secrets(&file, &mut fresh).unwrap();
        assert!(!made, "a second run makes nothing new");
        assert_eq!(again, first);
        // One missing: only that one is made.
        let partial = format!("ADMIN_TOKEN={}\n", first[0].1);
        let (mixed, made) = complete_secrets(&partial, &mut fresh).unwrap();
        assert!(made);
        assert_eq!(mixed[0], first[0]);
        assert_ne!(mixed[1], first[1]);

        let secret = "abcdef0123456789abcdef0123456789abcdef0123456789";
        let shown = mask(secret);
        assert_eq!(shown, "abcd… (48 characters)");
        assert!(!shown.contains(&secret[4..8]));
    }

    #[test]
    fn the_patch_hint_names_the_gateway_and_no_secret() {
        let hint = gateway_patch_hint("acme", "acme-gateway", Path::new(".secrets/acme.vars"));
        assert!(
            hint.contains("{\"aiGateway\":{\"id\":\"acme-gateway\"}}"),
            "{hint}"
        );
        assert!(hint.contains("https://acme-api."), "{hint}");
        assert!(hint.contains("sed -n 's/^ADMIN_TOKEN=//p' .secrets/acme.vars"));
    }

    /// One request as a test server saw it: request line, headers, body.
    struct Seen {
        line: String,
        headers: Vec<String>,
        body: String,
    }

    /// Answers each connection with the next of `answers` (status, body),
    /// then closes it; returns what it saw.
    fn serve(answers: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    headers.push(h.trim().to_ascii_lowercase());
                }
                let len = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                let mut buf = vec![0; len];
                reader.read_exact(&mut buf).unwrap();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                (&stream).write_all(reply.as_bytes()).unwrap();
                seen.push(Seen {
                    line: line.trim().to_owned(),
                    headers,
                    body: String::from_utf8(buf).unwrap(),
                });
            }
            seen
        });
        (base, handle)
    }

    #[test]
    fn a_missing_gateway_is_created() {
        let (base, server) = serve(vec![
            (
                404,
                r#"{"success":false,"errors":[{"code":7002,"message":"Not Found"}]}"#,
            ),
            (200, r#"{"success":true,"result":{"id":"acme-gateway"}}"#),
        ]);
        let outcome = ensure_gateway(&base, "acct1", "tok", "acme-gateway").unwrap();
        assert_eq!(outcome, Outcome::Created);
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0].line,
            "GET /accounts/acct1/ai-gateway/gateways/acme-gateway HTTP/1.1"
        );
        assert_eq!(
            seen[1].line,
            "POST /accounts/acct1/ai-gateway/gateways HTTP/1.1"
        );
        for s in &seen {
            assert!(s.headers.contains(&"authorization: bearer tok".to_owned()));
        }
        let body: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(body, gateway_body("acme-gateway"));
    }

    #[test]
    fn an_existing_gateway_is_kept_and_errors_are_reported() {
        let (base, server) = serve(vec![(200, r#"{"success":true,"result":{}}"#)]);
        assert_eq!(
            ensure_gateway(&base, "a", "t", "g").unwrap(),
            Outcome::Existed
        );
        assert_eq!(server.join().unwrap().len(), 1, "no POST");

        let (base, server) = serve(vec![(
            403,
            r#"{"success":false,"errors":[{"message":"Authentication error"}]}"#,
        )]);
        let e = ensure_gateway(&base, "a", "t", "g").unwrap_err();
        assert!(
            e.contains("403") && e.contains("Authentication error"),
            "{e}"
        );
        server.join().unwrap();
    }
}
