//! A small, bounded, time-limited map for what one isolate remembers between
//! requests (key verifications, a tenant's access settings and settings).
//!
//! Entries are at most [`TtlCache::max_age_ms`] old when read, so a change at
//! the source (a revoked key, a setting turned off) is seen within that time;
//! the map never holds more than its bound, so a flood of distinct keys cannot
//! grow an isolate's memory. The clock is passed in: no reads of time here.
//!
//! One fetch for a burst ([`TtlCache::lookup`], [`cached`]): while one
//! request fetches an entry that is missing or stale, the others of the
//! isolate wait for it (polling the map on a short timer) instead of each
//! fetching it too: fifty new chat sessions at once made 22 to 78 reads of
//! the tenant's settings within 32 ms. They cannot await the one fetch
//! itself: each object of an isolate has its own I/O context, and awaiting
//! a read begun by another breaks the waiter's next storage write (see
//! `coordinator::settings`). A fetch that has not answered within
//! [`FETCH_WAIT_MS`] (or that failed, or whose request went away) no longer
//! holds anyone: the next caller fetches.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::thread::LocalKey;
use std::time::Duration;

/// How long callers wait for another caller's fetch of the same entry
/// before fetching it themselves. A coordinator read takes a few ms.
pub const FETCH_WAIT_MS: u64 = 500;

/// How often a waiting caller looks at the map again.
pub const WAIT_STEP: Duration = Duration::from_millis(2);

/// What [`TtlCache::lookup`] tells a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// The value, fresh, and when it was fetched.
    Hit(V, u64),
    /// Another caller is fetching it: look again shortly.
    Wait,
    /// Fetch it: the caller is now the one fetching, until it
    /// [inserts](TtlCache::insert) the value or [gives up](TtlCache::abandon).
    Fetch,
}

