//! Rate limits end to end against `wrangler dev`: a key's `rpm` admits
//! exactly its quota under concurrency and answers the rest 429 with
//! `Retry-After` and the IETF `RateLimit` headers; `concurrency` refuses a
//! second turn while one runs and frees its slot when the turn ends; a
//! turn's `done` carries its usage; limits change with `PATCH`; a tenant
//! admin stays within the tenant's limits, which only the operator sets; the
//! tenant's total holds across keys; the limiter is inspectable; anonymous
//! clients have a limiter each and share the tenant's total.

use e2e::chat::parse_sse;
use e2e::http::{send, Reply};
use e2e::{shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::sync::Arc;

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

fn admin(server: &Server, tenant: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    server.as_operator(tenant, method, path, body)
}

/// The operator's view of `tenant`'s limiter `name` (a key id, or the
/// tenant's ledger).
fn limiter(server: &Server, tenant: &str, name: &str) -> Reply {
    admin(
        server,
        tenant,
        "GET",
        &format!("/admin/actors/limiter/{name}"),
        None,
    )
}

/// The bucket of `limit` (`rpm`, `tpm`) in a limiter's state.
fn bucket<'a>(state: &'a Value, limit: &str) -> Option<&'a Value> {
    state["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["limit"] == limit)
}

/// A new key of `tenant`: (the key, its id).
fn new_key(server: &Server, tenant: &str, scopes: Value, limits: Value) -> (String, String) {
    let r = admin(
        server,
        tenant,
        "POST",
        "/admin/keys",
        Some(json!({ "name": "limited", "scopes": scopes, "limits": limits })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let made = r.json();
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

fn search(server: &Server, key: &str, query: &str) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        "POST",
        &server.url("/api/search"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(json!({ "query": query }).to_string().as_bytes()),
    )
}

fn chat(server: &Server, key: &str, session: &str, message: &str) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(
            json!({ "sessionId": session, "message": message, "maxTokens": 20 })
                .to_string()
                .as_bytes(),
        ),
    )
}

/// `n` searches with `key` at once, each on its own thread.
fn concurrent_searches(server: &Arc<Server>, keys: &[String], n: usize) -> Vec<Reply> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let server = Arc::clone(server);
            let key = keys[i % keys.len()].clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                search(&server, &key, &format!("lighthouse keeper question {i}"))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a search thread"))
        .collect()
}

