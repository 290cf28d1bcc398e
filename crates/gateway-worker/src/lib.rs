//! The gateway Worker: stateless and thin.
//!
//! For every request it picks a request id, resolves and validates the tenant
//! ([`tenant`]), finds the route ([`routing`]), checks credentials ([`auth`])
//! and body ([`body`]), then forwards tenant-scoped work to the actors through
//! their typed handles ([`app`]). Failures become JSON in one place
//! ([`errors`]). [`openapi`] serves the OpenAPI document of every route.
//!
//! After the answer, [`observe`] writes the request's log line and the entry
//! point records its metrics sample beside the response (`waitUntil`).
//!
//! Everything but [`app`] and the entry point is plain Rust, tested natively.
//! The Durable Object classes live in the `actors` crate and are exported from
//! here, so this crate builds the one Worker.

pub mod admin;
pub mod advances;
pub mod api;
pub mod app;
pub mod auth;
pub mod body;
pub mod errors;
pub mod limits;
pub mod observe;
pub mod openai;
pub mod openapi;
pub mod query;
pub mod request_id;
pub mod routing;
pub mod sse;
pub mod tenant;
pub mod ui;

pub use actors::{ChatSession, IngestQueue, RateLimiter, SearchReplica, TenantCoordinator};

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// Each tenant's request samples not sent to its metrics yet.
    static SAMPLES: std::cell::RefCell<actors::batch::TenantBatches<protocol::metrics::RequestSample>> =
        std::cell::RefCell::new(actors::batch::TenantBatches::new(protocol::metrics::MAX_SAMPLES));
}

#[cfg(target_arch = "wasm32")]
#[worker::event(fetch)]
async fn fetch(
    req: worker::Request,
    env: worker::Env,
    ctx: worker::Context,
) -> worker::Result<worker::Response> {
    let request_id = request_id::choose(
        req.headers()
            .get(request_id::REQUEST_ID_HEADER)
            .ok()
            .flatten()
            .as_deref(),
        actors::entropy::random_bytes,
    );
    let started = worker::Date::now().as_millis();
    let method = req.method().to_string();
    let mut seen = observe::Observation::default();
    let response = app::handle(req, env.clone(), request_id.clone(), &mut seen).await;
    let latency_ms = worker::Date::now().as_millis().saturating_sub(started);
    let status = response.status_code();
    if observe::request_log_on(app::var(&env, observe::REQUEST_LOG_VAR).as_deref()) {
        worker::console_log!(
            "{}",
            seen.log_line(request_id.as_str(), &method, status, latency_ms)
        );
    }
    if let Some((tenant, sample)) = seen.sample(status, latency_ms) {
        // Off the answer's path, and gathered: the isolate sends a tenant's
        // samples once a second (or 64 at once), not one call beside every
        // answer, where it took turns with the stream still being answered.
        use actors::batch::{Added, FLUSH_AFTER_MS};
        let batch = match SAMPLES.with(|s| s.borrow_mut().add(&tenant, sample)) {
            Added::Gathered => return Ok(response),
            Added::FlushNow(batch) => Some(batch),
            Added::FlushLater => None,
        };
        ctx.wait_until(async move {
            let batch = match batch {
                Some(batch) => batch,
                None => {
                    worker::Delay::from(std::time::Duration::from_millis(FLUSH_AFTER_MS)).await;
                    SAMPLES.with(|s| s.borrow_mut().take(&tenant))
                }
            };
            if batch.is_empty() {
                return;
            }
            let shard = actors::metrics::MetricsHandle::shard_of(&request_id);
            let recorded = match actors::metrics::MetricsHandle::new(&env, &tenant, shard) {
                Ok(metrics) => metrics.record(&request_id, batch).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                worker::console_warn!(
                    "{}",
                    serde_json::json!({"event": "metrics_not_recorded", "tenant": tenant.as_str(),
                        "requestId": request_id.as_str(), "error": e.to_string()})
                );
            }
        });
    }
    Ok(response)
}
