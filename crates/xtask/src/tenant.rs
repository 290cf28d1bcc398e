//! Tenant configurations: one template, rendered per tenant.
//!
//! Every `tenants/<id>/wrangler.toml` is [`TEMPLATE`] rendered for `<id>`
//! and the ids that `cargo xtask provision` wrote into it (today: the KV
//! namespace id). A native test checks that for every tenant, so a change
//! meant for all tenants is made once, in the template, and a configuration
//! edited by hand fails the tests until the template says the same.
//!
//! `cargo xtask tenant new <id>` renders the template for a new id (the KV
//! id still zeros) and adds the id to the shared deployment's `TENANTS`.

use std::path::{Path, PathBuf};

/// The template's path, under the repository root.
pub const TEMPLATE: &str = "tenants/_template/wrangler.toml";
/// The placeholder of the tenant id in the template.
const TENANT: &str = "{{tenant}}";
/// The placeholder of the KV namespace id in the template.
const KV_NAMESPACE_ID: &str = "{{kv_namespace_id}}";
/// The KV namespace id of a configuration not provisioned yet: wrangler
/// accepts its shape, and Cloudflare has no namespace with it.
pub const UNPROVISIONED_KV_ID: &str = "00000000000000000000000000000000";

/// The longest tenant id whose Cloudflare names fit: the Vectorize index
/// `<id>-vectors` may have 64 bytes, the Worker `<id>-api` 63 characters.
pub const MAX_DEPLOYABLE_ID_LEN: usize = 64 - "-vectors".len();

/// The names a tenant's Cloudflare resources get, all derived from its id
/// (the configuration holds the same ones: the template derives them alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceNames {
    /// The Worker (`name` of the configuration).
    pub worker: String,
    /// The KV namespace's title.
    pub kv_namespace: String,
    /// The Vectorize index.
    pub vectorize_index: String,
    /// The AI Gateway's id.
    pub ai_gateway: String,
}

impl ResourceNames {
    /// The names of `tenant`'s resources.
    pub fn of(tenant: &str) -> Self {
        Self {
            worker: format!("{tenant}-api"),
            kv_namespace: format!("{tenant}-cache"),
            vectorize_index: format!("{tenant}-vectors"),
            ai_gateway: format!("{tenant}-gateway"),
        }
    }
}

/// Checks the platform's tenant id rule, `^[a-z0-9][a-z0-9-]{0,62}$` (the
/// gateway's), and that ids starting with `_` (the shared and template
/// folders) are never tenants.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.starts_with('_') {
        return Err(format!(
            "{id:?} is not a tenant id: names starting with '_' are the repository's own folders \
             (tenants/_shared, tenants/_template)"
        ));
    }
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok || id.len() > 63 {
        return Err(format!(
            "{id:?} is not a valid tenant id: it must match ^[a-z0-9][a-z0-9-]{{0,62}}$ \
             (1 to 63 characters: lowercase letters, digits and '-', not starting with '-')"
        ));
    }
    Ok(())
}

/// Checks that a valid tenant id also gives valid Cloudflare names (see
/// [`ResourceNames`]): a Vectorize index name starts with a letter and has
/// at most 64 bytes, so the id must too, less the `-vectors` suffix.
pub fn check_deployable(id: &str) -> Result<(), String> {
    check_id(id)?;
    let names = ResourceNames::of(id);
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{id:?} is a valid tenant id, but its Vectorize index {:?} would not be a valid \
             index name (it must start with a letter): choose an id starting with a letter",
            names.vectorize_index
        ));
    }
    if id.len() > MAX_DEPLOYABLE_ID_LEN {
        return Err(format!(
            "{id:?} is a valid tenant id, but its Vectorize index {:?} would be longer than \
             Cloudflare's 64 bytes: choose an id of at most {MAX_DEPLOYABLE_ID_LEN} characters",
            names.vectorize_index
        ));
    }
    Ok(())
}

/// The template rendered for `tenant`, with `kv_namespace_id` (or
/// [`UNPROVISIONED_KV_ID`] before `provision`).
pub fn render(template: &str, tenant: &str, kv_namespace_id: &str) -> String {
    template
        .replace(TENANT, tenant)
        .replace(KV_NAMESPACE_ID, kv_namespace_id)
}

