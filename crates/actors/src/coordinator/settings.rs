//! A tenant's settings as the other actors read them: from the tenant's
//! coordinator, reused by the isolate for [`SETTINGS_TTL_MS`], so a chat
//! turn, a search or an indexed document costs the coordinator at most one
//! read a second per tenant and isolate, and a settings change reaches every
//! actor within that time.

use super::CoordinatorHandle;
use crate::error::ActorError;
use crate::ports::{Clock, SystemClock};
use protocol::coordinator::TenantSettings;
use protocol::{RequestId, TenantId};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// How long an isolate reuses a tenant's settings.
pub const SETTINGS_TTL_MS: u64 = 1_000;

thread_local! {
    /// Each tenant's settings and when they were read (the isolate's one
    /// thread; no borrow is held across an await).
    static SETTINGS: RefCell<HashMap<TenantId, (TenantSettings, u64)>> =
        RefCell::new(HashMap::new());
}

/// The tenant's settings, at most [`SETTINGS_TTL_MS`] old. A failed read is
/// not kept.
pub async fn tenant_settings(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<TenantSettings, ActorError> {
    let now = SystemClock.now_ms();
    let fresh = |at: u64| now.saturating_sub(at) < SETTINGS_TTL_MS;
    let kept = SETTINGS.with(|s| {
        s.borrow()
            .get(tenant)
            .filter(|(_, at)| fresh(*at))
            .map(|(settings, _)| settings.clone())
    });
    if let Some(settings) = kept {
        return Ok(settings);
    }
    let settings = CoordinatorHandle::new(env, tenant)?
        .get_tenant(request_id)
        .await?
        .settings;
    SETTINGS.with(|s| {
        let mut s = s.borrow_mut();
        // Bounded by the tenants this isolate served in the last second.
        s.retain(|_, (_, at)| fresh(*at));
        s.insert(tenant.clone(), (settings.clone(), now));
    });
    Ok(settings)
}
