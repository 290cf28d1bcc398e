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

/// The reranker deployments may turn on (`RERANK_MODEL`).
pub const BGE_RERANKER: &str = "@cf/baai/bge-reranker-base";

/// The input of a reranking model: `{ query, contexts: [{ text }], top_k }`,
/// `top_k` the number of contexts, so that every one is scored.
#[derive(Debug, Serialize)]
pub struct RerankInput<'a> {
    /// The question.
    pub query: &'a str,
    /// The passages, in the order the scores are wanted.
    pub contexts: Vec<RerankContext<'a>>,
    /// How many scores to answer: all of them.
    pub top_k: usize,
}

/// One passage of a [`RerankInput`].
#[derive(Debug, Serialize)]
pub struct RerankContext<'a> {
    /// Its text.
    pub text: &'a str,
}

/// The output of a reranking model: `{ response: [{ id, score }] }`, `id`
/// the context's index in the request, best first.
#[derive(Debug, Deserialize)]
pub struct RerankOutput {
    /// The scored contexts.
    pub response: Vec<RerankScore>,
}

/// One scored context.
#[derive(Debug, Deserialize)]
pub struct RerankScore {
    /// The context's index in the request.
    pub id: usize,
    /// Its relevance to the query (higher is better).
    pub score: f64,
}

/// The scores of `contexts` contexts in request order; every context must
/// be scored exactly once, with a finite score.
pub fn rerank_scores(out: RerankOutput, contexts: usize) -> Result<Vec<f64>, PortError> {
    let bad = |message: String| PortError::BadShape {
        service: SERVICE,
        message,
    };
    let mut scores: Vec<Option<f64>> = vec![None; contexts];
    for s in out.response {
        let slot = scores
            .get_mut(s.id)
            .ok_or_else(|| bad(format!("a score for context {} of {contexts}", s.id)))?;
        if slot.is_some() || !s.score.is_finite() {
            return Err(bad(format!(
                "context {} scored twice or not a number",
                s.id
            )));
        }
        *slot = Some(s.score);
    }
    scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| bad(format!("context {i} of {contexts} was not scored"))))
        .collect()
}

/// A Workers AI reranking model, called directly or through the tenant's AI
/// Gateway.
pub struct WorkersAiReranker {
    ai: worker::Ai,
    model: String,
    route: crate::cloudflare::ai_binding::Route,
}

impl WorkersAiReranker {
    /// The model `model` behind the `AI` binding, reached by `route`.
    pub fn new(ai: worker::Ai, model: String, route: crate::cloudflare::ai_binding::Route) -> Self {
        Self { ai, model, route }
    }
}

impl crate::ports::Reranker for WorkersAiReranker {
    fn model(&self) -> &str {
        &self.model
    }

    async fn rerank(&self, query: &str, texts: &[String]) -> Result<Vec<f64>, PortError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let input = RerankInput {
            query,
            contexts: texts.iter().map(|t| RerankContext { text: t }).collect(),
            top_k: texts.len(),
        };
        let input = crate::cloudflare::to_js(&input).map_err(|message| PortError::Failed {
            service: SERVICE,
            message,
        })?;
        let raw =
            crate::cloudflare::ai_binding::run(&self.ai, &self.model, input, &self.route).await?;
        let output: RerankOutput =
            serde_wasm_bindgen::from_value(raw).map_err(|e| PortError::BadShape {
                service: SERVICE,
                message: e.to_string(),
            })?;
        rerank_scores(output, texts.len())
    }
}

#[cfg(test)]
mod rerank_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rerank_input_shape() {
        let input = RerankInput {
            query: "why does my String move?",
            contexts: vec![RerankContext { text: "a" }, RerankContext { text: "b" }],
            top_k: 2,
        };
        assert_eq!(
            serde_json::to_value(input).unwrap(),
            json!({"query": "why does my String move?", "contexts": [{"text": "a"}, {"text": "b"}], "top_k": 2})
        );
    }

    #[test]
    fn rerank_scores_come_back_in_request_order() {
        let parse = |v: serde_json::Value| serde_json::from_value::<RerankOutput>(v).unwrap();
        // Best first in the answer; request order out.
        let out = parse(
            json!({"response": [{"id": 2, "score": 0.9}, {"id": 0, "score": 0.4}, {"id": 1, "score": 0.01}]}),
        );
        assert_eq!(rerank_scores(out, 3).unwrap(), vec![0.4, 0.01, 0.9]);
        // A context left out, one out of range, or scored twice: a bad shape.
        for bad in [
            json!({"response": [{"id": 0, "score": 0.4}]}),
            json!({"response": [{"id": 0, "score": 0.4}, {"id": 5, "score": 0.1}]}),
            json!({"response": [{"id": 0, "score": 0.4}, {"id": 0, "score": 0.1}]}),
        ] {
            assert!(matches!(
                rerank_scores(parse(bad), 2),
                Err(PortError::BadShape { .. })
            ));
        }
        assert!(serde_json::from_value::<RerankOutput>(json!({"result": []})).is_err());
    }
}
