//! Chat model routing: one generation served by a chain of models (the
//! tenant's default, then its fallbacks), with timeouts, retries and
//! backoff. Pure but for the ports it is given (the generators, a [`Sleep`]
//! and a [`Clock`]), so it is tested natively with fakes.
//!
//! Per attempt, the generation races a timer: nothing produced (no text,
//! no tool call) within [`RoutePolicy::first_output_ms`], or not finished
//! within [`RoutePolicy::generation_timeout_ms`], and the attempt is
//! abandoned (its future dropped; anything it might still do is never
//! seen). A failed attempt is retried on the same model after a backoff
//! when the failure may pass (upstream 429, 408, 5xx, a transport failure,
//! a timeout), up to [`RoutePolicy::attempts_per_model`]; a failure only
//! another model may avoid (the model refused the request, answered
//! garbage) moves to the next model at once; one no model can avoid (the
//! account's allocation is used up) ends the generation.
//!
//! Text goes to the client as it arrives, so once an attempt has sent any,
//! it is the generation: a failure or timeout after that ends the
//! generation (the client must never see two answers spliced). Tool calls
//! are held until the attempt succeeds, so a failed attempt leaves no call
//! behind. Its tokens are not forgotten: the usage a failed attempt
//! reported before failing is added to the generation's, which is reported
//! once, at the end (one [`GenerationEvent::Usage`], the sum of every
//! attempt's last report), whether the generation succeeded or not.
//! Nothing starts after `give_up_at_ms` (the turn's deadline). The model
//! that answered is returned, for the turn's usage.

use crate::cloudflare::ai_binding::ACCOUNT_WIDE_CODES;
use crate::ports::{Clock, GenerateRequest, GenerationEvent, Generator, PortError, Sleep};
use futures::future::{select, Either};
use std::cell::Cell;

/// Default first-output timeout (`CHAT_FIRST_OUTPUT_TIMEOUT_SECS`): a model
/// that has produced nothing in 20 s is overloaded or stuck; Workers AI's
/// large models start streaming within a few seconds.
pub const DEFAULT_FIRST_OUTPUT_MS: u64 = 20_000;
/// Default generation timeout (`CHAT_GENERATION_TIMEOUT_SECS`): one model
/// call of at most `maxTokens` (2048) streams in well under a minute.
pub const DEFAULT_GENERATION_TIMEOUT_MS: u64 = 60_000;
/// Attempts per model in the chain (the first and one retry): a second
/// retry rarely succeeds where the first failed and delays the fallback.
pub const ATTEMPTS_PER_MODEL: u32 = 2;
/// The first backoff; doubled for each further retry of a model.
pub const BACKOFF_BASE_MS: u64 = 500;
/// The longest backoff.
pub const BACKOFF_MAX_MS: u64 = 4_000;

/// Which error code a generation ended with when every attempt timed out
/// (or the last one did).
pub const MODEL_TIMEOUT: &str = "model_timeout";
/// The code of every other failed generation.
pub const MODEL_FAILED: &str = "model_failed";

/// The bounds of one routed generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    /// An attempt that has produced nothing by then is abandoned.
    pub first_output_ms: u64,
    /// An attempt that has not finished by then is abandoned.
    pub generation_timeout_ms: u64,
    /// Attempts per model (1 = no retries).
    pub attempts_per_model: u32,
    /// The first backoff.
    pub backoff_base_ms: u64,
    /// The longest backoff.
    pub backoff_max_ms: u64,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            first_output_ms: DEFAULT_FIRST_OUTPUT_MS,
            generation_timeout_ms: DEFAULT_GENERATION_TIMEOUT_MS,
            attempts_per_model: ATTEMPTS_PER_MODEL,
            backoff_base_ms: BACKOFF_BASE_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
        }
    }
}

impl RoutePolicy {
    /// The wait before retry number `retry` (0 for the first retry) of a
    /// model: doubling from the base, capped. No jitter: one session runs
    /// one generation at a time, so its retries cannot stampede.
    pub fn backoff_ms(&self, retry: u32) -> u64 {
        self.backoff_base_ms
            .saturating_mul(1u64 << retry.min(20))
            .min(self.backoff_max_ms)
    }
}

