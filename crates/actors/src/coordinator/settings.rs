//! A tenant's settings as the other actors read them: from the tenant's
//! coordinator, reused by the isolate for [`SETTINGS_TTL_MS`], so a chat
//! turn, a search or an indexed document costs the coordinator at most one
//! read a second per tenant and isolate, and a settings change reaches every
//! actor within that time. Reads that miss at the same moment (fifty turns
//! starting at once) share one call to the coordinator.

use super::CoordinatorHandle;
use crate::error::ActorError;
use crate::ports::{Clock, SystemClock};
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use protocol::coordinator::TenantSettings;
use protocol::{ErrorReply, RequestId, TenantId};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// How long an isolate reuses a tenant's settings.
pub const SETTINGS_TTL_MS: u64 = 1_000;

/// One read of the coordinator, shared by everyone who waits for it.
type Read = Shared<LocalBoxFuture<'static, Result<TenantSettings, ErrorReply>>>;

enum Entry {
    /// Read at this time.
    Ready(Box<TenantSettings>, u64),
    /// Being read.
    Reading(Read),
}

thread_local! {
    /// Each tenant's settings (the isolate's one thread; no borrow is held
    /// across an await).
    static SETTINGS: RefCell<HashMap<TenantId, Entry>> = RefCell::new(HashMap::new());
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
    let read = SETTINGS.with(|s| {
        let mut s = s.borrow_mut();
        match s.get(tenant) {
            Some(Entry::Ready(settings, at)) if fresh(*at) => Ok((**settings).clone()),
            Some(Entry::Reading(read)) => Err(read.clone()),
            _ => {
                // Bounded by the tenants this isolate served in the last
                // second (and those being read).
                s.retain(|_, e| match e {
                    Entry::Ready(_, at) => fresh(*at),
                    Entry::Reading(_) => true,
                });
                let read = fetch(env.clone(), tenant.clone(), request_id.clone());
                s.insert(tenant.clone(), Entry::Reading(read.clone()));
                Err(read)
            }
        }
    });
    let read = match read {
        Ok(settings) => return Ok(settings),
        Err(read) => read,
    };
    let answer = read.await;
    SETTINGS.with(|s| {
        let mut s = s.borrow_mut();
        // Only the read in progress is replaced: a newer entry stays.
        if matches!(s.get(tenant), Some(Entry::Reading(_))) {
            match &answer {
                Ok(settings) => {
                    s.insert(
                        tenant.clone(),
                        Entry::Ready(Box::new(settings.clone()), SystemClock.now_ms()),
                    );
                }
                Err(_) => {
                    s.remove(tenant);
                }
            }
        }
    });
    answer.map_err(ActorError::Refused)
}

fn fetch(env: Env, tenant: TenantId, request_id: RequestId) -> Read {
    async move {
        let coordinator = CoordinatorHandle::new(&env, &tenant).map_err(reply)?;
        let record = coordinator.get_tenant(&request_id).await.map_err(reply)?;
        Ok(record.settings)
    }
    .boxed_local()
    .shared()
}

/// An error as a cloneable reply (a shared read hands it to every waiter).
fn reply(e: ActorError) -> ErrorReply {
    match e {
        ActorError::Refused(reply) => reply,
        other => ErrorReply::new(protocol::ErrorCode::Unavailable, other.to_string()),
    }
}
