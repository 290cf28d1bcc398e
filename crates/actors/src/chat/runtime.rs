//! The `ChatSession` object's runtime: what it holds in memory (its store,
//! cores, listeners, event ids, key checks) and the I/O the cores ask for:
//! storing and sending events, driving a turn through the model and the
//! tools, setting the alarm, binding the object to its tenant and session.
//! Every decision is made by the pure modules ([`super::core`],
//! [`super::turn`], [`super::events`], [`super::socket`]); the entry points
//! (requests, sockets, the alarm) are in [`super::object`].

use super::core::{
    context, may, must_set_alarm, resume_plan, Action, Arming, ChatLimits, EventLog, Owner,
    ResumePlan, SessionCore, CONTEXT_BUDGET_CHARS, SYSTEM_PROMPT,
};
use super::events::{is_terminal, EventIds};
use super::socket::{
    replay_to_socket, socket_text, KeyChecks, Rejected, SocketInfo, KEY_CHECKS_HELD,
};
use super::store::{SessionStore, Wake};
use super::tools::{self, ToolRun};
use super::turn::Effect;
use crate::cloudflare::ai_binding::{GatewayMetadata, Route};
pub(super) use crate::error::internal;
use crate::generation::routing::{chat_chain, generate_routed};
use crate::generation::{AnyGenerator, ChainConfig};
use crate::limiter::admission::{turn_hold_ms, Applied, Work};
use crate::limiter::recorder::{UsageBuffer, Used, FLUSH_AFTER_MS};
use crate::limiter::{Admission, LimiterHandle};
use crate::ports::{
    ChatMessage, Clock, GenerateRequest, GenerationEvent, Kv, Role, RuntimeSleep, SystemClock,
    ToolCall,
};
use crate::providers;
use crate::replica::SearchHandle;
use futures::channel::mpsc;
use protocol::chat::TurnUsage;
use protocol::chat::{
    encode_frame_or_stand_in, Access, ChatEvent, ChatResponse, ChatSnapshot, Cleared, Turn,
    TurnFrame, TurnReservation, UpToDate, Usage, DEFAULT_MAX_TOKENS,
};
use protocol::coordinator::TenantSettings;
use protocol::limits::{PriceTable, TokenUsage};
use protocol::listing::{SessionChange, SessionEntry, SessionReport};
use protocol::usage::{caller_of, MAX_SESSION_REPORTS};
use protocol::{ErrorCode, ErrorReply, RequestId, SessionId, TenantId};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use worker::{Env, ScheduledTime, State, WebSocket};

/// A stream that wants a turn's events.
pub(super) struct Listener {
    pub(super) turn: u64,
    pub(super) tx: mpsc::UnboundedSender<std::result::Result<Vec<u8>, worker::Error>>,
}

/// What a turn's driver needs besides the session.
pub(super) struct TurnContext {
    pub(super) id: u64,
    pub(super) tenant: TenantId,
    pub(super) request_id: RequestId,
    pub(super) turn: Turn,
    /// The tenant's settings as the turn read them before it began
    /// ([`Inner::tenant_settings`]); `None` if they could not be read.
    pub(super) settings: Option<TenantSettings>,
}

/// The session as this isolate holds it, and the I/O it performs.
pub(super) struct Inner {
    pub(super) state: State,
    pub(super) env: Env,
    pub(super) store: SessionStore,
    pub(super) core: RefCell<SessionCore>,
    /// The tenant's prices while a turn runs, with the turn's id.
    pub(super) turn_prices: RefCell<Option<(u64, PriceTable)>>,
    /// The tenant and session this object is bound to, once checked.
    pub(super) bound: RefCell<Option<(TenantId, SessionId)>>,
    /// Streams following a running turn.
    pub(super) listeners: RefCell<Vec<Listener>>,
    /// The alarm pending as this isolate knows it (the one it set last, or
    /// the one it found stored: [`Inner::ensure_alarm`]), until it fires.
    pub(super) alarm_at: Cell<Option<u64>>,
    /// Event ids and the events not stored yet.
    pub(super) events: RefCell<EventIds>,
    /// Turns begun less than [`ARM_WITHIN_MS`] ago, whose alarm is not
    /// written yet ([`Inner::drive`]).
    pub(super) arming: RefCell<Arming>,
}

/// Ended turns' bookkeeping not sent yet, per tenant, gathered from every
/// session of an isolate: their usage, summed per caller and model, and each
/// session's latest registry report (a later turn's view replaces an
/// earlier one's). A batch goes in one ledger call, a second after it
/// began, and carries at most [`MAX_SESSION_REPORTS`] sessions' reports: a
/// busy session's turns of a second share one call, and so do sixteen
/// sessions that each asked one question; the seventeenth begins the next
/// batch. A full batch waits for its second like the others, so the
/// bookkeeping of a burst of new sessions waits out the burst.
#[derive(Debug, Default)]
pub(super) struct TurnBooks {
    /// Each tenant's batches, oldest first; turns join the last one.
    pending: HashMap<TenantId, Vec<Books>>,
}

/// One tenant's batch: what one ledger call sends.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Books {
    usage: UsageBuffer,
    reports: Vec<SessionReport>,
    /// When the batch began (ms).
    began_ms: u64,
}

impl Books {
    /// Whether a turn with `report` may join: the batch has room for one
    /// more session's report, or holds this session's already.
    fn takes(&self, report: Option<&SessionReport>) -> bool {
        report.is_none_or(|report| {
            self.reports.len() < MAX_SESSION_REPORTS
                || self
                    .reports
                    .iter()
                    .any(|r| r.change.session_id() == report.change.session_id())
        })
    }

    /// The usage records and the reports.
    pub(super) fn into_parts(mut self) -> (Vec<Used>, Vec<SessionReport>) {
        (self.usage.take(), self.reports)
    }
}

/// What the caller does after [`TurnBooks::add`].
#[derive(Debug, PartialEq)]
pub(super) enum Booked {
    /// A batch began at this turn's end: send it (and any older batch
    /// still here) in [`FLUSH_AFTER_MS`] ([`TurnBooks::take_through`]).
    FlushLater,
    /// The tenant's oldest batch was never sent (the session that began it
    /// was reset or evicted): send these, every batch of the tenant with
    /// this turn in the last, now.
    FlushNow(Vec<Books>),
    /// Gathered into a batch whose send is already arranged.
    Gathered,
}

/// A batch whose send was arranged this long ago and that is still here was
/// not taken (the session that began it was reset or evicted before its
/// send, and no later batch's send took it): the next turn to end sends it
/// at once, with every later batch, itself in the last.
pub(super) const STALE_BATCH_MS: u64 = 3 * FLUSH_AFTER_MS;

/// How long after a turn began its session's alarm is written
/// ([`Inner::drive`]).
const ARM_WITHIN_MS: u64 = 1_000;

impl TurnBooks {
    /// Adds a turn of `tenant` that ended at `now_ms`: its usage (none when
    /// it used no model) and its session's report (none when there is
    /// nothing to report).
    pub(super) fn add(
        &mut self,
        tenant: &TenantId,
        used: Option<Used>,
        report: Option<SessionReport>,
        now_ms: u64,
    ) -> Booked {
        let batches = self.pending.entry(tenant.clone()).or_default();
        let stale = batches
            .first()
            .is_some_and(|b| now_ms.saturating_sub(b.began_ms) >= STALE_BATCH_MS);
        let began = !batches.last().is_some_and(|b| b.takes(report.as_ref()));
        if began {
            batches.push(Books {
                began_ms: now_ms,
                ..Books::default()
            });
        }
        // Never empty here: a batch was pushed above if there was none.
        let Some(books) = batches.last_mut() else {
            return Booked::Gathered;
        };
        if let Some(used) = used {
            books.usage.add(used);
        }
        if let Some(report) = report {
            let session = report.change.session_id().to_owned();
            match books
                .reports
                .iter_mut()
                .find(|r| r.change.session_id() == session)
            {
                // Turns may end out of order (one cut by its deadline):
                // the registry keeps the highest version, and so does this.
                Some(earlier) if report.version >= earlier.version => *earlier = report,
                Some(_) => {}
                None => books.reports.push(report),
            }
        }
        if stale {
            // The sends arranged for these batches find none: nothing is
            // sent twice.
            Booked::FlushNow(self.pending.remove(tenant).unwrap_or_default())
        } else if began {
            Booked::FlushLater
        } else {
            Booked::Gathered
        }
    }

