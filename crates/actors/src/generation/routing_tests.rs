//! Native tests of the chat router, with scripted generators, a sleep that
//! only advances a manual clock, and `block_on`.

use super::*;
use crate::ports::ToolCall;
use std::cell::RefCell;
use std::collections::VecDeque;

/// What a scripted generator does on one call.
#[derive(Debug, Clone)]
enum Step {
    Answer(&'static str),
    CallTool,
    Fail(PortError),
    Stall,
    TextThenFail,
    TextThenStall,
    ToolCallThenFail,
}

struct Scripted {
    name: &'static str,
    steps: RefCell<VecDeque<Step>>,
    calls: Cell<u32>,
}

fn model(name: &'static str, steps: &[Step]) -> Scripted {
    Scripted {
        name,
        steps: RefCell::new(steps.iter().cloned().collect()),
        calls: Cell::new(0),
    }
}

impl Generator for Scripted {
    fn model(&self) -> &str {
        self.name
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        assert_eq!(request.model, self.name, "asked under its own name");
        self.calls.set(self.calls.get() + 1);
        let step = self.steps.borrow_mut().pop_front().unwrap_or(Step::Stall);
        let usage = GenerationEvent::Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
        };
        let call = || {
            GenerationEvent::ToolCall(ToolCall {
                id: "c1".into(),
                name: "vector_search".into(),
                arguments: serde_json::json!({}),
            })
        };
        match step {
            Step::Answer(text) => {
                on_event(GenerationEvent::Text(text.into()));
                on_event(usage);
                Ok(())
            }
            Step::CallTool => {
                on_event(call());
                on_event(usage);
                Ok(())
            }
            Step::Fail(e) => Err(e),
            Step::Stall => futures::future::pending().await,
            Step::TextThenFail => {
                on_event(GenerationEvent::Text("partial".into()));
                Err(failed())
            }
            Step::TextThenStall => {
                on_event(GenerationEvent::Text("partial".into()));
                futures::future::pending().await
            }
            Step::ToolCallThenFail => {
                on_event(call());
                on_event(usage);
                Err(failed())
            }
        }
    }
}

/// A clock that only the fake sleep moves.
struct Manual {
    now: Cell<u64>,
    slept: RefCell<Vec<u64>>,
}

impl Sleep for Manual {
    async fn sleep(&self, ms: u64) {
        self.slept.borrow_mut().push(ms);
        self.now.set(self.now.get() + ms);
    }
}

impl Clock for Manual {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

fn manual() -> Manual {
    Manual {
        now: Cell::new(1_000),
        slept: RefCell::new(Vec::new()),
    }
}

fn upstream(status: u16, code: Option<u32>) -> PortError {
    PortError::Upstream {
        service: "Workers AI",
        status,
        code,
        message: "refused".into(),
    }
}

fn failed() -> PortError {
    PortError::Failed {
        service: "Workers AI",
        message: "connection reset".into(),
    }
}

fn request() -> GenerateRequest {
    GenerateRequest {
        options: Default::default(),
        tool_choice: Default::default(),
        model: "chat".into(),
        messages: vec![],
        tools: vec![],
        max_tokens: 64,
    }
}

const POLICY: RoutePolicy = RoutePolicy {
    first_output_ms: 1_000,
    generation_timeout_ms: 5_000,
    attempts_per_model: 2,
    backoff_base_ms: 100,
    backoff_max_ms: 150,
};

struct Run {
    result: Result<String, RouteError>,
    events: Vec<GenerationEvent>,
    slept: Vec<u64>,
}

fn run(chain: &[Scripted], deadline_after: u64) -> Run {
    let clock = manual();
    let mut events = Vec::new();
    let give_up = clock.now_ms() + deadline_after;
    let result = futures::executor::block_on(generate_routed(
        chain,
        &request(),
        &POLICY,
        &clock,
        &clock,
        give_up,
        &mut |e| events.push(e),
    ));
    let slept = clock.slept.borrow().clone();
    Run {
        result,
        events,
        slept,
    }
}

#[test]
fn the_primary_answers_when_it_can() {
    let chain = [
        model("primary", &[Step::Answer("hi")]),
        model("fallback", &[]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result, Ok("primary".to_owned()));
    assert_eq!(crate::generation::text_of(&r.events), "hi");
    assert_eq!(chain[1].calls.get(), 0, "the fallback is not asked");
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, GenerationEvent::Usage { .. })));
}

