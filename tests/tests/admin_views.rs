//! The operators' views end to end against `wrangler dev` (the shared
//! deployment, two tenants): the tenants listing (operator only), a
//! tenant's sessions (they appear after a turn, go after an erase, page
//! with cursors), its documents (after an ingest, paged), a configuration
//! value read back (404 once deleted), request metrics that count exactly
//! the requests made, and tenant isolation of every listing and metric.

use e2e::chat::parse_sse;
use e2e::http::send;
use e2e::{shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

/// One chat turn of `session` with `key`; checks it ended with `done`.
fn turn(server: &Server, key: &str, session: &str) {
    let r = server.with_key(
        key,
        "POST",
        "/api/chat",
        Some(json!({ "sessionId": session, "message": "what is stored?", "maxTokens": 32 })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = parse_sse(r.body.as_bytes());
    assert_eq!(events.last().expect("events").data["type"], "done");
}

/// Polls `get` (up to 10 s) until `ready` holds: the registry and the
/// metrics are written just after the work answers. The last answer.
fn until(get: impl Fn() -> Value, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = get();
        if ready(&v) || start.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ids(list: &Value, field: &str, id: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {list}"))
        .iter()
        .map(|e| e[id].as_str().expect("an id").to_owned())
        .collect()
}

/// Every page of `path` (`?limit=` given), following `nextCursor`.
fn all_pages(server: &Server, key: &str, path: &str, field: &str, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let r = server.with_key(key, "GET", &url, None);
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let page = r.json();
        out.extend(ids(&page, field, id));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
    panic!("more than 50 pages of {path}");
}

#[test]
fn sessions_appear_after_a_turn_page_by_cursor_and_go_after_erase() {
    let server = shared(Deployment::Shared);
    let key = server.create_key(A, &["chat", "admin"]);
    let sessions = ["views-s1", "views-s2", "views-s3"];
    for s in sessions {
        turn(&server, &key, s);
    }
    let listed = until(
        || {
            let r = server.with_key(&key, "GET", "/admin/sessions?limit=200", None);
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        },
        |v| {
            let ids = ids(v, "sessions", "sessionId");
            sessions.iter().all(|s| ids.iter().any(|i| i == s))
        },
    );
    let entry = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sessionId"] == "views-s1")
        .unwrap_or_else(|| panic!("views-s1 listed: {listed}"));
    // Every stored message, as the history has them.
    let history = server.with_key(
        &key,
        "GET",
        "/api/sessions/views-s1/history?limit=200",
        None,
    );
    assert_eq!(history.status, 200, "{}", history.body);
    let stored = history.json()["messages"].as_array().map(Vec::len).unwrap();
    assert!(
        stored >= 2,
        "the question and its answer at least: {}",
        history.body
    );
    assert_eq!(
        entry["messageCount"].as_u64(),
        Some(stored as u64),
        "{entry}"
    );
    assert!(entry["lastActivityMs"].as_u64().unwrap() >= entry["createdAtMs"].as_u64().unwrap());
    let key_id = key.split('_').nth(2).unwrap();
    assert_eq!(entry["keyId"], key_id);
    assert_eq!(entry["userId"], Value::Null);
    // Most recent activity first.
    let times: Vec<u64> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["lastActivityMs"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    // Pages of one, every session once.
    let paged = all_pages(
        &server,
        &key,
        "/admin/sessions?limit=1",
        "sessions",
        "sessionId",
    );
    let mut unique = paged.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paged.len(), "no session twice: {paged:?}");
    assert_eq!(paged, ids(&listed, "sessions", "sessionId"));
    // Erased: gone from the listing as soon as the erase answered.
    let r = server.with_key(&key, "DELETE", "/api/sessions/views-s2", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&key, "GET", "/admin/sessions?limit=200", None);
    let after = ids(&r.json(), "sessions", "sessionId");
    assert!(!after.iter().any(|s| s == "views-s2"), "{after:?}");
    assert!(after.iter().any(|s| s == "views-s1"), "{after:?}");
    // Bad page requests are 400.
    for bad in [
        "/admin/sessions?limit=0",
        "/admin/sessions?limit=201",
        "/admin/sessions?limit=x",
        "/admin/sessions?cursor=zz",
        "/admin/sessions?cursor=6e6f",
    ] {
        let r = server.with_key(&key, "GET", bad, None);
        assert_eq!(
            (r.status, r.error_code()),
            (400, "invalid_request".into()),
            "{bad}"
        );
    }
}

#[test]
fn documents_are_listed_after_ingest_with_titles_and_cursors() {
    let server = shared(Deployment::Shared);
    let key = server.create_key(B, &["ingest", "admin"]);
    let docs: Vec<Value> = (0..5)
        .map(|i| {
            json!({"id": format!("views-doc-{i}"), "text": format!("Document number {i} about views."),
                   "metadata": {"title": format!("Doc {i}")}})
        })
        .collect();
    let r = server.with_key(
        &key,
        "POST",
        "/api/ingest",
        Some(json!({ "documents": docs })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&key, "GET", "/admin/documents?limit=200", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let page = r.json();
    let listed = ids(&page, "documents", "id");
    for i in 0..5 {
        assert!(listed.contains(&format!("views-doc-{i}")), "{page}");
    }
    assert_eq!(page["total"].as_u64().unwrap() as usize, listed.len());
    let doc = page["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "views-doc-3")
        .unwrap();
    assert_eq!(doc["title"], "Doc 3");
    assert!(doc["chunks"].as_u64().unwrap() >= 1);
    assert!(doc["updatedAtMs"].as_u64().unwrap() > 0);
    let paged = all_pages(&server, &key, "/admin/documents?limit=2", "documents", "id");
    assert_eq!(
        paged, listed,
        "pages of two give the same documents in order"
    );
    // A deleted document leaves the listing.
    let r = server.with_key(&key, "DELETE", "/api/documents/views-doc-0", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&key, "GET", "/admin/documents", None);
    assert!(!ids(&r.json(), "documents", "id").contains(&"views-doc-0".to_owned()));
}

#[test]
fn config_values_read_back_and_are_404_once_deleted() {
    let server = shared(Deployment::Shared);
    let key = server.create_key(A, &["admin"]);
    let path = "/admin/config/views-email";
    let r = server.with_key(&key, "GET", path, None);
    assert_eq!((r.status, r.error_code()), (404, "not_found".into()));
    let r = server.with_key(
        &key,
        "PUT",
        path,
        Some(json!({"value": "help@example.com"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&key, "GET", path, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"ok": true, "key": "config:views-email", "value": "help@example.com"})
    );
    // Tenant B has no such value.
    let r = server.as_operator(B, "GET", path, None);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = server.with_key(&key, "DELETE", path, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&key, "GET", path, None);
    assert_eq!((r.status, r.error_code()), (404, "not_found".into()));
    let r = server.with_key(&key, "GET", "/admin/config/a%20b", None);
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn the_tenants_listing_is_the_operators() {
    let server = shared(Deployment::Shared);
    // No x-tenant-id needed.
    let r = send(
        "GET",
        &server.url("/admin/tenants"),
        &[("authorization", &format!("Bearer {}", e2e::ADMIN_TOKEN))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let tenants = r.json();
    assert_eq!(ids(&tenants, "tenants", "tenantId"), [A, B]);
    // Tenant A has been used (a key was made), so it is active.
    let admin = server.create_key(A, &["admin"]);
    let r = server.as_operator(A, "GET", "/admin/tenants", None);
    let a = r.json()["tenants"][0].clone();
    assert_eq!(a["status"], "active", "{a}");
    assert!(a["keys"].as_u64().unwrap() >= 1, "{a}");
    assert!(a["createdAtMs"].as_u64().is_some(), "{a}");
    // A tenant admin key is refused, and so is no credential.
    let r = server.with_key(&admin, "GET", "/admin/tenants", None);
    assert_eq!((r.status, r.error_code()), (403, "forbidden_scope".into()));
    let r = send("GET", &server.url("/admin/tenants"), &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn listings_never_cross_tenants() {
    let server = shared(Deployment::Shared);
    let a = server.create_key(A, &["chat", "ingest", "admin"]);
    let b = server.create_key(B, &["chat", "ingest", "admin"]);
    turn(&server, &a, "views-only-a");
    let r = server.with_key(
        &a,
        "POST",
        "/api/ingest",
        Some(json!({"documents": [{"id": "views-a-doc", "text": "Only tenant A has this."}]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let listed_a = until(
        || {
            server
                .with_key(&a, "GET", "/admin/sessions?limit=200", None)
                .json()
        },
        |v| ids(v, "sessions", "sessionId").contains(&"views-only-a".to_owned()),
    );
    assert!(ids(&listed_a, "sessions", "sessionId").contains(&"views-only-a".to_owned()));
    let sessions_b = ids(
        &server
            .with_key(&b, "GET", "/admin/sessions?limit=200", None)
            .json(),
        "sessions",
        "sessionId",
    );
    assert!(
        !sessions_b.contains(&"views-only-a".to_owned()),
        "{sessions_b:?}"
    );
    let docs_b = ids(
        &server
            .with_key(&b, "GET", "/admin/documents?limit=200", None)
            .json(),
        "documents",
        "id",
    );
    assert!(!docs_b.contains(&"views-a-doc".to_owned()), "{docs_b:?}");
    // B's admin key naming A is refused.
    let auth = format!("Bearer {b}");
    let r = send(
        "GET",
        &server.url("/admin/metrics"),
        &[("authorization", auth.as_str()), ("x-tenant-id", A)],
        None,
    );
    assert_eq!((r.status, r.error_code()), (403, "tenant_mismatch".into()));
}

/// The count of `route` with `status` in a window of a metrics report.
fn count(report: &Value, window: &str, route: &str, status: &str) -> u64 {
    report["windows"][window]["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("routes in {report}"))
        .iter()
        .find(|r| r["route"] == route)
        .and_then(|r| r["byStatus"][status].as_u64())
        .unwrap_or(0)
}

#[test]
fn metrics_count_exactly_the_requests_made_per_tenant() {
    // A server of its own: no other test's requests in its counts.
    let dir = PersistDir::new("admin-views-metrics");
    let server = Server::start(Deployment::Shared, &dir);
    let a = server.create_key(A, &["search", "chat", "admin"]);
    let b = server.create_key(B, &["search", "admin"]);
    for _ in 0..3 {
        let r = server.with_key(&a, "POST", "/api/search", Some(json!({"query": "state"})));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = server.with_key(&a, "POST", "/api/search", Some(json!({"query": ""})));
    assert_eq!((r.status, r.error_code()), (400, "invalid_search".into()));
    let r = server.with_key(&b, "POST", "/api/search", Some(json!({"query": "state"})));
    assert_eq!(r.status, 200, "{}", r.body);
    turn(&server, &a, "views-metrics");
    // A path with no route, naming tenant A: counted as `unmatched`.
    let r = send("GET", &server.url("/api/nope"), &[("x-tenant-id", A)], None);
    assert_eq!(r.status, 404, "{}", r.body);

    let metrics = |key: &str| {
        let r = server.with_key(key, "GET", "/admin/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let report = until(
        || metrics(&a),
        |m| {
            count(m, "hour", "POST /api/search", "200") >= 3
                && count(m, "hour", "POST /api/search", "400") >= 1
                && count(m, "hour", "POST /api/chat", "200") >= 1
                && count(m, "hour", "unmatched", "404") >= 1
        },
    );
    assert_eq!(report["tenantId"], A);
    for window in ["hour", "day"] {
        assert_eq!(
            count(&report, window, "POST /api/search", "200"),
            3,
            "{report}"
        );
        assert_eq!(
            count(&report, window, "POST /api/search", "400"),
            1,
            "{report}"
        );
        assert_eq!(
            count(&report, window, "POST /api/chat", "200"),
            1,
            "{report}"
        );
        assert_eq!(count(&report, window, "unmatched", "404"), 1, "{report}");
        let search = report["windows"][window]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "POST /api/search")
            .unwrap();
        assert_eq!(
            (search["requests"].as_u64(), search["errors"].as_u64()),
            (Some(4), Some(1))
        );
        assert_eq!(search["byCode"]["invalid_search"], 1, "{search}");
        let (p50, p99) = (
            search["p50Ms"].as_u64().unwrap(),
            search["p99Ms"].as_u64().unwrap(),
        );
        assert!(p50 <= p99, "{search}");
    }
    // The turn's tokens reach the windows (the ledger's records).
    let with_tokens = until(
        || metrics(&a),
        |m| m["windows"]["hour"]["tokens"]["outputTokens"].as_u64() > Some(0),
    );
    assert!(with_tokens["windows"]["day"]["tokens"]["inputTokens"].as_u64() > Some(0));
    // Tenant B sees its own search only, never A's.
    let report_b = until(
        || metrics(&b),
        |m| count(m, "hour", "POST /api/search", "200") >= 1,
    );
    assert_eq!(report_b["tenantId"], B);
    assert_eq!(
        count(&report_b, "hour", "POST /api/search", "200"),
        1,
        "{report_b}"
    );
    assert_eq!(
        count(&report_b, "hour", "POST /api/search", "400"),
        0,
        "{report_b}"
    );
    assert_eq!(
        count(&report_b, "hour", "POST /api/chat", "200"),
        0,
        "{report_b}"
    );
    // The operator reads any tenant's.
    let r = server.as_operator(B, "GET", "/admin/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenantId"], B);
}