/// The number after `r=` in a `RateLimit` header.
fn remaining(r: &Reply) -> Option<u64> {
    let header = r.header("ratelimit")?;
    let start = header.find(";r=")? + 3;
    let digits: String = header[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn a_steady_callers_requests_are_counted_in_advance_and_stop_at_the_limit() {
    let server = shared(Deployment::Dedicated(B));
    const RPM: u64 = 300;
    let (key, id) = new_key(&server, B, json!(["search"]), json!({ "rpm": RPM }));
    let started = std::time::Instant::now();
    let (mut ok, mut last) = (0_u64, None);
    let refused = loop {
        let r = search(&server, &key, "how is the lamp trimmed?");
        if r.status != 200 {
            break r;
        }
        ok += 1;
        // What the headers say is left goes down as requests are admitted,
        // whether the limiter or this isolate's advance admitted them; it
        // goes up only by what the bucket refilled since the last answer.
        let left = remaining(&r).expect("a RateLimit header");
        if let Some((before, at)) = last {
            let since = std::time::Instant::now().duration_since(at).as_millis() as u64;
            let refill = (since * RPM).div_ceil(60_000) + 1;
            assert!(
                left <= before + refill,
                "remaining went from {before} to {left} in {since} ms"
            );
        }
        last = Some((left, std::time::Instant::now()));
        assert!(ok <= 2 * RPM, "never refused after {ok} searches");
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"]["limit"], "rpm", "{}", refused.body);
    // The quota, plus what the bucket refilled while the test ran: never
    // more, though most of them never reached the limiter one by one.
    let refilled = elapsed_ms * RPM / 60_000 + 1;
    assert!(
        (RPM..=RPM + refilled).contains(&ok),
        "{ok} admitted of {RPM} a minute in {elapsed_ms} ms"
    );
    let r = limiter(&server, B, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    let state = &r.json()["state"];
    let advanced = state["advanced"].as_u64().expect("advanced in the view");
    assert!(
        advanced > 0 && advanced < ok,
        "{advanced} of {ok} counted in advance: {state}"
    );
    let level = bucket(state, "rpm").expect("an rpm bucket")["level"]
        .as_i64()
        .expect("a level");
    assert!(level <= 1, "the bucket is spent: {state}");
}

#[test]
fn a_keys_rpm_admits_exactly_its_quota_under_concurrency() {
    let server = shared(Deployment::Dedicated(B));
    let (key, id) = new_key(&server, B, json!(["search"]), json!({ "rpm": 10 }));
    let replies = concurrent_searches(&server, &[key], 100);
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok.len(), limited.len()),
        (10, 90),
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &ok {
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"key-rpm\";q=10;w=60"),
            "{:?}",
            r.headers
        );
        assert!(r
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"key-rpm\";r=")));
    }
    for r in &limited {
        let error = &r.json()["error"];
        assert_eq!(error["code"], "rate_limited", "{}", r.body);
        assert_eq!(
            (error["limit"].as_str(), error["scope"].as_str()),
            (Some("rpm"), Some("key"))
        );
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in whole seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert!(
            r.header("ratelimit").is_some_and(|v| v.contains(";r=0;")),
            "{:?}",
            r.headers
        );
    }
    // The operator sees the bucket: empty, a capacity of 10.
    let r = limiter(&server, B, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    let state = &r.json()["state"];
    let rpm = bucket(state, "rpm").expect("an rpm bucket").clone();
    assert_eq!(rpm["capacity"], 10, "{state}");
    assert_eq!(r.json()["name"], format!("{B}:limiter:{id}"));
    // So near the limit nothing was counted in advance.
    assert_eq!(state["advanced"], 0, "{state}");

    // Raised with PATCH: the key gets more from the next request on.
    let r = admin(
        &server,
        B,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({ "limits": { "rpm": 1000 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["limits"]["rpm"], 1000);
    let r = admin(&server, B, "GET", &format!("/admin/keys/{id}"), None);
    assert_eq!(r.json()["limits"]["rpm"], 1000);
}

#[test]
fn a_second_turn_waits_for_the_concurrency_slot_and_done_reports_usage() {
    let server = shared(Deployment::Dedicated(B));
    let (key, _) = new_key(&server, B, json!(["chat"]), json!({ "concurrency": 1 }));
    // A slow turn holds the one slot while a second one is refused.
    let slow = {
        let server = Arc::clone(&server);
        let key = key.clone();
        std::thread::spawn(move || {
            chat(
                &server,
                &key,
                "limits-slow",
                "when does the ferry leave? [[slow-model]]",
            )
        })
    };
    let mut refused = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let r = chat(&server, &key, "limits-second", "and the lighthouse?");
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a second turn while the first runs is refused");
    let error = &refused.json()["error"];
    assert_eq!(
        (
            error["code"].as_str(),
            error["limit"].as_str(),
            error["scope"].as_str()
        ),
        (Some("rate_limited"), Some("concurrency"), Some("key")),
        "{}",
        refused.body
    );
    assert!(refused.header("retry-after").is_some());
    let first = slow.join().expect("the slow turn");
    assert_eq!(first.status, 200, "{}", first.body);
    let events = parse_sse(first.body.as_bytes());
    let done = &events.last().expect("events").data;
    assert_eq!(done["type"], "done", "{done}");
    let usage = &done["usage"];
    assert!(
        usage["inputTokens"].as_u64().is_some_and(|n| n > 0)
            && usage["outputTokens"].as_u64().is_some_and(|n| n > 0),
        "done carries the turn's usage: {done}"
    );
    // The slot is free again once the turn has settled.
    let mut again = None;
    for _ in 0..40 {
        let r = chat(&server, &key, "limits-third", "what about the harbour?");
        if r.status == 200 {
            again = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let again = again.expect("the slot is released when the turn ends");
    let events = parse_sse(again.body.as_bytes());
    assert_eq!(events.last().unwrap().data["type"], "done");
}

#[test]
fn the_tenants_limits_are_the_operators_and_its_total_holds_across_keys() {
    let server = shared(Deployment::Dedicated(A));
    let (admin_key, _) = new_key(&server, A, json!(["admin"]), json!({}));
    let tenant_admin = |method: &str, path: &str, body: Value| {
        let auth = format!("Bearer {admin_key}");
        send(
            method,
            &server.url(path),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(body.to_string().as_bytes()),
        )
    };
    // Only the operator sets the tenant's limits.
    let r = tenant_admin(
        "PATCH",
        "/admin/tenant",
        json!({ "limits": { "rpm": 100000 } }),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "operator_only"),
        "{}",
        r.body
    );
    let r = admin(
        &server,
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "limits": { "rpm": 6 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"]["settings"]["limits"]["rpm"], 6);
    // A tenant admin's keys stay within them.
    let r = tenant_admin(
        "POST",
        "/admin/keys",
        json!({ "name": "greedy", "scopes": ["search"], "limits": { "rpm": 7 } }),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "limits_above_tenant"),
        "{}",
        r.body
    );
    // Two keys with no limits of their own share the tenant's 6 a minute.
    let (k1, _) = new_key(&server, A, json!(["search"]), json!({}));
    let (k2, _) = new_key(&server, A, json!(["search"]), json!({}));
    let replies = concurrent_searches(&server, &[k1, k2], 40);
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert!(
        (1..=6).contains(&ok),
        "the tenant's total holds across keys: {ok} admitted, statuses {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.json()["error"]["limit"], "rpm", "{}", r.body);
    }
    let r = limiter(&server, A, A);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["name"], format!("{A}:limiter"));
    // Back to unlimited for the other tests of this binary.
    let r = admin(
        &server,
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "limits": {} })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_keys_daily_token_budget_refuses_with_402_naming_it() {
    let server = shared(Deployment::Dedicated(B));
    let (key, id) = new_key(&server, B, json!(["chat"]), json!({}));
    let r = admin(
        &server,
        B,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({ "budget": { "tokensPerDay": 2500 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["budget"]["tokensPerDay"], 2500);
    // Each turn reserves 1000 + maxTokens (20) and settles with what it used;
    // the history grows, so the day's budget runs out within a few turns.
    let mut spent = 0u64;
    let mut refused = None;
    for n in 0..20 {
        let r = chat(
            &server,
            &key,
            "limits-budget",
            &format!("question {n}: how do lighthouse keepers trim the lamp?"),
        );
        if r.status == 402 {
            refused = Some((n, r));
            break;
        }
        assert_eq!(r.status, 200, "turn {n}: {}", r.body);
        let events = parse_sse(r.body.as_bytes());
        let done = &events.last().expect("events").data;
        assert_eq!(done["type"], "done", "{done}");
        spent += done["usage"]["inputTokens"].as_u64().unwrap_or(0)
            + done["usage"]["outputTokens"].as_u64().unwrap_or(0);
        // The session settles the turn's reservation just after `done`: wait
        // for it, so the next admission sees what was really used.
        let settled = server.limiter_idle(B, &id);
        assert!(settled, "turn {n}'s reservation was settled");
    }
    let (n, r) = refused.expect("the budget refuses a turn within 20");
    assert!(n >= 1, "the first turn fits the budget");
    assert!(
        spent + 1020 > 2500,
        "refused only when the turn's reservation would not fit: spent {spent}"
    );
    let error = &r.json()["error"];
    assert_eq!(error["code"], "budget_exceeded", "{}", r.body);
    assert_eq!(
        (
            error["budget"].as_str(),
            error["scope"].as_str(),
            error["limit"].as_u64()
        ),
        (Some("tokens_per_day"), Some("key"), Some(2500))
    );
    assert_eq!(
        error["used"].as_u64(),
        Some(spent),
        "used is what the turns reported"
    );
    let resets = error["resetsAtMs"].as_u64().expect("resetsAtMs");
    assert_eq!(resets % 86_400_000, 0, "the next UTC midnight");
    let now = e2e::now_ms();
    assert!(
        resets > now && resets - now <= 86_400_000,
        "{resets} vs {now}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=86_400).contains(&retry));
}

#[test]
fn a_websocket_is_no_way_around_a_keys_limits() {
    let server = shared(Deployment::Dedicated(B));
    let (key, _) = new_key(&server, B, json!(["chat"]), json!({ "rpm": 3 }));
    let ws = server.base().replace("http://", "ws://");
    // The upgrade counts one request; each message another.
    let mut socket = e2e::chat::Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=limits-ws&key={key}"),
        &[],
    )
    .expect("connect");
    for n in 0..2 {
        socket.send(
            &json!({ "type": "message", "content": format!("lighthouse question {n}") })
                .to_string(),
        );
        let events = socket.events_until_end();
        let last = events.last().expect("events");
        assert_eq!(last["type"], "done", "turn {n}: {events:?}");
        assert!(last["usage"]["outputTokens"].as_u64().is_some(), "{last}");
    }
    socket.send(r#"{"type":"message","content":"one more?"}"#);
    let refused = socket.next_event();
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("rpm")),
        "{refused}"
    );
    socket.close();
}

#[test]
fn anonymous_clients_are_limited_each_and_in_total() {
    // Its own server: the tenant's limits it sets would hold the other
    // tests' keys too.
    let dir = PersistDir::new("limits-anonymous");
    let server = Server::start(Deployment::Dedicated(B), &dir);
    let r = admin(
        &server,
        B,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "anonymous": { "search": true }, "limits": { "rpm": 4 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The gateway reads the tenant's settings through a 1 s cache.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let anonymous = |client: &str, n: usize| {
        send(
            "POST",
            &server.url("/api/search"),
            &[
                ("content-type", "application/json"),
                ("cf-connecting-ip", client),
            ],
            Some(
                json!({ "query": format!("anonymous harbour question {client} {n}") })
                    .to_string()
                    .as_bytes(),
            ),
        )
    };
    let replies: Vec<Reply> = (0..7).map(|n| anonymous("203.0.113.7", n)).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429, 429],
        "one client gets the tenant's default rpm: {:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let refused = replies[4].json();
    assert_eq!(refused["error"]["limit"], "rpm", "{refused}");
    assert!(replies[4].header("retry-after").is_some());
    // Another client has its own limiter, but the tenant's total (4 a
    // minute) is spent: refused for the tenant.
    let other = anonymous("198.51.100.23", 0);
    assert_eq!(other.status, 429, "{}", other.body);
    assert_eq!(other.json()["error"]["scope"], "tenant", "{}", other.body);
    // Closed again: anonymous search is refused before any limiter.
    let r = admin(
        &server,
        B,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "anonymous": { "search": false } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(anonymous("192.0.2.1", 0).status, 401);
}

#[test]
fn tpm_is_reserved_before_a_turn_and_settled_with_what_it_used() {
    let server = shared(Deployment::Dedicated(B));
    // 3000 tokens a minute (50 a second refill). Each turn reserves its
    // estimate, 1000 + maxTokens (20) = 1020: charged at the estimate, only
    // 2 turns would fit. Settled with what the turns used (a few hundred
    // tokens each), the difference comes back and more turns fit.
    let (key, id) = new_key(&server, B, json!(["chat"]), json!({ "tpm": 3000 }));
    let mut admitted = 0;
    let mut refused = None;
    let started = std::time::Instant::now();
    for n in 0..20 {
        let r = chat(
            &server,
            &key,
            "limits-tpm",
            &format!("tpm question {n}: who keeps the lamp?"),
        );
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "turn {n}: {}", r.body);
        admitted += 1;
        // Wait for the settle, so the next admission sees what was used.
        let settled = server.limiter_idle(B, &id);
        assert!(settled, "turn {n} settled");
    }
    // Charged at their estimates, the bucket and its refill over the run
    // would have admitted at most this many.
    let refill = 50 * (started.elapsed().as_secs() + 1);
    let at_estimates = (3000 + refill) / 1020;
    assert!(
        admitted > at_estimates,
        "settling gave back the unused estimate: {admitted} turns admitted, {at_estimates} at estimates"
    );
    let refused = refused.expect("the tokens of a minute run out within 20 turns");
    let error = &refused.json()["error"];
    assert_eq!(
        (error["limit"].as_str(), error["scope"].as_str()),
        (Some("tpm"), Some("key")),
        "{}",
        refused.body
    );
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
}

#[test]
fn a_refusal_by_the_tenants_budget_spends_nothing_of_the_keys_rpm() {
    // Its own server: the tenant budget it sets would refuse the other
    // tests' turns too.
    let dir = PersistDir::new("limits-tenant-refusal");
    let server = Server::start(Deployment::Dedicated(A), &dir);
    // A turn reserves 1000 + 20 tokens: more than the tenant's day allows.
    let r = admin(
        &server,
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "budget": { "tokensPerDay": 500 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let (key, id) = new_key(&server, A, json!(["chat"]), json!({ "rpm": 2 }));
    // Each refusal is the tenant's budget's, never the key's rpm: a refused
    // turn spends no request of the key.
    for n in 0..4 {
        let r = chat(&server, &key, "limits-tenant-refusal", "a question");
        assert_eq!(r.status, 402, "turn {n}: {}", r.body);
        assert_eq!(r.json()["error"]["scope"], "tenant", "{}", r.body);
    }
    let r = limiter(&server, A, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    let state = &r.json()["state"];
    let spent =
        bucket(state, "rpm").is_some_and(|b| b["level"].as_i64().is_some_and(|level| level < 2));
    assert!(!spent, "the key's rpm is untouched: {state}");
    // Lifted: the key still has both of its requests.
    let r = admin(
        &server,
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "budget": {} })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    for n in 0..2 {
        let r = chat(&server, &key, "limits-tenant-refusal", "a question");
        assert_eq!(r.status, 200, "turn {n}: {}", r.body);
        assert!(server.limiter_idle(A, &id), "turn {n} settled");
    }
    let r = chat(&server, &key, "limits-tenant-refusal", "one too many");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["limit"], "rpm", "{}", r.body);
}

#[test]
fn an_open_websocket_follows_its_keys_changed_limits() {
    let server = shared(Deployment::Dedicated(B));
    let (key, id) = new_key(&server, B, json!(["chat"]), json!({ "rpm": 1000 }));
    let ws = server.base().replace("http://", "ws://");
    let mut socket = e2e::chat::Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=limits-ws-follow&key={key}"),
        &[],
    )
    .expect("connect");
    let mut turn = |n: usize| {
        socket.send(
            &json!({ "type": "message", "content": format!("harbour question {n}") }).to_string(),
        );
        let events = socket.events_until_end();
        events.last().expect("events").clone()
    };
    assert_eq!(turn(0)["type"], "done");
    // Lowered to 1 a minute while the socket is open: its bucket holds at
    // most 1 from the next turn on, whatever it was admitted with.
    let r = admin(
        &server,
        B,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({ "limits": { "rpm": 1 } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The socket re-checks its key at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(turn(1)["type"], "done");
    let refused = turn(2);
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{refused}"
    );
    socket.close();
}

#[test]
fn a_lost_turns_reservation_is_settled_when_its_session_recovers() {
    let dir = PersistDir::new("limits-recover");
    // The model stalls for longer than the test runs.
    let vars = [("CHAT_FIRST_OUTPUT_TIMEOUT_SECS", "50")];
    let (key, id, stalled) = {
        let server = Server::start_with_vars(Deployment::Dedicated(A), &dir, &vars);
        let (key, id) = new_key(&server, A, json!(["chat"]), json!({ "concurrency": 1 }));
        // A turn whose model stalls holds the key's one slot.
        let (url, auth) = (server.url("/api/chat"), format!("Bearer {key}"));
        let stalled = std::thread::spawn(move || {
            send(
                "POST",
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                Some(
                    json!({ "sessionId": "limits-recover", "message": "ferry? [[model-all-stall]]" })
                        .to_string()
                        .as_bytes(),
                ),
            )
        });
        let held = (0..100).any(|_| {
            let r = limiter(&server, A, &id);
            let held = r.json()["state"]["reservations"]
                .as_array()
                .is_some_and(|v| !v.is_empty());
            if !held {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            held
        });
        assert!(held, "the stalled turn holds a reservation");
        (key, id, stalled)
    }; // Stopped mid-turn: the isolate, and the turn in it, are gone.
       // The client's stream ended with the server.
    let _ = stalled.join();
    let server = Server::start_with_vars(Deployment::Dedicated(A), &dir, &vars);
    // The next request to the session finds the lost turn and settles what
    // it held (its deadline, and so its expiry, are minutes away).
    let auth = format!("Bearer {key}");
    let r = e2e::http::get(
        &server.url("/api/sessions/limits-recover/history"),
        &[("authorization", auth.as_str())],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        server.limiter_idle(A, &id),
        "the lost turn's reservation was settled"
    );
    // The key's one slot is free again.
    let r = chat(&server, &key, "limits-recover-next", "a question");
    assert_eq!(r.status, 200, "{}", r.body);
}
