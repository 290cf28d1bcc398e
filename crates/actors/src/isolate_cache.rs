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
//! fetching it too: thirty chat turns at once after the caches expired made
//! 21 to 121 coordinator requests (`tests/tests/keys.rs`). They cannot
//! await the one fetch itself: each object of an isolate has its own I/O
//! context, and awaiting a read begun by another breaks the waiter's next
//! storage write (see `coordinator::settings`).
//!
//! - A caller waits at most [`FETCH_WAIT_MS`], then fetches for itself.
//! - A fetch that failed makes the callers of the next [`FETCH_WAIT_MS`]
//!   fetch for themselves, together, rather than one after another; one
//!   whose request went away hands the fetch to the next caller.
//! - An answer is stored as of when its fetch began (not when already
//!   stale), and never over one fetched later; a fetch of any key begun
//!   before [`TtlCache::remove_where`] (a revoked key) stores nothing.
//!
//! A caller that may act on a value a little late can take a stale one
//! ([`TtlCache::lookup_within`], [`cached_or_refresh`]): up to its window
//! past the entry's age, it is answered at once and one caller fetches the
//! entry again in the background, so a burst after a quiet second waits for
//! nothing. Key checks never do.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::thread::LocalKey;
use std::time::Duration;

/// How long callers wait for another caller's fetch of the same entry
/// before fetching it themselves. A coordinator read takes a few ms.
pub const FETCH_WAIT_MS: u64 = 500;

/// How long a waiting caller first waits before it looks at the map again;
/// each wait after is twice the last, up to [`WAIT_STEP_MAX`]: a fetch that
/// answers within a few ms is seen within about a ms, and fifty callers
/// waiting for a slow one wake a few times each, not every ms.
pub const WAIT_STEP: Duration = Duration::from_millis(1);

/// The longest wait between two looks.
pub const WAIT_STEP_MAX: Duration = Duration::from_millis(8);

/// What [`TtlCache::lookup`] tells a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// The value, and when its fetch began: fresh, or (for
    /// [`TtlCache::lookup_within`]) stale within the caller's window while
    /// another caller fetches it again.
    Hit(V, u64),
    /// Another caller is fetching it: look again shortly.
    Wait,
    /// Fetch it, and end the fetch with [`TtlCache::finish`],
    /// [`TtlCache::fail`] or [`TtlCache::abandon`]: the callers of the
    /// next [`FETCH_WAIT_MS`] may be waiting for it.
    Fetch(Ticket),
    /// The value, stale but within the caller's window, and when its fetch
    /// began: answer it, and fetch the entry again beside it, ending the
    /// fetch like a [`Lookup::Fetch`].
    Refresh(V, u64, Ticket),
}

/// One fetch of an entry: which, when it began, and the cache's generation
/// then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    id: u64,
    started: u64,
    generation: u64,
}

/// An entry's fetch as the callers after it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetching {
    /// Under way: wait for it.
    Running(Ticket),
    /// Failed at this time: fetch for yourself.
    Failed(u64),
}