    /// `tenant`'s batches that began at or before `began_ms` (the send
    /// arranged by the batch that began then takes it and any older one
    /// still here, one begun in the same millisecond too), leaving the
    /// later ones to their own sends.
    pub(super) fn take_through(&mut self, tenant: &TenantId, began_ms: u64) -> Vec<Books> {
        let Some(batches) = self.pending.get_mut(tenant) else {
            return Vec::new();
        };
        let due = batches
            .iter()
            .take_while(|b| b.began_ms <= began_ms)
            .count();
        let taken: Vec<Books> = batches.drain(..due).collect();
        if batches.is_empty() {
            self.pending.remove(tenant);
        }
        taken
    }
}

thread_local! {
    /// When each socket key was last verified, for the 1 s bound: shared by
    /// every session in this isolate, so a key is asked about at most once a
    /// second per isolate, not once per session.
    static KEY_CHECKS: RefCell<KeyChecks> = RefCell::new(KeyChecks::new(KEY_CHECKS_HELD));

    /// Ended turns not sent yet, gathered from every session of this
    /// isolate ([`Inner::defer_bookkeeping`]).
    static ENDED: RefCell<TurnBooks> = RefCell::new(TurnBooks::default());
}

/// Records that a socket key verified at `at` (the gateway's verification
/// when the socket connected, or a check of the session's own).
pub(super) fn key_verified(name: &str, at: u64, now: u64) {
    KEY_CHECKS.with(|c| c.borrow_mut().verified(name, at, now));
}

pub(super) fn send_json(ws: &WebSocket, value: &Value) {
    let _ = ws.send_with_str(value.to_string());
}

/// Sends a refused frame's `error` event.
pub(super) fn send_rejection(ws: &WebSocket, rejected: &Rejected) {
    if let Ok(v) = serde_json::to_value(ChatEvent::error(&rejected.code, &rejected.message)) {
        send_json(ws, &v);
    }
}

/// What a resuming client gets.
pub(super) enum ResumeAnswer {
    /// These stored events; then, if `follow`, that running turn's live ones.
    Frames {
        frames: Vec<TurnFrame>,
        follow: Option<u64>,
    },
    /// Nothing: the client has every event and nothing runs.
    UpToDate(UpToDate),
}

pub(super) type FrameSender = mpsc::UnboundedSender<std::result::Result<Vec<u8>, worker::Error>>;
pub(super) type FrameReceiver =
    mpsc::UnboundedReceiver<std::result::Result<Vec<u8>, worker::Error>>;

impl Inner {
    pub(super) fn now(&self) -> u64 {
        SystemClock.now_ms()
    }

    pub(super) fn limits(&self) -> std::result::Result<ChatLimits, ErrorReply> {
        ChatLimits::from_vars(|name| self.env.var(name).ok().map(|v| v.to_string()))
            .map_err(|e| internal(format!("misconfigured: {e}")))
    }

    pub(super) fn settings(&self) -> std::result::Result<providers::Settings, ErrorReply> {
        providers::settings(|name| self.env.var(name).ok().map(|v| v.to_string())).map_err(internal)
    }

    /// Creates the tables and binds the object to its tenant and session on
    /// first use; refuses any other tenant or session afterwards. The first
    /// time in an isolate, fails the turns an earlier isolate left running.
    pub(super) fn bind(
        self: &Rc<Self>,
        tenant: &TenantId,
        session: &SessionId,
    ) -> std::result::Result<(), ErrorReply> {
        if let Some((t, s)) = self.bound.borrow().as_ref() {
            if t != tenant || s != session {
                return Err(wrong_session());
            }
            return Ok(());
        }
        self.store.create_tables()?;
        let wake = self.store.wake()?;
        match &wake.binding {
            Some((t, s)) if t != tenant || s != session => return Err(wrong_session()),
            Some(_) => {}
            None => self.store.bind(tenant, session)?,
        }
        self.woken((tenant.clone(), session.clone()), &wake);
        Ok(())
    }

    /// The tenant and session the object is bound to, binding it from
    /// storage the first time in an isolate (the alarm's way in: it has no
    /// request to name them); `None` when nothing was ever stored.
    pub(super) fn bind_stored(
        self: &Rc<Self>,
    ) -> std::result::Result<Option<(TenantId, SessionId)>, ErrorReply> {
        if let Some(bound) = self.bound.borrow().clone() {
            return Ok(Some(bound));
        }
        self.store.create_tables()?;
        let wake = self.store.wake()?;
        let Some(binding) = wake.binding.clone() else {
            return Ok(None);
        };
        self.woken(binding.clone(), &wake);
        Ok(Some(binding))
    }

    /// Holds `binding` from now on and takes up what storage says after a
    /// wake: the event ids handed out, the turns an earlier isolate left
    /// running, and, for a session with messages, its alarm a second later
    /// ([`Self::ensure_alarm`]).
    fn woken(self: &Rc<Self>, binding: (TenantId, SessionId), wake: &Wake) {
        *self.bound.borrow_mut() = Some(binding);
        *self.events.borrow_mut() = EventIds::restore(wake.issued_event_id);
        self.recover(&wake.running_turns);
        if self.store.last_activity().is_some() {
            let this = Rc::clone(self);
            self.state.wait_until(async move {
                worker::Delay::from(std::time::Duration::from_millis(ARM_WITHIN_MS)).await;
                this.ensure_alarm().await;
            });
        }
    }

    /// Writes the session's alarm if none is stored. A turn's arming writes
    /// it a second after the turn began ([`Self::drive`]), so an isolate
    /// lost in that second leaves a session with messages and no alarm: no
    /// idle expiry, and no deadline for a turn it lost. Checked once when an
    /// isolate binds a session with messages, out of that request's way: a
    /// read of the stored alarm, and a write only when there is none.
    async fn ensure_alarm(&self) {
        if self.alarm_at.get().is_some() {
            return;
        }
        match self.state.storage().get_alarm().await {
            Ok(Some(at)) => {
                // Unless a turn's arming set one meanwhile.
                if self.alarm_at.get().is_none() {
                    self.alarm_at.set(u64::try_from(at).ok());
                }
            }
            Ok(None) => self.rearm().await,
            Err(e) => worker::console_error!("chat: the alarm could not be read: {e}"),
        }
    }

    /// Whether the key a socket connected with still verifies (not revoked,
    /// not expired, not rotated away). Sockets without a key (the operator,
    /// an anonymous caller) have nothing to re-check.
    pub(super) async fn key_still_valid(&self, info: &SocketInfo) -> bool {
        let (Some(id), Some(proof)) = (&info.access.key, &info.access.proof) else {
            return true;
        };
        // Checked at most once a second per key, the gateway's bound too: a
        // revocation reaches an open socket within 1 s.
        let now = self.now();
        let name = KeyChecks::name(&info.tenant, id, proof);
        if !KEY_CHECKS.with(|c| c.borrow().due(&name, now)) {
            return true;
        }
        let verify = protocol::keys::VerifyKey {
            id: id.clone(),
            secret_sha256: proof.clone(),
        };
        let request_id = RequestId::from_random(crate::entropy::random_bytes());
        let record = match crate::CoordinatorHandle::new(&self.env, &info.tenant) {
            Ok(c) => match c.verify_key(&request_id, verify).await {
                Ok(protocol::keys::Verification::Valid(record)) => Some(record),
                _ => None,
            },
            Err(_) => None,
        };
        let valid = record.is_some();
        if let Some(record) = record {
            key_verified(&name, now, now);
            let terms = (
                protocol::limits::Limits::from(&record.limits),
                record.budget,
            );
            KEY_CHECKS.with(|c| c.borrow_mut().found(&name, terms));
        } else {
            KEY_CHECKS.with(|c| c.borrow_mut().failed(&name));
        }
        valid
    }

