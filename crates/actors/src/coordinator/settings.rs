//! A tenant's settings as the other actors read them: from the tenant's
//! coordinator, reused by the isolate for [`SETTINGS_TTL_MS`], so a chat
//! turn, a search or an indexed document costs the coordinator about one
//! read a second per tenant and isolate (more after a failed read, or one
//! slower than [`crate::isolate_cache::FETCH_WAIT_MS`]), and a settings
//! change reaches every actor within that second, except chat turns (below).
//!
//! Reads that miss at the same moment are *not* shared as one future: the
//! objects of one isolate each have their own I/O context, and an object
//! that awaited a read begun by another resumed in that object's context,
//! where its next storage write failed (`Cannot perform I/O on behalf of a
//! different Durable Object`: a chat turn of fifty concurrent sessions
//! failed with `storage_failed` right after its `tool_call`). One of them
//! reads; the others wait for its answer to reach the isolate's cache,
//! looking on their own timers ([`cached`]), and read for themselves if it
//! fails or takes longer than [`crate::isolate_cache::FETCH_WAIT_MS`].
//!
//! A chat turn takes them up to [`SETTINGS_STALE_MS`] older still
//! ([`tenant_settings_or_refresh`]): the first turns of a burst after a quiet
//! second start at once on the settings the isolate holds while one of them
//! reads them again, instead of all waiting for the coordinator (in the
//! chat bench, fifty turns at once reached their first event at a median
//! of 76 ms over nine runs when they waited, 63 over twelve with this:
//! docs/benchmarks.md). A change made through the coordinator of this
//! isolate applies here from the next read on ([`forget`]).

use super::CoordinatorHandle;
use crate::error::ActorError;
use crate::isolate_cache::{cached, cached_or_refresh, Background, TtlCache};
use crate::ports::{Clock, SystemClock};
use protocol::coordinator::TenantSettings;
use protocol::RequestId;
use protocol::TenantId;
use std::cell::RefCell;
use worker::Env;

/// How long an isolate reuses a tenant's settings.
pub const SETTINGS_TTL_MS: u64 = 1_000;

/// How long past [`SETTINGS_TTL_MS`] a chat turn may still take a tenant's
/// settings while they are read again beside it: a conversation's next
/// turn, seconds after the last, does not wait for the coordinator.
pub const SETTINGS_STALE_MS: u64 = 10_000;

/// How many tenants' settings an isolate keeps (stale ones go first).
pub const SETTINGS_ENTRIES: usize = 1_000;

thread_local! {
    /// Each tenant's settings and when they were read (the isolate's one
    /// thread; no borrow is held across an await).
    static SETTINGS: RefCell<TtlCache<TenantId, TenantSettings>> =
        RefCell::new(TtlCache::new(SETTINGS_ENTRIES, SETTINGS_TTL_MS));
}

/// The tenant's settings, at most [`SETTINGS_TTL_MS`] old. A failed read is
/// not kept.
pub async fn tenant_settings(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<TenantSettings, ActorError> {
    let (settings, _) = cached(
        &SETTINGS,
        tenant,
        || SystemClock.now_ms(),
        || read(env, tenant, request_id),
    )
    .await?;
    Ok(settings)
}

/// The tenant's settings from its coordinator.
async fn read(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<TenantSettings, ActorError> {
    let record = CoordinatorHandle::new(env, tenant)?
        .get_tenant(request_id)
        .await?;
    Ok(record.settings)
}

/// The tenant's settings as [`tenant_settings`] reads them, or, when the
/// isolate's are stale by less than [`SETTINGS_STALE_MS`], those at once,
/// with their read again handed to `background` (one caller's; it must run
/// beside the request: `state.wait_until`). For a chat turn, which may run
/// on settings a few seconds old.
pub async fn tenant_settings_or_refresh(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    background: impl FnOnce(Background),
) -> Result<TenantSettings, ActorError> {
    let (env, tenant_id, request_id) = (env.clone(), tenant.clone(), request_id.clone());
    let (settings, _) = cached_or_refresh(
        &SETTINGS,
        tenant,
        SETTINGS_STALE_MS,
        || SystemClock.now_ms(),
        move || async move {
            let read = read(&env, &tenant_id, &request_id).await;
            if let Err(e) = &read {
                worker::console_warn!("chat: the tenant's settings could not be read: {e}");
            }
            read
        },
        background,
    )
    .await?;
    Ok(settings)
}

/// Forgets this isolate's copy of `tenant`'s settings (they just changed
/// here): its next read goes to the coordinator, and a read under way
/// stores nothing.
pub fn forget(tenant: &TenantId) {
    SETTINGS.with(|c| c.borrow_mut().remove_where(|t| t == tenant));
}
