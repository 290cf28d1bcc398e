//! API keys end to end against `wrangler dev`: the admin API, every scope,
//! rotation with and without grace, revocation (refused on the next
//! request), expiry, the tenant taken from the key, session privacy between
//! keys and users, the WebSocket key path, and no secret in any answer or
//! log line but the one that creates it.

use e2e::chat::{parse_sse, Socket};
use e2e::http::{get, send, Reply};
use e2e::{shared, Deployment, PersistDir, Server, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

fn operator() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

fn admin(server: &Server, tenant: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    server.as_operator(tenant, method, path, body)
}

fn create(server: &Server, tenant: &str, body: Value) -> Value {
    let r = admin(server, tenant, "POST", "/admin/keys", Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn search(server: &Server, key: &str, tenant: Option<&str>) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(t) = tenant {
        headers.push(("x-tenant-id", t));
    }
    send(
        "POST",
        &server.url("/api/search"),
        &headers,
        Some(br#"{"query":"lighthouse"}"#),
    )
}

fn chat(server: &Server, key: &str, user: Option<&str>, session: &str) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(u) = user {
        headers.push(("x-user-id", u));
    }
    send(
        "POST",
        &server.url("/api/chat"),
        &headers,
        Some(
            json!({ "sessionId": session, "message": "what about lighthouses?" })
                .to_string()
                .as_bytes(),
        ),
    )
}

fn history(server: &Server, key: &str, user: Option<&str>, session: &str) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(u) = user {
        headers.push(("x-user-id", u));
    }
    get(
        &server.url(&format!("/api/sessions/{session}/history")),
        &headers,
    )
}

#[test]
fn keys_are_created_listed_rotated_and_revoked() {
    let server = shared(Deployment::Dedicated(A));
    let made = create(
        &server,
        A,
        json!({ "name": "reader", "scopes": ["search"], "models": [] }),
    );
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("tp_{A}_{id}_")), "{key}");
    assert_eq!(made["scopes"], json!(["search"]));
    // The secret is shown once: not in the list, not in the record.
    let list = admin(&server, A, "GET", "/admin/keys", None);
    assert_eq!(list.status, 200);
    assert!(list.body.contains(&id) && !list.body.contains(&key[key.len() - 64..]));
    let one = admin(&server, A, "GET", &format!("/admin/keys/{id}"), None);
    assert_eq!(one.json()["name"], "reader");
    assert!(!one.body.contains(&key[key.len() - 64..]));

    // It works for its scope only.
    assert_eq!(search(&server, &key, None).status, 200);
    assert!(one.json()["lastUsedAtMs"].is_null() || one.status == 200);
    let r = chat(&server, &key, None, "reader-1");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "forbidden_scope")
    );

    // Rotation without grace: the old secret stops at once.
    let rotated = admin(
        &server,
        A,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        None,
    );
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    let r = search(&server, &key, None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_key"));
    assert_eq!(search(&server, &new_key, None).status, 200);

    // Rotation with grace: both work until the grace ends.
    let rotated = admin(
        &server,
        A,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({ "graceSeconds": 2 })),
    );
    let newest = rotated.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(search(&server, &new_key, None).status, 200, "in the grace");
    assert_eq!(search(&server, &newest, None).status, 200);
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(search(&server, &new_key, None).status, 401, "grace over");

    // Revocation: the very next request is refused.
    let r = admin(&server, A, "DELETE", &format!("/admin/keys/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["revokedAtMs"].is_u64());
    let r = search(&server, &newest, None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_key"));

    // Unknown ids and malformed keys.
    let r = admin(&server, A, "GET", "/admin/keys/0123456789ab", None);
    assert_eq!(r.status, 404);
    let r = admin(&server, A, "GET", "/admin/keys/nope", None);
    assert_eq!(r.status, 400);
    for bad in [
        "tp_nonsense",
        "sk-123",
        &format!("tp_{A}_{id}_{}", "0".repeat(64)),
    ] {
        let r = search(&server, bad, None);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "invalid_key"),
            "{bad}"
        );
    }
    let r = send(
        "POST",
        &server.url("/api/search"),
        &[("content-type", "application/json")],
        Some(br#"{"query":"x"}"#),
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_key"));
}

#[test]
fn every_scope_opens_its_routes_only() {
    let server = shared(Deployment::Dedicated(A));
    let key_for = |scope: &str| {
        create(&server, A, json!({ "name": scope, "scopes": [scope] }))["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (s, c, i, a) = (
        key_for("search"),
        key_for("chat"),
        key_for("ingest"),
        key_for("admin"),
    );
    let ingest = |key: &str| {
        send(
            "POST",
            &server.url("/api/ingest"),
            &[
                ("authorization", &format!("Bearer {key}")),
                ("content-type", "application/json"),
            ],
            Some(br#"{"documents":[{"id":"scope-doc","text":"Lighthouses guide ships."}]}"#),
        )
        .status
    };
    let admin_get = |key: &str| {
        get(
            &server.url("/admin/tenant"),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .status
    };
    let chat_status = |key: &str| {
        chat(
            &server,
            key,
            None,
            &format!("scope-{}", &key[key.len() - 6..]),
        )
        .status
    };
    assert_eq!(ingest(&i), 200);
    assert_eq!(
        (
            search(&server, &s, None).status,
            chat_status(&s),
            ingest(&s),
            admin_get(&s)
        ),
        (200, 403, 403, 403)
    );
    assert_eq!(
        (
            search(&server, &c, None).status,
            chat_status(&c),
            ingest(&c),
            admin_get(&c)
        ),
        (403, 200, 403, 403)
    );
    assert_eq!(
        (
            search(&server, &i, None).status,
            chat_status(&i),
            admin_get(&i)
        ),
        (403, 403, 403)
    );
    assert_eq!(
        (
            search(&server, &a, None).status,
            chat_status(&a),
            ingest(&a),
            admin_get(&a)
        ),
        (403, 403, 403, 200)
    );
    // A tenant admin manages its own tenant's keys.
    let r = send(
        "POST",
        &server.url("/admin/keys"),
        &[
            ("authorization", &format!("Bearer {a}")),
            ("content-type", "application/json"),
        ],
        Some(br#"{"name":"made by the tenant admin","scopes":["search"]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // The legacy ingest token still ingests.
    let r = send(
        "POST",
        &server.url("/api/ingest"),
        &[
            ("authorization", "Bearer e2e-ingest-token"),
            ("content-type", "application/json"),
        ],
        Some(br#"{"documents":[{"id":"legacy-doc","text":"Ferries."}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn expired_keys_and_models_outside_the_list_are_refused() {
    let server = shared(Deployment::Dedicated(A));
    let now = e2e::now_ms();
    let made = create(
        &server,
        A,
        json!({ "name": "short", "scopes": ["search", "chat"], "expiresAtMs": now + 1500, "models": ["@cf/meta/llama-3.1-8b-instruct"] }),
    );
    let key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(search(&server, &key, None).status, 200);
    let r = send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        Some(br#"{"sessionId":"model-1","message":"hi","model":"@cf/qwen/qwen3-30b-a3b-fp8"}"#),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "model_not_allowed")
    );
    std::thread::sleep(Duration::from_millis(2600));
    let r = search(&server, &key, None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_key"));
    // A past expiry is refused at creation.
    let r = admin(
        &server,
        A,
        "POST",
        "/admin/keys",
        Some(json!({ "name": "old", "scopes": ["search"], "expiresAtMs": 1000 })),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn the_tenant_comes_from_the_key() {
    let server = shared(Deployment::Shared);
    let key_a = server.key(A);
    // No header needed; a header that disagrees is 403.
    assert_eq!(search(&server, &key_a, None).status, 200);
    assert_eq!(search(&server, &key_a, Some(A)).status, 200);
    let r = search(&server, &key_a, Some(B));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "tenant_mismatch")
    );
    // A's key never reaches B's data, whatever the client claims.
    let r = history(&server, &key_a, None, "anything");
    assert_eq!(r.status, 404);
}

#[test]
fn sessions_are_private_to_their_key_and_user() {
    let server = shared(Deployment::Dedicated(A));
    let one = create(&server, A, json!({ "name": "one", "scopes": ["chat"] }))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let two = create(&server, A, json!({ "name": "two", "scopes": ["chat"] }))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = chat(&server, &one, Some("alice"), "private-1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        history(&server, &one, Some("alice"), "private-1").status,
        200
    );
    // Another key, another user of the same key, the key without its user:
    // as if the session did not exist.
    for (key, user) in [(&two, Some("alice")), (&one, Some("bob")), (&one, None)] {
        let r = history(&server, key, user, "private-1");
        assert_eq!(r.status, 404, "{user:?}");
        let r = send(
            "DELETE",
            &server.url("/api/sessions/private-1"),
            &[
                ("authorization", &format!("Bearer {key}")),
                ("x-user-id", user.unwrap_or("x")),
            ],
            None,
        );
        assert_eq!(r.status, 404);
        let r = chat(&server, key, user, "private-1");
        assert_eq!(r.status, 404, "{}", r.body);
        let r = get(
            &server.url("/api/chat/private-1/stream"),
            &[("authorization", &format!("Bearer {key}"))],
        );
        assert_eq!(r.status, 404);
    }
    // WebSocket: the key in the query (browsers cannot set headers).
    let ws = server.base().replace("http://", "ws://");
    // A socket of another key attached before the session's first turn is
    // closed when the session gets its owner, and never sees its events.
    let mut early = Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=claimed-1&key={two}"),
        &[],
    )
    .expect("a session without a turn may be attached");
    let r = chat(&server, &one, Some("alice"), "claimed-1");
    assert_eq!(r.status, 200, "{}", r.body);
    match early.next_frame() {
        Ok(tungstenite::Message::Close(_)) | Err(_) => {}
        Ok(other) => panic!("the other key's socket got {other:?}"),
    }
    assert!(Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=private-1&key={two}"),
        &[]
    )
    .is_err());
    assert!(Socket::connect(&format!("{ws}/api/chat/ws?sessionId=private-1"), &[]).is_err());
    let mut s = Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=ws-private&key={two}"),
        &[],
    )
    .expect("a key's own new session");
    // The model allow-list is the gateway's: a socket uses the default.
    s.send(r#"{"type":"message","content":"lighthouses?","model":"@cf/qwen/qwen3-30b-a3b-fp8"}"#);
    assert_eq!(s.next_event()["code"], "model_not_allowed");
    s.send(r#"{"type":"message","content":"lighthouses?"}"#);
    assert_eq!(s.events_until_end().last().unwrap()["type"], "done");
    s.close();
    assert_eq!(history(&server, &one, None, "ws-private").status, 404);
    // The operator reads and erases any session.
    let r = get(
        &server.url("/api/sessions/private-1/history"),
        &[("authorization", &operator())],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = parse_sse(
        chat(&server, &one, Some("alice"), "private-1")
            .body
            .as_bytes(),
    );
    assert_eq!(events.last().unwrap().event, "done");
}

#[test]
fn no_answer_or_log_line_holds_a_secret() {
    let server = shared(Deployment::Dedicated(B));
    let made = create(
        &server,
        B,
        json!({ "name": "secretive", "scopes": ["search", "admin"] }),
    );
    let key = made["key"].as_str().unwrap().to_owned();
    let secret = key[key.len() - 64..].to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let mut answers = vec![
        search(&server, &key, None).body,
        search(&server, &format!("{}{}", &key[..key.len() - 1], "0"), None).body,
        admin(&server, B, "GET", "/admin/keys", None).body,
        admin(&server, B, "GET", &format!("/admin/keys/{id}"), None).body,
        get(
            &server.url("/admin/actors/coordinator/rainbowsmokeofficial"),
            &[("authorization", &operator())],
        )
        .body,
        admin(&server, B, "DELETE", &format!("/admin/keys/{id}"), None).body,
        search(&server, &key, None).body,
    ];
    answers.push(std::fs::read_to_string(server.log_path()).unwrap_or_default());
    for text in &answers {
        assert!(!text.contains(&secret), "a secret leaked: {text}");
    }
}

#[test]
fn an_open_websocket_stops_working_when_its_key_is_revoked() {
    let server = shared(Deployment::Dedicated(B));
    let made = create(&server, B, json!({ "name": "socket", "scopes": ["chat"] }));
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let ws = server.base().replace("http://", "ws://");
    let mut s = Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=revoked-ws&key={key}"),
        &[],
    )
    .expect("connect");
    s.send(r#"{"type":"message","content":"lighthouses?"}"#);
    assert_eq!(s.events_until_end().last().unwrap()["type"], "done");
    let r = admin(&server, B, "DELETE", &format!("/admin/keys/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    // Within the 1 s bound, the next frame on the open socket is refused,
    // and the socket closed.
    std::thread::sleep(Duration::from_millis(1200));
    s.send(r#"{"type":"message","content":"and now?"}"#);
    assert_eq!(s.next_event()["code"], "invalid_key");
    match s.next_frame() {
        Ok(tungstenite::Message::Close(_)) | Err(_) => {}
        Ok(other) => panic!("the socket stayed open: {other:?}"),
    }
}

/// Requests handled by `tenant`'s coordinator so far (this read included).
fn coordinator_requests(server: &Server, tenant: &str) -> u64 {
    let r = admin(
        server,
        tenant,
        "GET",
        &format!("/admin/actors/coordinator/{tenant}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"]["requestsHandled"]
        .as_u64()
        .expect("requestsHandled")
}

#[test]
fn a_burst_of_chat_turns_costs_the_coordinator_a_few_requests() {
    // Its own server: no other test's requests reach this coordinator.
    let dir = PersistDir::new("keys-burst");
    let server = Server::start(Deployment::Dedicated(A), &dir);
    let key = server.key(A);
    let base = server.base().replace("http://", "ws://");
    const SESSIONS: usize = 30;
    for round in 0..3 {
        // Past the isolates' 1 s: the key's check and the tenant's
        // settings are all stale when the sessions connect and turn.
        std::thread::sleep(Duration::from_millis(1_300));
        let before = coordinator_requests(&server, A);
        let all_connected = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
        let threads: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let url = format!("{base}/api/chat/ws?sessionId=burst-{round}-{i}&key={key}");
                let all_connected = all_connected.clone();
                std::thread::spawn(move || {
                    let socket = Socket::connect(&url, &[]);
                    // Every thread reaches the barrier, connected or not.
                    all_connected.wait();
                    let mut socket = socket.expect("connect");
                    socket.send(&json!({ "type": "message", "content": "what guides ships?", "maxTokens": 8 }).to_string());
                    let events = socket.events_until_end();
                    socket.close();
                    events.last().map(|e| e["type"].clone())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("a session thread"), Some(json!("done")));
        }
        // The turns' registry reports (batched) are sent within a second.
        std::thread::sleep(Duration::from_millis(1_500));
        let after = coordinator_requests(&server, A);
        // The count is the coordinator object's since it loaded: it must
        // not have restarted meanwhile.
        let handled = after
            .checked_sub(before + 1)
            .unwrap_or_else(|| panic!("the coordinator restarted: {before} then {after}"));
        // The gateway's key check and tenant policy, the actors' settings
        // and the registry's batched reports: a few requests, not several
        // per session (the isolates' caches, when each miss read for
        // itself, made 21 and 121 in this round).
        assert!(
            handled <= 10,
            "round {round}: {SESSIONS} turns made {handled} coordinator requests"
        );
    }
}
