//! The coordinator's pure core: plain data in, reply and effects out.
//!
//! # Configuration values and KV
//!
//! `SetConfig` is decided here and carried to KV by the shell, which must
//! await the write. Writes to one key must not overlap: two writes in flight
//! can land in either order, and KV would keep the older decision. So every
//! decision gets a version (a counter of decisions), the latest decision per
//! key waits in [`CoordinatorCore`] until KV has it, and at most one write per
//! key is in flight. When a write completes ([`CoordinatorCore::config_written`])
//! the core answers with the next write if a later decision arrived meanwhile:
//! KV always ends with the latest decision. Undelivered decisions are also
//! kept in storage (the shell's `config_unsynced` table) and an alarm
//! ([`CoordinatorCore::poll_timeout`], [`CoordinatorCore::handle_timeout`])
//! retries failed writes and those an evicted instance never finished.
//!
//! # API keys
//!
//! The key store ([`super::keys::KeyStore`]) is part of this core: key
//! messages are answered here, with the shell's random bytes for new secrets
//! ([`KeyEntropy`]), and a key that changed comes back as
//! [`Effects::key_write`] for the shell to store (one row per key).

use super::keys::{KeyEntropy, KeyStore, StoredKey};
use protocol::coordinator::{
    ConfigEntry, CoordinatorRequest, CoordinatorResponse, CoordinatorSnapshot, TenantRecord,
    TenantSettings,
};
use protocol::listing::TenantSummary;
use protocol::{Envelope, ErrorCode, ErrorReply, RequestId, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long after a decision the alarm checks that KV has it: the safety net
/// for a write that never completed because the instance went away.
pub const CONFIG_RECHECK_MS: u64 = 10_000;
/// The first retry delay after a failed KV write; it doubles per failure in a
/// row, up to [`CONFIG_RETRY_MAX_MS`].
pub const CONFIG_RETRY_MS: u64 = 2_000;
/// The longest retry delay, so a KV outage does not wake the object often.
pub const CONFIG_RETRY_MAX_MS: u64 = 300_000;

/// What the coordinator keeps in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorState {
    /// The tenant's record.
    pub record: TenantRecord,
    /// The version of the latest configuration decision (0: none yet).
    #[serde(default)]
    pub config_version: u64,
}

/// A configuration decision on its way to KV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWrite {
    /// `config:<name>`, within the tenant's prefix.
    pub key: String,
    /// The value, or `None` to remove the key.
    pub value: Option<String>,
    /// The decision's place in the order of all decisions (higher is later).
    pub version: u64,
}

/// What the shell must do after a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Write this state to storage before answering.
    pub persist: Option<CoordinatorState>,
    /// Record this decision in storage as not yet in KV (with `persist`, in
    /// the same synchronous step), then answer only once KV holds this
    /// version of the key or a later one.
    pub config_decided: Option<ConfigWrite>,
    /// Start this KV write and report its outcome to
    /// [`CoordinatorCore::config_written`]. `None` with a decision means a
    /// write of the key is already in flight and will carry this one after it.
    pub config_write: Option<ConfigWrite>,
    /// Store this key (insert or replace its row) before answering.
    pub key_write: Option<StoredKey>,
}

/// What a finished KV write changed; see [`CoordinatorCore::config_written`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigProgress {
    /// KV now holds the key at this version: requests waiting for this
    /// version or an earlier one can be answered.
    pub landed: Option<u64>,
    /// KV holds the latest decision for the key: remove its storage row (up
    /// to this version).
    pub synced: Option<u64>,
    /// A later decision arrived during the write: start this write next.
    pub next: Option<ConfigWrite>,
}

/// The latest decision for a key that KV does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unsynced {
    value: Option<String>,
    version: u64,
    /// The version being written to KV now, if a write is in flight.
    in_flight: Option<u64>,
}

