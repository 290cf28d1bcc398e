//! The request pipeline: request id, tenant, route, credentials, then the
//! handler, which forwards tenant-scoped work to the actors' typed handles.

use crate::admin::SettingsPatchBody;
use crate::errors::ApiError;
use crate::request_id::REQUEST_ID_HEADER;
use crate::routing::Route;
use crate::tenant::{TenantMode, TENANT_HEADER};
use crate::{auth, body, routing};
use actors::CoordinatorHandle;
use protocol::{ActorKind, RequestId, TenantId};
use serde::Serialize;
use serde_json::json;
use worker::{Env, Headers, Request, Response};

/// Serves one request; never fails: every error becomes a JSON response.
pub async fn handle(req: Request, env: Env, request_id: RequestId) -> Response {
    let result = serve(req, &env, &request_id).await;
    let (status, body, allow) = match result {
        Ok((status, body)) => (status, body, None),
        Err(e) => (e.status(), e.body(), e.allow_header()),
    };
    let headers = Headers::new();
    // These values are ASCII we produced ourselves, so setting them cannot fail.
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    if let Some(allow) = allow {
        let _ = headers.set("allow", &allow);
    }
    Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(body.to_string().into_bytes())
}

async fn serve(
    mut req: Request,
    env: &Env,
    request_id: &RequestId,
) -> Result<(u16, serde_json::Value), ApiError> {
    let mode = TenantMode::from_vars(
        var(env, "TENANT_ID").as_deref(),
        var(env, "TENANTS").as_deref(),
    )?;
    let tenant = mode.resolve(header(&req, TENANT_HEADER).as_deref())?;
    let route = routing::route(req.method().as_ref(), &req.path())?;
    if route.is_admin() {
        auth::check_bearer(
            header(&req, "authorization").as_deref(),
            var(env, "ADMIN_TOKEN").as_deref(),
            "ADMIN_TOKEN",
        )?;
    }
    match route {
        Route::Health => Ok((200, json!({ "ok": true, "tenantId": tenant }))),
        Route::GetTenant => {
            let record = CoordinatorHandle::new(env, &tenant)?
                .get_tenant(request_id)
                .await?;
            ok_json(&json!({ "tenant": record }))
        }
        Route::PatchTenant => {
            body::require_json(header(&req, "content-type").as_deref())?;
            body::check_declared_length(
                header(&req, "content-length").as_deref(),
                body::MAX_ADMIN_BODY_BYTES,
            )?;
            let bytes = req
                .bytes()
                .await
                .map_err(|e| ApiError::bad_request("unreadable_body", e.to_string()))?;
            let patch = body::parse_json::<SettingsPatchBody>(&bytes, body::MAX_ADMIN_BODY_BYTES)?
                .into_patch()?;
            let record = CoordinatorHandle::new(env, &tenant)?
                .update_settings(request_id, patch)
                .await?;
            ok_json(&json!({ "tenant": record }))
        }
        Route::InspectActor { kind, name } => inspect(env, &tenant, kind, &name, request_id).await,
    }
}

/// `GET /admin/actors/<kind>/<name>`: `{"kind","name","state"}` where `name`
/// is the Durable Object's full, tenant-scoped name.
async fn inspect(
    env: &Env,
    tenant: &TenantId,
    kind: ActorKind,
    name: &str,
    request_id: &RequestId,
) -> Result<(u16, serde_json::Value), ApiError> {
    match kind {
        ActorKind::Coordinator => {
            // A tenant has one coordinator, named after the tenant; an operator
            // of this tenant cannot reach another tenant's.
            if name != tenant.as_str() {
                return Err(ApiError::not_found(
                    "unknown_actor",
                    format!("this tenant's coordinator is /admin/actors/coordinator/{tenant}"),
                ));
            }
            let state = CoordinatorHandle::new(env, tenant)?
                .inspect(request_id)
                .await?;
            ok_json(&json!({
                "kind": kind,
                "name": tenant.object_name(actors::coordinator::RESOURCE),
                "state": state,
            }))
        }
    }
}

fn ok_json<T: Serialize>(value: &T) -> Result<(u16, serde_json::Value), ApiError> {
    serde_json::to_value(value)
        .map(|v| (200, v))
        .map_err(|e| ApiError::BadUpstream(e.to_string()))
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// A var or secret, if it is bound and a string (both arrive as plain strings).
fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}
