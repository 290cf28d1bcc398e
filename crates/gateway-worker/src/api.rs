//! The clients' JSON: ingest and search bodies, checked with the protocol's
//! rules before anything is forwarded, and the shapes of the answers.

use crate::errors::ApiError;
use protocol::chat::{tool_result_value, Access, HistoryPage, Turn, MAX_HISTORY_PAGE};
use protocol::ingest::{
    Document, Enqueue, IngestError, JobAccepted, JobStatus, Metadata, ScoreFloor, Search,
    SearchGroup, SearchMode, DEFAULT_TOP_K,
};
use protocol::SessionId;
use serde::Deserialize;
use serde_json::{json, Value};

/// The largest ingest body: 100 documents of real size, with room for JSON.
pub const MAX_INGEST_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The largest chat body: an 8000-character message of 4-byte characters, with room.
pub const MAX_CHAT_BODY_BYTES: usize = 64 * 1024;
/// The largest search body.
pub const MAX_SEARCH_BODY_BYTES: usize = 16 * 1024;

/// `POST /api/ingest`: `{"documents":[{"id","text","metadata"?}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    documents: Vec<DocumentBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentBody {
    id: String,
    text: String,
    #[serde(default)]
    metadata: Metadata,
}

impl IngestBody {
    /// The validated protocol request.
    pub fn into_enqueue(self) -> Result<Enqueue, ApiError> {
        let enqueue = Enqueue {
            caller: None,
            documents: self
                .documents
                .into_iter()
                .map(|d| Document {
                    id: d.id,
                    text: d.text,
                    metadata: d.metadata,
                })
                .collect(),
        };
        enqueue.validate().map_err(invalid)?;
        Ok(enqueue)
    }
}

/// `POST /api/search`: `{"query", "topK"?, "filter"?, "mode"?, "minScore"?,
/// "group"?}` (`minScore` absent: the tenant's `searchFloor`; `group`
/// absent: `document`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchBody {
    query: String,
    top_k: Option<u32>,
    #[serde(default)]
    filter: Metadata,
    mode: Option<SearchMode>,
    min_score: Option<f64>,
    // A name, checked here, so that a bad one is `invalid_search` naming
    // the choices rather than a serde message.
    group: Option<String>,
}

impl SearchBody {
    /// The validated protocol request.
    pub fn into_search(self) -> Result<Search, ApiError> {
        let search = Search {
            caller: None,
            query: self.query,
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K),
            filter: self.filter,
            mode: self.mode,
            min_score: self
                .min_score
                .map(ScoreFloor::new)
                .transpose()
                .map_err(invalid)?,
            group: self
                .group
                .as_deref()
                .map(SearchGroup::parse)
                .transpose()
                .map_err(invalid)?
                .unwrap_or_default(),
        };
        search.validate().map_err(invalid)?;
        Ok(search)
    }
}

/// `POST /api/chat`: `{"sessionId", "message", "model"?, "maxTokens"?}`
/// (`"model": "chat"` names the tenant's default and its fallbacks).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatBody {
    session_id: String,
    message: String,
    model: Option<String>,
    max_tokens: Option<u32>,
}

impl ChatBody {
    /// The validated protocol turn.
    pub fn into_turn(self) -> Result<Turn, ApiError> {
        let turn = Turn {
            reservation: None,
            session_id: session_id(&self.session_id)?,
            // The caller's identity is the gateway's finding, set by the handler.
            access: Access::default(),
            message: self.message,
            // The alias `chat` is the tenant's default, like no model.
            model: protocol::models::turn_model(self.model),
            max_tokens: self.max_tokens,
        };
        turn.validate()
            .map_err(|e| ApiError::bad_request("invalid_message", e.to_string()))?;
        Ok(turn)
    }
}

/// Checks a session id (`^[a-z0-9][a-z0-9-]{0,127}$`).
pub fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    if raw.starts_with(COMPLETION_OBJECT_PREFIX) {
        return Err(ApiError::bad_request(
            "invalid_session",
            format!("session ids starting with {COMPLETION_OBJECT_PREFIX} are reserved for the /v1 completion objects"),
        ));
    }
    any_session_id(raw)
}

