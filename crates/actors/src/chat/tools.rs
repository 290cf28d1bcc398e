//! The built-in tools: their JSON-schema specs, the checks on their
//! arguments and what a call asks for ([`plan`]), and the answers the model
//! gets. Running them (a search, a KV read) needs the runtime and lives in
//! the shell.

use crate::ports::{ToolCall, ToolSpec};
use protocol::ingest::{Metadata, Search, SearchGroup, SearchResults, MAX_TOP_K};
use protocol::TenantId;
use serde_json::{json, Value};

/// The KV key prefix `kv_get` may read (after the tenant's own prefix).
pub const KV_ALLOWED_PREFIX: &str = "config:";
/// The longest key `kv_get` reads.
pub const MAX_KV_KEY_LEN: usize = 256;

/// The tools offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "vector_search".into(),
            description: "Search this tenant's documents; returns the best passage of each matching document: its document id, its chunk (position in the document), score and text.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": { "type": "string", "description": "What to look for." },
                    "topK": { "type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "description": "How many passages (default 3)." }
                },
                "required": ["query"]
            }),
        },
        ToolSpec {
            name: "kv_get".into(),
            description: format!("Read one of this tenant's configuration values; keys start with {KV_ALLOWED_PREFIX}"),
            parameters: json!({
                "type": "object",
                "properties": { "key": { "type": "string", "description": "For example config:support_email." } },
                "required": ["key"]
            }),
        },
    ]
}

/// The search a `vector_search` call asks for, or why it is refused.
pub fn search_request(arguments: &Value) -> Result<Search, String> {
    let query = arguments["query"]
        .as_str()
        .ok_or("query must be a string")?
        .to_owned();
    let top_k = match &arguments["topK"] {
        Value::Null => 3,
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("topK must be a whole number")?,
    };
    let search = Search {
        caller: None,
        query,
        top_k,
        filter: Metadata::new(),
        mode: None,
        // The tenant's floor: the model never sees passages that score below
        // it, so an off-topic question gets no matches rather than noise.
        min_score: None,
        // One passage per document, as `/api/search` answers by default.
        group: SearchGroup::Document,
    };
    search.validate().map_err(|e| e.to_string())?;
    Ok(search)
}

/// The tool result of a search, in the shape of `/api/search`'s matches
/// without their metadata: `id` (the document's, as the search is grouped
/// by document), `score`, `docId`, `chunkId`, `chunk` (the passage's
/// position in its document) and `text`.
pub fn search_result(results: &SearchResults) -> Value {
    let matches: Vec<Value> = results
        .matches
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "score": m.score,
                "docId": m.doc_id,
                "chunkId": m.chunk_id,
                "chunk": m.chunk,
                "text": m.text,
            })
        })
        .collect();
    json!({ "matches": matches })
}

/// The full KV key a `kv_get` call may read for `tenant`, or why not: only
/// keys under [`KV_ALLOWED_PREFIX`], made of safe characters, always inside
/// the tenant's own `${tenantId}:` prefix.
pub fn kv_key(tenant: &TenantId, arguments: &Value) -> Result<String, String> {
    let key = arguments["key"].as_str().ok_or("key must be a string")?;
    if !key.starts_with(KV_ALLOWED_PREFIX) || key.len() == KV_ALLOWED_PREFIX.len() {
        return Err(format!("only keys under {KV_ALLOWED_PREFIX} can be read"));
    }
    let safe = key.len() <= MAX_KV_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'));
    if !safe {
        return Err(format!(
            "a key is at most {MAX_KV_KEY_LEN} characters of A-Z a-z 0-9 : . _ -"
        ));
    }
    Ok(tenant.kv_key(key))
}

/// What a tool call asks the shell to do, decided without I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolRun {
    /// Search the tenant's index.
    Search(Search),
    /// Read the tenant's KV key `full`; the answer names `key` as the model
    /// gave it.
    KvGet {
        /// The key as the model gave it.
        key: Value,
        /// The key in KV, under the tenant's prefix.
        full: String,
    },
    /// The call cannot run: this is its (error) result.
    Refused(Value),
}

/// What `call` asks for, on `tenant`'s behalf, by `caller` (the name its
/// usage is counted under): a known tool with valid arguments, or a refusal
/// the model reads as the tool's error.
pub fn plan(tenant: &TenantId, caller: &str, call: &ToolCall) -> ToolRun {
    match call.name.as_str() {
        "vector_search" => match search_request(&call.arguments) {
            Ok(search) => ToolRun::Search(Search {
                caller: Some(caller.to_owned()),
                ..search
            }),
            Err(e) => ToolRun::Refused(json!({ "error": e })),
        },
        "kv_get" => {
            let key = call.arguments["key"].clone();
            match kv_key(tenant, &call.arguments) {
                Ok(full) => ToolRun::KvGet { key, full },
                Err(e) => ToolRun::Refused(json!({ "key": key, "error": e })),
            }
        }
        other => ToolRun::Refused(json!({ "error": format!("no tool named {other:?}") })),
    }
}

