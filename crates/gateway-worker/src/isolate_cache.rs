//! A small, bounded, time-limited map for what one isolate remembers between
//! requests (key verifications, a tenant's access settings).
//!
//! Entries are at most [`TtlCache::max_age_ms`] old when read, so a change at
//! the source (a revoked key, a setting turned off) is seen within that time;
//! the map never holds more than its bound, so a flood of distinct keys cannot
//! grow an isolate's memory. The clock is passed in: no reads of time here.

use std::collections::HashMap;
use std::hash::Hash;

/// A map whose entries expire `max_age_ms` after they were stored.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, u64)>,
    max_entries: usize,
    max_age_ms: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `max_entries`, each fresh for `max_age_ms`.
    pub fn new(max_entries: usize, max_age_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
            max_age_ms,
        }
    }

    /// How long an entry stays fresh, in ms.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms
    }

    /// How many entries are held (fresh or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value stored for `key` if it was stored less than `max_age_ms`
    /// before `now_ms`.
    pub fn get(&self, key: &K, now_ms: u64) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, at)| self.fresh(*at, now_ms))
            .map(|(v, _)| v.clone())
    }

    /// Like [`Self::get`], with the time the value was fetched.
    pub fn get_with_time(&self, key: &K, now_ms: u64) -> Option<(V, u64)> {
        self.entries
            .get(key)
            .filter(|(_, at)| self.fresh(*at, now_ms))
            .map(|(v, at)| (v.clone(), *at))
    }

    /// Stores `value` for `key` as fetched at `now_ms`. When the cache is
    /// full, stale entries go first, then the oldest one.
    pub fn insert(&mut self, key: K, value: V, now_ms: u64) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            let max_age = self.max_age_ms;
            self.entries
                .retain(|_, (_, at)| now_ms.saturating_sub(*at) < max_age);
            if self.entries.len() >= self.max_entries {
                // Full of fresh entries: a linear scan, but only when more
                // than `max_entries` distinct keys arrived within `max_age_ms`.
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        if self.max_entries > 0 {
            self.entries.insert(key, (value, now_ms));
        }
    }

    /// Drops every entry whose key matches (a revoked or rotated key, so this
    /// isolate refuses it at once rather than within `max_age_ms`).
    pub fn remove_where(&mut self, mut matches: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| !matches(k));
    }

    fn fresh(&self, at: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(at) < self.max_age_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_tells_when_it_was_fetched() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert("a", 1, 5_000);
        assert_eq!(c.get_with_time(&"a", 5_400), Some((1, 5_000)));
        assert_eq!(c.get_with_time(&"a", 6_000), None, "stale");
        assert_eq!(c.get_with_time(&"b", 5_400), None);
    }

    #[test]
    fn entries_expire() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert("a", 1, 5_000);
        assert_eq!(c.get(&"a", 5_000), Some(1));
        assert_eq!(c.get(&"a", 5_999), Some(1));
        assert_eq!(c.get(&"a", 6_000), None);
        assert_eq!(c.get(&"b", 5_000), None);
        c.insert("a", 2, 6_000);
        assert_eq!(c.get(&"a", 6_500), Some(2));
    }

    #[test]
    fn the_bound_holds_and_the_oldest_goes_first() {
        let mut c = TtlCache::new(3, 1_000);
        c.insert(1, (), 100);
        c.insert(2, (), 50);
        c.insert(3, (), 200);
        c.insert(4, (), 300);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2, 300), None, "the oldest was evicted");
        assert!(c.get(&1, 300).is_some() && c.get(&4, 300).is_some());
        // Stale entries are cleared before anything fresh is evicted.
        c.insert(5, (), 1_150);
        c.insert(6, (), 1_160);
        assert_eq!(c.len(), 3);
        assert!(c.get(&4, 1_160).is_some());
        // Overwriting a key never evicts another.
        c.insert(4, (), 1_170);
        assert_eq!(c.len(), 3);
        for i in 0..10_000 {
            c.insert(i, (), 2_000);
        }
        assert_eq!(c.len(), 3);
        let mut none = TtlCache::new(0, 1_000);
        none.insert(1, (), 0);
        assert!(none.is_empty());
    }

    #[test]
    fn removal_by_predicate() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert(("t", "k1", "h1"), 1, 0);
        c.insert(("t", "k1", "h2"), 2, 0);
        c.insert(("t", "k2", "h1"), 3, 0);
        c.remove_where(|k| k.1 == "k1");
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&("t", "k2", "h1"), 0), Some(3));
    }
}
