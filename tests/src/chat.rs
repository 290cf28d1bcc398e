//! Chat clients for the tests: an SSE client that parses the stream with a
//! real SSE parser (`eventsource-stream`), and a WebSocket client
//! (`tungstenite`) on loopback.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// `id:`.
    pub id: String,
    /// `event:`.
    pub event: String,
    /// `data:`, parsed as JSON.
    pub data: Value,
}

/// Parses an event-stream body.
pub fn parse_sse(body: &[u8]) -> Vec<Sse> {
    // Feed it in small pieces, as a network would.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let events = futures::executor::block_on(
        futures::stream::iter(chunks)
            .eventsource()
            .collect::<Vec<_>>(),
    );
    events
        .into_iter()
        .map(|e| e.expect("a well-formed SSE event"))
        .map(|e| Sse {
            id: e.id,
            event: e.event,
            data: serde_json::from_str(&e.data)
                .unwrap_or_else(|err| panic!("data is not JSON ({err}): {}", e.data)),
        })
        .collect()
}

/// A connected WebSocket client.
pub struct Socket {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// Connects to `url` (`ws://127.0.0.1:port/...`) with extra headers.
    pub fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, _) = tungstenite::connect(request)?;
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
        }
        Ok(Self { ws })
    }

    /// Sends a text frame.
    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next JSON event.
    pub fn next_event(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read a frame") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON event"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Events until `done` or `error`, inclusive.
    pub fn events_until_end(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event();
            let end = matches!(e["type"].as_str(), Some("done" | "error"));
            out.push(e);
            if end {
                return out;
            }
        }
    }

    /// The next frame of any kind (a close, or an error once it is closed).
    pub fn next_frame(&mut self) -> Result<Message, tungstenite::Error> {
        self.ws.read()
    }

    /// Closes the connection.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// The answer's text: the `message` events' content, in order.
pub fn answer_text(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .filter_map(|e| e["content"].as_str())
        .collect()
}