/// The coordinator's in-memory state.
#[derive(Debug, Default)]
pub struct CoordinatorCore {
    state: Option<CoordinatorState>,
    /// Requests handled since this instance was loaded (not persisted).
    requests_since_load: u64,
    last_request_id: Option<RequestId>,
    /// Decisions not yet in KV, by key.
    unsynced: BTreeMap<String, Unsynced>,
    /// When the alarm should look at `unsynced` again.
    recheck_at: Option<u64>,
    /// KV writes failed in a row (for the retry delay).
    write_failures: u32,
    /// The tenant's API keys.
    keys: KeyStore,
}

impl CoordinatorCore {
    /// A core over the state loaded from storage (`None` for a new tenant)
    /// and the decisions storage holds as not yet in KV; those are due for a
    /// write at once.
    pub fn new(saved: Option<CoordinatorState>, unsynced: Vec<ConfigWrite>) -> Self {
        let unsynced: BTreeMap<_, _> = unsynced
            .into_iter()
            .map(|w| {
                let pending = Unsynced {
                    value: w.value,
                    version: w.version,
                    in_flight: None,
                };
                (w.key, pending)
            })
            .collect();
        Self {
            state: saved,
            recheck_at: (!unsynced.is_empty()).then_some(0),
            unsynced,
            ..Self::default()
        }
    }

    /// The same core with the API keys loaded from storage.
    pub fn with_keys(mut self, keys: Vec<StoredKey>) -> Self {
        self.keys = KeyStore::new(keys);
        self
    }

