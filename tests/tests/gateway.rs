//! The gateway end to end: tenant resolution in both modes, invalid ids,
//! routing errors, body limits, request ids, admin authentication and
//! configuration values under concurrent changes, all through HTTP against
//! the real Worker under `wrangler dev`.

use e2e::chat::parse_sse;
use e2e::http::{assert_refusals, get, raw, send, RefusalCase, Reply};
use e2e::{shared, Deployment, PersistDir, Server, ADMIN_TOKEN};
use serde_json::json;

const A: &str = "mrrainbowsmoke";
const B: &str = "rainbowsmokeofficial";
const DEDICATED_A: Deployment = Deployment::Dedicated(A);
const DEDICATED_B: Deployment = Deployment::Dedicated(B);
const BEARER: &str = "Bearer e2e-admin-token";

/// Invalid tenant ids that a client library will send as is.
const INVALID_IDS: &[&str] = &[
    "a:b",
    ":",
    "a/b",
    "..",
    "../etc",
    "Mrrainbowsmoke",
    "MRRAINBOWSMOKE",
    "-leading-dash",
    "has space",
    "a.b",
    "mrrainbowsmoke:coordinator",
];

#[test]
fn health_in_dedicated_mode() {
    for (deployment, tenant, other) in [(DEDICATED_A, A, B), (DEDICATED_B, B, A)] {
        let server = shared(deployment);
        let expected = json!({ "ok": true, "tenantId": tenant });
        // The header is optional in dedicated mode.
        let r = get(&server.url("/health"), &[]);
        assert_eq!((r.status, r.json()), (200, expected.clone()));
        assert_eq!(r.body, format!(r#"{{"ok":true,"tenantId":"{tenant}"}}"#));
        // Present and equal.
        let r = get(&server.url("/health"), &[("x-tenant-id", tenant)]);
        assert_eq!((r.status, r.json()), (200, expected));
        // Present and different: forbidden, not served as the other tenant.
        let r = get(&server.url("/health"), &[("x-tenant-id", other)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "tenant_mismatch")
        );
    }
}

#[test]
fn health_in_shared_mode() {
    let server = shared(Deployment::Shared);
    for tenant in [A, B] {
        let r = get(&server.url("/health"), &[("x-tenant-id", tenant)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({ "ok": true, "tenantId": tenant }));
    }
    let r = get(&server.url("/health"), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (400, "missing_tenant"));
    let r = get(&server.url("/health"), &[("x-tenant-id", "not-registered")]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_tenant"));
}

fn assert_invalid(r: &Reply, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.body);
    assert_eq!(r.error_code(), "invalid_tenant", "{what}");
}

#[test]
fn invalid_tenant_ids_are_400_in_both_modes() {
    let long = "a".repeat(64);
    for deployment in [DEDICATED_A, Deployment::Shared] {
        let server = shared(deployment);
        for id in INVALID_IDS.iter().copied().chain([long.as_str()]) {
            let r = get(&server.url("/health"), &[("x-tenant-id", id)]);
            assert_invalid(&r, &format!("{deployment:?} {id:?}"));
        }
        // Empty, unicode and repeated headers, written byte for byte.
        let cases: &[(&str, &[&[u8]])] = &[
            ("empty", &[b"x-tenant-id: "]),
            ("unicode", &["x-tenant-id: mrrainbowsmokë".as_bytes()]),
            (
                "repeated, different",
                &[
                    b"x-tenant-id: mrrainbowsmoke",
                    b"x-tenant-id: rainbowsmokeofficial",
                ],
            ),
            (
                "repeated, equal",
                &[
                    b"x-tenant-id: mrrainbowsmoke",
                    b"x-tenant-id: mrrainbowsmoke",
                ],
            ),
        ];
        for (what, lines) in cases {
            let r = raw(server.base(), "GET", "/health", lines, b"");
            assert_invalid(&r, &format!("{deployment:?} {what}"));
        }
        // The longest valid id is accepted by validation (63 characters).
        let r = get(&server.url("/health"), &[("x-tenant-id", &"a".repeat(63))]);
        assert_ne!(r.status, 400, "a 63-character id is valid");
    }
}

#[test]
fn an_invalid_id_touches_nothing() {
    // An id that would address another object if it got through is refused
    // before any actor is reached, even on admin routes with a valid token.
    let server = shared(Deployment::Shared);
    for id in ["mrrainbowsmoke:coordinator", "rainbowsmokeofficial:x"] {
        let r = get(
            &server.url("/admin/tenant"),
            &[("x-tenant-id", id), ("authorization", BEARER)],
        );
        assert_invalid(&r, id);
    }
}

#[test]
fn unknown_routes_and_methods() {
    let server = shared(DEDICATED_A);
    for path in ["/", "/nope", "/health/extra", "/admin", "/api/unknown"] {
        let r = get(&server.url(path), &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    let r = send("POST", &server.url("/health"), &[], Some(b"{}"));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(r.header("allow"), Some("GET"));
    let r = send(
        "DELETE",
        &server.url("/admin/tenant"),
        &[("authorization", BEARER)],
        None,
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PATCH"));
    let r = send(
        "PUT",
        &server.url("/admin/actors/coordinator/mrrainbowsmoke"),
        &[],
        Some(b""),
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

#[test]
fn request_ids() {
    let server = shared(DEDICATED_A);
    let r = get(&server.url("/health"), &[("x-request-id", "client-id-42")]);
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    // Errors carry it too.
    let r = get(&server.url("/nope"), &[("x-request-id", "client.id_43")]);
    assert_eq!(
        (r.status, r.header("x-request-id")),
        (404, Some("client.id_43"))
    );
    // A missing or unsafe id is replaced by a fresh one.
    let generated = |r: &Reply| {
        r.header("x-request-id")
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let first = generated(&get(&server.url("/health"), &[]));
    let second = generated(&get(
        &server.url("/health"),
        &[("x-request-id", "has spaces and ;")],
    ));
    let third = generated(&get(
        &server.url("/health"),
        &[("x-request-id", &"x".repeat(129))],
    ));
    for id in [&first, &second, &third] {
        assert_eq!(id.len(), 32, "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
    }
    assert!(
        first != second && second != third,
        "ids must differ per request"
    );
}

#[test]
fn admin_requires_the_admin_token() {
    let server = shared(DEDICATED_A);
    let url = server.url("/admin/tenant");
    for (what, headers) in [
        ("none", vec![]),
        ("wrong", vec![("authorization", "Bearer wrong-token")]),
        (
            "prefix of the right one",
            vec![("authorization", "Bearer e2e-admin")],
        ),
        ("not bearer", vec![("authorization", "Basic ZTJlOmUyZQ==")]),
        ("bare token", vec![("authorization", ADMIN_TOKEN)]),
    ] {
        let r = get(&url, &headers);
        // No credential at all is `missing_key`; anything else that is not a
        // valid token or key is `invalid_key`, whatever was wrong with it.
        let code = if what == "none" {
            "missing_key"
        } else {
            "invalid_key"
        };
        assert_eq!((r.status, r.error_code().as_str()), (401, code), "{what}");
    }
    let r = get(&url, &[("authorization", BEARER)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let tenant = &r.json()["tenant"];
    assert_eq!(tenant["tenantId"], A);
    assert!(tenant["createdAtMs"]
        .as_u64()
        .is_some_and(|t| t > 1_600_000_000_000));
    assert!(tenant["settings"]["defaultModels"]["chat"].is_string());
    // Inspection needs the token too.
    let r = get(&server.url("/admin/actors/coordinator/mrrainbowsmoke"), &[]);
    assert_eq!(r.status, 401);
}

#[test]
fn settings_patch_validation() {
    let server = shared(DEDICATED_B);
    let url = server.url("/admin/tenant");
    let auth = ("authorization", BEARER);
    let json_ct = ("content-type", "application/json");
    let before = get(&url, &[auth]).json();

    let cases: Vec<RefusalCase> = vec![
        (
            "a form",
            vec![auth, ("content-type", "application/x-www-form-urlencoded")],
            br#"{"displayName":"X"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "a multipart form",
            vec![auth, ("content-type", "multipart/form-data; boundary=x")],
            br#"{"displayName":"X"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "another type",
            vec![auth, ("content-type", "application/xml")],
            br#"{"displayName":"X"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "text/plain, not JSON",
            vec![auth, ("content-type", "text/plain")],
            b"displayName=X".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "too large",
            vec![auth, json_ct],
            format!(r#"{{"displayName":"{}"}}"#, "x".repeat(20_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "not json",
            vec![auth, json_ct],
            b"{displayName".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "wrong type",
            vec![auth, json_ct],
            br#"{"displayName":5}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            vec![auth, json_ct],
            br#"{"displayname":"X"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "empty patch",
            vec![auth, json_ct],
            b"{}".to_vec(),
            400,
            "invalid_settings",
        ),
        (
            "blank name",
            vec![auth, json_ct],
            br#"{"displayName":"   "}"#.to_vec(),
            400,
            "invalid_settings",
        ),
        (
            "bad model",
            vec![auth, json_ct],
            br#"{"defaultModels":{"chat":"rm -rf /"}}"#.to_vec(),
            400,
            "invalid_settings",
        ),
        (
            "no token",
            vec![json_ct],
            br#"{"displayName":"X"}"#.to_vec(),
            401,
            "missing_key",
        ),
    ];
    assert_refusals("PATCH", &url, cases);
    assert_eq!(
        get(&url, &[auth]).json(),
        before,
        "refused patches change nothing"
    );

    let r = send(
        "PATCH",
        &url,
        &[auth, ("content-type", "application/json; charset=utf-8")],
        Some(br#"{"displayName":"  Rainbow Smoke  ","defaultModels":{"chat":"@cf/qwen/qwen3-30b-a3b-fp8"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let settings = &r.json()["tenant"]["settings"];
    assert_eq!(settings["displayName"], "Rainbow Smoke");
    assert_eq!(
        settings["defaultModels"]["chat"],
        "@cf/qwen/qwen3-30b-a3b-fp8"
    );
    assert_eq!(
        settings["defaultModels"]["embedding"],
        before["tenant"]["settings"]["defaultModels"]["embedding"]
    );
    assert_eq!(get(&url, &[auth]).json()["tenant"]["settings"], *settings);

    // A JSON body sent as fetch() sends a string (text/plain), or with no
    // content type at all, is read as JSON.
    for (ct, name) in [
        (Some("text/plain;charset=UTF-8"), "Plain Smoke"),
        (None, "Untyped Smoke"),
    ] {
        let mut headers = vec![auth];
        headers.extend(ct.map(|ct| ("content-type", ct)));
        let body = format!(r#"{{"displayName":"{name}"}}"#);
        let r = send("PATCH", &url, &headers, Some(body.as_bytes()));
        assert_eq!(r.status, 200, "{ct:?}: {}", r.body);
        assert_eq!(r.json()["tenant"]["settings"]["displayName"], name);
    }
}

#[test]
fn tenants_do_not_share_coordinators_in_shared_mode() {
    let server = shared(Deployment::Shared);
    let url = server.url("/admin/tenant");
    let r = send(
        "PATCH",
        &url,
        &[
            ("x-tenant-id", A),
            ("authorization", BEARER),
            ("content-type", "application/json"),
        ],
        Some(br#"{"displayName":"Only A"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = get(&url, &[("x-tenant-id", A), ("authorization", BEARER)]).json();
    let b = get(&url, &[("x-tenant-id", B), ("authorization", BEARER)]).json();
    assert_eq!(a["tenant"]["settings"]["displayName"], "Only A");
    assert_eq!(b["tenant"]["tenantId"], B);
    assert_eq!(
        b["tenant"]["settings"]["displayName"], B,
        "B keeps its own settings"
    );
}

#[test]
fn operators_inspect_actors() {
    let server = shared(Deployment::Shared);
    let auth = ("authorization", BEARER);
    let r = get(
        &server.url("/admin/actors/coordinator/rainbowsmokeofficial"),
        &[("x-tenant-id", B), auth],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["kind"], "coordinator");
    assert_eq!(body["name"], "rainbowsmokeofficial:coordinator");
    assert_eq!(body["state"]["record"]["tenantId"], B);
    assert!(body["state"]["requestsHandled"]
        .as_u64()
        .is_some_and(|n| n >= 1));
    // Another tenant's coordinator is not reachable from this tenant.
    let r = get(
        &server.url("/admin/actors/coordinator/mrrainbowsmoke"),
        &[("x-tenant-id", B), auth],
    );
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_actor"));
    let r = get(
        &server.url("/admin/actors/spaceship/x"),
        &[("x-tenant-id", B), auth],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_actor_kind")
    );
}

/// What the chat tool `kv_get` reads from KV for `config:<name>`, through a
/// chat turn (the only route that reads configuration values back).
fn config_through_kv(server: &Server, session: &str, name: &str) -> Option<String> {
    let r = send(
        "POST",
        &server.url("/api/chat"),
        &[
            ("content-type", "application/json"),
            ("authorization", &server.bearer(server.tenant())),
        ],
        Some(
            json!({ "sessionId": session, "message": format!("what is config:{name} ?") })
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: String = parse_sse(r.body.as_bytes())
        .into_iter()
        .filter(|e| e.data["type"] == "message")
        .filter_map(|e| e.data["content"].as_str().map(str::to_owned))
        .collect();
    let found = format!("The value of config:{name} is ");
    if let Some(rest) = answer.split(&found).nth(1) {
        let value = rest.split_once(". ").map_or(rest, |(v, _)| v);
        return Some(value.trim_end_matches('.').to_owned());
    }
    assert!(
        answer.contains(&format!("no value stored for config:{name}")),
        "{answer}"
    );
    None
}

#[test]
fn concurrent_config_changes_leave_kv_at_the_last_decision() {
    // A server of its own: the coordinator's last request must be one of ours.
    let dir = PersistDir::new("config-race");
    let server = Server::start(DEDICATED_A, &dir);
    let url = server.url("/admin/config/race");
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 8;
    for round in 0..3 {
        // Every request has its own id and its own outcome: PUT `v<round>-<n>`
        // or DELETE.
        let outcome = |n: usize| (!n.is_multiple_of(3)).then(|| format!("v{round}-{n}"));
        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                let (url, outcome) = (&url, &outcome);
                scope.spawn(move || {
                    for i in 0..PER_WRITER {
                        let n = writer * PER_WRITER + i;
                        let rid = format!("race-{round}-{n}");
                        let mut headers = vec![("authorization", BEARER), ("x-request-id", &rid)];
                        let r = match outcome(n) {
                            Some(value) => {
                                headers.push(("content-type", "application/json"));
                                let body = json!({ "value": value }).to_string();
                                send("PUT", url, &headers, Some(body.as_bytes()))
                            }
                            None => send("DELETE", url, &headers, None),
                        };
                        assert_eq!(r.status, 200, "{rid}: {}", r.body);
                        assert_eq!(r.json()["value"], json!(outcome(n)), "{rid}");
                    }
                });
            }
        });
        // The coordinator names the last request it decided before this look.
        let r = get(
            &server.url(&format!("/admin/actors/coordinator/{A}")),
            &[("authorization", BEARER)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let last = r.json()["state"]["lastRequestId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n: usize = last
            .strip_prefix(&format!("race-{round}-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the last request is not one of this round: {last:?}"));
        // Every answer came once KV held its decision or a later one, so KV
        // now holds exactly the last decision.
        let session = format!("race-read-{round}");
        assert_eq!(
            config_through_kv(&server, &session, "race"),
            outcome(n),
            "round {round}: the last decision was {last}"
        );
        // The turn's bookkeeping reaches the coordinator a second or so
        // after it ends (its prices, then the session report, under
        // request ids of their own): wait for it to land, or the next
        // round's look could name it as the coordinator's last request.
        wait_for_listed_session(&server, &session);
    }
}

/// Waits until the tenant's session registry lists `session`: the last
/// thing a turn's bookkeeping sends to the coordinator.
fn wait_for_listed_session(server: &Server, session: &str) {
    let start = std::time::Instant::now();
    loop {
        let r = get(
            &server.url("/admin/sessions?limit=200"),
            &[("authorization", BEARER)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let listed = r.json()["sessions"]
            .as_array()
            .is_some_and(|all| all.iter().any(|e| e["sessionId"] == session));
        if listed {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "{session} is not listed 15 s after its turn: {}",
            r.body
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether `server`'s log gets the `request` line of a request with
/// `request_id`: looked for until it is there (`wait_for_it`, up to 10 s),
/// or until wrangler's own line for that `GET /health` is (the Worker's
/// line is written before its answer, so it comes first).
fn request_line_logged(server: &Server, request_id: &str, wait_for_it: bool) -> bool {
    let health_lines = |log: &str| log.matches("GET /health 200").count();
    let before = health_lines(&std::fs::read_to_string(server.log_path()).unwrap_or_default());
    let r = get(&server.url("/health"), &[("x-request-id", request_id)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        let found = log
            .lines()
            .any(|l| l.contains("\"event\":\"request\"") && l.contains(request_id));
        if found {
            return true;
        }
        if !wait_for_it && health_lines(&log) > before {
            return false;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no line for {request_id} within 10 s: {}",
            server.log_path().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every request has its JSON log line, unless `REQUEST_LOG=off` (what the
/// benches run with).
#[test]
fn requests_are_logged_unless_request_log_is_off() {
    let dir = PersistDir::new("request-log");
    let on = Server::start(Deployment::Dedicated("mrrainbowsmoke"), &dir);
    assert!(request_line_logged(&on, "log-probe-on-0001", true));
    drop(on);
    let dir = PersistDir::new("request-log-off");
    let off = Server::start_with_vars(
        Deployment::Dedicated("mrrainbowsmoke"),
        &dir,
        &[("REQUEST_LOG", "off")],
    );
    assert!(!request_line_logged(&off, "log-probe-off-0001", false));
}
