//! The embedded embedder: deterministic hashed features, no model download.
//!
//! It is *not* a neural model and says so in its name (`local/hashed-768`):
//! it maps word unigrams, word bigrams and character trigrams of words into
//! 768 signed buckets (the "hashing trick"), weights them sublinearly by
//! count, and L2-normalises the result. Texts that share words and word parts
//! get similar vectors; paraphrases with no shared words do not. It gives the
//! local platform real, repeatable vectors of the same shape as
//! `@cf/baai/bge-base-en-v1.5`, so every code path runs without Workers AI.

/// The name the embedded embedder reports wherever a model name appears.
pub const HASHED_MODEL: &str = "local/hashed-768";
/// Dimensions of its vectors (those of `@cf/baai/bge-base-en-v1.5`).
pub const DIMENSIONS: usize = 768;

/// Words too common to say anything about a text.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "for", "from", "has", "have",
    "how", "i", "if", "in", "is", "it", "its", "of", "on", "or", "so", "that", "the", "this", "to",
    "was", "what", "when", "which", "will", "with", "you", "your",
];

/// Lowercased words of `text`: runs of alphanumeric characters and `_`.
pub fn words(text: &str) -> Vec<String> {
    raw_words(text).map(str::to_lowercase).collect()
}

/// The words of `text` as they are written (see [`words`]).
fn raw_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Embeds one text as a unit vector of [`DIMENSIONS`] (all zeros if the text
/// has no words).
///
/// Every feature is hashed straight from the text's bytes (no string is built
/// per feature), and the features are counted by sorting their hashes, not in
/// a map: the same buckets and weights as counting `(kind, feature)` pairs,
/// summed in a fixed order (by hash), so the same text always gives the same
/// bits.
pub fn embed(text: &str) -> Vec<f32> {
    let content = ContentWords::of(text);
    // About one word, one bigram and a trigram per character.
    let mut features: Vec<(u64, u8)> = Vec::with_capacity(text.len() + 2 * content.len());
    let mut marked = String::new();
    let mut bounds: Vec<usize> = Vec::new();
    for w in content.iter() {
        features.push((Fnv::new(b'w').bytes(w.as_bytes()).finish(), b'w'));
        // Character trigrams of the word marked at both ends: `<w>`.
        marked.clear();
        marked.push('<');
        marked.push_str(w);
        marked.push('>');
        bounds.clear();
        bounds.extend(marked.char_indices().map(|(i, _)| i));
        bounds.push(marked.len());
        for window in bounds.windows(4) {
            let (Some(&from), Some(&to)) = (window.first(), window.last()) else {
                continue;
            };
            let tri = marked.as_bytes().get(from..to).unwrap_or_default();
            features.push((Fnv::new(b'c').bytes(tri).finish(), b'c'));
        }
    }
    let mut previous: Option<&str> = None;
    for w in content.iter() {
        if let Some(a) = previous {
            let h = Fnv::new(b'b')
                .bytes(a.as_bytes())
                .bytes(b" ")
                .bytes(w.as_bytes())
                .finish();
            features.push((h, b'b'));
        }
        previous = Some(w);
    }
    features.sort_unstable();
    let mut v = vec![0f32; DIMENSIONS];
    let mut rest = features.as_slice();
    while let Some(&(h, kind)) = rest.first() {
        let run = rest.iter().take_while(|f| **f == (h, kind)).count();
        rest = rest.get(run..).unwrap_or_default();
        let weight = match kind {
            b'w' => 1.0,
            b'b' => 0.7,
            _ => 0.25,
        } * (1.0 + (run as f32).ln());
        let bucket = (h % DIMENSIONS as u64) as usize;
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        if let Some(slot) = v.get_mut(bucket) {
            *slot += sign * weight;
        }
    }
    normalize(&mut v);
    v
}

/// The words of a text that are not [`STOPWORDS`], lowercased (as
/// [`words`] gives them), held in one buffer.
struct ContentWords {
    text: String,
    ends: Vec<usize>,
}

impl ContentWords {
    fn of(text: &str) -> Self {
        let mut words = Self {
            text: String::with_capacity(text.len()),
            ends: Vec::new(),
        };
        for raw in raw_words(text) {
            let start = words.text.len();
            if raw.is_ascii() {
                words
                    .text
                    .extend(raw.bytes().map(|b| char::from(b.to_ascii_lowercase())));
            } else {
                // Not per character: `to_lowercase` knows a final sigma.
                words.text.push_str(&raw.to_lowercase());
            }
            let word = words.text.get(start..).unwrap_or_default();
            if STOPWORDS.contains(&word) {
                words.text.truncate(start);
            } else {
                words.ends.push(words.text.len());
            }
        }
        words
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(from, to)| self.text.get(from..to).unwrap_or_default())
    }
}

/// FNV-1a over a feature's kind and bytes, with a final avalanche so that the
/// modulo and the sign bit are well mixed.
struct Fnv(u64);

