//! The operators' listings: a tenant's sessions (kept in its coordinator's
//! session registry), its documents (from its ingest queue), and the
//! deployment's tenants; their page sizes, opaque cursors, and the rule by
//! which the session registry applies what sessions report.

use serde::{Deserialize, Serialize};

/// A page's size when the request names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// The largest page.
pub const MAX_PAGE_LIMIT: u32 = 200;
/// Most session reports in one batch to the registry.
pub const MAX_SESSION_BATCH: usize = 100;
/// The longest cursor accepted, in characters.
pub const MAX_CURSOR_LEN: usize = 600;

/// Why a page request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    /// `limit` is not a whole number from 1 to [`MAX_PAGE_LIMIT`].
    #[error("limit must be a whole number from 1 to {MAX_PAGE_LIMIT}")]
    Limit,
    /// `cursor` is not one this listing gave.
    #[error("cursor is not one this listing gave: pass nextCursor unchanged")]
    Cursor,
}

/// The page size of `?limit=` (absent: [`DEFAULT_PAGE_LIMIT`]).
pub fn page_limit(raw: Option<&str>) -> Result<u32, ListingError> {
    match raw {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
            .ok_or(ListingError::Limit),
    }
}

/// A cursor as clients see it: the position's text in lowercase hex, so
/// it is one opaque token that needs no escaping in a URL.
pub fn encode_cursor(position: &str) -> String {
    hex::encode(position)
}

/// The position an [`encode_cursor`] cursor names.
pub fn decode_cursor(raw: &str) -> Result<String, ListingError> {
    if raw.is_empty() || raw.len() > MAX_CURSOR_LEN || !raw.len().is_multiple_of(2) {
        return Err(ListingError::Cursor);
    }
    // Lowercase only, as `encode_cursor` writes it: one cursor per position.
    if !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ListingError::Cursor);
    }
    let bytes = hex::decode(raw).map_err(|_| ListingError::Cursor)?;
    String::from_utf8(bytes).map_err(|_| ListingError::Cursor)
}

/// Where a page of sessions starts: after this session, in the order of
/// most recent activity first (ties by session id, descending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCursor {
    /// The last activity of the last session of the previous page.
    pub last_activity_ms: u64,
    /// Its id.
    pub session_id: String,
}

impl SessionCursor {
    /// The opaque cursor.
    pub fn encode(&self) -> String {
        encode_cursor(&format!("{}:{}", self.last_activity_ms, self.session_id))
    }

    /// Reads a cursor [`Self::encode`] gave.
    pub fn decode(raw: &str) -> Result<Self, ListingError> {
        let text = decode_cursor(raw)?;
        let (ms, id) = text.split_once(':').ok_or(ListingError::Cursor)?;
        let last_activity_ms = ms.parse().map_err(|_| ListingError::Cursor)?;
        crate::SessionId::parse(id).map_err(|_| ListingError::Cursor)?;
        Ok(Self {
            last_activity_ms,
            session_id: id.to_owned(),
        })
    }
}

/// A session as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEntry {
    /// The session id.
    pub session_id: String,
    /// Messages stored (user, assistant and tool messages).
    pub message_count: u64,
    /// When its last message was stored (ms since the Unix epoch).
    pub last_activity_ms: u64,
    /// When its first message was stored.
    pub created_at_ms: u64,
    /// The key that owns it (`"operator"` for the operator's), `None` for
    /// an anonymous session.
    pub key_id: Option<String>,
    /// The end user (`x-user-id`) it belongs to, if any.
    pub user_id: Option<String>,
}

/// What a session tells its tenant's registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionChange {
    /// A turn ended: the session as it is now.
    Touched(SessionEntry),
    /// The session was erased (by a client or its idle expiry).
    Erased {
        /// The session id.
        session_id: String,
    },
}

impl SessionChange {
    /// The session it is about.
    pub fn session_id(&self) -> &str {
        match self {
            SessionChange::Touched(entry) => &entry.session_id,
            SessionChange::Erased { session_id } => session_id,
        }
    }
}

