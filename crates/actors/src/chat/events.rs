//! Event ids and the batching of event writes, without I/O.
//!
//! Every event of a session gets the next sequence id. Ids are handed out
//! from memory against a reservation that is stored ahead of them (one write
//! per [`EVENT_ID_BLOCK`] ids), so ids lost with an isolate are never reused.
//! Events are stored in batches: every event but a `message` piece (tool
//! calls, results, `done`, `error`) is stored before it is sent, together with
//! the pieces before it, and so is every [`FLUSH_EVERY`]th piece. Every read
//! of the stored events flushes first, so a replay is exact.

use protocol::chat::ChatEvent;

/// Event ids reserved in one write.
pub const EVENT_ID_BLOCK: u64 = 256;
/// `message` pieces stored together.
pub const FLUSH_EVERY: usize = 32;

/// An event not stored yet: `(id, turn, JSON)`.
pub type PendingEvent = (u64, u64, String);

/// What the shell must do for an event given an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The event's id.
    pub id: u64,
    /// Store this reservation (the highest id that may be handed out)
    /// before the event is stored or sent.
    pub reserve: Option<u64>,
    /// Store the pending events (this one included) before sending it.
    pub flush: bool,
}

/// The next event id, the stored reservation, and the events sent but not
/// stored yet.
#[derive(Debug, Default)]
pub struct EventIds {
    next_id: u64,
    reserved: u64,
    pending: Vec<PendingEvent>,
}

impl EventIds {
    /// The ids after `issued`, the highest id storage has reserved.
    pub fn restore(issued: u64) -> Self {
        Self {
            next_id: issued + 1,
            reserved: issued,
            pending: Vec::new(),
        }
    }

    /// Gives `event` (of `turn`, as `json`) the next id and keeps it pending.
    pub fn issue(&mut self, turn: u64, event: &ChatEvent, json: String) -> Issued {
        let id = self.next_id;
        self.next_id += 1;
        let reserve = (id > self.reserved).then(|| {
            self.reserved = id + EVENT_ID_BLOCK;
            self.reserved
        });
        self.pending.push((id, turn, json));
        let piece = matches!(event, ChatEvent::Message { .. });
        Issued {
            id,
            reserve,
            flush: !piece || self.pending.len() >= FLUSH_EVERY,
        }
    }

    /// The events to store now (none pending afterwards).
    pub fn take_pending(&mut self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.pending)
    }

    /// The last id handed out.
    pub fn issued(&self) -> u64 {
        self.next_id.saturating_sub(1)
    }
}

/// Whether `event` ends its turn.
pub fn is_terminal(event: &ChatEvent) -> bool {
    matches!(event, ChatEvent::Done { .. } | ChatEvent::Error { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece() -> ChatEvent {
        ChatEvent::Message {
            content: "x".into(),
        }
    }

    #[test]
    fn ids_continue_after_the_reservation_and_reserve_ahead() {
        let mut ids = EventIds::restore(300);
        let first = ids.issue(1, &piece(), "{}".into());
        assert_eq!(
            first.id, 301,
            "ids never reuse what an isolate may have sent"
        );
        assert_eq!(first.reserve, Some(301 + EVENT_ID_BLOCK));
        for _ in 0..EVENT_ID_BLOCK {
            let issued = ids.issue(1, &piece(), "{}".into());
            assert_eq!(
                issued.reserve, None,
                "id {} is inside the reservation",
                issued.id
            );
        }
        let next = ids.issue(1, &piece(), "{}".into());
        assert_eq!(next.id, 302 + EVENT_ID_BLOCK);
        assert_eq!(next.reserve, Some(next.id + EVENT_ID_BLOCK));
        assert_eq!(ids.issued(), next.id);
    }

    #[test]
    fn pieces_are_batched_and_everything_else_is_stored_before_it_is_sent() {
        let mut ids = EventIds::restore(0);
        for n in 1..FLUSH_EVERY {
            assert!(!ids.issue(1, &piece(), n.to_string()).flush);
        }
        assert!(
            ids.issue(1, &piece(), "last".into()).flush,
            "the 32nd piece"
        );
        assert_eq!(ids.take_pending().len(), FLUSH_EVERY);
        assert!(!ids.issue(1, &piece(), "a".into()).flush);
        let done = ChatEvent::Done {
            usage: None,
            ok: true,
            message_seq: 4,
            model: None,
        };
        assert!(ids.issue(1, &done, "b".into()).flush);
        let pending = ids.take_pending();
        assert_eq!(
            pending.iter().map(|p| p.2.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"],
            "the pieces before it go with it, in order"
        );
        assert!(ids.take_pending().is_empty());
        assert!(is_terminal(&done) && !is_terminal(&piece()));
        assert!(is_terminal(&ChatEvent::error("x", "y")));
    }
}
