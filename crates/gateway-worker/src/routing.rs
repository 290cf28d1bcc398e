//! The route table: method and path to a [`Route`], or the 404/405 to answer,
//! and back: every route's method and path template ([`Route::template`],
//! [`TEMPLATES`]), which the OpenAPI document must list exactly
//! (`crate::openapi`'s tests check both).

use crate::errors::ApiError;
use protocol::keys::Scope;
use protocol::ActorKind;

/// A request the gateway knows how to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /admin/ui[/<asset>]`: the operators' dashboard (static files).
    Dashboard {
        /// The file, `""` for the page itself; unvalidated.
        asset: String,
    },
    /// `GET /openapi.json`: the OpenAPI document (public, needs no tenant).
    OpenApi,
    /// `GET /admin/tenant`: the tenant's record.
    GetTenant,
    /// `PATCH /admin/tenant`: change the tenant's settings.
    PatchTenant,
    /// `GET /admin/actors/<kind>/<name>`: an operator's look inside an actor.
    InspectActor {
        /// The kind of actor.
        kind: ActorKind,
        /// The actor's name within the tenant (for per-tenant actors, the tenant id).
        name: String,
    },
    /// `POST /admin/faults`: arm injected embedder failures (test deployments only).
    InjectFaults,
    /// `PUT /admin/config/<name>`: set a configuration value (read by `kv_get`).
    SetConfig {
        /// The name after `config:`, unvalidated.
        name: String,
    },
    /// `GET /admin/config/<name>`: read a configuration value back.
    GetConfig {
        /// The name after `config:`, unvalidated.
        name: String,
    },
    /// `GET /admin/tenants`: the deployment's tenants (operator only; no
    /// tenant needed).
    ListTenants,
    /// `GET /admin/sessions?limit=&cursor=`: the tenant's sessions.
    ListSessions,
    /// `GET /admin/documents?limit=&cursor=`: the tenant's documents.
    ListDocuments,
    /// `GET /admin/metrics`: the tenant's request metrics.
    Metrics,
    /// `DELETE /admin/config/<name>`.
    DeleteConfig {
        /// The name after `config:`, unvalidated.
        name: String,
    },
    /// `POST /admin/keys`: create an API key.
    CreateKey,
    /// `GET /admin/keys`: every key of the tenant.
    ListKeys,
    /// `GET /admin/keys/<id>`.
    GetKey {
        /// The key id, unvalidated.
        id: String,
    },
    /// `POST /admin/keys/<id>/rotate`: a new secret.
    RotateKey {
        /// The key id, unvalidated.
        id: String,
    },
    /// `DELETE /admin/keys/<id>`: revoke.
    RevokeKey {
        /// The key id, unvalidated.
        id: String,
    },
    /// `PATCH /admin/keys/<id>`: change its limits.
    UpdateKey {
        /// The key id, unvalidated.
        id: String,
    },
    /// `GET /admin/usage?from=&to=&groupBy=`: what the tenant's model calls
    /// used.
    Usage,
    /// `POST /api/ingest`: store and queue documents.
    Ingest,
    /// `GET /api/ingest/<jobId>`: a job's progress.
    IngestJob {
        /// The job id.
        job_id: String,
    },
    /// `DELETE /api/documents/<id>`: remove a document.
    DeleteDocument {
        /// The document id.
        doc_id: String,
    },
    /// `POST /api/search`.
    Search,
    /// `POST /api/chat`: a turn, answered as Server-Sent Events.
    Chat,
    /// `GET /api/chat/ws?sessionId=..`: a WebSocket to a session.
    ChatSocket,
    /// `GET /api/chat/<id>/stream`: resume a turn's events after `Last-Event-ID`.
    ChatStream {
        /// The session id, unvalidated.
        session: String,
    },
    /// `GET /api/sessions/<id>/history`.
    History {
        /// The session id, unvalidated.
        session: String,
    },
    /// `DELETE /api/sessions/<id>`.
    ClearSession {
        /// The session id, unvalidated.
        session: String,
    },
    /// `POST /v1/chat/completions`: OpenAI-compatible chat.
    V1ChatCompletions,
    /// `POST /v1/embeddings`: OpenAI-compatible embeddings.
    V1Embeddings,
    /// `GET /v1/models`: the models the caller may use.
    V1Models,
    /// `GET /v1/models/<id>`.
    V1Model {
        /// The model id, unvalidated (model names hold `/`: the rest of the path).
        id: String,
    },
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/health`).
    Public,
    /// The operator, or a key with this scope; for [`Scope::Ingest`] also the
    /// legacy `INGEST_TOKEN`; for [`Scope::Search`] and [`Scope::Chat`] also
    /// nobody at all, when the tenant allows anonymous access.
    Scoped(Scope),
    /// The operator only (`POST /admin/faults`: it breaks a tenant on purpose).
    Operator,
    /// The operator, or a key with any scope (`GET /v1/models`); never
    /// anonymous.
    AnyKey,
}

impl Route {
    /// Who may call the route.
    pub fn access(&self) -> Access {
        match self {
            Route::Health | Route::Dashboard { .. } | Route::OpenApi => Access::Public,
            Route::Search => Access::Scoped(Scope::Search),
            Route::Chat
            | Route::ChatSocket
            | Route::ChatStream { .. }
            | Route::History { .. }
            | Route::ClearSession { .. } => Access::Scoped(Scope::Chat),
            Route::Ingest | Route::IngestJob { .. } | Route::DeleteDocument { .. } => {
                Access::Scoped(Scope::Ingest)
            }
            Route::GetTenant
            | Route::PatchTenant
            | Route::InspectActor { .. }
            | Route::SetConfig { .. }
            | Route::GetConfig { .. }
            | Route::ListSessions
            | Route::ListDocuments
            | Route::Metrics
            | Route::DeleteConfig { .. }
            | Route::CreateKey
            | Route::ListKeys
            | Route::GetKey { .. }
            | Route::RotateKey { .. }
            | Route::RevokeKey { .. }
            | Route::UpdateKey { .. }
            | Route::Usage => Access::Scoped(Scope::Admin),
            Route::InjectFaults | Route::ListTenants => Access::Operator,
            Route::V1ChatCompletions => Access::Scoped(Scope::Chat),
            Route::V1Embeddings => Access::Scoped(Scope::Search),
            Route::V1Models | Route::V1Model { .. } => Access::AnyKey,
        }
    }

    /// Whether the route serves a tenant: every route but the operator's
    /// listing of the deployment's tenants.
    pub fn needs_tenant(&self) -> bool {
        !matches!(self, Route::ListTenants)
    }

    /// The route's method and path template, as the OpenAPI document names
    /// it (`{name}` for a path parameter). Exhaustive on purpose: a new
    /// variant needs a template, and then a place in [`TEMPLATES`] and in the
    /// document, or the tests fail.
    pub fn template(&self) -> (&'static str, &'static str) {
        match self {
            Route::Health => ("GET", "/health"),
            Route::OpenApi => ("GET", "/openapi.json"),
            Route::Dashboard { asset } if asset.is_empty() => ("GET", "/admin/ui"),
            Route::Dashboard { .. } => ("GET", "/admin/ui/{asset}"),
            Route::GetConfig { .. } => ("GET", "/admin/config/{name}"),
            Route::ListTenants => ("GET", "/admin/tenants"),
            Route::ListSessions => ("GET", "/admin/sessions"),
            Route::ListDocuments => ("GET", "/admin/documents"),
            Route::Metrics => ("GET", "/admin/metrics"),
            Route::GetTenant => ("GET", "/admin/tenant"),
            Route::PatchTenant => ("PATCH", "/admin/tenant"),
            Route::InspectActor { .. } => ("GET", "/admin/actors/{kind}/{name}"),
            Route::InjectFaults => ("POST", "/admin/faults"),
            Route::SetConfig { .. } => ("PUT", "/admin/config/{name}"),
            Route::DeleteConfig { .. } => ("DELETE", "/admin/config/{name}"),
            Route::CreateKey => ("POST", "/admin/keys"),
            Route::ListKeys => ("GET", "/admin/keys"),
            Route::GetKey { .. } => ("GET", "/admin/keys/{id}"),
            Route::RotateKey { .. } => ("POST", "/admin/keys/{id}/rotate"),
            Route::RevokeKey { .. } => ("DELETE", "/admin/keys/{id}"),
            Route::UpdateKey { .. } => ("PATCH", "/admin/keys/{id}"),
            Route::Usage => ("GET", "/admin/usage"),
            Route::Ingest => ("POST", "/api/ingest"),
            Route::IngestJob { .. } => ("GET", "/api/ingest/{jobId}"),
            Route::DeleteDocument { .. } => ("DELETE", "/api/documents/{id}"),
            Route::Search => ("POST", "/api/search"),
            Route::Chat => ("POST", "/api/chat"),
            Route::ChatSocket => ("GET", "/api/chat/ws"),
            Route::ChatStream { .. } => ("GET", "/api/chat/{sessionId}/stream"),
            Route::History { .. } => ("GET", "/api/sessions/{sessionId}/history"),
            Route::ClearSession { .. } => ("DELETE", "/api/sessions/{sessionId}"),
            Route::V1ChatCompletions => ("POST", "/v1/chat/completions"),
            Route::V1Embeddings => ("POST", "/v1/embeddings"),
            Route::V1Models => ("GET", "/v1/models"),
            Route::V1Model { .. } => ("GET", "/v1/models/{model}"),
        }
    }

    /// The route as logs and metrics name it: `GET /admin/keys/{id}`.
    pub fn label(&self) -> String {
        let (method, path) = self.template();
        format!("{method} {path}")
    }

    /// Routes a browser opens with `WebSocket` or `EventSource`, which cannot
    /// set headers: there the tenant and key may also come in the query.
    pub fn is_browser_stream(&self) -> bool {
        matches!(self, Route::ChatSocket | Route::ChatStream { .. })
    }
}

/// Every route's (method, path template), one per [`Route`] variant: what
/// [`Route::template`] answers, and what the OpenAPI document lists.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/admin/ui"),
    ("GET", "/admin/ui/{asset}"),
    ("GET", "/admin/tenants"),
    ("GET", "/admin/sessions"),
    ("GET", "/admin/documents"),
    ("GET", "/admin/metrics"),
    ("GET", "/admin/config/{name}"),
    ("GET", "/admin/tenant"),
    ("PATCH", "/admin/tenant"),
    ("GET", "/admin/actors/{kind}/{name}"),
    ("POST", "/admin/faults"),
    ("PUT", "/admin/config/{name}"),
    ("DELETE", "/admin/config/{name}"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("GET", "/admin/keys/{id}"),
    ("POST", "/admin/keys/{id}/rotate"),
    ("DELETE", "/admin/keys/{id}"),
    ("PATCH", "/admin/keys/{id}"),
    ("GET", "/admin/usage"),
    ("POST", "/api/ingest"),
    ("GET", "/api/ingest/{jobId}"),
    ("DELETE", "/api/documents/{id}"),
    ("POST", "/api/search"),
    ("POST", "/api/chat"),
    ("GET", "/api/chat/ws"),
    ("GET", "/api/chat/{sessionId}/stream"),
    ("GET", "/api/sessions/{sessionId}/history"),
    ("DELETE", "/api/sessions/{sessionId}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
];

/// Whether `path` is one of the OpenAI-compatible routes (`/v1/...`), whose
/// failures take OpenAI's error shape.
pub fn is_openai_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Finds the route for `method` and `path`.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (allow, found): (&[&'static str], Option<Route>) = match segments.as_slice() {
        ["health"] => (&["GET"], (method == "GET").then_some(Route::Health)),
        ["openapi.json"] => (&["GET"], (method == "GET").then_some(Route::OpenApi)),
        ["admin", "ui"] => (
            &["GET"],
            (method == "GET").then(|| Route::Dashboard {
                asset: String::new(),
            }),
        ),
        ["admin", "ui", asset] => (
            &["GET"],
            (method == "GET").then(|| Route::Dashboard {
                asset: (*asset).to_owned(),
            }),
        ),
        ["admin", "tenant"] => (
            &["GET", "PATCH"],
            match method {
                "GET" => Some(Route::GetTenant),
                "PATCH" => Some(Route::PatchTenant),
                _ => None,
            },
        ),
        ["admin", "config", name] => (
            &["GET", "PUT", "DELETE"],
            match method {
                "GET" => Some(Route::GetConfig {
                    name: (*name).to_owned(),
                }),
                "PUT" => Some(Route::SetConfig {
                    name: (*name).to_owned(),
                }),
                "DELETE" => Some(Route::DeleteConfig {
                    name: (*name).to_owned(),
                }),
                _ => None,
            },
        ),
        ["admin", "keys"] => (
            &["GET", "POST"],
            match method {
                "GET" => Some(Route::ListKeys),
                "POST" => Some(Route::CreateKey),
                _ => None,
            },
        ),
        ["admin", "keys", id] => (
            &["GET", "PATCH", "DELETE"],
            match method {
                "PATCH" => Some(Route::UpdateKey {
                    id: (*id).to_owned(),
                }),
                "GET" => Some(Route::GetKey {
                    id: (*id).to_owned(),
                }),
                "DELETE" => Some(Route::RevokeKey {
                    id: (*id).to_owned(),
                }),
                _ => None,
            },
        ),
        ["admin", "keys", id, "rotate"] => (
            &["POST"],
            (method == "POST").then(|| Route::RotateKey {
                id: (*id).to_owned(),
            }),
        ),
        ["admin", "usage"] => (&["GET"], (method == "GET").then_some(Route::Usage)),
        ["admin", "tenants"] => (&["GET"], (method == "GET").then_some(Route::ListTenants)),
        ["admin", "sessions"] => (&["GET"], (method == "GET").then_some(Route::ListSessions)),
        ["admin", "documents"] => (&["GET"], (method == "GET").then_some(Route::ListDocuments)),
        ["admin", "metrics"] => (&["GET"], (method == "GET").then_some(Route::Metrics)),
        ["admin", "faults"] => (&["POST"], (method == "POST").then_some(Route::InjectFaults)),
        ["api", "ingest"] => (&["POST"], (method == "POST").then_some(Route::Ingest)),
        ["api", "ingest", job_id] => (
            &["GET"],
            (method == "GET").then(|| Route::IngestJob {
                job_id: (*job_id).to_owned(),
            }),
        ),
        ["api", "documents", doc_id] => (
            &["DELETE"],
            (method == "DELETE").then(|| Route::DeleteDocument {
                doc_id: (*doc_id).to_owned(),
            }),
        ),
        ["api", "search"] => (&["POST"], (method == "POST").then_some(Route::Search)),
        ["api", "chat"] => (&["POST"], (method == "POST").then_some(Route::Chat)),
        ["v1", "chat", "completions"] => (
            &["POST"],
            (method == "POST").then_some(Route::V1ChatCompletions),
        ),
        ["v1", "embeddings"] => (&["POST"], (method == "POST").then_some(Route::V1Embeddings)),
        ["v1", "models"] => (&["GET"], (method == "GET").then_some(Route::V1Models)),
        ["v1", "models", id @ ..] if !id.is_empty() => (
            &["GET"],
            (method == "GET").then(|| {
                // Client libraries escape the id (`%40cf%2Fmeta%2F…`).
                // A broken escape stays as it is; bytes that are not UTF-8
                // leave the id as sent.
                let raw = id.join("/");
                let id = percent_encoding::percent_decode_str(&raw)
                    .decode_utf8()
                    .map(|id| id.into_owned());
                Route::V1Model {
                    id: id.unwrap_or(raw),
                }
            }),
        ),
        ["api", "chat", "ws"] => (&["GET"], (method == "GET").then_some(Route::ChatSocket)),
        ["api", "chat", session, "stream"] => (
            &["GET"],
            (method == "GET").then(|| Route::ChatStream {
                session: (*session).to_owned(),
            }),
        ),
        ["api", "sessions", session, "history"] => (
            &["GET"],
            (method == "GET").then(|| Route::History {
                session: (*session).to_owned(),
            }),
        ),
        ["api", "sessions", session] => (
            &["DELETE"],
            (method == "DELETE").then(|| Route::ClearSession {
                session: (*session).to_owned(),
            }),
        ),
        ["admin", "actors", kind, name] => {
            let kind = ActorKind::from_route(kind).ok_or_else(|| {
                let known: Vec<&str> = ActorKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::not_found(
                    "unknown_actor_kind",
                    format!("no actor kind {kind:?}; known kinds: {}", known.join(", ")),
                )
            })?;
            (
                &["GET"],
                (method == "GET").then(|| Route::InspectActor {
                    kind,
                    name: (*name).to_owned(),
                }),
            )
        }
        _ => {
            return Err(ApiError::not_found(
                "not_found",
                format!("no route for {path}"),
            ))
        }
    };
    found.ok_or_else(|| ApiError::MethodNotAllowed {
        method: method.to_owned(),
        allow: allow.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_id_in_the_path_is_read_escaped_or_not() {
        let model = |path: &str| match route("GET", path) {
            Ok(Route::V1Model { id }) => id,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(model("/v1/models/@cf/meta/llama-3"), "@cf/meta/llama-3");
        assert_eq!(
            model("/v1/models/%40cf%2Fmeta%2Fllama-3"),
            "@cf/meta/llama-3"
        );
        assert_eq!(model("/v1/models/%40cf%2fmeta/llama-3"), "@cf/meta/llama-3");
        // A broken escape is left as it is (and names no model).
        assert_eq!(model("/v1/models/a%4"), "a%4");
        assert_eq!(model("/v1/models/a%+1"), "a%+1");
        assert_eq!(model("/v1/models/%ff"), "%ff");
    }

    #[test]
    fn known_routes() {
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(
            route("GET", "/admin/ui"),
            Ok(Route::Dashboard {
                asset: String::new()
            })
        );
        assert_eq!(
            route("GET", "/admin/ui/app.js"),
            Ok(Route::Dashboard {
                asset: "app.js".into()
            })
        );
        assert_eq!(
            Route::Dashboard {
                asset: String::new()
            }
            .access(),
            Access::Public
        );
        assert_eq!(route("GET", "/admin/tenant"), Ok(Route::GetTenant));
        assert_eq!(route("PATCH", "/admin/tenant"), Ok(Route::PatchTenant));
        assert_eq!(
            route("GET", "/admin/actors/coordinator/acme"),
            Ok(Route::InspectActor {
                kind: ActorKind::Coordinator,
                name: "acme".into()
            })
        );
        assert_eq!(route("POST", "/api/ingest"), Ok(Route::Ingest));
        assert_eq!(
            route("GET", "/api/ingest/job-1"),
            Ok(Route::IngestJob {
                job_id: "job-1".into()
            })
        );
        assert_eq!(
            route("DELETE", "/api/documents/d1"),
            Ok(Route::DeleteDocument {
                doc_id: "d1".into()
            })
        );
        assert_eq!(route("POST", "/api/search"), Ok(Route::Search));
        assert_eq!(route("POST", "/admin/faults"), Ok(Route::InjectFaults));
        assert_eq!(
            route("PUT", "/admin/config/theme"),
            Ok(Route::SetConfig {
                name: "theme".into()
            })
        );
        assert_eq!(
            route("DELETE", "/admin/config/theme"),
            Ok(Route::DeleteConfig {
                name: "theme".into()
            })
        );
        assert_eq!(
            Route::SetConfig { name: "x".into() }.access(),
            Access::Scoped(Scope::Admin)
        );
        assert_eq!(route("POST", "/api/chat"), Ok(Route::Chat));
        assert_eq!(route("GET", "/api/chat/ws"), Ok(Route::ChatSocket));
        assert_eq!(
            route("GET", "/api/chat/s1/stream"),
            Ok(Route::ChatStream {
                session: "s1".into()
            })
        );
        assert_eq!(
            route("POST", "/api/chat/s1/stream")
                .unwrap_err()
                .allow_header(),
            Some("GET".into())
        );
        assert_eq!(
            route("GET", "/api/sessions/s1/history"),
            Ok(Route::History {
                session: "s1".into()
            })
        );
        assert_eq!(
            route("DELETE", "/api/sessions/s1"),
            Ok(Route::ClearSession {
                session: "s1".into()
            })
        );
        assert_eq!(Route::Chat.access(), Access::Scoped(Scope::Chat));
        assert_eq!(Route::Health.access(), Access::Public);
        assert_eq!(Route::Search.access(), Access::Scoped(Scope::Search));
        assert_eq!(Route::GetTenant.access(), Access::Scoped(Scope::Admin));
        assert_eq!(Route::Ingest.access(), Access::Scoped(Scope::Ingest));
        assert_eq!(
            Route::DeleteDocument { doc_id: "x".into() }.access(),
            Access::Scoped(Scope::Ingest)
        );
        assert_eq!(Route::InjectFaults.access(), Access::Operator);
        for path in ["/api/chat/ws", "/api/chat/s1/stream"] {
            assert!(route("GET", path).unwrap().is_browser_stream(), "{path}");
        }
        assert!(!Route::Chat.is_browser_stream());
    }

    #[test]
    fn key_routes() {
        assert_eq!(route("POST", "/admin/keys"), Ok(Route::CreateKey));
        assert_eq!(route("GET", "/admin/keys"), Ok(Route::ListKeys));
        assert_eq!(route("GET", "/admin/usage"), Ok(Route::Usage));
        assert_eq!(
            route("POST", "/admin/usage").unwrap_err().allow_header(),
            Some("GET".to_owned())
        );
        let id = || "0123456789ab".to_owned();
        assert_eq!(
            route("GET", "/admin/keys/0123456789ab"),
            Ok(Route::GetKey { id: id() })
        );
        assert_eq!(
            route("DELETE", "/admin/keys/0123456789ab"),
            Ok(Route::RevokeKey { id: id() })
        );
        assert_eq!(
            route("POST", "/admin/keys/0123456789ab/rotate"),
            Ok(Route::RotateKey { id: id() })
        );
        assert_eq!(
            route("PUT", "/admin/keys").unwrap_err().allow_header(),
            Some("GET, POST".into())
        );
        assert_eq!(
            route("POST", "/admin/keys/x").unwrap_err().allow_header(),
            Some("GET, PATCH, DELETE".into())
        );
        assert_eq!(
            route("PATCH", "/admin/keys/0123456789ab"),
            Ok(Route::UpdateKey { id: id() })
        );
        assert_eq!(
            route("GET", "/admin/keys/x/rotate")
                .unwrap_err()
                .allow_header(),
            Some("POST".into())
        );
        for r in [
            Route::CreateKey,
            Route::ListKeys,
            Route::GetKey { id: id() },
            Route::RotateKey { id: id() },
            Route::RevokeKey { id: id() },
        ] {
            assert_eq!(r.access(), Access::Scoped(Scope::Admin));
        }
    }

    /// `template` with every `{param}` replaced by a sample value.
    fn instantiate(template: &str) -> String {
        template
            .split('/')
            .map(|segment| match segment {
                "{kind}" => "coordinator",
                "{model}" => "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
                s if s.starts_with('{') => "sample-1",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_template_routes_back_to_itself() {
        for &(method, template) in TEMPLATES {
            let path = instantiate(template);
            let route = route(method, &path)
                .unwrap_or_else(|e| panic!("{method} {path} ({template}): {e}"));
            assert_eq!(route.template(), (method, template), "{method} {path}");
        }
        let mut unique = TEMPLATES.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), TEMPLATES.len(), "a template is listed twice");
    }

    #[test]
    fn every_allowed_method_has_a_template() {
        // A method added to a known path is routed, so it needs a template.
        for &(_, template) in TEMPLATES {
            let path = instantiate(template);
            let allow = route("TRACE", &path)
                .unwrap_err()
                .allow_header()
                .unwrap_or_default();
            for method in allow.split(", ") {
                assert!(
                    TEMPLATES.contains(&(method, template)),
                    "{method} {template} is routed but not in TEMPLATES"
                );
            }
        }
        assert_eq!(route("GET", "/openapi.json"), Ok(Route::OpenApi));
        assert_eq!(Route::OpenApi.access(), Access::Public);
    }

    #[test]
    fn listing_and_metrics_routes() {
        assert_eq!(route("GET", "/admin/tenants"), Ok(Route::ListTenants));
        assert_eq!(Route::ListTenants.access(), Access::Operator);
        assert!(!Route::ListTenants.needs_tenant());
        assert!(Route::ListSessions.needs_tenant());
        for (path, r) in [
            ("/admin/sessions", Route::ListSessions),
            ("/admin/documents", Route::ListDocuments),
            ("/admin/metrics", Route::Metrics),
        ] {
            assert_eq!(route("GET", path), Ok(r.clone()), "{path}");
            assert_eq!(r.access(), Access::Scoped(Scope::Admin), "{path}");
            assert_eq!(
                route("POST", path).unwrap_err().allow_header(),
                Some("GET".into()),
                "{path}"
            );
        }
        assert_eq!(
            route("GET", "/admin/config/theme"),
            Ok(Route::GetConfig {
                name: "theme".into()
            })
        );
        assert_eq!(
            route("POST", "/admin/config/theme")
                .unwrap_err()
                .allow_header(),
            Some("GET, PUT, DELETE".into())
        );
        assert_eq!(
            Route::GetConfig { name: "x".into() }.access(),
            Access::Scoped(Scope::Admin)
        );
    }

    #[test]
    fn labels_name_the_route_without_its_ids() {
        let cases = [
            (
                "GET",
                "/api/sessions/s1/history",
                "GET /api/sessions/{sessionId}/history",
            ),
            ("DELETE", "/api/documents/d1", "DELETE /api/documents/{id}"),
            ("GET", "/admin/keys/0123456789ab", "GET /admin/keys/{id}"),
            ("GET", "/v1/models/@cf/meta/x", "GET /v1/models/{model}"),
            ("POST", "/api/search", "POST /api/search"),
            ("GET", "/admin/metrics", "GET /admin/metrics"),
            ("GET", "/admin/ui", "GET /admin/ui"),
            ("GET", "/admin/ui/app.js", "GET /admin/ui/{asset}"),
        ];
        for (method, path, label) in cases {
            assert_eq!(route(method, path).unwrap().label(), label, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/nope",
            "/health/",
            "/admin",
            "/admin/tenant/x",
            "/admin/actors/coordinator",
        ] {
            let e = route("GET", path).unwrap_err();
            assert_eq!(e.status(), 404, "{path}");
        }
        let e = route("GET", "/admin/actors/bogus/x").unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "unknown_actor_kind"));
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        let e = route("POST", "/health").unwrap_err();
        assert_eq!((e.status(), e.allow_header()), (405, Some("GET".into())));
        let e = route("DELETE", "/admin/tenant").unwrap_err();
        assert_eq!(e.allow_header(), Some("GET, PATCH".into()));
        let e = route("PUT", "/admin/actors/coordinator/a").unwrap_err();
        assert_eq!(e.allow_header(), Some("GET".into()));
        assert_eq!(
            route("GET", "/api/search").unwrap_err().allow_header(),
            Some("POST".into())
        );
        assert_eq!(
            route("POST", "/api/documents/x")
                .unwrap_err()
                .allow_header(),
            Some("DELETE".into())
        );
    }
}
