//! A tenant's settings as the other actors read them: from the tenant's
//! coordinator, reused by the isolate for [`SETTINGS_TTL_MS`], so a chat
//! turn, a search or an indexed document costs the coordinator at most one
//! read a second per tenant and isolate once the cache is warm, and a
//! settings change reaches every actor within that time.
//!
//! Reads that miss at the same moment are *not* shared: the objects of one
//! isolate each have their own I/O context, and an object that awaited a
//! read begun by another resumed in that object's context, where its next
//! storage write failed (`Cannot perform I/O on behalf of a different
//! Durable Object`: a chat turn of fifty concurrent sessions failed with
//! `storage_failed` right after its `tool_call`). Each miss reads for
//! itself; the answer is cached for everyone.

use super::CoordinatorHandle;
use crate::error::ActorError;
use crate::ports::{Clock, SystemClock};
use protocol::coordinator::TenantSettings;
use protocol::RequestId;
use protocol::TenantId;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// How long an isolate reuses a tenant's settings.
pub const SETTINGS_TTL_MS: u64 = 1_000;

thread_local! {
    /// Each tenant's settings and when they were read (the isolate's one
    /// thread; no borrow is held across an await).
    static SETTINGS: RefCell<HashMap<TenantId, (TenantSettings, u64)>> = RefCell::new(HashMap::new());
}

/// The tenant's settings, at most [`SETTINGS_TTL_MS`] old. A failed read is
/// not kept.
pub async fn tenant_settings(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<TenantSettings, ActorError> {
    let now = SystemClock.now_ms();
    let fresh = move |at: u64| now.saturating_sub(at) < SETTINGS_TTL_MS;
    let hit = SETTINGS.with(|s| {
        let mut s = s.borrow_mut();
        match s.get(tenant) {
            Some((settings, at)) if fresh(*at) => Some(settings.clone()),
            _ => {
                // Bounded by the tenants this isolate served in the last
                // second.
                s.retain(|_, (_, at)| fresh(*at));
                None
            }
        }
    });
    if let Some(settings) = hit {
        return Ok(settings);
    }
    let coordinator = CoordinatorHandle::new(env, tenant)?;
    let settings = coordinator.get_tenant(request_id).await?.settings;
    SETTINGS.with(|s| {
        s.borrow_mut()
            .insert(tenant.clone(), (settings.clone(), SystemClock.now_ms()))
    });
    Ok(settings)
}
