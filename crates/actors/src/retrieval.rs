//! Retrieval without I/O: the in-memory vector index (exact cosine), metadata
//! filters, the full-text query builder and reciprocal rank fusion.

use crate::embedding;
use protocol::ingest::{MetaValue, Metadata};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Dot product; the cosine similarity of two unit vectors. The hot loop of
/// exact search: with wasm SIMD (enabled for the Worker in
/// `.cargo/config.toml`) four lanes at a time.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    use core::arch::wasm32::{f32x4, f32x4_add, f32x4_extract_lane, f32x4_mul, v128, v128_load};
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc0 = f32x4(0.0, 0.0, 0.0, 0.0);
    let mut acc1 = acc0;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        // SAFETY: `chunks_exact(8)` yields slices of exactly 8 `f32`s, so both
        // 16-byte loads at offsets 0 and 4 stay inside them; wasm's
        // `v128.load` has no alignment requirement.
        let (x0, x1, y0, y1) = unsafe {
            let (px, py) = (x.as_ptr(), y.as_ptr());
            (
                v128_load(px.cast::<v128>()),
                v128_load(px.add(4).cast::<v128>()),
                v128_load(py.cast::<v128>()),
                v128_load(py.add(4).cast::<v128>()),
            )
        };
        acc0 = f32x4_add(acc0, f32x4_mul(x0, y0));
        acc1 = f32x4_add(acc1, f32x4_mul(x1, y1));
    }
    let v = f32x4_add(acc0, acc1);
    let mut sum = f32x4_extract_lane::<0>(v)
        + f32x4_extract_lane::<1>(v)
        + f32x4_extract_lane::<2>(v)
        + f32x4_extract_lane::<3>(v);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += x * y;
    }
    sum
}

/// Dot product; the cosine similarity of two unit vectors. Eight independent
/// sums, so the compiler can keep them in vector registers.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
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

/// A vector index held in memory: contiguous unit vectors, exact search.
#[derive(Debug, Default)]
pub struct MemIndex {
    dims: usize,
    ids: Vec<String>,
    vectors: Vec<f32>,
    metadata: Vec<Metadata>,
    positions: HashMap<String, usize>,
}

/// A match of [`MemIndex::nearest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'a> {
    /// The vector's id.
    pub id: &'a str,
    /// Cosine similarity to the query.
    pub score: f32,
    /// The vector's metadata.
    pub metadata: &'a Metadata,
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

impl MemIndex {
    /// An empty index of `dims`-dimensional vectors.
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            ..Self::default()
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Inserts or replaces `id`. The vector is normalised; a vector of the
    /// wrong length is refused.
    pub fn upsert(&mut self, id: &str, vector: &[f32], metadata: Metadata) -> Result<(), String> {
        if vector.len() != self.dims {
            return Err(format!(
                "vector of {} dimensions, index has {}",
                vector.len(),
                self.dims
            ));
        }
        let mut unit = vector.to_vec();
        embedding::normalize(&mut unit);
        match self.positions.get(id) {
            Some(&pos) => {
                let start = pos * self.dims;
                if let Some(slot) = self.vectors.get_mut(start..start + self.dims) {
                    slot.copy_from_slice(&unit);
                }
                if let Some(m) = self.metadata.get_mut(pos) {
                    *m = metadata;
                }
            }
            None => {
                self.positions.insert(id.to_owned(), self.ids.len());
                self.ids.push(id.to_owned());
                self.vectors.extend_from_slice(&unit);
                self.metadata.push(metadata);
            }
        }
        Ok(())
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(pos) = self.positions.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        self.ids.swap_remove(pos);
        self.metadata.swap_remove(pos);
        if pos != last {
            let (head, tail) = self.vectors.split_at_mut(last * self.dims);
            if let Some(dst) = head.get_mut(pos * self.dims..(pos + 1) * self.dims) {
                dst.copy_from_slice(tail);
            }
            if let Some(moved) = self.ids.get(pos) {
                self.positions.insert(moved.clone(), pos);
            }
        }
        self.vectors.truncate(last * self.dims);
        true
    }

    /// The metadata of `id`.
    pub fn metadata(&self, id: &str) -> Option<&Metadata> {
        self.positions.get(id).and_then(|&p| self.metadata.get(p))
    }

