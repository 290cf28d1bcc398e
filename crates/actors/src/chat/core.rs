//! The conversation's pure core: which turn may start, what a session's
//! bounds are, which stored turns were interrupted, when the alarm must fire,
//! what a resuming client is sent, and what history fits the model. One
//! turn's own state machine is [`super::turn`].

use super::turn::{Effect, TurnMachine};
use crate::ports::{ChatMessage, Role};
use protocol::chat::Access;
use protocol::{ErrorCode, ErrorReply};
/// Characters of history sent to the model (about 6k tokens), system prompt aside.
pub const CONTEXT_BUDGET_CHARS: usize = 24_000;
/// The system prompt.
pub const SYSTEM_PROMPT: &str = "You answer questions about this tenant's documents. \
Use vector_search to find passages and cite them as [n] with their document ids. \
Use kv_get only for keys under config:. If the documents do not answer, say so.";

/// A session's bounds, from the deployment's variables (each has a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    /// `CHAT_TURN_TIMEOUT_SECS`: a turn not ended by then fails (`turn_timeout`).
    pub turn_timeout_ms: u64,
    /// `CHAT_MAX_MESSAGES`: stored messages after which no turn starts (413 `session_full`).
    pub max_messages: u64,
    /// `CHAT_IDLE_EXPIRY_DAYS`: a session untouched this long is erased by its alarm.
    pub idle_expiry_ms: u64,
    /// `CHAT_MAX_TOOL_RESULT_BYTES`: a tool result is stored (and shown to the
    /// model) truncated past this size.
    pub max_tool_result_bytes: usize,
    /// `CHAT_RESUMABLE_TURNS`: how many recent turns keep their events for resuming.
    pub resumable_turns: u64,
    /// `CHAT_FIRST_OUTPUT_TIMEOUT_SECS`: a model attempt that has produced
    /// nothing by then is abandoned (retried, or the next model asked).
    pub first_output_timeout_ms: u64,
    /// `CHAT_GENERATION_TIMEOUT_SECS`: a model attempt not finished by then
    /// is abandoned; after its text began, the turn fails (`model_timeout`).
    pub generation_timeout_ms: u64,
}

impl Default for ChatLimits {
    fn default() -> Self {
        Self {
            turn_timeout_ms: 120_000,
            max_messages: 5_000,
            idle_expiry_ms: 30 * DAY_MS,
            max_tool_result_bytes: 16 * 1024,
            resumable_turns: 20,
            first_output_timeout_ms: crate::generation::routing::DEFAULT_FIRST_OUTPUT_MS,
            generation_timeout_ms: crate::generation::routing::DEFAULT_GENERATION_TIMEOUT_MS,
        }
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A variable that is set but not a number in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be a whole number from {min} to {max}, not {value:?}")]
pub struct LimitError {
    /// The variable.
    pub name: &'static str,
    /// What it was set to.
    pub value: String,
    /// Smallest accepted.
    pub min: u64,
    /// Largest accepted.
    pub max: u64,
}

impl ChatLimits {
    /// Reads the bounds through `var` (the deployment's variables); unset
    /// ones keep their defaults, malformed ones are an error.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, LimitError> {
        let d = Self::default();
        let read = |name: &'static str, default: u64, min: u64, max: u64| match var(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or(LimitError {
                    name,
                    value,
                    min,
                    max,
                }),
        };
        Ok(Self {
            turn_timeout_ms: read("CHAT_TURN_TIMEOUT_SECS", d.turn_timeout_ms / 1000, 5, 3600)?
                * 1000,
            max_messages: read("CHAT_MAX_MESSAGES", d.max_messages, 10, 1_000_000)?,
            idle_expiry_ms: read("CHAT_IDLE_EXPIRY_DAYS", d.idle_expiry_ms / DAY_MS, 1, 3650)?
                * DAY_MS,
            max_tool_result_bytes: usize::try_from(read(
                "CHAT_MAX_TOOL_RESULT_BYTES",
                d.max_tool_result_bytes as u64,
                1024,
                256 * 1024,
            )?)
            .unwrap_or(d.max_tool_result_bytes),
            resumable_turns: read("CHAT_RESUMABLE_TURNS", d.resumable_turns, 1, 1000)?,
            first_output_timeout_ms: read(
                "CHAT_FIRST_OUTPUT_TIMEOUT_SECS",
                d.first_output_timeout_ms / 1000,
                1,
                600,
            )? * 1000,
            generation_timeout_ms: read(
                "CHAT_GENERATION_TIMEOUT_SECS",
                d.generation_timeout_ms / 1000,
                1,
                3600,
            )? * 1000,
        })
    }

    /// The router's bounds under these limits (a first-output timeout
    /// longer than the generation timeout is cut to it).
    pub fn route_policy(&self) -> crate::generation::routing::RoutePolicy {
        crate::generation::routing::RoutePolicy {
            first_output_ms: self.first_output_timeout_ms.min(self.generation_timeout_ms),
            generation_timeout_ms: self.generation_timeout_ms,
            ..crate::generation::routing::RoutePolicy::default()
        }
    }
}

