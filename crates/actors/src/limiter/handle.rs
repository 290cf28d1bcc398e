//! Typed handles to `RateLimiter` objects: a key's limiter and the tenant's
//! ledger.

use super::admission::{Applied, Work, TENANT_BUDGET_LIMITER};
use super::{BINDING, RESOURCE};
use crate::error::ActorError;
use crate::rpc::{reply_as, ActorStub, NamedReply};
use protocol::limits::{
    Admit, Admitted, BudgetExceeded, Inspect, LeaseAsk, LeaseGrant, LeaseReturn, LedgerRequest,
    LedgerResponse, LedgerSnapshot, LimitScope, LimiterRequest, LimiterResponse, LimiterSnapshot,
    RateLimited, RateLimiterRequest, RateLimiterResponse, Release, Released, Settle, Settled,
};
use protocol::usage::{UsageQuery, UsageRecord, UsageReport, UsageRequest, UsageResponse};
use protocol::{RequestId, TenantId};
use worker::Env;

impl NamedReply for RateLimiterResponse {
    fn variant(&self) -> &'static str {
        match self {
            RateLimiterResponse::Key(k) => match k {
                LimiterResponse::Admitted(_) => "Admitted",
                LimiterResponse::RateLimited(_) => "RateLimited",
                LimiterResponse::BudgetExceeded(_) => "BudgetExceeded",
                LimiterResponse::Settled(_) => "Settled",
                LimiterResponse::Released(_) => "Released",
                LimiterResponse::Snapshot(_) => "Snapshot",
            },
            RateLimiterResponse::Ledger(l) => match l {
                LedgerResponse::Lease(_) => "Lease",
                LedgerResponse::Returned(_) => "Returned",
                LedgerResponse::Snapshot(_) => "LedgerSnapshot",
            },
            RateLimiterResponse::Usage(u) => match u {
                UsageResponse::Recorded(_) => "Recorded",
                UsageResponse::Report(_) => "Report",
                UsageResponse::Recent(_) => "Recent",
            },
            RateLimiterResponse::Metrics(m) => match m {
                protocol::metrics::MetricsResponse::Recorded(_) => "MetricsRecorded",
                protocol::metrics::MetricsResponse::Windows(_) => "Windows",
            },
        }
    }
}

/// Whose limiter: a key's, or an anonymous caller's (by a digest of its
/// address, never the address itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitedBy {
    /// An API key (its id).
    Key(String),
    /// Anonymous traffic from one client (a hex digest of its address).
    Anonymous(String),
    /// The tenant's budgets ([`TENANT_BUDGET_LIMITER`]).
    TenantBudget,
}

impl LimitedBy {
    /// The resource part of the object's name: `limiter:<keyId>` or
    /// `limiter:anon-<digest>`.
    pub fn resource(&self) -> String {
        match self {
            LimitedBy::Key(id) => format!("{RESOURCE}:{id}"),
            LimitedBy::Anonymous(digest) => format!("{RESOURCE}:anon-{digest}"),
            LimitedBy::TenantBudget => TENANT_BUDGET_LIMITER.to_owned(),
        }
    }
}

/// What an admit comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (settle or release the reservation, if any, afterwards).
    Admitted(Admitted),
    /// 429.
    RateLimited(RateLimited),
    /// 402.
    BudgetExceeded(BudgetExceeded),
}

/// A key's (or an anonymous client's) limiter,
/// `${tenantId}:limiter:<keyId>`.
pub struct LimiterHandle {
    actor: ActorStub,
}

impl LimiterHandle {
    /// The limiter of `by` in `tenant`.
    pub fn new(env: &Env, tenant: &TenantId, by: &LimitedBy) -> Result<Self, ActorError> {
        Self::at(env, tenant, &by.resource())
    }

