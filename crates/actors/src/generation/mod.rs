//! Text generation: the embedded extractive generator (local default) and
//! Workers AI chat models (streaming, tool calls), behind
//! [`crate::ports::Generator`]; in test deployments, wrapped in
//! [`faults::FaultInjecting`]. A turn's generation is served by a chain of
//! them (the tenant's default model and its fallbacks) through
//! [`routing`].

pub mod embedded;
pub mod faults;
pub mod routing;
pub mod workers_ai;

use crate::cloudflare::ai_binding::Route;
use crate::ports::{GenerateRequest, GenerationEvent, Generator, PortError, RuntimeSleep};
use worker::Env;

/// A real generator.
pub enum BaseGenerator {
    /// `local/extractive`.
    Embedded(embedded::ExtractiveGenerator),
    /// A Workers AI chat model.
    WorkersAi(workers_ai::WorkersAiGenerator),
}

/// The generator in use: a real one, or a real one with injected faults.
pub enum AnyGenerator {
    /// As configured.
    Plain(BaseGenerator),
    /// With the faults the tests ask for (`FAULT_INJECTION` deployments).
    Faulty(faults::FaultInjecting<BaseGenerator, RuntimeSleep>),
}

/// How a turn's generators are built.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// Workers AI (else the embedded generator standing in for each model).
    pub workers_ai: bool,
    /// Wrap each in [`faults::FaultInjecting`] (test deployments).
    pub fault_injection: bool,
    /// How Workers AI is reached (the tenant's AI Gateway).
    pub route: Route,
}

impl AnyGenerator {
    /// One generator per model of `chain`, in order.
    pub fn chain(
        env: &Env,
        config: &ChainConfig,
        chain: &[String],
    ) -> Result<Vec<Self>, PortError> {
        chain
            .iter()
            .enumerate()
            .map(|(position, model)| Self::new(env, config, model, position))
            .collect()
    }

    /// Workers AI when configured, else the embedded generator standing in
    /// for `model` (named `local/extractive:<model>`); wrapped for fault injection as the model at
    /// `position` of its chain when configured.
    pub fn new(
        env: &Env,
        config: &ChainConfig,
        model: &str,
        position: usize,
    ) -> Result<Self, PortError> {
        let base = if config.workers_ai {
            let ai = env.ai("AI").map_err(|e| PortError::Failed {
                service: "Workers AI",
                message: e.to_string(),
            })?;
            BaseGenerator::WorkersAi(workers_ai::WorkersAiGenerator::new(
                ai,
                model.to_owned(),
                config.route.clone(),
            ))
        } else {
            BaseGenerator::Embedded(embedded::ExtractiveGenerator::standing_in_for(model))
        };
        Ok(if config.fault_injection {
            Self::Faulty(faults::FaultInjecting::new(base, RuntimeSleep, position))
        } else {
            Self::Plain(base)
        })
    }
}

impl Generator for BaseGenerator {
    fn model(&self) -> &str {
        match self {
            Self::Embedded(g) => g.model(),
            Self::WorkersAi(g) => g.model(),
        }
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        match self {
            Self::Embedded(g) => g.generate(request, on_event).await,
            Self::WorkersAi(g) => g.generate(request, on_event).await,
        }
    }
}

impl Generator for AnyGenerator {
    fn model(&self) -> &str {
        match self {
            Self::Plain(g) => g.model(),
            Self::Faulty(g) => g.model(),
        }
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        match self {
            Self::Plain(g) => g.generate(request, on_event).await,
            Self::Faulty(g) => g.generate(request, on_event).await,
        }
    }
}

/// The text of generation events, in order (for the tests of this module).
#[cfg(test)]
pub(crate) fn text_of(events: &[GenerationEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            GenerationEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}
