//! Text generation: the embedded extractive generator (local default) and
//! Workers AI chat models (streaming, tool calls), behind
//! [`crate::ports::Generator`]; in test deployments, wrapped in
//! [`faults::FaultInjecting`].

pub mod embedded;
pub mod faults;
pub mod workers_ai;

use crate::ports::{GenerateRequest, GenerationEvent, Generator, PortError};
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
    Faulty(faults::FaultInjecting<BaseGenerator, faults::RuntimeSleep>),
}

impl AnyGenerator {
    /// Workers AI when `workers_ai`, else the embedded generator; wrapped for
    /// fault injection when `fault_injection`.
    pub fn new(
        env: &Env,
        workers_ai: bool,
        model: &str,
        fault_injection: bool,
    ) -> Result<Self, PortError> {
        let base = if workers_ai {
            let ai = env.ai("AI").map_err(|e| PortError::Failed {
                service: "Workers AI",
                message: e.to_string(),
            })?;
            BaseGenerator::WorkersAi(workers_ai::WorkersAiGenerator::new(ai, model.to_owned()))
        } else {
            BaseGenerator::Embedded(embedded::ExtractiveGenerator)
        };
        Ok(if fault_injection {
            Self::Faulty(faults::FaultInjecting::new(base, faults::RuntimeSleep))
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