    /// The limiter named `resource` (from [`LimitedBy::resource`], carried
    /// by a turn's reservation) in `tenant`.
    pub fn at(env: &Env, tenant: &TenantId, resource: &str) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, resource, tenant)?,
        })
    }

    async fn send(
        &self,
        request_id: &RequestId,
        request: LimiterRequest,
    ) -> Result<RateLimiterResponse, ActorError> {
        self.actor
            .send(request_id, RateLimiterRequest::Key(request))
            .await
    }

    /// May this work start? Reserves what it may use.
    pub async fn admit(
        &self,
        request_id: &RequestId,
        admit: Admit,
    ) -> Result<Admission, ActorError> {
        let reply = self.send(request_id, LimiterRequest::Admit(admit)).await?;
        let got = reply.variant();
        match reply {
            RateLimiterResponse::Key(LimiterResponse::Admitted(a)) => Ok(Admission::Admitted(a)),
            RateLimiterResponse::Key(LimiterResponse::RateLimited(r)) => {
                Ok(Admission::RateLimited(r))
            }
            RateLimiterResponse::Key(LimiterResponse::BudgetExceeded(b)) => {
                Ok(Admission::BudgetExceeded(b))
            }
            _ => Err(ActorError::UnexpectedReply {
                expected: "Admitted",
                got,
            }),
        }
    }

    /// The work of a reservation is done: what it used.
    pub async fn settle(
        &self,
        request_id: &RequestId,
        settle: Settle,
    ) -> Result<Settled, ActorError> {
        let reply = self
            .send(request_id, LimiterRequest::Settle(settle))
            .await?;
        reply_as!(reply, RateLimiterResponse::Key).and_then(|k| match k {
            LimiterResponse::Settled(s) => Ok(s),
            other => Err(unexpected("Settled", other)),
        })
    }

    /// The work of a reservation did not happen.
    pub async fn release(
        &self,
        request_id: &RequestId,
        reservation_id: u64,
    ) -> Result<Released, ActorError> {
        let reply = self
            .send(
                request_id,
                LimiterRequest::Release(Release { reservation_id }),
            )
            .await?;
        reply_as!(reply, RateLimiterResponse::Key).and_then(|k| match k {
            LimiterResponse::Released(r) => Ok(r),
            other => Err(unexpected("Released", other)),
        })
    }

    /// The operator's view: buckets, reservations, windows.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<LimiterSnapshot, ActorError> {
        let reply = self
            .send(request_id, LimiterRequest::Inspect(Inspect {}))
            .await?;
        reply_as!(reply, RateLimiterResponse::Key).and_then(|k| match k {
            LimiterResponse::Snapshot(s) => Ok(s),
            other => Err(unexpected("Snapshot", other)),
        })
    }
}

fn unexpected(expected: &'static str, got: LimiterResponse) -> ActorError {
    ActorError::UnexpectedReply {
        expected,
        got: RateLimiterResponse::Key(got).variant(),
    }
}

/// Admits `work` as `applied` says: for a turn under a tenant budget, first
/// at [`TENANT_BUDGET_LIMITER`], then at the caller's limiter; otherwise at
/// the caller's limiter only. The tenant's budget comes first so that its
/// refusal spends nothing of the caller's (its `rpm` token, its slot); a
/// refusal or failure at the caller's limiter gives the tenant budget's
/// reservation back. Returns the admission and the reservation at the
/// tenant's budget limiter, if one was made.
pub async fn admit_applied(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    applied: &Applied,
    work: &Work,
) -> Result<(Admission, Option<u64>), ActorError> {
    let caller = LimiterHandle::at(env, tenant, &applied.limiter)?;
    let Some(at_tenant) = applied.tenant_admit(work) else {
        let admission = caller.admit(request_id, applied.admit(work)).await?;
        return Ok((admission, None));
    };
    let budget = LimiterHandle::at(env, tenant, TENANT_BUDGET_LIMITER)?;
    let held = match budget.admit(request_id, at_tenant).await? {
        Admission::Admitted(t) => t.reservation_id,
        Admission::BudgetExceeded(b) => {
            return Ok((
                Admission::BudgetExceeded(BudgetExceeded {
                    scope: LimitScope::Tenant,
                    ..b
                }),
                None,
            ))
        }
        refused => return Ok((refused, None)),
    };
    let admission = caller.admit(request_id, applied.admit(work)).await;
    if let Ok(Admission::Admitted(_)) = admission {
        return Ok((admission?, held));
    }
    if let Some(id) = held {
        if let Err(e) = budget.release(request_id, id).await {
            worker::console_warn!("a reservation was not released: {e}");
        }
    }
    admission.map(|a| (a, None))
}

/// A tenant's ledger, `${tenantId}:limiter`: the tenant's capacity, lent to
/// its keys' limiters.
pub struct LedgerHandle {
    actor: ActorStub,
}

