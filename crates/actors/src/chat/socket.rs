//! A session's WebSocket dialect, without I/O: what an upgrade request
//! carries, what a client's frame asks for, how a refusal reads, which
//! events a resume replays to a socket, and when a socket's key is due for a
//! re-check. The object ([`super::object`]) only sends what these decide.

use super::core::{may, Action, Owner};
use crate::limiter::admission::Applied;
use protocol::chat::{Access, Turn, TurnFrame};
use protocol::limits::{Budget, Limits};
use protocol::{ErrorCode, ErrorReply, SessionId, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Largest WebSocket frame accepted from a client.
pub const MAX_WS_FRAME_BYTES: usize = 64 * 1024;

/// How long a socket's key check holds: the gateway's cache bound too, so a
/// revocation reaches an open socket within 1 s.
pub const KEY_CHECK_MS: u64 = 1_000;

/// Key checks one isolate remembers before the map is cleared (an entry is
/// about 100 bytes; sockets of every session in the isolate share it).
pub const KEY_CHECKS_HELD: usize = 10_000;

/// Which tenant and session a socket belongs to; kept as the socket's
/// attachment, so it survives hibernation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub tenant: TenantId,
    pub session: SessionId,
    /// Who connected (the gateway's finding); turns run as this caller.
    #[serde(default)]
    pub access: Access,
    /// The session's last event id when the socket connected: it receives
    /// every later event live, so a `resume` replays only up to this one and
    /// no event reaches it twice.
    #[serde(default)]
    pub joined_after: u64,
    /// The limits its upgrade was admitted with: each of its turns is
    /// admitted with them too. `None`: no limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Applied>,
}

/// The header that carries a socket's key proof (the SHA-256 of the key's
/// secret) from the gateway to the session: not in the URL, which the
/// runtime may print (in traces and logs).
pub const PROOF_HEADER: &str = "x-key-proof";

/// An upgrade request as the gateway forwards it
/// (`/ws?tenant=..&session=..[&key=..][&user=..][&privileged=1][&checked=ms]`,
/// the key's proof in [`PROOF_HEADER`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    pub tenant: TenantId,
    pub session: SessionId,
    pub access: Access,
    /// When the gateway's verification of the key was fetched (ms).
    pub key_checked_at: Option<u64>,
    /// The limits the upgrade was admitted with (JSON in `limits`); a
    /// value that does not parse, or names no limiter, is refused.
    pub limits: Option<Applied>,
}

impl Upgrade {
    /// Reads the forwarded query; `None` without a valid tenant and session.
    /// The proof is not read from it (see [`PROOF_HEADER`]).
    pub fn from_query<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Option<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let pairs: Vec<(K, V)> = pairs.into_iter().collect();
        let param = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| v.as_ref().to_owned())
        };
        Some(Self {
            tenant: TenantId::parse(&param("tenant")?).ok()?,
            session: SessionId::parse(&param("session")?).ok()?,
            access: Access {
                key: param("key"),
                user: param("user"),
                privileged: param("privileged").is_some(),
                proof: None,
            },
            key_checked_at: param("checked").and_then(|t| t.parse().ok()),
            limits: match param("limits") {
                None => None,
                // Checked by the rule a turn's reservation is settled under.
                Some(json) => Some(
                    serde_json::from_str::<Applied>(&json)
                        .ok()
                        .filter(|a| protocol::chat::valid_limiter_name(&a.limiter))?,
                ),
            },
        })
    }
}

/// Whether a caller may attach a socket to a session with `owner`: one it
/// may read, or a new one (its first message claims it).
pub fn may_attach(owner: Option<&Owner>, access: &Access) -> bool {
    may(owner, access, Action::Read)
}

/// A client's WebSocket frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// A user message: starts a turn.
    Message {
        content: String,
        model: Option<String>,
        #[serde(rename = "maxTokens")]
        max_tokens: Option<u32>,
    },
    /// Send me the events after `after` (or the latest turn's, without it).
    Resume { after: Option<u64> },
}

/// A frame refused: the `error` event the socket gets (`code`, `message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub code: String,
    pub message: String,
}