/// Why a turn cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A turn is being answered: two answers are never interleaved, and
    /// nothing is queued behind a client's back (409 `busy`).
    Busy,
    /// The session holds [`ChatLimits::max_messages`] messages (413 `session_full`).
    Full,
}

impl Refusal {
    /// The client's error for this refusal; `stored` is the session's
    /// message count.
    pub fn to_error(&self, stored: u64, limits: &ChatLimits) -> ErrorReply {
        match self {
            Refusal::Busy => ErrorReply::new(
                ErrorCode::Busy,
                "this session is still answering an earlier message",
            ),
            Refusal::Full => ErrorReply::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this session holds {stored} messages, the most it may (CHAT_MAX_MESSAGES = {}); erase it or start a new session",
                    limits.max_messages
                ),
            )
            .with_reason("session_full"),
        }
    }
}

/// The session's in-memory state: the turn being answered in this isolate.
#[derive(Debug, Default)]
pub struct SessionCore {
    active: Option<TurnMachine>,
    /// What the most recently finished turns used, by id: a turn ended by
    /// the alarm is finished before its driver returns from the model, and
    /// the driver still settles its reservation with the turn's usage.
    ended: std::collections::VecDeque<Ended>,
}

/// What a finished turn used, and which model served it last.
#[derive(Debug)]
struct Ended {
    id: u64,
    used: Option<protocol::limits::TokenUsage>,
    model: Option<String>,
}

/// Finished turns whose usage [`SessionCore`] remembers.
const ENDED_KEPT: usize = 8;

