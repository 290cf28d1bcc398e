//! The typed handle through which the gateway talks to a tenant's coordinator.

use super::{BINDING, RESOURCE};
use crate::error::ActorError;
use crate::rpc::ActorStub;
use protocol::coordinator::{
    ConfigEntry, CoordinatorRequest, CoordinatorResponse, CoordinatorSnapshot, GetTenant, Inspect,
    SetConfig, SettingsPatch, TenantRecord, UpdateSettings,
};
use protocol::{RequestId, TenantId};
use worker::Env;

/// A tenant's coordinator, reached by its name `${tenantId}:coordinator`.
pub struct CoordinatorHandle {
    actor: ActorStub,
}

impl CoordinatorHandle {
    /// The coordinator of `tenant`.
    pub fn new(env: &Env, tenant: &TenantId) -> Result<Self, ActorError> {
        Ok(Self {
            actor: ActorStub::new(env, BINDING, RESOURCE, tenant)?,
        })
    }

    async fn send(
        &self,
        request_id: &RequestId,
        message: CoordinatorRequest,
    ) -> Result<CoordinatorResponse, ActorError> {
        self.actor.send(request_id, message).await
    }

    /// The tenant's record.
    pub async fn get_tenant(&self, request_id: &RequestId) -> Result<TenantRecord, ActorError> {
        match self
            .send(request_id, CoordinatorRequest::GetTenant(GetTenant {}))
            .await?
        {
            CoordinatorResponse::Tenant(record) => Ok(record),
            other => Err(unexpected("Tenant", &other)),
        }
    }

    /// Applies `patch` to the tenant's settings and returns the new record.
    pub async fn update_settings(
        &self,
        request_id: &RequestId,
        patch: SettingsPatch,
    ) -> Result<TenantRecord, ActorError> {
        let message = CoordinatorRequest::UpdateSettings(UpdateSettings { patch });
        match self.send(request_id, message).await? {
            CoordinatorResponse::Tenant(record) => Ok(record),
            other => Err(unexpected("Tenant", &other)),
        }
    }

    /// Sets (or with `None` removes) `config:<name>` for the tenant.
    pub async fn set_config(
        &self,
        request_id: &RequestId,
        name: String,
        value: Option<String>,
    ) -> Result<ConfigEntry, ActorError> {
        let message = CoordinatorRequest::SetConfig(SetConfig { name, value });
        match self.send(request_id, message).await? {
            CoordinatorResponse::ConfigSet(entry) => Ok(entry),
            other => Err(unexpected("ConfigSet", &other)),
        }
    }

    /// The coordinator's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<CoordinatorSnapshot, ActorError> {
        match self
            .send(request_id, CoordinatorRequest::Inspect(Inspect {}))
            .await?
        {
            CoordinatorResponse::Snapshot(snapshot) => Ok(snapshot),
            other => Err(unexpected("Snapshot", &other)),
        }
    }
}

fn unexpected(expected: &'static str, got: &CoordinatorResponse) -> ActorError {
    ActorError::UnexpectedReply {
        expected,
        got: match got {
            CoordinatorResponse::Tenant(_) => "Tenant",
            CoordinatorResponse::Snapshot(_) => "Snapshot",
            CoordinatorResponse::ConfigSet(_) => "ConfigSet",
        },
    }
}