/// A map whose entries expire `max_age_ms` after they were fetched (stored
/// with [`TtlCache::insert`], or since their fetch began).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, u64)>,
    max_entries: usize,
    max_age_ms: u64,
    /// The keys being fetched, or whose fetch recently failed (at most
    /// `max_entries`).
    fetching: HashMap<K, Fetching>,
    /// Moved by [`Self::remove_where`]: a fetch begun before stores nothing.
    generation: u64,
    /// The last ticket's id.
    tickets: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `max_entries`, each fresh for `max_age_ms`.
    pub fn new(max_entries: usize, max_age_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
            max_age_ms,
            fetching: HashMap::new(),
            generation: 0,
            tickets: 0,
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
    /// [`Lookup::Fetch`]: fresh; or wait while another caller has been
    /// fetching it for less than [`FETCH_WAIT_MS`]; or fetch (for itself
    /// while a failure is that recent, else as the one others wait for).
    pub fn lookup(&mut self, key: &K, now_ms: u64) -> Lookup<V> {
        self.lookup_within(key, now_ms, 0)
    }

    /// [`Self::lookup`] for a caller that takes a value up to `stale_ms`
    /// past its age: while it is that recent, it is answered, with a
    /// [`Lookup::Refresh`] to the one caller that fetches it again (none
    /// while a fetch is under way or failed less than [`FETCH_WAIT_MS`]
    /// ago).
    pub fn lookup_within(&mut self, key: &K, now_ms: u64, stale_ms: u64) -> Lookup<V> {
        if let Some((value, at)) = self.get_with_time(key, now_ms) {
            return Lookup::Hit(value, at);
        }
        let window = self.max_age_ms.saturating_add(stale_ms);
        let usable = match self.entries.get(key) {
            Some((value, at)) if stale_ms > 0 && now_ms.saturating_sub(*at) < window => {
                Some((value.clone(), *at))
            }
            _ => None,
        };
        let recent = |since: u64| now_ms.saturating_sub(since) < FETCH_WAIT_MS;
        match (self.fetching.get(key).copied(), usable) {
            (Some(Fetching::Running(t)), Some((value, at))) if recent(t.started) => {
                Lookup::Hit(value, at)
            }
            (Some(Fetching::Failed(f)), Some((value, at))) if recent(f) => Lookup::Hit(value, at),
            (Some(Fetching::Running(t)), None) if recent(t.started) => Lookup::Wait,
            (Some(Fetching::Failed(f)), None) if recent(f) => Lookup::Fetch(self.ticket(now_ms)),
            (_, usable) => {
                let ticket = self.follow(key, now_ms);
                match usable {
                    Some((value, at)) => Lookup::Refresh(value, at, ticket),
                    None => Lookup::Fetch(ticket),
                }
            }
        }
    }

    /// A fetch of `key` at `now_ms` that the callers after it follow,
    /// unless as many fetches are followed as there are entries and all
    /// still hold their callers (then nobody waits for it).
    fn follow(&mut self, key: &K, now_ms: u64) -> Ticket {
        if !self.fetching.contains_key(key) && self.fetching.len() >= self.max_entries {
            // Forget the fetches that no longer hold anyone.
            self.fetching.retain(|_, f| {
                let since = match f {
                    Fetching::Running(t) => t.started,
                    Fetching::Failed(at) => *at,
                };
                now_ms.saturating_sub(since) < FETCH_WAIT_MS
            });
            if self.fetching.len() >= self.max_entries {
                return self.ticket(now_ms);
            }
        }
        let ticket = self.ticket(now_ms);
        self.fetching.insert(key.clone(), Fetching::Running(ticket));
        ticket
    }

    /// A fetch at `now_ms` that nobody waits for (a caller that waited long
    /// enough fetches for itself).
    fn ticket(&mut self, now_ms: u64) -> Ticket {
        self.tickets += 1;
        Ticket {
            id: self.tickets,
            started: now_ms,
            generation: self.generation,
        }
    }

    /// Whether `key` is followed as fetched by `ticket`.
    fn followed(&self, key: &K, ticket: Ticket) -> bool {
        matches!(self.fetching.get(key), Some(Fetching::Running(t)) if t.id == ticket.id)
    }

    /// `ticket`'s fetch of `key` answered `value` at `now_ms`: stored as of
    /// when the fetch began, unless it is already stale, a later fetch's
    /// answer is stored, or keys were removed since it began
    /// ([`Self::remove_where`]). A recent failure of `key` is forgotten.
    pub fn finish(&mut self, key: K, value: V, ticket: Ticket, now_ms: u64) {
        if self.followed(&key, ticket)
            || matches!(self.fetching.get(&key), Some(Fetching::Failed(_)))
        {
            self.fetching.remove(&key);
        }
        if ticket.generation != self.generation || !self.fresh(ticket.started, now_ms) {
            return;
        }
        if self
            .entries
            .get(&key)
            .is_some_and(|(_, at)| *at > ticket.started)
        {
            return;
        }
        self.insert(key, value, ticket.started);
    }

    /// `ticket`'s fetch of `key` failed at `now_ms`: the callers of the
    /// next [`FETCH_WAIT_MS`] fetch for themselves.
    pub fn fail(&mut self, key: &K, ticket: Ticket, now_ms: u64) {
        if self.followed(key, ticket) {
            self.fetching.insert(key.clone(), Fetching::Failed(now_ms));
        }
    }

    /// `ticket`'s fetch of `key` will not answer (its request went away):
    /// the next caller fetches.
    pub fn abandon(&mut self, key: &K, ticket: Ticket) {
        if self.followed(key, ticket) {
            self.fetching.remove(key);
        }
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
    /// isolate refuses it at once rather than within `max_age_ms`), and
    /// keeps any fetch under way from storing its answer: it may have been
    /// answered before the change.
    pub fn remove_where(&mut self, mut matches: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| !matches(k));
        self.fetching.retain(|k, _| !matches(k));
        self.generation += 1;
    }

    fn fresh(&self, at: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(at) < self.max_age_ms
    }
}

