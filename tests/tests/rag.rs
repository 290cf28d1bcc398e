//! Ingestion and search end to end against `wrangler dev`, with the embedded
//! embedder and the embedded SQLite/FTS5 index: jobs, retrieval in every mode,
//! the KV cache and its invalidation, replace and delete, tenant isolation,
//! bad input, injected embedder failures, a job given up for good, the
//! backlog and index bounds, and a restart in the middle of a job.

use e2e::http::{assert_refusals, get, send, RefusalCase, Reply};
use e2e::{shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";
const INGEST: &str = "Bearer e2e-ingest-token";
const ADMIN: &str = "Bearer e2e-admin-token";

struct Client<'a> {
    server: &'a Server,
    tenant: &'a str,
}

impl Client<'_> {
    fn post(&self, path: &str, auth: Option<&str>, body: &Value) -> Reply {
        let mut headers = vec![
            ("x-tenant-id", self.tenant),
            ("content-type", "application/json"),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        send(
            "POST",
            &self.server.url(path),
            &headers,
            Some(body.to_string().as_bytes()),
        )
    }

    fn ingest(&self, docs: Value) -> Reply {
        self.post("/api/ingest", Some(INGEST), &json!({ "documents": docs }))
    }

    /// Ingests and waits until the job is done; returns the job.
    fn ingest_done(&self, docs: Value) -> Value {
        let r = self.ingest(docs);
        assert!(matches!(r.status, 200 | 202), "{}", r.body);
        let job_id = r.json()["jobId"].as_str().unwrap().to_owned();
        self.wait_job(&job_id)
    }

    fn job(&self, job_id: &str) -> Reply {
        get(
            &self.server.url(&format!("/api/ingest/{job_id}")),
            &[("x-tenant-id", self.tenant), ("authorization", INGEST)],
        )
    }

    fn wait_job(&self, job_id: &str) -> Value {
        let job = self.wait_finished(job_id);
        assert_eq!(job["status"], "done", "{job}");
        job
    }

    /// Waits until the job is `done` or `failed`; returns it.
    fn wait_finished(&self, job_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.job(job_id);
            assert_eq!(r.status, 200, "{}", r.body);
            let job = r.json();
            if job["status"] == "done" || job["status"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "job not finished in 60 s: {job}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn search(&self, body: Value) -> Reply {
        self.post("/api/search", Some(&self.server.bearer(self.tenant)), &body)
    }

    fn search_ok(&self, body: Value) -> Value {
        let r = self.search(body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    fn delete(&self, doc_id: &str) -> Reply {
        send(
            "DELETE",
            &self.server.url(&format!("/api/documents/{doc_id}")),
            &[("x-tenant-id", self.tenant), ("authorization", INGEST)],
            None,
        )
    }

    fn inspect(&self) -> Value {
        let r = get(
            &self
                .server
                .url(&format!("/admin/actors/ingest/{}", self.tenant)),
            &[("x-tenant-id", self.tenant), ("authorization", ADMIN)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["state"].clone()
    }

    fn inject_faults(&self, n: u32) {
        let r = self.post("/admin/faults", Some(ADMIN), &json!({ "embedFailures": n }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn doc_ids(results: &Value) -> Vec<String> {
    results["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metadata"]["docId"].as_str().unwrap().to_owned())
        .collect()
}

const DOCS: &[(&str, &str)] = &[
    ("ownership", "Ownership is a set of rules that govern how a Rust program manages memory. Each value has an owner, and the value is dropped when the owner goes out of scope."),
    ("borrowing", "References let you refer to a value without taking ownership of it. The borrow checker enforces that you have either one mutable reference or any number of immutable references."),
    ("cargo-build", "Cargo is the Rust package manager. cargo build compiles the package and its dependencies, and cargo test runs the unit and integration tests."),
    ("closures", "Closures are anonymous functions you can save in a variable or pass as arguments. They capture values from the scope in which they are defined."),
    ("traits", "A trait defines functionality a type has and can share with other types. Trait bounds specify that a generic type can be any type with certain behavior."),
];

fn corpus() -> Value {
    Value::Array(
        DOCS.iter()
            .map(|(id, text)| json!({ "id": id, "text": text, "metadata": { "source": format!("{id}.md") } }))
            .collect(),
    )
}

#[test]
fn ingest_then_search_in_every_mode() {
    let server = shared(Deployment::Dedicated(B));
    let c = Client {
        server: &server,
        tenant: B,
    };
    let job = c.ingest_done(corpus());
    assert_eq!(job["documentsTotal"], 5);
    assert_eq!(job["documentsDone"], 5);
    assert_eq!(job["attempts"], 0);
    let queries = [
        (
            "ownership",
            "how does a rust program manage memory with an owner",
        ),
        ("borrowing", "mutable reference rules of the borrow checker"),
        ("cargo-build", "compile the package with cargo build"),
        ("closures", "anonymous functions that capture values"),
    ];
    for mode in ["vector", "keyword", "hybrid"] {
        for (want, query) in queries {
            let r = c.search_ok(json!({ "query": query, "topK": 3, "mode": mode }));
            assert_eq!(r["mode"], mode);
            assert_eq!(
                doc_ids(&r).first().map(String::as_str),
                Some(want),
                "{mode}: {query}: {r}"
            );
            let top = &r["matches"][0];
            assert_eq!(top["metadata"]["tenantId"], B);
            assert_eq!(top["metadata"]["source"], format!("{want}.md"));
            assert!(top["metadata"]["text"].as_str().unwrap().len() > 20);
            // Per document by default, as in the seed: `id` is the
            // document's, beside its best chunk.
            assert_eq!(top["id"], want, "{r}");
            assert_eq!(top["docId"], want);
            assert_eq!(top["chunkId"].as_str().unwrap().len(), 40);
            assert_eq!(top["chunk"], 0);
            assert_eq!(top["text"], top["metadata"]["text"]);
        }
    }
    // The default mode is hybrid, topK defaults to 5, and a filter narrows.
    let r = c.search_ok(json!({ "query": "rust values and references" }));
    assert_eq!(r["mode"], "hybrid");
    assert!(r["matches"].as_array().unwrap().len() <= 5);
    // A filter narrows whatever the relevance (the floor would drop this
    // vague question's match in traits.md, so it is lowered to 0).
    let r = c.search_ok(json!({
        "query": "rust values and references",
        "filter": { "source": "traits.md" },
        "minScore": 0
    }));
    assert_eq!(doc_ids(&r), vec!["traits"]);
}

#[test]
fn matches_are_documents_by_default_and_chunks_on_request() {
    let server = shared(Deployment::Dedicated(A));
    let c = Client {
        server: &server,
        tenant: A,
    };
    // Three paragraphs (of 599, 449 and 639 characters) no two of which
    // fit one chunk: three chunks of one document, each holding one word of
    // the query a different number of times, so their scores differ.
    let para = |word: &str, n: usize| format!("{word} ").repeat(n);
    let text = format!(
        "{}\n\n{}\n\n{}",
        para("okapi", 100),
        para("ibex", 90),
        para("gazelle", 80)
    );
    let job = c.ingest_done(json!([{ "id": "grouped-doc", "text": text }]));
    assert_eq!(job["chunksDone"], 3);
    let q = |group: Option<&str>| {
        let mut q = json!({ "query": "okapi ibex gazelle", "mode": "keyword", "minScore": 0,
                            "filter": { "docId": "grouped-doc" } });
        if let Some(group) = group {
            q["group"] = json!(group);
        }
        q
    };
    let chunks = c.search_ok(q(Some("chunk")));
    let matches = chunks["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 3, "{chunks}");
    let mut positions: Vec<u64> = matches
        .iter()
        .map(|m| m["chunk"].as_u64().unwrap())
        .collect();
    positions.sort();
    assert_eq!(positions, [0, 1, 2]);
    for m in matches {
        assert_eq!(m["id"], m["chunkId"], "raw chunks: the vector id");
        assert_eq!(m["id"].as_str().unwrap().len(), 40);
        assert_eq!(m["docId"], "grouped-doc");
        assert_eq!(m["text"], m["metadata"]["text"]);
    }
    for by_document in [c.search_ok(q(None)), c.search_ok(q(Some("document")))] {
        let matches = by_document["matches"].as_array().unwrap();
        assert_eq!(matches.len(), 1, "one per document: {by_document}");
        let best = &matches[0];
        assert_eq!(best["id"], "grouped-doc");
        assert_eq!(
            best["chunkId"], chunks["matches"][0]["id"],
            "the best chunk"
        );
        assert_eq!(best["chunk"], chunks["matches"][0]["chunk"]);
        // Not the score itself: it is scaled by the whole index, which the
        // tests running beside this one grow between the two searches.
    }
    // Another grouping is another answer, never the cached one.
    let again = c.search_ok(q(Some("chunk")));
    assert_eq!(again["matches"].as_array().unwrap().len(), 3, "{again}");

    let r = c.search(json!({ "query": "okapi", "group": "page" }));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_search"),
        "{}",
        r.body
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("group"));

    // A client written against the seed: no content type, `id` and
    // `metadata.text` of each match.
    let r = send(
        "POST",
        &server.url("/api/search"),
        &[("authorization", &server.bearer(A))],
        Some(br#"{"query":"okapi ibex gazelle","topK":5}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seed = r.json();
    let top = &seed["matches"][0];
    assert_eq!(top["id"], "grouped-doc", "{seed}");
    let text = top["metadata"]["text"].as_str().unwrap();
    assert!(
        ["okapi", "ibex", "gazelle"]
            .iter()
            .any(|w| text.contains(w)),
        "one of the document's passages: {text}"
    );
    assert!(top["score"].as_f64().is_some());
    assert_eq!(seed["cached"], false);
}

/// Repeats a search until it is answered from the cache (at most 5 s).
fn eventually_cached(c: &Client, q: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.search_ok(q.clone());
        if r["cached"] == true || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cache_hits_and_invalidation() {
    let server = shared(Deployment::Dedicated(A));
    let c = Client {
        server: &server,
        tenant: A,
    };
    c.ingest_done(json!([{ "id": "cache-1", "text": "Workers KV is an eventually consistent key value store." }]));
    // No floor: this is about the cache, not about relevance.
    let q = json!({ "query": "eventually consistent key value store", "topK": 2, "minScore": 0 });
    let first = c.search_ok(q.clone());
    assert_eq!(first["cached"], false);
    // The cache is written after the answer, so it is there a moment later.
    let second = eventually_cached(&c, &q);
    assert_eq!(second["cached"], true);
    assert_eq!(second["matches"], first["matches"]);
    // Whitespace and case do not change the question.
    let same = c.search_ok(
        json!({ "query": "  Eventually consistent KEY value store ", "topK": 2, "minScore": 0 }),
    );
    assert_eq!(same["cached"], true);
    // New content bumps the index version: the cached answer is bypassed.
    c.ingest_done(json!([{ "id": "cache-2", "text": "A key value store that is strongly consistent: Durable Objects storage." }]));
    let third = c.search_ok(q);
    assert_eq!(third["cached"], false);
    assert!(third["indexVersion"].as_u64() > first["indexVersion"].as_u64());
    assert!(doc_ids(&third).contains(&"cache-2".to_owned()), "{third}");
}

#[test]
fn reingest_replaces_and_delete_removes() {
    let server = shared(Deployment::Dedicated(A));
    let c = Client {
        server: &server,
        tenant: A,
    };
    // Three paragraphs of 480 to 840 characters, no two fitting one chunk.
    let para = |word: &str| format!("{word} ").repeat(120);
    let long = format!("{}\n\n{}\n\n{}", para("zebra"), para("yak"), para("walrus"));
    let job = c.ingest_done(json!([{ "id": "replace-me", "text": long }]));
    assert_eq!(job["chunksDone"], 3);
    let r = c.search_ok(json!({ "query": "walrus", "mode": "keyword" }));
    assert_eq!(doc_ids(&r), vec!["replace-me"]);
    let chunks_before = c.inspect()["chunks"].as_u64().unwrap();

    let job = c.ingest_done(json!([{ "id": "replace-me", "text": "Only a zebra is left." }]));
    assert_eq!(job["chunksDone"], 1);
    let r = c.search_ok(json!({ "query": "walrus", "mode": "keyword" }));
    assert!(doc_ids(&r).is_empty(), "old chunks must be gone: {r}");
    let r = c.search_ok(json!({ "query": "zebra", "mode": "keyword" }));
    assert_eq!(r["matches"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["matches"][0]["metadata"]["text"], "Only a zebra is left.");
    assert_eq!(c.inspect()["chunks"].as_u64().unwrap(), chunks_before - 2);

    let r = c.delete("replace-me");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "ok": true, "docId": "replace-me", "chunksRemoved": 1 })
    );
    for mode in ["keyword", "vector", "hybrid"] {
        let r = c.search_ok(json!({ "query": "zebra", "mode": mode }));
        assert!(
            !doc_ids(&r).contains(&"replace-me".to_owned()),
            "{mode}: {r}"
        );
    }
    let r = c.delete("replace-me");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
}

#[test]
fn tenants_never_see_each_other() {
    let server = shared(Deployment::Shared);
    let a = Client {
        server: &server,
        tenant: A,
    };
    let b = Client {
        server: &server,
        tenant: B,
    };
    // Same document id, same query, different texts.
    let job_a = a.ingest_done(
        json!([{ "id": "same-id", "text": "Alpha tenant secret: the launch code is marigold." }]),
    );
    b.ingest_done(
        json!([{ "id": "same-id", "text": "Beta tenant notes: the launch is delayed to spring." }]),
    );
    // No floor: B's text shares one word with the question.
    let q = json!({ "query": "launch code", "topK": 5, "minScore": 0 });
    let ra = a.search_ok(q.clone());
    let rb = b.search_ok(q.clone());
    assert_eq!(ra["cached"], false);
    assert_eq!(rb["cached"], false, "B must not get A's cache entry");
    for (r, tenant, word) in [(&ra, A, "marigold"), (&rb, B, "spring")] {
        let matches = r["matches"].as_array().unwrap();
        assert!(!matches.is_empty());
        for m in matches {
            assert_eq!(m["metadata"]["tenantId"], tenant, "{r}");
        }
        assert!(matches[0]["metadata"]["text"]
            .as_str()
            .unwrap()
            .contains(word));
    }
    assert_eq!(ra["matches"][0]["id"], "same-id");
    assert_eq!(rb["matches"][0]["id"], "same-id");
    assert_ne!(
        ra["matches"][0]["chunkId"], rb["matches"][0]["chunkId"],
        "vector ids differ per tenant"
    );
    assert!(!rb.to_string().contains("marigold"));
    // A's job id means nothing to B.
    let job_id = job_a["jobId"].as_str().unwrap();
    assert_eq!(b.job(job_id).status, 404);
    assert_eq!(a.job(job_id).status, 200);
    // Deleting in B leaves A's document alone.
    assert_eq!(b.delete("same-id").status, 200);
    let ra2 = a.search_ok(json!({ "query": "marigold", "mode": "keyword" }));
    assert_eq!(doc_ids(&ra2), vec!["same-id"]);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let server = shared(Deployment::Dedicated(B));
    let c = Client {
        server: &server,
        tenant: B,
    };
    c.ingest_done(json!([{ "id": "keep", "text": "Kept document." }]));
    let before = c.inspect();
    let url = server.url("/api/ingest");
    let auth = ("authorization", INGEST);
    let ct = ("content-type", "application/json");
    let big_text = "x".repeat(1024 * 1024 + 1);
    let cases: Vec<RefusalCase> = vec![
        (
            "no token",
            vec![ct],
            br#"{"documents":[{"id":"a","text":"b"}]}"#.to_vec(),
            401,
            "missing_key",
        ),
        (
            "a form",
            vec![auth, ("content-type", "application/x-www-form-urlencoded")],
            br#"{"documents":[{"id":"a","text":"b"}]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "text/plain, not JSON",
            vec![auth, ("content-type", "text/plain")],
            b"x".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "bad json",
            vec![auth, ct],
            b"{\"documents\":".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "wrong type",
            vec![auth, ct],
            br#"{"documents":"a"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "missing field",
            vec![auth, ct],
            br#"{"documents":[{"id":"a"}]}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "no documents",
            vec![auth, ct],
            br#"{"documents":[]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "bad id",
            vec![auth, ct],
            br#"{"documents":[{"id":"../x","text":"b"}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "empty text",
            vec![auth, ct],
            br#"{"documents":[{"id":"a","text":"  "}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "dotted metadata key",
            vec![auth, ct],
            br#"{"documents":[{"id":"a","text":"b","metadata":{"a.b":1}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "spoofed tenant",
            vec![auth, ct],
            br#"{"documents":[{"id":"a","text":"b","metadata":{"tenantId":"mrrainbowsmoke"}}]}"#
                .to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "a whole number JavaScript cannot hold exactly",
            vec![auth, ct],
            br#"{"documents":[{"id":"a","text":"b","metadata":{"n":9007199254740993}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "oversized text",
            vec![auth, ct],
            json!({"documents":[{"id":"a","text":big_text}]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_documents",
        ),
        (
            "oversized body",
            vec![auth, ct],
            vec![b' '; 9 * 1024 * 1024],
            413,
            "payload_too_large",
        ),
    ];
    assert_refusals("POST", &url, cases);
    for (what, body, code) in [
        (
            "huge topK",
            json!({"query":"x","topK":1000}),
            "invalid_search",
        ),
        ("zero topK", json!({"query":"x","topK":0}), "invalid_search"),
        ("empty query", json!({"query":""}), "invalid_search"),
        (
            "a filter's number beyond 2^53",
            json!({"query":"x","filter":{"n":9_007_199_254_740_993u64}}),
            "invalid_search",
        ),
        (
            "a filter of 1901 bytes",
            json!({"query":"x","filter":{"k":"v".repeat(1893)}}),
            "invalid_search",
        ),
        ("missing query", json!({"topK":3}), "invalid_json"),
        ("wrong type", json!({"query":["x"]}), "invalid_json"),
        (
            "unknown mode",
            json!({"query":"x","mode":"magic"}),
            "invalid_json",
        ),
    ] {
        let r = c.search(body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, code),
            "{what}: {}",
            r.body
        );
    }
    let r = c.job("job-000000000000000000000000");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = c.job("not-a-job");
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_job_id"));
    assert_eq!(c.delete("no-such-doc").status, 404);
    let r = send(
        "DELETE",
        &server.url("/api/documents/keep"),
        &[("x-tenant-id", B)],
        None,
    );
    assert_eq!(r.status, 401, "delete needs the ingest token");
    // Nothing above changed the index.
    let after = c.inspect();
    assert_eq!(after["indexVersion"], before["indexVersion"]);
    assert_eq!(after["documents"], before["documents"]);
    assert_eq!(after["chunks"], before["chunks"]);
}

#[test]
fn embedder_failures_are_retried_and_nothing_is_lost() {
    // A server of its own: armed failures are the tenant's, and another
    // test's job on a shared server could take them.
    let dir = PersistDir::new("rag-faults");
    let server = Server::start(Deployment::Dedicated(B), &dir);
    let c = Client {
        server: &server,
        tenant: B,
    };
    c.inject_faults(2);
    let r = c.ingest(json!([
        { "id": "retry-1", "text": "Retried document about lighthouses." },
        { "id": "retry-2", "text": "Second retried document about harbours." }
    ]));
    assert_eq!(
        r.status, 202,
        "the first attempt fails, so the job is queued: {}",
        r.body
    );
    assert_eq!(r.json()["status"], "queued");
    let job_id = r.json()["jobId"].as_str().unwrap().to_owned();
    let pending = c.job(&job_id).json();
    assert_eq!(pending["status"], "retrying", "{pending}");
    assert!(pending["lastError"].as_str().unwrap().contains("injected"));
    // A document with an unfinished job cannot be deleted under it.
    let r = c.delete("retry-1");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "busy"),
        "{}",
        r.body
    );
    let job = c.wait_job(&job_id);
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["documentsDone"], 2);
    assert_eq!(job["chunksDone"], 2, "no chunk duplicated");
    for (q, want) in [("lighthouses", "retry-1"), ("harbours", "retry-2")] {
        let r = c.search_ok(json!({ "query": q, "mode": "keyword" }));
        assert_eq!(doc_ids(&r), vec![want]);
    }
}

#[test]
fn a_restart_in_the_middle_of_a_job_resumes_it() {
    let dir = PersistDir::new("rag-restart");
    let job_id;
    {
        let server = Server::start(Deployment::Dedicated(A), &dir);
        let c = Client {
            server: &server,
            tenant: A,
        };
        // Failures keep the job waiting (1 s, then 2 s, then 4 s backoff).
        c.inject_faults(3);
        let r = c.ingest(json!([
            { "id": "survivor-1", "text": "Persisted through a restart: pelicans." },
            { "id": "survivor-2", "text": "Also persisted through a restart: flamingos." }
        ]));
        assert_eq!(r.status, 202, "{}", r.body);
        job_id = r.json()["jobId"].as_str().unwrap().to_owned();
        assert_eq!(c.job(&job_id).json()["status"], "retrying");
    } // wrangler dev stops here, mid-job
    let server = Server::start(Deployment::Dedicated(A), &dir);
    let c = Client {
        server: &server,
        tenant: A,
    };
    // Nothing wakes the object but its alarm.
    let job = c.wait_job(&job_id);
    assert_eq!(job["documentsDone"], 2);
    assert_eq!(job["attempts"], 3);
    let state = c.inspect();
    assert_eq!(state["documents"], 2);
    assert_eq!(state["chunks"], 2);
    assert_eq!(state["pendingJobs"], json!([]));
    for (q, want) in [("pelicans", "survivor-1"), ("flamingos", "survivor-2")] {
        let r = c.search_ok(json!({ "query": q, "mode": "keyword" }));
        assert_eq!(doc_ids(&r), vec![want]);
    }
}

#[test]
fn bounds_refuse_early_and_a_failed_job_leaves_its_documents_deletable() {
    let dir = PersistDir::new("rag-bounds");
    // Lowered bounds, so each is reached in a second: give up after 2
    // attempts, 4,000 bytes of unfinished text, 4 chunks in the index.
    let server = Server::start_with_vars(
        Deployment::Dedicated(A),
        &dir,
        &[
            ("INGEST_MAX_ATTEMPTS", "2"),
            ("INGEST_MAX_BACKLOG_BYTES", "4000"),
            ("EMBEDDED_MAX_CHUNKS", "4"),
        ],
    );
    let c = Client {
        server: &server,
        tenant: A,
    };
    let job = c.ingest_done(json!([{ "id": "doomed", "text": "The first version is indexed." }]));
    assert_eq!(job["chunksDone"], 1);

    // A re-ingest that fails on every attempt (2 failures armed, 2 attempts).
    c.inject_faults(2);
    let r = c.ingest(json!([{ "id": "doomed", "text": "doomed ".repeat(350) }]));
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["jobId"].as_str().unwrap().to_owned();

    // While it waits for its retry, its 2,450 bytes are backlog: 2,000 more
    // would pass the bound of 4,000.
    let r = c.ingest(json!([{ "id": "later", "text": "x".repeat(2000) }]));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "backlog_full"),
        "{}",
        r.body
    );

    let job = c.wait_finished(&job_id);
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_u64()),
        (Some("failed"), Some(2)),
        "{job}"
    );
    assert!(
        job["lastError"].as_str().unwrap().contains("injected"),
        "{job}"
    );
    assert_eq!(c.inspect()["pendingJobs"], json!([]));
    // Bug: the failed job's stored documents made this a 409 forever.
    let r = c.delete("doomed");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["chunksRemoved"], 1, "the indexed (first) version");

    // Five paragraphs that cannot share a chunk: 5 chunks, over the bound
    // of 4, refused at enqueue time before anything is stored.
    let para = |w: &str| format!("{w} ").repeat(120);
    let text = ["alpha", "bravo", "charlie", "delta", "echo"]
        .map(para)
        .join("\n\n");
    let r = c.ingest(json!([{ "id": "too-big", "text": text }]));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "index_full"),
        "{}",
        r.body
    );
    let state = c.inspect();
    assert_eq!(
        (state["documents"].as_u64(), state["chunks"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(state["pendingJobs"], json!([]));
    // Within the bound it is fine.
    let fits = ["alpha", "bravo"].map(para).join("\n\n");
    let job = c.ingest_done(json!([{ "id": "fits", "text": fits }]));
    assert_eq!(job["chunksDone"], 2);
}

/// Waits until each of `n` search replicas is at the writer's last change.
fn caught_up(c: &Client, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seq = c.inspect()["replication"]["seq"].clone();
        let behind = (0..n).any(|k| {
            let r = get(
                &c.server.url(&format!("/admin/actors/search/{k}")),
                &[("x-tenant-id", c.tenant), ("authorization", ADMIN)],
            );
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["state"]["seq"] != seq
        });
        if !behind {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not at change {seq} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The index keeps its chunk count between writes (counted once, then
/// changed by each insert, replacement and delete); keyword relevance is
/// scaled by it. The scores after a run of writes must be those a fresh
/// count gives after a restart, on the writer (no replicas) and on the
/// replicas (the default, once they hold the index: the writer answers
/// none of the searches). A document of 40 new chunks, written after the
/// count was taken, takes three multi-row statements (33 rows at most) on
/// the writer and the replicas.
#[test]
fn the_kept_chunk_count_is_the_stored_one() {
    let para = |word: &str| format!("{word} ").repeat(120);
    let long = format!("{}\n\n{}\n\n{}", para("zebra"), para("yak"), para("walrus"));
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("token{i}x ").repeat(80))
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let query = json!({ "query": "the value goes out of scope with its owner", "mode": "keyword" });
    let scores = |r: &Value| -> Vec<(String, f64)> {
        r["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let chunk_texts = |c: &Client, word: &str| -> Vec<String> {
        let r = c.search_ok(json!({ "query": word, "mode": "keyword", "group": "chunk" }));
        r["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["metadata"]["text"].as_str().unwrap().to_owned())
            .collect()
    };
    for vars in [&[("SEARCH_REPLICAS", "0")][..], &[]] {
        let dir = PersistDir::new("rag-count");
        let before;
        {
            let server = Server::start_with_vars(Deployment::Dedicated(A), &dir, vars);
            let c = Client {
                server: &server,
                tenant: A,
            };
            let replicas = vars.is_empty();
            let mut docs = corpus();
            let list = docs.as_array_mut().unwrap();
            list.push(json!({ "id": "shrinks", "text": long }));
            assert_eq!(c.ingest_done(docs)["chunksDone"], 8);
            if replicas {
                // New replicas copy the index first; the searches below are
                // theirs only once they hold it.
                caught_up(&c, 2);
            }
            // Counted here, then kept through the writes below.
            assert!(!scores(&c.search_ok(query.clone())).is_empty());
            // 40 new rows: two statements of 33 and one of 7.
            let job = c.ingest_done(json!([{ "id": "many", "text": many(40) }]));
            assert_eq!(job["chunksDone"], 40);
            let job =
                c.ingest_done(json!([{ "id": "shrinks", "text": "A zebra owns its scope." }]));
            assert_eq!(job["chunksDone"], 1);
            assert_eq!(c.delete("closures").status, 200);
            c.ingest_done(json!([
                { "id": "drop", "text": "A value is dropped when its owner goes out of scope." }
            ]));
            let job = c.ingest_done(json!([{ "id": "many", "text": many(35) }]));
            assert_eq!(job["chunksDone"], 35);
            // The documents' records (the index's own count is what the
            // scores below check).
            assert_eq!(c.inspect()["chunks"], 41);
            for (word, want) in [("token0x", true), ("token34x", true), ("token35x", false)] {
                let texts = chunk_texts(&c, word);
                assert_eq!(
                    texts.len(),
                    usize::from(want),
                    "{vars:?}: {word}: {texts:?}"
                );
                assert!(
                    texts.iter().all(|t| t.starts_with(word)),
                    "{vars:?}: {texts:?}"
                );
            }
            before = scores(&c.search_ok(query.clone()));
            if replicas {
                let searches = &c.inspect()["replication"]["searches"];
                assert_eq!(searches, 0, "the replicas answered every search");
            }
        }
        let server = Server::start_with_vars(Deployment::Dedicated(A), &dir, vars);
        let c = Client {
            server: &server,
            tenant: A,
        };
        let after = scores(&c.search_ok(query.clone()));
        assert!(before.len() > 1, "{vars:?}: {before:?}");
        assert_eq!(
            before.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            after.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "{vars:?}"
        );
        for ((id, b), (_, a)) in before.iter().zip(&after) {
            assert!(
                (a - b).abs() < 1e-9,
                "{vars:?}: {id}: {b} before the restart, {a} after"
            );
        }
    }
}
