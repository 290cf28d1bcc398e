//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, a checked-in
//! file (`crates/gateway-worker/openapi.json`) embedded in the Worker.
//!
//! The document is hand-kept, so the tests below hold it to the code: its
//! operations are exactly [`routing::TEMPLATES`], each operation's security
//! is what [`Route::access`] allows, every `$ref` resolves, and the error
//! responses have our shape on our routes and OpenAI's on `/v1`. Adding a
//! route means adding its operation under `paths` (the shared parameters,
//! responses and schemas are under `components`).

use crate::errors::ApiError;
use crate::request_id::REQUEST_ID_HEADER;
use protocol::RequestId;
use worker::{Headers, Response};

/// The document, as served: the checked-in file without the whitespace
/// between its tokens (`build.rs`).
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.min.json"));

/// The document as a JSON value (the tests read it; the route sends the
/// text as it is).
#[cfg(test)]
fn document() -> Result<serde_json::Value, ApiError> {
    serde_json::from_str(DOCUMENT).map_err(|e| ApiError::Internal(format!("openapi.json: {e}")))
}

/// The `200` that serves the document, with the request id.
pub fn response(request_id: &RequestId) -> Result<Response, ApiError> {
    let headers = Headers::new();
    // ASCII we produced ourselves: setting these cannot fail.
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "public, max-age=300");
    let _ = headers.set(REQUEST_ID_HEADER, request_id.as_str());
    Ok(Response::builder()
        .with_status(200)
        .with_headers(headers)
        .fixed(DOCUMENT.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{self, Access, Route, TEMPLATES};
    use protocol::keys::Scope;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    fn doc() -> Value {
        document().unwrap()
    }

    /// What is served is the checked-in document, and smaller.
    #[test]
    fn the_served_document_is_the_checked_in_one_minified() {
        let checked_in: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
        assert_eq!(doc(), checked_in);
        assert!(DOCUMENT.len() * 10 < include_str!("../openapi.json").len() * 7);
        assert!(!DOCUMENT.contains("\n"));
    }

    /// Every (METHOD, path, operation) of the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                ops.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
        ops
    }

    /// A route of `template`, with sample parameters.
    fn sample(method: &str, template: &str) -> Route {
        let path: Vec<&str> = template
            .split('/')
            .map(|s| match s {
                "{kind}" => "coordinator",
                s if s.starts_with('{') => "sample-1",
                s => s,
            })
            .collect();
        routing::route(method, &path.join("/")).unwrap()
    }

    /// The security requirements `route` should list: the credentials
    /// [`Route::access`] admits (scopes as role names), the `key` query
    /// parameter on the browser streams, `{}` where a tenant may open the
    /// route to anonymous callers.
    fn expected_security(route: &Route) -> BTreeSet<String> {
        let req = |v: Value| v.to_string();
        let mut set = BTreeSet::new();
        match route.access() {
            Access::Public => {}
            Access::Operator => {
                set.insert(req(json!({ "operatorToken": [] })));
            }
            Access::AnyKey => {
                set.insert(req(json!({ "apiKey": [] })));
                set.insert(req(json!({ "operatorToken": [] })));
            }
            Access::Scoped(scope) => {
                set.insert(req(json!({ "apiKey": [scope.as_str()] })));
                set.insert(req(json!({ "operatorToken": [] })));
                if scope == Scope::Ingest {
                    set.insert(req(json!({ "ingestToken": [] })));
                }
                if route.is_browser_stream() {
                    set.insert(req(json!({ "keyQuery": [scope.as_str()] })));
                }
                // `/v1/embeddings` refuses anonymous callers in its handler.
                let anonymous =
                    matches!(scope, Scope::Search | Scope::Chat) && *route != Route::V1Embeddings;
                if anonymous {
                    set.insert(req(json!({})));
                }
            }
        }
        set
    }

    #[test]
    fn is_openapi_3_1() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert!(doc["info"]["title"].is_string());
    }

    #[test]
    fn lists_exactly_the_route_table() {
        let documented: BTreeSet<(String, String)> = operations(&doc())
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let routed: BTreeSet<(String, String)> = TEMPLATES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "not documented: {missing:?}; documented but not routed: {extra:?}"
        );
    }

    #[test]
    fn security_agrees_with_access() {
        for (method, path, op) in operations(&doc()) {
            let route = sample(&method, &path);
            let listed: BTreeSet<String> = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} has no security"))
                .iter()
                .map(Value::to_string)
                .collect();
            assert_eq!(listed, expected_security(&route), "{method} {path}");
            if route.access() == Access::Public {
                assert_eq!(op["security"], json!([]), "{method} {path}");
            }
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, root: &Value, seen: &mut usize) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap();
                        assert!(root.pointer(pointer).is_some(), "{r} does not resolve");
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(v, root, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, root, seen)),
                _ => {}
            }
        }
        let doc = doc();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 100, "{seen} refs");
    }

    #[test]
    fn errors_have_the_shape_of_their_routes() {
        let doc = doc();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path}"
            );
            let openai = routing::is_openai_path(&path);
            for (status, response) in responses {
                let response = match response["$ref"].as_str() {
                    Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
                    None => response,
                };
                assert!(
                    response["headers"]["x-request-id"].is_object() || status == "101",
                    "{method} {path} {status} has no x-request-id"
                );
                if status.as_str() < "400" {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                let want = if openai {
                    "#/components/schemas/OpenAiError"
                } else {
                    "#/components/schemas/Error"
                };
                assert_eq!(schema, want, "{method} {path} {status}");
            }
            // Every route with a credential may answer 401 and 403.
            if op["security"] != json!([]) {
                for status in ["400", "401", "403", "404"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids = BTreeSet::new();
        for (method, path, op) in operations(&doc()) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id), "{method} {path}");
        }
    }
}
