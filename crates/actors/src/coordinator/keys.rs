//! The tenant's API keys: the pure key store of the coordinator's core.
//!
//! A key's secret is never kept: only its SHA-256 (lowercase hex of the
//! SHA-256 of the secret's 64 hex characters), and during a rotation's grace
//! the hash of the secret before it. Randomness comes in as bytes
//! ([`KeyEntropy`]) and time as `now_ms`, so every rule is testable natively.
//!
//! Verification compares hashes in constant time, and compares against a
//! dummy hash when the id is unknown, so that how long a refusal takes does
//! not tell a wrong id from a wrong secret.

use protocol::keys::{
    valid_key_id, CreateKey, KeyError, KeyRecord, NewKey, ParsedKey, RotateKey, Verification,
    VerifyKey,
};
use protocol::{ErrorCode, ErrorReply, TenantId};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::{Choice, ConstantTimeEq};

/// The most keys a tenant may have (revoked ones included: they stay stored
/// so that their records can still be shown).
pub const MAX_KEYS: usize = 1000;
/// How fresh `lastUsedAt` is kept: a check writes it at most once a minute.
pub const LAST_USED_RESOLUTION_MS: u64 = 60_000;
/// The [`ErrorReply::reason`] when a tenant has [`MAX_KEYS`] keys already.
pub const TOO_MANY_KEYS: &str = "too_many_keys";
/// The reason when a revoked key is asked for a new secret.
pub const KEY_REVOKED: &str = "key_revoked";

/// Length of a SHA-256 in lowercase hex.
const HASH_HEX: usize = 64;
/// What an unknown id's check is compared against: no secret hashes to it
/// (it is not even the hash of anything known), and a match with it never
/// counts, since the key was not found.
const DUMMY_HASH: &[u8; HASH_HEX] =
    b"0000000000000000000000000000000000000000000000000000000000000000";

/// The random bytes a new key or a new secret is made of, read by the shell
/// from the platform's CSPRNG.
#[derive(Clone, Copy)]
pub struct KeyEntropy {
    /// The key id (6 bytes: 12 hex digits).
    pub id: [u8; 6],
    /// The secret (32 bytes: 64 hex digits, 256 bits).
    pub secret: [u8; 32],
}

impl std::fmt::Debug for KeyEntropy {
    // The bytes become a secret: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEntropy(..)")
    }
}

/// A key as the coordinator stores it: its record and the hashes that
/// verify it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// What is shown (never a secret or a hash).
    pub record: KeyRecord,
    /// SHA-256 (lowercase hex) of the current secret.
    pub secret_sha256: String,
    /// SHA-256 of the secret before the last rotation, while it still works
    /// (until `record.previous_valid_until_ms`).
    pub previous_sha256: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    // Hashes are not secrets, but they have no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a secret, as stored and as the gateway sends it in
/// [`VerifyKey::secret_sha256`]: lowercase hex of the hash of the secret's
/// characters.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret from entropy, and its hash.
fn new_secret(entropy: &KeyEntropy) -> (String, String) {
    let secret = hex::encode(entropy.secret);
    let hash = secret_sha256(&secret);
    (secret, hash)
}

fn invalid(e: KeyError) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, e.to_string())
}

fn not_found(id: &str) -> ErrorReply {
    // The id is validated before it gets here: hex, safe to echo.
    ErrorReply::new(ErrorCode::NotFound, format!("no key {id}"))
}

fn no_entropy() -> ErrorReply {
    // Never fall back to weaker randomness for a secret.
    ErrorReply::new(
        ErrorCode::Internal,
        "no randomness available to make a secret",
    )
}

/// `given` as 64 bytes, and whether it was a well-formed hash at all.
fn hash_bytes(given: &str) -> ([u8; HASH_HEX], Choice) {
    let mut bytes = [0u8; HASH_HEX];
    let ok = given.len() == HASH_HEX
        && given
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        bytes.copy_from_slice(given.as_bytes());
    }
    (bytes, Choice::from(u8::from(ok)))
}

