//! The OpenAI-compatible API: `POST /v1/chat/completions`,
//! `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/<id>`, on
//! the same keys, limits, budgets and actors as our own routes.
//!
//! - [`wire`] reads request bodies, refusing what we do not support by name;
//! - [`reply`] writes `chat.completion` objects and chunk streams;
//! - [`errors`] is OpenAI's error shape, which every `/v1` failure takes.
//!
//! A completion without `x-session-id` runs statelessly in one of the
//! caller's completion objects (`${tenant}:v1-<caller>-<shard>`, a
//! `ChatSession` that stores nothing but its binding); with it, it is a turn
//! of that session, stored and visible through the history routes. The
//! aliases `chat` and `embedding` are the tenant's current defaults; `rag`
//! is `chat` with the tenant's tools (`vector_search`, `kv_get`) run by the
//! server, its citations in the answer.

pub mod errors;
pub mod reply;
pub mod wire;

use crate::app::{self, Admitted};
use crate::auth::{Caller, Identity};
use crate::errors::ApiError;
use crate::limits;
use crate::request_id::REQUEST_ID_HEADER;
use actors::chat::CompletionStream;
use actors::{ChatHandle, SearchHandle};
use errors::OpenAiError;
use futures::{Future, Stream, StreamExt};
use protocol::chat::{Turn, TurnReservation, DEFAULT_MAX_TOKENS};
use protocol::completion::{
    Complete, CompletionEvent, ResponseFormat, Speaker, ToolChoice, TENANT_TOOLS,
};
use protocol::ids::SessionId;
use protocol::ingest::Embed;
use protocol::models::{embedding_dimensions, CHAT_ALIAS, EMBEDDING_ALIAS};
use protocol::usage::caller_of;
use protocol::{RequestId, TenantId};
use reply::{Aggregate, ChunkWriter, FromTurn, Meta};
use serde_json::{json, Value};
use worker::{Env, Headers, Response};

/// The alias of the chat model with the tenant's tools run by the server.
pub const RAG_ALIAS: &str = "rag";
/// The header that makes a completion a turn of a stored session.
pub const SESSION_HEADER: &str = "x-session-id";
/// Largest completion request body.
pub const MAX_COMPLETION_BODY_BYTES: usize = 1024 * 1024;
/// Largest embeddings request body.
pub const MAX_EMBEDDINGS_BODY_BYTES: usize = 2 * 1024 * 1024;
/// How many completion objects a caller's stateless completions spread over.
const SHARDS: u8 = 8;

/// What a `/v1` handler needs of the request and its caller.
pub struct Context<'a> {
    /// The Worker's environment.
    pub env: &'a Env,
    /// The tenant.
    pub tenant: &'a TenantId,
    /// Who calls.
    pub caller: &'a Caller,
    /// The request id.
    pub request_id: &'a RequestId,
    /// Whom an anonymous caller's limiter is named after.
    pub client: Option<&'a str>,
}

impl From<OpenAiError> for ApiError {
    fn from(e: OpenAiError) -> Self {
        ApiError::OpenAi(Box::new(e))
    }
}

/// The models a caller may name, as `/v1/models` lists them: the aliases,
/// then the caller's allow-list (a key's models, or the tenant's defaults).
fn models_of(identity: &Identity, chat: &[String], embedding: &str) -> Vec<(String, String)> {
    let mut out = vec![
        (CHAT_ALIAS.to_owned(), "alias".to_owned()),
        (RAG_ALIAS.to_owned(), "alias".to_owned()),
        (EMBEDDING_ALIAS.to_owned(), "alias".to_owned()),
    ];
    let allowed: Vec<String> = match identity {
        Identity::Key { models, .. } if !models.is_empty() => models.clone(),
        Identity::Operator | Identity::Key { .. } | Identity::Legacy | Identity::Anonymous => {
            chat.iter().take(1).cloned().collect()
        }
    };
    for model in allowed.into_iter().chain([embedding.to_owned()]) {
        if !out.iter().any(|(m, _)| *m == model) {
            let owner = if model.starts_with("@cf/") {
                "workers-ai"
            } else {
                "platform"
            };
            out.push((model, owner.to_owned()));
        }
    }
    out
}

