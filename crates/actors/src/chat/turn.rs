//! One turn as a sans-IO state machine: user message → model → tool calls →
//! tool results → model → … → answer, or a failure at any point.
//!
//! The machine performs no I/O and reads no clock. The shell feeds it what
//! happened (a piece of generated text, a tool call, the end of a generation,
//! a tool's result, a failure, the time when the alarm fires) and performs the
//! [`Effect`]s it returns, in order. Once the turn has ended every further
//! input is ignored, so a generation that finishes after the turn timed out,
//! or a tool result that arrives late, changes nothing: the shell never needs
//! to cancel a future to keep the history consistent.
//!
//! What the history gets is decided here: the user message is stored by the
//! shell before the machine starts; a tool round (the assistant message with
//! its text and calls, then every result) is stored whole, only once all its
//! results are in; the answer is stored only when the generation completed.
//! A turn that fails leaves the user message and its complete rounds, never
//! half a round or a partial answer.

use crate::generation::routing::{RouteError, MODEL_FAILED};
use crate::ports::{ChatMessage, Role, ToolCall};
use protocol::chat::{ChatEvent, Usage};
use protocol::limits::TokenUsage;
use serde_json::{json, Value};

/// Most rounds of tool calls in one turn; the next round is refused.
pub const MAX_TOOL_ITERATIONS: u32 = 4;

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Store the event under the session's next sequence id, then send it to
    /// every listener of the turn.
    Emit(ChatEvent),
    /// Ask the model, with the stored history as context; report what it
    /// produces with [`TurnMachine::on_text`], [`TurnMachine::on_tool_call`],
    /// [`TurnMachine::on_usage`] and then [`TurnMachine::on_generated`].
    Generate,
    /// Run this tool; report with [`TurnMachine::on_tool_result`].
    RunTool(ToolCall),
    /// Append these messages to the history, in order (a complete tool round).
    Store(Vec<(ChatMessage, Option<Usage>)>),
    /// The turn is answered: store `answer`, mark the turn done, and emit
    /// `done` with the stored message's sequence number, in one step.
    Complete {
        /// The assistant's answer.
        answer: ChatMessage,
        /// Token usage of the generation that produced it.
        usage: Option<Usage>,
    },
    /// The turn failed: mark it failed and emit `error` with this code and
    /// message, in one step.
    Fail {
        /// Machine-readable code (`model_failed`, `tool_limit`, `turn_timeout`, ...).
        code: String,
        /// Human explanation.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for the model.
    Generating,
    /// Running the calls of the last generation, one at a time; `next` is the
    /// one whose result is awaited.
    Tools { next: usize },
    /// Answered or failed.
    Ended,
}

/// The state of one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnMachine {
    id: u64,
    deadline_ms: u64,
    max_result_bytes: usize,
    iteration: u32,
    phase: Phase,
    /// Text of the current generation.
    text: String,
    /// Tool calls of the current generation.
    calls: Vec<ToolCall>,
    /// Usage of the current generation.
    usage: Option<Usage>,
    /// Usage of the turn's ended generations, summed; `None` until a model
    /// reports any.
    total: Option<TokenUsage>,
    /// Results of the current round, as stored (possibly truncated).
    results: Vec<String>,
    /// The model that served the turn's latest successful generation.
    model: Option<String>,
}

fn message(role: Role, content: String) -> ChatMessage {
    ChatMessage {
        role,
        content,
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
    }
}

/// `result` as JSON text, at most `max` bytes: a larger result becomes
/// `{"truncated":true,"originalBytes":n,"preview":"..."}`, still valid JSON
/// for the model to read.
pub fn bounded_result(result: &Value, max: usize) -> String {
    let text = result.to_string();
    if text.len() <= max {
        return text;
    }
    let mut preview = String::new();
    // Escaping can grow a character to six bytes; leave room for the wrapper.
    let room = max.saturating_sub(96) / 6;
    for c in text.chars() {
        if preview.len() + c.len_utf8() > room {
            break;
        }
        preview.push(c);
    }
    json!({ "truncated": true, "originalBytes": text.len(), "preview": preview }).to_string()
}

