//! The request pipeline: request id, route, credentials and tenant (decided
//! together: a key names its tenant), then the handler, which forwards
//! tenant-scoped work to the actors' typed handles. Who called ([`Caller`])
//! is available to every handler.

use crate::admin::{
    self, CreateKeyBody, NewKeyReply, RotateKeyBody, SettingsPatchBody, UpdateKeyBody,
};
use crate::advances::{Advances, Take};
use crate::api::{self, FaultsBody, IngestBody, SearchBody};
use crate::auth::{Caller, Decision, Identity, KeyGrant};
use crate::errors::ApiError;
use crate::observe::Observation;
use crate::request_id::REQUEST_ID_HEADER;
use crate::routing::Route;
use crate::sse;
use crate::tenant::{TenantMode, TENANT_HEADER};
use crate::{auth, body, errors, limits, openai, routing};
use actors::chat::{Resumed, TurnStream};
use actors::isolate_cache::{cached, TtlCache};
use actors::limiter::{admit_applied, Admission, LedgerHandle, LimitedBy, LimiterHandle};
use actors::{ChatHandle, CoordinatorHandle, IngestHandle, SearchHandle};
use futures::StreamExt;
use protocol::chat::{Access, ChatEvent, TurnReservation, DEFAULT_MAX_TOKENS};
use protocol::coordinator::{AnonymousAccess, DefaultModels};
use protocol::ingest::{Enqueue, Search};
use protocol::keys::{Scope, VerifyKey};
use protocol::limits::{Budget, Limits, PriceTable, RateLimitInfo};
use protocol::listing::{ListDocuments, ListSessions, SessionCursor};
use protocol::metrics::MetricsReport;
use protocol::usage::UsageQuery;
use protocol::{ActorKind, RequestId, TenantId};
use serde::Serialize;
use serde_json::json;
use std::cell::RefCell;
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
/// `seen` receives what the pipeline learned (route, tenant, caller, error
/// code, cache hit) for the request's log line and metrics.
pub async fn handle(
    req: Request,
    env: Env,
    request_id: RequestId,
    seen: &mut Observation,
) -> Response {
    let mut limit_headers = Vec::new();
    // The OpenAI-compatible routes answer every failure in OpenAI's shape.
    let openai_route = routing::is_openai_path(&req.path());
    let result = serve(req, &env, &request_id, &mut limit_headers, seen).await;
    if let Err(e) = &result {
        seen.code = Some(e.code().to_owned());
    }
    let (status, body, extra) = match result {
        Ok(Reply::Raw(response)) => {
            for (name, value) in &limit_headers {
                let _ = response.headers().set(name, value);
            }
            return response;
        }
        Ok(Reply::Json(status, body)) => (status, body, limit_headers),
        Err(ApiError::OpenAi(e)) => (e.status, e.body(), e.headers.clone()),
        Err(e) if openai_route => {
            let e = openai::errors::OpenAiError::from_api(&e, now_ms());
            (e.status, e.body(), e.headers)
        }
        Err(e) => (e.status(), e.body(), e.headers(now_ms())),
    };
    seen.answered(&body);
    let headers = Headers::new();
    // These values are ASCII we produced ourselves, so setting them cannot fail.
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    for (name, value) in &extra {
        let _ = headers.set(name, value);
    }
    Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(body.to_string().into_bytes())
}

