//! Chat end to end against `wrangler dev`: SSE turns parsed with a real SSE
//! parser, WebSocket conversations with two sockets on one session, tools,
//! history (paged, erased, surviving a restart), the concurrency rule, model
//! failures, isolation, and bad input.

use e2e::chat::{answer_text, parse_sse, Socket};
use e2e::http::{get, send, Reply};
use e2e::{shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

fn chat(server: &Server, tenant: &str, body: Value) -> Reply {
    send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("x-tenant-id", tenant),
            ("authorization", &server.bearer(tenant)),
            ("content-type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

fn history(server: &Server, tenant: &str, session: &str, query: &str) -> Reply {
    get(
        &server.url(&format!("/api/sessions/{session}/history{query}")),
        &[
            ("x-tenant-id", tenant),
            ("authorization", &server.bearer(tenant)),
        ],
    )
}

/// The `data` of every SSE event of a reply, parsed with a real SSE parser.
fn events_of(r: &Reply) -> Vec<Value> {
    parse_sse(r.body.as_bytes())
        .into_iter()
        .map(|e| e.data)
        .collect()
}

/// The roles of a history page's messages, in order.
fn roles(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["role"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Checks the order tool_call → tool_result → message+ → done.
fn assert_turn_shape(types: &[String]) {
    assert!(types.len() >= 4, "{types:?}");
    assert_eq!(types[0], "tool_call", "{types:?}");
    assert_eq!(types[1], "tool_result", "{types:?}");
    assert!(
        types[2..types.len() - 1].iter().all(|t| t == "message"),
        "{types:?}"
    );
    assert_eq!(types.last().map(String::as_str), Some("done"), "{types:?}");
}

#[test]
fn sse_turn_streams_tool_calls_then_a_cited_answer() {
    let server = shared(Deployment::Dedicated(B));
    server.ingest(B,
        json!([
            { "id": "sse-doc-1", "text": "The lighthouse keeper trims the wick every evening before sunset." },
            { "id": "sse-doc-2", "text": "Harbour pilots guide ships through the narrow channel at high tide." }
        ]),
    );
    let r = chat(
        &server,
        B,
        json!({ "sessionId": "sse-1", "message": "when does the lighthouse keeper trim the wick?" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert!(r.header("x-request-id").is_some());
    let sse = parse_sse(r.body.as_bytes());
    let ids: Vec<u64> = sse.iter().map(|e| e.id.parse().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=sse.len() as u64).collect::<Vec<_>>(),
        "every event has an increasing id"
    );
    for e in &sse {
        assert_eq!(e.event, e.data["type"], "SSE event name matches the data");
    }
    let events: Vec<Value> = sse.into_iter().map(|e| e.data).collect();
    assert_turn_shape(&names(&events));
    assert_eq!(events[0]["tool"], "vector_search");
    // The result is a JSON object, as in the seed, not JSON text in a string.
    let result = &events[1]["result"];
    assert!(result.is_object(), "{result}");
    let cited: Vec<&str> = result["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["docId"].as_str().unwrap())
        .collect();
    assert_eq!(cited.first(), Some(&"sse-doc-1"), "{result}");
    // One passage per document, named by its document, with its place there.
    assert_eq!(result["matches"][0]["id"], "sse-doc-1", "{result}");
    assert_eq!(result["matches"][0]["chunk"], 0, "{result}");
    assert_eq!(
        result["matches"][0]["chunkId"].as_str().map(str::len),
        Some(40),
        "{result}"
    );
    let text = answer_text(&events);
    assert!(
        text.contains("trims the wick every evening before sunset. [1]"),
        "{text}"
    );
    assert!(
        text.contains("[1] sse-doc-1 (chunk 0)"),
        "citations point at the ingested document and the passage: {text}"
    );

    // History: the user message, the tool round, the answer; paged.
    let h = history(&server, B, "sse-1", "").json();
    let roles = roles(&h);
    assert_eq!(roles, vec!["user", "assistant", "tool", "assistant"]);
    assert_eq!(
        &h["messages"][2]["content"], result,
        "the history shows the tool result as the event did: a JSON value"
    );
    assert_eq!(h["messages"][3]["content"].as_str().unwrap(), text);
    assert_eq!(
        events.last().unwrap()["messageSeq"],
        h["messages"][3]["seq"]
    );
    assert!(
        events.last().unwrap().get("message_seq").is_none(),
        "one casing: camelCase"
    );
    let page = history(&server, B, "sse-1", "?limit=2").json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    assert_eq!(page["messages"][0]["role"], "tool");
    let before = page["nextBefore"].as_u64().unwrap();
    let older = history(&server, B, "sse-1", &format!("?limit=2&before={before}")).json();
    assert_eq!(older["messages"][0]["role"], "user");
}

#[test]
fn kv_get_reads_only_allowed_keys() {
    let server = shared(Deployment::Dedicated(B));
    let admin = ("authorization", "Bearer e2e-admin-token");
    let ct = ("content-type", "application/json");
    let url = server.url("/admin/config/support_email");
    // Operators set configuration values; kv_get reads them.
    let r = send(
        "PUT",
        &url,
        &[admin, ct],
        Some(br#"{"value":"help@example.com"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "ok": true, "key": "config:support_email", "value": "help@example.com" })
    );
    let ask = |message: &str| {
        events_of(&chat(
            &server,
            B,
            json!({ "sessionId": "kv-1", "message": message }),
        ))
    };
    let events = ask("what is config:support_email ?");
    assert_turn_shape(&names(&events));
    assert_eq!(events[0]["tool"], "kv_get");
    assert_eq!(events[1]["isError"], false);
    assert!(events[1].get("is_error").is_none(), "one casing: camelCase");
    assert!(
        answer_text(&events).contains("The value of config:support_email is help@example.com."),
        "{events:?}"
    );
    // Removed: the tool answers that there is no value.
    let r = send("DELETE", &url, &[admin], None);
    assert_eq!(r.json()["value"], Value::Null);
    let events = ask("and config:support_email now?");
    assert!(answer_text(&events).contains("no value stored for config:support_email"));
    // Outside config: the tool refuses; the turn still completes.
    let events = ask("read secret:admin_token");
    assert_turn_shape(&names(&events));
    assert_eq!(events[1]["isError"], true);
    assert!(events[1]["result"]["error"]
        .as_str()
        .unwrap()
        .contains("only keys under config:"));
    // The config routes check their input and credentials.
    let bad = send(
        "PUT",
        &server.url("/admin/config/a%20b"),
        &[admin, ct],
        Some(br#"{"value":"x"}"#),
    );
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "invalid_request")
    );
    let r = send("PUT", &url, &[ct], Some(br#"{"value":"x"}"#));
    assert_eq!(r.status, 401);
    let r = send("PUT", &url, &[admin, ct], Some(br#"{"value":5}"#));
    assert_eq!(r.status, 400);
}

#[test]
fn websocket_conversation_reaches_every_socket() {
    let server = shared(Deployment::Dedicated(A));
    server.ingest(A,
        json!([{ "id": "ws-doc", "text": "Pelicans scoop fish into the pouch under their bills." }]),
    );
    let url = format!(
        "{}/api/chat/ws?sessionId=ws-1&key={}",
        server.base().replace("http://", "ws://"),
        server.key(A)
    );
    let mut first = Socket::connect(&url, &[]).expect("connect the first socket");
    let mut second =
        Socket::connect(&url, &[("x-tenant-id", A)]).expect("connect the second socket");
    // Bad frames: an error event, and the socket stays usable.
    for bad in [
        "not json",
        r#"{"type":"shout","content":"x"}"#,
        r#"{"type":"message"}"#,
        r#"{"type":"message","content":""}"#,
    ] {
        first.send(bad);
        let e = first.next_event();
        assert_eq!(e["type"], "error", "{bad}: {e}");
    }
    first.send(&json!({ "type": "message", "content": "x".repeat(70_000) }).to_string());
    assert_eq!(first.next_event()["code"], "frame_too_large");

    first.send(r#"{"type":"message","content":"how do pelicans catch fish?"}"#);
    let a = first.events_until_end();
    let b = second.events_until_end();
    assert_turn_shape(&names(&a));
    assert_eq!(a, b, "both sockets see the same answer");
    assert!(answer_text(&a).contains("[1] ws-doc"));

    // The operator sees two sockets; the history is the same as over SSE.
    let inspect = get(
        &server.url("/admin/actors/chat/ws-1"),
        &[("authorization", "Bearer e2e-admin-token")],
    )
    .json();
    assert_eq!(inspect["name"], "mrrainbowsmoke:ws-1");
    assert_eq!(inspect["state"]["connectedSockets"], 2);
    assert_eq!(inspect["state"]["inFlight"], false);
    assert_eq!(inspect["state"]["messageCount"], 4);
    let h = history(&server, A, "ws-1", "").json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 4);
    first.close();
    second.close();
}

#[test]
fn websocket_tenant_by_query_in_shared_mode() {
    let server = shared(Deployment::Shared);
    let ws = server.base().replace("http://", "ws://");
    let key = server.key(B);
    let mut s = Socket::connect(
        &format!("{ws}/api/chat/ws?sessionId=q-1&tenant={B}&key={key}"),
        &[],
    )
    .expect("connect");
    s.send(r#"{"type":"message","content":"anything there?"}"#);
    assert_eq!(s.events_until_end().last().unwrap()["type"], "done");
    s.close();
    for (query, what) in [
        ("sessionId=q-1", "no key"),
        (
            &*format!("sessionId=q-1&tenant={A}&key={key}"),
            "another tenant's key",
        ),
        ("sessionId=q-1&tenant=Bad:Tenant", "invalid tenant"),
        ("sessionId=q-1&tenant=unknown-tenant", "unregistered tenant"),
        ("sessionId=BAD&tenant=mrrainbowsmoke", "invalid session"),
    ] {
        assert!(
            Socket::connect(&format!("{ws}/api/chat/ws?{query}"), &[]).is_err(),
            "{what}"
        );
    }
    // Header and query must agree when both are given.
    let err = Socket::connect(
        &format!(
            "{ws}/api/chat/ws?sessionId=q-1&tenant={A}&key={}",
            server.key(A)
        ),
        &[("x-tenant-id", B)],
    );
    assert!(err.is_err());
    // Without an upgrade the route says so.
    let r = get(
        &server.url(&format!("/api/chat/ws?sessionId=q-1&tenant={A}")),
        &[("authorization", &server.bearer(A))],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (426, "upgrade_required")
    );
}

#[test]
fn sessions_and_tenants_are_isolated() {
    let server = shared(Deployment::Shared);
    server.ingest(
        A,
        json!([{ "id": "iso-a", "text": "Marigold is the launch code of tenant A." }]),
    );
    server.ingest(
        B,
        json!([{ "id": "iso-b", "text": "Tenant B keeps its launch code secret until spring." }]),
    );
    let ask = |tenant: &str, session: &str| {
        let r = chat(
            &server,
            tenant,
            json!({ "sessionId": session, "message": "what about the launch code?" }),
        );
        events_of(&r)
    };
    let a = ask(A, "same-session");
    let b = ask(B, "same-session");
    assert!(answer_text(&a).contains("iso-a") && !answer_text(&a).contains("iso-b"));
    assert!(answer_text(&b).contains("iso-b") && !answer_text(&b).contains("Marigold"));
    let ha = history(&server, A, "same-session", "").json();
    let hb = history(&server, B, "same-session", "").json();
    assert_eq!(ha["messages"].as_array().unwrap().len(), 4);
    assert_eq!(hb["messages"].as_array().unwrap().len(), 4);
    assert!(!hb.to_string().contains("Marigold"));
    // A session that has had no turn does not exist.
    assert_eq!(history(&server, A, "other-session", "").status, 404);
    // Erasing one session leaves the other tenant's alone.
    let r = send(
        "DELETE",
        &server.url("/api/sessions/same-session"),
        &[("x-tenant-id", A), ("authorization", &server.bearer(A))],
        None,
    );
    assert_eq!(r.json(), json!({ "ok": true, "messagesRemoved": 4 }));
    assert_eq!(
        history(&server, A, "same-session", "").json()["messages"],
        json!([])
    );
    assert_eq!(
        history(&server, B, "same-session", "").json()["messages"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn concurrent_turns_never_interleave() {
    let server = shared(Deployment::Dedicated(A));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = server.url("/api/chat");
            let auth = server.bearer(A);
            std::thread::spawn(move || {
                send(
                    "POST",
                    &url,
                    &[
                        ("x-tenant-id", A),
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(
                        json!({ "sessionId": "busy-1", "message": format!("question {i}") })
                            .to_string()
                            .as_bytes(),
                    ),
                )
            })
        })
        .collect();
    let mut answered = 0;
    for h in handles {
        let r = h.join().unwrap();
        match r.status {
            200 => {
                let events: Vec<Value> = events_of(&r);
                assert_eq!(names(&events).last().map(String::as_str), Some("done"));
                answered += 1;
            }
            409 => assert_eq!(r.error_code(), "busy"),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(answered >= 1);
    // Every stored turn is whole: user, tool round, answer, in that order.
    let h = history(&server, A, "busy-1", "?limit=200").json();
    let roles = roles(&h);
    assert_eq!(roles.len(), answered * 4, "{roles:?}");
    for turn in roles.chunks(4) {
        assert_eq!(turn, ["user", "assistant", "tool", "assistant"]);
    }
}

#[test]
fn a_failing_model_ends_with_an_error_and_keeps_history_consistent() {
    let server = shared(Deployment::Dedicated(B));
    let r = chat(
        &server,
        B,
        json!({ "sessionId": "fail-1", "message": "explain harbours [[fail-model]]" }),
    );
    assert_eq!(r.status, 200);
    let events: Vec<Value> = events_of(&r);
    let types = names(&events);
    assert_eq!(types.last().map(String::as_str), Some("error"), "{types:?}");
    assert_eq!(events.last().unwrap()["code"], "model_failed");
    assert!(!types.contains(&"done".to_owned()));
    // The user message and the complete tool round are kept; the half answer is not.
    let h = history(&server, B, "fail-1", "").json();
    let roles = roles(&h);
    assert_eq!(roles, vec!["user", "assistant", "tool"]);
    // The session is usable again.
    let r = chat(
        &server,
        B,
        json!({ "sessionId": "fail-1", "message": "and now?" }),
    );
    let events: Vec<Value> = events_of(&r);
    assert_eq!(names(&events).last().map(String::as_str), Some("done"));
}

#[test]
fn history_survives_a_restart() {
    let dir = PersistDir::new("chat-restart");
    let before;
    let key;
    {
        let server = Server::start(Deployment::Dedicated(A), &dir);
        key = server.key(A);
        let r = chat(
            &server,
            A,
            json!({ "sessionId": "durable-1", "message": "remember me" }),
        );
        assert_eq!(r.status, 200);
        before = history(&server, A, "durable-1", "").json();
        assert_eq!(before["messages"].as_array().unwrap().len(), 4);
    }
    let server = Server::start(Deployment::Dedicated(A), &dir);
    server.adopt_key(A, key);
    assert_eq!(history(&server, A, "durable-1", "").json(), before);
}

#[test]
fn bad_chat_input_is_refused() {
    let server = shared(Deployment::Dedicated(A));
    let url = server.url("/api/chat");
    let ct = ("content-type", "application/json");
    for (what, headers, body, status, code) in [
        (
            "bad session",
            vec![ct],
            json!({"sessionId":"Not Valid","message":"hi"}).to_string(),
            400,
            "invalid_session",
        ),
        (
            "long session",
            vec![ct],
            json!({"sessionId":"s".repeat(129),"message":"hi"}).to_string(),
            400,
            "invalid_session",
        ),
        (
            "empty message",
            vec![ct],
            json!({"sessionId":"s","message":"  "}).to_string(),
            400,
            "invalid_message",
        ),
        (
            "long message",
            vec![ct],
            json!({"sessionId":"s","message":"x".repeat(9000)}).to_string(),
            400,
            "invalid_message",
        ),
        (
            "huge body",
            vec![ct],
            json!({"sessionId":"s","message":"x".repeat(70_000)}).to_string(),
            413,
            "payload_too_large",
        ),
        (
            "maxTokens",
            vec![ct],
            json!({"sessionId":"s","message":"hi","maxTokens":100000}).to_string(),
            400,
            "invalid_message",
        ),
        (
            "bad model",
            vec![ct],
            json!({"sessionId":"s","message":"hi","model":"rm -rf"}).to_string(),
            400,
            "invalid_message",
        ),
        (
            "missing field",
            vec![ct],
            json!({"message":"hi"}).to_string(),
            400,
            "invalid_json",
        ),
        ("not json", vec![ct], "{".to_owned(), 400, "invalid_json"),
        (
            "text/plain, not JSON",
            vec![("content-type", "text/plain")],
            "hi".to_owned(),
            400,
            "invalid_json",
        ),
        (
            "a form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            "message=hi".to_owned(),
            415,
            "unsupported_media_type",
        ),
    ] {
        let auth = server.bearer(A);
        let mut headers = headers;
        headers.push(("authorization", &auth));
        let r = send("POST", &url, &headers, Some(body.as_bytes()));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{what}: {}",
            r.body
        );
    }
    let r = get(&url, &[("authorization", &server.bearer(A))]);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    for query in ["?limit=0", "?limit=500", "?before=x"] {
        assert_eq!(history(&server, A, "s", query).status, 400, "{query}");
    }
    assert_eq!(history(&server, A, "Bad", "").status, 400);
    // Nothing above created a session.
    assert_eq!(history(&server, A, "s", "").status, 404);
}