impl TurnMachine {
    /// Starts turn `id` (the user message is stored) at `now_ms`; it fails
    /// with `turn_timeout` if it has not ended by `now_ms + timeout_ms`.
    pub fn start(
        id: u64,
        now_ms: u64,
        timeout_ms: u64,
        max_result_bytes: usize,
    ) -> (Self, Vec<Effect>) {
        let machine = Self {
            id,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            max_result_bytes,
            iteration: 0,
            phase: Phase::Generating,
            text: String::new(),
            calls: Vec::new(),
            usage: None,
            total: None,
            results: Vec::new(),
            model: None,
        };
        (machine, vec![Effect::Generate])
    }

    /// The turn's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the turn has been answered or has failed.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// When the turn times out, while it runs (for the alarm).
    pub fn deadline(&self) -> Option<u64> {
        (!self.is_ended()).then_some(self.deadline_ms)
    }

    /// A piece of the answer's text.
    pub fn on_text(&mut self, piece: String) -> Vec<Effect> {
        if self.phase != Phase::Generating || piece.is_empty() {
            return vec![];
        }
        self.text.push_str(&piece);
        vec![Effect::Emit(ChatEvent::Message { content: piece })]
    }

    /// The model called a tool (run once the generation has ended).
    pub fn on_tool_call(&mut self, call: ToolCall) {
        if self.phase == Phase::Generating {
            self.calls.push(call);
        }
    }

    /// The model reported its token counts.
    pub fn on_usage(&mut self, usage: Usage) {
        if self.phase == Phase::Generating {
            self.usage = Some(usage);
        }
    }

    /// The generation ended, successfully or with `Err(message)`
    /// (`model_failed`).
    pub fn on_generated(&mut self, outcome: Result<(), String>) -> Vec<Effect> {
        self.end_generation(outcome.map(|()| None).map_err(|m| (MODEL_FAILED, m)))
    }

    /// A routed generation ended: served by `model`, or failed with its
    /// code (`model_failed`, `model_timeout`).
    pub fn on_routed(&mut self, outcome: Result<String, RouteError>) -> Vec<Effect> {
        self.end_generation(outcome.map(Some).map_err(|e| (e.code, e.message)))
    }

    /// The model that served the turn's latest successful generation (its
    /// usage is charged at that model's price).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn end_generation(
        &mut self,
        outcome: Result<Option<String>, (&'static str, String)>,
    ) -> Vec<Effect> {
        if self.phase != Phase::Generating {
            return vec![];
        }
        if let Some(u) = &self.usage {
            let total = self.total.get_or_insert_with(TokenUsage::default);
            total.input_tokens += u64::from(u.prompt_tokens);
            total.output_tokens += u64::from(u.completion_tokens);
        }
        let served_by = match outcome {
            Ok(model) => model,
            // Nothing of the partial answer is stored.
            Err((code, message)) => return self.fail(code, message),
        };
        if served_by.is_some() {
            self.model = served_by;
        }
        if self.calls.is_empty() {
            self.phase = Phase::Ended;
            return vec![Effect::Complete {
                answer: message(Role::Assistant, std::mem::take(&mut self.text)),
                usage: self.usage.take(),
            }];
        }
        if self.iteration >= MAX_TOOL_ITERATIONS {
            return self.fail(
                "tool_limit",
                "the model kept calling tools; the turn was stopped".to_owned(),
            );
        }
        self.phase = Phase::Tools { next: 0 };
        self.results.clear();
        self.call_effects(0)
    }

    fn call_effects(&self, index: usize) -> Vec<Effect> {
        match self.calls.get(index) {
            Some(call) => vec![
                Effect::Emit(ChatEvent::ToolCall {
                    id: call.id.clone(),
                    tool: call.name.clone(),
                    arguments: call.arguments.to_string(),
                }),
                Effect::RunTool(call.clone()),
            ],
            None => vec![],
        }
    }