fn model_json(id: &str, owned_by: &str, resolves_to: Option<&str>) -> Value {
    let mut v = json!({ "id": id, "object": "model", "created": 0, "owned_by": owned_by });
    if let Some(target) = resolves_to {
        v["resolves_to"] = json!(target);
    }
    v
}

/// `GET /v1/models` (`id: None`) and `GET /v1/models/<id>`.
pub async fn models(ctx: &Context<'_>, id: Option<&str>) -> Result<(u16, Value), ApiError> {
    let defaults = app::tenant_policy(ctx.env, ctx.tenant, ctx.request_id)
        .await?
        .default_models;
    let chat = defaults.chat_chain();
    let listed = models_of(&ctx.caller.identity, &chat, &defaults.embedding);
    let resolves = |alias: &str| match alias {
        CHAT_ALIAS | RAG_ALIAS => Some(defaults.chat.as_str()),
        EMBEDDING_ALIAS => Some(defaults.embedding.as_str()),
        _ => None,
    };
    match id {
        None => Ok((
            200,
            json!({
                "object": "list",
                "data": listed
                    .iter()
                    .map(|(m, owner)| model_json(m, owner, resolves(m)))
                    .collect::<Vec<_>>(),
            }),
        )),
        Some(id) => listed
            .iter()
            .find(|(m, _)| m == id)
            .map(|(m, owner)| (200, model_json(m, owner, resolves(m))))
            .ok_or_else(|| OpenAiError::model_not_found(id).into()),
    }
}

/// A model the caller named for chat: `None` for the tenant's default chain
/// (the aliases), or a model the caller may use.
async fn chat_model(ctx: &Context<'_>, asked: &str) -> Result<Option<String>, ApiError> {
    if asked == CHAT_ALIAS || asked == RAG_ALIAS {
        return Ok(None);
    }
    app::check_model(
        ctx.env,
        ctx.tenant,
        &ctx.caller.identity,
        asked,
        ctx.request_id,
    )
    .await
    .map_err(|e| match e {
        ApiError::Forbidden { .. } => ApiError::from(OpenAiError::model_not_found(asked)),
        other => other,
    })?;
    Ok(Some(asked.to_owned()))
}

/// The caller's completion object: `v1-<key id | operator | anon-digest>-<shard>`.
fn completion_object(ctx: &Context<'_>) -> Result<SessionId, ApiError> {
    let owner = match &ctx.caller.identity {
        Identity::Key { id, .. } => id.clone(),
        Identity::Operator | Identity::Legacy => "operator".to_owned(),
        Identity::Anonymous => format!(
            "anon-{}",
            limits::client_digest(ctx.client.unwrap_or("unknown"))
        ),
    };
    let shard = ctx.request_id.as_str().bytes().map(u32::from).sum::<u32>() % u32::from(SHARDS);
    SessionId::parse(&format!("v1-{owner}-{shard}"))
        .map_err(|e| ApiError::Internal(format!("completion object name: {e}")))
}

/// Unix seconds.
fn now_secs() -> u64 {
    worker::Date::now().as_millis() / 1000
}