/// The models that serve a turn, in order: the model the turn names, alone
/// (a caller allowed one model must not be served by another); or, when it
/// names none or the alias `chat`, the tenant's default and its fallbacks
/// (`defaults`: `None` when the tenant's settings could not be read, then
/// the platform's default).
pub fn chat_chain(
    turn_model: Option<&str>,
    defaults: Option<&protocol::coordinator::DefaultModels>,
) -> Vec<String> {
    match turn_model {
        Some(model) if model != protocol::models::CHAT_ALIAS => vec![model.to_owned()],
        _ => match defaults {
            Some(d) => d.chat_chain(),
            None => vec![protocol::coordinator::DEFAULT_CHAT_MODEL.to_owned()],
        },
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// The model (or the way to it) failed.
    Port(PortError),
    /// Nothing was produced within the first-output timeout.
    NoFirstOutput,
    /// The attempt did not finish within the generation timeout.
    TooLong,
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Port(e) => write!(f, "{e}"),
            Self::NoFirstOutput => f.write_str("produced nothing before the first-output timeout"),
            Self::TooLong => f.write_str("did not finish before the generation timeout"),
        }
    }
}

/// What to do after an attempt failed before any of its text was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The failure may pass: retry this model (after a backoff), then the next.
    Retry,
    /// Only another model may do better: the next model, now.
    NextModel,
    /// No model can do better: the generation fails.
    Stop,
}

/// How a failed attempt is handled (see the module documentation).
pub fn disposition(e: &AttemptError) -> Disposition {
    match e {
        AttemptError::NoFirstOutput | AttemptError::TooLong => Disposition::Retry,
        AttemptError::Port(PortError::Failed { .. }) => Disposition::Retry,
        AttemptError::Port(PortError::Upstream { code, .. })
            if code.is_some_and(|c| ACCOUNT_WIDE_CODES.contains(&c)) =>
        {
            Disposition::Stop
        }
        AttemptError::Port(PortError::Upstream { status, .. })
            if *status == 408 || *status == 429 || *status >= 500 =>
        {
            Disposition::Retry
        }
        AttemptError::Port(PortError::Upstream { .. } | PortError::BadShape { .. }) => {
            Disposition::NextModel
        }
        AttemptError::Port(PortError::Unsupported(_) | PortError::Full { .. }) => Disposition::Stop,
    }
}

/// Why a routed generation failed: the error code of the turn's `error`
/// event and what happened, attempt by attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// [`MODEL_TIMEOUT`] or [`MODEL_FAILED`].
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl RouteError {
    fn from_attempt(model: &str, e: &AttemptError, after_text: bool, log: &[String]) -> Self {
        let code = match e {
            AttemptError::NoFirstOutput | AttemptError::TooLong => MODEL_TIMEOUT,
            AttemptError::Port(_) => MODEL_FAILED,
        };
        let mut message = if after_text {
            format!("{model} {e} after it had started answering")
        } else {
            format!("{model} {e}")
        };
        if !log.is_empty() {
            message = format!("{message} (earlier: {})", log.join("; "));
        }
        Self { code, message }
    }
}

enum Outcome {
    Done,
    /// Failed before any text was sent: another attempt may serve.
    Unsent(AttemptError),
    /// Failed after text was sent: the generation has failed.
    Sent(AttemptError),
}

