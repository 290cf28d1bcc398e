//! Embeddings through Workers AI (`@cf/baai/bge-base-en-v1.5` and friends).

use crate::ports::{Embedder, PortError};
use serde::{Deserialize, Serialize};

const SERVICE: &str = "Workers AI";
/// Most texts in one embedding call.
pub const MAX_TEXTS_PER_CALL: usize = 100;

/// The input of an embedding model.
#[derive(Debug, Serialize)]
pub struct EmbeddingInput<'a> {
    /// The texts.
    pub text: &'a [String],
    /// Pooling, fixed per index (`mean` is the model's default; `cls` vectors
    /// must never be mixed with `mean` ones in one index).
    pub pooling: &'static str,
}

/// The output of an embedding model: `{ shape: [n, dims], data: [[..], ..] }`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingOutput {
    /// `[number of texts, dimensions]`.
    pub shape: Vec<usize>,
    /// One vector per text.
    pub data: Vec<Vec<f32>>,
}

/// Checks an output against the request: one vector per text, all of the
/// expected dimensions.
pub fn check_output(
    out: EmbeddingOutput,
    texts: usize,
    dims: usize,
) -> Result<Vec<Vec<f32>>, PortError> {
    let bad = |message: String| PortError::BadShape {
        service: SERVICE,
        message,
    };
    if out.data.len() != texts {
        return Err(bad(format!("{} vectors for {texts} texts", out.data.len())));
    }
    if let Some(v) = out.data.iter().find(|v| v.len() != dims) {
        return Err(bad(format!(
            "a vector of {} dimensions, expected {dims}",
            v.len()
        )));
    }
    if out.shape.first().is_some_and(|&n| n != texts) {
        return Err(bad(format!("shape {:?} for {texts} texts", out.shape)));
    }
    Ok(out.data)
}

/// A Workers AI embedding model, called directly or through the tenant's
/// AI Gateway.
pub struct WorkersAiEmbedder {
    ai: worker::Ai,
    model: String,
    dims: usize,
    route: crate::cloudflare::ai_binding::Route,
}

impl WorkersAiEmbedder {
    /// The model `model` (of `dims` dimensions) behind the `AI` binding,
    /// reached by `route`.
    pub fn new(
        ai: worker::Ai,
        model: String,
        dims: usize,
        route: crate::cloudflare::ai_binding::Route,
    ) -> Self {
        Self {
            ai,
            model,
            dims,
            route,
        }
    }
}

impl Embedder for WorkersAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, PortError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(MAX_TEXTS_PER_CALL) {
            let input = EmbeddingInput {
                text: batch,
                pooling: "mean",
            };
            let failed = |message: String| PortError::Failed {
                service: SERVICE,
                message,
            };
            let input = crate::cloudflare::to_js(&input).map_err(failed)?;
            let raw = crate::cloudflare::ai_binding::run(&self.ai, &self.model, input, &self.route)
                .await?;
            let output: EmbeddingOutput =
                serde_wasm_bindgen::from_value(raw).map_err(|e| PortError::BadShape {
                    service: SERVICE,
                    message: e.to_string(),
                })?;
            out.extend(check_output(output, batch.len(), self.dims)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shape() {
        let texts = vec!["a".to_owned(), "b".to_owned()];
        let json = serde_json::to_value(EmbeddingInput {
            text: &texts,
            pooling: "mean",
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"text": ["a", "b"], "pooling": "mean"})
        );
    }

    #[test]
    fn output_is_checked() {
        let parse = |s: &str| serde_json::from_str::<EmbeddingOutput>(s).unwrap();
        let ok = parse(r#"{"shape":[2,3],"data":[[1,2,3],[4,5,6]]}"#);
        assert_eq!(check_output(ok, 2, 3).unwrap()[1], vec![4.0, 5.0, 6.0]);
        assert!(check_output(parse(r#"{"shape":[1,3],"data":[[1,2,3]]}"#), 2, 3).is_err());
        assert!(check_output(parse(r#"{"shape":[1,2],"data":[[1,2]]}"#), 1, 3).is_err());
        assert!(check_output(parse(r#"{"shape":[2,3],"data":[[1,2,3]]}"#), 1, 3).is_err());
        // The model's extra fields (such as "pooling") are ignored.
        let extra = parse(r#"{"shape":[1,1],"data":[[0.5]],"pooling":"mean"}"#);
        assert!(check_output(extra, 1, 1).is_ok());
    }
}