/// A map whose entries expire `max_age_ms` after they were stored.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, u64)>,
    max_entries: usize,
    max_age_ms: u64,
    /// The keys being fetched, and since when (at most `max_entries`).
    fetching: HashMap<K, u64>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `max_entries`, each fresh for `max_age_ms`.
    pub fn new(max_entries: usize, max_age_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
            max_age_ms,
            fetching: HashMap::new(),
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

    /// `key`'s value for a caller at `now_ms` that fetches it on
    /// [`Lookup::Fetch`]: fresh, or wait while another caller has been
    /// fetching it for less than [`FETCH_WAIT_MS`], or fetch.
    pub fn lookup(&mut self, key: &K, now_ms: u64) -> Lookup<V> {
        if let Some((value, at)) = self.get_with_time(key, now_ms) {
            return Lookup::Hit(value, at);
        }
        if let Some(since) = self.fetching.get(key) {
            if now_ms.saturating_sub(*since) < FETCH_WAIT_MS {
                return Lookup::Wait;
            }
        } else if self.fetching.len() >= self.max_entries {
            // As many fetches under way as entries: forget those that no
            // longer hold anyone, or fetch without telling anyone.
            self.fetching
                .retain(|_, since| now_ms.saturating_sub(*since) < FETCH_WAIT_MS);
            if self.fetching.len() >= self.max_entries {
                return Lookup::Fetch;
            }
        }
        self.fetching.insert(key.clone(), now_ms);
        Lookup::Fetch
    }

    /// The caller fetching `key` could not (or went away): the next caller
    /// fetches it.
    pub fn abandon(&mut self, key: &K) {
        self.fetching.remove(key);
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
        self.fetching.remove(&key);
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

/// `key`'s value in `cache` and when it was fetched: from the cache when
/// fresh, else from the fetch another request of the isolate has under way,
/// else from `fetch`, whose answer is cached for everyone (an error is not,
/// and hands the fetch to the next caller, as does a request that goes away
/// mid-fetch). `now` reads the clock (Workers' advances with I/O, such as
/// the wait between two looks).
pub async fn cached<K, V, E, Fut>(
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: &K,
    now: impl Fn() -> u64,
    fetch: impl FnOnce() -> Fut,
) -> Result<(V, u64), E>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
    Fut: Future<Output = Result<V, E>>,
{
    loop {
        match cache.with(|c| c.borrow_mut().lookup(key, now())) {
            Lookup::Hit(value, at) => return Ok((value, at)),
            Lookup::Wait => worker::Delay::from(WAIT_STEP).await,
            Lookup::Fetch => break,
        }
    }
    // Gives the fetch up if this request's future is dropped before it ends.
    struct Fetching<'a, K: Eq + Hash + Clone + 'static, V: Clone + 'static> {
        cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
        key: &'a K,
        done: bool,
    }
    impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> Drop for Fetching<'_, K, V> {
        fn drop(&mut self) {
            if !self.done {
                let _ = self
                    .cache
                    .try_with(|c| c.try_borrow_mut().map(|mut c| c.abandon(self.key)));
            }
        }
    }
    let mut fetching = Fetching {
        cache,
        key,
        done: false,
    };
    let value = fetch().await?;
    let at = now();
    cache.with(|c| c.borrow_mut().insert(key.clone(), value.clone(), at));
    fetching.done = true;
    Ok((value, at))
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
    fn one_caller_fetches_and_the_others_wait_for_it() {
        let mut c = TtlCache::new(10, 1_000);
        assert_eq!(c.lookup(&"a", 0), Lookup::Fetch, "nothing stored");
        assert_eq!(c.lookup(&"a", 1), Lookup::Wait, "the first caller fetches");
        assert_eq!(c.lookup(&"b", 1), Lookup::Fetch, "another key is its own");
        c.insert("a", 1, 5);
        assert_eq!(c.lookup(&"a", 6), Lookup::Hit(1, 5));
        // Stale: again one fetch, the others wait for it.
        assert_eq!(c.lookup(&"a", 1_005), Lookup::Fetch);
        assert_eq!(c.lookup(&"a", 1_006), Lookup::Wait);
        assert_eq!(c.get(&"a", 1_006), None, "a stale value is never answered");
        c.insert("a", 2, 1_010);
        assert_eq!(c.lookup(&"a", 1_011), Lookup::Hit(2, 1_010));
    }

    #[test]
    fn a_fetch_that_fails_or_lingers_holds_nobody() {
        let mut c: TtlCache<&str, u32> = TtlCache::new(10, 1_000);
        assert_eq!(c.lookup(&"a", 0), Lookup::Fetch);
        c.abandon(&"a");
        assert_eq!(c.lookup(&"a", 1), Lookup::Fetch, "the next caller fetches");
        assert_eq!(c.lookup(&"a", FETCH_WAIT_MS), Lookup::Wait);
        assert_eq!(
            c.lookup(&"a", 1 + FETCH_WAIT_MS),
            Lookup::Fetch,
            "a fetch that has not answered within the wait"
        );
        assert_eq!(c.lookup(&"a", 2 + FETCH_WAIT_MS), Lookup::Wait);
        c.abandon(&"b");
    }

    #[test]
    fn fetches_under_way_are_bounded_like_the_entries() {
        let mut c: TtlCache<u32, ()> = TtlCache::new(2, 1_000);
        assert_eq!(c.lookup(&1, 0), Lookup::Fetch);
        assert_eq!(c.lookup(&2, 0), Lookup::Fetch);
        // Full of fetches that still hold their callers: fetch, untracked.
        assert_eq!(c.lookup(&3, 10), Lookup::Fetch);
        assert_eq!(c.lookup(&3, 11), Lookup::Fetch);
        assert_eq!(c.fetching.len(), 2);
        // Once they no longer hold anyone, they make room.
        assert_eq!(c.lookup(&3, FETCH_WAIT_MS), Lookup::Fetch);
        assert_eq!(c.lookup(&3, FETCH_WAIT_MS + 1), Lookup::Wait);
        assert!(c.fetching.len() <= 2);
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
