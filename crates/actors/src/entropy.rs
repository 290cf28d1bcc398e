//! Randomness from the platform's CSPRNG, through `getrandom`: in the Workers
//! runtime that is `crypto.getRandomValues` (its `js` feature), natively the
//! operating system's generator, so unit tests and tools use the same code.

use std::sync::atomic::{AtomicU64, Ordering};

/// 16 random bytes, or the platform's reason for having none.
pub fn try_random_bytes() -> Result<[u8; 16], getrandom::Error> {
    let mut buf = [0u8; 16];
    getrandom::getrandom(&mut buf)?;
    Ok(buf)
}

/// 16 random bytes for ids (request ids, job ids).
///
/// The Workers runtime always has `crypto.getRandomValues`, so the fallback
/// should never run; it exists because a panic would reset the whole isolate
/// (PLATFORM-FACTS.md). It gives bytes that are unique within this instance
/// (a counter) mixed with the standard library's per-process hasher seed:
/// enough for ids to stay distinct, not a secret.
pub fn random_bytes() -> [u8; 16] {
    try_random_bytes().unwrap_or_else(|_| fallback_bytes())
}

fn fallback_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    (u128::from(n) | u128::from(h.finish()) << 64).to_le_bytes()
}

/// `n` bytes' worth of random lowercase hex (at most 16 bytes, so at most 32
/// digits).
pub fn random_hex(n: usize) -> String {
    let bytes = random_bytes();
    hex::encode(bytes.get(..n.min(bytes.len())).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_bounded() {
        let h = random_hex(12);
        assert_eq!(h.len(), 24);
        assert!(
            h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{h}"
        );
        assert_eq!(random_hex(40).len(), 32, "at most 16 bytes");
        assert_eq!(random_hex(0), "");
    }

    #[test]
    fn bytes_differ_between_calls() {
        assert_ne!(random_bytes(), random_bytes());
        assert_ne!(fallback_bytes(), fallback_bytes());
    }
}