    /// The limits a socket's next turn is admitted with: those its upgrade
    /// was admitted with until its key is checked again (at most a second
    /// later), then the key's as that check found them over the tenant's
    /// current defaults and budget (`settings`, as the turn read them:
    /// [`Self::tenant_settings`]), so a change of either reaches an open
    /// socket within about a second (the tenant's as they reach any turn:
    /// read less than 11 s before it). An anonymous socket follows the
    /// tenant's. If the settings could not be read (`None`), the
    /// upgrade's limits stay.
    pub(super) fn socket_limits(
        &self,
        info: &SocketInfo,
        settings: Option<&TenantSettings>,
    ) -> Option<Applied> {
        let own = match (&info.access.key, &info.access.proof) {
            (Some(id), Some(proof)) => {
                let name = KeyChecks::name(&info.tenant, id, proof);
                match KEY_CHECKS.with(|c| c.borrow().terms(&name)) {
                    Some(terms) => Some(terms),
                    // Not checked since the upgrade: its limits are fresh.
                    None => return info.limits.clone(),
                }
            }
            // A key without its proof is never re-checked: its upgrade's.
            (Some(_), None) => return info.limits.clone(),
            (None, _) => None,
        };
        let limiter = match (&info.limits, &info.access.key) {
            (Some(applied), _) => applied.limiter.clone(),
            (None, Some(id)) => format!("{}:{id}", crate::limiter::RESOURCE),
            // An anonymous socket the tenant set no limit for when it
            // connected: its limiter is named by the client's address,
            // which only the gateway knows.
            (None, None) => return None,
        };
        let Some(settings) = settings else {
            return info.limits.clone();
        };
        let (limits, budget) = own.unwrap_or_default();
        crate::limiter::admission::applied_now(
            limiter,
            &limits,
            budget,
            settings.limits,
            settings.budget,
        )
    }

    /// Refuses `access` doing `action` unless the session's owner allows it,
    /// as if the session did not exist (404): another key's or user's
    /// session, or one that has had no turn, is nothing to that caller.
    pub(super) fn allow(
        &self,
        access: &Access,
        action: Action,
    ) -> std::result::Result<(), ErrorReply> {
        let owner = self.store.owner()?;
        let exists = owner.is_some() || action == Action::Turn;
        if exists && may(owner.as_ref(), access, action) {
            Ok(())
        } else {
            Err(ErrorReply::new(ErrorCode::NotFound, "no such session"))
        }
    }

    /// Marks failed every turn of `running` (those storage calls running)
    /// that is not running here (its isolate was reset or evicted
    /// mid-turn), with an `error` event a resuming client sees.
    /// A lost turn's limiter reservation is settled with the usage its
    /// stored messages carry (the model calls it completed; none: a
    /// release), beside the request that found it, so its concurrency slot
    /// and the rest of its estimate come back at once instead of at its
    /// deadline.
    pub(super) fn recover(&self, running: &[u64]) {
        let lost = self.core.borrow().interrupted(running);
        for id in lost {
            self.fail_turn(
                id,
                "turn_interrupted",
                "the turn was interrupted (the session restarted) and did not finish",
            );
            self.settle_lost(id);
        }
    }