/// The template's text, read from the repository under `root`.
pub fn read_template(root: &Path) -> Result<String, String> {
    let path = root.join(TEMPLATE);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The `id` of the `[[kv_namespaces]]` table of a configuration's default
/// environment (the one that deploys), if it has one.
///
/// A line reader, like [`crate::vectorize::index_names`]: the configurations
/// are the template's, one key a line.
pub fn kv_namespace_id(config: &str) -> Option<String> {
    kv_id_line(config).map(|(_, value)| value)
}

/// The index of the line holding the default environment's KV namespace id,
/// and that id.
fn kv_id_line(config: &str) -> Option<(usize, String)> {
    let mut in_kv = false;
    for (n, line) in config.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default().trim();
        if code.starts_with('[') {
            in_kv = code == "[[kv_namespaces]]";
            continue;
        }
        if !in_kv {
            continue;
        }
        if let Some((key, value)) = code.split_once('=') {
            if key.trim() == "id" {
                return Some((n, value.trim().trim_matches('"').to_owned()));
            }
        }
    }
    None
}

/// `config` with the default environment's KV namespace id set to `id`,
/// everything else (the comment on that line too) left as it was: what
/// `provision` writes once it knows the namespace.
pub fn set_kv_namespace_id(config: &str, id: &str) -> Result<String, String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{id:?} is not a KV namespace id"));
    }
    let (at, old) =
        kv_id_line(config).ok_or("the configuration has no [[kv_namespaces]] table with an id")?;
    let mut out = String::with_capacity(config.len() + id.len());
    for (n, line) in config.split_inclusive('\n').enumerate() {
        if n == at {
            out.push_str(&line.replacen(&format!("\"{old}\""), &format!("\"{id}\""), 1));
        } else {
            out.push_str(line);
        }
    }
    Ok(out)
}

/// `shared` (the shared deployment's configuration) with `tenant` in every
/// `TENANTS = "a,b"` var, the list kept sorted and without duplicates.
pub fn add_to_tenants_var(shared: &str, tenant: &str) -> Result<String, String> {
    let mut found = false;
    let mut out = String::with_capacity(shared.len() + 2 * (tenant.len() + 1));
    for line in shared.split_inclusive('\n') {
        let code = line.trim_start();
        let value = code
            .strip_prefix("TENANTS")
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::trim)
            .and_then(|v| v.strip_prefix('"'))
            .and_then(|v| v.split_once('"'));
        let Some((list, _)) = value else {
            out.push_str(line);
            continue;
        };
        found = true;
        let mut ids: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        ids.push(tenant);
        ids.sort_unstable();
        ids.dedup();
        out.push_str(&line.replacen(&format!("\"{list}\""), &format!("\"{}\"", ids.join(",")), 1));
    }
    if found {
        Ok(out)
    } else {
        Err("the shared configuration has no TENANTS = \"...\" var".into())
    }
}

