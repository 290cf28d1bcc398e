//! A completion's events ([`CompletionEvent`]) as OpenAI's answers: one
//! `chat.completion` object ([`Aggregate`]) or a stream of
//! `chat.completion.chunk` events ending in `data: [DONE]` ([`ChunkWriter`]).
//!
//! Two fields of ours ride along, which standard clients ignore: a message's
//! (or a chunk delta's) `tenant_tool_runs` (the tenant tools the server ran,
//! with their results) and `citations` (the matches of its searches), and
//! `usage.cost_micros` where the model is priced.

use super::errors::OpenAiError;
use protocol::chat::{ChatEvent, TurnUsage};
use protocol::completion::{CompletionEvent, FinishReason};
use serde_json::{json, Value};

/// What every answer of one completion repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `chatcmpl-<request id>`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the client named it (the served model once known).
    pub model: String,
}

fn usage_json(usage: &TurnUsage) -> Value {
    let mut v = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    });
    if let Some(cost) = usage.cost_micros {
        v["cost_micros"] = json!(cost);
    }
    v
}

/// A call of the client's function, as OpenAI shapes it.
fn tool_call_json(id: &str, name: &str, arguments: &str) -> Value {
    json!({ "id": id, "type": "function", "function": { "name": name, "arguments": arguments } })
}

/// A tenant tool run as shown to the client: the result parsed back to JSON.
fn run_json(name: &str, arguments: &str, result: &str, is_error: bool) -> Value {
    json!({
        "name": name,
        "arguments": arguments,
        "result": serde_json::from_str::<Value>(result).unwrap_or_else(|_| json!(result)),
        "is_error": is_error,
    })
}

/// The matches of a `vector_search` result: the answer's citations.
fn citations_of(name: &str, result: &str) -> Vec<Value> {
    if name != "vector_search" {
        return vec![];
    }
    serde_json::from_str::<Value>(result)
        .ok()
        .and_then(|v| v["matches"].as_array().cloned())
        .unwrap_or_default()
}

/// A failure after the completion started, as the status a non-streaming
/// client gets: a model that timed out 504, our own fault 500, any other
/// failure of the model 502.
fn failure(code: &str, message: &str) -> OpenAiError {
    let status = match code {
        "model_timeout" | "turn_timeout" => 504,
        "internal" | "storage_failed" => 500,
        "rate_limited" => 429,
        "budget_exceeded" => 429,
        _ => 502,
    };
    OpenAiError {
        status,
        message: message.to_owned(),
        kind: if status == 429 {
            "rate_limit_error"
        } else {
            "server_error"
        },
        param: None,
        code: Some(code.to_owned()),
        headers: vec![],
    }
}

/// Gathers a completion's events into one `chat.completion` object.
#[derive(Debug, Default)]
pub struct Aggregate {
    content: String,
    tool_calls: Vec<Value>,
    runs: Vec<Value>,
    citations: Vec<Value>,
    done: Option<(FinishReason, TurnUsage, String)>,
    error: Option<(String, String)>,
}

impl Aggregate {
    /// Takes one event.
    pub fn push(&mut self, event: CompletionEvent) {
        match event {
            CompletionEvent::Text { content } => self.content.push_str(&content),
            CompletionEvent::ToolCall {
                id,
                name,
                arguments,
                ..
            } => self.tool_calls.push(tool_call_json(&id, &name, &arguments)),
            CompletionEvent::ToolRun {
                name,
                arguments,
                result,
                is_error,
                ..
            } => {
                self.citations.extend(citations_of(&name, &result));
                self.runs
                    .push(run_json(&name, &arguments, &result, is_error));
            }
            CompletionEvent::Done {
                finish_reason,
                usage,
                model,
            } => self.done = Some((finish_reason, usage, model)),
            CompletionEvent::Error { code, message } => self.error = Some((code, message)),
        }
    }

    /// The `chat.completion` object, or the failure; a stream that ended
    /// without either is a 502.
    pub fn finish(self, meta: &Meta) -> Result<Value, OpenAiError> {
        if let Some((code, message)) = self.error {
            return Err(failure(&code, &message));
        }
        let Some((finish_reason, usage, model)) = self.done else {
            return Err(failure(
                "stream_failed",
                "the completion ended without an answer",
            ));
        };
        let mut message = json!({
            "role": "assistant",
            "content": if self.content.is_empty() && !self.tool_calls.is_empty() {
                Value::Null
            } else {
                json!(self.content)
            },
            "refusal": null,
        });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = json!(self.tool_calls);
        }
        if !self.runs.is_empty() {
            message["tenant_tool_runs"] = json!(self.runs);
            message["citations"] = json!(self.citations);
        }
        Ok(json!({
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": if model.is_empty() { meta.model.clone() } else { model },
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason.as_str(),
            }],
            "usage": usage_json(&usage),
            "system_fingerprint": null,
        }))
    }
}