impl LedgerHandle {
    /// The ledger of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, RESOURCE, tenant)?,
        })
    }

    async fn send(
        &self,
        request_id: &RequestId,
        request: LedgerRequest,
    ) -> Result<LedgerResponse, ActorError> {
        let reply: RateLimiterResponse = self
            .actor
            .send(request_id, RateLimiterRequest::Ledger(request))
            .await?;
        reply_as!(reply, RateLimiterResponse::Ledger)
    }

    /// Lends capacity (taking back what an earlier lease did not use).
    pub async fn lease(
        &self,
        request_id: &RequestId,
        ask: LeaseAsk,
    ) -> Result<LeaseGrant, ActorError> {
        match self.send(request_id, LedgerRequest::Lease(ask)).await? {
            LedgerResponse::Lease(grant) => Ok(grant),
            other => Err(ledger_unexpected("Lease", other)),
        }
    }

    /// Takes back unused capacity.
    pub async fn give_back(
        &self,
        request_id: &RequestId,
        back: LeaseReturn,
    ) -> Result<LeaseReturn, ActorError> {
        match self.send(request_id, LedgerRequest::Return(back)).await? {
            LedgerResponse::Returned(back) => Ok(back),
            other => Err(ledger_unexpected("Returned", other)),
        }
    }

    /// The operator's view of the tenant's buckets and leases.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<LedgerSnapshot, ActorError> {
        match self
            .send(request_id, LedgerRequest::Inspect(Inspect {}))
            .await?
        {
            LedgerResponse::Snapshot(s) => Ok(s),
            other => Err(ledger_unexpected("LedgerSnapshot", other)),
        }
    }
}

impl LedgerHandle {
    async fn usage(
        &self,
        request_id: &RequestId,
        request: UsageRequest,
    ) -> Result<UsageResponse, ActorError> {
        let reply: RateLimiterResponse = self
            .actor
            .send(request_id, RateLimiterRequest::Usage(request))
            .await?;
        reply_as!(reply, RateLimiterResponse::Usage)
    }

    /// Adds usage records (at most [`protocol::usage::MAX_RECORDS`]).
    pub async fn record_usage(
        &self,
        request_id: &RequestId,
        records: Vec<UsageRecord>,
    ) -> Result<u64, ActorError> {
        match self
            .usage(request_id, UsageRequest::Record(records))
            .await?
        {
            UsageResponse::Recorded(n) => Ok(n),
            other => Err(usage_unexpected("Recorded", other)),
        }
    }

    /// Adds turns' usage records (at most [`protocol::usage::MAX_RECORDS`])
    /// and hands their sessions' registry reports to the ledger, which
    /// passes them on to the coordinator ([`super::relay`]).
    pub async fn record_turns(
        &self,
        request_id: &RequestId,
        records: Vec<UsageRecord>,
        sessions: Vec<protocol::listing::SessionReport>,
    ) -> Result<u64, ActorError> {
        match self
            .usage(request_id, UsageRequest::RecordTurns { records, sessions })
            .await?
        {
            UsageResponse::Recorded(n) => Ok(n),
            other => Err(usage_unexpected("Recorded", other)),
        }
    }

    /// Tokens and cost over the last hour and day.
    pub async fn recent_usage(
        &self,
        request_id: &RequestId,
    ) -> Result<protocol::metrics::RecentTokens, ActorError> {
        match self.usage(request_id, UsageRequest::Recent).await? {
            UsageResponse::Recent(r) => Ok(r),
            other => Err(usage_unexpected("Recent", other)),
        }
    }

    /// A usage report.
    pub async fn usage_report(
        &self,
        request_id: &RequestId,
        query: UsageQuery,
    ) -> Result<UsageReport, ActorError> {
        match self.usage(request_id, UsageRequest::Report(query)).await? {
            UsageResponse::Report(r) => Ok(r),
            other => Err(usage_unexpected("Report", other)),
        }
    }
}

fn usage_unexpected(expected: &'static str, got: UsageResponse) -> ActorError {
    ActorError::UnexpectedReply {
        expected,
        got: RateLimiterResponse::Usage(got).variant(),
    }
}

fn ledger_unexpected(expected: &'static str, got: LedgerResponse) -> ActorError {
    ActorError::UnexpectedReply {
        expected,
        got: RateLimiterResponse::Ledger(got).variant(),
    }
}