impl SessionCore {
    /// Whether a turn may start, given how many messages are stored.
    pub fn can_begin(&self, stored_messages: u64, limits: &ChatLimits) -> Result<(), Refusal> {
        if self.in_flight() {
            return Err(Refusal::Busy);
        }
        if stored_messages >= limits.max_messages {
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Starts turn `id`, whose user message is stored; the effects to perform.
    pub fn start(&mut self, id: u64, now_ms: u64, limits: &ChatLimits) -> Vec<Effect> {
        let (machine, effects) = TurnMachine::start(
            id,
            now_ms,
            limits.turn_timeout_ms,
            limits.max_tool_result_bytes,
        );
        self.active = Some(machine);
        effects
    }

    /// Feeds turn `id`'s machine, if that turn is the one running here;
    /// otherwise (a stale input for a turn that ended or was replaced) nothing.
    pub fn feed(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut TurnMachine) -> Vec<Effect>,
    ) -> Vec<Effect> {
        match self.active.as_mut() {
            Some(machine) if machine.id() == id => f(machine),
            _ => vec![],
        }
    }

    /// Forgets turn `id` once it has ended.
    pub fn finish(&mut self, id: u64) {
        if self
            .active
            .as_ref()
            .is_some_and(|m| m.id() == id && m.is_ended())
        {
            if let Some(m) = self.active.take() {
                if self.ended.len() >= ENDED_KEPT {
                    self.ended.pop_front();
                }
                self.ended.push_back(Ended {
                    id: m.id(),
                    used: m.used(),
                    model: m.model().map(str::to_owned),
                });
            }
        }
    }

    /// What turn `id`'s model calls have used so far (while it is held here).
    pub fn used(&self, id: u64) -> Option<protocol::limits::TokenUsage> {
        match self.active.as_ref().filter(|m| m.id() == id) {
            Some(m) => m.used(),
            None => self
                .ended
                .iter()
                .rev()
                .find(|e| e.id == id)
                .and_then(|e| e.used),
        }
    }

    /// The model that served turn `id`'s latest successful generation.
    pub fn served_by(&self, id: u64) -> Option<String> {
        match self.active.as_ref().filter(|m| m.id() == id) {
            Some(m) => m.model().map(str::to_owned),
            None => self
                .ended
                .iter()
                .rev()
                .find(|e| e.id == id)
                .and_then(|e| e.model.clone()),
        }
    }

    /// Turn `id`'s deadline, while it runs here.
    pub fn deadline(&self, id: u64) -> Option<u64> {
        self.active
            .as_ref()
            .filter(|m| m.id() == id)
            .and_then(TurnMachine::deadline)
    }

    /// Whether a turn is being answered in this isolate.
    pub fn in_flight(&self) -> bool {
        self.active.as_ref().is_some_and(|m| !m.is_ended())
    }

    /// The id of the turn being answered here.
    pub fn running_turn(&self) -> Option<u64> {
        self.active
            .as_ref()
            .filter(|m| !m.is_ended())
            .map(TurnMachine::id)
    }

    /// The alarm fired at `now_ms`: the running turn's timeout, if it is due.
    pub fn on_alarm(&mut self, now_ms: u64) -> (Option<u64>, Vec<Effect>) {
        match self.active.as_mut() {
            Some(m) => (Some(m.id()), m.on_timeout(now_ms)),
            None => (None, vec![]),
        }
    }

    /// Of the turns storage records as running, those that are not running
    /// here: their isolate was reset or evicted mid-turn, so nothing will
    /// ever finish them, and they must be marked failed.
    pub fn interrupted(&self, stored_running: &[u64]) -> Vec<u64> {
        let here = self.running_turn();
        stored_running
            .iter()
            .copied()
            .filter(|id| Some(*id) != here)
            .collect()
    }

    /// When the alarm must next fire: the running turn's deadline, or the
    /// moment the session has been idle for [`ChatLimits::idle_expiry_ms`].
    /// An expiry already past at `now_ms` (the session was not erased: a
    /// socket is still open) is checked again [`EXPIRY_RECHECK_MS`] later,
    /// not at once (an alarm at once would fire again and again while the
    /// socket stays open).
    pub fn next_alarm(
        &self,
        last_activity_ms: Option<u64>,
        now_ms: u64,
        limits: &ChatLimits,
    ) -> Option<u64> {
        let expiry = last_activity_ms.map(|t| {
            let at = t.saturating_add(limits.idle_expiry_ms);
            if at <= now_ms {
                now_ms.saturating_add(EXPIRY_RECHECK_MS)
            } else {
                at
            }
        });
        let deadline = self.active.as_ref().and_then(TurnMachine::deadline);
        match (deadline, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the session has expired: idle long enough, nothing running,
    /// nobody connected.
    pub fn expired(
        &self,
        last_activity_ms: Option<u64>,
        now_ms: u64,
        sockets: usize,
        limits: &ChatLimits,
    ) -> bool {
        !self.in_flight()
            && sockets == 0
            && last_activity_ms.is_some_and(|t| now_ms >= t.saturating_add(limits.idle_expiry_ms))
    }
}

/// How many messages a session stores and when the first and the last were
/// stored: what its registry report, its idle expiry and its history cap
/// read. The store reads it once and keeps it up to date as it appends, so
/// a turn does not count the table again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Messages stored.
    pub count: u64,
    /// When the first was stored (ms), if any.
    pub first_ms: Option<u64>,
    /// When the last was stored (ms), if any.
    pub last_ms: Option<u64>,
}

impl Activity {
    /// After one more message, stored at `now_ms`.
    pub fn appended(self, now_ms: u64) -> Self {
        Self {
            count: self.count.saturating_add(1),
            first_ms: Some(self.first_ms.map_or(now_ms, |f| f.min(now_ms))),
            last_ms: Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms))),
        }
    }
}

/// Who a session belongs to: the key that started its first turn (`""` for
/// an anonymous one) and the end user named inside that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The key id, or `""` when the session was started anonymously.
    pub key: String,
    /// The end user, if the request named one.
    pub user: Option<String>,
}

impl Owner {
    /// The owner a session gets when `access` starts its first turn.
    pub fn of(access: &Access) -> Self {
        Self {
            key: access.key.clone().unwrap_or_default(),
            user: access.user.clone(),
        }
    }
}

/// What a caller wants to do with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a message (over SSE or a WebSocket).
    Turn,
    /// Read the history, resume a stream, attach a WebSocket.
    Read,
    /// Erase the history.
    Erase,
}

/// Whether `access` may do `action` with a session owned by `owner` (`None`:
/// no turn yet, nothing to see). Another key's or user's session is refused
/// as if it did not exist; a privileged caller (the operator, a tenant
/// admin) may read and erase any session, but only its owner chats in it.
pub fn may(owner: Option<&Owner>, access: &Access, action: Action) -> bool {
    let Some(owner) = owner else {
        return true;
    };
    let mine = owner == &Owner::of(access);
    mine || (access.privileged && action != Action::Turn)
}