/// `POST /v1/chat/completions`. `body` is the parsed JSON; `session` the
/// `x-session-id` header; `limit` admits the completion at the caller's
/// limiter, whose `RateLimit` headers go to `limit_headers`.
pub(crate) async fn chat_completions<L, F>(
    ctx: &Context<'_>,
    body: Value,
    session: Option<String>,
    limit_headers: &mut Vec<(&'static str, String)>,
    limit: L,
) -> Result<Response, ApiError>
where
    L: Fn(limits::Work) -> F,
    F: Future<Output = Result<Option<Admitted>, ApiError>>,
{
    let request = wire::chat_completion(&body)?;
    let model = chat_model(ctx, &request.model).await?;
    let tenant_tools = match (&request.tenant_tools, request.model.as_str()) {
        (Some(names), _) => names.clone(),
        (None, RAG_ALIAS) => TENANT_TOOLS.iter().map(|t| (*t).to_owned()).collect(),
        (None, _) => vec![],
    };
    if let ResponseFormat::JsonSchema(_) = request.options.response_format {
        let settings = actors::providers::from_env(ctx.env)
            .map_err(|e| ApiError::NotConfigured(format!("misconfigured: {e}")))?;
        if !settings.workers_ai {
            return Err(OpenAiError::invalid(
                "json_schema is not supported by this deployment's local generator (local/extractive); json_object is",
                Some("response_format"),
            )
            .into());
        }
    }
    let session = session
        .map(|s| {
            crate::api::session_id(&s).map_err(|e| {
                ApiError::from(OpenAiError::invalid(format!("{SESSION_HEADER}: {e}"), None))
            })
        })
        .transpose()?;
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let price = match model.as_deref() {
        Some(m) => app::tenant_policy(ctx.env, ctx.tenant, ctx.request_id)
            .await?
            .prices
            .price(m),
        None => None,
    };
    // A session turn is checked before anything is reserved.
    let turn = match &session {
        Some(session_id) => Some(session_turn(&request, session_id, &model, max_tokens)?),
        None => None,
    };
    // Everything that can fail is done before the admission: nothing fails
    // between it and the actor's request but the request itself.
    let access = app::access(ctx.caller);
    let object = match &session {
        Some(session_id) => session_id.clone(),
        None => completion_object(ctx)?,
    };
    let handle = ChatHandle::new(ctx.env, ctx.tenant, &object)?.with_access(access.clone());
    let admitted = limit(limits::Work::Turn {
        // A session's turn sends its own bounded context, not the request's.
        input_tokens: if session.is_some() {
            limits::TURN_INPUT_ESTIMATE
        } else {
            request.input_estimate()
        },
        max_tokens,
        model: model.clone(),
        price,
        hold_ms: limits::turn_hold_ms(|name| ctx.env.var(name).ok().map(|v| v.to_string())),
    })
    .await?;
    if let Some(info) = admitted.as_ref().and_then(|a| a.info.as_ref()) {
        limit_headers.extend(crate::errors::rate_limit_headers(info));
    }
    let reservation = admitted.as_ref().and_then(|a| {
        a.reservation_id.map(|id| TurnReservation {
            limiter: a.applied.limiter.clone(),
            id,
            model: model.clone(),
            tenant: a.tenant_reservation,
        })
    });
    let started: Result<CompletionStream, ApiError> = match (session, turn) {
        (Some(_), Some(mut turn)) => {
            turn.reservation = reservation;
            handle
                .turn(ctx.request_id, turn)
                .await
                .map(|frames| {
                    let mut convert = FromTurn::default();
                    frames
                        .filter_map(move |frame| {
                            let event = frame.map(|f| convert.convert(f.event)).transpose();
                            futures::future::ready(event)
                        })
                        .map(|event| {
                            event
                                .map(|event| protocol::completion::CompletionFrame { id: 0, event })
                        })
                        .boxed_local()
                })
                .map_err(ApiError::from)
        }
        _ => {
            let complete = Complete {
                session_id: object,
                // The handle's access is the one sent.
                access: Default::default(),
                messages: request.messages.clone(),
                tools: request.tools.clone(),
                tool_choice: request.tool_choice.clone(),
                tenant_tools,
                model: model.clone(),
                max_tokens,
                options: request.options.clone(),
                reservation,
            };
            handle
                .complete(ctx.request_id, complete)
                .await
                .map_err(ApiError::from)
        }
    };
    let events = match started {
        Ok(events) => events,
        Err(e) => {
            if let Some(admitted) = &admitted {
                app::release(ctx.env, ctx.tenant, admitted, ctx.request_id).await;
            }
            return Err(e);
        }
    };
    let meta = Meta {
        id: format!("chatcmpl-{}", ctx.request_id.as_str()),
        created: now_secs(),
        model: request.model.clone(),
    };
    if request.stream {
        return chunk_stream(events, meta, request.include_usage, ctx.request_id);
    }
    let mut aggregate = Aggregate::default();
    let mut events = events;
    while let Some(frame) = events.next().await {
        match frame {
            Ok(frame) => aggregate.push(frame.event),
            Err(e) => {
                aggregate.push(CompletionEvent::Error {
                    code: "stream_failed".into(),
                    message: e.to_string(),
                });
                break;
            }
        }
    }
    let object = aggregate.finish(&meta)?;
    json_response(200, &object, ctx.request_id)
}

/// A completion with `x-session-id`: the conversation's last message (a
/// user's) becomes a turn of that session, whose stored history is the
/// context; the client's functions, stop sequences and response formats are
/// for stateless completions only.
fn session_turn(
    request: &wire::ChatCompletion,
    session_id: &SessionId,
    model: &Option<String>,
    max_tokens: u32,
) -> Result<Turn, ApiError> {
    let refuse = |param: &str, what: &str| {
        ApiError::from(
            OpenAiError::invalid(
                format!("{what} cannot be used with {SESSION_HEADER}: the session runs the tenant's tools and stores its answers"),
                Some(param),
            )
            .with_code("unsupported_parameter"),
        )
    };
    if !request.tools.is_empty() {
        return Err(refuse("tools", "client tools"));
    }
    if !request.options.stop.is_empty() {
        return Err(refuse("stop", "stop sequences"));
    }
    if request.options.response_format != ResponseFormat::Text {
        return Err(refuse("response_format", "a response format"));
    }
    let options = &request.options;
    for (param, set) in [
        ("temperature", options.temperature.is_some()),
        ("top_p", options.top_p.is_some()),
        ("seed", options.seed.is_some()),
        ("presence_penalty", options.presence_penalty.is_some()),
        ("frequency_penalty", options.frequency_penalty.is_some()),
        ("tool_choice", request.tool_choice != ToolChoice::Auto),
        ("tenant_tools", request.tenant_tools.is_some()),
    ] {
        if set {
            return Err(refuse(param, param));
        }
    }
    let Some(last) = request.messages.last().filter(|m| m.role == Speaker::User) else {
        return Err(OpenAiError::invalid(
            format!("with {SESSION_HEADER}, the last message must be the user's new message"),
            Some("messages"),
        )
        .into());
    };
    let turn = Turn {
        session_id: session_id.clone(),
        access: Default::default(),
        message: last.content.clone(),
        model: model.clone(),
        max_tokens: Some(max_tokens),
        reservation: None,
    };
    turn.validate()
        .map_err(|e| ApiError::from(OpenAiError::invalid(e.to_string(), Some("messages"))))?;
    Ok(turn)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(ctx: &Context<'_>, body: Value) -> Result<(u16, Value), ApiError> {
    // A tenant that opens search to anonymous callers does not open a raw
    // embedding service with it.
    if matches!(ctx.caller.identity, Identity::Anonymous) {
        return Err(ApiError::missing_key());
    }
    let request = wire::embeddings(&body)?;
    let defaults = app::tenant_policy(ctx.env, ctx.tenant, ctx.request_id)
        .await?
        .default_models;
    // The alias, the tenant's model, or the model that embeds for it here
    // (what an answer's `model` names: `local/hashed-768` in the embedded
    // configuration), so a client may send back the name it was given.
    // The settings are read only when the first two do not match.
    let in_use = || {
        actors::providers::from_env(ctx.env)
            .ok()
            .and_then(|s| actors::embedding_model::model_in_use(&s, &defaults.embedding).ok())
    };
    if request.model != EMBEDDING_ALIAS
        && request.model != defaults.embedding
        && in_use().as_deref() != Some(request.model.as_str())
    {
        return Err(OpenAiError::model_not_found(&request.model).into());
    }
    if let (Some(asked), Some(has)) = (
        request.dimensions,
        embedding_dimensions(&defaults.embedding),
    ) {
        if usize::try_from(asked).ok() != Some(has) {
            return Err(OpenAiError::invalid(
                format!(
                    "{} has {has} dimensions; dimensions cannot change them",
                    defaults.embedding
                ),
                Some("dimensions"),
            )
            .into());
        }
    }
    let caller = caller_of(app::access(ctx.caller).key.as_deref(), true);
    let first = request.texts.first().map_or("", String::as_str);
    let embedded = SearchHandle::for_query(ctx.env, ctx.tenant, first)?
        .embed(
            ctx.request_id,
            Embed {
                texts: request.texts,
                caller: Some(caller),
            },
        )
        .await?;
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if request.base64 {
                json!(base64_floats(vector))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok((
        200,
        json!({
            "object": "list",
            "data": data,
            "model": embedded.model,
            "usage": { "prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens },
        }),
    ))
}

/// `encoding_format: "base64"`: the little-endian bytes of the `f32`s.
pub fn base64_floats(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json_response(status: u16, body: &Value, request_id: &RequestId) -> Result<Response, ApiError> {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    Ok(Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(body.to_string().into_bytes()))
}

/// The completion's events as `text/event-stream` chunks, ending in
/// `data: [DONE]` (or an error object when the completion failed).
fn chunk_stream(
    events: CompletionStream,
    meta: Meta,
    include_usage: bool,
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    struct State {
        events: CompletionStream,
        writer: ChunkWriter,
        ended: bool,
    }
    let state = State {
        events,
        writer: ChunkWriter::new(meta, include_usage),
        ended: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        let payloads = match st.events.next().await {
            Some(Ok(frame)) => {
                st.ended |= matches!(
                    frame.event,
                    CompletionEvent::Done { .. } | CompletionEvent::Error { .. }
                );
                st.writer.write(frame.event)
            }
            Some(Err(e)) => {
                st.ended = true;
                st.writer.broken(&e.to_string())
            }
            None => {
                st.ended = true;
                st.writer.broken("the completion ended early")
            }
        };
        let text: String = payloads.iter().map(|p| format!("data: {p}\n\n")).collect();
        Some((Ok::<Vec<u8>, worker::Error>(text.into_bytes()), st))
    });
    sse_response(stream, request_id)
}

fn sse_response(
    stream: impl Stream<Item = Result<Vec<u8>, worker::Error>> + 'static,
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    let headers = Headers::new();
    for (name, value) in crate::sse::HEADERS {
        let _ = headers.set(name, value);
    }
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    Response::from_stream(stream)
        .map(|r| r.with_headers(headers))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keys::Scope;
    use protocol::limits::{Budget, Limits};

    fn key(models: &[&str]) -> Identity {
        Identity::Key {
            id: "abc".into(),
            scopes: vec![Scope::Chat],
            models: models.iter().map(|m| m.to_string()).collect(),
            limits: Limits::default(),
            budget: Budget::default(),
        }
    }

    #[test]
    fn a_caller_sees_the_aliases_and_what_it_may_use() {
        let chat = vec!["@cf/a".to_owned(), "@cf/b".to_owned()];
        let ids = |identity: &Identity| -> Vec<String> {
            models_of(identity, &chat, "@cf/e")
                .into_iter()
                .map(|(m, _)| m)
                .collect()
        };
        assert_eq!(
            ids(&key(&[])),
            vec!["chat", "rag", "embedding", "@cf/a", "@cf/e"]
        );
        assert_eq!(
            ids(&key(&["@cf/x", "local/y"])),
            vec!["chat", "rag", "embedding", "@cf/x", "local/y", "@cf/e"]
        );
        let owners: Vec<String> = models_of(&key(&["local/y"]), &chat, "@cf/e")
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(
            owners,
            vec!["alias", "alias", "alias", "platform", "workers-ai"]
        );
    }

    #[test]
    fn base64_is_little_endian_floats() {
        assert_eq!(base64_floats(&[1.0]), "AACAPw==");
        assert_eq!(base64_floats(&[]), "");
    }
}
