//! Workers AI chat models, streamed (`stream: true`), with tools.
//!
//! The Server-Sent Events framing is parsed by `eventsource-stream` (the
//! spec's rules: fields, multi-line `data`, CR/LF, comments); [`StreamParser`]
//! reads each event's data and handles every shape seen from Workers AI: `{"response": "..."}` deltas, OpenAI-style
//! `choices[0].delta.content`, tool calls streamed as partials keyed by
//! `index` whose `function.arguments` fragments are joined, complete tool calls
//! in either shape (`{name, arguments}` or `{id, type, function}`), `usage` on
//! a late chunk, and the closing `[DONE]`.

use crate::ports::{
    ChatMessage, GenerateRequest, GenerationEvent, Generator, PortError, Role, ToolCall,
};
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use protocol::completion::{ResponseFormat, ToolChoice};
use serde::Serialize;
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::BTreeMap;

const SERVICE: &str = "Workers AI";

fn bad(message: impl Into<String>) -> PortError {
    PortError::BadShape {
        service: SERVICE,
        message: message.into(),
    }
}

/// The request body of a chat model.
#[derive(Debug, Serialize)]
pub struct ChatInput {
    /// The conversation.
    pub messages: Vec<Value>,
    /// Tools, OpenAI-style.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Always `true` here.
    pub stream: bool,
    /// Always explicit.
    pub max_tokens: u32,
    /// Sampling, where the request sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Repeatable sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Penalty for tokens already present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Penalty by frequency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// `{"type":"json_object"}` or `{"type":"json_schema","json_schema":{..}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

/// One message in the documented format: assistant tool calls as
/// `{id, type: "function", function: {name, arguments: "<json>"}}`, tool
/// results as `{role: "tool", name, tool_call_id, content}`.
pub fn message_json(m: &ChatMessage) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({ "role": role, "content": m.content });
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments.to_string() } }))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    v
}

/// The whole request body for `request`.
///
/// Workers AI takes no `tool_choice`: `none` sends no tools, a named
/// function sends only that one, and `required` sends them all (a model that
/// answers without calling is answered as it is).
pub fn chat_input(request: &GenerateRequest) -> ChatInput {
    let options = &request.options;
    let offered = |name: &str| match &request.tool_choice {
        ToolChoice::None => false,
        ToolChoice::Function(only) => only == name,
        ToolChoice::Auto | ToolChoice::Required => true,
    };
    ChatInput {
        messages: request.messages.iter().map(message_json).collect(),
        tools: request
            .tools
            .iter()
            .filter(|t| offered(&t.name))
            .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.parameters } }))
            .collect(),
        stream: true,
        max_tokens: request.max_tokens,
        temperature: options.temperature,
        top_p: options.top_p,
        seed: options.seed,
        presence_penalty: options.presence_penalty,
        frequency_penalty: options.frequency_penalty,
        response_format: match &options.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(json!({ "type": "json_object" })),
            ResponseFormat::JsonSchema(schema) => Some(json!({
                "type": "json_schema",
                "json_schema": serde_json::from_str::<Value>(schema).unwrap_or(Value::Null),
            })),
        },
    }
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Reads the data of a model's SSE events, one event at a time.
#[derive(Debug, Default)]
pub struct StreamParser {
    partial_calls: BTreeMap<u64, PartialCall>,
    complete_calls: Vec<ToolCall>,
    done: bool,
}

fn arguments_value(raw: &Value) -> Result<Value, PortError> {
    match raw {
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        Value::String(s) => {
            serde_json::from_str(s).map_err(|e| bad(format!("tool arguments are not JSON: {e}")))
        }
        Value::Null => Ok(json!({})),
        other => Ok(other.clone()),
    }
}