/// The prefix of the `ChatSession` objects that run stateless `/v1`
/// completions (`v1-<caller>-<n>`): no client's session may take it, so no
/// one can own, fill or crowd another caller's completion objects.
pub const COMPLETION_OBJECT_PREFIX: &str = "v1-";

/// A session id, the reserved prefix included (an operator's look inside
/// any chat object).
pub fn any_session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_session",
            format!("sessionId must match ^[a-z0-9][a-z0-9-]{{0,127}}$: {e}"),
        )
    })
}

/// The `before` and `limit` of a history page, from the query string.
pub fn history_page(
    before: Option<&str>,
    limit: Option<&str>,
) -> Result<(Option<u64>, u32), ApiError> {
    let before = before.map(|b| b.parse::<u64>()).transpose().map_err(|_| {
        ApiError::bad_request("invalid_query", "before must be a message sequence number")
    })?;
    let limit = limit
        .map(|l| l.parse::<u32>())
        .transpose()
        .ok()
        .flatten()
        .or(if limit.is_none() { Some(50) } else { None })
        .filter(|l| (1..=MAX_HISTORY_PAGE).contains(l))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1 to {MAX_HISTORY_PAGE}"),
            )
        })?;
    Ok((before, limit))
}

/// A page of history as clients get it: every field as stored, except that
/// a tool message's `content` (the result, stored as JSON text for the
/// model) is the JSON value itself, as in the `tool_result` event, or the
/// text as a JSON string when it is not JSON.
pub fn history_json(page: &HistoryPage) -> Result<Value, ApiError> {
    let mut json = serde_json::to_value(page).map_err(|e| ApiError::Internal(e.to_string()))?;
    let views = json["messages"].as_array_mut().into_iter().flatten();
    for (view, message) in views.zip(&page.messages) {
        if message.role == "tool" {
            view["content"] = tool_result_value(&message.content);
        }
    }
    Ok(json)
}

/// The event id to resume after: the `Last-Event-ID` header (what an
/// EventSource sends when it reconnects) or, for clients that cannot set
/// headers, `?after=`; both must agree when both are given.
pub fn last_event_id(header: Option<&str>, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let parse = |v: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID (or after) must be an event id: a whole number",
            )
        })
    };
    let header = header.map(parse).transpose()?;
    let query = query.map(parse).transpose()?;
    match (header, query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID and after disagree",
        )),
        (h, q) => Ok(h.or(q)),
    }
}

/// `PUT /admin/config/<name>`: `{"value": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    /// The value.
    pub value: String,
}

/// `POST /admin/faults`: `{"embedFailures": n}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsBody {
    /// How many of the next embedder calls fail.
    pub embed_failures: u32,
}

fn invalid(e: IngestError) -> ApiError {
    let code = match e {
        IngestError::Query
        | IngestError::TopK
        | IngestError::Filter(_)
        | IngestError::MinScore
        | IngestError::Group => "invalid_search",
        _ => "invalid_documents",
    };
    ApiError::bad_request(code, e.to_string())
}

/// Checks a job id from a path (`job-` and 24 hex digits) before it goes anywhere.
pub fn check_job_id(job_id: &str) -> Result<(), ApiError> {
    let ok = job_id
        .strip_prefix("job-")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_job_id",
            "a job id is job- followed by 24 hex digits",
        ))
    }
}

