//! The operators' dashboard (`/admin/ui`) in a real browser: headless
//! Chromium driven over WebDriver against `wrangler dev`. An operator signs
//! in with the token in the URL's fragment, creates a key, sees a job that was
//! ingested through the API finish and its document listed, searches, chats
//! over the WebSocket route and sees the streamed answer with its tool calls,
//! reads the session's history, and revokes the key, which the API then
//! refuses. A tenant admin's key signs in without the operator's views; a bad
//! token is refused on the sign-in form.

use e2e::http::{get, send};
use e2e::webdriver::Browser;
use e2e::{Deployment, PersistDir, Server, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const TENANT: &str = "mrrainbowsmoke";
const WAIT: Duration = Duration::from_secs(30);

fn search_with(server: &Server, key: &str) -> u16 {
    send(
        "POST",
        &server.url("/api/search"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        Some(br#"{"query":"lighthouse keeper"}"#),
    )
    .status
}

fn open_view(browser: &Browser, view: &str) {
    browser.click_on(&format!("nav button[data-view={view}]"));
    browser.wait_for(&format!("section[data-panel={view}]"), WAIT);
}

#[test]
fn the_page_is_served_with_a_strict_policy() {
    let dir = PersistDir::new("dashboard-static");
    let server = Server::start(Deployment::Shared, &dir);
    // No tenant, no credential: the page holds nothing secret.
    let page = get(&server.url("/admin/ui"), &[]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page.body.contains("/admin/ui/app.js"));
    for (path, kind) in [
        ("/admin/ui/app.js", "text/javascript"),
        ("/admin/ui/app.css", "text/css"),
    ] {
        let r = get(&server.url(path), &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with(kind)),
            "{path}"
        );
    }
    let missing = get(&server.url("/admin/ui/secrets.txt"), &[]);
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "not_found".into())
    );
    let post = send("POST", &server.url("/admin/ui"), &[], None);
    assert_eq!(post.status, 405);
}