/// Runs one generation of `request` on the first model of `chain` that
/// serves it (each generator answers under its own [`Generator::model`]),
/// handing text and (once the attempt succeeded) tool calls and usage to
/// `on_event`; returns the model that answered.
pub async fn generate_routed<G: Generator, S: Sleep, C: Clock>(
    chain: &[G],
    request: &GenerateRequest,
    policy: &RoutePolicy,
    sleep: &S,
    clock: &C,
    give_up_at_ms: u64,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> Result<String, RouteError> {
    let mut log: Vec<String> = Vec::new();
    let mut last: Option<(String, AttemptError)> = None;
    // What the attempts reported, summed (each attempt's last report).
    let mut used: Option<(u32, u32)> = None;
    let result = route(
        chain,
        request,
        policy,
        sleep,
        clock,
        give_up_at_ms,
        on_event,
        &mut used,
        &mut log,
        &mut last,
    )
    .await;
    if let Some((prompt_tokens, completion_tokens)) = used {
        on_event(GenerationEvent::Usage {
            prompt_tokens,
            completion_tokens,
        });
    }
    result
}

/// [`generate_routed`] but for the usage, which it adds up in `used`.
#[allow(clippy::too_many_arguments)]
async fn route<G: Generator, S: Sleep, C: Clock>(
    chain: &[G],
    request: &GenerateRequest,
    policy: &RoutePolicy,
    sleep: &S,
    clock: &C,
    give_up_at_ms: u64,
    on_event: &mut dyn FnMut(GenerationEvent),
    used: &mut Option<(u32, u32)>,
    log: &mut Vec<String>,
    last: &mut Option<(String, AttemptError)>,
) -> Result<String, RouteError> {
    'models: for generator in chain {
        let model = generator.model().to_owned();
        for attempt in 0..policy.attempts_per_model.max(1) {
            if attempt > 0 {
                let wait = policy.backoff_ms(attempt - 1);
                if clock.now_ms().saturating_add(wait) >= give_up_at_ms {
                    break 'models;
                }
                sleep.sleep(wait).await;
            }
            let remaining = give_up_at_ms.saturating_sub(clock.now_ms());
            if remaining == 0 {
                break 'models;
            }
            let request = GenerateRequest {
                model: model.clone(),
                ..request.clone()
            };
            let (outcome, reported) =
                attempt_once(generator, &request, policy, sleep, remaining, on_event).await;
            if let Some((p, c)) = reported {
                let (sum_p, sum_c) = used.get_or_insert((0, 0));
                *sum_p = sum_p.saturating_add(p);
                *sum_c = sum_c.saturating_add(c);
            }
            match outcome {
                Outcome::Done => return Ok(model),
                Outcome::Sent(e) => return Err(RouteError::from_attempt(&model, &e, true, log)),
                Outcome::Unsent(e) => {
                    let next = disposition(&e);
                    if let Some((m, e)) = last.replace((model.clone(), e)) {
                        log.push(format!("{m} {e}"));
                    }
                    match next {
                        Disposition::Retry => continue,
                        Disposition::NextModel => continue 'models,
                        Disposition::Stop => break 'models,
                    }
                }
            }
        }
    }
    Err(match last.take() {
        Some((model, e)) => RouteError::from_attempt(&model, &e, false, log),
        None => RouteError {
            code: MODEL_TIMEOUT,
            message: "no model could be tried before the turn's deadline".to_owned(),
        },
    })
}

/// One attempt on one model, raced against its timeouts (`remaining`: what
/// is left before the turn's deadline bounds both); with the last usage it
/// reported (prompt, completion), whether it succeeded or not.
async fn attempt_once<G: Generator, S: Sleep>(
    generator: &G,
    request: &GenerateRequest,
    policy: &RoutePolicy,
    sleep: &S,
    remaining: u64,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> (Outcome, Option<(u32, u32)>) {
    let produced = Cell::new(false);
    let sent = Cell::new(false);
    let mut held: Vec<GenerationEvent> = Vec::new();
    // A stream may report usage more than once: its last report counts.
    let mut reported: Option<(u32, u32)> = None;
    let first = policy.first_output_ms.min(remaining);
    let total = policy.generation_timeout_ms.min(remaining).max(first);
    let outcome = {
        let mut forward = |event: GenerationEvent| match event {
            GenerationEvent::Text(text) => {
                produced.set(true);
                sent.set(true);
                on_event(GenerationEvent::Text(text));
            }
            GenerationEvent::ToolCall(_) => {
                produced.set(true);
                held.push(event);
            }
            GenerationEvent::Usage {
                prompt_tokens,
                completion_tokens,
            } => reported = Some((prompt_tokens, completion_tokens)),
        };
        let generation = std::pin::pin!(generator.generate(request, &mut forward));
        let timer = std::pin::pin!(async {
            sleep.sleep(first).await;
            if !produced.get() {
                return AttemptError::NoFirstOutput;
            }
            sleep.sleep(total - first).await;
            AttemptError::TooLong
        });
        match select(generation, timer).await {
            Either::Left((result, _)) => result.map_err(AttemptError::Port),
            Either::Right((timeout, _)) => Err(timeout),
        }
    };
    let outcome = match outcome {
        Ok(()) => {
            for event in held {
                on_event(event);
            }
            Outcome::Done
        }
        Err(e) if sent.get() => Outcome::Sent(e),
        Err(e) => Outcome::Unsent(e),
    };
    (outcome, reported)
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
