//! Retrieval without I/O: the in-memory vectors of the embedded index (exact
//! cosine, bounded), metadata filters, the full-text query builder, and the
//! scores every search mode reports, each a relevance in [0, 1] so that one
//! floor (`minScore`, the tenant's `searchFloor`) means the same in every
//! mode: the clamped cosine ([`vector_relevance`]), a size-aware saturation
//! of BM25 ([`keyword_relevance`]), and their weighted mean ([`fuse`]).

use crate::embedding;
use crate::ports::VectorHit;
use protocol::ingest::{MetaValue, Metadata, SearchMode};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Dot product; the cosine similarity of two unit vectors (over the shorter
/// length). Eight independent sums, so the compiler can keep them in vector
/// registers. Not the search's hot loop: [`MemIndex::nearest`] scores a
/// block a dimension's row at a time.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
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
/// Vectors live in fixed blocks of [`BLOCK_VECTORS`], allocated whole with
/// `try_reserve_exact`: growing never copies the whole index (in wasm, memory
/// once grown is never returned, so a doubling `Vec` would cost up to three
/// times the data at its peak), an allocation failure is an error rather than
/// an abort, and at most `cap` vectors are ever held.
///
/// A block is stored dimension by dimension (`block[d * BLOCK_VECTORS + j]`
/// is dimension `d` of its vector `j`), so a search reads only the
/// dimensions its query fills, each in order: a question embedded by
/// `local/hashed-768` fills about 70 of the 768, and reads a tenth of the
/// index.
#[derive(Debug, Default)]
pub struct MemIndex {
    dims: usize,
    cap: usize,
    keys: Vec<i64>,
    blocks: Vec<Vec<f32>>,
    positions: HashMap<i64, usize>,
    /// A vector being written (normalised before it is spread over its
    /// block's dimensions); kept to spare an allocation per upsert.
    scratch: Vec<f32>,
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

    /// The vector at `pos`, gathered from its block.
    fn vector(&self, pos: usize) -> Option<Vec<f32>> {
        if pos >= self.keys.len() {
            return None;
        }
        let (block, j) = (self.blocks.get(pos / BLOCK_VECTORS)?, pos % BLOCK_VECTORS);
        (0..self.dims)
            .map(|d| block.get(d * BLOCK_VECTORS + j).copied())
            .collect()
    }

    /// Writes `values` (of `dims`) as the vector at `pos`.
    fn write(blocks: &mut [Vec<f32>], pos: usize, values: &[f32]) -> Result<(), MemIndexError> {
        let (block, j) = (
            blocks
                .get_mut(pos / BLOCK_VECTORS)
                .ok_or(MemIndexError::OutOfMemory)?,
            pos % BLOCK_VECTORS,
        );
        for (x, cell) in values
            .iter()
            .zip(block.iter_mut().skip(j).step_by(BLOCK_VECTORS))
        {
            *cell = *x;
        }
        Ok(())
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
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        v.extend_from_slice(vector);
        let written = self.put(key, &mut v);
        self.scratch = v;
        written
    }

    /// [`Self::upsert`] of a vector stored as little-endian `f32`s (a
    /// `vectors.embedding` blob): loading an index decodes each vector once,
    /// into a buffer kept between calls. The same values as
    /// `upsert(key, &from_blob(bytes))`, bit for bit.
    pub fn upsert_le_bytes(&mut self, key: i64, bytes: &[u8]) -> Result<(), MemIndexError> {
        if bytes.len() != self.dims * 4 {
            return Err(MemIndexError::Dimensions {
                got: bytes.len() / 4,
                want: self.dims,
            });
        }
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        v.extend(
            bytes
                .chunks_exact(4)
                .filter_map(|c| c.try_into().ok().map(f32::from_le_bytes)),
        );
        let written = self.put(key, &mut v);
        self.scratch = v;
        written
    }

    /// Normalises `v` and writes it as `key`'s vector.
    fn put(&mut self, key: i64, v: &mut [f32]) -> Result<(), MemIndexError> {
        embedding::normalize(v);
        let pos = self.position_for(key)?;
        Self::write(&mut self.blocks, pos, v)
    }

    /// The position of `key`: its own if held, else a new one at the end
    /// (in a new block of zeros when the last is full), or an error beyond
    /// the cap or out of memory.
    fn position_for(&mut self, key: i64) -> Result<usize, MemIndexError> {
        if let Some(&pos) = self.positions.get(&key) {
            return Ok(pos);
        }
        if self.keys.len() >= self.cap {
            return Err(MemIndexError::Full { cap: self.cap });
        }
        let pos = self.keys.len();
        if pos / BLOCK_VECTORS >= self.blocks.len() {
            let size = BLOCK_VECTORS
                .checked_mul(self.dims)
                .ok_or(MemIndexError::OutOfMemory)?;
            let mut block = Vec::new();
            block
                .try_reserve_exact(size)
                .map_err(|_| MemIndexError::OutOfMemory)?;
            self.blocks
                .try_reserve(1)
                .map_err(|_| MemIndexError::OutOfMemory)?;
            // Within the reserved capacity: no reallocation.
            block.resize(size, 0.0);
            self.blocks.push(block);
        }
        self.keys
            .try_reserve(1)
            .map_err(|_| MemIndexError::OutOfMemory)?;
        self.positions
            .try_reserve(1)
            .map_err(|_| MemIndexError::OutOfMemory)?;
        self.keys.push(key);
        self.positions.insert(key, pos);
        Ok(pos)
    }

    /// Removes `key`; returns whether it was there. The last vector moves
    /// into its place, and an emptied block is freed.
    pub fn remove(&mut self, key: i64) -> bool {
        let Some(pos) = self.positions.remove(&key) else {
            return false;
        };
        let last = self.keys.len().saturating_sub(1);
        if pos != last {
            if let Some(moved) = self.vector(last) {
                // Both positions are held: the write cannot fail.
                let _ = Self::write(&mut self.blocks, pos, &moved);
            }
        }
        self.keys.swap_remove(pos);
        if let Some(&moved) = self.keys.get(pos) {
            self.positions.insert(moved, pos);
        }
        // The last block's place `last` is free now; when it was its
        // first, the block is empty.
        self.blocks
            .truncate(self.keys.len().div_ceil(BLOCK_VECTORS));
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
        // The dimensions the query fills, each as its offset in a block
        // and its weight: an empty dimension adds nothing to any score.
        let filled: Vec<(usize, f32)> = q
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .filter_map(|(d, w)| Some((d.checked_mul(BLOCK_VECTORS)?, *w)))
            .collect();
        let mut best = Best::new(k);
        if let Some(allowed) = allowed {
            if allowed.len().saturating_mul(FEW_ALLOWED) < self.keys.len() {
                // A filter that keeps few vectors: those alone are scored,
                // in the order of their places (ties go the same way as in
                // a scan), with the same sums as a scan's.
                let mut places: Vec<usize> = allowed
                    .iter()
                    .filter_map(|key| self.positions.get(key).copied())
                    .collect();
                places.sort_unstable();
                for pos in places {
                    best.offer(self.score_at(pos, &filled), pos);
                }
                return self.ranked(best);
            }
        }
        let mut scores = [0f32; BLOCK_VECTORS];
        // A plain index loop over each block's places: the release build
        // optimises for size (`opt-level = "z"`), which leaves iterator
        // adapters (`take`, `enumerate`) as a function call per step.
        for (b, block) in self.blocks.iter().enumerate() {
            let first = b * BLOCK_VECTORS;
            let held = self.keys.len().saturating_sub(first).min(BLOCK_VECTORS);
            block_scores(block, &filled, &mut scores);
            let mut j = 0;
            while j < held {
                let pos = first + j;
                let wanted = match allowed {
                    None => true,
                    Some(allowed) => self.keys.get(pos).is_some_and(|k| allowed.contains(k)),
                };
                if wanted {
                    best.offer(scores[j], pos);
                }
                j += 1;
            }
        }
        self.ranked(best)
    }

    /// The sum [`block_scores`] gives the vector at `pos`, alone.
    fn score_at(&self, pos: usize, filled: &[(usize, f32)]) -> f32 {
        let Some(block) = self.blocks.get(pos / BLOCK_VECTORS) else {
            return 0.0;
        };
        let j = pos % BLOCK_VECTORS;
        let mut sum = 0.0;
        for &(offset, w) in filled {
            if let Some(x) = offset.checked_add(j).and_then(|i| block.get(i)) {
                sum += w * x;
            }
        }
        sum
    }

    /// The best of `best` as (key, cosine), best first (ties by key).
    fn ranked(&self, best: Best) -> Vec<(i64, f32)> {
        let mut out: Vec<(i64, f32)> = best
            .heap
            .into_iter()
            .filter_map(|HeapEntry(score, i)| Some((*self.keys.get(i)?, score)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// A filter keeping fewer than one vector in this many has its vectors
/// scored one by one ([`MemIndex::score_at`]) instead of every block.
const FEW_ALLOWED: usize = 8;

/// The dot products of `filled` (block offsets of a query's dimensions, with
/// their weights) with every vector of `block`, into `scores`: the hot loop
/// of exact search. Each filled dimension adds its row of the block (the
/// dimension of all its vectors, 1 KiB read in order) to the sums, which
/// stay in the first level of cache; with wasm SIMD (enabled for the Worker
/// in `.cargo/config.toml`) four at a time.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn block_scores(block: &[f32], filled: &[(usize, f32)], scores: &mut [f32; BLOCK_VECTORS]) {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, f32x4_splat, v128, v128_load, v128_store};
    *scores = [0.0; BLOCK_VECTORS];
    let sums = scores.as_mut_ptr().cast::<v128>();
    let mut i = 0;
    while i < filled.len() {
        let (offset, w) = filled[i];
        i += 1;
        let Some(row) = offset
            .checked_add(BLOCK_VECTORS)
            .and_then(|end| block.get(offset..end))
        else {
            continue;
        };
        let w = f32x4_splat(w);
        let row = row.as_ptr().cast::<v128>();
        let mut j = 0;
        while j < BLOCK_VECTORS / 4 {
            // SAFETY: `row` and `scores` each hold BLOCK_VECTORS `f32`s
            // (BLOCK_VECTORS / 4 `v128`s), and `j < BLOCK_VECTORS / 4`, so
            // the loads at `row + j` and `sums + j` and the store at
            // `sums + j` are inside them; wasm's `v128.load` and
            // `v128.store` have no alignment requirement.
            unsafe {
                let row = row.add(j);
                let sum = sums.add(j);
                v128_store(sum, f32x4_add(v128_load(sum), f32x4_mul(w, v128_load(row))));
            }
            j += 1;
        }
    }
}

/// The dot products of `filled` with every vector of `block` (see the wasm
/// version above); natively, plain sums the compiler vectorises.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn block_scores(block: &[f32], filled: &[(usize, f32)], scores: &mut [f32; BLOCK_VECTORS]) {
    *scores = [0.0; BLOCK_VECTORS];
    for &(offset, w) in filled {
        if let Some(row) = block.get(offset..offset + BLOCK_VECTORS) {
            for (sum, x) in scores.iter_mut().zip(row) {
                *sum += w * x;
            }
        }
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

/// How many more chunks than asked a search grouped by document asks the
/// index for, before it keeps the best chunk of each document
/// ([`one_per_document`]).
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

/// Weight of the vector leg in a hybrid score; the keyword leg has the rest.
/// Chosen on the Rust docs corpus (8,359 chunks) with the held-out questions
/// of `tests/questions` (`cargo bench -p e2e --bench quality`), over the
/// stemmed title-weighted keyword index: 0.3 gave recall@1/@5 0.45/0.66
/// (0.5: 0.43/0.63; reciprocal rank fusion: 0.36/0.63), and at the default
/// floor 5 of 6 off-topic questions get nothing while no on-topic one loses
/// all its matches (0.5: 8 of 101 did). The embedded embedder's cosines are
/// weak evidence next to the keyword leg's.
pub const HYBRID_VECTOR_WEIGHT: f64 = 0.3;

/// The half-saturation constant of [`keyword_relevance`]: a BM25 worth this
/// many "rare words" (see there) scores 0.5.
pub const KEYWORD_HALF: f64 = 1.5;

/// A vector leg's relevance in [0, 1]: the cosine similarity, clamped
/// (opposite vectors are as irrelevant as unrelated ones). Not finite is 0.
pub fn vector_relevance(cosine: f64) -> f64 {
    if cosine.is_finite() {
        cosine.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The inverse document frequency FTS5's `bm25()` gives a word found in one
/// of `chunks` rows, `ln((N - 0.5) / 1.5)`, kept above zero as FTS5 keeps
/// its own (a word in half the rows or more is worth 1e-6 there).
pub fn rare_word_idf(chunks: u64) -> f64 {
    let n = chunks as f64;
    ((n - 0.5) / 1.5).ln().max(1e-6)
}

/// A keyword leg's relevance in [0, 1] from its BM25 (higher is better,
/// i.e. FTS5's `bm25()` negated) in an index of `chunks` rows.
///
/// BM25 is a sum over the query's words of idf × a saturating term
/// frequency, and an idf grows with the size of the index (about `ln N`), so
/// raw BM25 means different things in a tenant of 5 chunks and one of
/// 10,000. Dividing by [`rare_word_idf`] gives roughly "how many rare words
/// of the query the chunk holds, weighted by how often", which is comparable
/// across tenants; `x / (x + KEYWORD_HALF)` maps that into [0, 1) without
/// looking at the other results, so a lone weak match stays weak.
pub fn keyword_relevance(bm25: f64, chunks: u64) -> f64 {
    if !bm25.is_finite() || bm25 <= 0.0 {
        return 0.0;
    }
    let x = bm25 / rare_word_idf(chunks);
    x / (x + KEYWORD_HALF)
}

/// A hybrid score in [0, 1]: the weighted mean of the legs' relevances
/// ([`HYBRID_VECTOR_WEIGHT`]), a leg that did not find the chunk counting 0,
/// so a chunk both legs found beats one only one of them liked.
pub fn hybrid_relevance(vector: Option<f64>, keyword: Option<f64>) -> f64 {
    HYBRID_VECTOR_WEIGHT * vector.unwrap_or(0.0)
        + (1.0 - HYBRID_VECTOR_WEIGHT) * keyword.unwrap_or(0.0)
}

/// One chunk of a hybrid answer: its score and the legs that found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    /// The chunk.
    pub key: K,
    /// [`hybrid_relevance`] of the legs.
    pub score: f64,
    /// The vector leg's relevance, if that leg found the chunk.
    pub vector: Option<f64>,
    /// The keyword leg's relevance, if that leg found the chunk.
    pub keyword: Option<f64>,
}

/// Fuses the two legs' candidates (each `(key, relevance in [0, 1])`) into
/// a hybrid ranking: every key of either list once, scored by
/// [`hybrid_relevance`], best first, ties by key (so the order is
/// deterministic and follows the score).
pub fn fuse<K: Ord + Clone + std::hash::Hash>(
    by_vector: &[(K, f64)],
    by_keyword: &[(K, f64)],
) -> Vec<Fused<K>> {
    let mut legs: HashMap<K, (Option<f64>, Option<f64>)> = HashMap::new();
    for (key, s) in by_vector {
        legs.entry(key.clone()).or_default().0 = Some(*s);
    }
    for (key, s) in by_keyword {
        legs.entry(key.clone()).or_default().1 = Some(*s);
    }
    let mut fused: Vec<Fused<K>> = legs
        .into_iter()
        .map(|(key, (vector, keyword))| Fused {
            key,
            score: hybrid_relevance(vector, keyword),
            vector,
            keyword,
        })
        .collect();
    fused.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
    fused
}

/// A single leg's ranking as hits: its relevance is the score, and no leg
/// scores are reported beside it (they are the score).
pub fn one_leg<K>(ranked: Vec<(K, f64)>) -> Vec<Fused<K>> {
    ranked
        .into_iter()
        .map(|(key, score)| Fused {
            key,
            score,
            vector: None,
            keyword: None,
        })
        .collect()
}

/// The best `depth` chunks of a search in `mode`, from its legs (each best
/// first; the leg a mode does not use is ignored): the same for the
/// embedded index and for Vectorize beside the full text.
pub fn rank_legs<K: Ord + Clone + std::hash::Hash>(
    mode: SearchMode,
    depth: usize,
    by_vector: Vec<(K, f64)>,
    by_keyword: Vec<(K, f64)>,
) -> Vec<Fused<K>> {
    let mut ranked = match mode {
        SearchMode::Vector => one_leg(by_vector),
        SearchMode::Keyword => one_leg(by_keyword),
        SearchMode::Hybrid => fuse(&by_vector, &by_keyword),
    };
    ranked.truncate(depth);
    ranked
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
    fn a_stored_blob_loads_as_the_vector_it_holds_bit_for_bit() {
        use crate::embedded::sql_index::{from_blob, to_blob};
        let dims = 768;
        let vectors: Vec<Vec<f32>> = (0..40)
            .map(|k| {
                (0..dims)
                    .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * (k as f32 + 0.5))
                    .collect()
            })
            .chain([vec![0.0; dims]])
            .collect();
        let (mut by_values, mut by_bytes) = (MemIndex::new(dims, 100), MemIndex::new(dims, 100));
        for (k, v) in vectors.iter().enumerate() {
            let blob = to_blob(v);
            by_values.upsert(k as i64, &from_blob(&blob)).unwrap();
            by_bytes.upsert_le_bytes(k as i64, &blob).unwrap();
        }
        // A replacement too.
        let blob = to_blob(&vectors[3]);
        by_values.upsert(0, &from_blob(&blob)).unwrap();
        by_bytes.upsert_le_bytes(0, &blob).unwrap();
        assert_eq!(by_values.len(), by_bytes.len());
        for pos in 0..by_values.len() {
            let (a, b) = (
                by_values.vector(pos).unwrap(),
                by_bytes.vector(pos).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "vector {pos}"
            );
        }
        assert_eq!(
            by_bytes.upsert_le_bytes(99, &[0; 12]),
            Err(MemIndexError::Dimensions { got: 3, want: dims })
        );
        let mut full = MemIndex::new(2, 1);
        full.upsert_le_bytes(1, &to_blob(&[1.0, 0.0])).unwrap();
        assert_eq!(
            full.upsert_le_bytes(2, &to_blob(&[0.0, 1.0])),
            Err(MemIndexError::Full { cap: 1 })
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
        // The place 3 left still holds its old copy: never offered, so
        // the best two are two held keys, not 3 twice.
        let two = idx.nearest(&[1.0, 3.0], 2, None);
        assert_eq!(two.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3, 2]);
        assert!(idx.remove(3) && idx.remove(0) && idx.remove(2));
        assert!(idx.is_empty());
        assert_eq!(idx.vector_bytes(), 0);
        assert!(idx.nearest(&[1.0, 0.0], 3, None).is_empty());
    }

    /// The exact search by a plain scan: every held vector's cosine with the
    /// query, best first (ties by key).
    fn scanned(vectors: &HashMap<i64, Vec<f32>>, query: &[f32], k: usize) -> Vec<(i64, f32)> {
        let mut all: Vec<(i64, f32)> = vectors
            .iter()
            .map(|(key, v)| (*key, cosine(query, v)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn nearest_is_the_exact_scan_across_blocks_removals_and_sparse_queries() {
        // Embedded texts (sparse, as the embedded embedder makes them), over
        // three blocks, the last one part full; then removals (the last
        // vector moves, a block empties) and replacements.
        let text = |k: i64| {
            format!(
                "chunk {k} about {} and {} with {}",
                [
                    "borrowing",
                    "lifetimes",
                    "traits",
                    "cargo features",
                    "unsafe code"
                ][k as usize % 5],
                ["iterators", "closures", "macros", "async tasks"][k as usize % 4],
                ["errors", "generics", "modules"][k as usize % 3],
            )
        };
        let n = 2 * BLOCK_VECTORS as i64 + 37;
        let mut idx = MemIndex::new(embedding::DIMENSIONS, n as usize);
        let mut held: HashMap<i64, Vec<f32>> = HashMap::new();
        for k in 0..n {
            let v = embedding::embed(&text(k));
            idx.upsert(k, &v).unwrap();
            held.insert(k, v);
        }
        let queries = [
            embedding::embed("how do I share data between async tasks?"),
            embedding::embed("cargo features of a chunk"),
            // Dense: every dimension filled.
            (0..embedding::DIMENSIONS)
                .map(|d| ((d * 31 % 17) as f32 - 8.0) / 8.0)
                .collect::<Vec<f32>>(),
        ];
        let check = |idx: &MemIndex, held: &HashMap<i64, Vec<f32>>, when: &str| {
            assert_eq!(idx.len(), held.len(), "{when}");
            for (qi, q) in queries.iter().enumerate() {
                let got = idx.nearest(q, 40, None);
                let want = scanned(held, q, 40);
                assert_eq!(got.len(), want.len(), "{when}, query {qi}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g.1 - w.1).abs() < 1e-5,
                        "{when}, query {qi}: {g:?} vs {w:?}"
                    );
                    // The same key, or another of the same score (a tie).
                    assert!(
                        g.0 == w.0 || (cosine(q, &held[&g.0]) - w.1).abs() < 1e-5,
                        "{when}, query {qi}: {g:?} vs {w:?}"
                    );
                }
            }
            // Everything asked for, when k is the count.
            assert_eq!(
                idx.nearest(&queries[0], held.len(), None).len(),
                held.len(),
                "{when}"
            );
            // A filter keeps only its keys, whatever their block: a few
            // (scored one by one) or many (every block scanned), with the
            // scan's scores.
            for every in [97, 2] {
                let only: HashMap<i64, Vec<f32>> = held
                    .iter()
                    .filter(|(k, _)| *k % every == 5 % every)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                let keys: HashSet<i64> = only.keys().copied().collect();
                for q in &queries {
                    let got = idx.nearest(q, 100, Some(&keys));
                    let want = scanned(&only, q, 100);
                    assert_eq!(got.len(), want.len(), "{when}, 1 in {every}");
                    for (g, w) in got.iter().zip(&want) {
                        assert!(keys.contains(&g.0), "{when}, 1 in {every}");
                        assert!(
                            (g.1 - w.1).abs() < 1e-5,
                            "{when}, 1 in {every}: {g:?} vs {w:?}"
                        );
                    }
                }
            }
        };
        check(&idx, &held, "filled");
        for k in (0..n).step_by(3) {
            assert!(idx.remove(k));
            held.remove(&k);
        }
        check(&idx, &held, "after removals");
        for k in (1..n).step_by(7) {
            let v = embedding::embed(&format!("{} replaced by macros", text(k + 1)));
            if held.contains_key(&k) {
                idx.upsert(k, &v).unwrap();
                held.insert(k, v);
            }
        }
        check(&idx, &held, "after replacements");
        assert_eq!(
            idx.vector_bytes(),
            held.len().div_ceil(BLOCK_VECTORS) * BLOCK_VECTORS * embedding::DIMENSIONS * 4,
            "only the blocks in use are held"
        );
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
            keyword_score: None,
            vector_score: None,
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
    fn vector_relevance_is_the_clamped_cosine() {
        assert_eq!(vector_relevance(0.42), 0.42);
        assert_eq!(vector_relevance(-0.3), 0.0);
        assert_eq!(vector_relevance(1.000_01), 1.0);
        assert_eq!(vector_relevance(f64::NAN), 0.0);
    }

    #[test]
    fn keyword_relevance_is_bounded_monotonic_and_scale_aware() {
        // In [0, 1), increasing in the BM25.
        let mut last = 0.0;
        for bm25 in [0.1, 1.0, 5.0, 20.0, 100.0, 1e6] {
            let s = keyword_relevance(bm25, 10_000);
            assert!(s > last && s < 1.0, "{bm25}: {s}");
            last = s;
        }
        for nothing in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            assert_eq!(keyword_relevance(nothing, 100), 0.0, "{nothing}");
        }
        // One rare word matched once scores about the same in a small and
        // a large index, though its BM25 is five times larger in the large.
        let small = keyword_relevance(rare_word_idf(5), 5);
        let large = keyword_relevance(rare_word_idf(8_359), 8_359);
        assert!((small - large).abs() < 1e-9, "{small} {large}");
        assert!((small - 1.0 / (1.0 + KEYWORD_HALF)).abs() < 1e-9);
        assert!((rare_word_idf(8_359) - 8.625).abs() < 0.01);
        // FTS5 floors its idf at 1e-6 (a one-row index): so do we, and the
        // score stays finite and bounded.
        assert_eq!(rare_word_idf(1), 1e-6);
        let one_row = keyword_relevance(2e-6, 1);
        assert!(one_row > 0.5 && one_row < 1.0, "{one_row}");
    }

    #[test]
    fn hybrid_relevance_weighs_the_legs_and_counts_a_missing_one_as_zero() {
        assert_eq!(hybrid_relevance(Some(1.0), Some(1.0)), 1.0);
        assert_eq!(hybrid_relevance(None, None), 0.0);
        let w = HYBRID_VECTOR_WEIGHT;
        assert!(
            (hybrid_relevance(Some(0.4), Some(0.6)) - (w * 0.4 + (1.0 - w) * 0.6)).abs() < 1e-12
        );
        assert!((hybrid_relevance(Some(0.4), None) - w * 0.4).abs() < 1e-12);
        assert!(hybrid_relevance(Some(0.3), Some(0.3)) > hybrid_relevance(Some(0.5), None));
    }

    #[test]
    fn fusion_rewards_agreement_keeps_the_legs_and_ranks_by_score() {
        let v = vec![("x", 0.6), ("y", 0.5), ("z", 0.1)];
        let k = vec![("y", 0.7), ("w", 0.2)];
        let fused = fuse(&v, &k);
        let keys: Vec<_> = fused.iter().map(|f| f.key).collect();
        assert_eq!(keys, ["y", "x", "w", "z"], "{fused:?}");
        assert_eq!(fused[0].vector, Some(0.5));
        assert_eq!(fused[0].keyword, Some(0.7));
        assert_eq!((fused[1].vector, fused[1].keyword), (Some(0.6), None));
        assert_eq!((fused[2].vector, fused[2].keyword), (None, Some(0.2)));
        assert!(fused.windows(2).all(|p| p[0].score >= p[1].score));
        assert!(fused.iter().all(|f| (0.0..=1.0).contains(&f.score)));
        // Equal scores: by key, whatever the input order.
        let tie = fuse(&[("b", 0.4), ("a", 0.4)], &[]);
        assert_eq!(tie.iter().map(|f| f.key).collect::<Vec<_>>(), ["a", "b"]);
        assert!(fuse::<&str>(&[], &[]).is_empty());
    }

    /// The default floor on a tenant holding only technical passages (the
    /// start of five sections of the Rust docs corpus, without titles, as
    /// the end-to-end test `search_floor.rs` ingests them): off-topic
    /// questions get no match, on-topic ones get their passage. With this
    /// model the off-topic questions' best hybrid scores are 0.01–0.28 (the
    /// highest, "can I borrow from my retirement account…", because the
    /// stemmer matches "borrow" to "borrowed") and the on-topic ones'
    /// 0.48–0.71, on either side of the floor of 0.35.
    ///
    /// The keyword leg is the embedded index's full-text search written
    /// out, as it is now (`embedded::sql_index`): FTS5's BM25 (k1 = 1.2,
    /// b = 0.75, idf floored at 1e-6) over two columns, the document's
    /// title weighted [`TITLE_WEIGHT`] and the chunk's text, their words
    /// cut by `unicode61` and stemmed by Porter's algorithm (the `porter`
    /// tokenizer), and the query built by [`fts_query`] (function words
    /// left out, each word a phrase, OR-ed). So the whole hybrid score is
    /// computed by the same functions the index uses, and
    /// `the_fts5_model_here_matches_sqlite` pins the model to SQLite's own
    /// numbers for this schema and query.
    mod default_floor {
        use super::super::*;
        use crate::embedded::sql_index::TITLE_WEIGHT;
        use protocol::ingest::{ScoreFloor, DEFAULT_SEARCH_FLOOR};

        /// (name, title, text): the tenant of the end-to-end test, whose
        /// documents have no title.
        const PASSAGES: &[(&str, &str, &str)] = &[
            ("traits", "", "A trait defines the functionality a particular type has and can share with other types. We can use traits to define shared behavior in an abstract way. We can use trait bounds to specify that a generic type can be any type that has certain behavior."),
            ("closures", "", "Rust's closures are anonymous functions you can save in a variable or pass as arguments to other functions. You can create the closure in one place and then call the closure elsewhere to evaluate it in a different context. Unlike functions, closures can capture values from the scope in which they're defined."),
            ("dependencies", "", "crates.io is the Rust community's central package registry that serves as a location to discover and download packages. cargo is configured to use it by default to find requested packages. To depend on a library hosted on crates.io, add it to your Cargo.toml."),
            ("errors", "", "When a function's implementation calls something that might fail, instead of handling the error within the function itself, you can return the error to the calling code so that it can decide what to do. This is known as propagating the error and gives more control to the calling code."),
            ("borrowing", "", "We can fix the code to allow us to modify a borrowed value with just a few small tweaks that use, instead, a mutable reference. First, we change s to be mut. Then, we create a mutable reference with &mut s where we call the change function, and update the function signature to accept a mutable reference."),
        ];

        /// The same passages under their sections' titles, as the corpus
        /// ingests them: to pin the title column and its weight too.
        const TITLED: &[(&str, &str, &str)] = &[
            ("traits", "Traits: Defining Shared Behavior", ""),
            (
                "closures",
                "Closures: Anonymous Functions that Capture Their Environment",
                "",
            ),
            ("dependencies", "Dependencies from crates.io", ""),
            ("errors", "Propagating Errors", ""),
            ("borrowing", "Mutable References", ""),
        ];

        fn titled() -> Vec<(&'static str, &'static str, &'static str)> {
            TITLED
                .iter()
                .zip(PASSAGES)
                .map(|((name, title, _), (_, _, text))| (*name, *title, *text))
                .collect()
        }

        /// What FTS5 indexes of `text`: `unicode61`'s words (runs of
        /// letters and digits, lowercased), each Porter-stemmed.
        fn tokens(text: &str) -> Vec<String> {
            text.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(|w| crate::porter::stem(&w.to_lowercase()))
                .collect()
        }

        /// The phrases of the index's `MATCH` expression for `query`
        /// ([`fts_query`]: `"w1" OR "w2" ...`), each tokenized as FTS5
        /// tokenizes a quoted string.
        fn phrases(query: &str) -> Vec<Vec<String>> {
            fts_query(query)
                .map(|expr| {
                    expr.split(" OR ")
                        .map(|quoted| tokens(quoted.trim_matches('"')))
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        }

        /// How often `phrase` occurs in `column`.
        fn occurrences(column: &[String], phrase: &[String]) -> usize {
            if phrase.is_empty() || column.len() < phrase.len() {
                return 0;
            }
            column
                .windows(phrase.len())
                .filter(|w| *w == phrase)
                .count()
        }

        /// FTS5's `-bm25(chunk_text, TITLE_WEIGHT, 1.0)` of every row of
        /// `rows` that `query`'s expression matches, as the index computes
        /// it: per phrase, its idf over the rows it occurs in (in either
        /// column), times a saturated frequency in which an occurrence in
        /// the title counts `TITLE_WEIGHT`, normalised by the row's length
        /// in tokens (both columns) against the average.
        fn bm25(rows: &[(&str, &str, &str)], query: &str) -> Vec<(usize, f64)> {
            const K1: f64 = 1.2;
            const B: f64 = 0.75;
            let rows: Vec<(Vec<String>, Vec<String>)> = rows
                .iter()
                .map(|(_, title, text)| (tokens(title), tokens(text)))
                .collect();
            let n = rows.len() as f64;
            let len =
                |(title, text): &(Vec<String>, Vec<String>)| (title.len() + text.len()) as f64;
            let avg = rows.iter().map(len).sum::<f64>() / n;
            let phrases = phrases(query);
            let mut out = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let (title, text) = row;
                let mut score = 0.0;
                let mut matched = false;
                for p in &phrases {
                    let freq =
                        TITLE_WEIGHT * occurrences(title, p) as f64 + occurrences(text, p) as f64;
                    if freq == 0.0 {
                        continue;
                    }
                    matched = true;
                    let hits = rows
                        .iter()
                        .filter(|(t, x)| occurrences(t, p) + occurrences(x, p) > 0)
                        .count() as f64;
                    let idf = ((n - hits + 0.5) / (hits + 0.5)).ln().max(1e-6);
                    score += idf * freq * (K1 + 1.0) / (freq + K1 * (1.0 - B + B * len(row) / avg));
                }
                if matched {
                    out.push((i, score));
                }
            }
            out
        }

        /// The hybrid answer to `query` with the default floor: passage
        /// names and scores, best first. The vector leg embeds each
        /// passage's text, as ingestion does.
        fn search(query: &str) -> Vec<(&'static str, f64)> {
            ranked(query)
                .into_iter()
                .filter(|f| ScoreFloor::DEFAULT.keeps(f.1))
                .collect()
        }

        /// Every passage either leg found, with its hybrid score, best first.
        fn ranked(query: &str) -> Vec<(&'static str, f64)> {
            let q = embedding::embed(query);
            let by_vector: Vec<(usize, f64)> = PASSAGES
                .iter()
                .enumerate()
                .map(|(i, (_, _, t))| {
                    (
                        i,
                        vector_relevance(f64::from(dot(&q, &embedding::embed(t)))),
                    )
                })
                .collect();
            let by_keyword: Vec<(usize, f64)> = bm25(PASSAGES, query)
                .into_iter()
                .map(|(i, s)| (i, keyword_relevance(s, PASSAGES.len() as u64)))
                .collect();
            fuse(&by_vector, &by_keyword)
                .into_iter()
                .map(|f| (PASSAGES[f.key].0, f.score))
                .collect()
        }

        /// The best score `query` reaches, floor or not.
        fn best(query: &str) -> f64 {
            ranked(query).first().map_or(0.0, |f| f.1)
        }

        #[test]
        fn off_topic_questions_get_nothing() {
            assert_eq!(DEFAULT_SEARCH_FLOOR, 0.35);
            for q in [
                "banana bread recipe",
                "who won the football world cup",
                "cheap flights to Lisbon",
                "what's a good egg-free banana bread recipe?",
                "how do I get the rust off my cast iron skillet?",
                "can I borrow from my retirement account to pay for a house deposit?",
            ] {
                assert_eq!(search(q), vec![], "{q}");
                // The margin docs/api.md states.
                assert!(best(q) < 0.28, "{q}: {}", best(q));
            }
        }

        #[test]
        fn on_topic_questions_get_their_passage_first() {
            for (q, want) in [
                ("closures that capture values from their scope", "closures"),
                (
                    "add a dependency from crates.io to Cargo.toml",
                    "dependencies",
                ),
                ("how do I propagate an error to the calling code?", "errors"),
                (
                    "modify a borrowed value with a mutable reference",
                    "borrowing",
                ),
                ("trait bounds on a generic type", "traits"),
                // Short, and in other words than the passage's: it scored
                // 0.27 over the unstemmed index, 0.48 over the stemmed one.
                ("what does a trait define?", "traits"),
            ] {
                let found = search(q);
                assert_eq!(found.first().map(|f| f.0), Some(want), "{q}: {found:?}");
                assert!(best(q) >= 0.475, "{q}: {found:?}");
                assert!(found.windows(2).all(|p| p[0].1 >= p[1].1), "{q}: {found:?}");
            }
        }

        #[test]
        fn stemming_is_porters_as_in_fts5() {
            // SQLite's `porter` tokenizer's stems (fts5vocab), among them
            // words the old unstemmed index kept apart.
            for (word, stem) in [
                ("closures", "closur"),
                ("closure", "closur"),
                ("capture", "captur"),
                ("borrowed", "borrow"),
                ("borrowing", "borrow"),
                ("propagating", "propag"),
                ("propagate", "propag"),
                ("dependencies", "depend"),
                ("dependency", "depend"),
                ("generalization", "gener"),
                ("archaeology", "archaeolog"),
                ("happy", "happi"),
                ("sky", "sky"),
                ("is", "is"),
                ("0usize", "0usiz"),
                ("1960s", "1960"),
            ] {
                assert_eq!(crate::porter::stem(word), stem, "{word}");
            }
            assert_eq!(
                phrases("How do I propagate errors from crates.io?"),
                [vec!["propag"], vec!["error"], vec!["crate"], vec!["io"]],
                "function words left out, words stemmed"
            );
        }

        #[test]
        fn the_fts5_model_here_matches_sqlite() {
            // `-bm25(chunk_text, 2.0, 1.0)` from SQLite 3.40's FTS5 over
            // these rows, in the index's schema (`title, text`, tokenize
            // 'porter unicode61 remove_diacritics 2') and with the MATCH
            // expression `fts_query` builds, so this model cannot drift
            // from the real index.
            for (rows, query, passage, want) in [
                (
                    PASSAGES.to_vec(),
                    "closures that capture values from their scope",
                    "closures",
                    4.314_610_636,
                ),
                (
                    PASSAGES.to_vec(),
                    "how do I get the rust off my cast iron skillet?",
                    "closures",
                    0.328_565_578,
                ),
                (
                    PASSAGES.to_vec(),
                    "how do I propagate an error to the calling code?",
                    "errors",
                    3.287_653_925,
                ),
                (
                    titled(),
                    "closures that capture values from their scope",
                    "closures",
                    5.043_163_489,
                ),
                (
                    titled(),
                    "mutable references to a borrowed value",
                    "borrowing",
                    5.246_865_540,
                ),
            ] {
                let got = bm25(&rows, query);
                let score = got.iter().find(|(i, _)| rows[*i].0 == passage);
                assert!(
                    matches!(score, Some((_, s)) if (s - want).abs() < 1e-6),
                    "{query} / {passage}: {got:?}"
                );
            }
        }
    }
}