    /// Settles the reservation lost turn `id` held (see [`Self::recover`]).
    fn settle_lost(&self, id: u64) {
        let reservation = match self.store.take_reservation(id) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                worker::console_warn!(
                    "chat: a lost turn's reservation was not read: {}",
                    e.message
                );
                return;
            }
        };
        let used = self.store.stored_usage(id).ok().filter(|u| u.total() > 0);
        let key = self
            .store
            .owner()
            .ok()
            .flatten()
            .map(|o| o.key)
            .filter(|k| !k.is_empty());
        let Some((tenant, _)) = self.bound.borrow().clone() else {
            return;
        };
        let env = self.env.clone();
        self.state.wait_until(async move {
            let request_id = RequestId::from_random(crate::entropy::random_bytes());
            let prices = crate::limiter::recorder::prices(&env, &tenant, &request_id).await;
            account(
                &env,
                &tenant,
                &request_id,
                key.as_deref(),
                Some(&reservation),
                None,
                used,
                &prices,
            )
            .await;
        });
    }

    /// Sends `event` as the next event of turn `turn` to the turn's
    /// listeners and every socket, under the next sequence id, storing it
    /// first when [`EventIds`] says so (batches of pieces; everything else
    /// before it is sent).
    pub(super) fn emit(&self, turn: u64, event: &ChatEvent) {
        let json = serde_json::to_string(event).unwrap_or_default();
        let issued = self.events.borrow_mut().issue(turn, event, json.clone());
        let id = issued.id;
        if let Some(reserved) = issued.reserve {
            if let Err(e) = self.store.reserve_event_ids(reserved) {
                worker::console_error!("chat: event ids not reserved: {}", e.message);
            }
        }
        if issued.flush {
            self.flush_events();
        }
        let frame = TurnFrame {
            id,
            event: event.clone(),
        };
        match encode_frame_or_stand_in(&frame) {
            Ok(bytes) => {
                let terminal = is_terminal(event);
                self.listeners.borrow_mut().retain(|l| {
                    if l.turn != turn {
                        return true;
                    }
                    let alive = l.tx.unbounded_send(Ok(bytes.clone())).is_ok();
                    alive && !terminal
                });
            }
            Err(e) => {
                worker::console_error!("chat: event {id} could not be encoded: {e}");
                // Not skipped in silence: the turn's streams end with an
                // error here. (An event too large for a frame goes as its
                // stand-in; nothing else fails to encode.)
                let message = format!("event {id} could not be sent: {e}");
                self.listeners.borrow_mut().retain(|l| {
                    if l.turn == turn {
                        let _ =
                            l.tx.unbounded_send(Err(worker::Error::RustError(message.clone())));
                    }
                    l.turn != turn
                });
            }
        }
        let sockets = self.state.get_websockets();
        if !sockets.is_empty() {
            let json = socket_text(id, &json);
            for socket in sockets {
                let _ = socket.send_with_str(&json);
            }
        }
    }

    /// Stores the events sent but not stored yet.
    pub(super) fn flush_events(&self) {
        let pending = self.events.borrow_mut().take_pending();
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_events(&pending) {
            // Not stored, so not resumable; the turn goes on.
            worker::console_error!("chat: events not stored: {}", e.message);
        }
    }

    /// Turn `id` failed: marks it so and emits its `error` event, unless it
    /// has already ended.
    pub(super) fn fail_turn(&self, id: u64, code: &str, message: &str) {
        if let Ok(false) = self.store.turn_failed(id, code, message, self.now()) {
            return;
        }
        let bound = self.bound.borrow().clone();
        crate::observe::event(
            "turn_failed",
            "chat",
            bound.as_ref().map(|(t, _)| t.as_str()),
            json!({
                "sessionId": bound.as_ref().map(|(_, s)| s.as_str()),
                "turn": id,
                "code": code,
                "message": message,
            }),
        );
        self.emit(id, &ChatEvent::error(code, message));
        self.prune_events(id);
    }

    /// Keeps the events of the last `resumable_turns` turns only.
    pub(super) fn prune_events(&self, ended: u64) {
        let keep = self.limits().map(|l| l.resumable_turns).unwrap_or(20);
        let through = ended.saturating_sub(keep);
        // Turn ids start at 1: nothing to drop yet.
        if through > 0 {
            let _ = self.store.drop_events(through);
        }
    }

    /// Performs the effects that need no waiting, in order, and returns the
    /// ones that do (`Generate`, `RunTool`) for the driver.
    pub(super) fn perform(&self, turn: u64, effects: Vec<Effect>) -> VecDeque<Effect> {
        let mut waiting = VecDeque::new();
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Emit(event) => self.emit(turn, &event),
                Effect::Store(messages) => {
                    // The round is stored whole or not at all.
                    let stored = self.store.append_all(&messages, self.now());
                    if let Err(e) = stored {
                        let more = self.feed(turn, |m| m.fail("storage_failed", e.message));
                        queue.extend(more);
                    }
                }
                Effect::Complete { answer, usage } => {
                    let now = self.now();
                    // An answer whose turn could not be marked done is
                    // taken back: the turn then fails without it.
                    let done = self.store.append(&answer, usage, now).and_then(|seq| {
                        self.store
                            .turn_done(turn, now)
                            .map(|()| seq)
                            .inspect_err(|_| self.store.take_back(seq))
                    });
                    match done {
                        Ok(seq) => {
                            let model = self.core.borrow().served_by(turn);
                            let price = self
                                .turn_prices
                                .borrow()
                                .as_ref()
                                .filter(|(id, _)| *id == turn)
                                .and_then(|(_, p)| model.as_deref().and_then(|m| p.price(m)));
                            let usage = self
                                .core
                                .borrow()
                                .used(turn)
                                .map(|tokens| TurnUsage::new(tokens, price));
                            self.emit(
                                turn,
                                &ChatEvent::Done {
                                    ok: true,
                                    message_seq: seq,
                                    usage,
                                    model,
                                },
                            );
                            self.prune_events(turn);
                        }
                        Err(e) => self.fail_turn(turn, "storage_failed", &e.message),
                    }
                }
                Effect::Fail { code, message } => self.fail_turn(turn, &code, &message),
                other => waiting.push_back(other),
            }
        }
        waiting
    }

    pub(super) fn feed(
        &self,
        turn: u64,
        f: impl FnOnce(&mut super::turn::TurnMachine) -> Vec<Effect>,
    ) -> Vec<Effect> {
        self.core.borrow_mut().feed(turn, f)
    }

    /// Sets the alarm for the core's next deadline (turn timeout, idle
    /// expiry), unless an earlier one this isolate set is still pending.
    pub(super) async fn rearm(&self) {
        let Ok(limits) = self.limits() else { return };
        let now = self.now();
        let next = self
            .core
            .borrow()
            .next_alarm(self.store.last_activity(), now, &limits);
        if let Some(at) = next {
            if !must_set_alarm(self.alarm_at.get(), at, now) {
                return;
            }
            self.alarm_at.set(Some(at));
            let date = worker::js_sys::Date::new(&worker::wasm_bindgen::JsValue::from_f64(
                at.max(now) as f64,
            ));
            if let Err(e) = self
                .state
                .storage()
                .set_alarm(ScheduledTime::new(date))
                .await
            {
                self.alarm_at.set(None);
                worker::console_error!("chat: could not set the alarm: {e}");
            }
        }
    }

    /// Starts a turn, in one synchronous step: checks, stores the user
    /// message and the turn, registers `listener`. Returns the turn's context
    /// and the effects to drive.
    pub(super) fn begin(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        turn: Turn,
        listener: Option<FrameSender>,
        settings: Option<TenantSettings>,
    ) -> std::result::Result<(TurnContext, VecDeque<Effect>), ErrorReply> {
        self.allow(&turn.access, Action::Turn)?;
        let limits = self.limits()?;
        let stored = self.store.message_count()?;
        self.core
            .borrow()
            .can_begin(stored, &limits)
            .map_err(|refusal| refusal.to_error(stored, &limits))?;
        let user = ChatMessage {
            role: Role::User,
            content: turn.message.clone(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        };
        let now = self.now();
        if self.store.owner()?.is_none() {
            let owner = Owner::of(&turn.access);
            self.store.set_owner(&owner)?;
            // Sockets may attach to a session before its first turn; now that
            // it has an owner, the ones that may not read it are closed, so
            // they never see its events.
            for socket in self.state.get_websockets() {
                let allowed = socket
                    .deserialize_attachment::<SocketInfo>()
                    .ok()
                    .flatten()
                    .is_some_and(|info| may(Some(&owner), &info.access, Action::Read));
                if !allowed {
                    let _ =
                        socket.close(Some(4003), Some("this session belongs to another caller"));
                }
            }
        }
        let user_seq = self.store.append(&user, None, now)?;
        // With the turn's row: if this isolate loses the turn, `recover`
        // finds what it holds at the limiter and settles it. A write that
        // fails takes back the ones before it: no user message is left
        // without its turn.
        let started = self.store.start_turn(user_seq, now).and_then(|id| {
            match &turn.reservation {
                Some(reservation) => self.store.hold_reservation(id, reservation),
                None => Ok(()),
            }
            .map(|()| id)
        });
        let id = started.inspect_err(|_| self.store.take_back(user_seq))?;
        let effects = self.core.borrow_mut().start(id, now, &limits);
        if let Some(tx) = listener {
            self.listeners.borrow_mut().push(Listener { turn: id, tx });
        }
        let context = TurnContext {
            id,
            tenant: tenant.clone(),
            request_id: request_id.clone(),
            turn,
            settings,
        };
        Ok((context, self.perform(id, effects)))
    }

    /// Runs a started turn to its end: performs what waits (the model, the
    /// tools) and feeds the results back to the machine.
    pub(super) async fn drive(self: Rc<Self>, ctx: TurnContext, mut waiting: VecDeque<Effect>) {
        // The session's alarm is written ARM_WITHIN_MS after the turn
        // began: the turn's deadline if it still runs then, else (most
        // turns of the local generator, a new session's first among them)
        // the session's idle expiry, which it needs anyway. Not sooner: a
        // message is held until the storage writes made before it are
        // written (the output gate), and the alarm's is one more (a second
        // file, its own sync, locally), so an alarm written during the turn
        // holds the turn's next event, and fifty new sessions' alarms during
        // a burst of them hold every turn of the burst. If a later turn
        // began less than ARM_WITHIN_MS ago and an alarm is pending, the
        // later turn's arming writes it instead (so a quick turn after
        // another is not held either). An isolate lost before the alarm is
        // written leaves the turn `running` until the session is next bound
        // in an isolate, which fails it (`recover`) and writes the missing
        // alarm (`ensure_alarm`).
        self.arming.borrow_mut().began(ctx.id);
        let this = Rc::clone(&self);
        let turn = ctx.id;
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::from_millis(ARM_WITHIN_MS)).await;
            let pending = this.alarm_at.get().is_some();
            if this.arming.borrow_mut().due(turn, pending) {
                this.rearm().await;
            }
        });
        // The turn's models, and their prices (for its `done` event, its
        // usage record and its settle: one table for all three), both from
        // the settings the turn read.
        let generator = self.generator(&ctx);
        let prices = ctx
            .settings
            .as_ref()
            .map(TenantSettings::prices)
            .unwrap_or_default();
        *self.turn_prices.borrow_mut() = Some((ctx.id, prices.clone()));
        while let Some(effect) = waiting.pop_front() {
            let more = match effect {
                Effect::Generate => match &generator {
                    Ok(generator) => self.generate(&ctx, generator).await,
                    Err(e) => self.feed(ctx.id, |m| m.fail("model_unavailable", e.clone())),
                },
                Effect::RunTool(call) => {
                    let caller = caller_of(ctx.turn.access.key.as_deref(), true);
                    let (result, is_error) = self
                        .run_tool(&ctx.tenant, &ctx.request_id, &caller, &call)
                        .await;
                    self.feed(ctx.id, |m| m.on_tool_result(&call.id, &result, is_error))
                }
                // `perform` handles every other effect.
                _ => vec![],
            };
            waiting.extend(self.perform(ctx.id, more));
        }
        let used = self.core.borrow().used(ctx.id);
        let served_by = self.core.borrow().served_by(ctx.id);
        self.core.borrow_mut().finish(ctx.id);
        // Only this turn's: a turn ended by its deadline may already have a
        // successor.
        {
            let mut prices = self.turn_prices.borrow_mut();
            if prices.as_ref().is_some_and(|(id, _)| *id == ctx.id) {
                prices.take();
            }
        }
        // The reservation is settled now (its slot and estimate are held
        // until then); the usage record and the registry report go a little
        // later, with those of the turns that end meanwhile.
        let model = turn_model(served_by, ctx.turn.reservation.as_ref());
        settle(
            &self.env,
            &ctx.tenant,
            &ctx.request_id,
            ctx.turn.reservation.as_ref(),
            &model,
            used,
            &prices,
        )
        .await;
        if ctx.turn.reservation.is_some() {
            if let Err(e) = self.store.take_reservation(ctx.id) {
                worker::console_warn!(
                    "chat: a settled reservation was not forgotten: {}",
                    e.message
                );
            }
        }
        // Priced as its `done` event was, whatever the tenant's prices are
        // when the record is sent.
        let used = used.map(|usage| Used {
            caller: caller_of(ctx.turn.access.key.as_deref(), true),
            cost_micros: Some(prices.cost_micros(&model, usage).unwrap_or(0)),
            model,
            requests: 1,
            usage,
        });
        self.defer_bookkeeping(&ctx.tenant, used, ctx.id);
        // A turn that ended within ARM_WITHIN_MS leaves the alarm to its
        // arming (above), out of the turn's burst.
        if self.arming.borrow().writes_at_end() {
            self.rearm().await;
        }
    }

    /// Leaves an ended turn's usage record and registry report to be sent
    /// with those of the turns that end in the next [`FLUSH_AFTER_MS`] in
    /// any session of this isolate ([`ENDED`]), by the session whose turn
    /// began the batch (sixteen sessions a batch). The ledger and
    /// the registry (one object each per tenant) get one call a second from
    /// an isolate instead of one per session: fifty sessions that each ask
    /// one question cost them four calls, not fifty. Only plain data is
    /// shared: the sending session makes the call itself, in its own I/O
    /// context, with its own tenant's handle (every item of a batch is that
    /// tenant's). Kept in memory: an isolate reset in that time loses the
    /// usage records (the turns' reservations are settled already), and the
    /// registry catches up with each session's next turn.
    fn defer_bookkeeping(self: &Rc<Self>, tenant: &TenantId, used: Option<Used>, turn: u64) {
        let report = self.turn_report(tenant, turn);
        if used.is_none() && report.is_none() {
            return;
        }
        let now = crate::ports::SystemClock.now_ms();
        let booked = ENDED.with(|b| b.borrow_mut().add(tenant, used, report, now));
        let (env, tenant) = (self.env.clone(), tenant.clone());
        match booked {
            Booked::Gathered => {}
            Booked::FlushNow(batches) => self.state.wait_until(async move {
                for books in batches {
                    send_bookkeeping(&env, &tenant, books).await;
                }
            }),
            Booked::FlushLater => self.state.wait_until(async move {
                worker::Delay::from(std::time::Duration::from_millis(FLUSH_AFTER_MS)).await;
                let batches = ENDED.with(|b| b.borrow_mut().take_through(&tenant, now));
                for books in batches {
                    send_bookkeeping(&env, &tenant, books).await;
                }
            }),
        }
    }

    /// The registry report of how the session stands after turn `turn`
    /// ended (its version); `None` when nothing is stored (erased
    /// meanwhile: the erase reported it) or it could not be read (logged).
    /// A report that fails on the way is logged, never the turn's: the
    /// registry is corrected by the session's next report.
    fn turn_report(&self, tenant: &TenantId, turn: u64) -> Option<SessionReport> {
        let (_, session) = self.bound.borrow().clone()?;
        let entry = (|| {
            let owner = self.store.owner()?;
            let last = self.store.last_activity();
            Ok::<_, ErrorReply>(last.map(|last_activity_ms| {
                SessionEntry {
                    session_id: session.as_str().to_owned(),
                    message_count: self.store.message_count().unwrap_or(0),
                    last_activity_ms,
                    created_at_ms: self.store.first_activity().unwrap_or(last_activity_ms),
                    key_id: owner
                        .as_ref()
                        .map(|o| o.key.clone())
                        .filter(|k| !k.is_empty()),
                    user_id: owner.and_then(|o| o.user),
                }
            }))
        })();
        match entry {
            Ok(Some(entry)) => Some(SessionReport {
                change: SessionChange::Touched(entry),
                version: turn,
            }),
            // Nothing stored (erased meanwhile): the erase reported it.
            Ok(None) => None,
            Err(e) => {
                registry_failed(tenant, session.as_str(), "read", &e.message);
                None
            }
        }
    }

    /// Tells the registry the session was erased; `version` is its highest
    /// turn id before the erase.
    pub(super) async fn report_erased(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        version: u64,
    ) {
        let Some((_, session)) = self.bound.borrow().clone() else {
            return;
        };
        let change = SessionChange::Erased {
            session_id: session.as_str().to_owned(),
        };
        self.send_report(tenant, request_id, SessionReport { change, version })
            .await;
    }

    /// Sends `report` to the tenant's registry (a failure is logged).
    async fn send_report(&self, tenant: &TenantId, request_id: &RequestId, report: SessionReport) {
        let session = report.change.session_id().to_owned();
        let sent = match crate::coordinator::CoordinatorHandle::new(&self.env, tenant) {
            Ok(coordinator) => coordinator
                .record_session(request_id, report)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            registry_failed(tenant, &session, "send", &e.to_string());
        }
    }

    /// Admits a socket's turn at its limiter with the limits the socket was
    /// admitted with: the reservation to carry, or the refusal to send.
    pub(super) async fn admit_turn(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        applied: &Applied,
        turn: &Turn,
        settings: Option<&TenantSettings>,
    ) -> std::result::Result<Option<TurnReservation>, Rejected> {
        let prices = settings.map(TenantSettings::prices).unwrap_or_default();
        let work = Work::Turn {
            input_tokens: crate::limiter::admission::TURN_INPUT_ESTIMATE,
            max_tokens: turn.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            model: turn.model.clone(),
            price: turn.model.as_deref().and_then(|m| prices.price(m)),
            hold_ms: turn_hold_ms(|name| self.env.var(name).ok().map(|v| v.to_string())),
        };
        let unavailable = |e: crate::ActorError| {
            Rejected::new(
                "unavailable",
                format!("the limiter could not be reached: {e}"),
            )
        };
        let (admission, at_tenant) =
            crate::limiter::admit_applied(&self.env, tenant, request_id, applied, &work)
                .await
                .map_err(unavailable)?;
        match admission {
            Admission::Admitted(a) => Ok(a.reservation_id.map(|id| TurnReservation {
                limiter: applied.limiter.clone(),
                id,
                model: turn.model.clone(),
                tenant: at_tenant,
            })),
            Admission::RateLimited(r) => Err(Rejected::new(
                "rate_limited",
                format!(
                    "the {} limit of this {} is reached; retry in {} s",
                    r.limit.as_str(),
                    r.scope.as_str(),
                    r.retry_after_secs
                ),
            )),
            Admission::BudgetExceeded(b) => Err(Rejected::new(
                "budget_exceeded",
                format!(
                    "the {} budget of this {} ({}) would be exceeded: {} used and {} reserved, this turn needs {}; it resets at {} ms",
                    b.budget.as_str(),
                    b.scope.as_str(),
                    b.limit,
                    b.used,
                    b.reserved,
                    b.requested,
                    b.resets_at_ms
                ),
            )),
        }
    }

    /// Gives back a reservation whose turn never started.
    pub(super) async fn release(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        reservation: &TurnReservation,
    ) {
        for (limiter, id) in reservation.held() {
            let released = match LimiterHandle::at(&self.env, tenant, limiter) {
                Ok(limiter) => limiter.release(request_id, id).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                worker::console_warn!("chat: a reservation was not released: {e}");
            }
        }
    }

    /// The generators of the turn's model chain (the model it names, or
    /// the tenant's default and fallbacks), reached through the tenant's AI
    /// Gateway when it has one.
    pub(super) fn generator(
        &self,
        ctx: &TurnContext,
    ) -> std::result::Result<Vec<AnyGenerator>, String> {
        self.chain(
            &ctx.tenant,
            ctx.settings.as_ref(),
            ctx.turn.model.as_deref(),
            ctx.turn.access.key.clone(),
            Some(ctx.turn.session_id.as_str().to_owned()),
        )
    }

    /// The generators of `model`'s chain (or the tenant's default and its
    /// fallbacks, from its `tenant` settings), reached through the tenant's
    /// AI Gateway when it has one, with `key` and `session` in the gateway's
    /// metadata. Without the tenant's settings, the platform's default
    /// model, directly.
    pub(super) fn chain(
        &self,
        tenant_id: &TenantId,
        tenant: Option<&TenantSettings>,
        model: Option<&str>,
        key: Option<String>,
        session: Option<String>,
    ) -> std::result::Result<Vec<AnyGenerator>, String> {
        let settings = self.settings().map_err(|e| e.message)?;
        let chain = chat_chain(model, tenant.as_ref().map(|t| &t.default_models));
        let config = ChainConfig {
            workers_ai: settings.workers_ai,
            fault_injection: settings.fault_injection,
            route: Route {
                gateway: tenant.and_then(|t| t.ai_gateway.clone()),
                metadata: GatewayMetadata {
                    tenant_id: tenant_id.as_str().to_owned(),
                    key_id: key,
                    session_id: session,
                },
            },
        };
        AnyGenerator::chain(&self.env, &config, &chain).map_err(|e| e.to_string())
    }

    /// One generation, routed over the chain: its pieces go to the machine
    /// (and out) as they arrive.
    pub(super) async fn generate(&self, ctx: &TurnContext, chain: &[AnyGenerator]) -> Vec<Effect> {
        let history = match self.store.recent() {
            Ok(h) => h,
            Err(e) => return self.feed(ctx.id, |m| m.fail("storage_failed", e.message)),
        };
        let limits = match self.limits() {
            Ok(l) => l,
            Err(e) => return self.feed(ctx.id, |m| m.fail("internal", e.message)),
        };
        // Nothing starts past the turn's deadline (the alarm ends the turn then).
        let Some(give_up_at) = self.core.borrow().deadline(ctx.id) else {
            return vec![];
        };
        let request = GenerateRequest {
            options: Default::default(),
            tool_choice: Default::default(),
            model: String::new(),
            messages: context(SYSTEM_PROMPT, &history, CONTEXT_BUDGET_CHARS),
            tools: tools::specs(),
            max_tokens: ctx.turn.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        };
        let outcome = generate_routed(
            chain,
            &request,
            &limits.route_policy(),
            &RuntimeSleep,
            &SystemClock,
            give_up_at,
            &mut |event| match event {
                GenerationEvent::Text(piece) => {
                    let effects = self.feed(ctx.id, |m| m.on_text(piece));
                    // Only `Emit`: nothing is left waiting.
                    let _ = self.perform(ctx.id, effects);
                }
                GenerationEvent::ToolCall(call) => {
                    self.feed(ctx.id, |m| {
                        m.on_tool_call(call);
                        vec![]
                    });
                }
                GenerationEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    self.feed(ctx.id, |m| {
                        m.on_usage(Usage {
                            prompt_tokens,
                            completion_tokens,
                        });
                        vec![]
                    });
                }
            },
        )
        .await;
        self.feed(ctx.id, |m| m.on_routed(outcome))
    }

    pub(super) async fn run_tool(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        caller: &str,
        call: &ToolCall,
    ) -> (Value, bool) {
        match tools::plan(tenant, caller, call) {
            ToolRun::Search(search) => {
                let found = match SearchHandle::for_query(&self.env, tenant, &search.query) {
                    Ok(handle) => handle.search(request_id, search).await,
                    Err(e) => Err(e),
                };
                tools::search_outcome(found.map_err(|e| e.to_string()))
            }
            ToolRun::KvGet { key, full } => {
                let read = match providers::cache(&self.env) {
                    Some(kv) => kv.get(&full).await.map_err(|e| e.to_string()),
                    None => Err("this deployment has no KV namespace".to_owned()),
                };
                tools::kv_result(key, read)
            }
            ToolRun::Refused(answer) => (answer, true),
        }
    }

    /// The tenant's settings for a turn (its limits, models, gateway and
    /// prices), read once, before the turn is stored; `None` if they
    /// cannot be read (the turn then runs on the platform's default model,
    /// directly, at default prices, under the limits its socket was
    /// admitted with). Up to [`crate::coordinator::settings::SETTINGS_STALE_MS`]
    /// past their second, the isolate's are taken at once while they are
    /// read again beside this request.
    pub(super) async fn tenant_settings(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Option<TenantSettings> {
        let read = crate::coordinator::settings::tenant_settings_or_refresh(
            &self.env,
            tenant,
            request_id,
            |refresh| self.state.wait_until(refresh),
        );
        // A failed read logs itself (once, whether this request or the
        // background made it).
        read.await.ok()
    }

    pub(super) fn event_log(&self) -> std::result::Result<EventLog, ErrorReply> {
        self.flush_events();
        let range = self.store.event_range()?;
        let running = self.core.borrow().running_turn();
        let last_event_id = range.newest.unwrap_or(0);
        Ok(EventLog {
            // A turn without events yet starts after the last stored event.
            latest_turn: range.latest_turn.map(|(id, first)| {
                let first = first
                    .unwrap_or(u64::MAX)
                    .min(last_event_id.saturating_add(1));
                (id, first, running == Some(id))
            }),
            last_event_id,
            issued: self.events.borrow().issued(),
            oldest_kept: range.oldest,
        })
    }

    /// What a resuming client gets: the plan's frames, and whether to follow
    /// the running turn afterwards (register the listener in the same step).
    pub(super) fn resume(
        &self,
        after: Option<u64>,
    ) -> std::result::Result<ResumeAnswer, ErrorReply> {
        let log = self.event_log()?;
        let plan = resume_plan(after, &log);
        if let Some(refusal) = plan.refusal(&log) {
            return Err(refusal);
        }
        match plan {
            ResumePlan::Replay { after, follow } => Ok(ResumeAnswer::Frames {
                frames: self.store.events_after(after)?,
                follow: if follow {
                    log.latest_turn.map(|(id, _, _)| id)
                } else {
                    None
                },
            }),
            _ => Ok(ResumeAnswer::UpToDate(UpToDate {
                last_event_id: log.last_event_id,
            })),
        }
    }

    /// A socket's `resume`: the events it missed (from before it connected:
    /// every later one reached it live), replayed to it alone.
    pub(super) fn resume_socket(&self, ws: &WebSocket, info: &SocketInfo, after: Option<u64>) {
        let resumed = self
            .allow(&info.access, Action::Read)
            .map_err(|e| Rejected::new("not_found", e.message))
            .and_then(|()| {
                self.resume(after)
                    .map_err(|e| Rejected::new("cannot_resume", e.message))
            });
        match resumed {
            Ok(ResumeAnswer::Frames { frames, follow }) => {
                let frames = replay_to_socket(&frames, info.joined_after);
                for f in &frames {
                    if let Ok(json) = serde_json::to_string(&f.event) {
                        let _ = ws.send_with_str(socket_text(f.id, &json));
                    }
                }
                send_json(
                    ws,
                    &json!({ "type": "resumed", "replayed": frames.len(), "following": follow.is_some() }),
                );
            }
            Ok(ResumeAnswer::UpToDate(_)) => send_json(
                ws,
                &json!({ "type": "resumed", "replayed": 0, "following": false }),
            ),
            Err(rejected) => send_rejection(ws, &rejected),
        }
    }

    pub(super) fn snapshot(
        &self,
        alarm_at_ms: Option<u64>,
    ) -> std::result::Result<ChatSnapshot, ErrorReply> {
        let count = self.store.message_count()?;
        let workers_ai = self.settings()?.workers_ai;
        let latest_turn = self.store.latest_turn()?;
        Ok(ChatSnapshot {
            message_count: count,
            last_activity_ms: self.store.last_activity(),
            connected_sockets: u32::try_from(self.state.get_websockets().len()).unwrap_or(u32::MAX),
            in_flight: self.core.borrow().in_flight(),
            generator: if workers_ai {
                "workers-ai"
            } else {
                crate::generation::embedded::EXTRACTIVE_MODEL
            }
            .to_owned(),
            latest_turn,
            last_event_id: {
                self.flush_events();
                self.store.last_event_id()?
            },
            alarm_at_ms,
        })
    }

    pub(super) fn clear(&self) -> std::result::Result<ChatResponse, ErrorReply> {
        if self.core.borrow().in_flight() {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                "this session is still answering; try again when it is done",
            ));
        }
        let removed = self.store.message_count()?;
        self.store.erase()?;
        Ok(ChatResponse::Cleared(Cleared {
            messages_removed: removed,
        }))
    }
}

