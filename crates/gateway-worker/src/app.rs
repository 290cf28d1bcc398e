//! The request pipeline: request id, tenant, route, credentials, then the
//! handler, which forwards tenant-scoped work to the actors' typed handles.

use crate::admin::SettingsPatchBody;
use crate::api::{self, FaultsBody, IngestBody, SearchBody};
use crate::errors::ApiError;
use crate::request_id::REQUEST_ID_HEADER;
use crate::routing::{Credential, Route};
use crate::tenant::{TenantMode, TENANT_HEADER};
use crate::{auth, body, routing};
use actors::{CoordinatorHandle, IngestHandle};
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
    let secret = match route.credential() {
        Credential::Public => None,
        Credential::Admin => Some("ADMIN_TOKEN"),
        Credential::Ingest => Some("INGEST_TOKEN"),
    };
    if let Some(secret) = secret {
        auth::check_bearer(
            header(&req, "authorization").as_deref(),
            var(env, secret).as_deref(),
            secret,
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
            let patch = read_json::<SettingsPatchBody>(&mut req, body::MAX_ADMIN_BODY_BYTES)
                .await?
                .into_patch()?;
            let record = CoordinatorHandle::new(env, &tenant)?
                .update_settings(request_id, patch)
                .await?;
            ok_json(&json!({ "tenant": record }))
        }
        Route::InspectActor { kind, name } => inspect(env, &tenant, kind, &name, request_id).await,
        Route::InjectFaults => {
            let faults = read_json::<FaultsBody>(&mut req, body::MAX_ADMIN_BODY_BYTES).await?;
            let armed = IngestHandle::new(env, &tenant)?
                .inject_faults(request_id, faults.embed_failures)
                .await?;
            ok_json(&json!({ "ok": true, "embedFailures": armed.embed_failures }))
        }
        Route::Ingest => {
            let enqueue = read_json::<IngestBody>(&mut req, api::MAX_INGEST_BODY_BYTES)
                .await?
                .into_enqueue()?;
            let job = IngestHandle::new(env, &tenant)?
                .enqueue(request_id, enqueue)
                .await?;
            Ok(api::accepted(&job))
        }
        Route::IngestJob { job_id } => {
            api::check_job_id(&job_id)?;
            let job = IngestHandle::new(env, &tenant)?
                .job(request_id, job_id)
                .await?;
            ok_json(&job)
        }
        Route::DeleteDocument { doc_id } => {
            api::check_doc_id(&doc_id)?;
            let deleted = IngestHandle::new(env, &tenant)?
                .delete_document(request_id, doc_id)
                .await?;
            ok_json(
                &json!({ "ok": true, "docId": deleted.doc_id, "chunksRemoved": deleted.chunks_removed }),
            )
        }
        Route::Search => {
            let search = read_json::<SearchBody>(&mut req, api::MAX_SEARCH_BODY_BYTES)
                .await?
                .into_search()?;
            let results = IngestHandle::new(env, &tenant)?
                .search(request_id, search)
                .await?;
            ok_json(&results)
        }
    }
}

/// Reads a JSON body: content type (415), declared and actual size (413),
/// then syntax and shape (400).
async fn read_json<T: serde::de::DeserializeOwned>(
    req: &mut Request,
    limit: usize,
) -> Result<T, ApiError> {
    body::require_json(header(req, "content-type").as_deref())?;
    body::check_declared_length(header(req, "content-length").as_deref(), limit)?;
    let bytes = req
        .bytes()
        .await
        .map_err(|e| ApiError::bad_request("unreadable_body", e.to_string()))?;
    body::parse_json::<T>(&bytes, limit)
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
        ActorKind::Ingest => {
            if name != tenant.as_str() {
                return Err(ApiError::not_found(
                    "unknown_actor",
                    format!("this tenant's ingest queue is /admin/actors/ingest/{tenant}"),
                ));
            }
            let state = IngestHandle::new(env, tenant)?.inspect(request_id).await?;
            ok_json(&json!({
                "kind": kind,
                "name": tenant.object_name(actors::ingest::RESOURCE),
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