/// Checks a document id from a path.
pub fn check_doc_id(doc_id: &str) -> Result<(), ApiError> {
    if protocol::ingest::valid_doc_id(doc_id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_document_id",
            "a document id is 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

/// The answer to an ingest: the seed's `ok` and `count`, plus the job.
/// 200 when the job is already done, 202 while it is queued.
pub fn accepted(job: &JobAccepted) -> (u16, Value) {
    let status = if job.status == JobStatus::Done {
        200
    } else {
        202
    };
    (
        status,
        json!({ "ok": true, "count": job.count, "jobId": job.job_id, "status": job.status }),
    )
}

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn the_completion_objects_prefix_is_reserved() {
        assert_eq!(
            session_id("v1-abc-0").unwrap_err().code(),
            "invalid_session"
        );
        assert!(session_id("v1abc").is_ok());
        assert!(any_session_id("v1-abc-0").is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(json: &str) -> Result<Enqueue, ApiError> {
        serde_json::from_str::<IngestBody>(json)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .into_enqueue()
    }

    fn search(json: &str) -> Result<Search, ApiError> {
        serde_json::from_str::<SearchBody>(json)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .into_search()
    }

    #[test]
    fn ingest_bodies() {
        let e = ingest(r#"{"documents":[{"id":"d1","text":"hi","metadata":{"source":"a.md"}}]}"#)
            .unwrap();
        assert_eq!(e.documents[0].id, "d1");
        for (bad, code) in [
            (r#"{"documents":[]}"#, "invalid_documents"),
            (
                r#"{"documents":[{"id":"d/1","text":"hi"}]}"#,
                "invalid_documents",
            ),
            (
                r#"{"documents":[{"id":"d1","text":""}]}"#,
                "invalid_documents",
            ),
            (
                r#"{"documents":[{"id":"d1","text":"x","metadata":{"tenantId":"other"}}]}"#,
                "invalid_documents",
            ),
            (r#"{"documents":[{"id":"d1"}]}"#, "invalid_json"),
            (r#"{"documents":[{"id":5,"text":"x"}]}"#, "invalid_json"),
            (r#"{"docs":[]}"#, "invalid_json"),
            (
                r#"{"documents":[{"id":"d1","text":"x","metadata":{"a":{"b":1}}}]}"#,
                "invalid_json",
            ),
        ] {
            let err = ingest(bad).unwrap_err();
            assert_eq!((err.status(), err.code()), (400, code), "{bad}");
        }
    }

    #[test]
    fn search_bodies() {
        let s = search(r#"{"query":"hello"}"#).unwrap();
        assert_eq!((s.top_k, s.mode), (DEFAULT_TOP_K, None));
        let s = search(r#"{"query":"hello","topK":20,"mode":"keyword","filter":{"source":"a"}}"#)
            .unwrap();
        assert_eq!((s.top_k, s.mode), (20, Some(SearchMode::Keyword)));
        assert_eq!(s.min_score, None, "no minScore: the tenant's floor");
        assert_eq!(s.group, SearchGroup::Document, "per document by default");
        for (json, want) in [
            (r#"{"query":"x","group":"chunk"}"#, SearchGroup::Chunk),
            (r#"{"query":"x","group":"document"}"#, SearchGroup::Document),
            (r#"{"query":"x","group":null}"#, SearchGroup::Document),
        ] {
            assert_eq!(search(json).unwrap().group, want, "{json}");
        }
        for bad in [
            r#"{"query":"x","group":"chunks"}"#,
            r#"{"query":"x","group":""}"#,
            r#"{"query":"x","group":"Document"}"#,
        ] {
            let e = search(bad).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_search"), "{bad}");
            assert!(e.to_string().contains("group"), "{e}");
        }
        assert_eq!(
            search(r#"{"query":"x","group":5}"#).unwrap_err().status(),
            400
        );
        for (json, want) in [
            (r#"{"query":"x","minScore":0}"#, 0.0),
            (r#"{"query":"x","minScore":0.5}"#, 0.5),
            (r#"{"query":"x","minScore":1}"#, 1.0),
        ] {
            assert_eq!(
                search(json).unwrap().min_score.map(ScoreFloor::get),
                Some(want)
            );
        }
        for bad in [
            r#"{"query":"x","minScore":1.5}"#,
            r#"{"query":"x","minScore":-0.1}"#,
        ] {
            let e = search(bad).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_search"), "{bad}");
            assert!(e.to_string().contains("minScore"), "{e}");
        }
        for bad in [
            r#"{"query":"x","minScore":"high"}"#,
            r#"{"query":"x","minScore":null,"extra":1}"#,
            r#"{"query":""}"#,
            r#"{"query":"x","topK":21}"#,
            r#"{"query":"x","topK":0}"#,
            r#"{"query":"x","topK":-1}"#,
            r#"{"query":"x","topK":"5"}"#,
            r#"{"query":"x","mode":"semantic"}"#,
            r#"{"query":5}"#,
            r#"{}"#,
            r#"{"query":"x","extra":1}"#,
        ] {
            assert_eq!(search(bad).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn chat_bodies() {
        let turn = |json: &str| {
            serde_json::from_str::<ChatBody>(json)
                .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
                .and_then(ChatBody::into_turn)
        };
        assert!(turn(r#"{"sessionId":"user-123","message":"hi"}"#).is_ok());
        let alias = turn(r#"{"sessionId":"s","message":"hi","model":"chat"}"#).unwrap();
        assert_eq!(alias.model, None, "the alias is the tenant's default");
        let named = turn(r#"{"sessionId":"s","message":"hi","model":"@cf/x/y"}"#).unwrap();
        assert_eq!(named.model.as_deref(), Some("@cf/x/y"));
        for (bad, code) in [
            (r#"{"sessionId":"User","message":"hi"}"#, "invalid_session"),
            (r#"{"sessionId":"a:b","message":"hi"}"#, "invalid_session"),
            (r#"{"sessionId":"s","message":""}"#, "invalid_message"),
            (
                r#"{"sessionId":"s","message":"hi","maxTokens":99999}"#,
                "invalid_message",
            ),
            (r#"{"sessionId":"s"}"#, "invalid_json"),
            (
                r#"{"sessionId":"s","message":"hi","extra":1}"#,
                "invalid_json",
            ),
        ] {
            assert_eq!(turn(bad).unwrap_err().code(), code, "{bad}");
        }
    }

    #[test]
    fn history_query() {
        assert_eq!(history_page(None, None), Ok((None, 50)));
        assert_eq!(history_page(Some("7"), Some("10")), Ok((Some(7), 10)));
        for (b, l) in [
            (Some("x"), None),
            (None, Some("0")),
            (None, Some("201")),
            (None, Some("a")),
        ] {
            assert_eq!(history_page(b, l).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn history_shows_tool_results_as_json_values() {
        use protocol::chat::StoredMessage;
        let message = |seq: u64, role: &str, content: &str| StoredMessage {
            seq,
            role: role.into(),
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
            usage: None,
            created_at_ms: 1,
            turn: None,
        };
        let page = HistoryPage {
            messages: vec![
                message(1, "user", r#"{"not":"parsed"}"#),
                message(2, "tool", r#"{"matches":[{"id":"doc-a"}]}"#),
                message(3, "tool", "not json"),
                message(4, "assistant", "[1]"),
            ],
            next_before: None,
        };
        let json = history_json(&page).unwrap();
        let contents: Vec<&Value> = json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["content"])
            .collect();
        assert_eq!(
            contents,
            [
                &json!(r#"{"not":"parsed"}"#),
                &json!({"matches":[{"id":"doc-a"}]}),
                &json!("not json"),
                &json!("[1]"),
            ],
            "only tool results are values; other messages stay text"
        );
        assert_eq!(json["messages"][1]["createdAtMs"], 1);
        assert_eq!(json["nextBefore"], Value::Null);
    }

    #[test]
    fn resume_positions() {
        assert_eq!(last_event_id(None, None), Ok(None));
        assert_eq!(last_event_id(Some("7"), None), Ok(Some(7)));
        assert_eq!(last_event_id(None, Some("7")), Ok(Some(7)));
        assert_eq!(last_event_id(Some("7"), Some("7")), Ok(Some(7)));
        for (h, q) in [
            (Some("x"), None),
            (None, Some("-1")),
            (Some("1"), Some("2")),
        ] {
            assert_eq!(last_event_id(h, q).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn path_ids() {
        assert!(check_job_id("job-0123456789abcdef01234567").is_ok());
        for bad in [
            "job-",
            "job-xyz",
            "0123456789abcdef01234567",
            "job-0123456789abcdef012345678",
        ] {
            assert_eq!(check_job_id(bad).unwrap_err().status(), 400);
        }
        assert!(check_doc_id("book-ch04-03.1").is_ok());
        assert!(check_doc_id("a%2Fb").is_err());
    }
}