    /// The tenant this coordinator belongs to, once it has seen a message.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.state.as_ref().map(|s| &s.record.tenant_id)
    }

    /// Handles one message at time `now_ms` (ms since the Unix epoch), with
    /// random bytes for a key the message may create or rotate (`None` when
    /// the platform had none: such a message is then refused, never answered
    /// with a weaker secret).
    pub fn handle(
        &mut self,
        envelope: Envelope<CoordinatorRequest>,
        now_ms: u64,
        entropy: Option<KeyEntropy>,
    ) -> (Result<CoordinatorResponse, ErrorReply>, Effects) {
        let mut effects = Effects::default();
        if let CoordinatorRequest::Summary = envelope.message {
            // Read only: the listing of tenants must not create records.
            return (
                self.summary(&envelope.tenant_id, now_ms)
                    .map(CoordinatorResponse::Summary),
                effects,
            );
        }
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
                    config_version: 0,
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
                    state.config_version += 1;
                    effects.persist = Some(state.clone());
                    let write = ConfigWrite {
                        key: set.key(),
                        value: set.value,
                        version: state.config_version,
                    };
                    let in_flight = self.unsynced.get(&write.key).and_then(|u| u.in_flight);
                    if in_flight.is_none() {
                        effects.config_write = Some(write.clone());
                    }
                    self.unsynced.insert(
                        write.key.clone(),
                        Unsynced {
                            value: write.value.clone(),
                            version: write.version,
                            in_flight: in_flight.or(Some(write.version)),
                        },
                    );
                    self.schedule(now_ms.saturating_add(CONFIG_RECHECK_MS));
                    let entry = ConfigEntry {
                        key: write.key.clone(),
                        value: write.value.clone(),
                    };
                    effects.config_decided = Some(write);
                    Ok(CoordinatorResponse::ConfigSet(entry))
                }
            },
            CoordinatorRequest::Inspect(_) => {
                Ok(CoordinatorResponse::Snapshot(CoordinatorSnapshot {
                    record: state.record.clone(),
                    requests_handled: self.requests_since_load,
                    last_request_id: previous_request,
                    key_count: u64::try_from(self.keys.len()).unwrap_or(u64::MAX),
                }))
            }
            CoordinatorRequest::CreateKey(create) => self
                .keys
                .create(&state.record.tenant_id, create, now_ms, entropy.as_ref())
                .map(|(new, stored)| {
                    effects.key_write = Some(stored);
                    CoordinatorResponse::NewKey(new)
                }),
            CoordinatorRequest::ListKeys => Ok(CoordinatorResponse::Keys(self.keys.list())),
            CoordinatorRequest::GetKey(key) => self.keys.get(&key.id).map(CoordinatorResponse::Key),
            CoordinatorRequest::RotateKey(rotate) => self
                .keys
                .rotate(&state.record.tenant_id, rotate, now_ms, entropy.as_ref())
                .map(|(new, stored)| {
                    effects.key_write = Some(stored);
                    CoordinatorResponse::NewKey(new)
                }),
            CoordinatorRequest::RevokeKey(key) => {
                self.keys.revoke(&key.id, now_ms).map(|(record, stored)| {
                    effects.key_write = stored;
                    CoordinatorResponse::Key(record)
                })
            }
            CoordinatorRequest::UpdateKey(update) => {
                self.keys.update(&update).map(|(record, stored)| {
                    effects.key_write = stored;
                    CoordinatorResponse::Key(record)
                })
            }
            CoordinatorRequest::VerifyKey(verify) => {
                let (verification, stored) = self.keys.verify(&verify, now_ms);
                effects.key_write = stored;
                Ok(CoordinatorResponse::Verification(verification))
            }
            // Storage and KV answer these (the shell, with `owns` and
            // `pending_config`); a core that receives one was misused.
            CoordinatorRequest::RecordSession(_)
            | CoordinatorRequest::RecordSessions(_)
            | CoordinatorRequest::ListSessions(_)
            | CoordinatorRequest::GetConfig(_)
            | CoordinatorRequest::Summary => Err(ErrorReply::new(
                ErrorCode::Internal,
                "this message is answered by the coordinator's shell",
            )),
        };
        (reply, effects)
    }

    /// Whether this coordinator may answer for `tenant`: it is its tenant,
    /// or it has no record yet.
    pub fn owns(&self, tenant: &TenantId) -> bool {
        self.tenant().is_none_or(|t| t == tenant)
    }

    /// The latest decision for configuration key `key` (`config:<name>`)
    /// that KV may not hold yet: `Some(value)` (`Some(None)`: removed), or
    /// `None` when KV is up to date for it and is the answer.
    pub fn pending_config(&self, key: &str) -> Option<Option<String>> {
        self.unsynced.get(key).map(|u| u.value.clone())
    }

    /// The tenant as the tenants listing shows it, without creating its
    /// record: `"new"` until its coordinator has one, then `"active"`
    /// with its keys that are neither revoked nor expired at `now_ms`.
    pub fn summary(&self, tenant: &TenantId, now_ms: u64) -> Result<TenantSummary, ErrorReply> {
        if !self.owns(tenant) {
            return Err(ErrorReply::new(
                ErrorCode::WrongTenant,
                "this coordinator belongs to another tenant",
            ));
        }
        Ok(match &self.state {
            None => TenantSummary {
                tenant_id: tenant.as_str().to_owned(),
                display_name: tenant.as_str().to_owned(),
                status: "new".into(),
                created_at_ms: None,
                keys: None,
                budget_set: false,
            },
            Some(state) => {
                let active = self
                    .keys
                    .list()
                    .iter()
                    .filter(|k| {
                        k.revoked_at_ms.is_none() && k.expires_at_ms.is_none_or(|t| t > now_ms)
                    })
                    .count();
                TenantSummary {
                    tenant_id: tenant.as_str().to_owned(),
                    display_name: state.record.settings.display_name.clone(),
                    status: "active".into(),
                    created_at_ms: Some(state.record.created_at_ms),
                    keys: Some(u64::try_from(active).unwrap_or(u64::MAX)),
                    budget_set: state.record.settings.budget.is_set(),
                }
            }
        })
    }

    /// A KV write this core asked for (through [`Effects::config_write`],
    /// [`ConfigProgress::next`] or [`Self::handle_timeout`]) finished at
    /// `now_ms`, successfully when `ok`.
    pub fn config_written(&mut self, write: &ConfigWrite, ok: bool, now_ms: u64) -> ConfigProgress {
        let mut progress = ConfigProgress {
            landed: ok.then_some(write.version),
            ..ConfigProgress::default()
        };
        let Some(pending) = self.unsynced.get_mut(&write.key) else {
            // Already synced by another write (a reloaded core): nothing left.
            return progress;
        };
        if pending.in_flight != Some(write.version) {
            // Not the write this core tracks (it was reloaded meanwhile and
            // the alarm owns the key now): leave the key to that write.
            return progress;
        }
        pending.in_flight = None;
        if !ok {
            self.write_failures = self.write_failures.saturating_add(1);
            let delay = CONFIG_RETRY_MS
                .saturating_mul(1 << self.write_failures.min(16).saturating_sub(1))
                .min(CONFIG_RETRY_MAX_MS);
            self.schedule(now_ms.saturating_add(delay));
            return progress;
        }
        self.write_failures = 0;
        if pending.version == write.version {
            self.unsynced.remove(&write.key);
            progress.synced = Some(write.version);
        } else {
            // A later decision came while this write was in flight: KV holds
            // an older value now, so the later one goes out next.
            pending.in_flight = Some(pending.version);
            progress.next = Some(ConfigWrite {
                key: write.key.clone(),
                value: pending.value.clone(),
                version: pending.version,
            });
        }
        progress
    }

    /// When the shell should call [`Self::handle_timeout`] (ms since the Unix
    /// epoch; the past means at once), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.recheck_at
    }

    /// The alarm fired at `now_ms`: the writes to start now, one for every key
    /// KV does not hold yet that has no write in flight.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<ConfigWrite> {
        if self.recheck_at.is_none_or(|at| at > now_ms) {
            return Vec::new();
        }
        self.recheck_at = None;
        let mut writes = Vec::new();
        for (key, pending) in &mut self.unsynced {
            if pending.in_flight.is_none() {
                pending.in_flight = Some(pending.version);
                writes.push(ConfigWrite {
                    key: key.clone(),
                    value: pending.value.clone(),
                    version: pending.version,
                });
            }
        }
        if !self.unsynced.is_empty() {
            // Keep watching until KV has everything.
            self.schedule(now_ms.saturating_add(CONFIG_RECHECK_MS));
        }
        writes
    }

    /// Whether KV holds the latest decision for every key.
    pub fn config_in_sync(&self) -> bool {
        self.unsynced.is_empty()
    }

    /// Moves the next check to `at` if that is earlier.
    fn schedule(&mut self, at: u64) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |t| t.min(at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::coordinator::*;
    use protocol::TenantId;
    use std::collections::BTreeMap;

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
                ..SettingsPatch::default()
            },
        })
    }

    #[test]
    fn a_summary_never_creates_the_record_and_counts_live_keys() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (reply, effects) =
            core.handle(env("acme", "r1", CoordinatorRequest::Summary), 1000, None);
        let Ok(CoordinatorResponse::Summary(summary)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(summary.status, "new");
        assert_eq!((summary.created_at_ms, summary.keys), (None, None));
        assert_eq!(effects, Effects::default(), "nothing stored");
        assert_eq!(core.tenant(), None);
        let (_, _) = core.handle(env("acme", "r2", rename("Acme")), 2000, None);
        let (reply, _) = core.handle(env("acme", "r3", CoordinatorRequest::Summary), 3000, None);
        let Ok(CoordinatorResponse::Summary(summary)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(summary.status, "active");
        assert_eq!(summary.display_name, "Acme");
        assert_eq!((summary.created_at_ms, summary.keys), (Some(2000), Some(0)));
        assert!(!summary.budget_set);
        // Another tenant's summary is refused, as every other message.
        let (reply, _) = core.handle(env("other", "r4", CoordinatorRequest::Summary), 3000, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::WrongTenant);
        assert!(core.owns(&TenantId::parse("acme").unwrap()));
        assert!(!core.owns(&TenantId::parse("other").unwrap()));
    }

    #[test]
    fn a_config_decision_not_yet_in_kv_is_the_value_read_back() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let set = |name: &str, value: Option<&str>| {
            CoordinatorRequest::SetConfig(SetConfig {
                name: name.into(),
                value: value.map(str::to_owned),
            })
        };
        let (_, effects) = core.handle(env("acme", "r1", set("email", Some("a@b"))), 10, None);
        assert_eq!(
            core.pending_config("config:email"),
            Some(Some("a@b".into()))
        );
        assert_eq!(core.pending_config("config:other"), None, "KV answers");
        let write = effects.config_write.unwrap();
        core.config_written(&write, true, 20);
        assert_eq!(core.pending_config("config:email"), None, "KV holds it now");
        let _ = core.handle(env("acme", "r2", set("email", None)), 30, None);
        assert_eq!(core.pending_config("config:email"), Some(None));
    }

    #[test]
    fn first_message_creates_and_persists_the_record() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (reply, effects) = core.handle(
            env("acme", "r1", CoordinatorRequest::GetTenant(GetTenant {})),
            1000,
            None,
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
            None,
        );
        assert_eq!(effects, Effects::default());
    }

    #[test]
    fn update_persists_only_real_changes() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (reply, effects) = core.handle(env("acme", "r1", rename("Acme")), 5, None);
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.settings.display_name, "Acme");
        assert_eq!(record.updated_at_ms, 5);
        assert!(effects.persist.is_some());
        let (reply, effects) = core.handle(env("acme", "r2", rename("Acme")), 9, None);
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.updated_at_ms, 5, "no change, no new timestamp");
        assert_eq!(effects.persist, None);
    }

    #[test]
    fn invalid_patch_is_refused_and_changes_nothing() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        core.handle(env("acme", "r1", rename("Acme")), 1, None)
            .0
            .unwrap();
        let (reply, effects) = core.handle(env("acme", "r2", rename("")), 2, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(effects.persist, None);
        let (reply, _) = core.handle(
            env("acme", "r3", CoordinatorRequest::GetTenant(GetTenant {})),
            3,
            None,
        );
        let CoordinatorResponse::Tenant(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.settings.display_name, "Acme");
    }

    #[test]
    fn another_tenants_message_is_refused() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        core.handle(env("acme", "r1", rename("Acme")), 1, None)
            .0
            .unwrap();
        let (reply, effects) = core.handle(env("evil", "r2", rename("Pwned")), 2, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::WrongTenant);
        assert_eq!(effects.persist, None);
        let (reply, _) = core.handle(
            env("acme", "r3", CoordinatorRequest::Inspect(Inspect {})),
            3,
            None,
        );
        let CoordinatorResponse::Snapshot(snap) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(snap.record.settings.display_name, "Acme");
    }

    fn set(name: &str, value: Option<&str>) -> CoordinatorRequest {
        CoordinatorRequest::SetConfig(SetConfig {
            name: name.into(),
            value: value.map(str::to_owned),
        })
    }

    #[test]
    fn config_writes_are_effects() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (reply, effects) = core.handle(env("acme", "r1", set("theme", Some("dark"))), 1, None);
        let want = ConfigEntry {
            key: "config:theme".into(),
            value: Some("dark".into()),
        };
        assert_eq!(reply.unwrap(), CoordinatorResponse::ConfigSet(want));
        let write = ConfigWrite {
            key: "config:theme".into(),
            value: Some("dark".into()),
            version: 1,
        };
        assert_eq!(effects.config_write, Some(write.clone()));
        assert_eq!(effects.config_decided, Some(write));
        assert_eq!(effects.persist.map(|s| s.config_version), Some(1));
        let (reply, effects) = core.handle(env("acme", "r2", set("bad name", Some("x"))), 2, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(effects, Effects::default());
    }

    /// A stand-in for the shell and KV: every write the core asks for is in
    /// flight until the test lands it, in whatever order the test picks.
    struct Sim {
        core: CoordinatorCore,
        kv: BTreeMap<String, String>,
        in_flight: Vec<ConfigWrite>,
        /// The last decision per key, in the order the core took them.
        decided: BTreeMap<String, Option<String>>,
        now: u64,
        rid: u32,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                core: CoordinatorCore::new(None, Vec::new()),
                kv: BTreeMap::new(),
                in_flight: Vec::new(),
                decided: BTreeMap::new(),
                now: 1,
                rid: 0,
            }
        }

        fn decide(&mut self, name: &str, value: Option<&str>) {
            self.rid += 1;
            self.now += 1;
            let rid = format!("r{}", self.rid);
            let (reply, effects) =
                self.core
                    .handle(env("acme", &rid, set(name, value)), self.now, None);
            let CoordinatorResponse::ConfigSet(entry) = reply.unwrap() else {
                panic!("wrong reply")
            };
            self.decided.insert(entry.key, entry.value);
            self.start(effects.config_write);
        }

        fn start(&mut self, write: Option<ConfigWrite>) {
            if let Some(write) = write {
                assert!(
                    self.in_flight.iter().all(|w| w.key != write.key),
                    "two writes of {} in flight at once",
                    write.key
                );
                self.in_flight.push(write);
            }
        }

        /// Lands the in-flight write at `index` (applies it to KV).
        fn land(&mut self, index: usize) -> ConfigProgress {
            self.now += 1;
            let write = self.in_flight.remove(index);
            match &write.value {
                Some(v) => self.kv.insert(write.key.clone(), v.clone()),
                None => self.kv.remove(&write.key),
            };
            let progress = self.core.config_written(&write, true, self.now);
            self.start(progress.next.clone());
            progress
        }

        /// Lands every write, the most recently started first.
        fn land_all_newest_first(&mut self) {
            while !self.in_flight.is_empty() {
                self.land(self.in_flight.len() - 1);
            }
        }

        fn assert_converged(&self) {
            for (key, value) in &self.decided {
                assert_eq!(self.kv.get(key), value.as_ref(), "{key}");
            }
            assert!(self.core.config_in_sync());
        }
    }

    #[test]
    fn put_then_delete_landing_out_of_order_leaves_kv_at_the_last_decision() {
        // PUT decided, DELETE decided, DELETE's write lands, PUT's lands: KV
        // used to keep the PUT's value, though the DELETE came last.
        let mut sim = Sim::new();
        sim.decide("theme", Some("dark"));
        sim.decide("theme", None);
        sim.land_all_newest_first();
        assert_eq!(sim.kv.get("config:theme"), None);
        sim.assert_converged();
    }

    #[test]
    fn a_decision_during_a_write_goes_out_after_it() {
        let mut sim = Sim::new();
        sim.decide("theme", Some("dark"));
        sim.decide("theme", Some("light"));
        sim.decide("theme", None);
        assert_eq!(sim.in_flight.len(), 1, "one write per key at a time");
        // The first write lands: requests up to version 1 may be answered,
        // and the latest decision (3) goes out next; 2 is never written.
        let progress = sim.land(0);
        assert_eq!(progress.landed, Some(1));
        assert_eq!(progress.synced, None);
        assert_eq!(progress.next.as_ref().map(|w| w.version), Some(3));
        let progress = sim.land(0);
        assert_eq!((progress.landed, progress.synced), (Some(3), Some(3)));
        assert_eq!(progress.next, None);
        sim.assert_converged();
    }

    #[test]
    fn interleaved_decisions_on_several_keys_converge() {
        let mut sim = Sim::new();
        let values = [Some("a"), None, Some("b"), Some("c"), None];
        for round in 0..40usize {
            for (i, name) in ["x", "y", "z"].into_iter().enumerate() {
                let value = values.get((round + i) % values.len()).copied().flatten();
                sim.decide(name, value);
            }
            // Land some writes in an unfriendly order between decisions.
            if round % 3 == 0 && !sim.in_flight.is_empty() {
                sim.land(sim.in_flight.len() - 1);
            }
            if round % 5 == 0 && !sim.in_flight.is_empty() {
                sim.land(0);
            }
        }
        sim.land_all_newest_first();
        sim.assert_converged();
        assert_eq!(sim.core.state.as_ref().map(|s| s.config_version), Some(120));
    }

    #[test]
    fn a_failed_write_is_retried_by_the_alarm() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (_, effects) = core.handle(env("acme", "r1", set("theme", Some("dark"))), 100, None);
        let write = effects.config_write.unwrap();
        assert_eq!(core.poll_timeout(), Some(100 + CONFIG_RECHECK_MS));
        let progress = core.config_written(&write, false, 200);
        assert_eq!(progress, ConfigProgress::default(), "nothing landed");
        assert_eq!(core.poll_timeout(), Some(200 + CONFIG_RETRY_MS));
        assert!(
            core.handle_timeout(200 + CONFIG_RETRY_MS - 1).is_empty(),
            "not yet"
        );
        let retry = core.handle_timeout(200 + CONFIG_RETRY_MS);
        assert_eq!(retry, vec![write.clone()]);
        // A second failure waits twice as long.
        core.config_written(&write, false, 5_000);
        assert_eq!(core.poll_timeout(), Some(5_000 + 2 * CONFIG_RETRY_MS));
        let retry = core.handle_timeout(10_000);
        let progress = core.config_written(&retry[0], true, 10_001);
        assert_eq!(progress.synced, Some(1));
        assert!(core.config_in_sync());
        // One more check is armed from the last alarm; it finds nothing to do.
        assert!(core.handle_timeout(u64::MAX).is_empty());
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn decisions_not_in_kv_are_written_after_a_reload() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (_, effects) = core.handle(env("acme", "r1", set("theme", None)), 1, None);
        // The instance goes away before the write completes; storage kept
        // the state and the undelivered decision.
        let row = effects.config_decided.unwrap();
        let mut reloaded = CoordinatorCore::new(effects.persist, vec![row.clone()]);
        assert_eq!(reloaded.poll_timeout(), Some(0), "due at once");
        assert_eq!(reloaded.handle_timeout(50), vec![row.clone()]);
        // A decision on the same key while that write is in flight waits for it.
        let (_, effects) = reloaded.handle(env("acme", "r2", set("theme", Some("x"))), 60, None);
        assert_eq!(effects.config_write, None);
        assert_eq!(effects.config_decided.map(|w| w.version), Some(2));
        let progress = reloaded.config_written(&row, true, 70);
        assert_eq!(progress.next.map(|w| w.value), Some(Some("x".to_owned())));
    }

    #[test]
    fn a_write_the_core_did_not_start_changes_nothing() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (_, effects) = core.handle(env("acme", "r1", set("theme", Some("a"))), 1, None);
        let mut stale = effects.config_write.unwrap();
        stale.version = 7;
        let progress = core.config_written(&stale, true, 2);
        assert_eq!(
            progress,
            ConfigProgress {
                landed: Some(7),
                ..ConfigProgress::default()
            }
        );
        assert!(!core.config_in_sync(), "version 1 is still in flight");
    }

    #[test]
    fn state_survives_a_reload() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (_, effects) = core.handle(env("acme", "r1", rename("Acme")), 1, None);
        let mut reloaded = CoordinatorCore::new(effects.persist, Vec::new());
        let (reply, _) = reloaded.handle(
            env("acme", "r2", CoordinatorRequest::Inspect(Inspect {})),
            2,
            None,
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
            None,
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

    fn entropy() -> Option<KeyEntropy> {
        Some(KeyEntropy {
            id: [0xab; 6],
            secret: [0x5c; 32],
        })
    }

    fn create_key() -> CoordinatorRequest {
        CoordinatorRequest::CreateKey(protocol::keys::CreateKey {
            budget: Default::default(),
            name: "ci".into(),
            scopes: vec![protocol::keys::Scope::Search],
            models: vec![],
            expires_at_ms: None,
            limits: protocol::keys::KeyLimits::default(),
        })
    }

    #[test]
    fn keys_go_through_the_core_and_come_out_as_writes() {
        use protocol::keys::{KeyId, ParsedKey, Verification, VerifyKey};
        let mut core = CoordinatorCore::new(None, Vec::new());
        let (reply, effects) = core.handle(env("acme", "r1", create_key()), 10, entropy());
        let CoordinatorResponse::NewKey(new) = reply.unwrap() else {
            panic!()
        };
        let parsed = ParsedKey::parse(&new.key).unwrap();
        assert_eq!(parsed.tenant.as_str(), "acme");
        // The first message also created the tenant's record.
        let saved = effects.persist;
        assert!(saved.is_some());
        let stored = effects.key_write.unwrap();
        assert_eq!(stored.record, new.record);
        // Creating without randomness is refused and stores nothing.
        let (reply, effects) = core.handle(env("acme", "r2", create_key()), 11, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::Internal);
        assert_eq!(effects.key_write, None);

        // A reloaded core knows the key and verifies it.
        let mut core = CoordinatorCore::new(saved, Vec::new()).with_keys(vec![stored]);
        let verify = CoordinatorRequest::VerifyKey(VerifyKey {
            id: parsed.key_id.clone(),
            secret_sha256: super::super::keys::secret_sha256(&parsed.secret),
        });
        let (reply, effects) = core.handle(env("acme", "r3", verify.clone()), 20, None);
        let CoordinatorResponse::Verification(Verification::Valid(record)) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.last_used_at_ms, Some(20));
        assert_eq!(
            effects.key_write.map(|k| k.record.last_used_at_ms),
            Some(Some(20))
        );
        let (reply, _) = core.handle(env("acme", "r4", CoordinatorRequest::ListKeys), 21, None);
        assert_eq!(
            reply.unwrap(),
            CoordinatorResponse::Keys(vec![record.clone()])
        );
        let (reply, _) = core.handle(
            env("acme", "r5", CoordinatorRequest::Inspect(Inspect {})),
            22,
            None,
        );
        let CoordinatorResponse::Snapshot(snap) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(snap.key_count, 1);
        let json = serde_json::to_string(&snap).unwrap();
        assert!(!json.contains(&parsed.secret));
        assert!(!json.contains(&super::super::keys::secret_sha256(&parsed.secret)));

        // Revoked: the very next check fails.
        let revoke = CoordinatorRequest::RevokeKey(KeyId {
            id: parsed.key_id.clone(),
        });
        let (reply, effects) = core.handle(env("acme", "r6", revoke), 30, None);
        let CoordinatorResponse::Key(record) = reply.unwrap() else {
            panic!()
        };
        assert_eq!(record.revoked_at_ms, Some(30));
        assert!(effects.key_write.is_some());
        let (reply, effects) = core.handle(env("acme", "r7", verify), 31, None);
        assert_eq!(
            reply.unwrap(),
            CoordinatorResponse::Verification(Verification::Invalid)
        );
        assert_eq!(effects.key_write, None);
        let unknown = CoordinatorRequest::GetKey(KeyId {
            id: "000000000000".into(),
        });
        let (reply, _) = core.handle(env("acme", "r8", unknown), 32, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn another_tenant_cannot_touch_the_keys() {
        let mut core = CoordinatorCore::new(None, Vec::new());
        core.handle(env("acme", "r1", create_key()), 1, entropy())
            .0
            .unwrap();
        let (reply, effects) =
            core.handle(env("evil", "r2", CoordinatorRequest::ListKeys), 2, None);
        assert_eq!(reply.unwrap_err().code, ErrorCode::WrongTenant);
        assert_eq!(effects, Effects::default());
    }
}