impl StreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `[DONE]` has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads one event's data; returns the text and usage it carries (tool
    /// calls are returned by [`Self::finish`], once joined).
    pub fn data(&mut self, data: &str) -> Result<Vec<GenerationEvent>, PortError> {
        let mut out = Vec::new();
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(out);
        }
        if data.is_empty() {
            return Ok(out);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| bad(format!("a stream chunk is not JSON: {e}")))?;
        if let Some(text) = chunk["response"].as_str() {
            if !text.is_empty() {
                out.push(GenerationEvent::Text(text.to_owned()));
            }
        }
        let delta = &chunk["choices"][0]["delta"];
        if let Some(text) = delta["content"].as_str() {
            if !text.is_empty() {
                out.push(GenerationEvent::Text(text.to_owned()));
            }
        }
        for calls in [&chunk["tool_calls"], &delta["tool_calls"]] {
            for call in calls.as_array().into_iter().flatten() {
                self.tool_call_piece(call)?;
            }
        }
        let usage = &chunk["usage"];
        if usage.is_object() {
            let n = |k: &str| u32::try_from(usage[k].as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
            out.push(GenerationEvent::Usage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
            });
        }
        Ok(out)
    }

    fn tool_call_piece(&mut self, call: &Value) -> Result<(), PortError> {
        let function = if call["function"].is_object() {
            &call["function"]
        } else {
            call
        };
        if let Some(index) = call["index"].as_u64() {
            let p = self.partial_calls.entry(index).or_default();
            if let Some(id) = call["id"].as_str() {
                p.id = Some(id.to_owned());
            }
            if let Some(name) = function["name"].as_str() {
                p.name.push_str(name);
            }
            match &function["arguments"] {
                Value::String(s) => p.arguments.push_str(s),
                Value::Null => {}
                other => p.arguments.push_str(&other.to_string()),
            }
            return Ok(());
        }
        let name = function["name"]
            .as_str()
            .ok_or_else(|| bad("a tool call without a name"))?;
        let id = call["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("call-{}", self.complete_calls.len()));
        self.complete_calls.push(ToolCall {
            id,
            name: name.to_owned(),
            arguments: arguments_value(&function["arguments"])?,
        });
        Ok(())
    }

    /// Ends the stream: the tool calls, joined and parsed. Tool arguments
    /// that are not JSON are an error.
    pub fn finish(mut self) -> Result<Vec<ToolCall>, PortError> {
        let mut calls = std::mem::take(&mut self.complete_calls);
        for (index, p) in std::mem::take(&mut self.partial_calls) {
            if p.name.is_empty() {
                return Err(bad("a streamed tool call never got a name"));
            }
            calls.push(ToolCall {
                id: p.id.unwrap_or_else(|| format!("call-{index}")),
                name: p.name,
                arguments: arguments_value(&Value::String(p.arguments))?,
            });
        }
        Ok(calls)
    }
}

/// Reads a model's SSE byte stream to its end, handing text and usage to
/// `on_event` as they arrive; returns the tool calls. A stream that breaks,
/// or is cut in the middle of an event before `[DONE]`, is an error.
pub async fn read_stream<S, B, E>(
    bytes: S,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> Result<Vec<ToolCall>, PortError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    // Whether the bytes so far end at a line break: an event is dispatched
    // only at a blank line, so a stream that stops elsewhere was cut.
    let at_line_end = Cell::new(true);
    let bytes = bytes.inspect(|chunk| {
        if let Ok(chunk) = chunk {
            if let Some(last) = chunk.as_ref().last() {
                at_line_end.set(*last == b'\n');
            }
        }
    });
    let mut events = bytes.eventsource();
    let mut parser = StreamParser::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(e) => PortError::Failed {
                service: SERVICE,
                message: e.to_string(),
            },
            other => bad(other.to_string()),
        })?;
        for e in parser.data(&event.data)? {
            on_event(e);
        }
    }
    if !parser.is_done() && !at_line_end.get() {
        return Err(bad("the stream ended in the middle of an event"));
    }
    parser.finish()
}

