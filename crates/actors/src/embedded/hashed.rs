//! The embedded embedder as a port: [`crate::embedding`] behind [`Embedder`].

use crate::ports::{Embedder, PortError};

/// `local/hashed-768`, usable natively and in wasm.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashedEmbedder;

impl Embedder for HashedEmbedder {
    fn model(&self) -> &str {
        crate::embedding::HASHED_MODEL
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError> {
        Ok(texts.iter().map(|t| crate::embedding::embed(t)).collect())
    }
}
