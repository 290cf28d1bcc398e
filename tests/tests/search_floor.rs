//! Relevance scores and the floor end to end, on a tenant that holds only
//! technical documents (the start of five sections of the Rust docs): every
//! score in [0, 1] and in descending order, hybrid matches with their legs'
//! scores, an off-topic question answered with no match (search) and with
//! "found nothing" (chat), `minScore` (0 returns the noise, out of range is a
//! 400, another floor never gets this one's cached answer), and the tenant's
//! `searchFloor` set by a tenant admin.
//!
//! One server of its own (no other test's documents in the tenant) and one
//! test: the tenant's floor changes part way, which would disturb any test
//! running beside it.

use e2e::chat::{answer_text, parse_sse};
use e2e::http::{get, send, Reply};
use e2e::{shared, Deployment, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: &str = "mrrainbowsmoke";

const DOCS: &[(&str, &str)] = &[
    ("traits", "A trait defines the functionality a particular type has and can share with other types. We can use traits to define shared behavior in an abstract way. We can use trait bounds to specify that a generic type can be any type that has certain behavior."),
    ("closures", "Rust's closures are anonymous functions you can save in a variable or pass as arguments to other functions. You can create the closure in one place and then call the closure elsewhere to evaluate it in a different context. Unlike functions, closures can capture values from the scope in which they're defined."),
    ("dependencies", "crates.io is the Rust community's central package registry that serves as a location to discover and download packages. cargo is configured to use it by default to find requested packages. To depend on a library hosted on crates.io, add it to your Cargo.toml."),
    ("errors", "When a function's implementation calls something that might fail, instead of handling the error within the function itself, you can return the error to the calling code so that it can decide what to do. This is known as propagating the error and gives more control to the calling code."),
    ("borrowing", "We can fix the code to allow us to modify a borrowed value with just a few small tweaks that use, instead, a mutable reference. First, we change s to be mut. Then, we create a mutable reference with &mut s where we call the change function, and update the function signature to accept a mutable reference."),
];

const DEFAULT_FLOOR: f64 = 0.35;

fn search(server: &Server, body: Value) -> Reply {
    send(
        "POST",
        &server.url("/api/search"),
        &[
            ("x-tenant-id", T),
            ("authorization", &server.bearer(T)),
            ("content-type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

fn search_ok(server: &Server, body: Value) -> Value {
    let r = search(server, body.clone());
    assert_eq!(r.status, 200, "{body}: {}", r.body);
    r.json()
}

fn matches(results: &Value) -> &Vec<Value> {
    results["matches"].as_array().expect("matches")
}

fn doc_ids(results: &Value) -> Vec<&str> {
    matches(results)
        .iter()
        .map(|m| m["metadata"]["docId"].as_str().unwrap())
        .collect()
}

fn scores(results: &Value) -> Vec<f64> {
    matches(results)
        .iter()
        .map(|m| m["score"].as_f64().unwrap())
        .collect()
}

/// Every score a relevance in [0, 1], best first, none below the floor.
fn assert_scored(results: &Value) {
    let floor = results["minScore"].as_f64().expect("minScore");
    let s = scores(results);
    assert!(
        s.iter().all(|x| (0.0..=1.0).contains(x) && *x >= floor),
        "{results}"
    );
    assert!(s.windows(2).all(|p| p[0] >= p[1]), "descending: {results}");
}

/// Repeats `body` until it is answered from the cache (at most 5 s).
fn eventually_cached(server: &Server, body: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = search_ok(server, body.clone());
        if r["cached"] == true || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn patch_tenant(server: &Server, body: Value) -> Reply {
    // A tenant admin's key (scope `admin`), not the operator's token.
    send(
        "PATCH",
        &server.url("/admin/tenant"),
        &[
            ("x-tenant-id", T),
            ("authorization", &server.bearer(T)),
            ("content-type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

/// Searches `body` until `done` holds for the answer (settings reach the
/// index's isolate within a second).
fn search_until(server: &Server, body: &Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = search_ok(server, body.clone());
        if done(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chat_events(server: &Server, session: &str, message: &str) -> Vec<Value> {
    let r = send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("x-tenant-id", T),
            ("authorization", &server.bearer(T)),
            ("content-type", "application/json"),
        ],
        Some(
            json!({ "sessionId": session, "message": message })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    parse_sse(r.body.as_bytes())
        .into_iter()
        .map(|e| e.data)
        .collect()
}

#[test]
fn scores_are_relevances_and_the_floor_keeps_off_topic_questions_out() {
    let server = shared(Deployment::Dedicated(T));
    let docs: Vec<Value> = DOCS
        .iter()
        .map(|(id, text)| json!({ "id": id, "text": text }))
        .collect();
    server.ingest(T, Value::Array(docs));

    // Off-topic: nothing in the default mode (hybrid).
    let banana = json!({ "query": "banana bread recipe" });
    let r = search_ok(&server, banana.clone());
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(r["minScore"], DEFAULT_FLOOR, "{r}");
    assert!(matches(&r).is_empty(), "off-topic must find nothing: {r}");
    for q in ["who won the football world cup", "cheap flights to Lisbon"] {
        let r = search_ok(&server, json!({ "query": q }));
        assert!(matches(&r).is_empty(), "{q}: {r}");
    }
    // Vector mode has no default floor (its scores alone do not separate
    // off-topic questions here); a floor the search sets applies.
    let r = search_ok(
        &server,
        json!({ "query": "banana bread recipe", "mode": "vector" }),
    );
    assert_eq!(r["minScore"], 0.0, "{r}");
    let r = search_ok(
        &server,
        json!({ "query": "banana bread recipe", "mode": "vector", "minScore": DEFAULT_FLOOR }),
    );
    assert!(matches(&r).is_empty(), "vector with a floor: {r}");

    // minScore 0: the noise the floor held back, every score below it.
    let noise = search_ok(
        &server,
        json!({ "query": "banana bread recipe", "minScore": 0 }),
    );
    assert_eq!(noise["minScore"], 0.0);
    assert!(!matches(&noise).is_empty(), "{noise}");
    assert_scored(&noise);
    assert!(scores(&noise).iter().all(|s| *s < DEFAULT_FLOOR), "{noise}");

    // A cached answer with one floor is never served to another.
    let noisy = json!({ "query": "banana bread recipe", "minScore": 0 });
    assert_eq!(eventually_cached(&server, &noisy)["cached"], true);
    let r = search_ok(&server, banana.clone());
    assert!(
        matches(&r).is_empty(),
        "the floor's own answer, not the cached noise: {r}"
    );

    // On-topic: the right passage first, scores in [0, 1], descending.
    for (q, want) in [
        ("closures that capture values from their scope", "closures"),
        (
            "add a dependency from crates.io to Cargo.toml",
            "dependencies",
        ),
        (
            "modify a borrowed value with a mutable reference",
            "borrowing",
        ),
    ] {
        for mode in ["hybrid", "keyword"] {
            let r = search_ok(&server, json!({ "query": q, "mode": mode }));
            assert_eq!(doc_ids(&r).first(), Some(&want), "{mode}: {q}: {r}");
            assert_scored(&r);
        }
        let r = search_ok(
            &server,
            json!({ "query": q, "mode": "vector", "minScore": 0 }),
        );
        assert_eq!(doc_ids(&r).first(), Some(&want), "vector: {q}: {r}");
        assert_scored(&r);
        for m in matches(&r) {
            assert!(m.get("vectorScore").is_none() && m.get("keywordScore").is_none());
        }
    }

    // Hybrid matches carry their legs; the score weighs them 0.3 (vector)
    // and 0.7 (keyword), a missing leg counting 0 (and left out).
    let r = search_ok(
        &server,
        json!({ "query": "closures that capture values from their scope", "minScore": 0 }),
    );
    assert_scored(&r);
    let top = &matches(&r)[0];
    let (v, k) = (
        top["vectorScore"]
            .as_f64()
            .expect("both legs found the top match"),
        top["keywordScore"]
            .as_f64()
            .expect("both legs found the top match"),
    );
    assert!(
        (0.0..=1.0).contains(&v) && (0.0..=1.0).contains(&k),
        "{top}"
    );
    assert!(
        (top["score"].as_f64().unwrap() - (0.3 * v + 0.7 * k)).abs() < 1e-9,
        "{top}"
    );
    for m in matches(&r) {
        let leg = |name: &str| m.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        let want = 0.3 * leg("vectorScore") + 0.7 * leg("keywordScore");
        assert!((m["score"].as_f64().unwrap() - want).abs() < 1e-9, "{m}");
        assert!(m.get("vectorScore").is_some() || m.get("keywordScore").is_some());
    }

    // Out of range: a clear 400, for the request and for the setting.
    for bad in [json!(1.5), json!(-0.1), json!("high")] {
        let r = search(&server, json!({ "query": "closures", "minScore": bad }));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            matches!(r.error_code().as_str(), "invalid_search" | "invalid_json"),
            "{}",
            r.body
        );
    }
    let r = search(&server, json!({ "query": "closures", "minScore": 1.5 }));
    assert_eq!(r.error_code(), "invalid_search");
    let r = patch_tenant(&server, json!({ "searchFloor": 2 }));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_settings")
    );

    // Chat: the model's search gets no passage, the answer cites none.
    let events = chat_events(
        &server,
        "floor-banana",
        "what's a good banana bread recipe?",
    );
    assert_eq!(events[0]["tool"], "vector_search", "{events:?}");
    let result = &events[1]["result"];
    assert_eq!(result["matches"], json!([]), "{result}");
    let text = answer_text(&events);
    assert!(text.contains("found nothing"), "{text}");
    assert!(!text.contains("[1]") && !text.contains("Sources"), "{text}");
    assert_eq!(events.last().unwrap()["type"], "done");
    // An on-topic question is still answered with its passage.
    let events = chat_events(
        &server,
        "floor-closures",
        "do closures capture values from their scope?",
    );
    assert!(answer_text(&events).contains("[1] closures"), "{events:?}");

    // The tenant's floor: a tenant admin lowers it to 0, and searches
    // without minScore (and the chat) get what it no longer holds back.
    let r = patch_tenant(&server, json!({ "searchFloor": 0 }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"]["settings"]["searchFloor"], 0.0);
    let r = search_until(&server, &banana, |r| !matches(r).is_empty());
    assert_eq!(r["minScore"], 0.0, "{r}");
    assert!(!matches(&r).is_empty(), "{r}");
    // Back to the default: off-topic is empty again.
    let r = patch_tenant(&server, json!({ "searchFloor": null }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"]["settings"]["searchFloor"], Value::Null);
    let r = search_until(&server, &banana, |r| matches(r).is_empty());
    assert_eq!(r["minScore"], DEFAULT_FLOOR, "{r}");
    assert!(matches(&r).is_empty(), "{r}");
    let tenant = get(
        &server.url("/admin/tenant"),
        &[("x-tenant-id", T), ("authorization", &server.bearer(T))],
    );
    assert_eq!(
        tenant.json()["tenant"]["settings"]["searchFloor"],
        Value::Null
    );
}