/// `key`'s value in `cache` and when its fetch began: from the cache when
/// fresh, else from the fetch another request of the isolate has under way
/// (waited for up to [`FETCH_WAIT_MS`], looking again after [`WAIT_STEP`],
/// then at doubling intervals up to [`WAIT_STEP_MAX`]), else
/// from `fetch`, whose answer is cached for everyone (an error is not).
/// `now` reads the clock (Workers' advances with I/O, such as the timer
/// between two looks).
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
    cached_with(cache, key, now, worker::Delay::from, fetch).await
}

/// [`cached`], with `sleep` for its waits (a fake one in the tests).
async fn cached_with<K, V, E, Fut, Sleep>(
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: &K,
    now: impl Fn() -> u64,
    sleep: impl Fn(Duration) -> Sleep,
    fetch: impl FnOnce() -> Fut,
) -> Result<(V, u64), E>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
    Fut: Future<Output = Result<V, E>>,
    Sleep: Future<Output = ()>,
{
    match find(cache, key, &now, &sleep, 0).await {
        Lookup::Hit(value, fetched) => Ok((value, fetched)),
        // (No stale window: never a refresh.)
        Lookup::Fetch(ticket) | Lookup::Refresh(_, _, ticket) => {
            fetch_into(Pending::new(cache, key.clone(), ticket), &now, fetch())
                .await
                .map(|value| (value, ticket.started))
        }
        Lookup::Wait => unreachable!("find waits"),
    }
}

/// A fetch begun in the background: what [`cached_or_refresh`] hands its
/// caller to run beside its request (`state.wait_until`).
pub type Background = Pin<Box<dyn Future<Output = ()>>>;

/// [`cached`], for a caller that may act on a value up to `stale_ms` past
/// its age: such a value is answered at once, and the entry is fetched
/// again by the future given to `background` (one caller's, while the
/// others of the isolate keep answering the stale value). Older or missing
/// values are waited for as by [`cached`].
pub async fn cached_or_refresh<K, V, E, Fut>(
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: &K,
    stale_ms: u64,
    now: impl Fn() -> u64 + 'static,
    fetch: impl FnOnce() -> Fut,
    background: impl FnOnce(Background),
) -> Result<(V, u64), E>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
    E: 'static,
    Fut: Future<Output = Result<V, E>> + 'static,
{
    refresh_with(
        cache,
        key,
        stale_ms,
        now,
        worker::Delay::from,
        fetch,
        background,
    )
    .await
}

