//! The embedded embedder: deterministic hashed features, no model download.
//!
//! It is *not* a neural model and says so in its name (`local/hashed-768`):
//! it maps word unigrams, word bigrams and character trigrams of words into
//! 768 signed buckets (the "hashing trick"), weights them sublinearly by
//! count, and L2-normalises the result. Texts that share words and word parts
//! get similar vectors; paraphrases with no shared words do not. It gives the
//! local platform real, repeatable vectors of the same shape as
//! `@cf/baai/bge-base-en-v1.5`, so every code path runs without Workers AI.

use std::collections::HashMap;

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
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Embeds one text as a unit vector of [`DIMENSIONS`] (all zeros if the text
/// has no words).
pub fn embed(text: &str) -> Vec<f32> {
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
        if let Some(slot) = v.get_mut(bucket) {
            *slot += sign * weight;
        }
    }
    normalize(&mut v);
    v
}

/// Scales `v` to unit length (leaves a zero vector alone).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn fnv1a(kind: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&kind).chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so that the modulo and the sign bit are well mixed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
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

    #[test]
    fn words_are_unicode_aware() {
        assert_eq!(
            words("Héllo, WORLD! snake_case 42"),
            vec!["héllo", "world", "snake_case", "42"]
        );
    }
}
