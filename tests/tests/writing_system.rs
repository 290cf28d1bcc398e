//! Passages in another writing system than the question yield to those in
//! its own, end to end: an English page and its Japanese translation (the
//! same code in both), asked in English and in Japanese.
//!
//! One server of its own: BM25 depends on every chunk of the tenant, so no
//! other test's documents may change the two pages' relevances.

use e2e::corpus::{search_with, TENANT as T};
use e2e::{shared, Deployment};
use serde_json::{json, Value};

/// The matches' document ids and scores, and each one's relevance as
/// retrieval gave it, from its legs' scores (hybrid: 0.3 × vector + 0.7 ×
/// keyword, a leg that missed it counting 0).
fn ranked(results: &Value) -> Vec<(String, f64, f64)> {
    results["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| {
            let leg = |name: &str| m[name].as_f64().unwrap_or(0.0);
            (
                m["id"].as_str().expect("id").to_owned(),
                m["score"].as_f64().expect("score"),
                0.3 * leg("vectorScore") + 0.7 * leg("keywordScore"),
            )
        })
        .collect()
}

#[test]
fn a_translation_yields_to_the_questions_own_writing_system() {
    let server = shared(Deployment::Dedicated(T));
    // The Japanese page is shorter in words, so retrieval alone ranks it
    // first for a question made of the code's words.
    let en = "Conditional compilation: put #[cfg(target_os = \"linux\")] on a function to compile it only for Linux, and cfg!(target_os = \"linux\") checks the same condition at run time. The cfg attribute takes the same predicates as the macro.";
    let ja = "条件付きコンパイル：#[cfg(target_os = \"linux\")] を関数に付けると Linux でのみコンパイルされます。cfg!(target_os = \"linux\") は実行時に同じ条件を判定します。";
    // Other pages, so the code's words are rare in the index (a word in
    // every chunk is worth nothing to BM25).
    let others = [
        "Ownership is a set of rules that govern how a Rust program manages memory.",
        "References let you refer to a value without taking ownership of it.",
        "Closures are anonymous functions you can save in a variable or pass as arguments.",
        "A trait defines functionality a type has and can share with other types.",
        "Cargo is the Rust package manager; cargo test runs the unit and integration tests.",
        "Iterators produce a sequence of values lazily, one at a time.",
    ];
    let mut docs: Vec<Value> = others
        .iter()
        .enumerate()
        .map(|(i, text)| json!({ "id": format!("other-{i}"), "text": text }))
        .collect();
    docs.push(json!({ "id": "wsys-en", "text": en }));
    docs.push(json!({ "id": "wsys-ja", "text": ja }));
    server.ingest(T, Value::Array(docs));
    let ask = |query: &str| {
        ranked(
            &search_with(
                &server,
                json!({ "query": query, "mode": "hybrid", "minScore": 0 }),
            )
            .0,
        )
        .into_iter()
        .filter(|m| m.0.starts_with("wsys-"))
        .collect::<Vec<_>>()
    };

    let english = ask("cfg target_os linux?");
    let ids: Vec<&str> = english.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(ids, ["wsys-en", "wsys-ja"], "{english:?}");
    let (en_match, ja_match) = (&english[0], &english[1]);
    assert!(
        ja_match.2 > en_match.2,
        "the premise: retrieval alone prefers the translation: {english:?}"
    );
    assert!((en_match.1 - en_match.2).abs() < 1e-3, "{english:?}");
    assert!(
        (ja_match.1 - 0.8 * ja_match.2).abs() < 1e-3,
        "the translation at 0.8 of its relevance: {english:?}"
    );

    let japanese = ask("linux で cfg を使うには");
    let ids: Vec<&str> = japanese.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(ids, ["wsys-ja", "wsys-en"], "{japanese:?}");
    let (ja_match, en_match) = (&japanese[0], &japanese[1]);
    assert!((ja_match.1 - ja_match.2).abs() < 1e-3, "{japanese:?}");
    assert!(
        (en_match.1 - 0.8 * en_match.2).abs() < 1e-3,
        "the English page at 0.8 of its relevance: {japanese:?}"
    );
}
