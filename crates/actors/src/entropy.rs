//! Randomness from the runtime's CSPRNG (`crypto.getRandomValues`).

/// 16 random bytes. Only callable inside the Workers runtime.
#[cfg(target_arch = "wasm32")]
pub fn random_bytes() -> [u8; 16] {
    use worker::wasm_bindgen::{self, prelude::wasm_bindgen};
    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
        fn get_random_values(buf: &mut [u8]);
    }
    let mut buf = [0u8; 16];
    get_random_values(&mut buf);
    buf
}

/// Natively (unit tests, tools) there is no `crypto` global; the standard
/// library's randomly seeded hasher gives unpredictable bytes instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn random_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// `n` bytes' worth of random lowercase hex (at most 16 bytes).
pub fn random_hex(n: usize) -> String {
    random_bytes()
        .iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect()
}
