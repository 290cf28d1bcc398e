//! `TenantCoordinator`: one per tenant (`${tenantId}:coordinator`), owner of
//! the tenant's record, settings and API keys.
//!
//! [`core`] decides (pure), [`keys`] is its key store, `object` is the
//! Durable Object shell (storage, KV, alarm), [`sessions`] the tenant's
//! session registry in its SQLite, and `handle` the gateway's typed way in.

pub mod core;
mod handle;
pub mod keys;
mod object;
pub mod sessions;
pub mod settings;

pub use handle::CoordinatorHandle;
pub use object::TenantCoordinator;
pub use settings::tenant_settings;

/// The Durable Object binding name in every wrangler config.
pub const BINDING: &str = "TENANT_COORDINATOR";

/// The resource part of the object's name (`${tenantId}:coordinator`).
pub const RESOURCE: &str = "coordinator";
