//! State survives a restart of `wrangler dev` on the same persist folder.

use e2e::http::{get, send};
use e2e::{Deployment, PersistDir, Server};

#[test]
fn settings_survive_a_restart() {
    let dir = PersistDir::new("restart");
    let auth = ("authorization", "Bearer e2e-admin-token");
    let created_at;
    {
        let server = Server::start(Deployment::Dedicated("mrrainbowsmoke"), &dir);
        let r = send(
            "PATCH",
            &server.url("/admin/tenant"),
            &[auth, ("content-type", "application/json")],
            Some(br#"{"displayName":"Survivor","defaultModels":{"chat":"@cf/qwen/qwen3-30b-a3b-fp8"},"budget":{"tokensPerDay":5000}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        created_at = r.json()["tenant"]["createdAtMs"].as_u64();
        assert!(created_at.is_some());
    } // stopped here
    let server = Server::start(Deployment::Dedicated("mrrainbowsmoke"), &dir);
    let r = get(&server.url("/admin/tenant"), &[auth]);
    assert_eq!(r.status, 200, "{}", r.body);
    let tenant = &r.json()["tenant"];
    assert_eq!(tenant["settings"]["displayName"], "Survivor");
    assert_eq!(
        tenant["settings"]["defaultModels"]["chat"],
        "@cf/qwen/qwen3-30b-a3b-fp8"
    );
    assert_eq!(tenant["settings"]["budget"]["tokensPerDay"], 5000);
    assert_eq!(tenant["createdAtMs"].as_u64(), created_at);

    // A fresh folder is a fresh platform: nothing leaks between folders.
    let other = PersistDir::new("restart-fresh");
    let fresh = Server::start(Deployment::Dedicated("mrrainbowsmoke"), &other);
    let r = get(&fresh.url("/admin/tenant"), &[auth]);
    assert_eq!(
        r.json()["tenant"]["settings"]["displayName"],
        "mrrainbowsmoke"
    );
}