/// The log line of a registry report that did not arrive.
fn registry_failed(tenant: &TenantId, session: &str, stage: &str, error: &str) {
    crate::observe::event(
        "session_registry_failed",
        "chat",
        Some(tenant.as_str()),
        json!({"sessionId": session, "stage": stage, "error": error}),
    );
}

/// Sends a batch of ended turns ([`TurnBooks`]): the usage records (priced
/// as their turns were), and the sessions' registry reports, in one call
/// to the tenant's ledger, which passes the reports on to the registry
/// ([`crate::limiter::relay`]). The reports go to the registry directly
/// when there is no usage to carry them, or the ledger did not take them.
async fn send_bookkeeping(env: &Env, tenant: &TenantId, books: Books) {
    let (used, mut reports) = books.into_parts();
    let request_id = RequestId::from_random(crate::entropy::random_bytes());
    if !used.is_empty() {
        // A turn's record carries its own cost (its `done` event's): the
        // tenant's prices are read only for a record without one.
        let prices = if used.iter().any(|u| u.cost_micros.is_none()) {
            crate::limiter::recorder::prices(env, tenant, &request_id).await
        } else {
            PriceTable::default()
        };
        let now = crate::ports::SystemClock.now_ms();
        let recorded = crate::limiter::recorder::record(
            env,
            tenant,
            &request_id,
            now,
            &used,
            &prices,
            reports.clone(),
        )
        .await;
        match recorded {
            Ok(true) => reports.clear(),
            Ok(false) => {}
            Err(e) => worker::console_warn!("chat: the turns' usage was not recorded: {e}"),
        }
    }
    if reports.is_empty() {
        return;
    }
    let sent = match crate::coordinator::CoordinatorHandle::new(env, tenant) {
        Ok(coordinator) => coordinator
            .record_sessions(&request_id, reports.clone())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        for report in &reports {
            registry_failed(tenant, report.change.session_id(), "send", &e.to_string());
        }
    }
}

