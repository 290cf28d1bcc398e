//! A search replica's bookkeeping, pure: which of the writer's changes it
//! holds, which to apply, and how a whole copy of the index is taken while
//! changes keep arriving.
//!
//! The writer numbers its changes 1, 2, 3, … and sends each to every
//! replica once it has written it to its own index. A replica holds the
//! number of the last change it applied (`seq`), or none while it has no
//! usable copy. A change numbered `seq + 1` is applied; one at or below
//! `seq` was applied already (a retry) and is ignored; one further on means
//! a change was lost on the way, so the replica drops its copy and takes a
//! new one.
//!
//! **A copy.** The replica empties its tables and reads the writer's index
//! page by page ([`ReplicaCore::page`]); every change that arrives
//! meanwhile is kept. The first page names the writer's last change when
//! it was read, `base`: every change up to `base` was written to the
//! writer's index before that page was read, so the pages hold it (the
//! writer numbers a change only after it has written it). A change after
//! `base` may or may not be in the pages read after it; applying it again
//! on top of them is harmless, since each change writes or removes whole
//! chunks by id, and the writer never runs two changes of one document at
//! once. So the copy ends by applying the kept changes `base + 1, base + 2,
//! …` in order ([`ReplicaCore::finish_copy`]); if one of them is missing,
//! the copy is not usable and is taken again.

use protocol::replica::{ReplicaChange, Replicate};
use std::collections::BTreeMap;

/// Most chunks (or ids) in the changes kept while a copy is taken (about
/// 50 MB at most); past it the copy is taken again (the replica cannot know
/// the writer's state without what it dropped).
pub const MAX_KEPT_RECORDS: usize = 5000;

/// What the shell does with one of the writer's changes.
#[derive(Debug, Clone, PartialEq)]
pub enum OnChange {
    /// Apply it and store `seq` with it, in one synchronous step.
    Apply(ReplicaChange),
    /// Nothing: it is held already.
    Ignore,
    /// Kept for the end of the copy under way.
    Kept,
    /// A change was lost: store "no copy" and take a new copy (before the
    /// next search, or now).
    Lost,
    /// No copy is held: nothing to apply it to (the next copy includes it).
    NoCopy,
}

/// How a copy ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyEnd {
    /// Apply these changes in order, then store `seq`: the copy is usable.
    Usable {
        /// The kept changes after the copy's base, in order.
        changes: Vec<ReplicaChange>,
        /// The last change the replica then holds.
        seq: u64,
    },
    /// A kept change was missing or dropped: take the copy again.
    Incomplete,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Copying {
    /// The writer's last change when the first page was read.
    base: Option<u64>,
    /// Changes that arrived meanwhile, by number.
    kept: BTreeMap<u64, ReplicaChange>,
    /// Chunks (or ids) in `kept`.
    records: usize,
    /// More than [`MAX_KEPT_RECORDS`] arrived.
    overflowed: bool,
}

/// A replica's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaCore {
    seq: Option<u64>,
    copying: Option<Copying>,
}

impl ReplicaCore {
    /// The replica as stored: `seq` is the last change its copy holds, or
    /// none (no usable copy).
    pub fn restore(seq: Option<u64>) -> Self {
        Self { seq, copying: None }
    }

    /// The last change the replica's copy holds, if it has a usable one.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Whether searches can be answered now.
    pub fn usable(&self) -> bool {
        self.seq.is_some() && self.copying.is_none()
    }

    /// Whether a copy is being taken.
    pub fn copying(&self) -> bool {
        self.copying.is_some()
    }

    /// One of the writer's changes has arrived.
    pub fn on_change(&mut self, change: Replicate) -> OnChange {
        if let Some(copying) = self.copying.as_mut() {
            if copying.base.is_some_and(|base| change.seq <= base) {
                return OnChange::Ignore;
            }
            if copying.overflowed || copying.kept.contains_key(&change.seq) {
                return OnChange::Kept;
            }
            copying.records += change.change.records();
            if copying.records > MAX_KEPT_RECORDS {
                copying.overflowed = true;
                copying.kept.clear();
                return OnChange::Kept;
            }
            copying.kept.insert(change.seq, change.change);
            return OnChange::Kept;
        }
        match self.seq {
            None => OnChange::NoCopy,
            Some(seq) if change.seq <= seq => OnChange::Ignore,
            Some(seq) if change.seq == seq + 1 => {
                self.seq = Some(change.seq);
                OnChange::Apply(change.change)
            }
            Some(_) => {
                self.seq = None;
                OnChange::Lost
            }
        }
    }

