//! The gateway Worker: stateless and thin.
//!
//! For every request it picks a request id, resolves and validates the tenant
//! ([`tenant`]), finds the route ([`routing`]), checks credentials ([`auth`])
//! and body ([`body`]), then forwards tenant-scoped work to the actors through
//! their typed handles ([`app`]). Failures become JSON in one place
//! ([`errors`]). [`openapi`] serves the OpenAPI document of every route.
//!
//! Everything but [`app`] and the entry point is plain Rust, tested natively.
//! The Durable Object classes live in the `actors` crate and are exported from
//! here, so this crate builds the one Worker.

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod body;
pub mod errors;
pub mod isolate_cache;
pub mod limits;
pub mod openai;
pub mod openapi;
pub mod request_id;
pub mod routing;
pub mod sse;
pub mod tenant;

pub use actors::{ChatSession, IngestQueue, RateLimiter, TenantCoordinator};

#[cfg(target_arch = "wasm32")]
#[worker::event(fetch)]
async fn fetch(
    req: worker::Request,
    env: worker::Env,
    _ctx: worker::Context,
) -> worker::Result<worker::Response> {
    let request_id = request_id::choose(
        req.headers()
            .get(request_id::REQUEST_ID_HEADER)
            .ok()
            .flatten()
            .as_deref(),
        actors::entropy::random_bytes,
    );
    Ok(app::handle(req, env, request_id).await)
}