/// The ids of a configuration's `TENANTS` var (the first one), in order.
pub fn tenants_var(shared: &str) -> Vec<String> {
    shared
        .lines()
        .find_map(|line| {
            let (key, value) = line.split('#').next()?.split_once('=')?;
            (key.trim() == "TENANTS").then(|| value.trim().trim_matches('"').to_owned())
        })
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `cargo xtask tenant new <id>` in the repository at `root`: refuses an
/// invalid id or one that has a folder already, writes
/// `tenants/<id>/wrangler.toml` from the template and adds the id to the
/// shared configuration. Returns the new configuration's path.
pub fn scaffold(root: &Path, id: &str) -> Result<PathBuf, String> {
    check_deployable(id)?;
    let dir = root.join("tenants").join(id);
    if dir.exists() {
        return Err(format!(
            "tenant {id:?} exists already ({}); pick another id, or remove that folder first",
            dir.display()
        ));
    }
    let template = read_template(root)?;
    let shared_path = root.join("tenants/_shared/wrangler.toml");
    let shared = std::fs::read_to_string(&shared_path)
        .map_err(|e| format!("cannot read {}: {e}", shared_path.display()))?;
    let shared =
        add_to_tenants_var(&shared, id).map_err(|e| format!("{}: {e}", shared_path.display()))?;
    let config = dir.join("wrangler.toml");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(&config, render(&template, id, UNPROVISIONED_KV_ID))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    std::fs::write(&shared_path, shared)
        .map_err(|e| format!("cannot write {}: {e}", shared_path.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_config_is_the_template_rendered_for_it() {
        let root = crate::repo_root();
        let template = read_template(&root).unwrap();
        let tenants = crate::tenant_ids();
        assert!(tenants.len() >= 2, "{tenants:?}");
        for tenant in tenants {
            let path = crate::config_path(Some(&tenant));
            let config = std::fs::read_to_string(&path).unwrap();
            // The one value provision writes is taken from the file itself;
            // everything else must be what the template renders.
            let kv = kv_namespace_id(&config)
                .unwrap_or_else(|| panic!("{}: no KV namespace id", path.display()));
            let expected = render(&template, &tenant, &kv);
            assert!(
                config == expected,
                "{} differs from {TEMPLATE} rendered for {tenant:?}; change the template, \
                 not the tenant's file. Rendered:\n{expected}",
                path.display()
            );
            assert!(!config.contains("{{"), "{}", path.display());
            assert!(config.contains("[observability]\nenabled = true\n"));
            check_deployable(&tenant).unwrap();
        }
    }

    #[test]
    fn the_shared_config_lists_exactly_the_tenants_sorted() {
        let shared = std::fs::read_to_string(crate::config_path(None)).unwrap();
        assert_eq!(tenants_var(&shared), crate::tenant_ids());
        // Both environments' TENANTS agree: adding a tenant touches both.
        assert_eq!(shared.matches("TENANTS = ").count(), 2);
        let again = add_to_tenants_var(&shared, &crate::tenant_ids()[0]).unwrap();
        assert_eq!(again, shared, "adding a listed tenant changes nothing");
    }

    #[test]
    fn the_template_renders_every_name_from_the_id() {
        let template = read_template(&crate::repo_root()).unwrap();
        let config = render(&template, "acme", UNPROVISIONED_KV_ID);
        assert!(!config.contains("{{"), "a placeholder is left:\n{config}");
        let names = ResourceNames::of("acme");
        assert!(config.contains(&format!("name = \"{}\"\n", names.worker)));
        assert!(config.contains("TENANT_ID = \"acme\"\n"));
        assert!(config.contains(&format!("index_name = \"{}\"\n", names.vectorize_index)));
        assert!(config.contains(&format!("\"{}\"", names.kv_namespace)));
        assert_eq!(
            kv_namespace_id(&config).as_deref(),
            Some(UNPROVISIONED_KV_ID)
        );
        assert_eq!(
            crate::vectorize::index_names(&config),
            [names.vectorize_index]
        );
    }

    #[test]
    fn tenant_ids_follow_the_platform_rule() {
        for ok in ["a", "acme", "0day", "a-b-c", &"a".repeat(63)] {
            check_id(ok).unwrap();
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "ac me",
            "acme_co",
            "acme.co",
            "é",
            &"a".repeat(64),
        ] {
            let e = check_id(bad).unwrap_err();
            assert!(e.contains("not a valid tenant id"), "{bad:?}: {e}");
        }
        for reserved in ["_shared", "_template", "_x"] {
            let e = check_id(reserved).unwrap_err();
            assert!(e.contains("starting with '_'"), "{reserved:?}: {e}");
        }
    }

    #[test]
    fn deployable_ids_give_valid_cloudflare_names() {
        check_deployable(&"a".repeat(MAX_DEPLOYABLE_ID_LEN)).unwrap();
        let long = "a".repeat(MAX_DEPLOYABLE_ID_LEN + 1);
        assert!(check_deployable(&long).unwrap_err().contains("64 bytes"));
        assert!(check_deployable("0day")
            .unwrap_err()
            .contains("start with a letter"));
        assert!(ResourceNames::of(&"a".repeat(MAX_DEPLOYABLE_ID_LEN))
            .worker
            .len()
            .le(&63));
        assert!(check_deployable("Acme").is_err());
    }

    #[test]
    fn the_kv_id_is_rewritten_in_place_and_only_in_the_deployed_table() {
        let config = "name = \"t-api\"\n\n[[kv_namespaces]]\nbinding = \"CACHE\"\nid = \"00000000000000000000000000000000\" # namespace \"t-cache\"\n\n[env.local]\n[[env.local.kv_namespaces]]\nbinding = \"CACHE\"\nid = \"local-t-cache\"\n";
        let id = "0f2ac74b498b48028cb68387c421e279";
        let out = set_kv_namespace_id(config, id).unwrap();
        assert_eq!(
            out,
            config.replace("00000000000000000000000000000000", id),
            "only the id changes; the comment and the local table stay"
        );
        assert_eq!(kv_namespace_id(&out).as_deref(), Some(id));
        // Again with the same id: nothing changes (provision is idempotent).
        assert_eq!(set_kv_namespace_id(&out, id).unwrap(), out);
        assert!(set_kv_namespace_id(config, "x\" # injected").is_err());
        assert!(set_kv_namespace_id("[vars]\nid = \"x\"\n", id).is_err());
    }

    #[test]
    fn a_rendered_config_rewritten_by_provision_is_still_the_template() {
        let template = read_template(&crate::repo_root()).unwrap();
        let fresh = render(&template, "acme", UNPROVISIONED_KV_ID);
        let id = "9d1b6a5b0c8e4f2aa1b2c3d4e5f60718";
        let provisioned = set_kv_namespace_id(&fresh, id).unwrap();
        assert_eq!(provisioned, render(&template, "acme", id));
    }

    #[test]
    fn tenants_var_gains_the_id_sorted_in_every_environment() {
        let shared = "[vars]\nTENANTS = \"beta,delta\"\nAI_PROVIDER = \"x\"\n\n[env.local.vars]\nTENANTS = \"beta,delta\"\n";
        let out = add_to_tenants_var(shared, "charlie").unwrap();
        assert_eq!(out, shared.replace("beta,delta", "beta,charlie,delta"));
        assert_eq!(tenants_var(&out), ["beta", "charlie", "delta"]);
        let first = add_to_tenants_var(shared, "alpha").unwrap();
        assert_eq!(tenants_var(&first), ["alpha", "beta", "delta"]);
        assert!(add_to_tenants_var("[vars]\nX = \"1\"\n", "a").is_err());
    }

    /// A copy of the parts of the repository `scaffold` reads and writes.
    fn scratch_repo(label: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "xtask-tenant-{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let real = crate::repo_root();
        for rel in [TEMPLATE, "tenants/_shared/wrangler.toml"] {
            let to = root.join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(real.join(rel), to).unwrap();
        }
        root
    }

    #[test]
    fn scaffold_writes_the_rendered_config_and_lists_the_tenant() {
        let root = scratch_repo("new");
        let config = scaffold(&root, "acme").unwrap();
        assert_eq!(config, root.join("tenants/acme/wrangler.toml"));
        let template = read_template(&root).unwrap();
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            render(&template, "acme", UNPROVISIONED_KV_ID)
        );
        let shared = std::fs::read_to_string(root.join("tenants/_shared/wrangler.toml")).unwrap();
        let listed = tenants_var(&shared);
        assert!(listed.contains(&"acme".to_owned()), "{listed:?}");
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);

        // The same id again is refused, and nothing changes.
        let e = scaffold(&root, "acme").unwrap_err();
        assert!(e.contains("exists already"), "{e}");
        assert_eq!(
            std::fs::read_to_string(root.join("tenants/_shared/wrangler.toml")).unwrap(),
            shared
        );
        // Invalid ids write nothing.
        for bad in ["Acme", "-x", "0day", "_x"] {
            assert!(scaffold(&root, bad).is_err(), "{bad}");
            assert!(!root.join("tenants").join(bad).exists(), "{bad}");
        }
        assert!(scaffold(&root, "_shared").unwrap_err().contains("'_'"));
        assert_eq!(
            std::fs::read_to_string(root.join("tenants/_shared/wrangler.toml")).unwrap(),
            shared
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
