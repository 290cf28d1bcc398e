//! The coordinator's pure core: plain data in, reply and effects out.

use protocol::coordinator::{
    ConfigEntry, CoordinatorRequest, CoordinatorResponse, CoordinatorSnapshot, TenantRecord,
    TenantSettings,
};
use protocol::{Envelope, ErrorCode, ErrorReply, RequestId};
use serde::{Deserialize, Serialize};

/// What the coordinator keeps in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorState {
    /// The tenant's record.
    pub record: TenantRecord,
}

/// What the shell must do after a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Write this state to storage before answering.
    pub persist: Option<CoordinatorState>,
    /// Write (or, with `None`, remove) this configuration value in KV.
    pub config_write: Option<ConfigEntry>,
}

/// The coordinator's in-memory state.
#[derive(Debug, Default)]
pub struct CoordinatorCore {
    state: Option<CoordinatorState>,
    /// Requests handled since this instance was loaded (not persisted).
    requests_since_load: u64,
    last_request_id: Option<RequestId>,
}

impl CoordinatorCore {
    /// A core over the state loaded from storage (`None` for a new tenant).
    pub fn new(saved: Option<CoordinatorState>) -> Self {
        Self {
            state: saved,
            ..Self::default()
        }
    }

    /// Handles one message at time `now_ms` (ms since the Unix epoch).
    pub fn handle(
        &mut self,
        envelope: Envelope<CoordinatorRequest>,
        now_ms: u64,
    ) -> (Result<CoordinatorResponse, ErrorReply>, Effects) {
        let mut effects = Effects::default();
        let state = match &mut self.state {
            Some(state) if state.record.tenant_id != envelope.tenant_id => {
                // The object is named after its tenant, so this is a routing bug
                // somewhere; refuse rather than mix two tenants' data.
                let reply = Err(ErrorReply::new(
                    ErrorCode::WrongTenant,
                    "this coordinator belongs to another tenant",
                ));
                return (reply, effects);
            }
            Some(state) => state,
            None => {
                let state = CoordinatorState {
                    record: TenantRecord {
                        tenant_id: envelope.tenant_id.clone(),
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                        settings: TenantSettings::initial(&envelope.tenant_id),
                    },
                };
                effects.persist = Some(state.clone());
                self.state.insert(state)
            }
        };
        let previous_request = self.last_request_id.replace(envelope.request_id);
        self.requests_since_load += 1;

        let reply = match envelope.message {
            CoordinatorRequest::GetTenant(_) => {
                Ok(CoordinatorResponse::Tenant(state.record.clone()))
            }
            CoordinatorRequest::UpdateSettings(update) => match update.patch.validate() {
                Err(e) => Err(ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())),
                Ok(()) => {
                    if state.record.settings.apply(&update.patch) {
                        state.record.updated_at_ms = now_ms;
                        effects.persist = Some(state.clone());
                    }
                    Ok(CoordinatorResponse::Tenant(state.record.clone()))
                }
            },
            CoordinatorRequest::SetConfig(set) => match set.validate() {
                Err(e) => Err(ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())),
                Ok(()) => {
                    let entry = ConfigEntry {
                        key: set.key(),
                        value: set.value,
                    };
                    effects.config_write = Some(entry.clone());
                    Ok(CoordinatorResponse::ConfigSet(entry))
                }
            },
            CoordinatorRequest::Inspect(_) => {
                Ok(CoordinatorResponse::Snapshot(CoordinatorSnapshot {
                    record: state.record.clone(),
                    requests_handled: self.requests_since_load,
                    last_request_id: previous_request,
                }))
            }
        };
        (reply, effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::coordinator::*;
    use protocol::TenantId;

    fn env(tenant: &str, rid: &str, message: CoordinatorRequest) -> Envelope<CoordinatorRequest> {
        Envelope::new(
            RequestId::parse(rid).unwrap(),
            TenantId::parse(tenant).unwrap(),
            message,
        )
    }

    fn rename(name: &str) -> CoordinatorRequest {
        CoordinatorRequest::UpdateSettings(UpdateSettings {
            patch: SettingsPatch {
                display_name: Some(name.into()),
                default_models: None,
            },
        })
    }

    #[test]
    fn first_message_creates_and_persists_the_record() {
        let mut core = CoordinatorCore::new(None);
        let (reply, effects) = core.handle(
            env("acme", "r1", CoordinatorRequest::GetTenant(GetTenant {})),
            1000,
        );
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(record.tenant_id.as_str(), "acme");
        assert_eq!(record.created_at_ms, 1000);
        assert_eq!(record.settings.display_name, "acme");
        assert_eq!(effects.persist.map(|s| s.record), Some(record));
        // A second read changes nothing and writes nothing.
        let (_, effects) = core.handle(
            env("acme", "r2", CoordinatorRequest::GetTenant(GetTenant {})),
            2000,
        );
        assert_eq!(effects, Effects::default());
    }

    #[test]
    fn update_persists_only_real_changes() {
        let mut core = CoordinatorCore::new(None);
        let (reply, effects) = core.handle(env("acme", "r1", rename("Acme")), 5);
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.settings.display_name, "Acme");
        assert_eq!(record.updated_at_ms, 5);
        assert!(effects.persist.is_some());
        let (reply, effects) = core.handle(env("acme", "r2", rename("Acme")), 9);
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.updated_at_ms, 5, "no change, no new timestamp");
        assert_eq!(effects.persist, None);
    }

    #[test]
    fn invalid_patch_is_refused_and_changes_nothing() {
        let mut core = CoordinatorCore::new(None);
        core.handle(env("acme", "r1", rename("Acme")), 1).0.unwrap();
        let (reply, effects) = core.handle(env("acme", "r2", rename("")), 2);
        assert_eq!(reply.unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(effects.persist, None);
        let (reply, _) = core.handle(
            env("acme", "r3", CoordinatorRequest::GetTenant(GetTenant {})),
            3,
        );
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.settings.display_name, "Acme");
    }

    #[test]
    fn another_tenants_message_is_refused() {
        let mut core = CoordinatorCore::new(None);
        core.handle(env("acme", "r1", rename("Acme")), 1).0.unwrap();
        let (reply, effects) = core.handle(env("evil", "r2", rename("Pwned")), 2);
        assert_eq!(reply.unwrap_err().code, ErrorCode::WrongTenant);
        assert_eq!(effects.persist, None);
        let (reply, _) = core.handle(
            env("acme", "r3", CoordinatorRequest::Inspect(Inspect {})),
            3,
        );
        let CoordinatorResponse::Snapshot(snap) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(snap.record.settings.display_name, "Acme");
    }

    #[test]
    fn config_writes_are_effects() {
        let mut core = CoordinatorCore::new(None);
        let set = |name: &str, value: Option<&str>| {
            CoordinatorRequest::SetConfig(SetConfig {
                name: name.into(),
                value: value.map(str::to_owned),
            })
        };
        let (reply, effects) = core.handle(env("acme", "r1", set("theme", Some("dark"))), 1);
        let want = ConfigEntry {
            key: "config:theme".into(),
            value: Some("dark".into()),
        };
        assert_eq!(reply.unwrap(), CoordinatorResponse::ConfigSet(want.clone()));
        assert_eq!(effects.config_write, Some(want));
        let (reply, effects) = core.handle(env("acme", "r2", set("bad name", Some("x"))), 2);
        assert_eq!(reply.unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(effects.config_write, None);
    }

    #[test]
    fn state_survives_a_reload() {
        let mut core = CoordinatorCore::new(None);
        let (_, effects) = core.handle(env("acme", "r1", rename("Acme")), 1);
        let mut reloaded = CoordinatorCore::new(effects.persist);
        let (reply, _) = reloaded.handle(
            env("acme", "r2", CoordinatorRequest::Inspect(Inspect {})),
            2,
        );
        let CoordinatorResponse::Snapshot(snap) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(snap.record.settings.display_name, "Acme");
        assert_eq!(snap.record.created_at_ms, 1);
        assert_eq!(snap.requests_handled, 1);
        assert_eq!(snap.last_request_id, None);
        let (reply, _) = reloaded.handle(
            env("acme", "r3", CoordinatorRequest::Inspect(Inspect {})),
            3,
        );
        let CoordinatorResponse::Snapshot(snap) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(snap.requests_handled, 2);
        assert_eq!(
            snap.last_request_id.map(String::from),
            Some("r2".to_owned())
        );
    }
}