/// [`cached_or_refresh`], with `sleep` for its waits (a fake one in the
/// tests).
async fn refresh_with<K, V, E, Fut, Sleep>(
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: &K,
    stale_ms: u64,
    now: impl Fn() -> u64 + 'static,
    sleep: impl Fn(Duration) -> Sleep,
    fetch: impl FnOnce() -> Fut,
    background: impl FnOnce(Background),
) -> Result<(V, u64), E>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
    E: 'static,
    Fut: Future<Output = Result<V, E>> + 'static,
    Sleep: Future<Output = ()>,
{
    match find(cache, key, &now, &sleep, stale_ms).await {
        Lookup::Hit(value, fetched) => Ok((value, fetched)),
        Lookup::Fetch(ticket) => {
            fetch_into(Pending::new(cache, key.clone(), ticket), &now, fetch())
                .await
                .map(|value| (value, ticket.started))
        }
        Lookup::Refresh(value, fetched, ticket) => {
            // Held from here: a refresh dropped before it ran hands the
            // fetch on too.
            let (pending, fetching) = (Pending::new(cache, key.clone(), ticket), fetch());
            background(Box::pin(async move {
                // A failure is marked in the map; the fetch's own future
                // reports it.
                let _ = fetch_into(pending, now, fetching).await;
            }));
            Ok((value, fetched))
        }
        Lookup::Wait => unreachable!("find waits"),
    }
}

/// Looks `key` up until it is answered or is the caller's to fetch (never
/// [`Lookup::Wait`]): waits while another caller fetches it, at most
/// [`FETCH_WAIT_MS`], looking again after [`WAIT_STEP`], then at doubling
/// intervals up to [`WAIT_STEP_MAX`].
async fn find<K, V, Sleep>(
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: &K,
    now: &impl Fn() -> u64,
    sleep: &impl Fn(Duration) -> Sleep,
    stale_ms: u64,
) -> Lookup<V>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
    Sleep: Future<Output = ()>,
{
    let mut waiting_since = None;
    let mut step = WAIT_STEP;
    loop {
        let at = now();
        match cache.with(|c| c.borrow_mut().lookup_within(key, at, stale_ms)) {
            Lookup::Wait => {
                let since = *waiting_since.get_or_insert(at);
                if at.saturating_sub(since) >= FETCH_WAIT_MS {
                    return Lookup::Fetch(cache.with(|c| c.borrow_mut().ticket(at)));
                }
                sleep(step).await;
                step = (step * 2).min(WAIT_STEP_MAX);
            }
            found => return found,
        }
    }
}

/// A fetch handed out by the map, until it ends: dropped before
/// [`fetch_into`] ended it (its request went away), it hands the fetch on
/// ([`TtlCache::abandon`]).
struct Pending<K: Eq + Hash + Clone + 'static, V: Clone + 'static> {
    cache: &'static LocalKey<RefCell<TtlCache<K, V>>>,
    key: K,
    ticket: Ticket,
    ended: bool,
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> Pending<K, V> {
    fn new(cache: &'static LocalKey<RefCell<TtlCache<K, V>>>, key: K, ticket: Ticket) -> Self {
        Self {
            cache,
            key,
            ticket,
            ended: false,
        }
    }
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> Drop for Pending<K, V> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.cache.try_with(|c| {
                c.try_borrow_mut()
                    .map(|mut c| c.abandon(&self.key, self.ticket))
            });
        }
    }
}

