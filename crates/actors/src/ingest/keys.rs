//! Names derived by hashing: vector ids and search cache keys.

use protocol::ingest::{ScoreFloor, Search, SearchMode};
use protocol::TenantId;
use sha2::{Digest, Sha256};

/// Length of a vector id: 40 hex digits (160 bits), well under Vectorize's 64 bytes.
pub const VECTOR_ID_LEN: usize = 40;

fn hex(bytes: &[u8], len: usize) -> String {
    bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .take(len)
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

/// The vector id of chunk `chunk` of document `doc_id` of `tenant`: stable
/// (re-ingesting overwrites the same ids) and distinct across tenants even for
/// equal document ids. Fields are length-prefixed so no two inputs collide by
/// concatenation.
pub fn vector_id(tenant: &TenantId, doc_id: &str, chunk: u32) -> String {
    let mut h = Sha256::new();
    for part in [tenant.as_str().as_bytes(), doc_id.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(chunk.to_be_bytes());
    hex(&h.finalize(), VECTOR_ID_LEN)
}

/// What the scores and the version of a cached answer mean; part of every
/// search key, so an answer scored another way (before scores were
/// relevances in [0, 1]), keyed by another numbering of the index (before
/// the change numbers of search replicas), or ranked before passages in
/// another writing system yielded (`relevance-3`), is never served. Change
/// it whenever either changes.
pub const SCORING: &str = "relevance-4";

/// The KV key of a cached search: `${tenantId}:search:<hash>` where the hash
/// covers the normalised query, `topK`, filter, grouping, mode, the floor
/// applied, the scoring and the index version, so any change to the index
/// makes old entries unreachable and a search with another floor or
/// grouping never gets this one's answer. (Hashing the grouping also left
/// every answer cached before matches named their document unreachable.)
pub fn search_cache_key(
    tenant: &TenantId,
    search: &Search,
    mode: SearchMode,
    floor: ScoreFloor,
    index_version: u64,
) -> String {
    let normalised = search
        .query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let filter = serde_json::to_string(&search.filter).unwrap_or_default();
    let mut h = Sha256::new();
    for part in [
        normalised.as_bytes(),
        filter.as_bytes(),
        mode.as_str().as_bytes(),
        SCORING.as_bytes(),
        search.group.as_str().as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(floor.get().to_bits().to_be_bytes());
    h.update(search.top_k.to_be_bytes());
    h.update(index_version.to_be_bytes());
    tenant.kv_key(&format!("search:{}", hex(&h.finalize(), 32)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ingest::{MetaValue, Metadata, SearchGroup};
    use std::collections::HashSet;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn vector_ids_are_short_stable_and_distinct() {
        let a = vector_id(&t("acme"), "doc-1", 0);
        assert_eq!(a.len(), VECTOR_ID_LEN);
        assert!(a.len() <= 64);
        assert_eq!(a, vector_id(&t("acme"), "doc-1", 0));
        let mut seen = HashSet::new();
        for tenant in ["acme", "beta", "acme-1"] {
            for doc in ["doc-1", "doc-10", "1", "doc"] {
                for chunk in 0..50 {
                    assert!(seen.insert(vector_id(&t(tenant), doc, chunk)));
                }
            }
        }
        // The tenant/doc boundary cannot be shifted to collide.
        assert_ne!(vector_id(&t("ab"), "c", 0), vector_id(&t("a"), "bc", 0));
    }

    #[test]
    fn cache_keys() {
        let search = |query: &str, top_k: u32| Search {
            caller: None,
            query: query.into(),
            top_k,
            filter: Metadata::new(),
            mode: None,
            min_score: None,
            group: SearchGroup::Document,
        };
        let d = ScoreFloor::DEFAULT;
        let hybrid = SearchMode::Hybrid;
        let k = search_cache_key(&t("acme"), &search("Hello  World", 5), hybrid, d, 3);
        assert!(k.starts_with("acme:search:"));
        assert_eq!(
            k,
            search_cache_key(&t("acme"), &search(" hello world ", 5), hybrid, d, 3)
        );
        // Who pays for the embedding, and how the mode was named, are not
        // part of the answer.
        let paid = Search {
            caller: Some("key-1".into()),
            mode: Some(hybrid),
            ..search("hello world", 5)
        };
        assert_eq!(k, search_cache_key(&t("acme"), &paid, hybrid, d, 3));
        let floor = |v| ScoreFloor::new(v).unwrap();
        let s = search("hello world", 5);
        let others = [
            search_cache_key(&t("beta"), &s, hybrid, d, 3),
            search_cache_key(&t("acme"), &search("hello world", 6), hybrid, d, 3),
            search_cache_key(&t("acme"), &s, SearchMode::Vector, d, 3),
            search_cache_key(&t("acme"), &s, hybrid, d, 4),
            search_cache_key(&t("acme"), &s, hybrid, floor(0.0), 3),
            search_cache_key(&t("acme"), &s, hybrid, floor(0.36), 3),
            search_cache_key(
                &t("acme"),
                &Search {
                    filter: Metadata::from([("source".into(), MetaValue::Str("a".into()))]),
                    ..s.clone()
                },
                hybrid,
                d,
                3,
            ),
            search_cache_key(
                &t("acme"),
                &Search {
                    group: SearchGroup::Chunk,
                    ..s.clone()
                },
                hybrid,
                d,
                3,
            ),
        ];
        for other in others {
            assert_ne!(k, other);
        }
    }
}
