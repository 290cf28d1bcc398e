//! Fault injection for tests: a [`Generator`] wrapper that the shell puts
//! around the real generator only when the deployment sets `FAULT_INJECTION`
//! (the end-to-end tests' configuration, never a production one). A marker in
//! the user's message picks the fault, so concurrent tests on one server do
//! not disturb each other; the turn logic knows nothing of it.

use crate::ports::{GenerateRequest, GenerationEvent, Generator, PortError, Role};

/// Fails the generation that follows a tool round, after it streamed its text.
pub const FAIL_MODEL_MARKER: &str = "[[fail-model]]";
/// Streams the answer slowly ([`SLOW_PIECE_MS`] between pieces).
pub const SLOW_MODEL_MARKER: &str = "[[slow-model]]";
/// Never finishes the generation that follows a tool round, after its first piece.
pub const HANG_MODEL_MARKER: &str = "[[hang-model]]";
/// Delay between the pieces of a slow answer.
pub const SLOW_PIECE_MS: u64 = 40;

/// Which fault a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: the generation runs as it would.
    None,
    /// Fail after streaming.
    Fail,
    /// Stream slowly.
    Slow,
    /// Hang after the first piece.
    Hang,
}

/// The fault for `request`: taken from the last user message; `Fail` and
/// `Hang` apply only once a tool round has happened (the answer's generation).
pub fn fault_for(request: &GenerateRequest) -> Fault {
    let last_user = request.messages.iter().rposition(|m| m.role == Role::User);
    let Some(question) = last_user.and_then(|i| request.messages.get(i)) else {
        return Fault::None;
    };
    let after_tools = last_user.is_some_and(|i| {
        request
            .messages
            .iter()
            .skip(i + 1)
            .any(|m| m.role == Role::Tool)
    });
    let says = |marker: &str| question.content.contains(marker);
    if says(FAIL_MODEL_MARKER) && after_tools {
        Fault::Fail
    } else if says(HANG_MODEL_MARKER) && after_tools {
        Fault::Hang
    } else if says(SLOW_MODEL_MARKER) {
        Fault::Slow
    } else {
        Fault::None
    }
}

/// Waits without blocking the isolate (a timer of the runtime).
#[allow(async_fn_in_trait)]
pub trait Sleep {
    /// Resolves after `ms` milliseconds.
    async fn sleep(&self, ms: u64);
}

/// The runtime's timer (`setTimeout`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeSleep;

impl Sleep for RuntimeSleep {
    async fn sleep(&self, ms: u64) {
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }
}

/// See the module documentation.
pub struct FaultInjecting<G, S> {
    inner: G,
    sleep: S,
}

impl<G: Generator, S: Sleep> FaultInjecting<G, S> {
    /// Wraps `inner`.
    pub fn new(inner: G, sleep: S) -> Self {
        Self { inner, sleep }
    }
}

impl<G: Generator, S: Sleep> Generator for FaultInjecting<G, S> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        let fault = fault_for(request);
        if fault == Fault::None {
            return self.inner.generate(request, on_event).await;
        }
        // Generate in full, then hand the events on as the fault dictates.
        let mut events = Vec::new();
        self.inner
            .generate(request, &mut |e| events.push(e))
            .await?;
        for event in events {
            let text = matches!(event, GenerationEvent::Text(_));
            on_event(event);
            match (fault, text) {
                (Fault::Slow, true) => self.sleep.sleep(SLOW_PIECE_MS).await,
                (Fault::Hang, true) => futures::future::pending::<()>().await,
                _ => {}
            }
        }
        match fault {
            Fault::Fail => Err(PortError::Failed {
                service: "embedded generator",
                message: "injected failure in the middle of the answer (FAULT_INJECTION)".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ports::{ChatMessage, ToolCall};

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        }
    }

    fn request(messages: Vec<ChatMessage>) -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            messages,
            tools: vec![],
            max_tokens: 10,
        }
    }

    struct Words;
    impl Generator for Words {
        fn model(&self) -> &str {
            "words"
        }
        async fn generate(
            &self,
            _: &GenerateRequest,
            on_event: &mut dyn FnMut(GenerationEvent),
        ) -> Result<(), PortError> {
            on_event(GenerationEvent::Text("a ".into()));
            on_event(GenerationEvent::Text("b".into()));
            Ok(())
        }
    }

    struct Counting(std::cell::Cell<u32>);
    impl Sleep for &Counting {
        async fn sleep(&self, _: u64) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn markers_pick_the_fault() {
        let tool = ChatMessage {
            tool_call_id: Some("c".into()),
            ..msg(Role::Tool, "{}")
        };
        let call = ChatMessage {
            tool_calls: vec![ToolCall {
                id: "c".into(),
                name: "t".into(),
                arguments: serde_json::json!({}),
            }],
            ..msg(Role::Assistant, "")
        };
        let first = request(vec![msg(Role::User, "x [[fail-model]]")]);
        assert_eq!(fault_for(&first), Fault::None, "only after a tool round");
        let second = request(vec![
            msg(Role::User, "x [[fail-model]]"),
            call.clone(),
            tool.clone(),
        ]);
        assert_eq!(fault_for(&second), Fault::Fail);
        let slow = request(vec![msg(Role::User, "[[slow-model]] q")]);
        assert_eq!(fault_for(&slow), Fault::Slow);
        let hang = request(vec![msg(Role::User, "[[hang-model]]"), call, tool]);
        assert_eq!(fault_for(&hang), Fault::Hang);
        assert_eq!(fault_for(&request(vec![])), Fault::None);
    }

    #[test]
    fn failing_and_slow_generations() {
        let counter = Counting(std::cell::Cell::new(0));
        let g = FaultInjecting::new(Words, &counter);
        let mut seen = Vec::new();
        let slow = request(vec![msg(Role::User, "[[slow-model]]")]);
        futures::executor::block_on(g.generate(&slow, &mut |e| seen.push(e))).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(counter.0.get(), 2, "one pause per piece");
        let fail = request(vec![
            msg(Role::User, "[[fail-model]]"),
            msg(Role::Tool, "{}"),
        ]);
        let mut seen = Vec::new();
        let out = futures::executor::block_on(g.generate(&fail, &mut |e| seen.push(e)));
        assert!(out.is_err());
        assert_eq!(seen.len(), 2, "it streamed before it failed");
    }
}