/// Runs `pending`'s fetch and ends it in its map: its answer stored
/// ([`TtlCache::finish`]) or its failure marked ([`TtlCache::fail`]).
async fn fetch_into<K, V, E>(
    mut pending: Pending<K, V>,
    now: impl Fn() -> u64,
    fetch: impl Future<Output = Result<V, E>>,
) -> Result<V, E>
where
    K: Eq + Hash + Clone + 'static,
    V: Clone + 'static,
{
    let answer = fetch.await;
    pending.ended = true;
    let (cache, ticket, at) = (pending.cache, pending.ticket, now());
    match &answer {
        Ok(value) => cache.with(|c| {
            c.borrow_mut()
                .finish(pending.key.clone(), value.clone(), ticket, at)
        }),
        Err(_) => cache.with(|c| c.borrow_mut().fail(&pending.key, ticket, at)),
    }
    answer
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

    fn fetch_ticket<V: std::fmt::Debug>(l: Lookup<V>) -> Ticket {
        match l {
            Lookup::Fetch(t) => t,
            other => panic!("expected a fetch, got {other:?}"),
        }
    }

    #[test]
    fn one_caller_fetches_and_the_others_wait_for_it() {
        let mut c = TtlCache::new(10, 1_000);
        let t = fetch_ticket(c.lookup(&"a", 0));
        assert_eq!(c.lookup(&"a", 1), Lookup::Wait, "the first caller fetches");
        fetch_ticket(c.lookup(&"b", 1));
        c.finish("a", 1, t, 5);
        assert_eq!(
            c.lookup(&"a", 6),
            Lookup::Hit(1, 0),
            "as of the fetch's start"
        );
        // Stale: again one fetch, the others wait for it.
        let t = fetch_ticket(c.lookup(&"a", 1_000));
        assert_eq!(c.lookup(&"a", 1_006), Lookup::Wait);
        assert_eq!(c.get(&"a", 1_006), None, "a stale value is never answered");
        c.finish("a", 2, t, 1_010);
        assert_eq!(c.lookup(&"a", 1_011), Lookup::Hit(2, 1_000));
    }

    #[test]
    fn a_failed_fetch_lets_the_next_callers_fetch_together() {
        let mut c: TtlCache<&str, u32> = TtlCache::new(10, 1_000);
        let t = fetch_ticket(c.lookup(&"a", 0));
        c.fail(&"a", t, 10);
        let (t1, t2) = (
            fetch_ticket(c.lookup(&"a", 11)),
            fetch_ticket(c.lookup(&"a", 12)),
        );
        assert_ne!(t1, t2);
        // Once the failure is older than the wait, one fetch is followed
        // again.
        let t3 = fetch_ticket(c.lookup(&"a", 10 + FETCH_WAIT_MS));
        assert_eq!(c.lookup(&"a", 11 + FETCH_WAIT_MS), Lookup::Wait);
        // A fetch that is not the one followed changes nothing of it.
        c.abandon(&"a", t1);
        c.fail(&"a", t2, 12 + FETCH_WAIT_MS);
        assert_eq!(c.lookup(&"a", 13 + FETCH_WAIT_MS), Lookup::Wait);
        c.abandon(&"a", t3);
        fetch_ticket(c.lookup(&"a", 14 + FETCH_WAIT_MS));
    }

    #[test]
    fn a_fetch_that_lingers_holds_nobody_past_the_wait() {
        let mut c: TtlCache<&str, u32> = TtlCache::new(10, 1_000);
        let slow = fetch_ticket(c.lookup(&"a", 0));
        assert_eq!(c.lookup(&"a", FETCH_WAIT_MS - 1), Lookup::Wait);
        let fast = fetch_ticket(c.lookup(&"a", FETCH_WAIT_MS));
        c.finish("a", 2, fast, FETCH_WAIT_MS);
        // The slow fetch began first: its answer does not replace the
        // later one.
        c.finish("a", 1, slow, FETCH_WAIT_MS);
        assert_eq!(
            c.lookup(&"a", FETCH_WAIT_MS + 1),
            Lookup::Hit(2, FETCH_WAIT_MS)
        );
    }

    #[test]
    fn a_fetch_begun_before_a_removal_stores_nothing() {
        let mut c: TtlCache<&str, u32> = TtlCache::new(10, 1_000);
        let a = fetch_ticket(c.lookup(&"a", 0));
        c.remove_where(|k| *k == "a");
        // Its callers no longer wait for it.
        let again = fetch_ticket(c.lookup(&"a", 1));
        c.finish("a", 1, a, 2);
        assert_eq!(c.get(&"a", 2), None, "answered before the removal");
        assert_eq!(
            c.lookup(&"a", 2),
            Lookup::Wait,
            "the later fetch is still followed"
        );
        c.finish("a", 2, again, 3);
        assert_eq!(c.get(&"a", 3), Some(2));
    }

    #[test]
    fn fetches_followed_are_bounded_like_the_entries() {
        let mut c: TtlCache<u32, ()> = TtlCache::new(2, 1_000);
        fetch_ticket(c.lookup(&1, 0));
        fetch_ticket(c.lookup(&2, 0));
        // Full of fetches that still hold their callers: fetch, unfollowed.
        fetch_ticket(c.lookup(&3, 10));
        fetch_ticket(c.lookup(&3, 11));
        assert_eq!(c.fetching.len(), 2);
        // Once they no longer hold anyone, they make room.
        fetch_ticket(c.lookup(&3, FETCH_WAIT_MS));
        assert_eq!(c.lookup(&3, FETCH_WAIT_MS + 1), Lookup::Wait);
        assert_eq!(c.fetching.len(), 1);
    }

    fn refresh_ticket<V: std::fmt::Debug>(l: Lookup<V>) -> (V, u64, Ticket) {
        match l {
            Lookup::Refresh(value, at, t) => (value, at, t),
            other => panic!("expected a refresh, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_value_within_the_window_is_answered_while_one_caller_refreshes_it() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert("a", 1, 0);
        let (value, at, t) = refresh_ticket(c.lookup_within(&"a", 1_500, 2_000));
        assert_eq!((value, at), (1, 0));
        assert_eq!(
            c.lookup_within(&"a", 1_501, 2_000),
            Lookup::Hit(1, 0),
            "the others answer it too, and fetch nothing"
        );
        assert_eq!(
            c.lookup(&"a", 1_502),
            Lookup::Wait,
            "a caller without a window waits for the fetch"
        );
        c.finish("a", 2, t, 1_510);
        assert_eq!(c.lookup_within(&"a", 1_511, 2_000), Lookup::Hit(2, 1_500));
        // Past the window: waited for like a missing value.
        fetch_ticket(c.lookup_within(&"a", 1_500 + 3_000, 2_000));
        assert_eq!(c.lookup_within(&"a", 4_501, 2_000), Lookup::Wait);
        // Without a window a stale value is never answered.
        let mut strict = TtlCache::new(10, 1_000);
        strict.insert("a", 1, 0);
        fetch_ticket(strict.lookup(&"a", 1_000));
    }

    #[test]
    fn a_failed_refresh_keeps_the_stale_value_until_the_next_try() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert("a", 1, 0);
        let (_, _, t) = refresh_ticket(c.lookup_within(&"a", 1_500, 5_000));
        c.fail(&"a", t, 1_520);
        // Not every caller refreshes after a failure: they answer the value.
        assert_eq!(c.lookup_within(&"a", 1_530, 5_000), Lookup::Hit(1, 0));
        assert_eq!(
            c.lookup_within(&"a", 1_519 + FETCH_WAIT_MS, 5_000),
            Lookup::Hit(1, 0)
        );
        let (_, _, again) = refresh_ticket(c.lookup_within(&"a", 1_520 + FETCH_WAIT_MS, 5_000));
        // A refresh that went away hands the refresh on.
        c.abandon(&"a", again);
        refresh_ticket(c.lookup_within(&"a", 1_521 + FETCH_WAIT_MS, 5_000));
    }

    #[test]
    fn a_removed_value_is_never_answered_stale() {
        let mut c = TtlCache::new(10, 1_000);
        c.insert("a", 1, 0);
        c.insert("b", 1, 0);
        let (_, _, t) = refresh_ticket(c.lookup_within(&"b", 1_500, 5_000));
        c.remove_where(|k| *k == "a" || *k == "b");
        fetch_ticket(c.lookup_within(&"a", 1_500, 5_000));
        // The refresh begun before the removal stores nothing.
        c.finish("b", 2, t, 1_510);
        fetch_ticket(c.lookup_within(&"b", 1_511, 5_000));
    }

    mod cached {
        use super::super::*;
        use super::fetch_ticket;
        use std::cell::Cell;
        use std::rc::Rc;

        thread_local! {
            static CACHE: RefCell<TtlCache<&'static str, u32>> = RefCell::new(TtlCache::new(10, 1_000));
        }

        fn reset() {
            CACHE.with(|c| *c.borrow_mut() = TtlCache::new(10, 1_000));
        }

        #[test]
        fn a_caller_waits_for_the_fetch_under_way_and_fetches_nothing() {
            reset();
            let clock = Rc::new(Cell::new(100));
            let other = CACHE.with(|c| fetch_ticket(c.borrow_mut().lookup(&"a", 100)));
            let sleeps = Cell::new(0);
            let answer = futures::executor::block_on(cached_with(
                &CACHE,
                &"a",
                || clock.get(),
                |d| {
                    clock.set(clock.get() + d.as_millis() as u64);
                    sleeps.set(sleeps.get() + 1);
                    if sleeps.get() == 3 {
                        CACHE.with(|c| c.borrow_mut().finish("a", 7, other, clock.get()));
                    }
                    std::future::ready(())
                },
                || async { panic!("the caller fetched too") as Result<u32, ()> },
            ));
            assert_eq!(answer, Ok((7, 100)));
            assert_eq!(sleeps.get(), 3);
        }

        #[test]
        fn a_caller_fetches_for_itself_after_waiting_long_enough() {
            reset();
            let clock = Rc::new(Cell::new(0));
            CACHE.with(|c| fetch_ticket(c.borrow_mut().lookup(&"a", 0)));
            clock.set(10);
            let fetches = Cell::new(0);
            let taken_over = Cell::new(false);
            let answer = futures::executor::block_on(cached_with(
                &CACHE,
                &"a",
                || clock.get(),
                |d| {
                    clock.set(clock.get() + d.as_millis() as u64);
                    // The first fetch lingers past the wait, and another
                    // caller takes it over: this one keeps waiting, but
                    // only up to its own deadline.
                    if clock.get() >= FETCH_WAIT_MS && !taken_over.get() {
                        taken_over.set(true);
                        CACHE.with(|c| fetch_ticket(c.borrow_mut().lookup(&"a", clock.get())));
                    }
                    std::future::ready(())
                },
                || async {
                    fetches.set(fetches.get() + 1);
                    Ok::<_, ()>(9)
                },
            ));
            assert_eq!(fetches.get(), 1);
            let (value, started) = answer.unwrap();
            assert_eq!(value, 9);
            assert!(
                (10 + FETCH_WAIT_MS..10 + FETCH_WAIT_MS + WAIT_STEP_MAX.as_millis() as u64)
                    .contains(&started),
                "{started}"
            );
        }

        #[test]
        fn an_error_is_not_cached_and_the_next_callers_fetch_together() {
            reset();
            let answer = futures::executor::block_on(cached_with(
                &CACHE,
                &"a",
                || 0,
                |_| std::future::ready(()),
                || async { Err::<u32, _>("down") },
            ));
            assert_eq!(answer, Err("down"));
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                assert_eq!(c.get(&"a", 1), None);
                fetch_ticket(c.lookup(&"a", 1));
                fetch_ticket(c.lookup(&"a", 1));
            });
        }

        #[test]
        fn a_stale_value_is_answered_at_once_and_refreshed_in_the_background() {
            reset();
            CACHE.with(|c| c.borrow_mut().insert("a", 1, 0));
            let spawned: RefCell<Option<Background>> = RefCell::new(None);
            let answer = futures::executor::block_on(refresh_with(
                &CACHE,
                &"a",
                5_000,
                || 1_500,
                |_| async { panic!("the caller waited") },
                || async { Ok::<u32, ()>(2) },
                |f| *spawned.borrow_mut() = Some(f),
            ));
            assert_eq!(answer, Ok((1, 0)), "the stale value, at once");
            // Another caller before the refresh ends: the same, and no
            // second refresh.
            let again = futures::executor::block_on(refresh_with(
                &CACHE,
                &"a",
                5_000,
                || 1_501,
                |_| async { panic!("the caller waited") },
                || async { panic!("a second fetch") as Result<u32, ()> },
                |_| panic!("a second refresh"),
            ));
            assert_eq!(again, Ok((1, 0)));
            let refresh = spawned.take().expect("a refresh was handed over");
            futures::executor::block_on(refresh);
            CACHE.with(|c| assert_eq!(c.borrow().get_with_time(&"a", 1_502), Some((2, 1_500))));
        }

        #[test]
        fn a_failed_or_dropped_refresh_keeps_the_stale_value_and_is_tried_again() {
            reset();
            CACHE.with(|c| c.borrow_mut().insert("a", 1, 0));
            let refresh = |at: u64, fetched: Result<u32, ()>| {
                let spawned: RefCell<Option<Background>> = RefCell::new(None);
                let answer = futures::executor::block_on(refresh_with(
                    &CACHE,
                    &"a",
                    5_000,
                    move || at,
                    |_| async { panic!("the caller waited") },
                    move || async move { fetched },
                    |f| *spawned.borrow_mut() = Some(f),
                ));
                (answer, spawned.take())
            };
            let (answer, failing) = refresh(1_500, Err(()));
            assert_eq!(answer, Ok((1, 0)));
            futures::executor::block_on(failing.expect("a refresh"));
            // Failed: the next callers answer the stale value and start no
            // refresh until the failure is older than the wait.
            let (answer, none) = refresh(1_501, Ok(9));
            assert_eq!((answer, none.is_none()), (Ok((1, 0)), true));
            let (_, dropped) = refresh(1_500 + FETCH_WAIT_MS, Ok(9));
            // A refresh dropped before it ran hands the fetch on.
            drop(dropped.expect("tried again"));
            let (answer, again) = refresh(1_501 + FETCH_WAIT_MS, Ok(9));
            assert_eq!(answer, Ok((1, 0)));
            futures::executor::block_on(again.expect("handed on"));
            CACHE.with(|c| assert_eq!(c.borrow().get(&"a", 1_502 + FETCH_WAIT_MS), Some(9)));
        }

        #[test]
        fn past_the_window_a_caller_waits_for_the_value() {
            reset();
            CACHE.with(|c| c.borrow_mut().insert("a", 1, 0));
            let answer = futures::executor::block_on(refresh_with(
                &CACHE,
                &"a",
                5_000,
                || 6_000,
                |_| async { panic!("nobody else fetches") },
                || async { Ok::<u32, ()>(2) },
                |_| panic!("not in the background"),
            ));
            assert_eq!(answer, Ok((2, 6_000)));
        }

        #[test]
        fn a_request_that_goes_away_mid_fetch_hands_the_fetch_on() {
            reset();
            let fetch = cached_with(
                &CACHE,
                &"a",
                || 0,
                |_| std::future::ready(()),
                futures::future::pending::<Result<u32, ()>>,
            );
            let mut fetch = Box::pin(fetch);
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(fetch.as_mut().poll(&mut cx).is_pending());
            CACHE.with(|c| assert_eq!(c.borrow_mut().lookup(&"a", 1), Lookup::Wait));
            drop(fetch);
            CACHE.with(|c| fetch_ticket(c.borrow_mut().lookup(&"a", 2)));
        }
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