/// How long after its alarm an idle session that could not be erased (a
/// socket is open) is checked again.
pub const EXPIRY_RECHECK_MS: u64 = 3_600_000;

/// Whether the alarm must be set for `next`, given the one pending as this
/// isolate knows it (`pending`: the one it set last, or the one it found
/// stored, if it has not fired yet). An earlier pending alarm is
/// enough: when it fires it finds nothing due and sets the next one, so a
/// busy session writes its alarm about once per turn timeout, not per turn.
pub fn must_set_alarm(pending: Option<u64>, next: u64, now_ms: u64) -> bool {
    match pending {
        Some(at) => at > next || at < now_ms,
        None => true,
    }
}

/// Which turns' alarm writes are still to come: a turn's arming writes the
/// session's alarm a second after the turn began, out of the turn's burst
/// (the shell's `Inner::drive` says why). Plain data: the shell waits, this
/// decides.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Arming {
    /// Turns begun less than the arming delay ago, oldest first.
    waiting: Vec<u64>,
}

impl Arming {
    /// Turn `turn` began; its arming comes later.
    pub fn began(&mut self, turn: u64) {
        self.waiting.push(turn);
    }

    /// Turn `turn`'s arming is due: whether it writes the alarm. It leaves
    /// the write to a later turn's arming only while an alarm is pending
    /// (`alarm_pending`): a run of quick turns must not keep a session
    /// without one.
    pub fn due(&mut self, turn: u64, alarm_pending: bool) -> bool {
        self.waiting.retain(|t| *t != turn);
        self.waiting.is_empty() || !alarm_pending
    }

    /// A turn ended: whether it writes the alarm itself (no arming is to
    /// come, so nothing else would).
    pub fn writes_at_end(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// What the session knows about its events, for a resuming client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLog {
    /// The latest turn: its id, its first event id, and whether it still runs here.
    pub latest_turn: Option<(u64, u64, bool)>,
    /// The last event id stored.
    pub last_event_id: u64,
    /// The last event id handed out (stored, or sent and lost with an
    /// isolate); never below `last_event_id`.
    pub issued: u64,
    /// The oldest event id still kept (older turns' events are pruned).
    pub oldest_kept: Option<u64>,
}

/// What a resuming client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePlan {
    /// Send every stored event with an id above `after`, then, if `follow`,
    /// the running turn's events as they happen.
    Replay {
        /// Exclusive lower bound.
        after: u64,
        /// Whether the latest turn is still running here.
        follow: bool,
    },
    /// The client has every event and nothing runs: nothing to send.
    UpToDate,
    /// The session has had no turn.
    NoTurn,
    /// `after` names no event of this session.
    Unknown,
    /// The events after `after` are no longer kept (read the history instead).
    Expired,
}

/// Decides what a client that has the events up to `after` (or none, to
/// replay the latest turn) is sent.
pub fn resume_plan(after: Option<u64>, log: &EventLog) -> ResumePlan {
    let Some((_, first, running)) = log.latest_turn else {
        return ResumePlan::NoTurn;
    };
    let after = match after {
        None => first.saturating_sub(1),
        Some(a) if a > log.issued.max(log.last_event_id) => return ResumePlan::Unknown,
        Some(a) => a,
    };
    if after >= log.last_event_id && !running {
        return ResumePlan::UpToDate;
    }
    if log
        .oldest_kept
        .is_some_and(|oldest| after.saturating_add(1) < oldest)
    {
        return ResumePlan::Expired;
    }
    ResumePlan::Replay {
        after,
        follow: running,
    }
}

impl ResumePlan {
    /// The client's error for a plan that sends nothing and is not
    /// [`ResumePlan::UpToDate`]; `None` for the others.
    pub fn refusal(&self, log: &EventLog) -> Option<ErrorReply> {
        match self {
            ResumePlan::Replay { .. } | ResumePlan::UpToDate => None,
            ResumePlan::NoTurn => Some(ErrorReply::new(
                ErrorCode::NotFound,
                "this session has no turn to resume",
            )),
            ResumePlan::Unknown => Some(ErrorReply::new(
                ErrorCode::InvalidRequest,
                format!(
                    "this session has no event after which to resume ({} is its last)",
                    log.last_event_id
                ),
            )),
            ResumePlan::Expired => Some(ErrorReply::new(
                ErrorCode::NotFound,
                "the events after that id are no longer kept; read the history instead",
            )),
        }
    }
}

