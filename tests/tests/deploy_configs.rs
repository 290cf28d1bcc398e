//! Every deployable configuration builds and validates offline with
//! `wrangler deploy --dry-run`, with the bindings the platform needs.

use e2e::PersistDir;

fn dry_run(config: &std::path::Path) -> String {
    let out_dir = PersistDir::new("dry-run");
    let out = xtask::wrangler::deploy_dry_run(config, out_dir.path())
        .output()
        .expect("run wrangler");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "dry run of {} failed:\n{text}",
        config.display()
    );
    text
}

#[test]
fn every_tenant_config_deploys_dry() {
    let tenants = xtask::tenant_ids();
    assert!(
        tenants.len() >= 2,
        "expected at least the two seed tenants, got {tenants:?}"
    );
    for tenant in tenants {
        let text = dry_run(&xtask::config_path(Some(&tenant)));
        assert!(
            xtask::wrangler::parse_upload_size(&text).is_some(),
            "{text}"
        );
        for binding in [
            "env.TENANT_COORDINATOR",
            "env.CACHE",
            "env.VECTORS",
            "env.AI",
        ] {
            assert!(
                text.contains(binding),
                "{tenant}: {binding} missing:\n{text}"
            );
        }
        assert!(
            text.contains(&format!("\"{tenant}\"")),
            "{tenant}: TENANT_ID not bound:\n{text}"
        );
    }
}

#[test]
fn the_shared_config_deploys_dry() {
    let text = dry_run(&xtask::config_path(None));
    assert!(text.contains("env.TENANTS"), "{text}");
    assert!(
        !text.contains("env.TENANT_ID "),
        "shared mode binds no TENANT_ID:\n{text}"
    );
}
