//! Event ids and the batching of event writes, without I/O.
//!
//! Every event of a session gets the next sequence id. Ids are handed out
//! from memory against a reservation that is stored ahead of them (one write
//! per [`EVENT_ID_BLOCK`] ids), so ids lost with an isolate are never reused.
//! Events are stored in batches: every event but a `message` piece (tool
//! calls, results, `done`, `error`) is stored before it is sent, together with
//! the pieces before it, and so is every [`FLUSH_EVERY`]th piece. Every read
//! of the stored events flushes first, so a replay is exact. A batch is
//! stored as a few rows, one per run of one turn's events ([`event_rows`]).

use protocol::chat::ChatEvent;

/// Event ids reserved in one write.
pub const EVENT_ID_BLOCK: u64 = 256;
/// `message` pieces stored together.
pub const FLUSH_EVERY: usize = 32;

/// An event not stored yet: `(id, turn, JSON)`.
pub type PendingEvent = (u64, u64, String);

/// The most bytes of event JSON one stored row holds; an event larger than
/// this has a row of its own.
pub const ROW_BYTES: usize = 64 * 1024;

/// A stored row of events: `(last id, turn, JSON texts one per line)`.
pub type EventRow = (u64, u64, String);

/// The rows that store `events` (in id order, as [`EventIds`] hands them
/// out): a run of one turn's events with consecutive ids shares a row, its
/// JSON texts one per line under the run's last id (the others' ids follow
/// from it), so a turn's forty-odd events are four rows, not forty-odd
/// (each one a write). JSON holds no raw
/// line break but as whitespace between tokens (a string's is written
/// `\n`), so a text that has one anyway is stored with a space there.
pub fn event_rows(events: &[PendingEvent]) -> Vec<EventRow> {
    let mut rows: Vec<EventRow> = Vec::new();
    for (id, turn, json) in events {
        let json = if json.contains('\n') {
            std::borrow::Cow::Owned(json.replace('\n', " "))
        } else {
            std::borrow::Cow::Borrowed(json.as_str())
        };
        match rows.last_mut() {
            Some((last, t, text))
                if t == turn
                    && last.checked_add(1) == Some(*id)
                    && text.len() + 1 + json.len() <= ROW_BYTES =>
            {
                *last = *id;
                text.push('\n');
                text.push_str(&json);
            }
            _ => rows.push((*id, *turn, json.into_owned())),
        }
    }
    rows
}

/// The events of a stored row `(last id, text)`, `(id, JSON)` in id order.
/// A row of one event (as every row was before rows held several) is that
/// event under the row's id.
pub fn row_events(last: u64, text: &str) -> impl Iterator<Item = (u64, &str)> {
    let first = last.saturating_sub(text.matches('\n').count() as u64);
    text.split('\n')
        .enumerate()
        .map(move |(i, line)| (first.saturating_add(i as u64), line))
}

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

    fn pending(id: u64, turn: u64, json: &str) -> PendingEvent {
        (id, turn, json.to_owned())
    }

    /// Every event stored comes back under its id, whatever rows it went in.
    fn read_back(rows: &[EventRow]) -> Vec<(u64, String)> {
        rows.iter()
            .flat_map(|(last, _, text)| row_events(*last, text))
            .map(|(id, json)| (id, json.to_owned()))
            .collect()
    }

    #[test]
    fn a_run_of_one_turns_events_is_one_row_under_its_last_id() {
        let events: Vec<PendingEvent> = (10..=42)
            .map(|id| pending(id, 3, &format!(r#"{{"type":"message","content":"p{id}"}}"#)))
            .collect();
        let rows = event_rows(&events);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1), (42, 3));
        let expected: Vec<(u64, String)> =
            events.iter().map(|(id, _, j)| (*id, j.clone())).collect();
        assert_eq!(read_back(&rows), expected);
    }

    #[test]
    fn another_turn_a_gap_in_the_ids_or_a_full_row_starts_a_new_row() {
        let big = format!(
            r#"{{"type":"toolResult","result":"{}"}}"#,
            "r".repeat(ROW_BYTES - 40)
        );
        let events = vec![
            pending(1, 1, r#"{"type":"done"}"#),
            pending(2, 2, r#"{"type":"message","content":"a"}"#),
            pending(3, 2, r#"{"type":"message","content":"b"}"#),
            // A gap: ids 4 and 5 went to a turn stored elsewhere.
            pending(6, 2, r#"{"type":"message","content":"c"}"#),
            pending(7, 2, &big),
            pending(8, 2, r#"{"type":"done"}"#),
        ];
        let rows = event_rows(&events);
        let lasts: Vec<(u64, u64)> = rows.iter().map(|(last, turn, _)| (*last, *turn)).collect();
        assert_eq!(lasts, vec![(1, 1), (3, 2), (6, 2), (7, 2), (8, 2)]);
        assert!(rows.iter().all(|(_, _, text)| text.len() <= ROW_BYTES));
        let expected: Vec<(u64, String)> =
            events.iter().map(|(id, _, j)| (*id, j.clone())).collect();
        assert_eq!(read_back(&rows), expected);
    }

    #[test]
    fn a_line_break_in_an_events_json_becomes_a_space() {
        let events = vec![
            pending(5, 1, "{\"type\":\n\"done\"}"),
            pending(6, 1, r#"{"type":"message","content":"line\nbreak"}"#),
        ];
        let rows = event_rows(&events);
        assert_eq!(rows.len(), 1);
        let back = read_back(&rows);
        assert_eq!(back.len(), 2);
        for ((id, json), (want, _, _)) in back.iter().zip(&events) {
            assert_eq!(id, want);
            let value: serde_json::Value = serde_json::from_str(json).expect("still JSON");
            assert!(value.is_object());
        }
        assert_eq!(back[1].1, events[1].2, "an escaped line break is kept");
    }

    #[test]
    fn a_row_of_one_event_as_stored_before_is_read_as_that_event() {
        let got: Vec<(u64, &str)> = row_events(77, r#"{"type":"done"}"#).collect();
        assert_eq!(got, vec![(77, r#"{"type":"done"}"#)]);
    }

    #[test]
    fn the_events_of_a_turn_as_emitted_make_four_rows() {
        // A turn as the bench's: a tool call and its result (each stored
        // before it is sent), then forty pieces and `done`.
        let mut ids = EventIds::restore(0);
        let mut rows = Vec::new();
        let tool = ChatEvent::error("code", "not a piece");
        let mut flushes = 0;
        for n in 0..43 {
            let event = if n < 2 || n == 42 {
                tool.clone()
            } else {
                piece()
            };
            let issued = ids.issue(1, &event, format!(r#"{{"n":{n}}}"#));
            if issued.flush {
                flushes += 1;
                rows.extend(event_rows(&ids.take_pending()));
            }
        }
        assert_eq!(flushes, 4);
        assert_eq!(rows.len(), 4);
        let back = read_back(&rows);
        assert_eq!(back.len(), 43);
        assert!(back
            .iter()
            .enumerate()
            .all(|(i, (id, json))| *id == i as u64 + 1 && *json == format!(r#"{{"n":{i}}}"#)));
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
