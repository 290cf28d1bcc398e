//! Search replicas end to end against `wrangler dev`: once the replicas
//! hold a copy, every search and embedding is answered by a
//! `SearchReplica`, none by the tenant's writer (`IngestQueue`); a search
//! sent after a job is done or a delete answered sees it on every replica
//! (read-your-writes); a replica that is new, or that was left out of the
//! writer's changes, copies the index in the background (its searches are
//! answered by the writer meanwhile) and then answers exactly what the
//! writer holds.

use actors::replica::replica_for;
use e2e::http::{get, send, Reply};
use e2e::{Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const INGEST: &str = "Bearer e2e-ingest-token";
const ADMIN: &str = "Bearer e2e-admin-token";

fn post(server: &Server, path: &str, auth: &str, body: &Value) -> Reply {
    send(
        "POST",
        &server.url(path),
        &[
            ("x-tenant-id", A),
            ("content-type", "application/json"),
            ("authorization", auth),
        ],
        Some(body.to_string().as_bytes()),
    )
}

fn ingest_done(server: &Server, docs: Value) {
    let r = post(server, "/api/ingest", INGEST, &json!({ "documents": docs }));
    assert!(matches!(r.status, 200 | 202), "{}", r.body);
    let job_id = r.json()["jobId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(
            &server.url(&format!("/api/ingest/{job_id}")),
            &[("x-tenant-id", A), ("authorization", INGEST)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let job = r.json();
        if job["status"] == "done" {
            return;
        }
        assert_ne!(job["status"], "failed", "{job}");
        assert!(Instant::now() < deadline, "job not done in 60 s: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn inspect(server: &Server, kind: &str, name: &str) -> Reply {
    get(
        &server.url(&format!("/admin/actors/{kind}/{name}")),
        &[("x-tenant-id", A), ("authorization", ADMIN)],
    )
}

fn writer(server: &Server) -> Value {
    let r = inspect(server, "ingest", A);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"].clone()
}

fn replica(server: &Server, k: u32) -> Value {
    let r = inspect(server, "search", &k.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], format!("{A}:search-{k}"));
    r.json()["state"].clone()
}

/// Waits until each of `n` replicas holds a usable copy at the writer's
/// last change (a replica copies the index in the background, from its
/// alarm).
fn caught_up(server: &Server, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seq = writer(server)["replication"]["seq"].clone();
        let behind: Vec<Value> = (0..n)
            .map(|k| replica(server, k))
            .filter(|r| r["seq"] != seq)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not at change {seq} after 60 s: {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The document ids a keyword search for `query` finds.
fn found(server: &Server, query: &str, mode: &str) -> Vec<String> {
    let r = post(
        server,
        "/api/search",
        &server.bearer(A),
        &json!({ "query": query, "mode": mode, "topK": 10, "minScore": 0 }),
    );
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let mut ids: Vec<String> = r.json()["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// A question about `word` that replica `k` of `replicas` answers.
fn question_for(word: &str, k: u32, replicas: u32) -> String {
    (0..)
        .map(|n| format!("which text mentions {word} {}", "please ".repeat(n)))
        .find(|q| replica_for(q, replicas) == Some(k))
        .unwrap()
}

fn docs(ids: &[&str]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({ "id": id, "text": format!("The {id} is an animal; a {id} has its own habits.") }))
            .collect(),
    )
}

#[test]
fn searches_run_on_replicas_see_every_write_and_never_reach_the_writer() {
    let dir = PersistDir::new("replicas-basic");
    let server = Server::start(Deployment::Dedicated(A), &dir);
    ingest_done(&server, docs(&["heron", "otter", "badger"]));
    // New replicas copy the tenant's index on its first change.
    caught_up(&server, 2);
    // Read-your-writes on both replicas, at once: the job is done only once
    // both hold its chunks.
    for k in 0..2 {
        for mode in ["keyword", "hybrid", "vector"] {
            let q = question_for("otter", k, 2);
            assert!(
                found(&server, &q, mode).contains(&"otter".to_owned()),
                "replica {k}, {mode}"
            );
        }
    }
    let r = post(
        &server,
        "/v1/embeddings",
        &server.bearer(A),
        &json!({ "input": ["an otter"], "model": "embedding" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A delete answered is a delete every replica shows.
    let r = send(
        "DELETE",
        &server.url("/api/documents/otter"),
        &[("x-tenant-id", A), ("authorization", INGEST)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for k in 0..2 {
        let q = question_for("otter", k, 2);
        assert!(
            !found(&server, &q, "keyword").contains(&"otter".to_owned()),
            "replica {k} still has the deleted document"
        );
        assert_eq!(
            found(&server, &question_for("heron", k, 2), "keyword"),
            vec!["heron"]
        );
    }

    // The writer answered none of it; the replicas answered all of it and
    // hold what the writer holds.
    let w = writer(&server);
    assert_eq!(w["replication"]["replicas"], 2, "{w}");
    assert_eq!(w["replication"]["searches"], 0, "{w}");
    let seq = w["replication"]["seq"].as_u64().unwrap();
    assert!(seq >= 2, "an upsert and a delete at least: {w}");
    let mut searches = 0;
    for k in 0..2 {
        let r = replica(&server, k);
        assert_eq!(r["seq"], seq, "replica {k}: {r}");
        assert_eq!(r["chunks"], w["chunks"], "replica {k}: {r}");
        assert!(r["searches"].as_u64().unwrap() > 0, "replica {k}: {r}");
        searches += r["searches"].as_u64().unwrap();
    }
    assert_eq!(searches, 2 * 3 + 2 * 2, "every search reached a replica");

    // Replicas are the deployment's and named by number; the writer takes
    // no change meant for a replica.
    for bad in ["2", "01", "-1", "x"] {
        let r = inspect(&server, "search", bad);
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
    }
}

#[test]
fn a_replica_that_missed_changes_or_is_new_copies_the_index() {
    let dir = PersistDir::new("replicas-gap");
    let with = |replicas: &str| {
        Server::start_with_vars(
            Deployment::Dedicated(A),
            &dir,
            &[("SEARCH_REPLICAS", replicas)],
        )
    };
    // Two replicas see the first documents.
    {
        let server = with("2");
        ingest_done(&server, docs(&["heron", "otter"]));
        assert_eq!(
            found(&server, &question_for("otter", 1, 2), "keyword"),
            vec!["otter"]
        );
        caught_up(&server, 2);
    }
    // Replica 1 is left out of these changes (one replica configured).
    {
        let server = with("1");
        ingest_done(&server, docs(&["badger"]));
        let r = send(
            "DELETE",
            &server.url("/api/documents/heron"),
            &[("x-tenant-id", A), ("authorization", INGEST)],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            found(&server, &question_for("badger", 0, 1), "keyword"),
            vec!["badger"]
        );
        assert_eq!(writer(&server)["replication"]["searches"], 0);
    }
    // Three: replica 1 was left out of two changes (the writer told it so
    // when it lowered the set), replica 2 is new. Before any new write,
    // their searches are answered at once with exactly what the writer
    // holds (by the writer, while they copy, or by the replica once it
    // holds its copy); every search is answered by exactly one object.
    let server = with("3");
    let mut sent = 0;
    for k in 1..3 {
        for (word, want) in [("heron", vec![]), ("badger", vec!["badger"])] {
            assert_eq!(
                found(&server, &question_for(word, k, 3), "keyword"),
                want,
                "replica {k}, {word}, before any write"
            );
            sent += 1;
        }
    }
    caught_up(&server, 3);
    let answered = |server: &Server| {
        let by_replicas: u64 = (0..3)
            .map(|k| replica(server, k)["searches"].as_u64().unwrap())
            .sum();
        let by_writer = writer(server)["replication"]["searches"].as_u64().unwrap();
        (by_replicas, by_writer)
    };
    let (by_replicas, by_writer) = answered(&server);
    assert_eq!(by_replicas + by_writer, sent, "each search answered once");
    // And they take the next change like the others, and answer every
    // search themselves.
    ingest_done(&server, docs(&["lynx"]));
    let seq = writer(&server)["replication"]["seq"].as_u64().unwrap();
    for k in 0..3 {
        for (word, want) in [
            ("heron", vec![]),
            ("otter", vec!["otter"]),
            ("badger", vec!["badger"]),
            ("lynx", vec!["lynx"]),
        ] {
            assert_eq!(
                found(&server, &question_for(word, k, 3), "keyword"),
                want,
                "replica {k}, {word}"
            );
        }
        let r = replica(&server, k);
        assert_eq!(r["seq"], seq, "replica {k}: {r}");
        assert_eq!(r["chunks"], 3, "replica {k}: {r}");
    }
    assert_eq!(
        answered(&server),
        (by_replicas + 12, by_writer),
        "replicas that hold a copy answer every search"
    );
    let copies = |k| replica(&server, k)["copies"].as_u64().unwrap();
    assert_eq!(copies(0), 0, "replica 0 missed nothing");
    assert!(copies(1) >= 1, "replica 1 was left out of two changes");
    assert!(copies(2) >= 1, "replica 2 is new");
    let w = writer(&server);
    assert!(
        w["replication"]["pagesExported"].as_u64().unwrap() >= 2,
        "{w}"
    );
}

/// A new replica does not hold a search while it copies a large index: the
/// writer answers, and the replica takes over once its copy is usable.
#[test]
fn a_new_replicas_searches_are_answered_by_the_writer_while_it_copies() {
    let dir = PersistDir::new("replicas-standin");
    // A large enough index that a copy takes a while: 6 pages of 256.
    let many: Vec<Value> = (0..1500)
        .map(|i| json!({ "id": format!("doc-{i}"), "text": format!("Passage {i} about the heron number {i}.") }))
        .collect();
    {
        let server =
            Server::start_with_vars(Deployment::Dedicated(A), &dir, &[("SEARCH_REPLICAS", "0")]);
        for part in many.chunks(100) {
            ingest_done(&server, Value::Array(part.to_vec()));
        }
    }
    let server =
        Server::start_with_vars(Deployment::Dedicated(A), &dir, &[("SEARCH_REPLICAS", "1")]);
    let q = question_for("heron", 0, 1);
    let search = || {
        post(
            &server,
            "/api/search",
            &server.bearer(A),
            &json!({ "query": q, "mode": "keyword", "topK": 3 }),
        )
    };
    // The replica has no copy: this search starts one and is answered by
    // the writer, with what the writer holds.
    let first = search();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["matches"].as_array().unwrap().len(), 3);
    assert_eq!(writer(&server)["replication"]["searches"], 1);
    caught_up(&server, 1);
    let r = replica(&server, 0);
    assert_eq!(r["chunks"], 1500, "{r}");
    assert_eq!(r["copies"], 1, "{r}");
    // Now the replica answers, the same matches.
    let again = search();
    assert_eq!(again.status, 200, "{}", again.body);
    let ids = |r: &Reply| -> Vec<String> {
        r.json()["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(writer(&server)["replication"]["searches"], 1);
    assert_eq!(replica(&server, 0)["searches"], 1);
}