    /// The `k` vectors most similar to `query` among those matching `filter`,
    /// best first.
    pub fn nearest(&self, query: &[f32], k: usize, filter: &Metadata) -> Vec<Scored<'_>> {
        if k == 0 || query.len() != self.dims {
            return Vec::new();
        }
        let mut q = query.to_vec();
        embedding::normalize(&mut q);
        let mut heap: BinaryHeap<HeapEntry> = BinaryHeap::with_capacity(k + 1);
        for (i, v) in self.vectors.chunks_exact(self.dims).enumerate() {
            if !filter.is_empty()
                && !self
                    .metadata
                    .get(i)
                    .is_some_and(|m| matches_filter(m, filter))
            {
                continue;
            }
            let score = dot(&q, v);
            if heap.len() < k {
                heap.push(HeapEntry(score, i));
            } else if heap.peek().is_some_and(|worst| score > worst.0) {
                heap.pop();
                heap.push(HeapEntry(score, i));
            }
        }
        let mut out: Vec<Scored<'_>> = heap
            .into_iter()
            .filter_map(|HeapEntry(score, i)| {
                Some(Scored {
                    id: self.ids.get(i)?,
                    score,
                    metadata: self.metadata.get(i)?,
                })
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(b.id)));
        out
    }
}

/// An FTS5 `MATCH` expression for `query`: its words, each quoted, joined by
/// `OR`. Quoting every word means no query text is read as FTS syntax.
/// `None` when the query has no words.
pub fn fts_query(query: &str) -> Option<String> {
    let mut seen = Vec::new();
    for w in embedding::words(query) {
        if !seen.contains(&w) && seen.len() < 32 {
            seen.push(w);
        }
    }
    if seen.is_empty() {
        return None;
    }
    Some(
        seen.iter()
            .map(|w| format!("\"{}\"", w.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
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

    fn meta(source: &str) -> Metadata {
        Metadata::from([("source".to_owned(), MetaValue::Str(source.to_owned()))])
    }

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
        let mut idx = MemIndex::new(2);
        idx.upsert("east", &[1.0, 0.0], meta("a")).unwrap();
        idx.upsert("north", &[0.0, 1.0], meta("b")).unwrap();
        idx.upsert("northeast", &[1.0, 1.0], meta("a")).unwrap();
        let got: Vec<&str> = idx
            .nearest(&[1.0, 0.2], 2, &Metadata::new())
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(got, vec!["east", "northeast"]);
        let got: Vec<&str> = idx
            .nearest(&[0.0, 1.0], 3, &meta("a"))
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(got, vec!["northeast", "east"], "filter keeps only source=a");
        // Replace moves "east" to the west.
        idx.upsert("east", &[-1.0, 0.0], meta("a")).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(
            idx.nearest(&[1.0, 0.0], 1, &Metadata::new())[0].id,
            "northeast"
        );
        assert!(idx.upsert("bad", &[1.0], meta("a")).is_err());
    }

    #[test]
    fn remove_keeps_the_rest_consistent() {
        let mut idx = MemIndex::new(2);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            idx.upsert(id, &[1.0, i as f32], meta(id)).unwrap();
        }
        assert!(idx.remove("b"));
        assert!(!idx.remove("b"));
        assert_eq!(idx.len(), 3);
        // "d" moved into b's slot: its vector and metadata must have moved too.
        assert_eq!(idx.metadata("d"), Some(&meta("d")));
        let top = idx.nearest(&[1.0, 3.0], 1, &Metadata::new());
        assert_eq!(top[0].id, "d");
        assert!((top[0].score - 1.0).abs() < 1e-6);
        assert!(idx.remove("d") && idx.remove("a") && idx.remove("c"));
        assert!(idx.is_empty());
        assert!(idx.nearest(&[1.0, 0.0], 3, &Metadata::new()).is_empty());
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
    fn fts_queries_are_quoted_words() {
        assert_eq!(
            fts_query("Borrow checker: \"NEAR\" OR *").as_deref(),
            Some("\"borrow\" OR \"checker\" OR \"near\" OR \"or\"")
        );
        assert_eq!(fts_query(" ,;* "), None);
        assert_eq!(fts_query("a a a").as_deref(), Some("\"a\""));
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
