//! The Vectorize metadata indexes a deployment needs, and the wrangler
//! commands that create them.
//!
//! Vectorize applies a metadata filter only on properties that have a
//! metadata index, and indexes only the vectors upserted *after* the
//! metadata index exists. The Worker filters every query on `tenantId` (a
//! second wall beside the tenant's namespace) and a client may filter on
//! `docId`, so both must exist before the first upsert: `cargo xtask deploy`
//! creates any that are missing before it deploys the Worker (nothing is
//! upserted until the Worker runs).

use crate::toolchain::{run, step, ToolError};
use std::path::Path;

/// The metadata properties the platform filters on, with their Vectorize
/// types: `tenantId` on every query, `docId` when a search names one.
pub const METADATA_INDEXES: &[(&str, &str)] = &[("tenantId", "string"), ("docId", "string")];

/// The Vectorize index names (`index_name` of each `[[vectorize]]` table)
/// of a `wrangler.toml`'s default environment, the one that deploys. The
/// `[env.*]` environments are left out: the local one has no Vectorize.
///
/// A line reader, not a TOML parser: it reads the project's own
/// configurations, whose tables are written one key per line.
pub fn index_names(config: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_vectorize = false;
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            in_vectorize = line == "[[vectorize]]";
            continue;
        }
        if !in_vectorize {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "index_name" {
            let name = value.trim().trim_matches('"').to_owned();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The arguments of `wrangler vectorize create-metadata-index` for one
/// property of `index`, with the configuration (for its account).
pub fn create_args(index: &str, property: &str, kind: &str, config: &Path) -> Vec<String> {
    vec![
        "vectorize".into(),
        "create-metadata-index".into(),
        index.into(),
        format!("--property-name={property}"),
        format!("--type={kind}"),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// The arguments of `wrangler vectorize list-metadata-index --json`.
pub fn list_args(index: &str, config: &Path) -> Vec<String> {
    vec![
        "vectorize".into(),
        "list-metadata-index".into(),
        index.into(),
        "--json".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// Which of [`METADATA_INDEXES`] the output of `list-metadata-index --json`
/// (`[{"propertyName","indexType"}]`, possibly after other lines) lacks. A
/// property indexed with another type is an error: its filters would not
/// match, and only deleting and recreating it (then re-ingesting) mends it.
pub fn missing(listed: &str) -> Result<Vec<(&'static str, &'static str)>, String> {
    let start = listed
        .find('[')
        .ok_or_else(|| format!("no JSON list in the output of list-metadata-index: {listed}"))?;
    let existing: Vec<serde_json::Value> =
        serde_json::from_str(listed[start..].trim()).map_err(|e| {
            format!("the output of list-metadata-index is not a JSON list ({e}): {listed}")
        })?;
    let mut missing = Vec::new();
    for &(property, kind) in METADATA_INDEXES {
        let found = existing
            .iter()
            .find(|m| m["propertyName"].as_str() == Some(property));
        match found.map(|m| m["indexType"].as_str().unwrap_or_default()) {
            None => missing.push((property, kind)),
            Some(have) if have == kind => {}
            Some(have) => {
                return Err(format!(
                "the metadata index on {property} is of type {have}, the platform needs {kind}: \
                     delete it (wrangler vectorize delete-metadata-index), and ingest again after \
                     the deploy creates it anew"
            ))
            }
        }
    }
    Ok(missing)
}

/// Creates the metadata indexes of [`METADATA_INDEXES`] that `index` lacks
/// (listing them first), with the account of `config`.
pub fn ensure_metadata_indexes(index: &str, config: &Path) -> Result<(), ToolError> {
    step(&format!("Vectorize metadata indexes of {index}"));
    let out = crate::wrangler::command(list_args(index, config))
        .output()
        .map_err(|e| ToolError(format!("wrangler: {e}")))?;
    let listed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ToolError(format!(
            "wrangler vectorize list-metadata-index {index} failed (does the index exist? \
             see docs/deploy.md):\n{listed}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    for (property, kind) in missing(&listed).map_err(ToolError)? {
        run(
            &mut crate::wrangler::command(create_args(index, property, kind, config)),
            &format!("wrangler vectorize create-metadata-index {index} {property}"),
        )?;
    }
    Ok(())
}

/// The commands (wrangler arguments) that create every metadata index of
/// every Vectorize index `config` binds, as a deploy that finds none would
/// run them: what `cargo xtask deploy --dry-run` prints.
pub fn plan(config_text: &str, config: &Path) -> Vec<Vec<String>> {
    index_names(config_text)
        .iter()
        .flat_map(|index| {
            METADATA_INDEXES
                .iter()
                .map(move |(property, kind)| create_args(index, property, kind, config))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_come_from_the_deployed_environment_only() {
        let config = r#"
name = "t-api"
[vars]
VECTOR_BACKEND = "vectorize"
[[vectorize]]
binding = "VECTORS"
index_name = "t-vectors" # made with wrangler vectorize create
[ai]
binding = "AI"
[env.local]
[[env.local.vectorize]]
binding = "VECTORS"
index_name = "local-vectors"
"#;
        assert_eq!(index_names(config), ["t-vectors"]);
        assert!(index_names("[vars]\nindex_name = \"x\"\n").is_empty());
    }

    #[test]
    fn every_tenant_gets_tenant_id_and_doc_id_indexes_before_it_deploys() {
        // The real configurations: each deployable one binds an index, and
        // the plan names both properties for it, as strings.
        let mut configs: Vec<_> = crate::tenant_ids()
            .into_iter()
            .map(|t| crate::config_path(Some(&t)))
            .collect();
        configs.push(crate::config_path(None));
        assert!(configs.len() >= 3, "{configs:?}");
        for config in configs {
            let text = std::fs::read_to_string(&config).unwrap();
            let indexes = index_names(&text);
            assert_eq!(indexes.len(), 1, "{}: {indexes:?}", config.display());
            let index = &indexes[0];
            let lines: Vec<String> = plan(&text, &config)
                .into_iter()
                .map(|args| args.join(" "))
                .collect();
            let at = config.display();
            assert_eq!(
                lines,
                [
                    format!("vectorize create-metadata-index {index} --property-name=tenantId --type=string --config {at}"),
                    format!("vectorize create-metadata-index {index} --property-name=docId --type=string --config {at}"),
                ]
            );
        }
        let mrr = crate::config_path(Some("mrrainbowsmoke"));
        let text = std::fs::read_to_string(&mrr).unwrap();
        assert_eq!(index_names(&text), ["mrrainbowsmoke-vectors"]);
    }

    #[test]
    fn only_missing_indexes_are_created() {
        assert_eq!(missing("[]").unwrap(), METADATA_INDEXES);
        let listed = r#"[
  {"propertyName": "tenantId", "indexType": "string"},
  {"propertyName": "source", "indexType": "string"}
]"#;
        assert_eq!(missing(listed).unwrap(), [("docId", "string")]);
        // Lines before the JSON (a warning on stdout) are skipped.
        let both = format!(
            "Using the account of the config\n{}",
            r#"[{"propertyName":"docId","indexType":"string"},{"propertyName":"tenantId","indexType":"string"}]"#
        );
        assert!(missing(&both).unwrap().is_empty());
        let wrong = r#"[{"propertyName":"docId","indexType":"number"}]"#;
        assert!(missing(wrong)
            .unwrap_err()
            .contains("docId is of type number"));
        assert!(missing("not json").is_err());
    }
}