pub(super) fn wrong_session() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::WrongTenant,
        "this session belongs to another tenant or session",
    )
}

/// Accounts for a turn that ended: its usage is recorded at the tenant's
/// ledger (priced with the tenant's prices, charged to the model that
/// served it), and its reservation settled with it (nothing used:
/// released). A failure is logged: a reservation then expires at the
/// limiter and is charged its estimate.
#[allow(clippy::too_many_arguments)]
pub(super) async fn account(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    key: Option<&str>,
    reservation: Option<&TurnReservation>,
    model: Option<String>,
    used: Option<TokenUsage>,
    prices: &PriceTable,
) {
    if used.is_none() && reservation.is_none() {
        return;
    }
    let model = turn_model(model, reservation);
    if let Some(usage) = used {
        let turn = [Used {
            caller: caller_of(key, true),
            model: model.clone(),
            requests: 1,
            usage,
            cost_micros: None,
        }];
        let now = crate::ports::SystemClock.now_ms();
        if let Err(e) = crate::limiter::recorder::record(
            env,
            tenant,
            request_id,
            now,
            &turn,
            prices,
            Vec::new(),
        )
        .await
        {
            worker::console_warn!("chat: the turn's usage was not recorded: {e}");
        }
    }
    settle(env, tenant, request_id, reservation, &model, used, prices).await;
}