    /// The replica left the deployment's set: no more changes will come, so
    /// its copy cannot be trusted if it is used again (a copy under way is
    /// abandoned).
    pub fn forget(&mut self) {
        self.copying = None;
        self.seq = None;
    }

    /// Starts a copy: the shell empties the tables and stores "no copy".
    /// False if one is under way already (wait for it instead).
    pub fn begin_copy(&mut self) -> bool {
        if self.copying.is_some() {
            return false;
        }
        self.seq = None;
        self.copying = Some(Copying::default());
        true
    }

    /// A page of the copy arrived, read when the writer's last change was
    /// `writer_seq`.
    pub fn page(&mut self, writer_seq: u64) {
        if let Some(copying) = self.copying.as_mut() {
            if copying.base.is_none() {
                copying.base = Some(writer_seq);
                copying.kept.retain(|&seq, _| seq > writer_seq);
                copying.records = copying.kept.values().map(ReplicaChange::records).sum();
            }
        }
    }

    /// The last page has been applied: what to apply on top of it.
    pub fn finish_copy(&mut self) -> CopyEnd {
        let Some(copying) = self.copying.take() else {
            return CopyEnd::Incomplete;
        };
        let Some(base) = copying.base else {
            return CopyEnd::Incomplete;
        };
        if copying.overflowed {
            return CopyEnd::Incomplete;
        }
        let mut seq = base;
        let mut changes = Vec::with_capacity(copying.kept.len());
        for (number, change) in copying.kept {
            if number != seq + 1 {
                return CopyEnd::Incomplete;
            }
            seq = number;
            changes.push(change);
        }
        self.seq = Some(seq);
        CopyEnd::Usable { changes, seq }
    }

    /// The copy failed part way (the writer did not answer, a write failed):
    /// no usable copy until the next one.
    pub fn abandon_copy(&mut self) {
        self.copying = None;
        self.seq = None;
    }
}

/// The number `k` of a replica named `${tenantId}:search-<k>`.
pub fn number_in_name(name: &str) -> Option<u32> {
    let (_, k) = name.rsplit_once(":search-")?;
    k.parse().ok().filter(|n: &u32| n.to_string() == k)
}

