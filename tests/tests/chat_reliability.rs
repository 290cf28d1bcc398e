//! Chat reliability against `wrangler dev`: WebSocket protocol errors sent
//! byte for byte over raw TCP do not disturb other tenants' turns; a turn
//! survives its client and its events resume exactly (SSE `Last-Event-ID`,
//! WebSocket `resume`); a turn interrupted by a restart is marked failed,
//! by the next request or, with none, by the session's alarm.

use e2e::chat::{parse_sse, Socket};
use e2e::http::{get, send};
use e2e::{now_ms, shared, Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";

fn docs() -> Value {
    json!([
        { "id": "rel-doc-1", "text": "The ferry to the island leaves every morning at seven from the north pier. Tickets are sold on board." },
        { "id": "rel-doc-2", "text": "Lighthouse tours run on weekends; visitors climb 120 steps to the lamp room." }
    ])
}

fn chat_body(session: &str, message: &str) -> String {
    json!({ "sessionId": session, "message": message }).to_string()
}

/// A whole SSE turn: every event as `(id, data)`.
fn sse_turn(server: &Server, tenant: &str, session: &str, message: &str) -> Vec<(String, Value)> {
    let r = send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("x-tenant-id", tenant),
            ("authorization", &server.bearer(tenant)),
            ("content-type", "application/json"),
        ],
        Some(chat_body(session, message).as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    parse_sse(r.body.as_bytes())
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect()
}

fn last_type(events: &[(String, Value)]) -> String {
    events
        .last()
        .and_then(|(_, d)| d["type"].as_str())
        .unwrap_or("none")
        .to_owned()
}

fn history(server: &Server, tenant: &str, session: &str) -> Value {
    let r = get(
        &server.url(&format!("/api/sessions/{session}/history")),
        &[
            ("x-tenant-id", tenant),
            ("authorization", &server.bearer(tenant)),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Starts an SSE turn over a raw socket, reads until `until` complete events
/// have arrived, then drops the connection: a client that goes away.
fn sse_then_disconnect(
    server: &Server,
    tenant: &str,
    session: &str,
    message: &str,
    until: usize,
) -> Vec<(String, Value)> {
    let addr = server.base().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = chat_body(session, message);
    let request = format!(
        "POST /api/chat HTTP/1.1\r\nhost: {addr}\r\nx-tenant-id: {tenant}\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        server.bearer(tenant),
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        let Some((_, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        // Chunked framing aside, SSE events are the blocks between blank
        // lines that carry an `id:` and a `data:` line.
        let events: Vec<(String, Value)> = body
            .split("\n\n")
            .filter_map(|block| {
                let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((id.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
        if events.len() >= until {
            drop(stream);
            return events.into_iter().take(until).collect();
        }
    }
}

/// `GET /api/chat/<session>/stream` with `Last-Event-ID`.
fn resume_sse(
    server: &Server,
    tenant: &str,
    session: &str,
    last: Option<&str>,
) -> e2e::http::Reply {
    let auth = server.bearer(tenant);
    let mut headers = vec![("x-tenant-id", tenant), ("authorization", auth.as_str())];
    if let Some(last) = last {
        headers.push(("last-event-id", last));
    }
    get(
        &server.url(&format!("/api/chat/{session}/stream")),
        &headers,
    )
}

fn data_of(events: &[(String, Value)]) -> Vec<Value> {
    events.iter().map(|(_, d)| d.clone()).collect()
}

fn ids_of(events: &[(String, Value)]) -> Vec<u64> {
    events
        .iter()
        .map(|(id, _)| id.parse().expect("a numeric id"))
        .collect()
}

#[test]
fn a_turn_survives_its_client_and_resumes_exactly() {
    let server = shared(Deployment::Dedicated(B));
    server.ingest(B, docs());
    // Slow answers, so the client leaves while the turn is still running.
    let question = "when does the ferry leave for the island? [[slow-model]]";
    let reference = sse_turn(&server, B, "resume-ref", question);
    assert_eq!(last_type(&reference), "done", "{reference:?}");

    // SSE: leave after the first event, come back with Last-Event-ID.
    let first = sse_then_disconnect(&server, B, "resume-cut", question, 1);
    let r = resume_sse(&server, B, "resume-cut", Some(&first[0].0));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let rest: Vec<(String, Value)> = parse_sse(r.body.as_bytes())
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect();
    let mut joined = first.clone();
    joined.extend(rest);
    assert_eq!(
        data_of(&joined),
        data_of(&reference),
        "the interrupted run, resumed, is the uninterrupted run"
    );
    let ids = ids_of(&joined);
    assert_eq!(
        ids,
        (ids[0]..ids[0] + ids.len() as u64).collect::<Vec<_>>(),
        "no event twice, none missing"
    );

    // The turn completed and was stored though its client left.
    let h = history(&server, B, "resume-cut");
    let roles: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(h["messages"][0]["turn"]["status"], "done");

    // Resuming is idempotent: again from the same id, the same events; from
    // the start (no id), the whole turn; from the last id, nothing (204).
    let again = parse_sse(
        resume_sse(&server, B, "resume-cut", Some(&first[0].0))
            .body
            .as_bytes(),
    );
    assert_eq!(again.len(), joined.len() - 1);
    let whole: Vec<(String, Value)> =
        parse_sse(resume_sse(&server, B, "resume-cut", None).body.as_bytes())
            .into_iter()
            .map(|e| (e.id, e.data))
            .collect();
    assert_eq!(whole, joined);
    // From an event inside a stored row (a turn's pieces are stored
    // together, several to a row): exactly the events after it.
    for mid in [joined.len() / 2, joined.len() - 2] {
        let from_mid: Vec<(String, Value)> = parse_sse(
            resume_sse(&server, B, "resume-cut", Some(&joined[mid].0))
                .body
                .as_bytes(),
        )
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect();
        assert_eq!(from_mid, joined[mid + 1..], "after event {mid}");
    }
    let last = joined.last().unwrap().0.clone();
    let r = resume_sse(&server, B, "resume-cut", Some(&last));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = resume_sse(&server, B, "resume-cut", Some("999999"));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_request")
    );
    let r = resume_sse(&server, B, "resume-cut", Some("x"));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_last_event_id")
    );
    let r = resume_sse(&server, B, "resume-never", None);
    assert_eq!(r.status, 404, "{}", r.body);

    // WebSocket: the same replay after an id, then `resumed`.
    let url = format!(
        "{}/api/chat/ws?sessionId=resume-cut&key={}",
        server.base().replace("http://", "ws://"),
        server.key(B)
    );
    let mut socket = Socket::connect(&url, &[("x-tenant-id", B)]).expect("connect");
    let after: u64 = first[0].0.parse().unwrap();
    socket.send(&json!({ "type": "resume", "after": after }).to_string());
    let mut replayed = Vec::new();
    loop {
        let e = socket.next_event();
        if e["type"] == "resumed" {
            assert_eq!(e["following"], false);
            assert_eq!(e["replayed"], replayed.len());
            break;
        }
        replayed.push(e);
    }
    let expected: Vec<Value> = joined[1..]
        .iter()
        .map(|(id, d)| {
            let mut d = d.clone();
            d["eventId"] = json!(id.parse::<u64>().unwrap());
            d
        })
        .collect();
    assert_eq!(replayed, expected);
    socket.close();
}

#[test]
fn a_websocket_client_resumes_a_running_turn() {
    let server = shared(Deployment::Dedicated(A));
    server.ingest(A, docs());
    let url = format!(
        "{}/api/chat/ws?sessionId=ws-resume&key={}",
        server.base().replace("http://", "ws://"),
        server.key(A)
    );
    let mut first = Socket::connect(&url, &[("x-tenant-id", A)]).expect("connect");
    first.send(
        &json!({ "type": "message", "content": "how many steps to the lamp room? [[slow-model]]" })
            .to_string(),
    );
    let e1 = first.next_event();
    let e2 = first.next_event();
    let seen_until = e2["eventId"]
        .as_u64()
        .unwrap_or_else(|| panic!("events carry an id: {e1} {e2}"));
    first.close(); // leaves mid-turn
    let mut second = Socket::connect(&url, &[("x-tenant-id", A)]).expect("reconnect");
    second.send(&json!({ "type": "resume", "after": seen_until }).to_string());
    let mut rest = Vec::new();
    let mut resumed = false;
    let ended = |rest: &[Value]| {
        rest.iter()
            .any(|e| e["type"] == "done" || e["type"] == "error")
    };
    while !(resumed && ended(&rest)) {
        let e = second.next_event();
        if e["type"] == "resumed" {
            resumed = true;
        } else {
            rest.push(e);
        }
    }
    rest.sort_by_key(|e| e["eventId"].as_u64());
    assert_eq!(rest.last().unwrap()["type"], "done", "{rest:?}");
    // The second socket got the events from before it connected by replay
    // and the later ones live: together, every event once.
    let mut ids: Vec<u64> = [&e1, &e2]
        .into_iter()
        .chain(rest.iter())
        .map(|e| e["eventId"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    let start = ids[0];
    assert_eq!(
        ids,
        (start..start + ids.len() as u64).collect::<Vec<_>>(),
        "no event twice, none missing: {ids:?}"
    );
    second.close();
}

/// Upgrades a raw TCP connection to a WebSocket on the chat route.
fn raw_socket(server: &Server, tenant: &str, session: &str) -> TcpStream {
    let addr = server.base().trim_start_matches("http://").to_owned();
    // A customer of tenant A with a valid key: the threat is any client.
    let key = server.key(tenant);
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "GET /api/chat/ws?sessionId={session}&tenant={tenant}&key={key} HTTP/1.1\r\nhost: {addr}\r\n\
         upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the upgrade");
        assert!(
            n == 1,
            "closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A masked client frame with the given first byte and payload.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

#[test]
fn websocket_protocol_errors_do_not_break_other_tenants_turns() {
    let server = shared(Deployment::Shared);
    server.ingest(B, docs());
    // Another tenant's turns, over SSE and a WebSocket, slow enough to be in
    // flight while the bad frames arrive.
    let sse_server = std::sync::Arc::clone(&server);
    let sse = std::thread::spawn(move || {
        (0..4)
            .map(|i| {
                last_type(&sse_turn(
                    &sse_server,
                    B,
                    &format!("victim-sse-{i}"),
                    "when does the ferry leave? [[slow-model]]",
                ))
            })
            .collect::<Vec<_>>()
    });
    let ws_url = format!(
        "{}/api/chat/ws?sessionId=victim-ws&tenant={B}&key={}",
        server.base().replace("http://", "ws://"),
        server.key(B)
    );
    let ws = std::thread::spawn(move || {
        let mut socket = Socket::connect(&ws_url, &[]).expect("connect");
        let ends: Vec<String> = (0..3)
            .map(|_| {
                socket.send(
                    r#"{"type":"message","content":"how many steps in the lighthouse? [[slow-model]]"}"#,
                );
                let events = socket.events_until_end();
                events.last().unwrap()["type"].as_str().unwrap().to_owned()
            })
            .collect();
        socket.close();
        ends
    });
    let bad_frames: [(&str, Vec<u8>); 4] = [
        ("reserved opcode", frame(0x83, b"x")),
        ("RSV1 set", frame(0xC1, b"x")),
        ("fragmented ping", frame(0x09, b"")),
        ("stray continuation", frame(0x80, b"x")),
    ];
    let started = Instant::now();
    let mut rounds = 0;
    while !(sse.is_finished() && ws.is_finished()) || rounds < 3 {
        for (what, bytes) in &bad_frames {
            let mut s = raw_socket(&server, A, &format!("attacker-{rounds}"));
            s.write_all(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            // The runtime fails the socket (a close frame, or the connection
            // drops); wait a moment for it, then go on with the next frame.
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        rounds += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "took too long"
        );
    }
    let sse_ends = sse.join().expect("the SSE client");
    let ws_ends = ws.join().expect("the WebSocket client");
    assert_eq!(sse_ends, vec!["done"; 4], "every SSE turn completed");
    assert_eq!(ws_ends, vec!["done"; 3], "every WebSocket turn completed");
    // The attacked tenant's chat still works.
    let events = sse_turn(&server, A, "after-attack", "anything?");
    assert_eq!(last_type(&events), "done");
}

/// The state of session `session` of tenant `tenant` in the operator's view
/// of its object (`GET /admin/actors/chat/<id>`).
fn chat_state(server: &Server, tenant: &str, session: &str) -> Value {
    let r = get(
        &server.url(&format!("/admin/actors/chat/{session}")),
        &[
            ("x-tenant-id", tenant),
            ("authorization", &format!("Bearer {}", e2e::ADMIN_TOKEN)),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"].clone()
}

/// Waits (up to 10 s) until the operator's view of `session` shows a state
/// that `ready` accepts, and returns it.
fn wait_for_state(
    server: &Server,
    tenant: &str,
    session: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let waited = Instant::now();
    loop {
        let state = chat_state(server, tenant, session);
        if ready(&state) {
            return state;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "{what} not seen within 10 s: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a server on `dir` (with `vars`) and a turn of `session` whose
/// model hangs after the first piece of its answer, then, once the turn's
/// deadline alarm is written (a second after it began), stops the server in
/// the middle of the turn. Returns the key that started the turn and the
/// events its client saw: the tool round and the first piece.
fn interrupted_turn(
    dir: &PersistDir,
    vars: &[(&str, &str)],
    session: &str,
) -> (String, Vec<(String, Value)>) {
    let server = Server::start_with_vars(Deployment::Dedicated(A), dir, vars);
    let key = server.key(A);
    server.ingest(A, docs());
    let seen = sse_then_disconnect(
        &server,
        A,
        session,
        "when does the ferry leave? [[hang-model]]",
        3,
    );
    let types: Vec<&str> = seen
        .iter()
        .map(|(_, d)| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["tool_call", "tool_result", "message"]);
    wait_for_state(&server, A, session, "the deadline alarm", |state| {
        state["inFlight"] == true && state["alarmAtMs"].is_u64()
    });
    (key, seen)
}

#[test]
fn a_turn_interrupted_by_a_restart_is_marked_failed() {
    let dir = PersistDir::new("chat-interrupted");
    let (key, tool_round) = interrupted_turn(&dir, &[], "interrupted-1");
    let server = Server::start(Deployment::Dedicated(A), &dir);
    // The session is its key's: the same key after the restart.
    server.adopt_key(A, key);
    let h = history(&server, A, "interrupted-1");
    let messages = h["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool"],
        "no partial answer: {h}"
    );
    assert_eq!(messages[0]["turn"]["status"], "failed", "{h}");
    assert_eq!(messages[0]["turn"]["error"]["code"], "turn_interrupted");
    // A client resuming the turn gets its events and the failure.
    let r = resume_sse(&server, A, "interrupted-1", Some(&tool_round[1].0));
    assert_eq!(r.status, 200, "{}", r.body);
    let rest = parse_sse(r.body.as_bytes());
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "turn_interrupted");
    // The session takes the next turn.
    let events = sse_turn(&server, A, "interrupted-1", "and the lighthouse?");
    assert_eq!(last_type(&events), "done");
}

/// A turn lost with its isolate is failed by the session's own alarm in the
/// next runtime, with no request to the session: the deadline alarm the turn
/// set survives the restart, and the object it wakes finds the turn running
/// in storage and fails it. Seen in the server's log (the `turn_failed`
/// event, what an operator sees) before anything asks for the session.
#[test]
fn the_alarm_fails_a_turn_lost_with_its_isolate_without_a_request() {
    let dir = PersistDir::new("chat-alarm-restart");
    let vars = [("CHAT_TURN_TIMEOUT_SECS", "10")];
    // `interrupted_turn` waits for the deadline alarm (written a second
    // after the turn began) before it stops the server.
    let (key, _) = interrupted_turn(&dir, &vars, "alarmed-1");
    let server = Server::start_with_vars(Deployment::Dedicated(A), &dir, &vars);
    server.adopt_key(A, key);
    // The session's events in the log: `turn_failed` from the recovery of
    // the object the alarm woke, then the chat `alarm` event itself (a
    // request would have woken it without the second).
    let session_event = |line: &str, name: &str| -> Option<Value> {
        let event: Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
        (event["event"] == name && event["actor"] == "chat" && event["sessionId"] == "alarmed-1")
            .then_some(event)
    };
    let started = Instant::now();
    let (failed, alarm) = loop {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        let failed = log.lines().find_map(|l| session_event(l, "turn_failed"));
        let alarm = log.lines().find_map(|l| session_event(l, "alarm"));
        if let (Some(failed), Some(alarm)) = (failed, alarm) {
            break (failed, alarm);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no turn_failed and alarm events for the session within 60 s; log {}",
            server.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alarm["tenant"], A, "{alarm}");
    assert_eq!(failed["code"], "turn_interrupted", "{failed}");
    assert_eq!(failed["tenant"], A, "{failed}");
    // The history says so too, and the session takes the next turn.
    let h = history(&server, A, "alarmed-1");
    let messages = h["messages"].as_array().unwrap();
    assert_eq!(messages[0]["turn"]["status"], "failed", "{h}");
    assert_eq!(messages[0]["turn"]["error"]["code"], "turn_interrupted");
    let events = sse_turn(&server, A, "alarmed-1", "and the lighthouse?");
    assert_eq!(last_type(&events), "done");
}

/// The session's alarm is written a second after a turn began, not during
/// the turn's first second (a write the turn's next event would wait for):
/// the turn's deadline if it still runs then, else the session's idle
/// expiry. Seen in the session's admin view while a turn hangs after its
/// first piece, while one waits for a model that produces nothing, and
/// after a turn that ended at once.
#[test]
fn a_sessions_alarm_is_its_running_turns_deadline_or_its_idle_expiry() {
    let dir = PersistDir::new("chat-armed");
    // A model that produces nothing is given up after 4 s (two attempts).
    let server = std::sync::Arc::new(Server::start_with_vars(
        Deployment::Dedicated(A),
        &dir,
        &[("CHAT_FIRST_OUTPUT_TIMEOUT_SECS", "4")],
    ));
    server.ingest(A, docs());

    // Hangs after its first piece: three events seen, the turn still runs.
    let began = now_ms();
    let seen = sse_then_disconnect(&server, A, "armed-hang", "ferry? [[hang-model]]", 3);
    assert_eq!(seen.len(), 3);
    // Not written in the turn's first second (a new session has none before).
    let state = chat_state(&server, A, "armed-hang");
    if now_ms() - began < 900 {
        assert_eq!(state["alarmAtMs"], Value::Null, "{state}");
    }
    let state = wait_for_state(&server, A, "armed-hang", "the deadline alarm", |state| {
        deadline_near(state, began)
    });
    assert_eq!(state["inFlight"], true, "{state}");

    // Produces nothing: no event for seconds, and the alarm still comes
    // within about a second.
    let began = now_ms();
    let stalled = {
        let server = std::sync::Arc::clone(&server);
        std::thread::spawn(move || {
            sse_turn(&server, A, "armed-stall", "ferry? [[model-all-stall]]")
        })
    };
    let state = wait_for_state(&server, A, "armed-stall", "the deadline alarm", |state| {
        state["inFlight"] == true && deadline_near(state, began)
    });
    assert_eq!(state["lastEventId"], Value::Null, "{state}");
    let events = stalled.join().expect("the stalled turn");
    assert_eq!(last_type(&events), "error", "{events:?}");

    // Ends at once (a new session's first turn): its alarm is the idle
    // expiry (CHAT_IDLE_EXPIRY_DAYS, 30 by default) from the turn. A turn
    // that took a second or more (a slow machine) had its deadline written
    // while it ran, which moves to the expiry only when it fires.
    let began = now_ms();
    let events = sse_turn(&server, A, "armed-quick", "when does the ferry leave?");
    assert_eq!(last_type(&events), "done", "{events:?}");
    let ended = now_ms();
    let state = wait_for_state(&server, A, "armed-quick", "an alarm", |state| {
        state["alarmAtMs"].is_u64()
    });
    if ended - began < 1_000 {
        assert!(idle_expiry_of(&state, began, ended), "{state}");
    } else {
        // The client's time includes the gateway's: the turn itself may
        // still have ended within its second.
        eprintln!("the quick turn took {} ms", ended - began);
        assert!(
            deadline_near(&state, began) || idle_expiry_of(&state, began, ended),
            "{state}"
        );
    }
}

/// Whether `state`'s alarm is the deadline (the default
/// `CHAT_TURN_TIMEOUT_SECS`, 120 s) of a turn begun at `began`.
fn deadline_near(state: &Value, began: u64) -> bool {
    let at = state["alarmAtMs"].as_u64().unwrap_or(0);
    at >= began + 110_000 && at <= now_ms() + 121_000
}

/// 30 days, the default `CHAT_IDLE_EXPIRY_DAYS`.
const IDLE_EXPIRY_MS: u64 = 30 * 24 * 3600 * 1000;

/// Whether `state`'s alarm is the idle expiry of a session whose last
/// message was stored between `began` and `ended`.
fn idle_expiry_of(state: &Value, began: u64, ended: u64) -> bool {
    let at = state["alarmAtMs"].as_u64().unwrap_or(0);
    state["inFlight"] == false && at >= began + IDLE_EXPIRY_MS && at <= ended + IDLE_EXPIRY_MS
}

/// A session whose isolate was lost in the second after its quick first
/// turn (before the turn's arming wrote its alarm) has messages and no
/// alarm: it would never expire. The next isolate that binds it writes the
/// missing alarm. The server is stopped as soon as the turn is done; if
/// the alarm was written before it stopped anyway, this run checks only
/// that it is still right after the restart (it says so).
#[test]
fn a_session_whose_alarm_was_lost_with_its_isolate_gets_it_back() {
    let dir = PersistDir::new("chat-alarm-lost");
    let (key, began, ended) = {
        let server = Server::start(Deployment::Dedicated(A), &dir);
        let key = server.key(A);
        let began = now_ms();
        let events = sse_turn(&server, A, "lost-alarm", "when does the ferry leave?");
        let ended = now_ms();
        assert_eq!(last_type(&events), "done", "{events:?}");
        (key, began, ended)
        // The server stops here.
    };
    let server = Server::start(Deployment::Dedicated(A), &dir);
    server.adopt_key(A, key);
    // The operator's view reads the stored alarm before it binds the session.
    let first = chat_state(&server, A, "lost-alarm");
    if !first["alarmAtMs"].is_null() {
        // Written before the server stopped (the turn's deadline, if the
        // turn ran a second): nothing was lost in this run.
        eprintln!("the alarm was written before the server stopped: {first}");
        assert!(
            deadline_near(&first, began) || idle_expiry_of(&first, began, ended),
            "{first}"
        );
        return;
    }
    wait_for_state(&server, A, "lost-alarm", "the idle expiry alarm", |state| {
        idle_expiry_of(state, began, ended)
    });
}