impl Rejected {
    /// A refusal with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads a client's frame: JSON text of at most [`MAX_WS_FRAME_BYTES`]. A
/// binary frame is `None`.
pub fn read_frame(text: Option<&str>) -> Result<ClientFrame, Rejected> {
    let Some(text) = text else {
        return Err(Rejected::new("invalid_frame", "frames are JSON text"));
    };
    if text.len() > MAX_WS_FRAME_BYTES {
        return Err(Rejected::new(
            "frame_too_large",
            format!("a frame is at most {MAX_WS_FRAME_BYTES} bytes"),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        Rejected::new(
            "invalid_frame",
            format!("expected {{\"type\":\"message\",\"content\":\"...\"}} or {{\"type\":\"resume\",\"after\":<id>}}: {e}"),
        )
    })
}

/// The turn a `message` frame asks for, as `info`'s caller.
///
/// The key's model allow-list is checked by the gateway on `POST /api/chat`;
/// a socket's frames never pass through it, so over a socket only the
/// tenant's default model is used, unless the caller is the operator or a
/// tenant admin (the alias `chat`, the default, is anyone's).
pub fn socket_turn(
    info: &SocketInfo,
    content: String,
    model: Option<String>,
    max_tokens: Option<u32>,
) -> Result<Turn, Rejected> {
    let model = protocol::models::turn_model(model);
    if model.is_some() && !info.access.privileged {
        return Err(Rejected::new(
            "model_not_allowed",
            "over a WebSocket the tenant's default model is used; name a model with POST /api/chat",
        ));
    }
    let turn = Turn {
        reservation: None,
        session_id: info.session.clone(),
        access: info.access.clone(),
        message: content,
        model,
        max_tokens,
    };
    turn.validate()
        .map_err(|e| Rejected::new("invalid_message", e.to_string()))?;
    Ok(turn)
}

/// The `error` event for a turn the session refused to start.
pub fn refused_turn(e: &ErrorReply) -> Rejected {
    let code = match (e.code, e.reason.as_deref()) {
        (_, Some(reason)) => reason,
        (ErrorCode::Busy, _) => "busy",
        (ErrorCode::NotFound, _) => "not_found",
        _ => "unavailable",
    };
    Rejected::new(code, e.message.clone())
}

/// The frames a resume replays to a socket: the ones from before it
/// connected (every later one reached it live).
pub fn replay_to_socket(frames: &[TurnFrame], joined_after: u64) -> Vec<&TurnFrame> {
    frames.iter().filter(|f| f.id <= joined_after).collect()
}

/// An event as a WebSocket client gets it: the event's JSON with its
/// sequence id as `eventId` (`id` is a tool call's own id). `event_json` is
/// the event's own JSON object, as stored.
pub fn socket_text(id: u64, event_json: &str) -> String {
    format!("{{\"eventId\":{id},{}", event_json.get(1..).unwrap_or("}"))
}

/// The close code to answer a client's close with: its own when a sender
/// may use it (1000, or 3000–4999), else 1000.
pub fn close_code(code: usize) -> u16 {
    u16::try_from(code)
        .ok()
        .filter(|c| *c == 1000 || (3000..5000).contains(c))
        .unwrap_or(1000)
}

/// When each socket key last verified, by tenant, key id and proof (the
/// SHA-256 of its secret).
#[derive(Debug)]
pub struct KeyChecks {
    held: usize,
    at: HashMap<String, u64>,
    /// The key's own limits and budget as its latest check found them.
    terms: HashMap<String, (Limits, Budget)>,
}

impl KeyChecks {
    /// No checks yet; at most `held` remembered.
    pub fn new(held: usize) -> Self {
        Self {
            held,
            at: HashMap::new(),
            terms: HashMap::new(),
        }
    }

    /// The entry name of a key.
    pub fn name(tenant: &TenantId, key: &str, proof: &str) -> String {
        format!("{}:{key}:{proof}", tenant.as_str())
    }

    /// Whether the key with `proof` must be verified again at `now`.
    pub fn due(&self, proof: &str, now: u64) -> bool {
        self.at
            .get(proof)
            .is_none_or(|at| now.saturating_sub(*at) >= KEY_CHECK_MS)
    }

    /// The key verified at `at` (never later than `now`: a clock ahead of
    /// this one does not extend the bound).
    pub fn verified(&mut self, proof: &str, at: u64, now: u64) {
        if self.at.len() >= self.held && !self.at.contains_key(proof) {
            self.at.clear();
        }
        let at = at.min(now);
        let entry = self.at.entry(proof.to_owned()).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// The key did not verify: check it again next time.
    pub fn failed(&mut self, proof: &str) {
        self.at.remove(proof);
        self.terms.remove(proof);
    }

    /// A check found the key's own limits and budget to be `terms`.
    pub fn found(&mut self, proof: &str, terms: (Limits, Budget)) {
        if self.terms.len() >= self.held && !self.terms.contains_key(proof) {
            self.terms.clear();
        }
        self.terms.insert(proof.to_owned(), terms);
    }

    /// The key's own limits and budget as its latest check found them, if
    /// it was checked since this isolate's map was last cleared.
    pub fn terms(&self, proof: &str) -> Option<(Limits, Budget)> {
        self.terms.get(proof).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::chat::ChatEvent;

    fn info(privileged: bool) -> SocketInfo {
        SocketInfo {
            limits: None,
            tenant: TenantId::parse("acme").unwrap(),
            session: SessionId::parse("s1").unwrap(),
            access: Access {
                key: Some("0123456789ab".into()),
                privileged,
                ..Access::default()
            },
            joined_after: 7,
        }
    }

    #[test]
    fn an_upgrade_reads_what_the_gateway_forwards() {
        let up = Upgrade::from_query([
            ("tenant", "acme"),
            ("session", "s1"),
            ("key", "0123456789ab"),
            ("proof", "ff"),
            ("checked", "1234"),
        ])
        .unwrap();
        assert_eq!(up.tenant.as_str(), "acme");
        assert_eq!(up.access.key.as_deref(), Some("0123456789ab"));
        assert!(!up.access.privileged);
        assert_eq!(up.key_checked_at, Some(1234));
        assert_eq!(up.access.proof, None, "a proof never comes in the URL");
        assert!(Upgrade::from_query([("tenant", "acme")]).is_none());
        assert!(Upgrade::from_query([("tenant", "no/pe"), ("session", "s1")]).is_none());
        let up = Upgrade::from_query([("tenant", "acme"), ("session", "s1"), ("privileged", "1")])
            .unwrap();
        assert!(up.access.privileged && up.key_checked_at.is_none());
        let applied = r#"{"limiter":"limiter:0123456789ab","limits":{"rpm":3},"tenantLimits":{},"budget":{"softThresholdPct":80}}"#;
        let up = Upgrade::from_query([("tenant", "acme"), ("session", "s1"), ("limits", applied)])
            .unwrap();
        let limits = up.limits.expect("the socket's limits");
        assert_eq!(limits.limiter, "limiter:0123456789ab");
        assert_eq!(limits.limits.rpm, Some(3));
        assert!(up.access.key.is_none());
        for bad in [
            "{",
            r#"{"limiter":"coordinator","limits":{},"tenantLimits":{},"budget":{}}"#,
        ] {
            assert!(
                Upgrade::from_query([("tenant", "acme"), ("session", "s1"), ("limits", bad)])
                    .is_none(),
                "{bad} is refused, not ignored"
            );
        }
    }

    #[test]
    fn frames_are_bounded_json_text() {
        assert_eq!(read_frame(None).unwrap_err().code, "invalid_frame");
        let big = format!(
            "{{\"type\":\"message\",\"content\":\"{}\"}}",
            "x".repeat(MAX_WS_FRAME_BYTES)
        );
        assert_eq!(read_frame(Some(&big)).unwrap_err().code, "frame_too_large");
        assert_eq!(
            read_frame(Some(
                "{\"type\":\"message\",\"content\":\"hi\",\"extra\":1}"
            ))
            .unwrap_err()
            .code,
            "invalid_frame"
        );
        assert_eq!(
            read_frame(Some("{\"type\":\"resume\",\"after\":3}")).unwrap(),
            ClientFrame::Resume { after: Some(3) }
        );
        assert_eq!(
            read_frame(Some(
                "{\"type\":\"message\",\"content\":\"hi\",\"maxTokens\":9}"
            ))
            .unwrap(),
            ClientFrame::Message {
                content: "hi".into(),
                model: None,
                max_tokens: Some(9)
            }
        );
    }

    #[test]
    fn only_privileged_sockets_name_a_model() {
        let err = socket_turn(&info(false), "hi".into(), Some("@cf/x".into()), None).unwrap_err();
        assert_eq!(err.code, "model_not_allowed");
        let turn = socket_turn(&info(true), "hi".into(), Some("@cf/x".into()), Some(5)).unwrap();
        assert_eq!(turn.model.as_deref(), Some("@cf/x"));
        let alias = socket_turn(&info(false), "hi".into(), Some("chat".into()), None).unwrap();
        assert_eq!(alias.model, None, "the alias is the default, anyone's");
        assert_eq!(turn.access, info(true).access);
        let turn = socket_turn(&info(false), "hi".into(), None, None).unwrap();
        assert_eq!(turn.session_id.as_str(), "s1");
        assert_eq!(
            socket_turn(&info(false), String::new(), None, None)
                .unwrap_err()
                .code,
            "invalid_message"
        );
    }

    #[test]
    fn refusals_become_error_codes() {
        let busy = ErrorReply::new(ErrorCode::Busy, "busy now");
        assert_eq!(refused_turn(&busy).code, "busy");
        assert_eq!(refused_turn(&busy).message, "busy now");
        let full = ErrorReply::new(ErrorCode::QuotaExceeded, "full").with_reason("session_full");
        assert_eq!(refused_turn(&full).code, "session_full");
        assert_eq!(
            refused_turn(&ErrorReply::new(ErrorCode::NotFound, "x")).code,
            "not_found"
        );
        assert_eq!(
            refused_turn(&ErrorReply::new(ErrorCode::Internal, "x")).code,
            "unavailable"
        );
    }

    #[test]
    fn a_socket_is_replayed_only_what_it_missed() {
        let frames: Vec<TurnFrame> = (5..10)
            .map(|id| TurnFrame {
                id,
                event: ChatEvent::error("x", "y"),
            })
            .collect();
        let ids: Vec<u64> = replay_to_socket(&frames, 7).iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![5, 6, 7]);
        assert!(replay_to_socket(&frames, 4).is_empty());
    }

    #[test]
    fn socket_text_adds_the_event_id() {
        assert_eq!(
            socket_text(12, "{\"type\":\"done\",\"ok\":true}"),
            "{\"eventId\":12,\"type\":\"done\",\"ok\":true}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&socket_text(3, "{\"a\":1}")).unwrap();
        assert_eq!(parsed["eventId"], 3);
        assert_eq!(parsed["a"], 1);
    }

    #[test]
    fn close_codes_a_sender_may_not_use_become_1000() {
        assert_eq!(close_code(1000), 1000);
        assert_eq!(close_code(4001), 4001);
        assert_eq!(close_code(1005), 1000);
        assert_eq!(close_code(1006), 1000);
        assert_eq!(close_code(70_000), 1000);
    }

    #[test]
    fn a_key_check_holds_for_a_second() {
        let mut checks = KeyChecks::new(8);
        assert!(checks.due("p", 10_000), "never checked");
        checks.verified("p", 10_000, 10_000);
        assert!(!checks.due("p", 10_999));
        assert!(checks.due("p", 11_000));
        // A check from a clock ahead of this one counts as now.
        checks.verified("q", 50_000, 20_000);
        assert!(checks.due("q", 21_000));
        // An older check never replaces a newer one.
        checks.verified("p", 9_000, 12_000);
        assert!(!checks.due("p", 10_500));
        checks.failed("p");
        assert!(checks.due("p", 10_500));
    }

    #[test]
    fn the_key_checks_stay_bounded() {
        let mut checks = KeyChecks::new(8);
        for i in 0..13 {
            checks.verified(&format!("k{i}"), 100, 100);
        }
        assert!(checks.at.len() <= 8);
        assert!(!checks.due("k12", 100), "the newest is kept");
        let tenant = TenantId::parse("acme").unwrap();
        assert_ne!(
            KeyChecks::name(&tenant, "0123456789ab", "ff"),
            KeyChecks::name(&tenant, "0123456789ac", "ff"),
            "another key with the same proof is another entry"
        );
    }

    #[test]
    fn a_socket_attaches_to_a_new_session_or_one_it_may_read() {
        let access = info(false).access;
        assert!(may_attach(None, &access));
        let mine = Owner::of(&access);
        assert!(may_attach(Some(&mine), &access));
        let other = Owner::of(&Access {
            key: Some("ba9876543210".into()),
            ..Access::default()
        });
        assert!(!may_attach(Some(&other), &access));
    }
}