/// Payload of the coordinator's `RecordSession`: a change and its version,
/// the session's latest turn id (turn ids only grow, erases included), so
/// the registry can order changes that arrive out of order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// What happened.
    pub change: SessionChange,
    /// The session's latest turn id when it happened.
    pub version: u64,
}

/// A registry row: the session as last reported (`None` once erased, kept
/// as a tombstone so that a late report of an earlier turn cannot bring it
/// back) and the version of that report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRow {
    /// The session, or `None` when erased.
    pub entry: Option<SessionEntry>,
    /// The version of the report it comes from.
    pub version: u64,
}

/// The registry's rule: the row after `report`, given the row stored now;
/// `None` when the report is older than what is stored and changes nothing.
/// A turn's report applies if it is newer than the row; an erase applies
/// if it is at least as new (an erase follows the turn of its version).
pub fn apply_report(stored: Option<&RegistryRow>, report: &SessionReport) -> Option<RegistryRow> {
    let applies = match (stored, &report.change) {
        (None, _) => true,
        (Some(row), SessionChange::Touched(_)) => report.version > row.version,
        (Some(row), SessionChange::Erased { .. }) => report.version >= row.version,
    };
    applies.then(|| RegistryRow {
        entry: match &report.change {
            SessionChange::Touched(entry) => Some(entry.clone()),
            SessionChange::Erased { .. } => None,
        },
        version: report.version,
    })
}

/// Payload of the coordinator's `ListSessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSessions {
    /// 1 to [`MAX_PAGE_LIMIT`].
    pub limit: u32,
    /// Start after this session (`None`: from the most recent).
    pub after: Option<SessionCursor>,
}

/// A page of sessions, as `GET /admin/sessions` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionPage {
    /// Most recent activity first.
    pub sessions: Vec<SessionEntry>,
    /// The cursor of the next page, `None` on the last.
    pub next_cursor: Option<String>,
}

/// Payload of the ingest queue's `ListDocuments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDocuments {
    /// 1 to [`MAX_PAGE_LIMIT`].
    pub limit: u32,
    /// Start after this document id (`None`: from the first).
    pub after: Option<String>,
}

/// A document as `GET /admin/documents` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentEntry {
    /// The document id.
    pub id: String,
    /// Its `metadata.title`, when it had a string one when last indexed.
    pub title: Option<String>,
    /// Chunks indexed.
    pub chunks: u32,
    /// When it was last indexed (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// A page of documents, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentPage {
    /// The documents.
    pub documents: Vec<DocumentEntry>,
    /// How many documents the tenant has indexed.
    pub total: u64,
    /// The cursor of the next page, `None` on the last.
    pub next_cursor: Option<String>,
}