    /// The result of tool call `call_id` (a JSON value; `is_error` when the
    /// tool refused or failed, which the model is told and may recover from).
    pub fn on_tool_result(&mut self, call_id: &str, result: &Value, is_error: bool) -> Vec<Effect> {
        let Phase::Tools { next } = self.phase else {
            return vec![];
        };
        let Some(call) = self.calls.get(next).filter(|c| c.id == call_id).cloned() else {
            // Not the result awaited (late, or for another call): ignore it.
            return vec![];
        };
        let stored = bounded_result(result, self.max_result_bytes);
        self.results.push(stored.clone());
        let mut effects = vec![Effect::Emit(ChatEvent::ToolResult {
            id: call.id.clone(),
            tool: call.name.clone(),
            result: stored,
            is_error,
        })];
        if next + 1 < self.calls.len() {
            self.phase = Phase::Tools { next: next + 1 };
            effects.extend(self.call_effects(next + 1));
            return effects;
        }
        // The round is complete: store it whole, with the text the model
        // produced beside its calls, then ask the model again.
        let mut assistant = message(Role::Assistant, std::mem::take(&mut self.text));
        assistant.tool_calls = std::mem::take(&mut self.calls);
        let mut round = Vec::with_capacity(1 + assistant.tool_calls.len());
        let tools: Vec<(ChatMessage, Option<Usage>)> = assistant
            .tool_calls
            .iter()
            .zip(self.results.drain(..))
            .map(|(call, content)| {
                let mut m = message(Role::Tool, content);
                m.tool_call_id = Some(call.id.clone());
                m.name = Some(call.name.clone());
                (m, None)
            })
            .collect();
        round.push((assistant, self.usage.take()));
        round.extend(tools);
        effects.push(Effect::Store(round));
        self.iteration += 1;
        self.phase = Phase::Generating;
        effects.push(Effect::Generate);
        effects
    }

    /// The time is `now_ms` (the alarm fired): past the deadline, the turn fails.
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<Effect> {
        if self.is_ended() || now_ms < self.deadline_ms {
            return vec![];
        }
        self.fail(
            "turn_timeout",
            "the turn took too long and was stopped".to_owned(),
        )
    }

    /// What the turn's model calls used so far, summed over its ended
    /// generations (what its limiter is settled with).
    pub fn used(&self) -> Option<TokenUsage> {
        self.total
    }