#[test]
fn an_overloaded_primary_is_retried_with_backoff_then_falls_back() {
    let chain = [
        model(
            "primary",
            &[
                Step::Fail(upstream(429, Some(3040))),
                Step::Fail(upstream(503, None)),
            ],
        ),
        model("fallback", &[Step::Answer("from the fallback")]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(
        r.result,
        Ok("fallback".to_owned()),
        "the model that answered"
    );
    assert_eq!(chain[0].calls.get(), 2, "one retry of the primary");
    assert_eq!(crate::generation::text_of(&r.events), "from the fallback");
    // One backoff between the primary's attempts; the fallback starts at once.
    assert_eq!(r.slept, vec![100]);
}

#[test]
fn backoff_doubles_and_is_capped() {
    let p = POLICY;
    assert_eq!(
        (p.backoff_ms(0), p.backoff_ms(1), p.backoff_ms(9)),
        (100, 150, 150)
    );
    let d = RoutePolicy::default();
    assert_eq!(
        (
            d.backoff_ms(0),
            d.backoff_ms(1),
            d.backoff_ms(3),
            d.backoff_ms(40)
        ),
        (500, 1_000, 4_000, 4_000)
    );
}

#[test]
fn a_refused_request_moves_to_the_next_model_without_retry() {
    let chain = [
        model("primary", &[Step::Fail(upstream(400, Some(5007)))]),
        model("fallback", &[Step::Answer("ok")]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result, Ok("fallback".to_owned()));
    assert_eq!(chain[0].calls.get(), 1);
    assert!(r.slept.is_empty(), "no backoff before another model");
}

#[test]
fn an_exhausted_account_stops_the_chain() {
    let chain = [
        model("primary", &[Step::Fail(upstream(429, Some(3036)))]),
        model("fallback", &[Step::Answer("never")]),
    ];
    let r = run(&chain, 60_000);
    let e = r.result.unwrap_err();
    assert_eq!(e.code, MODEL_FAILED);
    assert!(e.message.contains("primary"), "{}", e.message);
    assert_eq!(chain[1].calls.get(), 0, "no model can help");
}

#[test]
fn a_stall_before_the_first_output_times_out_and_falls_back() {
    let chain = [
        model("primary", &[Step::Stall, Step::Stall]),
        model("fallback", &[Step::Answer("ok")]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result, Ok("fallback".to_owned()));
    // first-output timeout, backoff, first-output timeout.
    assert_eq!(r.slept, vec![1_000, 100, 1_000]);
}

#[test]
fn every_model_stalling_ends_with_model_timeout() {
    let chain = [model("primary", &[]), model("fallback", &[])];
    let r = run(&chain, 60_000);
    let e = r.result.unwrap_err();
    assert_eq!(e.code, MODEL_TIMEOUT);
    assert!(e.message.contains("fallback"), "{}", e.message);
    assert!(e.message.contains("earlier: primary"), "{}", e.message);
    assert_eq!(chain[0].calls.get() + chain[1].calls.get(), 4);
    assert!(r.events.is_empty());
}

#[test]
fn nothing_starts_after_the_turn_deadline() {
    // 2.5 s left: the primary's attempt times out at 1 s, the backoff, its
    // retry times out at 2.1 s; the fallback gets the 0.4 s left, and its
    // retry's backoff would pass the deadline, so it never starts.
    let chain = [model("primary", &[]), model("fallback", &[])];
    let r = run(&chain, 2_500);
    assert_eq!(r.result.unwrap_err().code, MODEL_TIMEOUT);
    assert_eq!((chain[0].calls.get(), chain[1].calls.get()), (2, 1));
    assert_eq!(r.slept, vec![1_000, 100, 1_000, 400]);
    // A deadline shorter than the first-output timeout bounds the attempt.
    let chain = [model("primary", &[])];
    let r = run(&chain, 300);
    assert_eq!(r.slept.first(), Some(&300));
}

#[test]
fn a_failure_after_text_was_sent_is_final() {
    let chain = [
        model("primary", &[Step::TextThenFail]),
        model("fallback", &[Step::Answer("never")]),
    ];
    let r = run(&chain, 60_000);
    let e = r.result.unwrap_err();
    assert_eq!(e.code, MODEL_FAILED);
    assert!(
        e.message.contains("after it had started answering"),
        "{}",
        e.message
    );
    assert_eq!(chain[0].calls.get(), 1, "no retry");
    assert_eq!(chain[1].calls.get(), 0, "no fallback");
    assert_eq!(crate::generation::text_of(&r.events), "partial");
}

#[test]
fn a_stall_after_text_ends_with_the_generation_timeout() {
    let chain = [
        model("primary", &[Step::TextThenStall]),
        model("fallback", &[Step::Answer("never")]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result.unwrap_err().code, MODEL_TIMEOUT);
    assert_eq!(r.slept, vec![1_000, 4_000], "the whole generation timeout");
    assert_eq!(chain[1].calls.get(), 0);
}

#[test]
fn tool_calls_of_a_failed_attempt_are_dropped() {
    let chain = [
        model("primary", &[Step::ToolCallThenFail, Step::CallTool]),
        model("fallback", &[]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result, Ok("primary".to_owned()));
    let calls = r
        .events
        .iter()
        .filter(|e| matches!(e, GenerationEvent::ToolCall(_)))
        .count();
    let usages = r
        .events
        .iter()
        .filter(|e| matches!(e, GenerationEvent::Usage { .. }))
        .count();
    assert_eq!(
        (calls, usages),
        (1, 1),
        "only the successful attempt's call"
    );
}

/// The usage events of a run, summed: (prompt, completion, events).
fn usage_of(events: &[GenerationEvent]) -> (u32, u32, usize) {
    events.iter().fold((0, 0, 0), |(p, c, n), e| match e {
        GenerationEvent::Usage {
            prompt_tokens,
            completion_tokens,
        } => (p + prompt_tokens, c + completion_tokens, n + 1),
        _ => (p, c, n),
    })
}

#[test]
fn the_tokens_of_failed_attempts_are_counted() {
    // The primary streams its usage, then fails; the fallback answers.
    let chain = [
        model("primary", &[Step::ToolCallThenFail, Step::Fail(failed())]),
        model("fallback", &[Step::Answer("hi")]),
    ];
    let r = run(&chain, 60_000);
    assert_eq!(r.result, Ok("fallback".to_owned()));
    // One report for the generation: the failed attempt's 5 + 2 and the
    // answer's 5 + 2.
    assert_eq!(usage_of(&r.events), (10, 4, 1));
    // Every attempt failing still reports what the failed ones used.
    let chain = [model(
        "only",
        &[Step::ToolCallThenFail, Step::ToolCallThenFail],
    )];
    let r = run(&chain, 60_000);
    assert!(r.result.is_err());
    assert_eq!(usage_of(&r.events), (10, 4, 1));
    // Nothing reported: no usage event.
    let chain = [model("only", &[Step::Fail(failed()), Step::Fail(failed())])];
    let r = run(&chain, 60_000);
    assert_eq!(usage_of(&r.events), (0, 0, 0));
}

#[test]
fn dispositions() {
    let d = |e: AttemptError| disposition(&e);
    assert_eq!(d(AttemptError::NoFirstOutput), Disposition::Retry);
    assert_eq!(d(AttemptError::TooLong), Disposition::Retry);
    assert_eq!(d(AttemptError::Port(failed())), Disposition::Retry);
    for status in [408, 429, 500, 502, 503] {
        assert_eq!(
            d(AttemptError::Port(upstream(status, None))),
            Disposition::Retry,
            "{status}"
        );
    }
    for status in [400, 403, 404, 413] {
        assert_eq!(
            d(AttemptError::Port(upstream(status, None))),
            Disposition::NextModel,
            "{status}"
        );
    }
    assert_eq!(
        d(AttemptError::Port(upstream(403, Some(3023)))),
        Disposition::Stop
    );
    let bad = PortError::BadShape {
        service: "Workers AI",
        message: "x".into(),
    };
    assert_eq!(d(AttemptError::Port(bad)), Disposition::NextModel);
    assert_eq!(
        d(AttemptError::Port(PortError::Unsupported("x".into()))),
        Disposition::Stop
    );
}

#[test]
fn one_model_alone_is_retried_then_fails_with_its_last_error() {
    let chain = [model(
        "only",
        &[
            Step::Fail(upstream(502, None)),
            Step::Fail(upstream(500, None)),
        ],
    )];
    let r = run(&chain, 60_000);
    let e = r.result.unwrap_err();
    assert_eq!(e.code, MODEL_FAILED);
    assert!(
        e.message.contains("500") && e.message.contains("502"),
        "{}",
        e.message
    );
}

#[test]
fn the_chain_of_a_turn() {
    let defaults = protocol::coordinator::DefaultModels {
        chat: "@cf/a/default".into(),
        embedding: "@cf/baai/bge-base-en-v1.5".into(),
        chat_fallbacks: vec!["@cf/b/fallback".into()],
    };
    let both = vec!["@cf/a/default".to_owned(), "@cf/b/fallback".to_owned()];
    assert_eq!(chat_chain(None, Some(&defaults)), both);
    assert_eq!(chat_chain(Some("chat"), Some(&defaults)), both, "the alias");
    assert_eq!(
        chat_chain(Some("@cf/c/named"), Some(&defaults)),
        vec!["@cf/c/named".to_owned()],
        "a named model is served alone"
    );
    assert_eq!(
        chat_chain(None, None),
        vec![protocol::coordinator::DEFAULT_CHAT_MODEL.to_owned()]
    );
}