impl Fnv {
    fn new(kind: u8) -> Self {
        Self(0xcbf2_9ce4_8422_2325).bytes(&[kind])
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// Scales `v` to unit length (leaves a zero vector alone).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::dot;

    #[test]
    fn unit_length_and_deterministic() {
        let a = embed("Durable Objects keep state at the edge");
        assert_eq!(a.len(), DIMENSIONS);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(a, embed("Durable Objects keep state at the edge"));
        assert!(embed("   ,, ").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn shared_words_mean_similar_vectors() {
        let q = embed("how do durable objects store state");
        let near = embed("Durable Objects store state in SQLite storage");
        let far = embed("Pancakes need flour, milk and eggs");
        assert!(dot(&q, &near) > 0.4, "{}", dot(&q, &near));
        assert!(dot(&q, &near) > dot(&q, &far) + 0.3);
        // Word parts count too: "borrowing" is close to "borrow".
        let stem = embed("borrow checker");
        assert!(
            dot(&stem, &embed("borrowing and the checker"))
                > dot(&stem, &embed("garbage collector"))
        );
    }

    /// The embedder as first written: a map of `(kind, feature)` strings.
    fn embed_by_map(text: &str) -> Vec<f32> {
        use std::collections::HashMap;
        let fnv1a = |kind: u8, bytes: &[u8]| Fnv::new(kind).bytes(bytes).finish();
        let words = words(text);
        let mut counts: HashMap<(u8, String), f32> = HashMap::new();
        let content: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .filter(|w| !STOPWORDS.contains(w))
            .collect();
        for w in &content {
            *counts.entry((b'w', (*w).to_owned())).or_default() += 1.0;
            let marked: Vec<char> = format!("<{w}>").chars().collect();
            for tri in marked.windows(3) {
                *counts.entry((b'c', tri.iter().collect())).or_default() += 1.0;
            }
        }
        for pair in content.windows(2) {
            if let [a, b] = pair {
                *counts.entry((b'b', format!("{a} {b}"))).or_default() += 1.0;
            }
        }
        let mut v = vec![0f32; DIMENSIONS];
        for ((kind, feature), count) in counts {
            let weight = match kind {
                b'w' => 1.0,
                b'b' => 0.7,
                _ => 0.25,
            } * (1.0 + count.ln());
            let h = fnv1a(kind, feature.as_bytes());
            let bucket = (h % DIMENSIONS as u64) as usize;
            let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
            v[bucket] += sign * weight;
        }
        normalize(&mut v);
        v
    }

    #[test]
    fn the_features_are_those_of_the_map_embedder() {
        let corpus = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/questions/rust-docs.jsonl"
        ))
        .unwrap_or_default();
        let mut texts: Vec<String> = [
            "",
            "   ,, ",
            "a the and",
            "Durable Objects keep state at the edge; objects, objects and OBJECTS.",
            "fn main() { let snake_case_name = vec![1, 2, 3]; println!(\"{snake_case_name:?}\"); }",
            "ΟΔΥΣΣΕΥΣ' ΣΟΦΟΣ. Ὀδυσσεύς σοφός",
            "所有権とは、Rust の最も特徴的な機能です。所有権 所有権",
            "Ünïcödé wörds and İstanbul, ǅemal, ß and ﬁ ligatures",
            "x",
            "I",
        ]
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
        texts.extend(corpus.lines().take(200).map(str::to_owned));
        assert!(texts.len() > 100, "the question set was not read");
        for text in &texts {
            let (fast, slow) = (embed(text), embed_by_map(text));
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{text:?}: dimension {i}: {a} against {b}"
                );
            }
            assert_eq!(fast, embed(text), "{text:?}: not the same bits twice");
        }
    }

    /// The buckets of a text are part of every stored embedded index: a
    /// change to the hashing would make stored vectors and new questions
    /// disagree. Pinned: the five content words of this text land, one
    /// each, in these buckets with these signs (weight 1 each, so the
    /// largest entries), and 35 buckets are used.
    #[test]
    fn the_hashing_is_the_one_stored_indexes_were_built_with() {
        let v = embed("Durable Objects keep state at the edge");
        let top = v[10];
        assert!(top > 0.3, "{top}");
        for (bucket, sign) in [(10, 1.0), (42, 1.0), (221, 1.0), (259, 1.0), (321, -1.0)] {
            assert!(
                (v[bucket] - sign * top).abs() < 1e-6,
                "bucket {bucket}: {}",
                v[bucket]
            );
        }
        assert!(v.iter().all(|x| x.abs() <= top + 1e-6));
        assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 35);
    }

    #[test]
    fn words_are_unicode_aware() {
        assert_eq!(
            words("Héllo, WORLD! snake_case 42"),
            vec!["héllo", "world", "snake_case", "42"]
        );
    }
}