/// `limit_headers` receives the `RateLimit-Policy` / `RateLimit` headers of
/// an admitted request on a limited route.
async fn serve(
    mut req: Request,
    env: &Env,
    request_id: &RequestId,
    limit_headers: &mut Vec<(&'static str, String)>,
    seen: &mut Observation,
) -> Result<Reply, ApiError> {
    let mode = TenantMode::from_vars(
        var(env, "TENANT_ID").as_deref(),
        var(env, "TENANTS").as_deref(),
    );
    // Until a credential decides, the tenant the request names (or the
    // deployment's own), so that its refusals, and paths with no route,
    // count in its metrics.
    if let Ok(mode) = &mode {
        seen.tenant = mode.resolve(header(&req, TENANT_HEADER).as_deref()).ok();
    }
    // The method as sent: `worker::Method` reads every method it does not
    // know (`QUERY`, `PROPFIND`, ...) as GET, which served them as GETs
    // (found by the schema fuzzer).
    let route = routing::route(&req.inner().method(), &req.path())?;
    seen.route = Some(route.template());
    // The OpenAPI document and the dashboard's files are the same for every
    // tenant and hold nothing secret: served before any tenant or
    // credential is looked at.
    match &route {
        Route::OpenApi => return crate::openapi::response(request_id).map(Reply::Raw),
        Route::Dashboard { asset } => {
            return crate::ui::serve(asset, request_id.as_str()).map(Reply::Raw)
        }
        _ => {}
    }
    let mode = mode?;
    // Browsers cannot set headers on a WebSocket or EventSource request:
    // there, and only there, the tenant may come as `?tenant=` and the key as
    // `?key=` instead, validated the same way.
    let browser_stream = route.is_browser_stream();
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
    let authorization = header(&req, "authorization");
    let query_key = browser_stream.then(|| query(&req, "key")).flatten();
    let (admin_token, ingest_token) = (var(env, "ADMIN_TOKEN"), var(env, "INGEST_TOKEN"));
    let presented = auth::Presented {
        authorization: authorization.as_deref(),
        query_key: query_key.as_deref(),
        claimed_tenant: claimed.as_deref(),
    };
    let tokens = auth::Tokens {
        admin: admin_token.as_deref(),
        ingest: ingest_token.as_deref(),
    };
    if !route.needs_tenant() && auth::is_operator(&presented, &tokens) {
        // The deployment's own listing: the operator needs no tenant. Any
        // other credential goes on to the usual decision (a key: 403).
        seen.caller_is(&Identity::Operator);
        return list_tenants(env, &mode, request_id).await.map(Reply::from);
    }
    let decision = auth::decide(route.access(), &presented, &mode, &tokens)?;
    // A key on a limited route needs the tenant's policy for its admission
    // too: both lookups (each cached for a second) run at once rather than
    // one after the other.
    let policy_too = match &decision {
        Decision::Verify { tenant, .. } if limits::work_of(&route).is_some() => {
            Some(tenant.clone())
        }
        _ => None,
    };
    let (tenant, identity, proof) = match policy_too {
        Some(tenant) => {
            // The admission below reads the policy again (from the cache,
            // or, after a failure here, from the coordinator).
            let (admitted, _policy) = futures::join!(
                admit(decision, env, request_id),
                tenant_policy(env, &tenant, request_id)
            );
            admitted?
        }
        None => admit(decision, env, request_id).await?,
    };
    seen.tenant = Some(tenant.clone());
    seen.caller_is(&identity);
    // Checked after the credential, so an unauthenticated caller learns
    // nothing but 401.
    let user = auth::user(header(&req, auth::USER_HEADER).as_deref())?;
    let caller = Caller { identity, user };
    let client = header(&req, "cf-connecting-ip");
    // Chat turns spend model tokens: they (and a socket, which admits its
    // turns with what it was admitted with) are held to the tenant's budget.
    let spends = matches!(
        route,
        Route::Chat | Route::ChatSocket | Route::V1ChatCompletions
    );
    let limit = |work: limits::Work| {
        admit_work(
            env,
            &tenant,
            &caller.identity,
            client.as_deref(),
            work,
            spends,
            request_id,
        )
    };
    // Every limited route but a chat turn is admitted here, before its
    // work; a turn once its body says what it will use.
    let admitted = match limits::work_of(&route) {
        Some(work) if !matches!(route, Route::Chat | Route::V1ChatCompletions) => {
            limit(work).await?
        }
        _ => None,
    };
    if let Some(info) = admitted.as_ref().and_then(|a| a.info.as_ref()) {
        limit_headers.extend(errors::rate_limit_headers(info));
    }
    let json_route = match route {
        Route::Chat => {
            let mut turn = read_json::<api::ChatBody>(&mut req, api::MAX_CHAT_BODY_BYTES)
                .await?
                .into_turn()?;
            if let Some(model) = turn.model.as_deref() {
                check_model(env, &tenant, &caller.identity, model, request_id).await?;
            }
            let session = turn.session_id.clone();
            // Built before admission: nothing fails between the admission
            // and the turn's request but the request itself.
            let handle = ChatHandle::new(env, &tenant, &session)?.with_access(access(&caller));
            let price = match turn.model.as_deref() {
                Some(model) => tenant_policy(env, &tenant, request_id)
                    .await?
                    .prices
                    .price(model),
                None => None,
            };
            let work = limits::Work::Turn {
                input_tokens: limits::TURN_INPUT_ESTIMATE,
                max_tokens: turn.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                model: turn.model.clone(),
                price,
                hold_ms: limits::turn_hold_ms(|name| var(env, name)),
            };
            let admitted = limit(work).await?;
            if let Some(admitted) = &admitted {
                if let Some(info) = &admitted.info {
                    limit_headers.extend(errors::rate_limit_headers(info));
                }
                turn.reservation = admitted.reservation_id.map(|id| TurnReservation {
                    limiter: admitted.applied.limiter.clone(),
                    id,
                    model: turn.model.clone(),
                    tenant: admitted.tenant_reservation,
                });
            }
            let started = handle.turn(request_id, turn).await;
            let frames = match started {
                Ok(frames) => frames,
                Err(e) => {
                    // The turn never started: its slot and estimate go back.
                    if let Some(admitted) = &admitted {
                        release(env, &tenant, admitted, request_id).await;
                    }
                    return Err(e.into());
                }
            };
            return event_stream(frames, request_id).map(Reply::Raw);
        }
        Route::V1ChatCompletions
        | Route::V1Embeddings
        | Route::V1Models
        | Route::V1Model { .. } => {
            let ctx = openai::Context {
                env,
                tenant: &tenant,
                caller: &caller,
                request_id,
                client: client.as_deref(),
            };
            return match route {
                Route::V1ChatCompletions => {
                    let body =
                        read_json::<serde_json::Value>(&mut req, openai::MAX_COMPLETION_BODY_BYTES)
                            .await?;
                    let session = header(&req, openai::SESSION_HEADER);
                    let response =
                        openai::chat_completions(&ctx, body, session, limit_headers, limit).await?;
                    Ok(Reply::Raw(response))
                }
                Route::V1Embeddings => {
                    let body =
                        read_json::<serde_json::Value>(&mut req, openai::MAX_EMBEDDINGS_BODY_BYTES)
                            .await?;
                    openai::embeddings(&ctx, body).await.map(Reply::from)
                }
                Route::V1Model { id } => openai::models(&ctx, Some(&id)).await.map(Reply::from),
                _ => openai::models(&ctx, None).await.map(Reply::from),
            };
        }
        Route::ChatStream { session } => {
            let session = api::session_id(&session)?;
            let after = api::last_event_id(
                header(&req, "last-event-id").as_deref(),
                query(&req, "after").as_deref(),
            )?;
            let resumed = ChatHandle::new(env, &tenant, &session)?
                .with_access(access(&caller))
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
            // Bad input is a 400 whether or not the upgrade came with it (the
            // schema fuzzer found a bad session id answered 426).
            let session = api::session_id(&query(&req, "sessionId").unwrap_or_default())?;
            let upgrade = header(&req, "upgrade").unwrap_or_default();
            if !upgrade.eq_ignore_ascii_case("websocket") {
                return Err(ApiError::UpgradeRequired);
            }
            let mut socket_access = access(&caller);
            // The key check's time goes with it: the socket's first
            // re-check falls due a second after this verification, not at
            // its first message.
            let (proof, checked_at) = proof.unzip();
            socket_access.proof = proof;
            // The socket's turns are admitted by the session with the limits
            // this upgrade was admitted with.
            let applied = admitted.as_ref().map(|a| &a.applied);
            let response = ChatHandle::new(env, &tenant, &session)?
                .with_access(socket_access)
                .connect(checked_at, applied)
                .await?;
            return Ok(Reply::Raw(response));
        }
        other => other,
    };
    json_reply(json_route, req, env, &tenant, &caller, request_id)
        .await
        .map(Reply::from)
}

/// Finishes a credential decision with the lookup it asks for: a key's
/// verification, or the tenant's anonymous setting (both cached, 1 s).
async fn admit(
    decision: Decision,
    env: &Env,
    request_id: &RequestId,
) -> Result<(TenantId, Identity, Option<(String, u64)>), ApiError> {
    match decision {
        Decision::Admitted { tenant, identity } => Ok((tenant, identity, None)),
        Decision::Verify {
            tenant,
            verify,
            access,
        } => {
            let proof = verify.secret_sha256.clone();
            let (grant, checked_at) = verified(env, &tenant, verify, request_id).await?;
            let identity = auth::admit_key(grant.as_ref(), access, now_ms())?;
            Ok((tenant, identity, Some((proof, checked_at))))
        }
        Decision::Anonymous { tenant, scope } => {
            let policy = tenant_policy(env, &tenant, request_id).await?;
            let identity = auth::admit_anonymous(policy.anonymous, scope)?;
            Ok((tenant, identity, None))
        }
    }
}

/// A request admitted by its caller's limiter.
pub(crate) struct Admitted {
    /// The limits and budget it applied (a socket admits its turns with them).
    pub(crate) applied: limits::Applied,
    /// What it reserved (a turn's slot and estimate), to settle or release.
    pub(crate) reservation_id: Option<u64>,
    /// What a turn reserved against the tenant's budget.
    pub(crate) tenant_reservation: Option<u64>,
    /// The numbers for the `RateLimit` headers.
    pub(crate) info: Option<RateLimitInfo>,
}

/// Admits `work` at the caller's limiter (see [`limits`]): `None` for the
/// operator and the legacy token, which are not limited; a 429 or 402 when
/// a limit or budget refuses. `spends`: the route's work spends model
/// tokens, so the tenant's budget applies to it.
async fn admit_work(
    env: &Env,
    tenant: &TenantId,
    identity: &Identity,
    client: Option<&str>,
    work: limits::Work,
    spends: bool,
    request_id: &RequestId,
) -> Result<Option<Admitted>, ApiError> {
    let Some(by) = limits::limited_by(identity, client) else {
        return Ok(None);
    };
    let policy = tenant_policy(env, tenant, request_id).await?;
    let tenant_limits = policy.limits;
    let own = limits::limits_for(identity, &tenant_limits);
    let budget = limits::budget_of(identity);
    let tenant_budget = spends && policy.budget.is_set();
    if !(limits::applies(&own, &tenant_limits, &budget) || tenant_budget) {
        // Nothing to count against: no call to the limiter at all.
        return Ok(None);
    }
    let applied = limits::Applied {
        limiter: by.resource(),
        limits: own,
        tenant_limits,
        budget,
        tenant_budget: policy.budget,
    };
    if matches!(work, limits::Work::Request) {
        return admit_request(env, tenant, request_id, applied)
            .await
            .map(Some);
    }
    let (admission, tenant_reservation) =
        admit_applied(env, tenant, request_id, &applied, &work).await?;
    let (reservation_id, info) = limits::outcome(admission)?;
    Ok(Some(Admitted {
        applied,
        reservation_id,
        tenant_reservation,
        info,
    }))
}

/// Admits a plain request (one against `rpm`, nothing reserved): from what
/// the caller's limiter counted in advance for this isolate while that
/// lasts, else at the limiter, asking it for an advance when this isolate
/// has sent it requests lately (see [`crate::advances`]).
async fn admit_request(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    applied: limits::Applied,
) -> Result<Admitted, ApiError> {
    let limiter = format!("{}:{}", tenant.as_str(), applied.limiter);
    let terms = (applied.limits, applied.tenant_limits);
    let taken = ADVANCES.with(|a| a.borrow_mut().take(&limiter, terms, now_ms()));
    let mut admit = applied.admit(&limits::Work::Request);
    match taken {
        Take::Spent(info) => {
            return Ok(Admitted {
                applied,
                reservation_id: None,
                tenant_reservation: None,
                info,
            })
        }
        Take::Ask { advance, unspent } => {
            admit.advance = advance;
            admit.unspent = unspent;
        }
    }
    let admission = LimiterHandle::at(env, tenant, &applied.limiter)?
        .admit(request_id, admit)
        .await?;
    let admission = match admission {
        Admission::Admitted(mut a) => {
            a.rate_limit = ADVANCES.with(|x| {
                x.borrow_mut()
                    .grant(&limiter, terms, a.advanced, a.rate_limit, now_ms())
            });
            Admission::Admitted(a)
        }
        refused => refused,
    };
    let (reservation_id, info) = limits::outcome(admission)?;
    Ok(Admitted {
        applied,
        reservation_id,
        tenant_reservation: None,
        info,
    })
}

/// Gives back what an admitted request reserved but never used (a turn the
/// session refused to start). A failure only logs: the reservation then
/// expires at the limiter.
pub(crate) async fn release(
    env: &Env,
    tenant: &TenantId,
    admitted: &Admitted,
    request_id: &RequestId,
) {
    let held = [
        (admitted.applied.limiter.as_str(), admitted.reservation_id),
        (limits::TENANT_BUDGET_LIMITER, admitted.tenant_reservation),
    ];
    for (limiter, id) in held {
        let Some(id) = id else { continue };
        let released = match LimiterHandle::at(env, tenant, limiter) {
            Ok(limiter) => limiter.release(request_id, id).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = released {
            worker::console_warn!("a reservation was not released: {e}");
        }
    }
}

/// How many verifications (and tenant policies) one isolate remembers. An
/// entry is a key id, a hash and a grant (scopes, at most 32 model names): a
/// few KiB at worst, so the bound keeps the cache far below the 128 MB an
/// isolate has, even under a flood of made-up keys.
const CACHE_ENTRIES: usize = 10_000;
/// How old a cached answer may be: a revocation, a rotation or a settings
/// change is seen by every isolate within this time.
const CACHE_MAX_AGE_MS: u64 = 1_000;

/// A verification's cache key: tenant, key id, SHA-256 of the secret (so a
/// wrong secret never hits a right one's entry).
type VerificationKey = (TenantId, String, String);

/// What the gateway needs of a tenant's settings.
#[derive(Debug, Clone)]
pub(crate) struct TenantPolicy {
    pub(crate) anonymous: AnonymousAccess,
    /// The default models (the `/v1` aliases resolve to them).
    pub(crate) default_models: DefaultModels,
    pub(crate) limits: Limits,
    pub(crate) prices: PriceTable,
    pub(crate) budget: Budget,
}

thread_local! {
    // Workers run one request at a time per thread, and no borrow of these is
    // ever held across an `.await`.
    static VERIFICATIONS: RefCell<TtlCache<VerificationKey, Option<KeyGrant>>> =
        RefCell::new(TtlCache::new(CACHE_ENTRIES, CACHE_MAX_AGE_MS));
    static POLICIES: RefCell<TtlCache<TenantId, TenantPolicy>> =
        RefCell::new(TtlCache::new(CACHE_ENTRIES, CACHE_MAX_AGE_MS));
    // The requests limiters counted in advance for this isolate.
    static ADVANCES: RefCell<Advances> = RefCell::new(Advances::new());
}

/// A key's verification and when it was fetched, from the isolate's cache
/// when at most 1 s old, else from the tenant's coordinator, one check for
/// all the requests of the isolate that need it at once ([`cached`]).
/// Invalid answers are cached too, so a burst of one wrong key costs the
/// coordinator one check a second.
async fn verified(
    env: &Env,
    tenant: &TenantId,
    verify: VerifyKey,
    request_id: &RequestId,
) -> Result<(Option<KeyGrant>, u64), ApiError> {
    let key: VerificationKey = (
        tenant.clone(),
        verify.id.clone(),
        verify.secret_sha256.clone(),
    );
    cached(&VERIFICATIONS, &key, now_ms, || async move {
        let verification = CoordinatorHandle::new(env, tenant)?
            .verify_key(request_id, verify)
            .await?;
        Ok(KeyGrant::from_verification(verification))
    })
    .await
}

/// Forgets this isolate's verifications of key `id` (revoked or rotated
/// here: refused here from the very next request, elsewhere within 1 s).
fn forget_key(tenant: &TenantId, id: &str) {
    VERIFICATIONS.with(|c| {
        c.borrow_mut()
            .remove_where(|(t, k, _)| t == tenant && k == id)
    });
}

/// The tenant's anonymous access and default chat model, cached like keys
/// (one read for the requests of the isolate that need it at once).
pub(crate) async fn tenant_policy(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<TenantPolicy, ApiError> {
    let (policy, _) = cached(&POLICIES, tenant, now_ms, || async move {
        let record = CoordinatorHandle::new(env, tenant)?
            .get_tenant(request_id)
            .await?;
        Ok::<_, ApiError>(TenantPolicy {
            anonymous: record.settings.anonymous,
            prices: record.settings.prices(),
            default_models: record.settings.default_models,
            budget: record.settings.budget,
            limits: record.settings.limits,
        })
    })
    .await?;
    Ok(policy)
}

/// Refuses a chat `model` outside the caller's allow-list (403
/// `model_not_allowed`); the tenant's default model is read only for the
/// callers whose list it is.
pub(crate) async fn check_model(
    env: &Env,
    tenant: &TenantId,
    identity: &Identity,
    model: &str,
    request_id: &RequestId,
) -> Result<(), ApiError> {
    let default_chat = if auth::model_check_needs_default(identity) {
        tenant_policy(env, tenant, request_id)
            .await?
            .default_models
            .chat
    } else {
        String::new()
    };
    auth::check_model(identity, model, &default_chat)
}

/// Refuses a change of the tenant's embedding model that this deployment
/// cannot serve or that the tenant's index is in the way of
/// ([`actors::embedding_model::check_change`]). A document enqueued between
/// this check and the settings change is embedded with the new model.
async fn check_embedding_change(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    model: &str,
) -> Result<(), ApiError> {
    let settings = actors::providers::from_env(env)
        .map_err(|e| ApiError::NotConfigured(format!("misconfigured: {e}")))?;
    let current = CoordinatorHandle::new(env, tenant)?
        .get_tenant(request_id)
        .await?
        .settings
        .default_models
        .embedding;
    let chunks = if settings.workers_ai && model != current {
        IngestHandle::new(env, tenant)?
            .inspect(request_id)
            .await?
            .chunks
    } else {
        0
    };
    actors::embedding_model::check_change(&settings, &current, model, chunks)
        .map_err(crate::admin::embedding_refused)
}

/// The tenant's limits as stored now (not cached: a key's limits are checked
/// against them when an admin sets them).
async fn current_tenant_limits(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
) -> Result<Limits, ApiError> {
    Ok(CoordinatorHandle::new(env, tenant)?
        .get_tenant(request_id)
        .await?
        .settings
        .limits)
}

/// Milliseconds since the Unix epoch (Workers' clock: it advances with I/O).
fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// `caller` is who asked (see [`Caller`]); the chat actor will use its `user`
/// for session ownership.
async fn json_reply(
    route: Route,
    mut req: Request,
    env: &Env,
    tenant: &TenantId,
    caller: &Caller,
    request_id: &RequestId,
) -> Result<(u16, serde_json::Value), ApiError> {
    let tenant = tenant.clone();
    match route {
        Route::Chat
        | Route::ChatSocket
        | Route::ChatStream { .. }
        | Route::V1ChatCompletions
        | Route::V1Embeddings
        | Route::V1Models
        | Route::Dashboard { .. }
        | Route::OpenApi
        | Route::V1Model { .. } => Err(ApiError::not_found("not_found", "no such route")),
        Route::History { session } => {
            let session = api::session_id(&session)?;
            let (before, limit) = api::history_page(
                query(&req, "before").as_deref(),
                query(&req, "limit").as_deref(),
            )?;
            let page = ChatHandle::new(env, &tenant, &session)?
                .with_access(access(caller))
                .history(request_id, before, limit)
                .await?;
            Ok((200, api::history_json(&page)?))
        }
        Route::ClearSession { session } => {
            let session = api::session_id(&session)?;
            let cleared = ChatHandle::new(env, &tenant, &session)?
                .with_access(access(caller))
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
            if patch.operator_only() && caller.identity != Identity::Operator {
                return Err(ApiError::Forbidden {
                    code: "operator_only",
                    message: "the tenant's limits, prices, budgets and AI Gateway are set by the operator (ADMIN_TOKEN)".into(),
                });
            }
            let embedding = patch
                .default_models
                .as_ref()
                .and_then(|m| m.embedding.as_deref());
            if let Some(model) = embedding {
                check_embedding_change(env, &tenant, request_id, model).await?;
            }
            let record = CoordinatorHandle::new(env, &tenant)?
                .update_settings(request_id, patch)
                .await?;
            // This isolate applies the new settings from the next request on.
            POLICIES.with(|c| c.borrow_mut().remove_where(|t| t == &tenant));
            ok_json(&json!({ "tenant": record }))
        }
        Route::CreateKey => {
            let create = read_json::<CreateKeyBody>(&mut req, body::MAX_ADMIN_BODY_BYTES)
                .await?
                .into_create(now_ms())?;
            let tenant_limits = current_tenant_limits(env, &tenant, request_id).await?;
            limits::check_key_limits(
                &Limits::from(&create.limits),
                &tenant_limits,
                caller.identity == Identity::Operator,
            )?;
            let new = CoordinatorHandle::new(env, &tenant)?
                .create_key(request_id, create)
                .await?;
            ok_json(&NewKeyReply::from(&new)).map(|(_, v)| (201, v))
        }
        Route::ListKeys => {
            let keys = CoordinatorHandle::new(env, &tenant)?
                .list_keys(request_id)
                .await?;
            ok_json(&json!({ "keys": keys }))
        }
        Route::GetKey { id } => {
            admin::check_key_id(&id)?;
            let record = CoordinatorHandle::new(env, &tenant)?
                .get_key(request_id, id)
                .await?;
            ok_json(&record)
        }
        Route::RotateKey { id } => {
            admin::check_key_id(&id)?;
            let rotate = read_optional_json::<RotateKeyBody>(&mut req, body::MAX_ADMIN_BODY_BYTES)
                .await?
                .unwrap_or_default()
                .into_rotate(id)?;
            let id = rotate.id.clone();
            let new = CoordinatorHandle::new(env, &tenant)?
                .rotate_key(request_id, rotate)
                .await?;
            forget_key(&tenant, &id);
            ok_json(&NewKeyReply::from(&new))
        }
        Route::UpdateKey { id } => {
            admin::check_key_id(&id)?;
            let update = read_json::<UpdateKeyBody>(&mut req, body::MAX_ADMIN_BODY_BYTES)
                .await?
                .into_update(id)?;
            if let Some(key_limits) = &update.limits {
                let tenant_limits = current_tenant_limits(env, &tenant, request_id).await?;
                limits::check_key_limits(
                    &Limits::from(key_limits),
                    &tenant_limits,
                    caller.identity == Identity::Operator,
                )?;
            }
            let id = update.id.clone();
            let record = CoordinatorHandle::new(env, &tenant)?
                .update_key(request_id, update)
                .await?;
            // This isolate sees the new limits from the next request on.
            forget_key(&tenant, &id);
            ok_json(&record)
        }
        Route::RevokeKey { id } => {
            admin::check_key_id(&id)?;
            let record = CoordinatorHandle::new(env, &tenant)?
                .revoke_key(request_id, id.clone())
                .await?;
            forget_key(&tenant, &id);
            ok_json(&record)
        }
        Route::InspectActor { kind, name } => inspect(env, &tenant, kind, &name, request_id).await,
        Route::Usage => {
            let param = |name: &str| query(&req, name);
            let today = protocol::calendar::day_of_ms(worker::Date::now().as_millis());
            let query = UsageQuery::parse(
                param("from").as_deref(),
                param("to").as_deref(),
                param("groupBy").as_deref(),
                param("key").as_deref(),
                today,
            )
            .and_then(|q| q.with_model(param("model").as_deref()))
            .map_err(|e| ApiError::bad_request("invalid_usage_query", e))?;
            let report = LedgerHandle::new(env, &tenant)?
                .usage_report(request_id, query)
                .await?;
            ok_json(&report)
        }
        Route::SetConfig { name } => {
            let body = read_json::<api::ConfigBody>(&mut req, body::MAX_ADMIN_BODY_BYTES).await?;
            let entry = CoordinatorHandle::new(env, &tenant)?
                .set_config(request_id, name, Some(body.value))
                .await?;
            ok_json(&json!({ "ok": true, "key": entry.key, "value": entry.value }))
        }
        Route::GetConfig { name } => {
            let entry = CoordinatorHandle::new(env, &tenant)?
                .get_config(request_id, name)
                .await?;
            match entry.value {
                Some(value) => ok_json(&json!({ "ok": true, "key": entry.key, "value": value })),
                None => Err(ApiError::not_found(
                    "not_found",
                    format!("{} is not set", entry.key),
                )),
            }
        }
        Route::ListSessions => {
            let limit = page_limit(&req)?;
            let after = query(&req, "cursor")
                .map(|c| SessionCursor::decode(&c))
                .transpose()
                .map_err(listing_error)?;
            let page = CoordinatorHandle::new(env, &tenant)?
                .list_sessions(request_id, ListSessions { limit, after })
                .await?;
            ok_json(&page)
        }
        Route::ListDocuments => {
            let limit = page_limit(&req)?;
            let after = query(&req, "cursor")
                .map(|c| protocol::listing::decode_cursor(&c))
                .transpose()
                .map_err(listing_error)?;
            let page = IngestHandle::new(env, &tenant)?
                .list_documents(request_id, ListDocuments { limit, after })
                .await?;
            ok_json(&page)
        }
        Route::Metrics => {
            let (routes, tokens) = futures::join!(
                actors::metrics::handle::tenant_windows(env, &tenant, request_id),
                async {
                    LedgerHandle::new(env, &tenant)?
                        .recent_usage(request_id)
                        .await
                }
            );
            let report = MetricsReport::new(tenant.as_str(), now_ms(), &routes?, &tokens?);
            ok_json(&report)
        }
        Route::ListTenants => Err(ApiError::Forbidden {
            code: "forbidden_scope",
            message: "the tenants listing is the operator's (ADMIN_TOKEN)".into(),
        }),
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
            let enqueue = Enqueue {
                caller: Some(caller.identity.caller()),
                ..enqueue
            };
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
            let search = Search {
                caller: Some(caller.identity.caller()),
                ..search
            };
            let results = SearchHandle::for_query(env, &tenant, &search.query)?
                .search(request_id, search)
                .await?;
            ok_json(&results)
        }
    }
}

/// `GET /admin/tenants`: every tenant the deployment serves, with what its
/// coordinator says of it (read concurrently; a summary never creates a
/// tenant's record). A coordinator that cannot answer gives its tenant the
/// status `"unavailable"` rather than failing the listing.
async fn list_tenants(
    env: &Env,
    mode: &TenantMode,
    request_id: &RequestId,
) -> Result<(u16, serde_json::Value), ApiError> {
    let tenants: Vec<TenantId> = match mode {
        TenantMode::Dedicated(own) => vec![own.clone()],
        TenantMode::Shared(listed) => listed.clone(),
    };
    let summaries = futures::future::join_all(tenants.iter().map(|tenant| async move {
        let summary = match CoordinatorHandle::new(env, tenant) {
            Ok(coordinator) => coordinator.summary(request_id).await,
            Err(e) => Err(e),
        };
        match summary {
            Ok(s) => json!({
                "tenantId": s.tenant_id, "displayName": s.display_name, "status": s.status,
                "createdAtMs": s.created_at_ms, "keys": s.keys, "budgetSet": s.budget_set,
            }),
            Err(e) => {
                worker::console_warn!("tenants listing: {tenant}: {e}");
                json!({
                    "tenantId": tenant, "displayName": tenant, "status": "unavailable",
                    "createdAtMs": null, "keys": null, "budgetSet": null,
                })
            }
        }
    }))
    .await;
    Ok((200, json!({ "tenants": summaries })))
}

/// `?limit=` of a listing (400 `invalid_request` when out of 1..=200).
fn page_limit(req: &Request) -> Result<u32, ApiError> {
    protocol::listing::page_limit(query(req, "limit").as_deref()).map_err(listing_error)
}

fn listing_error(e: protocol::listing::ListingError) -> ApiError {
    ApiError::bad_request("invalid_request", e.to_string())
}

/// Reads a JSON body: content type (415), declared and actual size (413),
/// then syntax and shape (400).
async fn read_json<T: serde::de::DeserializeOwned>(
    req: &mut Request,
    limit: usize,
) -> Result<T, ApiError> {
    body::require_json(header(req, "content-type").as_deref())?;
    body::check_declared_length(header(req, "content-length").as_deref(), limit)?;
    let bytes = read_capped(req, limit).await?;
    body::parse_json::<T>(&bytes, limit)
}

/// Reads the body with a running cap: a body sent without content-length
/// (chunked) is refused as soon as it passes the limit, not after it is all
/// in memory.
async fn read_capped(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
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
    Ok(bytes)
}

/// Reads a body that may be left out (empty: `None`), with the same checks
/// as [`read_json`] when there is one.
async fn read_optional_json<T: serde::de::DeserializeOwned>(
    req: &mut Request,
    limit: usize,
) -> Result<Option<T>, ApiError> {
    body::check_declared_length(header(req, "content-length").as_deref(), limit)?;
    let bytes = read_capped(req, limit).await?;
    body::parse_optional_json(header(req, "content-type").as_deref(), &bytes, limit)
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
            let session = api::any_session_id(name)?;
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
        ActorKind::Search => {
            let replicas = actors::replica::replicas(env)?;
            let k = name
                .parse::<u32>()
                .ok()
                .filter(|k| *k < replicas && name == k.to_string())
                .ok_or_else(|| {
                    ApiError::not_found(
                        "unknown_actor",
                        format!(
                            "the deployment runs {replicas} search replicas per tenant \
                             (SEARCH_REPLICAS): /admin/actors/search/<k> with k below that"
                        ),
                    )
                })?;
            let state = actors::replica::ReplicaHandle::new(env, tenant, k)?
                .inspect(request_id)
                .await?;
            ok_json(&json!({
                "kind": kind,
                "name": tenant.object_name(&actors::replica::resource(k)),
                "state": state,
            }))
        }
        ActorKind::Limiter => {
            // `<keyId>`: that key's limiter; `anon-<digest>`: an anonymous
            // client's; `tenant-budget`: the tenant's budgets; the tenant id:
            // the tenant's ledger.
            let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let by = if protocol::keys::valid_key_id(name) {
                LimitedBy::Key(name.to_owned())
            } else if let Some(digest) = name
                .strip_prefix("anon-")
                .filter(|d| d.len() == 16 && lower_hex(d))
            {
                LimitedBy::Anonymous(digest.to_owned())
            } else if name == tenant.as_str() {
                let state = LedgerHandle::new(env, tenant)?.inspect(request_id).await?;
                return ok_json(&json!({
                    "kind": kind,
                    "name": tenant.object_name(actors::limiter::RESOURCE),
                    "state": state,
                }));
            } else if name == "tenant-budget" {
                LimitedBy::TenantBudget
            } else {
                return Err(ApiError::not_found(
                    "unknown_actor",
                    "a limiter is named by a key id, anon-<16 hex digits>, tenant-budget, or the tenant id (its ledger)",
                ));
            };
            let state = LimiterHandle::new(env, tenant, &by)?
                .inspect(request_id)
                .await?;
            ok_json(&json!({
                "kind": kind,
                "name": tenant.object_name(&by.resource()),
                "state": state,
            }))
        }
    }
}

fn ok_json<T: Serialize>(value: &T) -> Result<(u16, serde_json::Value), ApiError> {
    serde_json::to_value(value)
        .map(|v| (200, v))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Turns a session's event frames into Server-Sent Events as they arrive,
/// each with the session's sequence id as its `id:`. A stream that breaks, or
/// ends on an event that is not `done`/`error` ([`sse::Ending`]), ends with an
/// `error` event of its own (no id: the client resumes after the last event
/// the session stored).
fn event_stream(frames: TurnStream, request_id: &RequestId) -> Result<Response, ApiError> {
    struct State {
        frames: TurnStream,
        ending: sse::Ending,
        closed: bool,
    }
    let state = State {
        frames,
        ending: sse::Ending::default(),
        closed: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.closed {
            return None;
        }
        let text = match st.frames.next().await {
            Some(Ok(frame)) => {
                st.ending.saw(&frame.event);
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
            None => {
                st.closed = true;
                sse::event(None, &st.ending.at_end()?)
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

/// The owner marker of sessions the operator starts (never a key id: those
/// are hex).
const OPERATOR_OWNER: &str = "operator";

/// Who asks, as a chat session sees it: the key (none for the operator, the
/// legacy token or an anonymous caller), the end user, and whether the caller
/// may read and erase every session of the tenant (the operator, an `admin` key).
pub(crate) fn access(caller: &Caller) -> Access {
    let (key, privileged) = match &caller.identity {
        Identity::Key { id, scopes, .. } => (Some(id.clone()), scopes.contains(&Scope::Admin)),
        // Not `None`: the operator's sessions are not anonymous callers'.
        Identity::Operator => (Some(OPERATOR_OWNER.to_owned()), true),
        Identity::Legacy | Identity::Anonymous => (None, false),
    };
    Access {
        key,
        user: caller.user.clone(),
        privileged,
        proof: None,
    }
}

/// Query parameter `name` of the request (see [`crate::query`]).
fn query(req: &Request, name: &str) -> Option<String> {
    crate::query::param(&req.inner().url(), name)
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// A var or secret, if it is bound and a string (both arrive as plain strings).
pub(crate) fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}