/// A `kv_get`'s result, and whether it is an error: the value read (`null`
/// for a key not set), or why it could not be read.
pub fn kv_result(key: Value, read: Result<Option<String>, String>) -> (Value, bool) {
    match read {
        Ok(value) => (json!({ "key": key, "value": value }), false),
        Err(e) => (json!({ "key": key, "error": e }), true),
    }
}

/// A search's result, and whether it is an error.
pub fn search_outcome(found: Result<SearchResults, String>) -> (Value, bool) {
    match found {
        Ok(results) => (search_result(&results), false),
        Err(e) => (json!({ "error": e }), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn a_call_is_planned_or_refused_before_any_io() {
        let t = TenantId::parse("acme").unwrap();
        match plan(
            &t,
            "key:k1",
            &call("vector_search", json!({"query":"state"})),
        ) {
            ToolRun::Search(search) => {
                assert_eq!(search.query, "state");
                assert_eq!(search.caller.as_deref(), Some("key:k1"));
            }
            other => panic!("expected a search, got {other:?}"),
        }
        assert_eq!(
            plan(&t, "anon", &call("kv_get", json!({"key":"config:theme"}))),
            ToolRun::KvGet {
                key: json!("config:theme"),
                full: "acme:config:theme".into()
            }
        );
        let refused = |name: &str, arguments: Value| match plan(&t, "anon", &call(name, arguments))
        {
            ToolRun::Refused(answer) => answer,
            other => panic!("{name}: expected a refusal, got {other:?}"),
        };
        assert!(refused("vector_search", json!({}))["error"].is_string());
        let kv = refused("kv_get", json!({"key":"other:config:x"}));
        assert_eq!(kv["key"], "other:config:x");
        assert!(kv["error"].as_str().unwrap().contains("config:"));
        assert_eq!(
            refused("shell", json!({"cmd":"ls"}))["error"],
            "no tool named \"shell\""
        );
    }

    #[test]
    fn results_say_whether_they_are_errors() {
        assert_eq!(
            kv_result(json!("config:a"), Ok(Some("dark".into()))),
            (json!({"key":"config:a","value":"dark"}), false)
        );
        assert_eq!(
            kv_result(json!("config:a"), Ok(None)),
            (json!({"key":"config:a","value":null}), false)
        );
        assert_eq!(
            kv_result(json!("config:a"), Err("down".into())),
            (json!({"key":"config:a","error":"down"}), true)
        );
        assert_eq!(
            search_outcome(Err("index unavailable".into())),
            (json!({"error":"index unavailable"}), true)
        );
    }

    #[test]
    fn kv_keys_stay_in_the_tenant_and_the_prefix() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(
            kv_key(&t, &json!({"key":"config:theme"})),
            Ok("acme:config:theme".into())
        );
        for bad in [
            json!({"key":"secret:x"}),
            json!({"key":"config:"}),
            json!({"key":"other-tenant:config:x"}),
            json!({"key":"config:a b"}),
            json!({"key":"config:../x"}),
            json!({"key": 5}),
            json!({}),
        ] {
            assert!(kv_key(&t, &bad).is_err(), "{bad}");
        }
        assert!(kv_key(&t, &json!({"key": format!("config:{}", "a".repeat(300))})).is_err());
    }

    #[test]
    fn search_arguments() {
        let s = search_request(&json!({"query":"rust"})).unwrap();
        assert_eq!((s.query.as_str(), s.top_k), ("rust", 3));
        assert_eq!(
            search_request(&json!({"query":"rust","topK":5}))
                .unwrap()
                .top_k,
            5
        );
        assert!(search_request(&json!({"query":""})).is_err());
        assert!(search_request(&json!({"query":"x","topK":99})).is_err());
        assert!(search_request(&json!({"query":"x","topK":"a"})).is_err());
        assert!(search_request(&json!({"q":"x"})).is_err());
    }

    #[test]
    fn search_results_name_documents_and_their_passage() {
        use protocol::ingest::{MetaValue, SearchMatch, SearchMode};
        let s = search_request(&json!({"query":"rust"})).unwrap();
        assert_eq!(s.group, SearchGroup::Document);
        let metadata = Metadata::from([
            ("docId".to_owned(), MetaValue::Str("doc-a".into())),
            ("chunk".to_owned(), MetaValue::Int(3)),
            ("text".to_owned(), MetaValue::Str("Passage.".into())),
            ("tenantId".to_owned(), MetaValue::Str("acme".into())),
        ]);
        let results = SearchResults {
            cached: false,
            mode: SearchMode::Hybrid,
            index_version: 1,
            min_score: 0.35,
            matches: vec![SearchMatch::new(
                "62a0".into(),
                0.5,
                metadata,
                SearchGroup::Document,
            )],
        };
        assert_eq!(
            search_result(&results),
            json!({"matches":[{"id":"doc-a","score":0.5,"docId":"doc-a","chunkId":"62a0",
                               "chunk":3,"text":"Passage."}]})
        );
    }

    #[test]
    fn specs_are_json_schema_objects() {
        for spec in specs() {
            assert_eq!(spec.parameters["type"], "object");
            assert!(spec.parameters["required"].is_array());
        }
    }
}
