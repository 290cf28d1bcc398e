//! The typed handle through which the gateway talks to a tenant's coordinator.

use super::{BINDING, RESOURCE};
use crate::error::ActorError;
use crate::rpc::{reply_as, ActorStub, NamedReply};
use protocol::coordinator::{
    ConfigEntry, CoordinatorRequest, CoordinatorResponse, CoordinatorSnapshot, GetConfig,
    GetTenant, Inspect, SetConfig, SettingsPatch, TenantRecord, UpdateSettings,
};
use protocol::keys::{CreateKey, KeyId, KeyRecord, NewKey, RotateKey, Verification, VerifyKey};
use protocol::listing::{ListSessions, SessionPage, SessionReport, TenantSummary};
use protocol::{RequestId, TenantId};
use worker::Env;

/// A tenant's coordinator, reached by its name `${tenantId}:coordinator`.
pub struct CoordinatorHandle {
    actor: ActorStub,
}

impl NamedReply for CoordinatorResponse {
    fn variant(&self) -> &'static str {
        match self {
            CoordinatorResponse::Tenant(_) => "Tenant",
            CoordinatorResponse::Snapshot(_) => "Snapshot",
            CoordinatorResponse::ConfigSet(_) => "ConfigSet",
            CoordinatorResponse::NewKey(_) => "NewKey",
            CoordinatorResponse::Keys(_) => "Keys",
            CoordinatorResponse::Key(_) => "Key",
            CoordinatorResponse::Verification(_) => "Verification",
            CoordinatorResponse::SessionRecorded(_) => "SessionRecorded",
            CoordinatorResponse::SessionsRecorded(_) => "SessionsRecorded",
            CoordinatorResponse::Sessions(_) => "Sessions",
            CoordinatorResponse::Summary(_) => "Summary",
            CoordinatorResponse::Config(_) => "Config",
        }
    }
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

    /// Reports a session's change to the tenant's session registry; whether
    /// it applied (an older report than the registry holds does not).
    pub async fn record_session(
        &self,
        request_id: &RequestId,
        report: SessionReport,
    ) -> Result<bool, ActorError> {
        reply_as!(
            self.send(request_id, CoordinatorRequest::RecordSession(report))
                .await?,
            CoordinatorResponse::SessionRecorded
        )
    }

    /// Reports several sessions' changes (at most
    /// [`protocol::listing::MAX_SESSION_BATCH`]); how many applied.
    pub async fn record_sessions(
        &self,
        request_id: &RequestId,
        reports: Vec<SessionReport>,
    ) -> Result<u64, ActorError> {
        reply_as!(
            self.send(request_id, CoordinatorRequest::RecordSessions(reports))
                .await?,
            CoordinatorResponse::SessionsRecorded
        )
    }

    /// A page of the tenant's sessions, most recent activity first.
    pub async fn list_sessions(
        &self,
        request_id: &RequestId,
        list: ListSessions,
    ) -> Result<SessionPage, ActorError> {
        reply_as!(
            self.send(request_id, CoordinatorRequest::ListSessions(list))
                .await?,
            CoordinatorResponse::Sessions
        )
    }

    /// The tenant's summary (never creates its record).
    pub async fn summary(&self, request_id: &RequestId) -> Result<TenantSummary, ActorError> {
        reply_as!(
            self.send(request_id, CoordinatorRequest::Summary).await?,
            CoordinatorResponse::Summary
        )
    }

    /// `config:<name>` as it is now (`value` `None` when unset).
    pub async fn get_config(
        &self,
        request_id: &RequestId,
        name: String,
    ) -> Result<ConfigEntry, ActorError> {
        reply_as!(
            self.send(
                request_id,
                CoordinatorRequest::GetConfig(GetConfig { name })
            )
            .await?,
            CoordinatorResponse::Config
        )
    }

    /// The tenant's record.
    pub async fn get_tenant(&self, request_id: &RequestId) -> Result<TenantRecord, ActorError> {
        let message = CoordinatorRequest::GetTenant(GetTenant {});
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Tenant
        )
    }

    /// Applies `patch` to the tenant's settings and returns the new record.
    pub async fn update_settings(
        &self,
        request_id: &RequestId,
        patch: SettingsPatch,
    ) -> Result<TenantRecord, ActorError> {
        let message = CoordinatorRequest::UpdateSettings(UpdateSettings { patch });
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Tenant
        )
    }

    /// Sets (or with `None` removes) `config:<name>` for the tenant. The
    /// answer comes once KV holds this value or a later decision's.
    pub async fn set_config(
        &self,
        request_id: &RequestId,
        name: String,
        value: Option<String>,
    ) -> Result<ConfigEntry, ActorError> {
        let message = CoordinatorRequest::SetConfig(SetConfig { name, value });
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::ConfigSet
        )
    }

    /// Creates an API key. The answer is the only time its secret is seen.
    pub async fn create_key(
        &self,
        request_id: &RequestId,
        create: CreateKey,
    ) -> Result<NewKey, ActorError> {
        let message = CoordinatorRequest::CreateKey(create);
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::NewKey
        )
    }

    /// Every key of the tenant, oldest first (records only, no secrets).
    pub async fn list_keys(&self, request_id: &RequestId) -> Result<Vec<KeyRecord>, ActorError> {
        reply_as!(
            self.send(request_id, CoordinatorRequest::ListKeys).await?,
            CoordinatorResponse::Keys
        )
    }

    /// One key's record.
    pub async fn get_key(
        &self,
        request_id: &RequestId,
        id: String,
    ) -> Result<KeyRecord, ActorError> {
        let message = CoordinatorRequest::GetKey(KeyId { id });
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Key
        )
    }

    /// Gives a key a new secret (answered with it, once); the old one works
    /// for `rotate.grace_seconds` more.
    pub async fn rotate_key(
        &self,
        request_id: &RequestId,
        rotate: RotateKey,
    ) -> Result<NewKey, ActorError> {
        let message = CoordinatorRequest::RotateKey(rotate);
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::NewKey
        )
    }

    /// Revokes a key (again: no change) and returns its record.
    pub async fn revoke_key(
        &self,
        request_id: &RequestId,
        id: String,
    ) -> Result<KeyRecord, ActorError> {
        let message = CoordinatorRequest::RevokeKey(KeyId { id });
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Key
        )
    }

    /// Replaces a key's limits.
    pub async fn update_key(
        &self,
        request_id: &RequestId,
        update: protocol::keys::UpdateKey,
    ) -> Result<KeyRecord, ActorError> {
        let message = CoordinatorRequest::UpdateKey(update);
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Key
        )
    }

    /// Checks a key by its id and the SHA-256 of its secret (lowercase hex of
    /// the hash of the secret's characters); a valid key's use is recorded.
    pub async fn verify_key(
        &self,
        request_id: &RequestId,
        verify: VerifyKey,
    ) -> Result<Verification, ActorError> {
        let message = CoordinatorRequest::VerifyKey(verify);
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Verification
        )
    }

    /// The coordinator's state, for operators.
    pub async fn inspect(&self, request_id: &RequestId) -> Result<CoordinatorSnapshot, ActorError> {
        let message = CoordinatorRequest::Inspect(Inspect {});
        reply_as!(
            self.send(request_id, message).await?,
            CoordinatorResponse::Snapshot
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::coordinator::TenantSettings;

    fn record() -> TenantRecord {
        let tenant = TenantId::parse("acme").unwrap();
        TenantRecord {
            settings: TenantSettings::initial(&tenant),
            tenant_id: tenant,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn replies_are_matched_by_variant() {
        let ok = reply_as!(
            CoordinatorResponse::Tenant(record()),
            CoordinatorResponse::Tenant
        );
        assert_eq!(ok.unwrap(), record());
        let wrong = reply_as!(
            CoordinatorResponse::Tenant(record()),
            CoordinatorResponse::ConfigSet
        );
        match wrong {
            Err(ActorError::UnexpectedReply { expected, got }) => {
                assert_eq!((expected, got), ("ConfigSet", "Tenant"))
            }
            other => panic!("{other:?}"),
        }
    }
}
