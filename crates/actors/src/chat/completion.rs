//! A stateless completion (`POST /v1/chat/completions`) as a sans-IO state
//! machine: conversation → model → (the tenant's tools, run here → model)* →
//! answer, or the client's tool calls, or a failure.
//!
//! Nothing is stored: the client holds the conversation. The machine reads
//! no clock and performs no I/O; the shell feeds it the model's output and
//! the tenant tools' results, and performs the [`Effect`]s it returns. Stop
//! sequences are applied here, on the streamed text: a piece that might be
//! the start of a stop sequence is held back until the next piece says
//! whether it is, so the client never sees any part of a stop sequence.

use super::turn::{bounded_result, MAX_TOOL_ITERATIONS};
use crate::generation::routing::RouteError;
use crate::ports::{ChatMessage, GenerateRequest, Role, ToolCall, ToolSpec};
use protocol::chat::Usage;
use protocol::completion::{
    CompletionEvent, CompletionMessage, FinishReason, GenerationOptions, Speaker, ToolChoice,
};
use protocol::limits::TokenUsage;
use serde_json::Value;

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this event to the client. `Done` and `Error` are the last.
    Emit(CompletionEvent),
    /// Ask the model (routed over the chain; `model` is filled per model);
    /// report with `on_text`, `on_tool_call`, `on_usage`, then `on_routed`.
    Generate(GenerateRequest),
    /// Run this tenant tool; report with [`CompletionMachine::on_tool_result`].
    RunTool(ToolCall),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Generating,
    /// Running the tenant tool calls of the last generation, in order.
    Tools {
        next: usize,
    },
    Ended,
}

/// The state of one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionMachine {
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    tenant_tools: Vec<String>,
    tool_choice: ToolChoice,
    options: GenerationOptions,
    max_tokens: u32,
    max_result_bytes: usize,
    phase: Phase,
    iteration: u32,
    /// Text of the current generation, as sent.
    text: String,
    /// Text received but held back: it may be the start of a stop sequence.
    held: String,
    /// A stop sequence was met: the rest of the answer is dropped.
    stopped: bool,
    calls: Vec<ToolCall>,
    usage: Option<Usage>,
    total: TokenUsage,
    reported: bool,
    results: Vec<String>,
    model: Option<String>,
}

/// Converts the client's conversation into the model's messages: text parts
/// already joined; a tool message is named after the call it answers (the
/// assistant message before it says which function that was).
pub fn model_messages(messages: &[CompletionMessage]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        let role = match m.role {
            Speaker::System => Role::System,
            Speaker::User => Role::User,
            Speaker::Assistant => Role::Assistant,
            Speaker::Tool => Role::Tool,
        };
        let name = m.tool_call_id.as_ref().and_then(|id| {
            out.iter()
                .rev()
                .flat_map(|prior| prior.tool_calls.iter())
                .find(|c| &c.id == id)
                .map(|c| c.name.clone())
        });
        out.push(ChatMessage {
            role,
            content: m.content.clone(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    // A model's arguments that are not JSON are passed on as text.
                    arguments: serde_json::from_str(&c.arguments)
                        .unwrap_or_else(|_| Value::String(c.arguments.clone())),
                })
                .collect(),
            tool_call_id: m.tool_call_id.clone(),
            name,
        });
    }
    out
}

/// The longest suffix of `text` that is a proper prefix of one of `stops`
/// (what must be held back until the next piece arrives), in bytes.
fn held_suffix(text: &str, stops: &[String]) -> usize {
    let mut longest = 0;
    for stop in stops {
        for (i, _) in text.char_indices() {
            let tail = text.get(i..).unwrap_or_default();
            if tail.len() < stop.len() && stop.starts_with(tail) {
                longest = longest.max(tail.len());
                break;
            }
        }
    }
    longest
}

