//! A small, bounded, time-limited map for what one isolate remembers between
//! requests (key verifications, a tenant's access settings).
//!
//! Entries are at most [`TtlCache::max_age_ms`] old when read, so a change at
//! the source (a revoked key, a setting turned off) is seen within that time;
//! the map never holds more than its bound, so a flood of distinct keys cannot
//! grow an isolate's memory. The clock is passed in: no reads of time here.

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use std::collections::HashMap;
use std::hash::Hash;

/// A lookup in progress, shared by everyone who waits for it.
pub type Lookup<V> = Shared<LocalBoxFuture<'static, V>>;

/// One lookup in progress per key: callers that miss the cache while it
/// runs wait for it instead of starting their own (fifty sockets opened at
/// once verify their key once, not fifty times at the tenant's one
/// coordinator).
pub struct InFlight<K, V> {
    lookups: HashMap<K, Lookup<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone + 'static> InFlight<K, V> {
    /// None in progress.
    pub fn new() -> Self {
        Self {
            lookups: HashMap::new(),
        }
    }

    /// The lookup of `key` in progress, or the one `start` begins now.
    pub fn join(
        &mut self,
        key: &K,
        start: impl FnOnce() -> LocalBoxFuture<'static, V>,
    ) -> Lookup<V> {
        self.lookups
            .entry(key.clone())
            .or_insert_with(|| start().shared())
            .clone()
    }

    /// Forgets `lookup` of `key`, which has finished; whether it was still
    /// the current one (not forgotten by [`Self::forget_where`] meanwhile,
    /// nor finished by another waiter): only then does its answer go into
    /// the cache, once.
    pub fn finish(&mut self, key: &K, lookup: &Lookup<V>) -> bool {
        if self.lookups.get(key).is_some_and(|l| l.ptr_eq(lookup)) {
            self.lookups.remove(key);
            true
        } else {
            false
        }
    }

    /// Forgets the lookups whose key matches `stale` (what they will answer
    /// may predate a change: later callers start their own, and their answer
    /// is not cached).
    pub fn forget_where(&mut self, stale: impl Fn(&K) -> bool) {
        self.lookups.retain(|k, _| !stale(k));
    }

    /// How many lookups are in progress.
    pub fn len(&self) -> usize {
        self.lookups.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.lookups.is_empty()
    }
}

impl<K: Eq + Hash + Clone, V: Clone + 'static> Default for InFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

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
    #[test]
    fn lookups_that_overlap_share_one_and_a_finished_one_is_forgotten() {
        use futures::channel::oneshot;
        use std::cell::Cell;
        use std::rc::Rc;
        let started = Rc::new(Cell::new(0));
        let mut inflight: InFlight<&str, u32> = InFlight::new();
        let (tx, rx) = oneshot::channel::<u32>();
        let rx = Rc::new(std::cell::RefCell::new(Some(rx)));
        let start = || {
            started.set(started.get() + 1);
            let rx = rx.borrow_mut().take().expect("started once");
            async move { rx.await.unwrap_or(0) }.boxed_local()
        };
        let first = inflight.join(&"k", start);
        let second = inflight.join(&"k", || unreachable!("joins the first"));
        assert_eq!((started.get(), inflight.len()), (1, 1));
        tx.send(7).unwrap();
        assert_eq!(futures::executor::block_on(first.clone()), 7);
        assert_eq!(futures::executor::block_on(second), 7);
        assert!(inflight.finish(&"k", &first), "the first waiter caches it");
        assert!(!inflight.finish(&"k", &first), "the others do not");
        assert!(inflight.is_empty());
        let third = inflight.join(&"k", || async { 8 }.boxed_local());
        assert_eq!(
            futures::executor::block_on(third.clone()),
            8,
            "a new lookup"
        );
        // An old lookup's finish leaves a newer one in place.
        assert!(!inflight.finish(&"k", &first));
        assert_eq!(inflight.len(), 1);
        assert!(inflight.finish(&"k", &third));
        assert!(inflight.is_empty());
        // A forgotten lookup is not joined, and its answer is not cached.
        let old = inflight.join(&"k", || async { 1 }.boxed_local());
        inflight.forget_where(|k| *k == "k");
        let new = inflight.join(&"k", || async { 2 }.boxed_local());
        assert!(!old.ptr_eq(&new), "a later caller starts its own");
        assert_eq!(futures::executor::block_on(old.clone()), 1);
        assert!(!inflight.finish(&"k", &old));
        assert!(inflight.finish(&"k", &new));
    }

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
