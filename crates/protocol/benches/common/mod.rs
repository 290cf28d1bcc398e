//! What the protocol's benches share: a chunk's metadata as the platform
//! writes it, and a timer.

use protocol::ingest::{MetaValue, Metadata};
use std::time::Instant;

/// A chunk's metadata as the platform writes it: its document, position,
/// title, source and about 1,200 characters of text.
pub fn metadata(i: usize) -> Metadata {
    let text = "Closures can capture values from their environment in three ways, \
                which directly map to the three ways a function can take a parameter. "
        .repeat(9);
    Metadata::from([
        (
            "docId".to_owned(),
            MetaValue::Str(format!("book-ch13-01-closures-{i}")),
        ),
        ("chunk".to_owned(), MetaValue::Int(i as i64 % 7)),
        (
            "title".to_owned(),
            MetaValue::Str("Capturing References or Moving Ownership".into()),
        ),
        (
            "source".to_owned(),
            MetaValue::Str("book/ch13-01-closures.html".into()),
        ),
        ("book".to_owned(), MetaValue::Str("book".into())),
        (
            "tenantId".to_owned(),
            MetaValue::Str("mrrainbowsmoke".into()),
        ),
        ("text".to_owned(), MetaValue::Str(text)),
    ])
}

/// Mean µs of `f` over `n` runs, after a warm-up.
pub fn time(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}
