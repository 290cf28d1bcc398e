//! The typed handle of a tenant's metrics objects.

use super::resource;
use crate::error::ActorError;
use crate::limiter::BINDING;
use crate::rpc::{reply_as, ActorStub};
use protocol::limits::{RateLimiterRequest, RateLimiterResponse};
use protocol::metrics::{MetricsRequest, MetricsResponse, RequestSample, RouteWindows, SHARDS};
use protocol::{RequestId, TenantId};
use worker::Env;

/// One of a tenant's metrics objects, `${tenantId}:metrics:<shard>`.
pub struct MetricsHandle {
    actor: ActorStub,
}

impl MetricsHandle {
    /// Shard `shard` (taken modulo [`SHARDS`]) of `tenant`'s metrics.
    pub fn new(env: &Env, tenant: &TenantId, shard: u32) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, &resource(shard % SHARDS), tenant)?,
        })
    }

    /// The shard a request's sample goes to: spread by its request id, so
    /// one tenant's traffic is shared by every shard.
    pub fn shard_of(request_id: &RequestId) -> u32 {
        let sum = request_id.as_str().bytes().fold(0u32, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        sum % SHARDS
    }

    async fn send(
        &self,
        request_id: &RequestId,
        request: MetricsRequest,
    ) -> Result<MetricsResponse, ActorError> {
        let reply: RateLimiterResponse = self
            .actor
            .send(request_id, RateLimiterRequest::Metrics(request))
            .await?;
        reply_as!(reply, RateLimiterResponse::Metrics)
    }

    /// Counts `samples`.
    pub async fn record(
        &self,
        request_id: &RequestId,
        samples: Vec<RequestSample>,
    ) -> Result<u64, ActorError> {
        match self
            .send(request_id, MetricsRequest::Record(samples))
            .await?
        {
            MetricsResponse::Recorded(n) => Ok(n),
            MetricsResponse::Windows(_) => Err(ActorError::UnexpectedReply {
                expected: "Recorded",
                got: "Windows",
            }),
        }
    }

    /// This shard's windows.
    pub async fn windows(&self, request_id: &RequestId) -> Result<RouteWindows, ActorError> {
        match self.send(request_id, MetricsRequest::Report).await? {
            MetricsResponse::Windows(w) => Ok(w),
            MetricsResponse::Recorded(_) => Err(ActorError::UnexpectedReply {
                expected: "Windows",
                got: "Recorded",
            }),
        }
    }
}

/// Every shard's windows of `tenant`, merged (read concurrently).
pub async fn tenant_windows(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<RouteWindows, ActorError> {
    let handles = (0..SHARDS)
        .map(|shard| MetricsHandle::new(env, tenant, shard))
        .collect::<Result<Vec<_>, _>>()?;
    let replies = futures::future::join_all(handles.iter().map(|h| h.windows(request_id))).await;
    let mut merged = RouteWindows::default();
    for reply in replies {
        merged.merge(&reply?);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_spread_over_every_shard() {
        let mut seen = [0u32; SHARDS as usize];
        for i in 0..400u32 {
            let id = RequestId::parse(&format!("{i:032x}")).unwrap_or_else(|_| unreachable!());
            let shard = MetricsHandle::shard_of(&id);
            assert!(shard < SHARDS);
            if let Some(n) = seen.get_mut(shard as usize) {
                *n += 1;
            }
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
