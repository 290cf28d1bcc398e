//! The route table: method and path to a [`Route`], or the 404/405 to answer.

use crate::errors::ApiError;
use protocol::ActorKind;

/// A request the gateway knows how to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
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
}

impl Route {
    /// Whether the route is for operators (needs the admin token).
    pub fn is_admin(&self) -> bool {
        !matches!(self, Route::Health)
    }
}

/// Finds the route for `method` and `path`.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (allow, found): (&[&'static str], Option<Route>) = match segments.as_slice() {
        ["health"] => (&["GET"], (method == "GET").then_some(Route::Health)),
        ["admin", "tenant"] => (
            &["GET", "PATCH"],
            match method {
                "GET" => Some(Route::GetTenant),
                "PATCH" => Some(Route::PatchTenant),
                _ => None,
            },
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
    fn known_routes() {
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("GET", "/admin/tenant"), Ok(Route::GetTenant));
        assert_eq!(route("PATCH", "/admin/tenant"), Ok(Route::PatchTenant));
        assert_eq!(
            route("GET", "/admin/actors/coordinator/acme"),
            Ok(Route::InspectActor {
                kind: ActorKind::Coordinator,
                name: "acme".into()
            })
        );
        assert!(!Route::Health.is_admin());
        assert!(Route::GetTenant.is_admin());
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
    }
}
