//! Tenant resolution: which tenant a request belongs to, decided before
//! anything is touched.
//!
//! Two modes, chosen by the deployment's vars:
//! - **dedicated** (`TENANT_ID` is set): the Worker serves one tenant; the
//!   `x-tenant-id` header is optional and, when present, must name it (403);
//! - **shared** (no `TENANT_ID`): the header is required (400) and must name a
//!   tenant listed in `TENANTS` (comma-separated); any other gets 404.
//!
//! A header that is not a valid id is a 400 in both modes: ids become
//! prefixes of Durable Object names, KV keys and Vectorize namespaces.

use crate::errors::ApiError;
use protocol::TenantId;

/// The header that names the tenant.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// How this deployment serves tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantMode {
    /// One Worker per tenant.
    Dedicated(TenantId),
    /// One Worker for the listed tenants.
    Shared(Vec<TenantId>),
}

impl TenantMode {
    /// Builds the mode from the `TENANT_ID` and `TENANTS` vars.
    pub fn from_vars(tenant_id: Option<&str>, tenants: Option<&str>) -> Result<Self, ApiError> {
        if let Some(raw) = tenant_id {
            let id = TenantId::parse(raw).map_err(|e| {
                ApiError::NotConfigured(format!("the TENANT_ID var is not a valid tenant id: {e}"))
            })?;
            return Ok(Self::Dedicated(id));
        }
        let list = tenants.unwrap_or_default();
        let mut registered = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            registered.push(TenantId::parse(raw).map_err(|e| {
                ApiError::NotConfigured(format!("the TENANTS var lists an invalid id {raw:?}: {e}"))
            })?);
        }
        Ok(Self::Shared(registered))
    }

    /// Resolves the tenant of a request from its `x-tenant-id` header value
    /// (as the runtime joins repeated headers: `"a, b"`).
    pub fn resolve(&self, header: Option<&str>) -> Result<TenantId, ApiError> {
        let claimed = header.map(parse_header).transpose()?;
        match (self, claimed) {
            (Self::Dedicated(own), None) => Ok(own.clone()),
            (Self::Dedicated(own), Some(claimed)) if claimed == *own => Ok(claimed),
            (Self::Dedicated(_), Some(_)) => Err(ApiError::tenant_mismatch(
                "this deployment serves another tenant",
            )),
            (Self::Shared(_), None) => Err(ApiError::bad_request(
                "missing_tenant",
                format!("the {TENANT_HEADER} header is required"),
            )),
            (Self::Shared(registered), Some(claimed)) if registered.contains(&claimed) => {
                Ok(claimed)
            }
            (Self::Shared(_), Some(_)) => {
                Err(ApiError::not_found("unknown_tenant", "no such tenant"))
            }
        }
    }

    /// Whether this deployment serves `tenant`.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        match self {
            Self::Dedicated(own) => own == tenant,
            Self::Shared(registered) => registered.contains(tenant),
        }
    }
}

/// Checks a tenant named by the request (`x-tenant-id`, `?tenant=`): a 400
/// when it cannot be an id.
pub fn parse_header(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_tenant",
            format!("{TENANT_HEADER} must match ^[a-z0-9][a-z0-9-]{{0,62}}$ and appear once: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn dedicated_mode() {
        let mode = TenantMode::from_vars(Some("acme"), Some("ignored")).unwrap();
        assert_eq!(mode.resolve(None), Ok(id("acme")));
        assert_eq!(mode.resolve(Some("acme")), Ok(id("acme")));
        assert_eq!(mode.resolve(Some("other")).unwrap_err().status(), 403);
        assert_eq!(mode.resolve(Some("ACME")).unwrap_err().status(), 400);
        assert_eq!(mode.resolve(Some("acme, acme")).unwrap_err().status(), 400);
    }

    #[test]
    fn shared_mode() {
        let mode = TenantMode::from_vars(None, Some(" acme , beta,")).unwrap();
        assert_eq!(mode, TenantMode::Shared(vec![id("acme"), id("beta")]));
        assert_eq!(mode.resolve(Some("beta")), Ok(id("beta")));
        assert_eq!(mode.resolve(None).unwrap_err().status(), 400);
        let unknown = mode.resolve(Some("gamma")).unwrap_err();
        assert_eq!((unknown.status(), unknown.code()), (404, "unknown_tenant"));
        for bad in ["", "a:b", "a/b", "..", "Acme", "ü", "a b", &"a".repeat(64)] {
            assert_eq!(
                mode.resolve(Some(bad)).unwrap_err().status(),
                400,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_invalid_deployment_is_a_configuration_error() {
        assert_eq!(
            TenantMode::from_vars(Some("a:b"), None)
                .unwrap_err()
                .status(),
            503
        );
        assert_eq!(
            TenantMode::from_vars(None, Some("ok,BAD"))
                .unwrap_err()
                .status(),
            503
        );
        assert_eq!(
            TenantMode::from_vars(None, None),
            Ok(TenantMode::Shared(vec![]))
        );
    }
}
