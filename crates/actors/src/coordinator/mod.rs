//! `TenantCoordinator`: one per tenant (`${tenantId}:coordinator`), owner of
//! the tenant's record and settings.

pub mod core;
mod handle;
mod object;

pub use handle::CoordinatorHandle;
pub use object::TenantCoordinator;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "TENANT_COORDINATOR";

/// The resource part of the object's name (`${tenantId}:coordinator`).
pub const RESOURCE: &str = "coordinator";