impl CompletionMachine {
    /// A completion of `messages` with `tools` (the client's and the tenant's
    /// specs together); `tenant_tools` names those the shell runs itself.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        tenant_tools: Vec<String>,
        tool_choice: ToolChoice,
        options: GenerationOptions,
        max_tokens: u32,
        max_result_bytes: usize,
    ) -> (Self, Vec<Effect>) {
        let machine = Self {
            messages,
            tools,
            tenant_tools,
            tool_choice,
            options,
            max_tokens,
            max_result_bytes,
            phase: Phase::Generating,
            iteration: 0,
            text: String::new(),
            held: String::new(),
            stopped: false,
            calls: Vec::new(),
            usage: None,
            total: TokenUsage::default(),
            reported: false,
            results: Vec::new(),
            model: None,
        };
        let first = machine.request();
        (machine, vec![Effect::Generate(first)])
    }

    /// This round's `tool_choice`: once the tenant's tools have run, the
    /// model is free to answer (a `required` or named choice asked for one
    /// call, not a loop of them).
    fn round_choice(&self) -> ToolChoice {
        if self.iteration > 0 && self.tool_choice != ToolChoice::None {
            ToolChoice::Auto
        } else {
            self.tool_choice.clone()
        }
    }

    fn request(&self) -> GenerateRequest {
        let tool_choice = self.round_choice();
        GenerateRequest {
            model: String::new(),
            messages: self.messages.clone(),
            tools: if tool_choice == ToolChoice::None {
                vec![]
            } else {
                self.tools.clone()
            },
            max_tokens: self.max_tokens,
            tool_choice,
            options: GenerationOptions {
                // Applied here, not by the model.
                stop: vec![],
                ..self.options.clone()
            },
        }
    }

    /// Whether the completion has ended (its last event is out).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// What its model calls used, summed; `None` when no model reported any.
    pub fn used(&self) -> Option<TokenUsage> {
        self.reported.then_some(self.total)
    }

    /// The model that served the latest generation.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// A piece of the model's text.
    pub fn on_text(&mut self, piece: String) -> Vec<Effect> {
        if self.phase != Phase::Generating || self.stopped || piece.is_empty() {
            return vec![];
        }
        self.held.push_str(&piece);
        let stops = &self.options.stop;
        // The stop that ends first wins, cut at its start: whatever the
        // pieces, the answer is the same (no possible start of a stop is
        // ever sent before it).
        let first_stop = stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at + s.len(), at)))
            .min()
            .map(|(_, at)| at);
        let send = match first_stop {
            Some(at) => {
                self.stopped = true;
                let before = self.held.get(..at).unwrap_or_default().to_owned();
                self.held.clear();
                before
            }
            None => {
                let keep = held_suffix(&self.held, stops);
                let cut = self.held.len() - keep;
                let rest = self.held.split_off(cut);
                std::mem::replace(&mut self.held, rest)
            }
        };
        self.send_text(send)
    }

    fn send_text(&mut self, text: String) -> Vec<Effect> {
        if text.is_empty() {
            return vec![];
        }
        self.text.push_str(&text);
        vec![Effect::Emit(CompletionEvent::Text { content: text })]
    }

    /// The model called a tool: kept if it was offered in this round (a
    /// model may invent names, or call one `tool_choice: none` withheld),
    /// and unless a stop sequence already ended the answer.
    pub fn on_tool_call(&mut self, call: ToolCall) {
        if self.phase != Phase::Generating || self.stopped {
            return;
        }
        let offered = match self.round_choice() {
            ToolChoice::None => false,
            ToolChoice::Function(only) => only == call.name,
            ToolChoice::Auto | ToolChoice::Required => {
                self.tools.iter().any(|t| t.name == call.name)
            }
        };
        if offered {
            self.calls.push(call);
        }
    }

    /// The model reported its token counts.
    pub fn on_usage(&mut self, usage: Usage) {
        if self.phase == Phase::Generating {
            self.usage = Some(usage);
        }
    }

    /// The routed generation ended: served by `model`, or failed.
    pub fn on_routed(&mut self, outcome: Result<String, RouteError>) -> Vec<Effect> {
        if self.phase != Phase::Generating {
            return vec![];
        }
        let usage = self.usage.take();
        if let Some(u) = usage {
            self.reported = true;
            self.total.input_tokens += u64::from(u.prompt_tokens);
            self.total.output_tokens += u64::from(u.completion_tokens);
        }
        let model = match outcome {
            Ok(model) => model,
            Err(e) => return self.fail(e.code, e.message),
        };
        self.model = Some(model);
        // What was held back was not a stop sequence after all.
        let held = std::mem::take(&mut self.held);
        let mut effects = self.send_text(held);
        let (tenant, client): (Vec<ToolCall>, Vec<ToolCall>) = std::mem::take(&mut self.calls)
            .into_iter()
            .partition(|c| self.tenant_tools.contains(&c.name));
        if !client.is_empty() {
            // The client's functions end the completion; calls of the
            // tenant's tools in the same round are not run.
            effects.extend(client.into_iter().zip(0u32..).map(|(call, index)| {
                Effect::Emit(CompletionEvent::ToolCall {
                    index,
                    id: call.id,
                    name: call.name,
                    arguments: call.arguments.to_string(),
                })
            }));
            effects.push(self.done(FinishReason::ToolCalls));
            return effects;
        }
        if tenant.is_empty() || self.stopped {
            let reason = if self.stopped {
                FinishReason::Stop
            } else if usage.is_some_and(|u| u.completion_tokens >= self.max_tokens) {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            effects.push(self.done(reason));
            return effects;
        }
        if self.iteration >= MAX_TOOL_ITERATIONS {
            effects.extend(self.fail(
                "tool_limit",
                "the model kept calling tools; the completion was stopped".to_owned(),
            ));
            return effects;
        }
        self.calls = tenant;
        self.results.clear();
        self.phase = Phase::Tools { next: 0 };
        effects.extend(self.calls.first().cloned().map(Effect::RunTool));
        effects
    }

    /// The result of tenant tool call `call_id`.
    pub fn on_tool_result(&mut self, call_id: &str, result: &Value, is_error: bool) -> Vec<Effect> {
        let Phase::Tools { next } = self.phase else {
            return vec![];
        };
        let Some(call) = self.calls.get(next).filter(|c| c.id == call_id).cloned() else {
            return vec![];
        };
        let content = bounded_result(result, self.max_result_bytes);
        self.results.push(content.clone());
        let mut effects = vec![Effect::Emit(CompletionEvent::ToolRun {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.to_string(),
            result: content,
            is_error,
        })];
        if let Some(following) = self.calls.get(next + 1).cloned() {
            self.phase = Phase::Tools { next: next + 1 };
            effects.push(Effect::RunTool(following));
            return effects;
        }
        let calls = std::mem::take(&mut self.calls);
        let results = std::mem::take(&mut self.results);
        self.messages.push(ChatMessage {
            role: Role::Assistant,
            content: std::mem::take(&mut self.text),
            tool_calls: calls.clone(),
            tool_call_id: None,
            name: None,
        });
        for (call, content) in calls.into_iter().zip(results) {
            self.messages.push(ChatMessage {
                role: Role::Tool,
                content,
                tool_calls: vec![],
                tool_call_id: Some(call.id),
                name: Some(call.name),
            });
        }
        self.iteration += 1;
        self.phase = Phase::Generating;
        effects.push(Effect::Generate(self.request()));
        effects
    }

    fn done(&mut self, finish_reason: FinishReason) -> Effect {
        self.phase = Phase::Ended;
        Effect::Emit(CompletionEvent::Done {
            finish_reason,
            usage: protocol::chat::TurnUsage {
                input_tokens: self.total.input_tokens,
                output_tokens: self.total.output_tokens,
                cost_micros: None,
            },
            model: self.model.clone().unwrap_or_default(),
        })
    }

    /// Ends the completion with an error; ignored once it has ended.
    pub fn fail(&mut self, code: &str, message: String) -> Vec<Effect> {
        if self.is_ended() {
            return vec![];
        }
        self.phase = Phase::Ended;
        vec![Effect::Emit(CompletionEvent::Error {
            code: code.to_owned(),
            message,
        })]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::completion::CallOfMessage;
    use serde_json::json;

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type":"object"}),
        }
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: text.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        }
    }

    fn machine(stop: &[&str], tenant: &[&str]) -> (CompletionMachine, Vec<Effect>) {
        CompletionMachine::start(
            vec![user("hi")],
            vec![spec("vector_search"), spec("get_weather")],
            tenant.iter().map(|s| s.to_string()).collect(),
            ToolChoice::Auto,
            GenerationOptions {
                stop: stop.iter().map(|s| s.to_string()).collect(),
                temperature: Some(0.2),
                ..GenerationOptions::default()
            },
            5,
            1000,
        )
    }

    fn texts(effects: &[Effect]) -> String {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(CompletionEvent::Text { content }) => Some(content.as_str()),
                _ => None,
            })
            .collect()
    }

    fn finish(effects: &[Effect]) -> Option<FinishReason> {
        effects.iter().find_map(|e| match e {
            Effect::Emit(CompletionEvent::Done { finish_reason, .. }) => Some(*finish_reason),
            _ => None,
        })
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: json!({"q": 1}),
        }
    }

    #[test]
    fn the_first_request_carries_the_options_but_not_the_stops() {
        let (_, effects) = machine(&["END"], &[]);
        let [Effect::Generate(request)] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        assert_eq!(request.options.temperature, Some(0.2));
        assert!(request.options.stop.is_empty(), "applied by the machine");
        assert_eq!(request.tools.len(), 2);
        assert_eq!(request.max_tokens, 5);
    }

    #[test]
    fn a_stop_sequence_split_across_pieces_is_never_sent() {
        let (mut m, _) = machine(&["END"], &[]);
        let mut sent = String::new();
        for piece in ["Hello E", "N", "D and more", " text"] {
            sent.push_str(&texts(&m.on_text(piece.into())));
        }
        m.on_usage(Usage {
            prompt_tokens: 3,
            completion_tokens: 9,
        });
        let end = m.on_routed(Ok("m".into()));
        sent.push_str(&texts(&end));
        assert_eq!(sent, "Hello ");
        assert_eq!(finish(&end), Some(FinishReason::Stop));
        assert_eq!(m.used().map(|u| u.output_tokens), Some(9));
    }

    #[test]
    fn overlapping_stops_and_multibyte_text_cut_the_same_whatever_the_pieces() {
        for pieces in [
            vec!["abc", "d"],
            vec!["ab", "cd"],
            vec!["a", "b", "c", "d"],
            vec!["abcd"],
        ] {
            let (mut m, _) = machine(&["abcd", "bc"], &[]);
            let mut sent = String::new();
            for p in &pieces {
                sent.push_str(&texts(&m.on_text((*p).into())));
            }
            sent.push_str(&texts(&m.on_routed(Ok("m".into()))));
            assert_eq!(sent, "a", "{pieces:?}");
        }
        let (mut m, _) = machine(&["→ø"], &[]);
        let mut sent = String::new();
        for p in ["før ", "→", "ø and more"] {
            sent.push_str(&texts(&m.on_text(p.into())));
        }
        sent.push_str(&texts(&m.on_routed(Ok("m".into()))));
        assert_eq!(sent, "før ");
    }

    #[test]
    fn calls_not_offered_or_after_a_stop_are_dropped() {
        let (mut m, _) = machine(&["END"], &[]);
        m.on_tool_call(call("c1", "invented"));
        let end = m.on_routed(Ok("m".into()));
        assert_eq!(finish(&end), Some(FinishReason::Stop));
        let (mut m, _) = machine(&["END"], &[]);
        m.on_text("done END".into());
        m.on_tool_call(call("c1", "get_weather"));
        assert_eq!(
            finish(&m.on_routed(Ok("m".into()))),
            Some(FinishReason::Stop)
        );
    }

    #[test]
    fn held_text_that_is_not_a_stop_is_sent_at_the_end() {
        let (mut m, _) = machine(&["END"], &[]);
        let mut sent = texts(&m.on_text("the E".into()));
        assert_eq!(sent, "the ", "the E might begin END");
        sent.push_str(&texts(&m.on_text("N".into())));
        let end = m.on_routed(Ok("m".into()));
        sent.push_str(&texts(&end));
        assert_eq!(sent, "the EN");
        assert_eq!(finish(&end), Some(FinishReason::Stop));
    }

    #[test]
    fn a_full_budget_is_length() {
        let (mut m, _) = machine(&[], &[]);
        m.on_text("a b c d e".into());
        m.on_usage(Usage {
            prompt_tokens: 1,
            completion_tokens: 5,
        });
        assert_eq!(
            finish(&m.on_routed(Ok("m".into()))),
            Some(FinishReason::Length)
        );
        assert!(m.is_ended());
        assert!(m.on_text("late".into()).is_empty());
    }

    #[test]
    fn client_calls_end_the_completion_with_their_indexes() {
        let (mut m, _) = machine(&[], &["vector_search"]);
        m.on_tool_call(call("c1", "get_weather"));
        m.on_tool_call(call("c2", "get_weather"));
        let end = m.on_routed(Ok("m".into()));
        let calls: Vec<(u32, String)> = end
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(CompletionEvent::ToolCall { index, id, .. }) => {
                    Some((*index, id.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(calls, vec![(0, "c1".into()), (1, "c2".into())]);
        assert_eq!(finish(&end), Some(FinishReason::ToolCalls));
        assert!(!end.iter().any(|e| matches!(e, Effect::RunTool(_))));
    }

    #[test]
    fn tenant_tools_run_here_then_the_model_answers() {
        let (mut m, _) = machine(&[], &["vector_search"]);
        m.on_usage(Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
        });
        m.on_tool_call(call("c1", "vector_search"));
        let effects = m.on_routed(Ok("m".into()));
        assert_eq!(effects, vec![Effect::RunTool(call("c1", "vector_search"))]);
        // A result for another call changes nothing.
        assert!(m.on_tool_result("zz", &json!({}), false).is_empty());
        let effects = m.on_tool_result("c1", &json!({"matches": []}), false);
        assert!(matches!(
            effects.first(),
            Some(Effect::Emit(CompletionEvent::ToolRun {
                is_error: false,
                ..
            }))
        ));
        let Some(Effect::Generate(next)) = effects.last() else {
            panic!("{effects:?}")
        };
        let roles: Vec<Role> = next.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(next.messages[2].name.as_deref(), Some("vector_search"));
        m.on_text("found it".into());
        m.on_usage(Usage {
            prompt_tokens: 20,
            completion_tokens: 2,
        });
        let end = m.on_routed(Ok("m".into()));
        assert_eq!(finish(&end), Some(FinishReason::Stop));
        let used = m.used().unwrap();
        assert_eq!((used.input_tokens, used.output_tokens), (30, 4));
    }

    #[test]
    fn a_required_choice_asks_for_one_call_not_a_loop() {
        let (mut m, effects) = CompletionMachine::start(
            vec![user("hi")],
            vec![spec("vector_search")],
            vec!["vector_search".into()],
            ToolChoice::Required,
            GenerationOptions::default(),
            50,
            1000,
        );
        assert!(
            matches!(&effects[0], Effect::Generate(r) if r.tool_choice == ToolChoice::Required)
        );
        m.on_tool_call(call("c1", "vector_search"));
        m.on_routed(Ok("m".into()));
        let effects = m.on_tool_result("c1", &json!({}), false);
        assert!(
            matches!(effects.last(), Some(Effect::Generate(r)) if r.tool_choice == ToolChoice::Auto)
        );
    }

    #[test]
    fn the_tenant_tool_loop_is_bounded_and_failures_end_it() {
        let (mut m, _) = machine(&[], &["vector_search"]);
        for round in 0..MAX_TOOL_ITERATIONS {
            let id = format!("c{round}");
            m.on_tool_call(call(&id, "vector_search"));
            m.on_routed(Ok("m".into()));
            m.on_tool_result(&id, &json!({}), false);
        }
        m.on_tool_call(call("last", "vector_search"));
        let end = m.on_routed(Ok("m".into()));
        assert!(matches!(
            end.last(),
            Some(Effect::Emit(CompletionEvent::Error { code, .. })) if code == "tool_limit"
        ));
        let (mut m, _) = machine(&[], &[]);
        let failed = m.on_routed(Err(RouteError {
            code: "model_timeout",
            message: "slow".into(),
        }));
        assert!(matches!(
            failed.as_slice(),
            [Effect::Emit(CompletionEvent::Error { code, .. })] if code == "model_timeout"
        ));
        assert!(m.fail("x", "y".into()).is_empty(), "ended once");
    }

    #[test]
    fn tool_messages_are_named_after_their_calls() {
        let messages = model_messages(&[
            CompletionMessage {
                role: Speaker::Assistant,
                content: String::new(),
                tool_calls: vec![CallOfMessage {
                    id: "c9".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into(),
                }],
                tool_call_id: None,
            },
            CompletionMessage {
                role: Speaker::Tool,
                content: "rain".into(),
                tool_calls: vec![],
                tool_call_id: Some("c9".into()),
            },
        ]);
        assert_eq!(messages[0].tool_calls[0].arguments["city"], "Oslo");
        assert_eq!(messages[1].name.as_deref(), Some("get_weather"));
        assert_eq!(held_suffix("abc", &["cde".into()]), 1);
        assert_eq!(held_suffix("abc", &["x".into()]), 0);
    }
}