/// Writes a completion's events as `chat.completion.chunk` SSE data.
#[derive(Debug)]
pub struct ChunkWriter {
    meta: Meta,
    include_usage: bool,
    sent_role: bool,
    ended: bool,
}

impl ChunkWriter {
    /// For one completion; `include_usage`: `stream_options.include_usage`.
    pub fn new(meta: Meta, include_usage: bool) -> Self {
        Self {
            meta,
            include_usage,
            sent_role: false,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<FinishReason>) -> Value {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason.map(FinishReason::as_str),
            }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The first delta carries the role, as OpenAI's do.
    fn delta(&mut self, mut delta: Value) -> Value {
        if !self.sent_role {
            self.sent_role = true;
            delta["role"] = json!("assistant");
        }
        delta
    }

    /// The SSE `data:` payloads of `event`, in order (`[DONE]` last).
    pub fn write(&mut self, event: CompletionEvent) -> Vec<String> {
        if self.ended {
            return vec![];
        }
        match event {
            CompletionEvent::Text { content } => {
                let delta = self.delta(json!({ "content": content }));
                vec![self.chunk(delta, None).to_string()]
            }
            CompletionEvent::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let mut call = tool_call_json(&id, &name, &arguments);
                call["index"] = json!(index);
                let delta = self.delta(json!({ "tool_calls": [call] }));
                vec![self.chunk(delta, None).to_string()]
            }
            CompletionEvent::ToolRun {
                name,
                arguments,
                result,
                is_error,
                ..
            } => {
                let citations = citations_of(&name, &result);
                let delta = self.delta(json!({
                    "tenant_tool_runs": [run_json(&name, &arguments, &result, is_error)],
                    "citations": citations,
                }));
                vec![self.chunk(delta, None).to_string()]
            }
            CompletionEvent::Done {
                finish_reason,
                usage,
                model,
            } => {
                self.ended = true;
                if !model.is_empty() {
                    self.meta.model = model;
                }
                let delta = self.delta(json!({}));
                let mut out = vec![self.chunk(delta, Some(finish_reason)).to_string()];
                if self.include_usage {
                    let mut last = self.chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage_json(&usage);
                    out.push(last.to_string());
                }
                out.push("[DONE]".to_owned());
                out
            }
            CompletionEvent::Error { code, message } => {
                self.ended = true;
                vec![failure(&code, &message).body().to_string()]
            }
        }
    }

    /// What to send when the stream broke without an end.
    pub fn broken(&mut self, message: &str) -> Vec<String> {
        self.write(CompletionEvent::Error {
            code: "stream_failed".into(),
            message: message.to_owned(),
        })
    }
}

/// A session turn's events ([`ChatEvent`]) as completion events: a tool
/// call and its result become one tenant tool run.
#[derive(Debug, Default)]
pub struct FromTurn {
    calls: Vec<(String, String)>,
}

impl FromTurn {
    /// The completion event of `event`, if it makes one.
    pub fn convert(&mut self, event: ChatEvent) -> Option<CompletionEvent> {
        match event {
            ChatEvent::ToolCall { id, arguments, .. } => {
                self.calls.push((id, arguments));
                None
            }
            ChatEvent::ToolResult {
                id,
                tool,
                result,
                is_error,
            } => {
                let arguments = self
                    .calls
                    .iter()
                    .find(|(call, _)| *call == id)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                Some(CompletionEvent::ToolRun {
                    id,
                    name: tool,
                    arguments,
                    result,
                    is_error,
                })
            }
            ChatEvent::Message { content } => Some(CompletionEvent::Text { content }),
            ChatEvent::Done { usage, model, .. } => Some(CompletionEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: usage.unwrap_or_default(),
                model: model.unwrap_or_default(),
            }),
            ChatEvent::Error { code, message } => Some(CompletionEvent::Error { code, message }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "chatcmpl-r1".into(),
            created: 1_700_000_000,
            model: "chat".into(),
        }
    }