/// Whether `given` matches `stored`'s current hash, or its previous one while
/// the grace lasts at `now_ms`. Always makes both comparisons, against the
/// dummy hash for what is absent, so its time does not depend on which
/// hashes exist nor on where they differ.
fn hash_matches(stored: Option<&StoredKey>, given: &str, now_ms: u64) -> bool {
    let (given, well_formed) = hash_bytes(given);
    let current = stored.map_or(&DUMMY_HASH[..], |k| k.secret_sha256.as_bytes());
    let in_grace = stored.is_some_and(|k| {
        k.previous_sha256.is_some()
            && k.record
                .previous_valid_until_ms
                .is_some_and(|until| now_ms < until)
    });
    let previous = stored
        .and_then(|k| k.previous_sha256.as_deref())
        .map_or(&DUMMY_HASH[..], str::as_bytes);
    let found = Choice::from(u8::from(stored.is_some()));
    let current_ok = given[..].ct_eq(current);
    let previous_ok = given[..].ct_eq(previous) & Choice::from(u8::from(in_grace));
    bool::from(well_formed & found & (current_ok | previous_ok))
}

/// Every key of one tenant.
#[derive(Debug, Default)]
pub struct KeyStore {
    keys: BTreeMap<String, StoredKey>,
}

impl KeyStore {
    /// A store over the keys loaded from storage.
    pub fn new(keys: Vec<StoredKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.record.id.clone(), k)).collect(),
        }
    }

    /// How many keys there are (revoked ones included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Creates a key for `tenant` at `now_ms`: the full key (shown once) and
    /// what to store.
    pub fn create(
        &mut self,
        tenant: &TenantId,
        create: CreateKey,
        now_ms: u64,
        entropy: Option<&KeyEntropy>,
    ) -> Result<(NewKey, StoredKey), ErrorReply> {
        create.validate(now_ms).map_err(invalid)?;
        if self.keys.len() >= MAX_KEYS {
            return Err(ErrorReply::new(
                ErrorCode::QuotaExceeded,
                format!("a tenant has at most {MAX_KEYS} keys"),
            )
            .with_reason(TOO_MANY_KEYS));
        }
        let entropy = entropy.ok_or_else(no_entropy)?;
        let id = hex::encode(entropy.id);
        if self.keys.contains_key(&id) {
            // 48 random bits against at most a thousand ids: practically
            // never; refusing is simpler than retrying with bytes we lack.
            return Err(ErrorReply::new(
                ErrorCode::Internal,
                "a new key id collided with an existing one; try again",
            ));
        }
        let (secret, hash) = new_secret(entropy);
        let record = KeyRecord {
            id: id.clone(),
            name: create.name.trim().to_owned(),
            scopes: create.scopes,
            models: create.models,
            expires_at_ms: create.expires_at_ms,
            created_at_ms: now_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
            rotated_at_ms: None,
            previous_valid_until_ms: None,
            limits: create.limits,
            budget: create.budget,
        };
        let stored = StoredKey {
            record: record.clone(),
            secret_sha256: hash,
            previous_sha256: None,
        };
        self.keys.insert(id.clone(), stored.clone());
        let key = ParsedKey::format(tenant, &id, &secret);
        Ok((NewKey { key, record }, stored))
    }

    /// Every key's record, oldest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut records: Vec<KeyRecord> = self.keys.values().map(|k| k.record.clone()).collect();
        records.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        records
    }

    /// One key's record.
    pub fn get(&self, id: &str) -> Result<KeyRecord, ErrorReply> {
        self.find(id).map(|k| k.record.clone())
    }

    fn find(&self, id: &str) -> Result<&StoredKey, ErrorReply> {
        if !valid_key_id(id) {
            return Err(invalid(KeyError::Id));
        }
        self.keys.get(id).ok_or_else(|| not_found(id))
    }

    fn find_mut(&mut self, id: &str) -> Result<&mut StoredKey, ErrorReply> {
        if !valid_key_id(id) {
            return Err(invalid(KeyError::Id));
        }
        self.keys.get_mut(id).ok_or_else(|| not_found(id))
    }

    /// Gives a key a new secret at `now_ms`. The old one keeps working for
    /// `grace_seconds` (none at all with 0); a secret from before an earlier
    /// rotation stops at once, whatever its grace. A revoked key is refused;
    /// an expired one may rotate, though its expiry still holds.
    pub fn rotate(
        &mut self,
        tenant: &TenantId,
        rotate: RotateKey,
        now_ms: u64,
        entropy: Option<&KeyEntropy>,
    ) -> Result<(NewKey, StoredKey), ErrorReply> {
        rotate.validate().map_err(invalid)?;
        let key = self.find_mut(&rotate.id)?;
        if key.record.revoked_at_ms.is_some() {
            return Err(ErrorReply::new(
                ErrorCode::InvalidRequest,
                "a revoked key cannot be rotated",
            )
            .with_reason(KEY_REVOKED));
        }
        let entropy = entropy.ok_or_else(no_entropy)?;
        let (secret, hash) = new_secret(entropy);
        let old = std::mem::replace(&mut key.secret_sha256, hash);
        if rotate.grace_seconds == 0 {
            key.previous_sha256 = None;
            key.record.previous_valid_until_ms = None;
        } else {
            key.previous_sha256 = Some(old);
            key.record.previous_valid_until_ms =
                Some(now_ms.saturating_add(rotate.grace_seconds.saturating_mul(1000)));
        }
        key.record.rotated_at_ms = Some(now_ms);
        let stored = key.clone();
        let full = ParsedKey::format(tenant, &stored.record.id, &secret);
        Ok((
            NewKey {
                key: full,
                record: stored.record.clone(),
            },
            stored,
        ))
    }

    /// Replaces a key's limits: its record, and what to store. A revoked key
    /// keeps the limits it had.
    pub fn update(
        &mut self,
        update: &protocol::keys::UpdateKey,
    ) -> Result<(KeyRecord, Option<StoredKey>), ErrorReply> {
        let key = self.find_mut(&update.id)?;
        if key.record.revoked_at_ms.is_some() {
            return Err(ErrorReply::new(
                ErrorCode::InvalidRequest,
                "this key is revoked; its limits no longer matter",
            ));
        }
        let before = key.record.clone();
        if let Some(limits) = &update.limits {
            key.record.limits = limits.clone();
        }
        if let Some(budget) = update.budget {
            key.record.budget = budget;
        }
        if key.record == before {
            return Ok((key.record.clone(), None));
        }
        Ok((key.record.clone(), Some(key.clone())))
    }

    /// Revokes a key at `now_ms`: its record, and what to store if it
    /// changed (revoking twice keeps the first time).
    pub fn revoke(
        &mut self,
        id: &str,
        now_ms: u64,
    ) -> Result<(KeyRecord, Option<StoredKey>), ErrorReply> {
        let key = self.find_mut(id)?;
        if key.record.revoked_at_ms.is_some() {
            return Ok((key.record.clone(), None));
        }
        key.record.revoked_at_ms = Some(now_ms);
        // Nothing verifies against a revoked key's hashes again; the grace
        // hash goes so that nothing about a revoked key still looks live.
        key.previous_sha256 = None;
        key.record.previous_valid_until_ms = None;
        Ok((key.record.clone(), Some(key.clone())))
    }

    /// Checks a key at `now_ms`. On success it records the use; the second
    /// value is what to store then.
    pub fn verify(&mut self, verify: &VerifyKey, now_ms: u64) -> (Verification, Option<StoredKey>) {
        let stored = self.keys.get(&verify.id);
        // The hash comparison runs whether or not the id exists.
        let matches = hash_matches(stored, &verify.secret_sha256, now_ms);
        let Some(key) = self.keys.get_mut(&verify.id) else {
            return (Verification::Invalid, None);
        };
        let live = key.record.revoked_at_ms.is_none()
            && key.record.expires_at_ms.is_none_or(|at| now_ms < at);
        if !(matches && live) {
            return (Verification::Invalid, None);
        }
        // `lastUsedAt` to the minute: a busy key is verified by every
        // gateway isolate and every chat socket, and a write per check would
        // make the tenant's coordinator a hot spot.
        let stale = key
            .record
            .last_used_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= LAST_USED_RESOLUTION_MS);
        if !stale {
            return (Verification::Valid(key.record.clone()), None);
        }
        key.record.last_used_at_ms = Some(now_ms);
        (Verification::Valid(key.record.clone()), Some(key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keys::{KeyLimits, Scope};

    const T0: u64 = 1_700_000_000_000;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn entropy(n: u8) -> KeyEntropy {
        KeyEntropy {
            id: [n; 6],
            secret: [n.wrapping_mul(7).wrapping_add(1); 32],
        }
    }

    fn create_req() -> CreateKey {
        CreateKey {
            budget: Default::default(),
            name: " ci ".into(),
            scopes: vec![Scope::Search, Scope::Chat],
            models: vec![],
            expires_at_ms: None,
            limits: KeyLimits::default(),
        }
    }

    fn new_key(store: &mut KeyStore, n: u8, now: u64) -> (ParsedKey, StoredKey) {
        let (new, stored) = store
            .create(&tenant(), create_req(), now, Some(&entropy(n)))
            .unwrap();
        (ParsedKey::parse(&new.key).unwrap(), stored)
    }

    fn check(store: &mut KeyStore, key: &ParsedKey, now: u64) -> Verification {
        let verify = VerifyKey {
            id: key.key_id.clone(),
            secret_sha256: secret_sha256(&key.secret),
        };
        store.verify(&verify, now).0
    }

    fn valid(v: &Verification) -> bool {
        matches!(v, Verification::Valid(_))
    }

    #[test]
    fn create_shows_the_secret_once_and_stores_only_its_hash() {
        let mut store = KeyStore::default();
        let (new, stored) = store
            .create(&tenant(), create_req(), T0, Some(&entropy(1)))
            .unwrap();
        let parsed = ParsedKey::parse(&new.key).unwrap();
        assert_eq!(parsed.tenant, tenant());
        assert_eq!(parsed.key_id, "010101010101");
        assert_eq!(parsed.secret.len(), 64);
        assert_eq!(new.record.id, parsed.key_id);
        assert_eq!(new.record.name, "ci", "trimmed");
        assert_eq!(new.record.created_at_ms, T0);
        assert_eq!(stored.record, new.record);
        assert_eq!(stored.secret_sha256, secret_sha256(&parsed.secret));
        assert_ne!(stored.secret_sha256, parsed.secret);
        // Neither the secret nor its hash is in the record, its JSON or Debug.
        for shown in [
            serde_json::to_string(&new.record).unwrap(),
            format!("{stored:?}"),
            format!("{:?}", store.list()),
        ] {
            assert!(!shown.contains(&parsed.secret), "{shown}");
            assert!(!shown.contains(&stored.secret_sha256), "{shown}");
        }
        assert_eq!(store.list(), vec![new.record.clone()]);
        assert_eq!(store.get(&parsed.key_id), Ok(new.record));
    }

    #[test]
    fn create_is_validated_and_needs_randomness() {
        let mut store = KeyStore::default();
        let mut bad = create_req();
        bad.scopes.clear();
        let e = store
            .create(&tenant(), bad, T0, Some(&entropy(1)))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.message, KeyError::Scopes.to_string());
        let mut past = create_req();
        past.expires_at_ms = Some(T0);
        let e = store
            .create(&tenant(), past, T0, Some(&entropy(1)))
            .unwrap_err();
        assert_eq!(e.message, KeyError::Expiry.to_string());
        let e = store.create(&tenant(), create_req(), T0, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(store.is_empty(), "no refused request leaves a key");
        new_key(&mut store, 1, T0);
        let e = store
            .create(&tenant(), create_req(), T0, Some(&entropy(1)))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal, "id collision");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn at_most_a_thousand_keys() {
        let mut store = KeyStore::default();
        for i in 0..MAX_KEYS {
            let mut e = entropy(0);
            e.id[..2].copy_from_slice(&u16::try_from(i).unwrap().to_be_bytes());
            store.create(&tenant(), create_req(), T0, Some(&e)).unwrap();
        }
        let e = store
            .create(&tenant(), create_req(), T0, Some(&entropy(0xff)))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert_eq!(e.reason.as_deref(), Some(TOO_MANY_KEYS));
        // Revoked keys still count: their records stay.
        let first = store.list()[0].id.clone();
        store.revoke(&first, T0).unwrap();
        assert!(store
            .create(&tenant(), create_req(), T0, Some(&entropy(0xff)))
            .is_err());
    }

    #[test]
    fn a_valid_key_verifies_and_records_its_use() {
        let mut store = KeyStore::default();
        let (key, _) = new_key(&mut store, 1, T0);
        let verify = VerifyKey {
            id: key.key_id.clone(),
            secret_sha256: secret_sha256(&key.secret),
        };
        let (v, write) = store.verify(&verify, T0 + 5);
        let Verification::Valid(record) = v else {
            panic!("{v:?}")
        };
        assert_eq!(record.last_used_at_ms, Some(T0 + 5));
        assert_eq!(write.unwrap().record.last_used_at_ms, Some(T0 + 5));
        assert_eq!(
            store.get(&key.key_id).unwrap().last_used_at_ms,
            Some(T0 + 5)
        );
        // Within the minute, a check writes nothing; after it, it does.
        let (v, write) = store.verify(&verify, T0 + 10);
        assert!(matches!(v, Verification::Valid(_)) && write.is_none());
        let later = T0 + 5 + LAST_USED_RESOLUTION_MS;
        let (_, write) = store.verify(&verify, later);
        assert_eq!(write.unwrap().record.last_used_at_ms, Some(later));
        let key_at = |store: &KeyStore| store.get(&key.key_id).unwrap().last_used_at_ms;
        assert_eq!(key_at(&store), Some(later));
        // A wrong secret changes nothing.
        let wrong = VerifyKey {
            id: key.key_id.clone(),
            secret_sha256: secret_sha256("nope"),
        };
        assert_eq!(store.verify(&wrong, T0 + 9), (Verification::Invalid, None));
        assert_eq!(key_at(&store), Some(later));
        // The secret itself, or an upper-case hash, is not the hash.
        for given in [
            key.secret.clone(),
            secret_sha256(&key.secret).to_uppercase(),
        ] {
            let v = VerifyKey {
                id: key.key_id.clone(),
                secret_sha256: given,
            };
            assert_eq!(store.verify(&v, T0 + 9).0, Verification::Invalid);
        }
    }

    #[test]
    fn unknown_ids_are_compared_against_the_dummy_and_refused() {
        let mut store = KeyStore::default();
        let (key, _) = new_key(&mut store, 1, T0);
        let dummy = std::str::from_utf8(DUMMY_HASH).unwrap().to_owned();
        for (id, hash) in [
            ("ffffffffffff", dummy.clone()),
            ("ffffffffffff", secret_sha256(&key.secret)),
            ("not an id", dummy.clone()),
            ("", String::new()),
        ] {
            let verify = VerifyKey {
                id: id.into(),
                secret_sha256: hash.clone(),
            };
            assert_eq!(store.verify(&verify, T0), (Verification::Invalid, None));
            assert!(!hash_matches(None, &hash, T0), "{id} {hash}");
        }
    }

    #[test]
    fn an_expired_key_is_refused() {
        let mut store = KeyStore::default();
        let mut create = create_req();
        create.expires_at_ms = Some(T0 + 1_000);
        let (new, _) = store
            .create(&tenant(), create, T0, Some(&entropy(1)))
            .unwrap();
        let key = ParsedKey::parse(&new.key).unwrap();
        assert!(valid(&check(&mut store, &key, T0 + 999)));
        assert_eq!(check(&mut store, &key, T0 + 1_000), Verification::Invalid);
    }

    #[test]
    fn revoking_is_immediate_and_idempotent() {
        let mut store = KeyStore::default();
        let (key, _) = new_key(&mut store, 1, T0);
        assert!(valid(&check(&mut store, &key, T0 + 1)));
        let (record, write) = store.revoke(&key.key_id, T0 + 2).unwrap();
        assert_eq!(record.revoked_at_ms, Some(T0 + 2));
        assert!(write.is_some());
        assert_eq!(check(&mut store, &key, T0 + 3), Verification::Invalid);
        let (again, write) = store.revoke(&key.key_id, T0 + 9).unwrap();
        assert_eq!(again.revoked_at_ms, Some(T0 + 2), "the first time stays");
        assert!(write.is_none());
        let e = store
            .rotate(
                &tenant(),
                RotateKey {
                    id: key.key_id.clone(),
                    grace_seconds: 0,
                },
                T0 + 10,
                Some(&entropy(2)),
            )
            .unwrap_err();
        assert_eq!(e.reason.as_deref(), Some(KEY_REVOKED));
    }

    #[test]
    fn a_keys_limits_are_replaced_but_not_a_revoked_ones() {
        let mut store = KeyStore::default();
        let (key, _) = new_key(&mut store, 1, T0);
        let limits = protocol::keys::KeyLimits {
            rpm: Some(10),
            tpm: None,
            concurrency: Some(2),
        };
        let update = protocol::keys::UpdateKey {
            id: key.key_id.clone(),
            limits: Some(limits.clone()),
            budget: None,
        };
        let (record, write) = store.update(&update).unwrap();
        assert_eq!(record.limits, limits);
        assert_eq!(write.map(|w| w.record.limits), Some(limits.clone()));
        assert_eq!(store.get(&key.key_id).unwrap().limits, limits);
        let (_, again) = store.update(&update).unwrap();
        assert!(again.is_none(), "no change, nothing to store");
        let budget = protocol::limits::Budget {
            tokens_per_day: Some(5_000),
            ..protocol::limits::Budget::default()
        };
        let with_budget = protocol::keys::UpdateKey {
            id: key.key_id.clone(),
            limits: None,
            budget: Some(budget),
        };
        let (record, _) = store.update(&with_budget).unwrap();
        assert_eq!(record.budget, budget);
        assert_eq!(record.limits, limits, "limits left as they were");
        let unknown = protocol::keys::UpdateKey {
            id: "ffffffffffff".into(),
            limits: Some(limits.clone()),
            budget: None,
        };
        assert_eq!(
            store.update(&unknown).unwrap_err().code,
            ErrorCode::NotFound
        );
        store.revoke(&key.key_id, T0 + 1).unwrap();
        assert_eq!(
            store.update(&update).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    fn rotate(store: &mut KeyStore, id: &str, grace: u64, now: u64) -> ParsedKey {
        let (new, stored) = store
            .rotate(
                &tenant(),
                RotateKey {
                    id: id.into(),
                    grace_seconds: grace,
                },
                now,
                Some(&entropy(9)),
            )
            .unwrap();
        assert_eq!(new.record, stored.record);
        assert_eq!(new.record.rotated_at_ms, Some(now));
        ParsedKey::parse(&new.key).unwrap()
    }

    #[test]
    fn rotation_without_grace_stops_the_old_secret_at_once() {
        let mut store = KeyStore::default();
        let (old, _) = new_key(&mut store, 1, T0);
        let new = rotate(&mut store, &old.key_id, 0, T0 + 10);
        assert_eq!(new.key_id, old.key_id);
        assert_ne!(new.secret, old.secret);
        assert_eq!(check(&mut store, &old, T0 + 10), Verification::Invalid);
        assert!(valid(&check(&mut store, &new, T0 + 10)));
        assert_eq!(
            store.get(&old.key_id).unwrap().previous_valid_until_ms,
            None
        );
    }

    #[test]
    fn rotation_with_grace_keeps_the_old_secret_until_it_ends() {
        let mut store = KeyStore::default();
        let (old, _) = new_key(&mut store, 1, T0);
        let new = rotate(&mut store, &old.key_id, 60, T0 + 10);
        let until = T0 + 10 + 60_000;
        assert_eq!(
            store.get(&old.key_id).unwrap().previous_valid_until_ms,
            Some(until)
        );
        assert!(valid(&check(&mut store, &old, until - 1)));
        assert!(valid(&check(&mut store, &new, until - 1)));
        assert_eq!(check(&mut store, &old, until), Verification::Invalid);
        assert!(valid(&check(&mut store, &new, until)));
        // A second rotation ends the first one's grace at once.
        let mut store2 = KeyStore::default();
        let (a, _) = new_key(&mut store2, 1, T0);
        let b = rotate(&mut store2, &a.key_id, 60, T0 + 1);
        let mut e = entropy(3);
        e.secret = [0xaa; 32];
        let (c, _) = store2
            .rotate(
                &tenant(),
                RotateKey {
                    id: a.key_id.clone(),
                    grace_seconds: 60,
                },
                T0 + 2,
                Some(&e),
            )
            .unwrap();
        let c = ParsedKey::parse(&c.key).unwrap();
        assert_eq!(check(&mut store2, &a, T0 + 3), Verification::Invalid);
        assert!(valid(&check(&mut store2, &b, T0 + 3)));
        assert!(valid(&check(&mut store2, &c, T0 + 3)));
        // Revoking ends a grace too.
        store2.revoke(&a.key_id, T0 + 4).unwrap();
        assert_eq!(check(&mut store2, &b, T0 + 5), Verification::Invalid);
    }

    #[test]
    fn rotation_is_validated() {
        let mut store = KeyStore::default();
        let (key, _) = new_key(&mut store, 1, T0);
        let go = |store: &mut KeyStore, id: &str, grace| {
            store
                .rotate(
                    &tenant(),
                    RotateKey {
                        id: id.into(),
                        grace_seconds: grace,
                    },
                    T0,
                    Some(&entropy(2)),
                )
                .unwrap_err()
        };
        let e = go(
            &mut store,
            &key.key_id,
            protocol::keys::MAX_GRACE_SECONDS + 1,
        );
        assert_eq!(
            (e.code, e.message),
            (ErrorCode::InvalidRequest, KeyError::Grace.to_string())
        );
        assert_eq!(go(&mut store, "xyz", 0).code, ErrorCode::InvalidRequest);
        assert_eq!(go(&mut store, "ffffffffffff", 0).code, ErrorCode::NotFound);
        assert!(valid(&check(&mut store, &key, T0)), "unchanged");
    }

    #[test]
    fn unknown_and_malformed_ids() {
        let mut store = KeyStore::default();
        assert_eq!(
            store.get("ffffffffffff").unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            store.revoke("ffffffffffff", T0).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            store.get("../etc").unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn keys_are_listed_oldest_first() {
        let mut store = KeyStore::default();
        new_key(&mut store, 9, T0);
        new_key(&mut store, 1, T0 + 1);
        let ids: Vec<String> = store.list().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["090909090909", "010101010101"]);
        let reloaded = KeyStore::new(vec![]);
        assert!(reloaded.is_empty());
    }
}
