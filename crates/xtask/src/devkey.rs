//! The development key of `cargo xtask dev`: made once per local state
//! folder through the operator's `POST /admin/keys`, kept beside that state
//! (`<persist>/dev-key`), and reused on later runs while it still works.

use crate::toolchain::ToolError;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits until the local server answers `/health` for `tenant`, or fails if
/// `child` (wrangler dev) exits first.
pub fn wait_ready(base: &str, tenant: &str, child: &mut Child) -> Result<(), ToolError> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ToolError(format!("wrangler dev exited ({status})")));
        }
        let ok = ureq::get(&format!("{base}/health"))
            .set("x-tenant-id", tenant)
            .timeout(Duration::from_secs(5))
            .call()
            .is_ok();
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ToolError("wrangler dev did not answer within 180 s".into()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The key id inside `tp_<tenant>_<keyId>_<secret>`.
fn key_id(key: &str) -> Option<&str> {
    key.strip_prefix("tp_")?.split('_').nth(1)
}

/// Whether the operator's view of key `id` says it still works.
fn still_valid(base: &str, tenant: &str, admin: &str, id: &str) -> bool {
    let answer = ureq::get(&format!("{base}/admin/keys/{id}"))
        .set("x-tenant-id", tenant)
        .set("authorization", &format!("Bearer {admin}"))
        .timeout(Duration::from_secs(10))
        .call();
    let Ok(answer) = answer else { return false };
    let Ok(record) = answer.into_json::<serde_json::Value>() else {
        return false;
    };
    record["revokedAtMs"].is_null() && record["expiresAtMs"].is_null()
}

/// The development key for `tenant`: the one in `file` if it still works,
/// else a new one with every scope, written to `file`.
pub fn ensure(base: &str, tenant: &str, admin: &str, file: &Path) -> Result<String, ToolError> {
    if let Ok(saved) = std::fs::read_to_string(file) {
        let saved = saved.trim().to_owned();
        let same_tenant = saved.starts_with(&format!("tp_{tenant}_"));
        if same_tenant && key_id(&saved).is_some_and(|id| still_valid(base, tenant, admin, id)) {
            return Ok(saved);
        }
    }
    let body = serde_json::json!({
        "name": "cargo xtask dev",
        "scopes": ["search", "chat", "ingest", "admin"],
    });
    let answer = ureq::post(&format!("{base}/admin/keys"))
        .set("x-tenant-id", tenant)
        .set("authorization", &format!("Bearer {admin}"))
        .timeout(Duration::from_secs(10))
        .send_json(body)
        .map_err(|e| ToolError(format!("could not create a development key: {e}")))?;
    let record: serde_json::Value = answer
        .into_json()
        .map_err(|e| ToolError(format!("could not read the new key: {e}")))?;
    let key = record["key"]
        .as_str()
        .ok_or_else(|| ToolError("the key answer has no key".into()))?
        .to_owned();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ToolError(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(file, format!("{key}\n"))
        .map_err(|e| ToolError(format!("cannot write {}: {e}", file.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_ids_are_found() {
        let key = format!("tp_acme_0123456789ab_{}", "f".repeat(64));
        assert_eq!(super::key_id(&key), Some("0123456789ab"));
        assert_eq!(super::key_id("sk_x"), None);
    }
}
