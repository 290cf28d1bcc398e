//! Server-Sent Events: one chat event per SSE event, each with an `id:`.

use protocol::chat::ChatEvent;

/// Response headers of an event stream; the last two keep proxies from
/// buffering it.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
];

/// `id: <id>\nevent: <name>\ndata: <json>\n\n`. The JSON is one line (serde
/// escapes newlines inside strings), so one `data:` line carries it. An event
/// the gateway makes up itself (a stream that broke) has no id, so a client's
/// `Last-Event-ID` stays at the last event the session stored.
pub fn event(id: Option<u64>, event: &ChatEvent) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|_| {
        r#"{"type":"error","code":"encoding","message":"an event could not be encoded"}"#.to_owned()
    });
    match id {
        Some(id) => format!("id: {id}\nevent: {}\ndata: {data}\n\n", event.name()),
        None => format!("event: {}\ndata: {data}\n\n", event.name()),
    }
}

/// Whether a stream of a session's events may end without an event of the
/// gateway's own: only if its last event ended a turn. A resume can replay an
/// earlier turn's `done` before it follows a later turn, so a terminal event
/// counts only while nothing comes after it.
#[derive(Debug, Default)]
pub struct Ending {
    finished: bool,
}

impl Ending {
    /// Notes an event sent to the client.
    pub fn saw(&mut self, event: &ChatEvent) {
        self.finished = actors::chat::events::is_terminal(event);
    }

    /// The event to send when the session's frames end: none after a turn's
    /// `done` or `error`, else `stream_cut`.
    pub fn at_end(&self) -> Option<ChatEvent> {
        (!self.finished).then(|| ChatEvent::error("stream_cut", "the answer ended early"))
    }
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
    fn a_stream_ends_cleanly_only_after_its_last_turn_ended() {
        let mut ending = Ending::default();
        assert!(ending.at_end().is_some(), "nothing sent yet");
        ending.saw(&piece());
        assert!(ending.at_end().is_some(), "cut inside a turn");
        ending.saw(&ChatEvent::error("model_failed", "no"));
        assert!(ending.at_end().is_none(), "a failed turn is an end");
        // A resume replays an earlier turn's `done`, then follows a later
        // turn that is cut: that cut must still be told.
        ending.saw(&ChatEvent::Done {
            ok: true,
            message_seq: 4,
            usage: None,
            model: None,
        });
        assert!(ending.at_end().is_none());
        ending.saw(&piece());
        match ending.at_end() {
            Some(ChatEvent::Error { code, .. }) => assert_eq!(code, "stream_cut"),
            other => panic!("expected stream_cut, got {other:?}"),
        }
    }

    #[test]
    fn one_event_per_block() {
        let e = ChatEvent::Message {
            content: "two\nlines".into(),
        };
        assert!(!event(None, &e).contains("id:"));
        let text = event(Some(3), &e);
        assert_eq!(
            text,
            "id: 3\nevent: message\ndata: {\"type\":\"message\",\"content\":\"two\\nlines\"}\n\n"
        );
        assert_eq!(text.matches("\n\n").count(), 1);
    }
}