    /// Ends the turn with an error (a failure of the shell's own, such as
    /// storage, or the model); ignored once the turn has ended.
    pub fn fail(&mut self, code: &str, message: String) -> Vec<Effect> {
        if self.is_ended() {
            return vec![];
        }
        self.phase = Phase::Ended;
        vec![Effect::Fail {
            code: code.to_owned(),
            message,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: u64 = 1_000;
    const MAX_RESULT: usize = 4_096;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "vector_search".into(),
            arguments: json!({ "query": "q" }),
        }
    }

    fn start() -> TurnMachine {
        let (m, fx) = TurnMachine::start(7, 100, TIMEOUT, MAX_RESULT);
        assert_eq!(fx, vec![Effect::Generate]);
        m
    }

    fn kinds(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Emit(ev) => ev.name(),
                Effect::Generate => "generate",
                Effect::RunTool(_) => "run_tool",
                Effect::Store(_) => "store",
                Effect::Complete { .. } => "complete",
                Effect::Fail { .. } => "fail",
            })
            .collect()
    }

    fn usage(n: u32) -> Usage {
        Usage {
            prompt_tokens: n,
            completion_tokens: n,
        }
    }

    #[test]
    fn a_plain_answer_is_streamed_then_stored() {
        let mut m = start();
        assert_eq!(kinds(&m.on_text("Hel".into())), vec!["message"]);
        assert_eq!(kinds(&m.on_text("lo".into())), vec!["message"]);
        m.on_usage(usage(3));
        let fx = m.on_generated(Ok(()));
        let [Effect::Complete { answer, usage: u }] = fx.as_slice() else {
            panic!("{fx:?}")
        };
        assert_eq!(
            (answer.role, answer.content.as_str()),
            (Role::Assistant, "Hello")
        );
        assert_eq!(*u, Some(usage(3)));
        assert!(m.is_ended());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn a_turns_usage_is_summed_over_its_generations() {
        let mut m = start();
        assert_eq!(m.used(), None, "nothing reported yet");
        m.on_tool_call(call("a"));
        m.on_usage(usage(5));
        m.on_generated(Ok(()));
        assert_eq!(m.used().map(|u| u.total()), Some(10));
        m.on_tool_result("a", &json!({}), false);
        // A stream may report usage more than once: the last report of a
        // generation counts, once.
        m.on_usage(usage(1));
        m.on_usage(usage(2));
        m.on_generated(Ok(()));
        let used = m.used().unwrap();
        assert_eq!((used.input_tokens, used.output_tokens), (7, 7));
        // A failed generation's reported usage is counted too.
        let mut failed = start();
        failed.on_usage(usage(4));
        failed.on_generated(Err("boom".into()));
        assert_eq!(failed.used().map(|u| u.total()), Some(8));
    }

    #[test]
    fn a_tool_round_is_stored_whole_then_the_model_is_asked_again() {
        let mut m = start();
        m.on_tool_call(call("a"));
        m.on_tool_call(call("b"));
        m.on_usage(usage(5));
        let fx = m.on_generated(Ok(()));
        assert_eq!(kinds(&fx), vec!["tool_call", "run_tool"]);
        assert_eq!(fx[1], Effect::RunTool(call("a")));
        // A result for a call that is not awaited changes nothing.
        assert!(m.on_tool_result("b", &json!({}), false).is_empty());
        let fx = m.on_tool_result("a", &json!({ "matches": [] }), false);
        assert_eq!(kinds(&fx), vec!["tool_result", "tool_call", "run_tool"]);
        let fx = m.on_tool_result("b", &json!({ "error": "x" }), true);
        assert_eq!(kinds(&fx), vec!["tool_result", "store", "generate"]);
        let Effect::Store(round) = &fx[1] else {
            panic!()
        };
        let roles: Vec<Role> = round.iter().map(|(m, _)| m.role).collect();
        assert_eq!(roles, vec![Role::Assistant, Role::Tool, Role::Tool]);
        assert_eq!(round[0].0.tool_calls, vec![call("a"), call("b")]);
        assert_eq!(round[0].1, Some(usage(5)));
        assert_eq!(round[1].0.tool_call_id.as_deref(), Some("a"));
        assert_eq!(round[2].0.content, r#"{"error":"x"}"#);
        // The next generation answers.
        m.on_text("done".into());
        let fx = m.on_generated(Ok(()));
        assert_eq!(kinds(&fx), vec!["complete"]);
    }

    /// Bug: a model that returns text and tool calls together; the client saw
    /// the text but the stored assistant message was empty.
    #[test]
    fn text_beside_tool_calls_is_stored_with_them() {
        let mut m = start();
        assert_eq!(
            kinds(&m.on_text("Let me look that up.".into())),
            vec!["message"]
        );
        m.on_tool_call(call("a"));
        m.on_generated(Ok(()));
        let fx = m.on_tool_result("a", &json!({}), false);
        let Some(Effect::Store(round)) = fx.iter().find(|e| matches!(e, Effect::Store(_))) else {
            panic!("{fx:?}")
        };
        assert_eq!(round[0].0.content, "Let me look that up.");
        assert_eq!(round[0].0.tool_calls.len(), 1);
    }

    #[test]
    fn a_failed_generation_stores_nothing_of_its_partial_answer() {
        let mut m = start();
        m.on_text("partial".into());
        let fx = m.on_generated(Err("upstream reset".into()));
        assert_eq!(
            fx,
            vec![Effect::Fail {
                code: "model_failed".into(),
                message: "upstream reset".into()
            }]
        );
        assert!(m.is_ended());
    }

    #[test]
    fn the_tool_loop_is_bounded() {
        let mut m = start();
        for round in 0..MAX_TOOL_ITERATIONS {
            let id = format!("c{round}");
            m.on_tool_call(call(&id));
            assert_eq!(
                kinds(&m.on_generated(Ok(()))),
                vec!["tool_call", "run_tool"]
            );
            assert_eq!(
                kinds(&m.on_tool_result(&id, &json!({}), false)),
                vec!["tool_result", "store", "generate"]
            );
        }
        m.on_tool_call(call("again"));
        let fx = m.on_generated(Ok(()));
        assert!(
            matches!(&fx[..], [Effect::Fail { code, .. }] if code == "tool_limit"),
            "{fx:?}"
        );
    }

    #[test]
    fn a_timeout_ends_the_turn_and_late_inputs_change_nothing() {
        let mut m = start();
        m.on_tool_call(call("a"));
        m.on_generated(Ok(()));
        assert_eq!(m.deadline(), Some(100 + TIMEOUT));
        assert!(m.on_timeout(100 + TIMEOUT - 1).is_empty(), "not yet");
        let fx = m.on_timeout(100 + TIMEOUT);
        assert!(matches!(&fx[..], [Effect::Fail { code, .. }] if code == "turn_timeout"));
        // The tool finishes after the timeout: nothing is stored or emitted.
        assert!(m.on_tool_result("a", &json!({}), false).is_empty());
        assert!(m.on_text("late".into()).is_empty());
        assert!(m.on_generated(Ok(())).is_empty());
        assert!(m.on_timeout(u64::MAX).is_empty());
        assert!(m.fail("x", "y".into()).is_empty());
    }

    #[test]
    fn a_timeout_while_generating_and_every_failure_order() {
        // Timeout first, then the generation fails: one failure only.
        let mut m = start();
        m.on_text("a".into());
        assert_eq!(kinds(&m.on_timeout(u64::MAX)), vec!["fail"]);
        assert!(m.on_generated(Err("late".into())).is_empty());
        // Generation fails first, then the timeout: one failure only.
        let mut m = start();
        assert_eq!(kinds(&m.on_generated(Err("x".into()))), vec!["fail"]);
        assert!(m.on_timeout(u64::MAX).is_empty());
        // A storage failure in the middle of a round.
        let mut m = start();
        m.on_tool_call(call("a"));
        m.on_generated(Ok(()));
        assert_eq!(
            kinds(&m.fail("storage_failed", "disk".into())),
            vec!["fail"]
        );
        assert!(m.on_tool_result("a", &json!({}), false).is_empty());
    }

    #[test]
    fn large_tool_results_are_stored_truncated_as_json() {
        let big = json!({ "text": "é".repeat(10_000) });
        let (mut m, _) = TurnMachine::start(1, 0, TIMEOUT, 1_000);
        m.on_tool_call(call("a"));
        m.on_generated(Ok(()));
        let fx = m.on_tool_result("a", &big, false);
        let Effect::Emit(ChatEvent::ToolResult { result, .. }) = &fx[0] else {
            panic!()
        };
        assert!(result.len() <= 1_000, "{}", result.len());
        let parsed: Value = serde_json::from_str(result).unwrap();
        assert_eq!(parsed["truncated"], true);
        assert_eq!(parsed["originalBytes"], big.to_string().len());
        assert!(bounded_result(&json!({"a": 1}), 1_000) == r#"{"a":1}"#);
    }

    #[test]
    fn a_routed_turn_records_its_model_and_fails_with_the_routers_code() {
        let mut m = start();
        m.on_tool_call(call("a"));
        m.on_routed(Ok("@cf/fallback".into()));
        assert_eq!(m.model(), Some("@cf/fallback"));
        m.on_tool_result("a", &json!({}), false);
        m.on_text("ok".into());
        let fx = m.on_routed(Ok("@cf/primary".into()));
        assert_eq!(kinds(&fx), vec!["complete"]);
        assert_eq!(m.model(), Some("@cf/primary"), "the latest one served");
        let mut timed_out = start();
        let fx = timed_out.on_routed(Err(RouteError {
            code: "model_timeout",
            message: "every model stalled".into(),
        }));
        assert!(
            matches!(&fx[..], [Effect::Fail { code, .. }] if code == "model_timeout"),
            "{fx:?}"
        );
        assert!(timed_out.is_ended());
        assert_eq!(timed_out.model(), None);
    }
}