/// The model a turn's usage is charged to: the one that served it, else the
/// one its reservation named.
fn turn_model(served_by: Option<String>, reservation: Option<&TurnReservation>) -> String {
    served_by
        .or_else(|| reservation.and_then(|r| r.model.clone()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Settles a turn's reservation, if it holds one, with what it used (nothing
/// used: released). A failure is logged: the reservation then expires at
/// the limiter and is charged its estimate.
async fn settle(
    env: &Env,
    tenant: &TenantId,
    request_id: &RequestId,
    reservation: Option<&TurnReservation>,
    model: &str,
    used: Option<TokenUsage>,
    prices: &PriceTable,
) {
    let Some(reservation) = reservation else {
        return;
    };
    if !reservation.valid() {
        worker::console_error!("chat: a turn carried an invalid reservation");
        return;
    }
    for (limiter, id) in reservation.held() {
        let limiter = match LimiterHandle::at(env, tenant, limiter) {
            Ok(l) => l,
            Err(e) => {
                worker::console_error!("chat: no limiter to settle with: {e}");
                continue;
            }
        };
        let settled = match used {
            Some(usage) => limiter
                .settle(
                    request_id,
                    protocol::limits::Settle {
                        reservation_id: id,
                        usage,
                        price: prices.price(model),
                        model: Some(model.to_owned()),
                    },
                )
                .await
                .map(|_| ()),
            None => limiter.release(request_id, id).await.map(|_| ()),
        };
        if let Err(e) = settled {
            worker::console_warn!("chat: the turn's reservation was not settled: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(caller: &str, output: u64) -> Used {
        Used {
            caller: caller.into(),
            model: "local/extractive".into(),
            requests: 1,
            usage: TokenUsage {
                input_tokens: 10,
                output_tokens: output,
            },
            cost_micros: None,
        }
    }

    fn report(session: &str, version: u64) -> SessionReport {
        SessionReport {
            change: SessionChange::Touched(SessionEntry {
                session_id: session.into(),
                message_count: version * 4,
                last_activity_ms: version,
                created_at_ms: 1,
                key_id: None,
                user_id: None,
            }),
            version,
        }
    }

    #[test]
    fn a_busy_sessions_turns_share_one_call() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        assert_eq!(
            books.add(&tenant, Some(used("k", 5)), Some(report("s1", 3)), 0),
            Booked::FlushLater,
            "the first turn arranges the send"
        );
        for n in 4..60 {
            assert_eq!(
                books.add(&tenant, Some(used("k", 1)), Some(report("s1", n)), n),
                Booked::Gathered,
                "turn {n}"
            );
        }
        assert_eq!(
            books.add(&tenant, None, Some(report("s1", 60)), 60),
            Booked::Gathered,
            "a turn that used nothing is still reported"
        );
        let mut batches = books.take_through(&tenant, 0);
        assert_eq!(batches.len(), 1);
        let (used_, reports) = batches.remove(0).into_parts();
        assert_eq!(reports, [report("s1", 60)], "the session's latest view");
        assert_eq!(used_.len(), 1, "summed per caller and model");
        assert_eq!((used_[0].requests, used_[0].usage.output_tokens), (57, 61));
        assert_eq!(
            books.take_through(&tenant, u64::MAX),
            Vec::new(),
            "nothing is sent twice"
        );
        assert_eq!(
            books.add(&tenant, None, Some(report("s1", 61)), 61),
            Booked::FlushLater
        );
    }

    #[test]
    fn a_full_batch_waits_for_its_send_and_each_send_takes_its_own() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        for n in 0..MAX_SESSION_REPORTS as u64 {
            let booked = books.add(&tenant, None, Some(report(&format!("s{n}"), 1)), 100 + n);
            let expected = if n == 0 {
                Booked::FlushLater
            } else {
                Booked::Gathered
            };
            assert_eq!(booked, expected, "session {n}");
        }
        // Full: a turn of one of its sessions, or with no report, still
        // joins it; a new session begins the next batch.
        assert_eq!(
            books.add(&tenant, Some(used("k", 1)), Some(report("s3", 2)), 120),
            Booked::Gathered
        );
        assert_eq!(
            books.add(&tenant, Some(used("k", 1)), None, 121),
            Booked::Gathered
        );
        assert_eq!(
            books.add(&tenant, None, Some(report("s16", 1)), 130),
            Booked::FlushLater
        );
        // The first batch's send (arranged at 100) takes it alone.
        let first = books.take_through(&tenant, 100);
        assert_eq!(first.len(), 1);
        let (used_, reports) = first.into_iter().next().expect("a batch").into_parts();
        assert_eq!(reports.len(), MAX_SESSION_REPORTS);
        assert!(reports.contains(&report("s3", 2)), "the newer report");
        assert_eq!(used_.iter().map(|u| u.requests).sum::<u64>(), 2);
        let second = books.take_through(&tenant, 130);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].reports, [report("s16", 1)]);
        assert!(books.take_through(&tenant, u64::MAX).is_empty());
    }

    #[test]
    fn sixteen_sessions_fill_a_call_and_every_turn_is_sent_once() {
        let (a, b) = (
            TenantId::parse("acme").expect("a tenant id"),
            TenantId::parse("other").expect("a tenant id"),
        );
        let mut books = TurnBooks::default();
        let mut calls = Vec::new();
        let mut sends = Vec::new();
        for n in 0..50u64 {
            match books.add(&a, Some(used("k", 1)), Some(report(&format!("s{n}"), 1)), n) {
                Booked::FlushNow(_) => panic!("nothing is stale"),
                Booked::FlushLater => {
                    assert!(n % 16 == 0, "{n} begins a batch");
                    sends.push(n);
                }
                Booked::Gathered => {}
            }
        }
        assert_eq!(
            books.add(&b, Some(used("k", 1)), Some(report("b1", 1)), 50),
            Booked::FlushLater,
            "per tenant"
        );
        for began in sends {
            calls.extend(books.take_through(&a, began));
        }
        assert_eq!(calls.len(), 4, "fifty one-turn sessions, four calls");
        let mut sessions = Vec::new();
        let mut requests = 0;
        for call in calls {
            let (used_, reports) = call.into_parts();
            assert!(reports.len() <= MAX_SESSION_REPORTS);
            sessions.extend(reports.iter().map(|r| r.change.session_id().to_owned()));
            requests += used_.iter().map(|u| u.requests).sum::<u64>();
        }
        assert_eq!(
            sessions,
            (0..50).map(|n| format!("s{n}")).collect::<Vec<_>>()
        );
        assert_eq!(requests, 50, "every turn once");
        let b_batches = books.take_through(&b, 50);
        assert_eq!(b_batches.len(), 1);
        assert_eq!(b_batches[0].reports, [report("b1", 1)], "b's own batch");
    }

    #[test]
    fn a_later_send_takes_an_older_batch_whose_send_never_came() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        // A full batch begun at 100 (its send lost with its session), then
        // one begun at 130, and one begun in that same millisecond.
        for n in 0..MAX_SESSION_REPORTS as u64 {
            books.add(
                &tenant,
                Some(used("k", 1)),
                Some(report(&format!("s{n}"), 1)),
                100,
            );
        }
        assert_eq!(
            books.add(&tenant, Some(used("k", 1)), Some(report("s16", 1)), 130),
            Booked::FlushLater
        );
        for n in 17..=MAX_SESSION_REPORTS as u64 + 16 {
            books.add(
                &tenant,
                Some(used("k", 1)),
                Some(report(&format!("s{n}"), 1)),
                130,
            );
        }
        let taken = books.take_through(&tenant, 130);
        assert_eq!(
            taken.len(),
            3,
            "the lost one, its own, and the same millisecond's"
        );
        let reports: usize = taken.iter().map(|b| b.reports.len()).sum();
        assert_eq!(reports, 2 * MAX_SESSION_REPORTS + 1);
        let requests: u64 = taken
            .into_iter()
            .flat_map(|b| b.into_parts().0)
            .map(|u| u.requests)
            .sum();
        assert_eq!(
            requests,
            2 * MAX_SESSION_REPORTS as u64 + 1,
            "every turn once"
        );
        assert!(books.take_through(&tenant, 100).is_empty(), "nothing twice");
        assert!(books.take_through(&tenant, u64::MAX).is_empty());
    }

    #[test]
    fn a_stale_batch_goes_now_with_every_later_one() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        // Seventeen sessions: two batches, whose sends never come.
        for n in 0..=MAX_SESSION_REPORTS as u64 {
            books.add(
                &tenant,
                Some(used("k", 1)),
                Some(report(&format!("s{n}"), 1)),
                n,
            );
        }
        match books.add(&tenant, Some(used("k", 1)), None, STALE_BATCH_MS) {
            Booked::FlushNow(stuck) => {
                assert_eq!(stuck.len(), 2);
                let reports: usize = stuck.iter().map(|b| b.reports.len()).sum();
                assert_eq!(reports, MAX_SESSION_REPORTS + 1);
                let requests: u64 = stuck
                    .into_iter()
                    .flat_map(|b| b.into_parts().0)
                    .map(|u| u.requests)
                    .sum();
                assert_eq!(requests, MAX_SESSION_REPORTS as u64 + 2, "every turn once");
            }
            other => panic!("stale batches are sent at once: {other:?}"),
        }
        assert!(books.take_through(&tenant, u64::MAX).is_empty());
    }

    #[test]
    fn an_older_report_never_replaces_a_newer_one() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        books.add(&tenant, None, Some(report("s1", 7)), 0);
        books.add(&tenant, None, Some(report("s1", 6)), 1);
        let batches = books.take_through(&tenant, 0);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].reports, [report("s1", 7)]);
    }

    #[test]
    fn a_batch_nobody_sent_goes_with_the_next_turn() {
        let tenant = TenantId::parse("acme").expect("a tenant id");
        let mut books = TurnBooks::default();
        assert_eq!(
            books.add(&tenant, Some(used("k", 1)), Some(report("s1", 1)), 1_000),
            Booked::FlushLater
        );
        // The session that began it is gone before its send: the batch
        // stays, and turns join it until it is stale.
        assert_eq!(
            books.add(&tenant, Some(used("k", 1)), Some(report("s2", 1)), 2_500),
            Booked::Gathered
        );
        let late = 1_000 + STALE_BATCH_MS;
        match books.add(&tenant, Some(used("k", 1)), Some(report("s3", 1)), late) {
            Booked::FlushNow(stuck) => {
                assert_eq!(stuck.len(), 1);
                let (used_, reports) = stuck.into_iter().next().expect("a batch").into_parts();
                assert_eq!(used_[0].requests, 3, "every turn, the new one with them");
                assert_eq!(reports.len(), 3);
            }
            other => panic!("a stale batch is sent at once: {other:?}"),
        }
        assert_eq!(
            books.add(&tenant, None, Some(report("s4", 1)), late + 1),
            Booked::FlushLater,
            "and the next turn begins a new one"
        );
    }
}
