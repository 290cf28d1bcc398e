//! The request pipeline: request id, tenant, route, credentials, then the
//! handler, which forwards tenant-scoped work to the actors' typed handles.

use crate::admin::SettingsPatchBody;
use crate::api::{self, FaultsBody, IngestBody, SearchBody};
use crate::errors::ApiError;
use crate::request_id::REQUEST_ID_HEADER;
use crate::routing::{Credential, Route};
use crate::sse;
use crate::tenant::{TenantMode, TENANT_HEADER};
use crate::{auth, body, routing};
use actors::chat::{Resumed, TurnStream};
use actors::{ChatHandle, CoordinatorHandle, IngestHandle};
use futures::StreamExt;
use protocol::chat::ChatEvent;
use protocol::{ActorKind, RequestId, TenantId};
use serde::Serialize;
use serde_json::json;
use worker::{Env, Headers, Request, Response};

/// What a handler answers.
enum Reply {
    /// A JSON body with a status.
    Json(u16, serde_json::Value),
    /// A response built by the handler (an event stream, a WebSocket upgrade).
    Raw(Response),
}

impl From<(u16, serde_json::Value)> for Reply {
    fn from((status, body): (u16, serde_json::Value)) -> Self {
        Reply::Json(status, body)
    }
}

/// Serves one request; never fails: every error becomes a JSON response.
pub async fn handle(req: Request, env: Env, request_id: RequestId) -> Response {
    let result = serve(req, &env, &request_id).await;
    let (status, body, allow) = match result {
        Ok(Reply::Raw(response)) => return response,
        Ok(Reply::Json(status, body)) => (status, body, None),
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

async fn serve(mut req: Request, env: &Env, request_id: &RequestId) -> Result<Reply, ApiError> {
    let mode = TenantMode::from_vars(
        var(env, "TENANT_ID").as_deref(),
        var(env, "TENANTS").as_deref(),
    )?;
    // Browsers cannot set headers on a WebSocket or EventSource request:
    // there, and only there, the tenant may come as `?tenant=` instead,
    // validated the same way.
    let path = req.path();
    let browser_stream =
        path == "/api/chat/ws" || (path.starts_with("/api/chat/") && path.ends_with("/stream"));
    let claimed = match (header(&req, TENANT_HEADER), query(&req, "tenant")) {
        (Some(h), Some(q)) if browser_stream && h != q => {
            return Err(ApiError::bad_request(
                "invalid_tenant",
                "the x-tenant-id header and the tenant parameter disagree",
            ))
        }
        (None, Some(q)) if browser_stream => Some(q),
        (h, _) => h,
    };
    let tenant = mode.resolve(claimed.as_deref())?;
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
    let json_route = match route {
        Route::Chat => {
            let turn = read_json::<api::ChatBody>(&mut req, api::MAX_CHAT_BODY_BYTES)
                .await?
                .into_turn()?;
            let session = turn.session_id.clone();
            let frames = ChatHandle::new(env, &tenant, &session)?
                .turn(request_id, turn)
                .await?;
            return event_stream(frames, request_id).map(Reply::Raw);
        }
        Route::ChatStream { session } => {
            let session = api::session_id(&session)?;
            let after = api::last_event_id(
                header(&req, "last-event-id").as_deref(),
                query(&req, "after").as_deref(),
            )?;
            let resumed = ChatHandle::new(env, &tenant, &session)?
                .resume(request_id, after)
                .await?;
            return match resumed {
                Resumed::Stream(frames) => event_stream(frames, request_id).map(Reply::Raw),
                Resumed::UpToDate(_) => {
                    // 204 also tells an EventSource to stop reconnecting.
                    let headers = Headers::new();
                    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
                    Ok(Reply::Raw(
                        Response::empty()
                            .map_err(|e| ApiError::Internal(e.to_string()))?
                            .with_status(204)
                            .with_headers(headers),
                    ))
                }
            };
        }
        Route::ChatSocket => {
            let upgrade = header(&req, "upgrade").unwrap_or_default();
            if !upgrade.eq_ignore_ascii_case("websocket") {
                return Err(ApiError::UpgradeRequired);
            }
            let session = api::session_id(&query(&req, "sessionId").unwrap_or_default())?;
            let response = ChatHandle::new(env, &tenant, &session)?.connect().await?;
            return Ok(Reply::Raw(response));
        }
        other => other,
    };
    json_reply(json_route, req, env, &tenant, request_id)
        .await
        .map(Reply::from)
}

async fn json_reply(
    route: Route,
    mut req: Request,
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<(u16, serde_json::Value), ApiError> {
    let tenant = tenant.clone();
    match route {
        Route::Chat | Route::ChatSocket | Route::ChatStream { .. } => {
            Err(ApiError::not_found("not_found", "no such route"))
        }
        Route::History { session } => {
            let session = api::session_id(&session)?;
            let (before, limit) = api::history_page(
                query(&req, "before").as_deref(),
                query(&req, "limit").as_deref(),
            )?;
            let page = ChatHandle::new(env, &tenant, &session)?
                .history(request_id, before, limit)
                .await?;
            ok_json(&page)
        }
        Route::ClearSession { session } => {
            let session = api::session_id(&session)?;
            let cleared = ChatHandle::new(env, &tenant, &session)?
                .clear(request_id)
                .await?;
            ok_json(&json!({ "ok": true, "messagesRemoved": cleared.messages_removed }))
        }
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
        Route::SetConfig { name } => {
            let body = read_json::<api::ConfigBody>(&mut req, body::MAX_ADMIN_BODY_BYTES).await?;
            let entry = CoordinatorHandle::new(env, &tenant)?
                .set_config(request_id, name, Some(body.value))
                .await?;
            ok_json(&json!({ "ok": true, "key": entry.key, "value": entry.value }))
        }
        Route::DeleteConfig { name } => {
            let entry = CoordinatorHandle::new(env, &tenant)?
                .set_config(request_id, name, None)
                .await?;
            ok_json(&json!({ "ok": true, "key": entry.key, "value": entry.value }))
        }
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
    // Read with a running cap: a body sent without content-length (chunked)
    // is refused as soon as it passes the limit, not after it is all in memory.
    let mut bytes = Vec::new();
    if let Ok(mut stream) = req.stream() {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request("unreadable_body", e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
    }
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
        ActorKind::Chat => {
            let session = api::session_id(name)?;
            let state = ChatHandle::new(env, tenant, &session)?
                .inspect(request_id)
                .await?;
            ok_json(&json!({
                "kind": kind,
                "name": tenant.object_name(session.as_str()),
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

/// Turns a session's event frames into Server-Sent Events as they arrive,
/// each with the session's sequence id as its `id:`. A stream that breaks or
/// ends without `done`/`error` ends with an `error` event of its own (no id:
/// the client resumes after the last event the session stored).
fn event_stream(frames: TurnStream, request_id: &RequestId) -> Result<Response, ApiError> {
    struct State {
        frames: TurnStream,
        finished: bool,
        closed: bool,
    }
    let state = State {
        frames,
        finished: false,
        closed: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.closed {
            return None;
        }
        let text = match st.frames.next().await {
            Some(Ok(frame)) => {
                st.finished |= matches!(
                    frame.event,
                    ChatEvent::Done { .. } | ChatEvent::Error { .. }
                );
                sse::event((frame.id > 0).then_some(frame.id), &frame.event)
            }
            Some(Err(e)) => {
                st.closed = true;
                let code = match e {
                    actors::ActorError::Protocol(_) => "bad_upstream",
                    _ => "stream_failed",
                };
                sse::event(None, &ChatEvent::error(code, e.to_string()))
            }
            None if st.finished => return None,
            None => {
                st.closed = true;
                sse::event(
                    None,
                    &ChatEvent::error("stream_cut", "the answer ended early"),
                )
            }
        };
        Some((Ok::<Vec<u8>, worker::Error>(text.into_bytes()), st))
    });
    let headers = Headers::new();
    for (name, value) in sse::HEADERS {
        let _ = headers.set(name, value);
    }
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    Response::from_stream(stream)
        .map(|r| r.with_headers(headers))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

fn query(req: &Request, name: &str) -> Option<String> {
    let url = req.url().ok()?;
    let value = url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned());
    value
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// A var or secret, if it is bound and a string (both arrive as plain strings).
fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}
