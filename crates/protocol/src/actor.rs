//! What every actor shares.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of actor, as they appear in operator routes
/// (`/admin/actors/<kind>/<name>`) and in Durable Object names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// `TenantCoordinator`, one per tenant, named `${tenantId}:coordinator`.
    Coordinator,
    /// `IngestQueue`, one per tenant, named `${tenantId}:ingest`.
    Ingest,
    /// `ChatSession`, one per session, named `${tenantId}:${sessionId}`.
    Chat,
    /// `RateLimiter`, one per key, named `${tenantId}:limiter:<keyId>` (and
    /// the tenant's ledger, `${tenantId}:limiter`).
    Limiter,
    /// `SearchReplica`, `SEARCH_REPLICAS` per tenant, named
    /// `${tenantId}:search-<k>` (the route's name is `k`).
    Search,
}

impl ActorKind {
    /// Every kind, in a stable order (for listings and error messages).
    pub const ALL: &'static [ActorKind] = &[
        ActorKind::Coordinator,
        ActorKind::Ingest,
        ActorKind::Chat,
        ActorKind::Limiter,
        ActorKind::Search,
    ];

    /// The kind's name in routes and Durable Object names.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Coordinator => "coordinator",
            ActorKind::Ingest => "ingest",
            ActorKind::Chat => "chat",
            ActorKind::Limiter => "limiter",
            ActorKind::Search => "search",
        }
    }

    /// Looks a kind up by its route name.
    pub fn from_route(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