/// What a tenant's coordinator says of it for the tenants listing,
/// without creating its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSummary {
    /// The tenant.
    pub tenant_id: String,
    /// Its display name (the id until one is set).
    pub display_name: String,
    /// `"active"` once its coordinator holds its record, `"new"` before.
    pub status: String,
    /// When its record was created.
    pub created_at_ms: Option<u64>,
    /// Keys neither revoked nor expired (`None` for a new tenant).
    pub keys: Option<u64>,
    /// Whether the operator set a tenant budget.
    pub budget_set: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(page_limit(None), Ok(50));
        assert_eq!(page_limit(Some("1")), Ok(1));
        assert_eq!(page_limit(Some("200")), Ok(200));
        for bad in ["0", "201", "-1", "", "1.5", "ten", "99999999999"] {
            assert_eq!(page_limit(Some(bad)), Err(ListingError::Limit), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_give() {
        let c = SessionCursor {
            last_activity_ms: 1_795_671_564_668,
            session_id: "user-123".into(),
        };
        let raw = c.encode();
        assert!(raw.bytes().all(|b| b.is_ascii_hexdigit()), "{raw}");
        assert_eq!(SessionCursor::decode(&raw), Ok(c));
        for bad in ["", "zz", "abc", "ABCD", &"00".repeat(400)] {
            assert_eq!(
                SessionCursor::decode(bad),
                Err(ListingError::Cursor),
                "{bad}"
            );
        }
        // Well-formed hex of a wrong position.
        for text in ["no-colon", "x:user", "1:Bad Id", "1:"] {
            let raw = encode_cursor(text);
            assert_eq!(
                SessionCursor::decode(&raw),
                Err(ListingError::Cursor),
                "{text}"
            );
        }
        assert_eq!(
            decode_cursor(&encode_cursor("doc-1.md")).unwrap(),
            "doc-1.md"
        );
        // Not UTF-8.
        assert_eq!(decode_cursor("ff"), Err(ListingError::Cursor));
        // One cursor per position: lowercase only, whole bytes only.
        assert_eq!(encode_cursor("a"), "61");
        assert_eq!(decode_cursor("6A"), Err(ListingError::Cursor));
        assert_eq!(decode_cursor("616"), Err(ListingError::Cursor));
        assert_eq!(decode_cursor("6g"), Err(ListingError::Cursor));
    }

    fn entry(id: &str, at: u64) -> SessionEntry {
        SessionEntry {
            session_id: id.into(),
            message_count: 2,
            last_activity_ms: at,
            created_at_ms: at,
            key_id: Some("0123456789ab".into()),
            user_id: None,
        }
    }

    fn touched(at: u64, version: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Touched(entry("s", at)),
            version,
        }
    }

    fn erased(version: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Erased {
                session_id: "s".into(),
            },
            version,
        }
    }

    #[test]
    fn the_registry_keeps_the_latest_report_whatever_the_order_of_arrival() {
        let first = apply_report(None, &touched(10, 1)).unwrap();
        assert_eq!(first.entry.as_ref().unwrap().last_activity_ms, 10);
        let second = apply_report(Some(&first), &touched(20, 2)).unwrap();
        // Turn 1's report arriving after turn 2's changes nothing.
        assert_eq!(apply_report(Some(&second), &touched(10, 1)), None);
        // An erase after turn 2, then turn 2's report late: still erased.
        let gone = apply_report(Some(&second), &erased(2)).unwrap();
        assert_eq!(gone.entry, None);
        assert_eq!(apply_report(Some(&gone), &touched(20, 2)), None);
        // The erase arriving before the turn's report it follows.
        let early = apply_report(Some(&first), &erased(2)).unwrap();
        assert_eq!(apply_report(Some(&early), &touched(20, 2)), None);
        // A new turn after the erase brings the session back.
        let back = apply_report(Some(&gone), &touched(30, 3)).unwrap();
        assert_eq!(back.entry.unwrap().last_activity_ms, 30);
        // An erase of a session never reported is recorded (a tombstone).
        assert_eq!(apply_report(None, &erased(0)).unwrap().entry, None);
    }

    #[test]
    fn pages_and_summaries_have_the_documented_shape() {
        let page = SessionPage {
            sessions: vec![entry("s", 5)],
            next_cursor: None,
        };
        assert_eq!(
            serde_json::to_value(&page).unwrap(),
            serde_json::json!({"sessions": [{"sessionId": "s", "messageCount": 2,
                "lastActivityMs": 5, "createdAtMs": 5, "keyId": "0123456789ab", "userId": null}],
                "nextCursor": null})
        );
        let docs = DocumentPage {
            documents: vec![DocumentEntry {
                id: "d".into(),
                title: None,
                chunks: 3,
                updated_at_ms: 9,
            }],
            total: 1,
            next_cursor: Some("64".into()),
        };
        assert_eq!(
            serde_json::to_value(&docs).unwrap(),
            serde_json::json!({"documents": [{"id": "d", "title": null, "chunks": 3,
                "updatedAtMs": 9}], "total": 1, "nextCursor": "64"})
        );
    }
}
