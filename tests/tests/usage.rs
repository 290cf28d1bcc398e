//! Usage, prices and the tenant's budget end to end against `wrangler dev`:
//! `GET /admin/usage` sums exactly what the turns' `done` events reported,
//! priced with the operator's price table, per key, model and day; a
//! search's query embedding is recorded under the key that searched; a
//! tenant admin reads its own tenant's usage and only the operator sets
//! prices and tenant budgets; a tenant's daily token budget refuses a turn
//! of any of its keys with 402 naming the tenant's budget.

use e2e::chat::parse_sse;
use e2e::http::Reply;
use e2e::{shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

/// A new key of `tenant`: (the key, its id).
fn new_key(server: &Server, tenant: &str, scopes: Value) -> (String, String) {
    let r = server.as_operator(
        tenant,
        "POST",
        "/admin/keys",
        Some(json!({ "name": "usage", "scopes": scopes })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let made = r.json();
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

/// One turn; its `done` event's usage: (input, output).
fn turn(server: &Server, key: &str, session: &str, message: &str) -> Result<(u64, u64), Reply> {
    let r = server.with_key(
        key,
        "POST",
        "/api/chat",
        Some(json!({ "sessionId": session, "message": message, "maxTokens": 40 })),
    );
    if r.status != 200 {
        return Err(r);
    }
    let events = parse_sse(r.body.as_bytes());
    let done = &events.last().expect("events").data;
    assert_eq!(done["type"], "done", "{done}");
    Ok((
        done["usage"]["inputTokens"].as_u64().expect("inputTokens"),
        done["usage"]["outputTokens"]
            .as_u64()
            .expect("outputTokens"),
    ))
}

/// The report at `path` (as the operator) once `ready` holds, polled for up
/// to 10 s: usage is recorded just after the work answers.
fn report_when(server: &Server, tenant: &str, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = server.as_operator(tenant, "GET", path, None);
        assert_eq!(r.status, 200, "{}", r.body);
        let report = r.json();
        if ready(&report) || start.elapsed() > Duration::from_secs(10) {
            return report;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn row<'a>(report: &'a Value, group: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["group"] == group))
        .unwrap_or(&Value::Null)
}

#[test]
fn usage_sums_the_turns_usage_priced_by_the_operator() {
    let server = shared(Deployment::Dedicated(A));
    // The operator prices the embedded generator: $1 per million input
    // tokens, $2 per million output tokens (so a record costs input + 2 ×
    // output micro-dollars, exactly).
    // Turns are served by the embedded generator under its own name.
    let r = server.as_operator(
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "defaultModels": { "chat": "local/extractive" } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let prices = json!({ "prices": {
        "local/extractive": { "inputPerMillionMicros": 1_000_000, "outputPerMillionMicros": 2_000_000 },
        "local/hashed-768": { "inputPerMillionMicros": 1_000_000 }
    }});
    let (admin_key, _) = new_key(&server, A, json!(["admin"]));
    let r = server.with_key(&admin_key, "PATCH", "/admin/tenant", Some(prices.clone()));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "operator_only"),
        "{}",
        r.body
    );
    let r = server.as_operator(A, "PATCH", "/admin/tenant", Some(prices));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["tenant"]["settings"]["prices"]["local/extractive"]["outputPerMillionMicros"],
        2_000_000
    );
    // Settings reach the isolates' caches within 1 s.
    std::thread::sleep(Duration::from_millis(1_100));

    let (chat_key, chat_id) = new_key(&server, A, json!(["chat"]));
    let mut sent = (0, 0);
    for n in 0..3 {
        let (input, output) = turn(
            &server,
            &chat_key,
            "usage-turns",
            &format!("question {n}: how are lighthouse lamps trimmed?"),
        )
        .unwrap_or_else(|r| panic!("turn {n}: {} {}", r.status, r.body));
        assert!(input > 0 && output > 0, "turn {n} reported its usage");
        sent = (sent.0 + input, sent.1 + output);
    }
    let path = format!("/admin/usage?groupBy=model&key={chat_id}");
    // The queue writes embedding usage within a second of the search.
    let report = report_when(&server, A, &path, |r| {
        row(r, "local/extractive")["requests"] == 3 && !row(r, "local/hashed-768").is_null()
    });
    let chat = row(&report, "local/extractive");
    assert_eq!(chat["requests"], 3, "{report}");
    assert_eq!(
        (chat["inputTokens"].as_u64(), chat["outputTokens"].as_u64()),
        (Some(sent.0), Some(sent.1)),
        "the usage of the turns' done events, exactly: {report}"
    );
    assert_eq!(chat["costMicros"].as_u64(), Some(sent.0 + 2 * sent.1));
    // The turns' tool searches embedded their queries, under the same key.
    let embedded = row(&report, "local/hashed-768");
    assert!(embedded["requests"].as_u64() >= Some(1), "{report}");
    assert_eq!(embedded["outputTokens"], 0);
    assert_eq!(embedded["costMicros"], embedded["inputTokens"]);

    // A search embeds its query once, charged to the key that searched:
    // "usage probe 7f3a9c" is 2 + 2 + 2 tokens (pieces of four characters).
    let (search_key, search_id) = new_key(&server, A, json!(["search"]));
    let r = server.with_key(
        &search_key,
        "POST",
        "/api/search",
        Some(json!({ "query": "usage probe 7f3a9c" })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let path = format!("/admin/usage?groupBy=model&key={search_id}");
    let report = report_when(&server, A, &path, |r| {
        !r["rows"].as_array().unwrap().is_empty()
    });
    let embedded = row(&report, "local/hashed-768");
    assert_eq!(
        (
            embedded["requests"].as_u64(),
            embedded["inputTokens"].as_u64()
        ),
        (Some(1), Some(6)),
        "{report}"
    );

    // By key and by day: the same totals, split otherwise (once every
    // batch the queue gathered is written).
    std::thread::sleep(Duration::from_millis(1_200));
    let by_key = report_when(&server, A, "/admin/usage?groupBy=key", |_| true);
    let chat_row = row(&by_key, &chat_id);
    assert!(chat_row["inputTokens"].as_u64() >= Some(sent.0), "{by_key}");
    let by_day = report_when(&server, A, "/admin/usage", |_| true);
    assert_eq!(by_day["groupBy"], "day");
    assert_eq!(
        by_day["total"], by_key["total"],
        "one total, however grouped"
    );
    let rows = by_day["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "all of it today (UTC): {by_day}");
    assert_eq!(rows[0]["group"], by_day["to"]);

    // A tenant admin reads its own tenant's usage; a search key may not.
    let r = server.with_key(&admin_key, "GET", "/admin/usage?groupBy=key", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.with_key(&search_key, "GET", "/admin/usage", None);
    assert_eq!(r.status, 403, "{}", r.body);
    for bad in [
        "/admin/usage?groupBy=week",
        "/admin/usage?from=2026-02-30",
        "/admin/usage?from=2026-11-02&to=2026-11-01",
        "/admin/usage?from=2020-01-01&to=2026-01-01",
    ] {
        let r = server.as_operator(A, "GET", bad, None);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_usage_query"),
            "{bad}: {}",
            r.body
        );
    }
}

/// The chat rows of a usage report grouped by model (every model but the
/// embedder's): (requests, input tokens, output tokens) summed.
fn chat_totals(report: &Value) -> (u64, u64, u64) {
    report["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["group"] != "local/hashed-768")
                .fold((0, 0, 0), |(n, i, o), r| {
                    (
                        n + r["requests"].as_u64().unwrap_or(0),
                        i + r["inputTokens"].as_u64().unwrap_or(0),
                        o + r["outputTokens"].as_u64().unwrap_or(0),
                    )
                })
        })
        .unwrap_or_default()
}

#[test]
fn the_turns_of_many_sessions_at_once_are_each_recorded_once() {
    // The sessions of an isolate send their ended turns' usage and registry
    // reports together (one ledger call for up to sixteen sessions): twenty
    // one-turn sessions at once make more than one batch, and every turn
    // must be counted exactly once and every session listed.
    let server = shared(Deployment::Dedicated(A));
    let (key, id) = new_key(&server, A, json!(["chat", "admin"]));
    const SESSIONS: u64 = 20;
    let threads: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let (server, key) = (server.clone(), key.clone());
            std::thread::spawn(move || {
                turn(
                    &server,
                    &key,
                    &format!("many-at-once-{n}"),
                    &format!("question {n}: how are lighthouse lamps trimmed?"),
                )
                .map_err(|r| format!("{} {}", r.status, r.body))
            })
        })
        .collect();
    let mut sent = (0, 0);
    for t in threads {
        let (input, output) = t.join().expect("a session thread").expect("its turn");
        sent = (sent.0 + input, sent.1 + output);
    }
    let path = format!("/admin/usage?groupBy=model&key={id}");
    let report = report_when(&server, A, &path, |r| chat_totals(r).0 >= SESSIONS);
    assert_eq!(
        chat_totals(&report),
        (SESSIONS, sent.0, sent.1),
        "every turn's done usage, once: {report}"
    );
    let start = Instant::now();
    loop {
        let r = server.with_key(&key, "GET", "/admin/sessions?limit=200", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let listed = r.json();
        let ids: Vec<&str> = listed["sessions"]
            .as_array()
            .map(|s| s.iter().filter_map(|e| e["sessionId"].as_str()).collect())
            .unwrap_or_default();
        let missing: Vec<String> = (0..SESSIONS)
            .map(|n| format!("many-at-once-{n}"))
            .filter(|s| !ids.contains(&s.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sessions never listed: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tenants_daily_token_budget_holds_across_its_keys() {
    let server = shared(Deployment::Dedicated(B));
    let (admin_key, _) = new_key(&server, B, json!(["admin"]));
    let budget = json!({ "budget": { "tokensPerDay": 4000 } });
    let r = server.with_key(&admin_key, "PATCH", "/admin/tenant", Some(budget.clone()));
    assert_eq!(r.status, 403, "only the operator sets it: {}", r.body);
    let r = server.as_operator(B, "PATCH", "/admin/tenant", Some(budget));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["tenant"]["settings"]["budget"]["tokensPerDay"],
        4000
    );
    // The gateway reads the tenant's settings through a 1 s cache.
    std::thread::sleep(Duration::from_millis(1_100));

    // Two keys without budgets of their own take turns: each turn reserves
    // 1000 + 40 at the tenant's budget and settles with what it used.
    let keys = [
        new_key(&server, B, json!(["chat"])).0,
        new_key(&server, B, json!(["chat"])).0,
    ];
    let mut refused = None;
    let mut spent = 0;
    for n in 0..30 {
        let key = &keys[n % 2];
        match turn(
            &server,
            key,
            &format!("tenant-budget-{}", n % 2),
            &format!("question {n}: what does a harbour pilot do?"),
        ) {
            Ok((input, output)) => spent += input + output,
            Err(r) => {
                refused = Some((n, r));
                break;
            }
        }
        // Let the turn settle before the next admission.
        let settled = server.limiter_idle(B, "tenant-budget");
        assert!(settled, "turn {n} settled at the tenant's budget");
    }
    let (n, r) = refused.expect("the tenant's budget refuses a turn within 30");
    assert!(n >= 2, "both keys had turns before the budget ran out");
    assert_eq!(r.status, 402, "{}", r.body);
    let error = &r.json()["error"];
    assert_eq!(
        (
            error["code"].as_str(),
            error["budget"].as_str(),
            error["scope"].as_str(),
            error["limit"].as_u64(),
        ),
        (
            Some("budget_exceeded"),
            Some("tokens_per_day"),
            Some("tenant"),
            Some(4000)
        ),
        "{}",
        r.body
    );
    assert_eq!(error["used"].as_u64(), Some(spent), "{}", r.body);
    assert!(
        spent + 1040 > 4000,
        "refused only when the turn would not fit"
    );

    // Lifted: turns go on.
    let r = server.as_operator(B, "PATCH", "/admin/tenant", Some(json!({ "budget": {} })));
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(1_100));
    turn(&server, &keys[0], "tenant-budget-0", "one more, please")
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.body));
}

/// A turn runs on the settings it read (`TurnContext::settings`), and its
/// usage record carries the cost its `done` event reported, even when the
/// prices change before the record is sent (about a second after the turn).
#[test]
fn a_turns_record_costs_what_its_done_event_reported() {
    let dir = PersistDir::new("usage-fixed-cost");
    let server = Server::start(Deployment::Dedicated(A), &dir);
    let prices = |per_million: u64| {
        json!({
            "defaultModels": { "chat": "local/extractive" },
            "prices": { "local/extractive": {
                "inputPerMillionMicros": per_million,
                "outputPerMillionMicros": 2 * per_million
            } }
        })
    };
    let r = server.as_operator(A, "PATCH", "/admin/tenant", Some(prices(1_000_000)));
    assert_eq!(r.status, 200, "{}", r.body);
    let (key, id) = new_key(&server, A, json!(["chat"]));
    let r = server.with_key(
        &key,
        "POST",
        "/api/chat",
        Some(json!({ "sessionId": "fixed-cost", "message": "how are lamps trimmed?", "maxTokens": 40 })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = parse_sse(r.body.as_bytes());
    let done = &events.last().expect("events").data;
    assert_eq!(done["type"], "done", "{done}");
    let usage = &done["usage"];
    let (input, output) = (
        usage["inputTokens"].as_u64().expect("inputTokens"),
        usage["outputTokens"].as_u64().expect("outputTokens"),
    );
    assert_eq!(
        usage["costMicros"].as_u64(),
        Some(input + 2 * output),
        "{done}"
    );
    // Ten times the prices, before the turn's record leaves.
    let r = server.as_operator(A, "PATCH", "/admin/tenant", Some(prices(10_000_000)));
    assert_eq!(r.status, 200, "{}", r.body);
    let path = format!("/admin/usage?groupBy=model&key={id}");
    let report = report_when(&server, A, &path, |r| {
        row(r, "local/extractive")["requests"] == 1
    });
    let chat = row(&report, "local/extractive");
    assert_eq!(chat["requests"], 1, "{report}");
    assert_eq!(
        chat["costMicros"].as_u64(),
        Some(input + 2 * output),
        "the cost the done event reported: {report}"
    );
}
