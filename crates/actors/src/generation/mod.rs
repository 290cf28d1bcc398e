//! Text generation: the embedded extractive generator (local default) and
//! Workers AI chat models (streaming, tool calls), behind
//! [`crate::ports::Generator`].

pub mod embedded;
pub mod workers_ai;

use crate::ports::{GenerateRequest, GenerationEvent, Generator, PortError};
use worker::Env;

/// The generator in use.
pub enum AnyGenerator {
    /// `local/extractive`.
    Embedded(embedded::ExtractiveGenerator),
    /// A Workers AI chat model.
    WorkersAi(workers_ai::WorkersAiGenerator),
}

impl AnyGenerator {
    /// Workers AI when `workers_ai`, else the embedded generator.
    pub fn new(env: &Env, workers_ai: bool, model: &str) -> Result<Self, PortError> {
        if workers_ai {
            let ai = env.ai("AI").map_err(|e| PortError::Failed {
                service: "Workers AI",
                message: e.to_string(),
            })?;
            Ok(Self::WorkersAi(workers_ai::WorkersAiGenerator::new(
                ai,
                model.to_owned(),
            )))
        } else {
            Ok(Self::Embedded(embedded::ExtractiveGenerator))
        }
    }
}

impl Generator for AnyGenerator {
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
