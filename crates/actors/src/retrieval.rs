//! Retrieval without I/O: the in-memory vectors of the embedded index (exact
//! cosine, bounded), metadata filters, the full-text query builder and
//! reciprocal rank fusion.

use crate::embedding;
use crate::ports::VectorHit;
use protocol::ingest::{MetaValue, Metadata};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Dot product; the cosine similarity of two unit vectors. The hot loop of
/// exact search: with wasm SIMD (enabled for the Worker in
/// `.cargo/config.toml`) four lanes at a time.
///
/// Written as a plain index loop over raw loads: the release build optimises
/// for size (`opt-level = "z"`), which leaves iterator adapters (`zip`,
/// `chunks_exact`) as a function call per step and the sums in memory; this
/// form keeps four independent sums in registers.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    use core::arch::wasm32::{
        f32x4_add, f32x4_extract_lane, f32x4_mul, f32x4_splat, v128, v128_load,
    };
    let n = a.len().min(b.len());
    let whole = n - n % 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1, mut s2, mut s3) = (
        f32x4_splat(0.0),
        f32x4_splat(0.0),
        f32x4_splat(0.0),
        f32x4_splat(0.0),
    );
    let mut i = 0;
    while i < whole {
        // SAFETY: `i + 16 <= whole <= n`, and both slices hold at least `n`
        // `f32`s, so every 16-byte load (at `i`, `i + 4`, `i + 8`, `i + 12`)
        // is inside both; wasm's `v128.load` has no alignment requirement.
        unsafe {
            let (xa, xb) = (pa.add(i).cast::<v128>(), pb.add(i).cast::<v128>());
            s0 = f32x4_add(s0, f32x4_mul(v128_load(xa), v128_load(xb)));
            s1 = f32x4_add(s1, f32x4_mul(v128_load(xa.add(1)), v128_load(xb.add(1))));
            s2 = f32x4_add(s2, f32x4_mul(v128_load(xa.add(2)), v128_load(xb.add(2))));
            s3 = f32x4_add(s3, f32x4_mul(v128_load(xa.add(3)), v128_load(xb.add(3))));
        }
        i += 16;
    }
    let v = f32x4_add(f32x4_add(s0, s1), f32x4_add(s2, s3));
    let mut sum = f32x4_extract_lane::<0>(v)
        + f32x4_extract_lane::<1>(v)
        + f32x4_extract_lane::<2>(v)
        + f32x4_extract_lane::<3>(v);
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// Dot product; the cosine similarity of two unit vectors. Eight independent
/// sums, so the compiler can keep them in vector registers.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for (acc, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
            *acc += x * y;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += x * y;
    }
    sum
}

/// Cosine similarity of any two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let na = dot(a, a).sqrt();
    let nb = dot(b, b).sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na * nb)
    }
}

/// Whether `metadata` has every key of `filter` with an equal value.
pub fn matches_filter(metadata: &Metadata, filter: &Metadata) -> bool {
    filter
        .iter()
        .all(|(k, want)| match (metadata.get(k), want) {
            (Some(MetaValue::Int(a)), MetaValue::Float(b))
            | (Some(MetaValue::Float(b)), MetaValue::Int(a)) => (*a as f64) == *b,
            (Some(have), want) => have == want,
            (None, _) => false,
        })
}

/// Vectors per block of [`MemIndex`]: 256 × 768 `f32`s are 768 KiB.
pub const BLOCK_VECTORS: usize = 256;

/// Why [`MemIndex::upsert`] refused a vector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemIndexError {
    /// The vector has the wrong number of dimensions.
    #[error("vector of {got} dimensions, index has {want}")]
    Dimensions {
        /// The vector's.
        got: usize,
        /// The index's.
        want: usize,
    },
    /// The index holds its configured maximum of vectors.
    #[error("the index holds its maximum of {cap} chunks")]
    Full {
        /// The maximum.
        cap: usize,
    },
    /// The allocator could not grow the index.
    #[error("out of memory growing the index")]
    OutOfMemory,
}