    fn usage() -> TurnUsage {
        TurnUsage {
            input_tokens: 10,
            output_tokens: 3,
            cost_micros: Some(5),
        }
    }

    fn done(reason: FinishReason) -> CompletionEvent {
        CompletionEvent::Done {
            finish_reason: reason,
            usage: usage(),
            model: "@cf/m".into(),
        }
    }

    #[test]
    fn a_text_answer_is_one_completion_object() {
        let mut a = Aggregate::default();
        a.push(CompletionEvent::Text {
            content: "Hello".into(),
        });
        a.push(CompletionEvent::Text {
            content: " there".into(),
        });
        a.push(done(FinishReason::Stop));
        let v = a.finish(&meta()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "@cf/m", "the model that answered");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 13);
        assert_eq!(v["usage"]["cost_micros"], 5);
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn tool_calls_and_tenant_runs_in_the_object() {
        let mut a = Aggregate::default();
        a.push(CompletionEvent::ToolRun {
            id: "c0".into(),
            name: "vector_search".into(),
            arguments: "{}".into(),
            result: r#"{"matches":[{"id":"doc-1","score":0.8}]}"#.into(),
            is_error: false,
        });
        a.push(CompletionEvent::ToolCall {
            index: 0,
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Oslo"}"#.into(),
        });
        a.push(done(FinishReason::ToolCalls));
        let v = a.finish(&meta()).unwrap();
        let message = &v["choices"][0]["message"];
        assert!(message["content"].is_null());
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            message["tenant_tool_runs"][0]["result"]["matches"][0]["id"],
            "doc-1"
        );
        assert_eq!(message["citations"][0]["id"], "doc-1");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn failures_and_missing_ends_are_errors() {
        let mut a = Aggregate::default();
        a.push(CompletionEvent::Error {
            code: "model_timeout".into(),
            message: "slow".into(),
        });
        assert_eq!(a.finish(&meta()).unwrap_err().status, 504);
        let e = Aggregate::default().finish(&meta()).unwrap_err();
        assert_eq!((e.status, e.kind), (502, "server_error"));
    }

    #[test]
    fn chunks_in_order_with_role_first_usage_and_done() {
        let mut w = ChunkWriter::new(meta(), true);
        let mut out = Vec::new();
        out.extend(w.write(CompletionEvent::Text {
            content: "Hi".into(),
        }));
        out.extend(w.write(CompletionEvent::ToolCall {
            index: 0,
            id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        }));
        out.extend(w.write(done(FinishReason::ToolCalls)));
        assert!(w
            .write(CompletionEvent::Text {
                content: "late".into()
            })
            .is_empty());
        assert_eq!(out.len(), 5);
        let chunks: Vec<Value> = out[..4]
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "Hi");
        assert!(chunks[0]["usage"].is_null());
        assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"],
            0
        );
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[2]["model"], "@cf/m");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["completion_tokens"], 3);
        assert_eq!(out[4], "[DONE]");
        let mut plain = ChunkWriter::new(meta(), false);
        let end = plain.write(done(FinishReason::Length));
        assert_eq!(end.len(), 2, "no usage chunk unless asked");
        let first: Value = serde_json::from_str(&end[0]).unwrap();
        assert!(first.get("usage").is_none());
        assert_eq!(first["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn a_broken_stream_ends_with_an_error_and_no_done() {
        let mut w = ChunkWriter::new(meta(), false);
        let out = w.broken("cut");
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(v["error"]["code"], "stream_failed");
        assert!(w.write(done(FinishReason::Stop)).is_empty());
    }

    #[test]
    fn a_turns_events_become_completion_events() {
        let mut t = FromTurn::default();
        assert_eq!(
            t.convert(ChatEvent::ToolCall {
                id: "c".into(),
                tool: "vector_search".into(),
                arguments: "{\"query\":\"q\"}".into(),
            }),
            None
        );
        let run = t.convert(ChatEvent::ToolResult {
            id: "c".into(),
            tool: "vector_search".into(),
            result: "{}".into(),
            is_error: false,
        });
        assert!(
            matches!(run, Some(CompletionEvent::ToolRun { arguments, .. }) if arguments.contains("query"))
        );
        let end = t.convert(ChatEvent::Done {
            ok: true,
            message_seq: 3,
            usage: Some(usage()),
            model: None,
        });
        assert!(matches!(
            end,
            Some(CompletionEvent::Done {
                finish_reason: FinishReason::Stop,
                ..
            })
        ));
    }
}
