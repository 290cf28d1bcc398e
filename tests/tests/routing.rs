//! Model routing end to end against `wrangler dev`: the tenant's chat
//! fallbacks serve a turn when its default model is overloaded (429), fails
//! (500) or stalls before its first output, and the `done` event names the
//! model that answered; when every model stalls, the generation timeout ends
//! the turn with a clear `error` (`model_timeout`) and the session takes the
//! next turn; the settings that drive it are validated.
//!
//! Faults come from the test-only wrapper of the generator port
//! (`FAULT_INJECTION`): a marker in the message, `[[model-<place>-<fault>]]`,
//! fails the model at that place of the chain. In the embedded deployment
//! every model of the chain is served by the extractive generator under its
//! own name, so the route is visible in `done.model`. Short timeouts
//! (`CHAT_FIRST_OUTPUT_TIMEOUT_SECS`, `CHAT_GENERATION_TIMEOUT_SECS`) keep
//! the tests quick.

use e2e::chat::parse_sse;
use e2e::http::{send, Reply};
use e2e::{Deployment, PersistDir, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const A: &str = "mrrainbowsmoke";
const PRIMARY: &str = "@cf/meta/llama-3.3-70b-instruct-fp8-fast";
const FALLBACK: &str = "@cf/qwen/qwen3-30b-a3b-fp8";

fn start(label: &str) -> (PersistDir, Server) {
    let dir = PersistDir::new(label);
    let server = Server::start_with_vars(
        Deployment::Dedicated(A),
        &dir,
        &[
            ("CHAT_FIRST_OUTPUT_TIMEOUT_SECS", "1"),
            ("CHAT_GENERATION_TIMEOUT_SECS", "2"),
        ],
    );
    server.ingest(
        A,
        json!([
            { "id": "route-doc-1", "text": "The ferry to the island leaves every morning at seven from the north pier." },
            { "id": "route-doc-2", "text": "Lighthouse tours run on weekends; visitors climb 120 steps to the lamp room." }
        ]),
    );
    (dir, server)
}

/// Changes the tenant's settings: the next turn runs on them (the one
/// isolate of `wrangler dev` forgets the ones it held:
/// `a_settings_change_applies_to_the_next_turn_at_once`).
fn patch_tenant(server: &Server, body: Value) -> Reply {
    server.as_operator(A, "PATCH", "/admin/tenant", Some(body))
}

/// A whole SSE turn: the events' data, in order.
fn turn(server: &Server, session: &str, body: Value) -> Vec<Value> {
    let mut body = body;
    body["sessionId"] = json!(session);
    let r = send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("x-tenant-id", A),
            ("authorization", &server.bearer(A)),
            ("content-type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    parse_sse(r.body.as_bytes())
        .into_iter()
        .map(|e| e.data)
        .collect()
}

fn ask(server: &Server, session: &str, message: &str) -> Vec<Value> {
    turn(server, session, json!({ "message": message }))
}

/// The name the embedded generator answers under when it stands in for
/// `model` (this deployment has no Workers AI).
fn stand_in(model: &str) -> String {
    format!("local/extractive:{model}")
}

fn last(events: &[Value]) -> &Value {
    events.last().expect("a turn has events")
}

#[test]
fn fallbacks_serve_a_turn_the_default_model_cannot() {
    let (_dir, server) = start("routing-fallback");
    let r = patch_tenant(
        &server,
        json!({ "defaultModels": { "chat": PRIMARY, "chatFallbacks": [FALLBACK] } }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["tenant"]["settings"]["defaultModels"]["chatFallbacks"],
        json!([FALLBACK])
    );

    // Healthy: the default answers.
    let events = ask(&server, "route-ok", "when does the ferry leave?");
    assert_eq!(last(&events)["type"], "done", "{events:?}");
    assert_eq!(last(&events)["model"], stand_in(PRIMARY));

    // Overloaded, failing, or stalled before its first output: the fallback
    // serves the whole turn (its tool round and its answer).
    for fault in ["429", "500", "stall"] {
        let session = format!("route-{fault}");
        let message = format!("when does the ferry leave? [[model-0-{fault}]]");
        let started = Instant::now();
        let events = ask(&server, &session, &message);
        let done = last(&events);
        assert_eq!(done["type"], "done", "{fault}: {events:?}");
        assert_eq!(
            done["model"],
            stand_in(FALLBACK),
            "{fault}: the model that answered"
        );
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "message")
            .filter_map(|e| e["content"].as_str())
            .collect();
        assert!(text.contains("ferry"), "{fault}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{fault}: retries and fallbacks are bounded"
        );
    }

    // The alias names the default chain, for any key.
    let events = turn(
        &server,
        "route-alias",
        json!({ "message": "when does the ferry leave? [[model-0-429]]", "model": "chat" }),
    );
    assert_eq!(last(&events)["model"], stand_in(FALLBACK), "{events:?}");

    // A model named by the turn is served alone: no fallback behind it.
    let r = patch_tenant(&server, json!({ "defaultModels": { "chat": FALLBACK } }));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = turn(
        &server,
        "route-named",
        json!({ "message": "ferry? [[model-0-500]]", "model": FALLBACK }),
    );
    assert_eq!(last(&events)["type"], "error", "{events:?}");
    assert_eq!(last(&events)["code"], "model_failed");
}

/// The coordinator that took a settings change makes its isolate forget
/// the settings it held (`coordinator::settings::forget`): its next turn,
/// even right after one that read them, runs on the new ones. (Under
/// `wrangler dev` every object shares that isolate; deployed, the others
/// see the change within their caches' bounds.)
#[test]
fn a_settings_change_applies_to_the_next_turn_at_once() {
    let (_dir, server) = start("routing-next-turn");
    let events = ask(&server, "next-1", "when does the ferry leave?");
    assert_eq!(last(&events)["type"], "done", "{events:?}");
    assert_ne!(last(&events)["model"], stand_in(FALLBACK), "{events:?}");
    // No wait: the turn above read the settings less than a second ago.
    let r = server.as_operator(
        A,
        "PATCH",
        "/admin/tenant",
        Some(json!({ "defaultModels": { "chat": FALLBACK } })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = ask(&server, "next-2", "when does the ferry leave?");
    assert_eq!(last(&events)["type"], "done", "{events:?}");
    assert_eq!(last(&events)["model"], stand_in(FALLBACK), "{events:?}");
}

#[test]
fn every_model_stalling_ends_the_turn_and_frees_the_session() {
    let (_dir, server) = start("routing-timeout");
    let r = patch_tenant(
        &server,
        json!({ "defaultModels": { "chatFallbacks": [FALLBACK] } }),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let started = Instant::now();
    let events = ask(&server, "route-stall", "ferry? [[model-all-stall]]");
    let error = last(&events);
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["code"], "model_timeout", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains(FALLBACK),
        "the message says what was tried: {error}"
    );
    // Two models, two attempts each, 1 s first-output timeouts and the
    // backoffs: seconds, not the turn's two minutes.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // The session is free at once.
    let events = ask(&server, "route-stall", "and the lighthouse?");
    assert_eq!(last(&events)["type"], "done", "{events:?}");

    // A model that stalls after its first piece ends at the generation
    // timeout (no retry: the client saw text), and the session is free.
    let events = ask(&server, "route-hang", "ferry? [[hang-model]]");
    assert_eq!(last(&events)["type"], "error", "{events:?}");
    assert_eq!(last(&events)["code"], "model_timeout");
    let events = ask(&server, "route-hang", "and the lighthouse?");
    assert_eq!(last(&events)["type"], "done", "{events:?}");
}

#[test]
fn routing_settings_are_validated() {
    let (_dir, server) = start("routing-settings");
    for (body, code) in [
        (
            json!({ "defaultModels": { "chatFallbacks": ["@cf/a/b", "@cf/c/d", "@cf/e/f", "@cf/g/h"] } }),
            "invalid_settings",
        ),
        (
            json!({ "defaultModels": { "chatFallbacks": ["not a model"] } }),
            "invalid_settings",
        ),
        (json!({ "aiGateway": { "id": "" } }), "invalid_settings"),
        (
            json!({ "aiGateway": { "id": "gw", "cacheTtl": 0 } }),
            "invalid_settings",
        ),
        (
            json!({ "defaultModels": { "embedding": "@cf/unknown/model" } }),
            "invalid_settings",
        ),
        // One embedder here: another model is refused, not ignored.
        (
            json!({ "defaultModels": { "embedding": "@cf/baai/bge-small-en-v1.5" } }),
            "embedding_model_unavailable",
        ),
    ] {
        let r = patch_tenant(&server, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{body}: {}", r.body);
    }
    let r = patch_tenant(
        &server,
        json!({ "defaultModels": { "embedding": "local/hashed-768" } }),
    );
    assert_eq!(r.status, 200, "this deployment's own embedder: {}", r.body);

    let gateway = json!({ "id": "acme-gateway", "skipCache": true, "cacheTtl": 300 });
    let r = patch_tenant(&server, json!({ "aiGateway": gateway }));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.as_operator(A, "GET", "/admin/tenant", None);
    assert_eq!(r.json()["tenant"]["settings"]["aiGateway"], gateway);
    let r = patch_tenant(&server, json!({ "aiGateway": null }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"]["settings"]["aiGateway"], Value::Null);
}