#[test]
fn an_operator_runs_a_tenant_from_the_browser() {
    let dir = PersistDir::new("dashboard");
    let server = Server::start(Deployment::Dedicated(TENANT), &dir);
    let browser = Browser::start();

    // Signed in by the fragment, which then leaves the address bar.
    browser.goto(&format!("{}/admin/ui#token={ADMIN_TOKEN}", server.base()));
    browser.wait_for("#app", WAIT);
    let who = browser.text_of("#who");
    assert!(who.contains("operator") && who.contains(TENANT), "{who}");
    let href = browser.script("return location.href", json!([]));
    assert!(
        !href.as_str().unwrap_or_default().contains(ADMIN_TOKEN),
        "{href}"
    );
    assert!(browser
        .find("nav button[data-view=tenants]")
        .is_some_and(|b| browser.displayed(&b)));
    browser.wait_until("the tenant's record", WAIT, || {
        browser
            .text_of("#overview-body")
            .contains(TENANT)
            .then_some(())
    });

    // A key, shown once.
    open_view(&browser, "keys");
    browser.type_into("#key-name", "browser test");
    browser.click_on("#key-scopes input[value=ingest]");
    browser.click_on("#key-create");
    browser.wait_for("#new-key", WAIT);
    let key = browser.text_of("#new-key-secret");
    assert!(key.starts_with(&format!("tp_{TENANT}_")), "{key}");
    let key_id = key.split('_').nth(2).expect("the key id").to_owned();
    let listed = browser.wait_until("the key in the table", WAIT, || {
        let text = browser.text_of("#keys-table");
        text.contains(&key_id).then_some(text)
    });
    assert!(
        listed.contains("browser test") && listed.contains("active"),
        "{listed}"
    );
    assert_eq!(search_with(&server, &key), 200, "the new key works");

    // A job ingested through the API shows up as done, its document listed.
    let docs = json!({"documents": [
        {"id": "lighthouse", "text": "The lighthouse keeper climbs 217 steps every evening to light the lamp. The lamp burns whale oil and is visible for twenty miles."},
        {"id": "bakery", "text": "The bakery on the corner opens at six and sells rye bread, croissants and cinnamon rolls."}
    ]});
    let ingested = send(
        "POST",
        &server.url("/api/ingest"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        Some(docs.to_string().as_bytes()),
    );
    assert_eq!(ingested.status, 200, "{}", ingested.body);
    let job = ingested.json()["jobId"]
        .as_str()
        .expect("a job id")
        .to_owned();
    open_view(&browser, "ingest");
    browser.wait_until("the job, done, in the jobs table", WAIT, || {
        let text = browser.text_of("#jobs-table");
        if text.contains(&job) && text.contains("done") {
            Some(())
        } else {
            browser.click_on("nav button[data-view=ingest]");
            None
        }
    });
    let documents = browser.wait_until("the documents listed", WAIT, || {
        let text = browser.text_of("#documents-table");
        text.contains("lighthouse").then_some(text)
    });
    assert!(documents.contains("bakery"), "{documents}");

    // Search.
    open_view(&browser, "search");
    browser.type_into("#search-query", "how many steps does the keeper climb?");
    browser.click_on("#search-btn");
    let first = browser.wait_until("a search result", WAIT, || {
        browser
            .find("#search-results li.match")
            .map(|e| browser.text(&e))
    });
    assert!(first.starts_with("lighthouse"), "{first}");

    // Chat over the WebSocket route with the key made above.
    open_view(&browser, "chat");
    let prefilled = browser.script(
        "return document.querySelector('#chat-key').value",
        json!([]),
    );
    assert_eq!(prefilled, json!(key), "the new key is used for chat");
    let session = browser
        .script(
            "return document.querySelector('#chat-session').value",
            json!([]),
        )
        .as_str()
        .expect("a session id")
        .to_owned();
    browser.type_into(
        "#chat-input",
        "How many steps does the lighthouse keeper climb?",
    );
    browser.click_on("#chat-send");
    browser.wait_for("#chat-log [data-done]", WAIT);
    let log = browser.text_of("#chat-log");
    assert!(
        log.contains("vector_search"),
        "the tool call is shown: {log}"
    );
    assert!(
        log.contains("217"),
        "the streamed answer quotes the passage: {log}"
    );
    assert!(
        log.contains("lighthouse"),
        "the citation names the document: {log}"
    );

    // The session is listed, and its history readable.
    // The registry hears of the turn just after its `done`: look until it has.
    open_view(&browser, "sessions");
    browser.wait_until("the session listed", WAIT, || {
        let listed = browser.text_of("#sessions-table").contains(&session);
        if !listed {
            browser.click_on("nav button[data-view=sessions]");
        }
        listed.then_some(())
    });
    browser.click_on(&format!("button[data-open-session={session}]"));
    browser.wait_for("#history", WAIT);
    let history = browser.text_of("#history-list");
    assert!(
        history.contains("How many steps does the lighthouse keeper climb?")
            && history.contains("217"),
        "{history}"
    );

    // Usage shows the turn.
    open_view(&browser, "usage");
    browser.wait_until("usage rows", WAIT, || {
        let text = browser.text_of("#usage-keys");
        text.contains(&key_id).then_some(())
    });
    assert!(browser.find("#usage-chart svg rect.bar").is_some());

    // Revoke: the table says so and the API refuses the key.
    open_view(&browser, "keys");
    browser.click_on(&format!("button[data-revoke='{key_id}']"));
    browser.wait_until("the key revoked", WAIT, || {
        let text = browser.text_of("#keys-table");
        text.contains("revoked").then_some(())
    });
    let refused = browser.wait_until("the key refused", Duration::from_secs(5), || {
        let status = search_with(&server, &key);
        (status == 401).then_some(status)
    });
    assert_eq!(refused, 401);
}

#[test]
fn a_tenant_admin_signs_in_without_the_operators_views() {
    let dir = PersistDir::new("dashboard-admin");
    let server = Server::start(Deployment::Dedicated(TENANT), &dir);
    let admin_key = server.create_key(TENANT, &["admin"]);
    let browser = Browser::start();
    browser.goto(&server.url("/admin/ui"));

    // A wrong token stays on the sign-in form, with the reason.
    browser.type_into("#login-token", "tp_nope");
    browser.click_on("#login-btn");
    let error = browser.wait_until("the sign-in error", WAIT, || {
        let text = browser.text_of("#login-error");
        (!text.is_empty()).then_some(text)
    });
    assert!(error.contains("401"), "{error}");
    assert!(browser.find("#app").is_some_and(|a| !browser.displayed(&a)));

    browser.type_into("#login-token", &admin_key);
    browser.click_on("#login-btn");
    browser.wait_for("#app", WAIT);
    let who = browser.text_of("#who");
    assert!(
        who.contains("tenant admin") && who.contains(TENANT),
        "{who}"
    );
    let tenants_tab = browser
        .find("nav button[data-view=tenants]")
        .expect("the tab exists");
    assert!(
        !browser.displayed(&tenants_tab),
        "operator-only view hidden"
    );
    // The token is kept for this tab only.
    let stored: Value = browser.script(
        "return [sessionStorage.getItem('tp.token'), localStorage.length]",
        json!([]),
    );
    assert_eq!(stored, json!([admin_key, 0]));
}

#[test]
fn the_operator_of_a_shared_deployment_switches_tenants() {
    const OTHER: &str = "rainbowsmokeofficial";
    let dir = PersistDir::new("dashboard-shared");
    let server = Server::start(Deployment::Shared, &dir);
    // One document in each tenant, to tell their views apart.
    server.ingest(
        TENANT,
        json!([{"id": "only-in-a", "text": "Alpha tenant's notes."}]),
    );
    server.ingest(
        OTHER,
        json!([{"id": "only-in-b", "text": "Beta tenant's notes."}]),
    );
    let browser = Browser::start();
    browser.goto(&format!("{}/admin/ui#token={ADMIN_TOKEN}", server.base()));
    browser.wait_for("#app", WAIT);

    open_view(&browser, "tenants");
    let listed = browser.wait_until("both tenants listed", WAIT, || {
        let text = browser.text_of("#tenants-table");
        (text.contains(TENANT) && text.contains(OTHER)).then_some(text)
    });
    assert!(listed.contains("active"), "{listed}");

    let documents_of = |tenant: &str| {
        browser.click_on(&format!("button[data-open-tenant={tenant}]"));
        browser.wait_until("the tenant selected", WAIT, || {
            browser.text_of("#who").contains(tenant).then_some(())
        });
        open_view(&browser, "ingest");
        browser.wait_until("the tenant's documents", WAIT, || {
            let text = browser.text_of("#documents-table");
            text.contains("only-in-").then_some(text)
        })
    };
    let b = documents_of(OTHER);
    assert!(b.contains("only-in-b") && !b.contains("only-in-a"), "{b}");
    open_view(&browser, "tenants");
    let a = documents_of(TENANT);
    assert!(a.contains("only-in-a") && !a.contains("only-in-b"), "{a}");
}