/// A Workers AI chat model, called directly or through the tenant's AI
/// Gateway.
pub struct WorkersAiGenerator {
    ai: worker::Ai,
    model: String,
    route: crate::cloudflare::ai_binding::Route,
}

impl WorkersAiGenerator {
    /// `model` behind the `AI` binding, reached by `route`.
    pub fn new(ai: worker::Ai, model: String, route: crate::cloudflare::ai_binding::Route) -> Self {
        Self { ai, model, route }
    }
}

impl Generator for WorkersAiGenerator {
    fn model(&self) -> &str {
        &self.model
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        use worker::wasm_bindgen::JsCast;
        // A client's tool schemas ride in the input: read as JSON reads
        // them, so an int64 bound in one is a number, not a failed turn.
        let input = crate::cloudflare::to_js_via_json(&chat_input(request)).map_err(bad)?;
        let output =
            crate::cloudflare::ai_binding::run(&self.ai, &request.model, input, &self.route)
                .await?;
        let stream = output
            .dyn_into::<worker::web_sys::ReadableStream>()
            .map_err(|_| bad("a streamed chat answer is not a stream"))?;
        let bytes = worker::ByteStream::from(stream);
        for call in read_stream(bytes, on_event).await? {
            on_event(GenerationEvent::ToolCall(call));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&str]) -> (Vec<GenerationEvent>, Result<Vec<ToolCall>, PortError>) {
        let bytes = futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::convert::Infallible>(c.as_bytes().to_vec())),
        );
        let mut events = Vec::new();
        let calls = futures::executor::block_on(read_stream(bytes, &mut |e| events.push(e)));
        (events, calls)
    }

    #[test]
    fn response_deltas_and_late_usage() {
        let (events, calls) = parse_all(&[
            "data: {\"response\":\"Hel\"}\n\ndata: {\"respo",
            "nse\":\"lo\"}\n\n",
            "data: {\"response\":\"\",\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
            "data: [DONE]\n\n",
        ]);
        assert_eq!(crate::generation::text_of(&events), "Hello");
        assert!(events.contains(&GenerationEvent::Usage {
            prompt_tokens: 7,
            completion_tokens: 2
        }));
        assert!(calls.unwrap().is_empty());
    }

    #[test]
    fn openai_style_deltas() {
        let (events, _) = parse_all(&[
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hi \"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"there\"}}]}\n\n",
            "data: [DONE]\n",
        ]);
        assert_eq!(crate::generation::text_of(&events), "Hi there");
    }

    #[test]
    fn partial_tool_calls_are_joined_by_index() {
        let (_, calls) = parse_all(&[
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"vector_search\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"que\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"c2\",\"function\":{\"name\":\"kv_get\",\"arguments\":\"{\\\"key\\\":\\\"config:a\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ry\\\":\\\"rust\\\"}\"}}]}}]}\n\n",
            "data: [DONE]\n\n",
        ]);
        let calls = calls.unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str()),
            ("c1", "vector_search")
        );
        assert_eq!(calls[0].arguments, json!({"query": "rust"}));
        assert_eq!(calls[1].arguments, json!({"key": "config:a"}));
    }

    #[test]
    fn complete_tool_calls_in_both_shapes() {
        let (_, calls) = parse_all(&[
            "data: {\"response\":\"\",\"tool_calls\":[{\"name\":\"vector_search\",\"arguments\":{\"query\":\"a\"}}]}\n\n",
            "data: {\"tool_calls\":[{\"id\":\"x9\",\"type\":\"function\",\"function\":{\"name\":\"kv_get\",\"arguments\":\"{\\\"key\\\":\\\"config:b\\\"}\"}}]}\n\n",
            "data: [DONE]\n\n",
        ]);
        let calls = calls.unwrap();
        assert_eq!(calls[0].name, "vector_search");
        assert_eq!(calls[0].arguments, json!({"query": "a"}));
        assert_eq!(calls[1].id, "x9");
        assert_eq!(calls[1].arguments, json!({"key": "config:b"}));
    }

    #[test]
    fn malformed_streams_are_errors() {
        let mut p = StreamParser::new();
        assert!(p.data("{not json}").is_err());
        let (_, calls) = parse_all(&["data: {not json}\n\n"]);
        assert!(calls.is_err(), "a chunk that is not JSON");
        let (_, calls) = parse_all(&["data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"kv_get\",\"arguments\":\"{\\\"key\"}}]}}]}\n\n"]);
        assert!(calls.is_err(), "arguments cut short");
        let (_, calls) = parse_all(&["data: {\"response\":\"a\"}\n\ndata: {\"resp"]);
        assert!(calls.is_err(), "stream cut in a chunk");
        // Multi-line data is one chunk (the SSE rules), not two broken ones.
        let (events, calls) =
            parse_all(&["data: {\"response\":\ndata: \"ok\"}\n\ndata: [DONE]\n\n"]);
        assert_eq!(crate::generation::text_of(&events), "ok");
        assert!(calls.unwrap().is_empty());
    }

    #[test]
    fn request_shape() {
        let req = GenerateRequest {
            options: Default::default(),
            tool_choice: Default::default(),
            model: "@cf/meta/llama-3.3-70b-instruct-fp8-fast".into(),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "q".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                    name: None,
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "kv_get".into(),
                        arguments: json!({"key":"config:a"}),
                    }],
                    tool_call_id: None,
                    name: None,
                },
                ChatMessage {
                    role: Role::Tool,
                    content: "{}".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("c1".into()),
                    name: Some("kv_get".into()),
                },
            ],
            tools: vec![crate::ports::ToolSpec {
                name: "kv_get".into(),
                description: "d".into(),
                parameters: json!({"type":"object"}),
            }],
            max_tokens: 256,
        };
        let v = serde_json::to_value(chat_input(&req)).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["max_tokens"], 256);
        assert_eq!(
            v["tools"][0],
            json!({"type":"function","function":{"name":"kv_get","description":"d","parameters":{"type":"object"}}})
        );
        assert_eq!(
            v["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{\"key\":\"config:a\"}"
        );
        assert_eq!(
            v["messages"][2],
            json!({"role":"tool","content":"{}","tool_call_id":"c1","name":"kv_get"})
        );
        assert!(v.get("temperature").is_none(), "unset options are left out");
        assert!(v.get("response_format").is_none());
    }

    #[test]
    fn options_and_tool_choice_reach_the_model() {
        use protocol::completion::GenerationOptions;
        let spec = |n: &str| crate::ports::ToolSpec {
            name: n.into(),
            description: String::new(),
            parameters: json!({}),
        };
        let mut req = GenerateRequest {
            tools: vec![spec("a"), spec("b")],
            max_tokens: 9,
            options: GenerationOptions {
                temperature: Some(0.5),
                top_p: Some(0.9),
                seed: Some(7),
                response_format: ResponseFormat::JsonSchema(r#"{"name":"x","schema":{}}"#.into()),
                ..GenerationOptions::default()
            },
            ..GenerateRequest::default()
        };
        let v = serde_json::to_value(chat_input(&req)).unwrap();
        assert_eq!(
            (v["temperature"].as_f64(), v["seed"].as_u64()),
            (Some(0.5), Some(7))
        );
        assert_eq!(v["response_format"]["type"], "json_schema");
        assert_eq!(v["response_format"]["json_schema"]["name"], "x");
        assert_eq!(v["tools"].as_array().map(Vec::len), Some(2));
        req.tool_choice = ToolChoice::Function("b".into());
        let v = serde_json::to_value(chat_input(&req)).unwrap();
        assert_eq!(v["tools"][0]["function"]["name"], "b");
        assert_eq!(v["tools"].as_array().map(Vec::len), Some(1));
        req.tool_choice = ToolChoice::None;
        let v = serde_json::to_value(chat_input(&req)).unwrap();
        assert!(v.get("tools").is_none());
    }
}