/// The vectors of an index, in memory, for exact search; nothing else (ids,
/// metadata and text stay in SQLite, read for the top k only). Each vector is
/// known by an integer key (the SQLite row id).
///
/// Vectors live in fixed blocks of [`BLOCK_VECTORS`], allocated with
/// `try_reserve_exact`: growing never copies the whole index (in wasm, memory
/// once grown is never returned, so a doubling `Vec` would cost up to three
/// times the data at its peak), an allocation failure is an error rather than
/// an abort, and at most `cap` vectors are ever held.
#[derive(Debug, Default)]
pub struct MemIndex {
    dims: usize,
    cap: usize,
    keys: Vec<i64>,
    blocks: Vec<Vec<f32>>,
    positions: HashMap<i64, usize>,
}

impl MemIndex {
    /// An empty index of `dims`-dimensional vectors holding at most `cap`.
    pub fn new(dims: usize, cap: usize) -> Self {
        Self {
            dims,
            cap,
            ..Self::default()
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The most vectors it may hold.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: i64) -> bool {
        self.positions.contains_key(&key)
    }

    /// Bytes of vector data held (what the cap bounds).
    pub fn vector_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.capacity()).sum::<usize>() * std::mem::size_of::<f32>()
    }

    fn slot_mut(&mut self, pos: usize) -> Option<&mut [f32]> {
        let (block, offset) = (pos / BLOCK_VECTORS, (pos % BLOCK_VECTORS) * self.dims);
        self.blocks
            .get_mut(block)?
            .get_mut(offset..offset + self.dims)
    }

    fn slot(&self, pos: usize) -> Option<&[f32]> {
        let (block, offset) = (pos / BLOCK_VECTORS, (pos % BLOCK_VECTORS) * self.dims);
        self.blocks.get(block)?.get(offset..offset + self.dims)
    }

    /// Inserts or replaces `key`. The vector is normalised; a vector of the
    /// wrong length, or a new one beyond the cap, is refused.
    pub fn upsert(&mut self, key: i64, vector: &[f32]) -> Result<(), MemIndexError> {
        if vector.len() != self.dims {
            return Err(MemIndexError::Dimensions {
                got: vector.len(),
                want: self.dims,
            });
        }
        let mut unit = vector.to_vec();
        embedding::normalize(&mut unit);
        if let Some(&pos) = self.positions.get(&key) {
            if let Some(slot) = self.slot_mut(pos) {
                slot.copy_from_slice(&unit);
            }
            return Ok(());
        }
        if self.keys.len() >= self.cap {
            return Err(MemIndexError::Full { cap: self.cap });
        }
        let pos = self.keys.len();
        if pos / BLOCK_VECTORS >= self.blocks.len() {
            let mut block = Vec::new();
            block
                .try_reserve_exact(BLOCK_VECTORS * self.dims)
                .map_err(|_| MemIndexError::OutOfMemory)?;
            self.blocks
                .try_reserve(1)
                .map_err(|_| MemIndexError::OutOfMemory)?;
            self.blocks.push(block);
        }
        self.keys
            .try_reserve(1)
            .map_err(|_| MemIndexError::OutOfMemory)?;
        self.positions
            .try_reserve(1)
            .map_err(|_| MemIndexError::OutOfMemory)?;
        let Some(block) = self.blocks.last_mut() else {
            return Err(MemIndexError::OutOfMemory);
        };
        block.extend_from_slice(&unit);
        self.keys.push(key);
        self.positions.insert(key, pos);
        Ok(())
    }

    /// Removes `key`; returns whether it was there. The last vector moves
    /// into its place, and an emptied block is freed.
    pub fn remove(&mut self, key: i64) -> bool {
        let Some(pos) = self.positions.remove(&key) else {
            return false;
        };
        let last = self.keys.len().saturating_sub(1);
        if pos != last {
            let moved = self.slot(last).map(<[f32]>::to_vec);
            if let (Some(moved), Some(dst)) = (moved, self.slot_mut(pos)) {
                dst.copy_from_slice(&moved);
            }
        }
        self.keys.swap_remove(pos);
        if let Some(&moved) = self.keys.get(pos) {
            self.positions.insert(moved, pos);
        }
        if let Some(block) = self.blocks.last_mut() {
            block.truncate(block.len().saturating_sub(self.dims));
            if block.is_empty() {
                self.blocks.pop();
            }
        }
        true
    }

    /// The `k` vectors most similar to `query`, best first, as (key, cosine);
    /// with `allowed`, only among those keys (a metadata filter's matches).
    pub fn nearest(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Vec<(i64, f32)> {
        if k == 0 || query.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let mut q = query.to_vec();
        embedding::normalize(&mut q);
        let mut best = Best::new(k);
        for (b, block) in self.blocks.iter().enumerate() {
            let first = b * BLOCK_VECTORS;
            let vectors = block.chunks_exact(self.dims);
            match allowed {
                // The hot loop: a plain scan of one block.
                None => {
                    for (j, v) in vectors.enumerate() {
                        best.offer(dot(&q, v), first + j);
                    }
                }
                Some(allowed) => {
                    let keys = self.keys.get(first..).unwrap_or_default();
                    for (j, (v, key)) in vectors.zip(keys).enumerate() {
                        if allowed.contains(key) {
                            best.offer(dot(&q, v), first + j);
                        }
                    }
                }
            }
        }
        let heap = best.heap;
        let mut out: Vec<(i64, f32)> = heap
            .into_iter()
            .filter_map(|HeapEntry(score, i)| Some((*self.keys.get(i)?, score)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// The best `k` (score, position) pairs seen, in a heap whose top is the
/// worst of them.
struct Best {
    k: usize,
    heap: BinaryHeap<HeapEntry>,
    /// The score to beat once the heap is full.
    worst: f32,
}

impl Best {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
            worst: f32::NEG_INFINITY,
        }
    }

    #[inline(always)]
    fn offer(&mut self, score: f32, pos: usize) {
        if self.heap.len() < self.k {
            self.heap.push(HeapEntry(score, pos));
        } else if score > self.worst {
            self.heap.pop();
            self.heap.push(HeapEntry(score, pos));
        } else {
            return;
        }
        if self.heap.len() == self.k {
            self.worst = self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0);
        }
    }
}

#[derive(PartialEq)]
struct HeapEntry(f32, usize);
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    // Reversed, so the heap's top is the worst of the best k.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

/// An FTS5 `MATCH` expression for `query`: its words, each quoted, joined by
/// `OR`. Quoting every word means no query text is read as FTS syntax.
/// `None` when the query has no words.
pub fn fts_query(query: &str) -> Option<String> {
    let mut seen = Vec::new();
    let mut all = Vec::new();
    for w in embedding::words(query) {
        if !all.contains(&w) && all.len() < 32 {
            all.push(w.clone());
        }
        if !QUERY_STOPWORDS.contains(&w.as_str()) && !seen.contains(&w) && seen.len() < 32 {
            seen.push(w);
        }
    }
    // A query of function words only ("how do I") still searches for them.
    let terms = if seen.is_empty() { all } else { seen };
    if terms.is_empty() {
        return None;
    }
    Some(
        terms
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

/// Words a question carries that say nothing of its subject: left out of the
/// keyword query, where each would match most of the corpus and pull in
/// passages that share only them.
const QUERY_STOPWORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "doing", "for", "from", "get", "got", "had", "has", "have",
    "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "of", "on", "or", "our",
    "so", "some", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "those", "to", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
    "why", "will", "with", "would", "you", "your",
];

/// How many more chunks than asked a search ranks before it keeps the best
/// chunk of each document ([`one_per_document`]).
pub const PER_DOCUMENT_DEPTH: usize = 3;

/// The best `k` hits, at most one per document (`docId` metadata; a hit
/// without one stands alone), in their order: the answer names `k`
/// documents instead of spending its places on neighbouring chunks of one.
pub fn one_per_document(hits: Vec<VectorHit>, k: usize) -> Vec<VectorHit> {
    let mut seen: Vec<String> = Vec::new();
    let mut kept = Vec::with_capacity(k);
    for hit in hits {
        if kept.len() == k {
            break;
        }
        if let Some(MetaValue::Str(doc)) = hit.metadata.get("docId") {
            if seen.contains(doc) {
                continue;
            }
            seen.push(doc.clone());
        }
        kept.push(hit);
    }
    kept
}

/// The constant of reciprocal rank fusion (the usual 60).
pub const RRF_K: f64 = 60.0;

/// Fuses ranked lists of ids: each id scores the sum of `1 / (RRF_K + rank)`
/// over the lists it appears in (rank from 1). Best first; ties by id.
pub fn reciprocal_rank_fusion(lists: &[Vec<String>]) -> Vec<(String, f64)> {
    let mut scores: HashMap<&str, f64> = HashMap::new();
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            *scores.entry(id.as_str()).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(String, f64)> = scores
        .into_iter()
        .map(|(id, s)| (id.to_owned(), s))
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_handles_every_length() {
        for n in [0, 1, 7, 8, 9, 16, 17, 768] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - want).abs() <= want.abs() * 1e-5 + 1e-5,
                "n={n}"
            );
        }
        assert_eq!(
            dot(&[1.0, 2.0, 3.0], &[1.0]),
            1.0,
            "the shorter length wins"
        );
    }

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn nearest_ranks_filters_and_replaces() {
        let mut idx = MemIndex::new(2, 10);
        idx.upsert(1, &[1.0, 0.0]).unwrap(); // east
        idx.upsert(2, &[0.0, 1.0]).unwrap(); // north
        idx.upsert(3, &[1.0, 1.0]).unwrap(); // northeast
        let keys = |hits: Vec<(i64, f32)>| hits.into_iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(keys(idx.nearest(&[1.0, 0.2], 2, None)), vec![1, 3]);
        let only: HashSet<i64> = [1, 3].into();
        assert_eq!(keys(idx.nearest(&[0.0, 1.0], 3, Some(&only))), vec![3, 1]);
        // Replace moves "east" to the west.
        idx.upsert(1, &[-1.0, 0.0]).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.nearest(&[1.0, 0.0], 1, None)[0].0, 3);
        assert_eq!(
            idx.upsert(9, &[1.0]),
            Err(MemIndexError::Dimensions { got: 1, want: 2 })
        );
    }

    #[test]
    fn the_cap_is_kept_and_replacing_needs_no_room() {
        let mut idx = MemIndex::new(2, 2);
        idx.upsert(1, &[1.0, 0.0]).unwrap();
        idx.upsert(2, &[0.0, 1.0]).unwrap();
        assert_eq!(
            idx.upsert(3, &[1.0, 1.0]),
            Err(MemIndexError::Full { cap: 2 })
        );
        assert!(
            idx.upsert(2, &[1.0, 1.0]).is_ok(),
            "a replacement is no new vector"
        );
        assert!(idx.remove(1));
        assert!(idx.upsert(3, &[1.0, 1.0]).is_ok());
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn blocks_grow_and_shrink_without_moving_the_rest() {
        let n = BLOCK_VECTORS * 2 + 3;
        let mut idx = MemIndex::new(4, n);
        for k in 0..n as i64 {
            idx.upsert(k, &[1.0, k as f32, 0.5, -1.0]).unwrap();
        }
        assert_eq!(
            idx.vector_bytes(),
            3 * BLOCK_VECTORS * 4 * 4,
            "three blocks"
        );
        for k in 0..4 {
            assert!(idx.remove(k));
        }
        assert_eq!(
            idx.vector_bytes(),
            2 * BLOCK_VECTORS * 4 * 4,
            "the emptied block is freed"
        );
        // Every remaining key still finds its own vector.
        for k in [4_i64, 300, n as i64 - 1] {
            let v = [1.0, k as f32, 0.5, -1.0];
            let hit = idx.nearest(&v, 1, Some(&[k].into()));
            assert_eq!(hit[0].0, k);
            assert!((hit[0].1 - 1.0).abs() < 1e-5, "{k}: {}", hit[0].1);
        }
    }

    #[test]
    fn remove_keeps_the_rest_consistent() {
        let mut idx = MemIndex::new(2, 10);
        for k in 0..4_i64 {
            idx.upsert(k, &[1.0, k as f32]).unwrap();
        }
        assert!(idx.remove(1));
        assert!(!idx.remove(1));
        assert_eq!(idx.len(), 3);
        assert!(idx.contains(3) && !idx.contains(1));
        // 3 moved into 1's slot: its vector must have moved too.
        let top = idx.nearest(&[1.0, 3.0], 1, None);
        assert_eq!(top[0].0, 3);
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert!(idx.remove(3) && idx.remove(0) && idx.remove(2));
        assert!(idx.is_empty());
        assert_eq!(idx.vector_bytes(), 0);
        assert!(idx.nearest(&[1.0, 0.0], 3, None).is_empty());
    }

    #[test]
    fn filters_compare_numbers_across_types() {
        let m = Metadata::from([("page".to_owned(), MetaValue::Int(3))]);
        assert!(matches_filter(
            &m,
            &Metadata::from([("page".to_owned(), MetaValue::Float(3.0))])
        ));
        assert!(!matches_filter(
            &m,
            &Metadata::from([("page".to_owned(), MetaValue::Int(4))])
        ));
        assert!(!matches_filter(
            &m,
            &Metadata::from([("other".to_owned(), MetaValue::Int(3))])
        ));
        assert!(matches_filter(&m, &Metadata::new()));
    }

    #[test]
    fn one_chunk_per_document_in_rank_order() {
        let hit = |id: &str, doc: Option<&str>| VectorHit {
            id: id.into(),
            score: 0.0,
            metadata: doc
                .map(|d| Metadata::from([("docId".to_owned(), MetaValue::Str(d.into()))]))
                .unwrap_or_default(),
        };
        let hits = vec![
            hit("a#0", Some("a")),
            hit("a#1", Some("a")),
            hit("x", None),
            hit("b#3", Some("b")),
            hit("y", None),
            hit("c#0", Some("c")),
        ];
        let ids = |v: Vec<VectorHit>| v.into_iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(one_per_document(hits.clone(), 3)), ["a#0", "x", "b#3"]);
        assert_eq!(
            ids(one_per_document(hits.clone(), 10)),
            ["a#0", "x", "b#3", "y", "c#0"]
        );
        assert!(one_per_document(hits, 0).is_empty());
    }

    #[test]
    fn fts_queries_are_quoted_words() {
        assert_eq!(
            fts_query("Borrow checker: \"NEAR\" OR *").as_deref(),
            Some("\"borrow\" OR \"checker\" OR \"near\""),
            "operators are quoted words, and function words are left out"
        );
        assert_eq!(fts_query(" ,;* "), None);
        assert_eq!(
            fts_query("How do I split a workspace?").as_deref(),
            Some("\"split\" OR \"workspace\"")
        );
        assert_eq!(
            fts_query("a a a").as_deref(),
            Some("\"a\""),
            "a query of function words only keeps them"
        );
    }

    #[test]
    fn fusion_rewards_agreement() {
        let v = vec!["x".to_owned(), "y".to_owned(), "z".to_owned()];
        let k = vec!["y".to_owned(), "w".to_owned()];
        let fused = reciprocal_rank_fusion(&[v, k]);
        assert_eq!(fused[0].0, "y", "in both lists, so first");
        assert!((fused[0].1 - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-12);
        assert_eq!(fused.len(), 4);
        assert!(reciprocal_rank_fusion(&[]).is_empty());
    }
}