fn size(m: &ChatMessage) -> usize {
    m.content.len()
        + m.tool_calls
            .iter()
            .map(|c| c.arguments.to_string().len() + c.name.len())
            .sum::<usize>()
}

/// The newest messages of a history that [`context`] keeps within `budget`
/// characters, read from `newest_first` (the history, newest first) no
/// further than needed: the first message that does not fit ends the
/// reading. Oldest first; `context` over them is `context` over the whole
/// history, so a long session's context costs what fits, not what is
/// stored.
pub fn within_budget<E>(
    newest_first: impl Iterator<Item = Result<ChatMessage, E>>,
    budget: usize,
) -> Result<Vec<ChatMessage>, E> {
    let mut used = 0;
    let mut kept = Vec::new();
    for m in newest_first {
        let m = m?;
        let s = size(&m);
        if !kept.is_empty() && used + s > budget {
            break;
        }
        used += s;
        kept.push(m);
    }
    kept.reverse();
    Ok(kept)
}

/// The messages sent to the model: the system prompt, then the most recent
/// history that fits `budget` characters. The newest message is always kept,
/// and the context never starts with a tool result whose call was cut off.
pub fn context(system: &str, history: &[ChatMessage], budget: usize) -> Vec<ChatMessage> {
    let mut used = 0;
    let mut start = history.len();
    for (i, m) in history.iter().enumerate().rev() {
        if start < history.len() && used + size(m) > budget {
            break;
        }
        used += size(m);
        start = i;
    }
    while history.get(start).is_some_and(|m| m.role == Role::Tool) && start + 1 < history.len() {
        start += 1;
    }
    let mut out = vec![ChatMessage {
        role: Role::System,
        content: system.to_owned(),
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
    }];
    out.extend(history.iter().skip(start).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ToolCall;
    use serde_json::json;

    #[test]
    fn activity_counts_appends_and_keeps_the_first_and_last_times() {
        let empty = Activity::default();
        let one = empty.appended(500);
        assert_eq!(
            one,
            Activity {
                count: 1,
                first_ms: Some(500),
                last_ms: Some(500)
            }
        );
        let three = one.appended(900).appended(700);
        assert_eq!(three.count, 3);
        // What `MIN` and `MAX` of the stored times would say, whatever the
        // order the appends came in.
        assert_eq!((three.first_ms, three.last_ms), (Some(500), Some(900)));
        assert_eq!(one.appended(100).first_ms, Some(100));
    }

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        }
    }

    fn call() -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "vector_search".into(),
            arguments: json!({}),
        }
    }

    #[test]
    fn reading_only_what_fits_gives_the_same_context() {
        let call_msg = || ChatMessage {
            tool_calls: vec![call()],
            ..msg(Role::Assistant, "")
        };
        // Histories of every shape: user, a call, its (long) result, an
        // answer; budgets from below one message to above them all.
        let mut history = Vec::new();
        for i in 0..40 {
            history.push(msg(Role::User, &"q".repeat(10 + i * 7)));
            history.push(call_msg());
            history.push(msg(Role::Tool, &"r".repeat(50 + (i * 37) % 300)));
            history.push(msg(Role::Assistant, &"a".repeat(20 + i)));
        }
        for len in [0, 1, 2, 3, 5, 17, 80, 160] {
            let h = &history[..len];
            for budget in [0, 5, 60, 100, 333, 1000, 5000, 100_000] {
                let read = within_budget(h.iter().rev().cloned().map(Ok::<_, ()>), budget);
                let read = read.unwrap();
                assert_eq!(
                    context("s", &read, budget),
                    context("s", h, budget),
                    "{len} messages, budget {budget}"
                );
                assert!(read.len() <= len);
                let total: usize = h.iter().map(size).sum();
                if len > 1 && total > budget {
                    assert!(read.len() < len, "read no further than fits");
                }
            }
        }
        // A failed read is the reading's failure.
        let failing = vec![Ok(msg(Role::User, "x")), Err("storage")];
        assert_eq!(within_budget(failing.into_iter(), 1000), Err("storage"));
    }

    #[test]
    fn one_turn_at_a_time_and_a_bounded_history() {
        let limits = ChatLimits::default();
        let mut core = SessionCore::default();
        assert_eq!(core.can_begin(0, &limits), Ok(()));
        assert_eq!(core.start(1, 0, &limits), vec![Effect::Generate]);
        assert!(core.in_flight());
        assert_eq!(core.can_begin(0, &limits), Err(Refusal::Busy));
        // The turn ends; only then is it forgotten.
        core.finish(1);
        assert!(core.in_flight(), "not ended yet");
        let fx = core.feed(1, |m| m.on_generated(Ok(())));
        assert!(matches!(fx[..], [Effect::Complete { .. }]));
        assert!(
            core.feed(2, |m| m.on_generated(Ok(()))).is_empty(),
            "stale id"
        );
        core.finish(1);
        assert!(!core.in_flight());
        assert_eq!(core.can_begin(limits.max_messages - 1, &limits), Ok(()));
        assert_eq!(
            core.can_begin(limits.max_messages, &limits),
            Err(Refusal::Full)
        );
    }

    #[test]
    fn limits_from_vars() {
        assert_eq!(ChatLimits::from_vars(|_| None), Ok(ChatLimits::default()));
        let l = ChatLimits::from_vars(|n| match n {
            "CHAT_TURN_TIMEOUT_SECS" => Some("30".into()),
            "CHAT_MAX_MESSAGES" => Some(" 100 ".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((l.turn_timeout_ms, l.max_messages), (30_000, 100));
        for bad in ["0", "-1", "x", "99999999"] {
            let e = ChatLimits::from_vars(|n| (n == "CHAT_TURN_TIMEOUT_SECS").then(|| bad.into()))
                .unwrap_err();
            assert_eq!(e.name, "CHAT_TURN_TIMEOUT_SECS");
        }
    }

    #[test]
    fn generation_timeouts_from_vars() {
        let d = ChatLimits::default().route_policy();
        assert_eq!(
            (d.first_output_ms, d.generation_timeout_ms),
            (20_000, 60_000)
        );
        let l = ChatLimits::from_vars(|n| match n {
            "CHAT_FIRST_OUTPUT_TIMEOUT_SECS" => Some("5".into()),
            "CHAT_GENERATION_TIMEOUT_SECS" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        let p = l.route_policy();
        assert_eq!(
            (p.first_output_ms, p.generation_timeout_ms),
            (2_000, 2_000),
            "the first output cannot wait longer than the whole generation"
        );
        for (name, bad) in [
            ("CHAT_GENERATION_TIMEOUT_SECS", "0"),
            ("CHAT_FIRST_OUTPUT_TIMEOUT_SECS", "601"),
        ] {
            let e = ChatLimits::from_vars(|n| (n == name).then(|| bad.into())).unwrap_err();
            assert_eq!(e.name, name);
        }
    }

    #[test]
    fn turns_left_running_by_another_isolate_are_interrupted() {
        let limits = ChatLimits::default();
        let mut core = SessionCore::default();
        // A fresh isolate: every turn storage calls running was interrupted.
        assert_eq!(core.interrupted(&[3, 4]), vec![3, 4]);
        core.start(5, 0, &limits);
        assert_eq!(core.interrupted(&[4, 5]), vec![4], "5 runs here");
    }

    #[test]
    fn the_alarm_times_out_the_turn_and_expires_an_idle_session() {
        let limits = ChatLimits::default();
        let mut core = SessionCore::default();
        assert_eq!(core.next_alarm(None, 10, &limits), None, "nothing stored");
        assert_eq!(
            core.next_alarm(Some(10), 10, &limits),
            Some(10 + limits.idle_expiry_ms)
        );
        // Past its expiry and still here (a socket is open): an hour later,
        // not at once, again and again.
        let past = 10 + limits.idle_expiry_ms;
        assert_eq!(
            core.next_alarm(Some(10), past, &limits),
            Some(past + EXPIRY_RECHECK_MS)
        );
        core.start(1, 100, &limits);
        let deadline = 100 + limits.turn_timeout_ms;
        assert_eq!(core.next_alarm(Some(100), 100, &limits), Some(deadline));
        assert_eq!(core.on_alarm(deadline - 1), (Some(1), vec![]));
        assert!(!core.expired(Some(0), u64::MAX, 0, &limits), "a turn runs");
        let (id, fx) = core.on_alarm(deadline);
        assert_eq!(id, Some(1));
        assert!(matches!(&fx[..], [Effect::Fail { code, .. }] if code == "turn_timeout"));
        core.finish(1);
        let idle = 100 + limits.idle_expiry_ms;
        assert!(!core.expired(Some(100), idle - 1, 0, &limits));
        assert!(
            !core.expired(Some(100), idle, 1, &limits),
            "a socket is open"
        );
        assert!(core.expired(Some(100), idle, 0, &limits));
    }

    #[test]
    fn sessions_belong_to_the_key_and_user_that_started_them() {
        let access = |key: Option<&str>, user: Option<&str>, privileged| Access {
            key: key.map(str::to_owned),
            user: user.map(str::to_owned),
            privileged,
            proof: None,
        };
        let alice = access(Some("k1"), Some("alice"), false);
        let owner = Owner::of(&alice);
        for action in [Action::Turn, Action::Read, Action::Erase] {
            assert!(
                may(None, &access(Some("k2"), None, false), action),
                "no owner yet"
            );
            assert!(may(Some(&owner), &alice, action));
            // Another user of the same key, another key, the key without a
            // user, an anonymous caller: as if the session did not exist.
            for other in [
                access(Some("k1"), Some("bob"), false),
                access(Some("k2"), Some("alice"), false),
                access(Some("k1"), None, false),
                access(None, Some("alice"), false),
            ] {
                assert!(!may(Some(&owner), &other, action), "{other:?} {action:?}");
            }
        }
        // A tenant admin reads and erases any session, but does not chat in it.
        let admin = access(Some("k9"), None, true);
        assert!(may(Some(&owner), &admin, Action::Read));
        assert!(may(Some(&owner), &admin, Action::Erase));
        assert!(!may(Some(&owner), &admin, Action::Turn));
        // An anonymous session is anonymous callers' only.
        let anonymous = Owner::of(&access(None, None, false));
        assert!(may(
            Some(&anonymous),
            &access(None, None, false),
            Action::Read
        ));
        assert!(!may(
            Some(&anonymous),
            &access(Some("k1"), None, false),
            Action::Read
        ));
    }

    #[test]
    fn the_alarm_is_written_only_when_an_earlier_one_is_not_pending() {
        assert!(must_set_alarm(None, 100, 0), "nothing pending");
        assert!(
            !must_set_alarm(Some(50), 100, 0),
            "an earlier one will fire"
        );
        assert!(!must_set_alarm(Some(100), 100, 0));
        assert!(
            must_set_alarm(Some(200), 100, 0),
            "the pending one is too late"
        );
        assert!(
            must_set_alarm(Some(50), 100, 60),
            "the pending one has passed"
        );
    }

    #[test]
    fn the_last_arming_writes_the_alarm_unless_none_is_pending() {
        // One quick turn: it ends before its arming, which writes the alarm.
        let mut arming = Arming::default();
        arming.began(1);
        assert!(!arming.writes_at_end(), "its arming is still to come");
        assert!(arming.due(1, false));
        // A turn that outlives its arming writes at its end too.
        arming.began(2);
        assert!(arming.due(2, true));
        assert!(arming.writes_at_end());
        // Two turns a moment apart, an alarm pending: the first's arming
        // leaves it to the second's.
        arming.began(3);
        arming.began(4);
        assert!(!arming.due(3, true));
        assert!(!arming.writes_at_end());
        assert!(arming.due(4, true));
        // No alarm pending (a new session): every arming writes.
        arming.began(5);
        arming.began(6);
        assert!(arming.due(5, false));
        assert!(arming.due(6, false));
        // An arming for a turn it never saw begin changes nothing else.
        arming.began(7);
        assert!(!arming.due(99, true));
        assert!(arming.due(7, true));
    }

    #[test]
    fn what_a_resuming_client_gets() {
        let log = |running| EventLog {
            latest_turn: Some((3, 10, running)),
            last_event_id: 14,
            issued: 14,
            oldest_kept: Some(5),
        };
        assert_eq!(
            resume_plan(None, &log(false)),
            ResumePlan::Replay {
                after: 9,
                follow: false
            }
        );
        assert_eq!(
            resume_plan(Some(11), &log(true)),
            ResumePlan::Replay {
                after: 11,
                follow: true
            }
        );
        assert_eq!(resume_plan(Some(14), &log(false)), ResumePlan::UpToDate);
        assert_eq!(
            resume_plan(Some(14), &log(true)),
            ResumePlan::Replay {
                after: 14,
                follow: true
            }
        );
        assert_eq!(resume_plan(Some(15), &log(false)), ResumePlan::Unknown);
        assert_eq!(
            resume_plan(Some(4), &log(false)),
            ResumePlan::Replay {
                after: 4,
                follow: false
            }
        );
        assert_eq!(resume_plan(Some(3), &log(false)), ResumePlan::Expired);
        let empty = EventLog {
            latest_turn: None,
            last_event_id: 0,
            issued: 0,
            oldest_kept: None,
        };
        assert_eq!(resume_plan(None, &empty), ResumePlan::NoTurn);
        // Pieces sent but lost with an isolate: their ids were handed out, so
        // a client that has them is up to date, not asking for nonsense.
        let lost = EventLog {
            issued: 20,
            ..log(false)
        };
        assert_eq!(resume_plan(Some(18), &lost), ResumePlan::UpToDate);
        assert_eq!(resume_plan(Some(21), &lost), ResumePlan::Unknown);
    }

    #[test]
    fn history_is_trimmed_to_the_budget() {
        let history: Vec<ChatMessage> = (0..10)
            .map(|i| {
                msg(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    &format!("{i:0>10}"),
                )
            })
            .collect();
        let ctx = context("sys", &history, 35);
        assert_eq!(ctx[0].role, Role::System);
        let kept: Vec<&str> = ctx.iter().skip(1).map(|m| m.content.as_str()).collect();
        assert_eq!(kept, vec!["0000000007", "0000000008", "0000000009"]);
        // Everything fits a big budget.
        assert_eq!(context("sys", &history, 10_000).len(), 11);
        // The newest message is kept even when it alone is over the budget.
        let big = vec![msg(Role::User, &"x".repeat(100))];
        assert_eq!(context("sys", &big, 10).len(), 2);
    }

    #[test]
    fn context_never_starts_with_an_orphaned_tool_result() {
        let history = vec![
            msg(Role::User, "q1"),
            ChatMessage {
                tool_calls: vec![call()],
                ..msg(Role::Assistant, "")
            },
            msg(Role::Tool, &"r".repeat(50)),
            msg(Role::Assistant, "answer"),
            msg(Role::User, "q2"),
        ];
        let ctx = context("sys", &history, 60);
        assert!(ctx.iter().skip(1).all(|m| m.role != Role::Tool), "{ctx:?}");
        assert_eq!(ctx.last().map(|m| m.content.as_str()), Some("q2"));
    }

    #[test]
    fn refusals_name_their_status() {
        let limits = ChatLimits::default();
        let busy = Refusal::Busy.to_error(3, &limits);
        assert_eq!((busy.code, busy.reason.as_deref()), (ErrorCode::Busy, None));
        let full = Refusal::Full.to_error(limits.max_messages, &limits);
        assert_eq!(full.code, ErrorCode::QuotaExceeded);
        assert_eq!(full.reason.as_deref(), Some("session_full"));
        assert!(full.message.contains(&limits.max_messages.to_string()));
        let log = EventLog {
            latest_turn: Some((1, 1, false)),
            last_event_id: 9,
            issued: 9,
            oldest_kept: Some(1),
        };
        assert_eq!(ResumePlan::UpToDate.refusal(&log), None);
        assert_eq!(
            ResumePlan::Replay {
                after: 2,
                follow: false
            }
            .refusal(&log),
            None
        );
        assert_eq!(
            ResumePlan::NoTurn.refusal(&log).map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        let unknown = ResumePlan::Unknown.refusal(&log).unwrap();
        assert_eq!(unknown.code, ErrorCode::InvalidRequest);
        assert!(unknown.message.contains("9 is its last"));
        assert_eq!(
            ResumePlan::Expired.refusal(&log).map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
    }

    #[test]
    fn a_turn_ended_by_the_alarm_keeps_its_usage_for_the_settle() {
        let limits = ChatLimits::default();
        let mut core = SessionCore::default();
        core.start(1, 0, &limits);
        core.feed(1, |m| {
            m.on_usage(protocol::chat::Usage {
                prompt_tokens: 30,
                completion_tokens: 5,
            });
            m.on_generated(Ok(()))
        });
        assert_eq!(core.used(1).map(|u| u.total()), Some(35));
        core.finish(1);
        assert!(!core.in_flight());
        assert_eq!(
            core.used(1).map(|u| u.total()),
            Some(35),
            "still known once the turn is finished"
        );
        assert_eq!(core.used(2), None);
        // Only the last few finished turns are remembered.
        for id in 2..=(2 + ENDED_KEPT as u64) {
            core.start(id, 0, &limits);
            core.feed(id, |m| m.on_generated(Ok(())));
            core.finish(id);
        }
        assert_eq!(core.used(1), None);
    }
}