/// Which of `replicas` replicas answers a search for `query`: the same one
/// for the same question however it is spaced or cased (so that replica's
/// recent answers serve it again), the questions spread evenly over them.
/// FNV-1a over the normalised words, then mixed; `None` when there are no
/// replicas.
pub fn replica_for(query: &str, replicas: u32) -> Option<u32> {
    if replicas == 0 {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, word) in query.split_whitespace().enumerate() {
        if i > 0 {
            hash = (hash ^ u64::from(b' ')).wrapping_mul(0x0100_0000_01b3);
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    // FNV's low bits depend on few input bits (the lowest is the parity of
    // the bytes): mix every bit into all of them before taking the modulus.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    Some((hash % u64::from(replicas)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, id: &str) -> Replicate {
        Replicate {
            seq,
            change: ReplicaChange::Delete(vec![id.to_owned()]),
        }
    }

    fn del(id: &str) -> ReplicaChange {
        ReplicaChange::Delete(vec![id.to_owned()])
    }

    #[test]
    fn changes_apply_in_order_retries_are_ignored_and_a_gap_drops_the_copy() {
        let mut core = ReplicaCore::restore(Some(4));
        assert!(core.usable());
        assert_eq!(core.on_change(change(5, "a")), OnChange::Apply(del("a")));
        assert_eq!(core.seq(), Some(5));
        assert_eq!(core.on_change(change(5, "a")), OnChange::Ignore);
        assert_eq!(core.on_change(change(3, "old")), OnChange::Ignore);
        assert_eq!(core.seq(), Some(5));
        // 6 never arrived.
        assert_eq!(core.on_change(change(7, "c")), OnChange::Lost);
        assert_eq!(core.seq(), None);
        assert!(!core.usable());
        // Without a copy nothing applies, not even the next number.
        assert_eq!(core.on_change(change(8, "d")), OnChange::NoCopy);
        assert_eq!(core.seq(), None);
    }

    #[test]
    fn a_replica_left_out_forgets_its_copy_and_any_copy_under_way() {
        let mut core = ReplicaCore::restore(Some(9));
        core.forget();
        assert!(!core.usable());
        assert_eq!(core.on_change(change(10, "a")), OnChange::NoCopy);
        assert!(core.begin_copy());
        core.page(3);
        core.forget();
        assert!(!core.copying());
        assert_eq!(core.finish_copy(), CopyEnd::Incomplete);
        assert_eq!(core.seq(), None);
    }

    #[test]
    fn a_replica_knows_its_number_from_its_name() {
        assert_eq!(number_in_name("acme:search-0"), Some(0));
        assert_eq!(number_in_name("acme:search-15"), Some(15));
        for bad in [
            "acme:search-",
            "acme:search-01",
            "acme:search-x",
            "acme:ingest",
            "search-1",
        ] {
            assert_eq!(number_in_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_fresh_replica_has_no_copy() {
        let mut core = ReplicaCore::restore(None);
        assert!(!core.usable());
        assert_eq!(core.on_change(change(1, "a")), OnChange::NoCopy);
    }

    #[test]
    fn a_copy_keeps_what_arrives_and_applies_what_follows_its_base() {
        let mut core = ReplicaCore::restore(Some(2));
        assert!(core.begin_copy());
        assert!(!core.begin_copy(), "one copy at a time");
        assert!(!core.usable() && core.copying());
        // Arrives before the first page: 10 may be in the pages or not.
        assert_eq!(core.on_change(change(10, "x")), OnChange::Kept);
        assert_eq!(core.on_change(change(9, "w")), OnChange::Kept);
        core.page(9);
        // Later pages do not move the base.
        core.page(12);
        assert_eq!(core.on_change(change(8, "v")), OnChange::Ignore);
        assert_eq!(core.on_change(change(11, "y")), OnChange::Kept);
        assert_eq!(core.on_change(change(11, "y")), OnChange::Kept);
        assert_eq!(
            core.finish_copy(),
            CopyEnd::Usable {
                changes: vec![del("x"), del("y")],
                seq: 11
            }
        );
        assert!(core.usable());
        assert_eq!(core.seq(), Some(11));
        assert_eq!(core.on_change(change(12, "z")), OnChange::Apply(del("z")));
    }

    #[test]
    fn a_copy_with_nothing_after_its_base_holds_the_base() {
        let mut core = ReplicaCore::restore(None);
        assert!(core.begin_copy());
        core.page(0);
        assert_eq!(
            core.finish_copy(),
            CopyEnd::Usable {
                changes: vec![],
                seq: 0
            }
        );
        assert_eq!(core.on_change(change(1, "a")), OnChange::Apply(del("a")));
    }

    #[test]
    fn a_missing_kept_change_makes_the_copy_incomplete() {
        let mut core = ReplicaCore::restore(None);
        assert!(core.begin_copy());
        core.page(4);
        core.on_change(change(5, "a"));
        core.on_change(change(7, "c"));
        assert_eq!(core.finish_copy(), CopyEnd::Incomplete);
        assert!(!core.usable() && !core.copying());
        assert_eq!(core.seq(), None);
    }

    #[test]
    fn a_copy_without_a_page_or_past_its_bound_is_incomplete() {
        let mut core = ReplicaCore::restore(None);
        assert!(core.begin_copy());
        assert_eq!(core.finish_copy(), CopyEnd::Incomplete);

        assert!(core.begin_copy());
        core.page(0);
        for seq in 1..=(MAX_KEPT_RECORDS as u64 + 1) {
            assert_eq!(core.on_change(change(seq, "a")), OnChange::Kept);
        }
        assert_eq!(core.finish_copy(), CopyEnd::Incomplete);

        assert!(core.begin_copy());
        core.abandon_copy();
        assert!(!core.copying() && core.seq().is_none());
    }

    #[test]
    fn questions_go_to_one_replica_however_they_are_written_and_spread_over_all() {
        assert_eq!(replica_for("anything", 0), None);
        assert_eq!(replica_for("anything", 1), Some(0));
        let a = replica_for("How do I  borrow mutably?", 4);
        assert_eq!(a, replica_for("  how do i borrow MUTABLY? ", 4));
        assert_ne!(
            replica_for("how do i borrow mutably?", 1000),
            replica_for("how do i borrowmutably?", 1000),
            "word boundaries count"
        );
        for replicas in [2u32, 3, 4, 8] {
            let mut counts = vec![0u32; replicas as usize];
            // Questions that differ by one repeated word as well as by
            // numbers: every bit of the input must reach the choice.
            for i in 0..400 {
                let q = format!("question {}about lifetimes", "please ".repeat(i));
                counts[replica_for(&q, replicas).unwrap() as usize] += 1;
            }
            for i in 0..3600 {
                let q = format!("question number {i} about lifetimes");
                counts[replica_for(&q, replicas).unwrap() as usize] += 1;
            }
            let even = 4000 / replicas;
            for c in &counts {
                assert!(
                    (even * 7 / 10..even * 13 / 10).contains(c),
                    "{replicas}: {counts:?}"
                );
            }
        }
    }
}
