//! Fault injection for tests: a [`Generator`] wrapper that the shell puts
//! around each generator of a turn's model chain only when the deployment
//! sets `FAULT_INJECTION` (the end-to-end tests' configuration, never a
//! production one). A marker in the user's message picks the fault, so
//! concurrent tests on one server do not disturb each other; the turn logic
//! and the router know nothing of it.
//!
//! Two kinds of markers:
//! - `[[fail-model]]`, `[[slow-model]]`, `[[hang-model]]`: the answer's
//!   generation fails after its text, streams slowly, or hangs after its
//!   first piece, whichever model of the chain serves it;
//! - `[[model-<position>-<fault>]]`, `<position>` a place in the chain (`0`
//!   the default, `1` its first fallback, ...) or `all`, `<fault>` one of
//!   `429` (Workers AI's "out of capacity", 3040), `500` (an upstream
//!   failure) or `stall` (nothing is ever produced): every generation of
//!   the turn by that model fails so, before any output. They drive the
//!   router: retries, fallbacks and the first-output timeout.

use crate::ports::{GenerateRequest, GenerationEvent, Generator, PortError, Role, Sleep};

/// Fails the generation that follows a tool round, after it streamed its text.
pub const FAIL_MODEL_MARKER: &str = "[[fail-model]]";
/// Streams the answer slowly ([`SLOW_PIECE_MS`] between pieces).
pub const SLOW_MODEL_MARKER: &str = "[[slow-model]]";
/// Never finishes the generation that follows a tool round, after its first piece.
pub const HANG_MODEL_MARKER: &str = "[[hang-model]]";
/// Delay between the pieces of a slow answer.
pub const SLOW_PIECE_MS: u64 = 40;

/// A fault of one place in the model chain, before any output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFault {
    /// Refused as overloaded (HTTP 429, Workers AI code 3040).
    Overloaded,
    /// Failed upstream (HTTP 500).
    Upstream,
    /// Never produces anything.
    Stall,
}

/// The fault the message asks of the model at `position` in the chain
/// (`[[model-<position>-<fault>]]` or `[[model-all-<fault>]]`).
pub fn chain_fault_for(request: &GenerateRequest, position: usize) -> Option<ChainFault> {
    let question = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)?;
    let mut rest = question.content.as_str();
    while let Some(start) = rest.find("[[model-") {
        let after = rest.get(start + "[[model-".len()..).unwrap_or_default();
        let Some(end) = after.find("]]") else { break };
        let marker = after.get(..end).unwrap_or_default();
        rest = after.get(end..).unwrap_or_default();
        let Some((place, fault)) = marker.split_once('-') else {
            continue;
        };
        let here = place == "all" || place.parse::<usize>().ok() == Some(position);
        let fault = match fault {
            "429" => ChainFault::Overloaded,
            "500" => ChainFault::Upstream,
            "stall" => ChainFault::Stall,
            _ => continue,
        };
        if here {
            return Some(fault);
        }
    }
    None
}

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

/// See the module documentation.
pub struct FaultInjecting<G, S> {
    inner: G,
    sleep: S,
    position: usize,
}

impl<G: Generator, S: Sleep> FaultInjecting<G, S> {
    /// Wraps `inner`, the model at `position` in the turn's chain.
    pub fn new(inner: G, sleep: S, position: usize) -> Self {
        Self {
            inner,
            sleep,
            position,
        }
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
        let injected = |status: u16, code: Option<u32>| PortError::Upstream {
            service: "Workers AI",
            status,
            code,
            message: format!(
                "injected failure of model {} (FAULT_INJECTION)",
                self.position
            ),
        };
        match chain_fault_for(request, self.position) {
            Some(ChainFault::Overloaded) => return Err(injected(429, Some(3040))),
            Some(ChainFault::Upstream) => return Err(injected(500, None)),
            Some(ChainFault::Stall) => return futures::future::pending().await,
            None => {}
        }
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
            options: Default::default(),
            tool_choice: Default::default(),
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
        let g = FaultInjecting::new(Words, &counter, 0);
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

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::ports::ChatMessage;

    fn asking(text: &str) -> GenerateRequest {
        GenerateRequest {
            options: Default::default(),
            tool_choice: Default::default(),
            model: "m".into(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: text.into(),
                tool_calls: vec![],
                tool_call_id: None,
                name: None,
            }],
            tools: vec![],
            max_tokens: 10,
        }
    }

    #[test]
    fn chain_markers_pick_a_place_and_a_fault() {
        let r = asking("q [[model-0-429]] [[model-1-stall]]");
        assert_eq!(chain_fault_for(&r, 0), Some(ChainFault::Overloaded));
        assert_eq!(chain_fault_for(&r, 1), Some(ChainFault::Stall));
        assert_eq!(chain_fault_for(&r, 2), None);
        let all = asking("[[model-all-stall]] q");
        assert_eq!(chain_fault_for(&all, 3), Some(ChainFault::Stall));
        assert_eq!(
            chain_fault_for(&asking("[[model-0-500]]"), 0),
            Some(ChainFault::Upstream)
        );
        for none in [
            "q",
            "[[model-0-teapot]]",
            "[[model-x-429]]",
            "[[model-0-429",
        ] {
            assert_eq!(chain_fault_for(&asking(none), 0), None, "{none}");
        }
    }

    struct Instant;
    impl Sleep for Instant {
        async fn sleep(&self, _: u64) {}
    }

    #[test]
    fn chain_faults_fail_before_any_output() {
        let g = FaultInjecting::new(
            crate::generation::embedded::ExtractiveGenerator::default(),
            Instant,
            0,
        );
        let mut seen = Vec::new();
        let out = futures::executor::block_on(
            g.generate(&asking("q [[model-0-429]]"), &mut |e| seen.push(e)),
        );
        assert!(matches!(out, Err(PortError::Upstream { status: 429, .. })));
        assert!(seen.is_empty());
        let second = FaultInjecting::new(
            crate::generation::embedded::ExtractiveGenerator::default(),
            Instant,
            1,
        );
        let out = futures::executor::block_on(
            second.generate(&asking("q [[model-0-429]]"), &mut |e| seen.push(e)),
        );
        assert!(out.is_ok(), "the fallback is not affected");
    }
}
