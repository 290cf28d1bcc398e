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

#[cfg(test)]
mod tests {
    use super::*;

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
