//! Reading OpenAI request bodies (`POST /v1/chat/completions`,
//! `POST /v1/embeddings`) into our messages, parameter by parameter. A
//! parameter we do not support is refused with a 400 that names it, never
//! silently ignored: a client that asks for `n: 3` or `logprobs` must learn
//! that it will not get them.

use super::errors::OpenAiError;
use protocol::chat::MAX_MAX_TOKENS;
use protocol::completion::{
    CallOfMessage, ClientTool, CompletionMessage, GenerationOptions, ResponseFormat, Speaker,
    ToolChoice, MAX_CLIENT_TOOLS, MAX_COMPLETION_CHARS, MAX_COMPLETION_MESSAGES, MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES, TENANT_TOOLS,
};
use protocol::ingest::{MAX_EMBED_CHARS, MAX_EMBED_TEXTS};
use serde_json::{Map, Value};

/// A chat completion request, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// The model as asked (an alias or a model name).
    pub model: String,
    /// The conversation.
    pub messages: Vec<CompletionMessage>,
    /// Answer as `chat.completion.chunk` events.
    pub stream: bool,
    /// End a stream with a usage chunk.
    pub include_usage: bool,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The client's functions.
    pub tools: Vec<ClientTool>,
    /// `tool_choice`.
    pub tool_choice: ToolChoice,
    /// Sampling and shape.
    pub options: GenerationOptions,
    /// Our extension: the tenant's tools to run on the server.
    pub tenant_tools: Option<Vec<String>>,
}

impl ChatCompletion {
    /// The input tokens a model call of this conversation takes, estimated
    /// as a character in four over everything sent (messages, their tool
    /// calls, the functions' names, descriptions and schemas), and never
    /// below what a session turn reserves: what the completion reserves at
    /// its limiter before it starts.
    pub fn input_estimate(&self) -> u64 {
        let chars = |s: &str| s.chars().count() as u64;
        let messages: u64 = self
            .messages
            .iter()
            .map(|m| {
                chars(&m.content)
                    + m.tool_calls
                        .iter()
                        .map(|c| chars(&c.id) + chars(&c.name) + chars(&c.arguments))
                        .sum::<u64>()
            })
            .sum();
        let tools: u64 = self
            .tools
            .iter()
            .map(|t| chars(&t.name) + chars(&t.description) + chars(&t.parameters))
            .sum();
        (messages + tools)
            .div_ceil(4)
            .max(crate::limits::TURN_INPUT_ESTIMATE)
    }
}

/// An embeddings request, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    /// The model as asked.
    pub model: String,
    /// The texts.
    pub texts: Vec<String>,
    /// `encoding_format: "base64"` (little-endian `f32`s, base64).
    pub base64: bool,
    /// `dimensions`, if given.
    pub dimensions: Option<u64>,
}

fn invalid(param: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError::invalid(message, Some(param))
}

fn unsupported(param: &str, message: &str) -> OpenAiError {
    OpenAiError::invalid(format!("{param} is not supported: {message}"), Some(param))
        .with_code("unsupported_parameter")
}

fn object(body: &Value) -> Result<&Map<String, Value>, OpenAiError> {
    body.as_object()
        .ok_or_else(|| OpenAiError::invalid("the body must be a JSON object", None))
}

fn number(
    body: &Map<String, Value>,
    name: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, OpenAiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x as f32)),
            _ => Err(invalid(
                name,
                format!("{name} must be a number from {min} to {max}"),
            )),
        },
    }
}

fn model(body: &Map<String, Value>) -> Result<String, OpenAiError> {
    match body.get("model") {
        Some(Value::String(m)) if protocol::keys::valid_model(m) => Ok(m.clone()),
        Some(_) => Err(invalid(
            "model",
            "model must be a string of 1 to 128 characters of A-Z a-z 0-9 @ . _ / : -",
        )),
        None => Err(invalid("model", "model is required")),
    }
}

/// The text of a message's `content`: a string, or an array of text parts
/// (joined); `null` is empty. Other parts (images, audio) are refused.
fn content(value: Option<&Value>, param: &str) -> Result<String, OpenAiError> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(invalid(
                        &format!("{param}[{i}]"),
                        "only text content parts ({\"type\":\"text\",\"text\":...}) are supported",
                    )),
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(
            param,
            "content must be a string or an array of text parts",
        )),
    }
}

fn messages(body: &Map<String, Value>) -> Result<Vec<CompletionMessage>, OpenAiError> {
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages", "messages must be an array of messages"));
    };
    if list.is_empty() || list.len() > MAX_COMPLETION_MESSAGES {
        return Err(invalid(
            "messages",
            format!("messages must hold 1 to {MAX_COMPLETION_MESSAGES} messages"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    let mut chars = 0usize;
    for (i, m) in list.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = match m["role"].as_str() {
            Some("system") | Some("developer") => Speaker::System,
            Some("user") => Speaker::User,
            Some("assistant") => Speaker::Assistant,
            Some("tool") => Speaker::Tool,
            _ => {
                return Err(invalid(
                    &at("role"),
                    "role must be system, developer, user, assistant or tool",
                ))
            }
        };
        let text = content(m.get("content"), &at("content"))?;
        chars += text.chars().count();
        let mut tool_calls = Vec::new();
        if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
            let Some(calls) = calls.as_array().filter(|_| role == Speaker::Assistant) else {
                return Err(invalid(
                    &at("tool_calls"),
                    "tool_calls is an array, on assistant messages only",
                ));
            };
            for (j, call) in calls.iter().enumerate() {
                let (Some(id), Some(name), Some(arguments)) = (
                    call["id"].as_str(),
                    call["function"]["name"].as_str(),
                    call["function"]["arguments"].as_str(),
                ) else {
                    return Err(invalid(
                        &format!("messages[{i}].tool_calls[{j}]"),
                        "a tool call needs id, function.name and function.arguments (a string)",
                    ));
                };
                tool_calls.push(CallOfMessage {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: arguments.to_owned(),
                });
            }
        }
        let tool_call_id = match (role, m.get("tool_call_id")) {
            (Speaker::Tool, Some(Value::String(id))) if !id.is_empty() => Some(id.clone()),
            (Speaker::Tool, _) => {
                return Err(invalid(
                    &at("tool_call_id"),
                    "a tool message needs tool_call_id",
                ))
            }
            _ => None,
        };
        if role == Speaker::User && text.trim().is_empty() {
            return Err(invalid(&at("content"), "a user message needs text"));
        }
        out.push(CompletionMessage {
            role,
            content: text,
            tool_calls,
            tool_call_id,
        });
    }
    if chars > MAX_COMPLETION_CHARS {
        return Err(invalid(
            "messages",
            format!("messages hold at most {MAX_COMPLETION_CHARS} characters in all"),
        ));
    }
    Ok(out)
}

fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn tools(body: &Map<String, Value>) -> Result<Vec<ClientTool>, OpenAiError> {
    let Some(list) = body.get("tools").filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    let Some(list) = list.as_array() else {
        return Err(invalid("tools", "tools must be an array"));
    };
    if list.len() > MAX_CLIENT_TOOLS {
        return Err(invalid(
            "tools",
            format!("at most {MAX_CLIENT_TOOLS} tools"),
        ));
    }
    let mut out: Vec<ClientTool> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        if tool["type"].as_str() != Some("function") {
            return Err(invalid(
                &format!("{at}.type"),
                "only function tools are supported",
            ));
        }
        let f = &tool["function"];
        let name = f["name"].as_str().unwrap_or_default();
        if !valid_function_name(name) {
            return Err(invalid(
                &format!("{at}.function.name"),
                "a function name is 1 to 64 characters of a-z A-Z 0-9 _ -",
            ));
        }
        if TENANT_TOOLS.contains(&name) || out.iter().any(|t| t.name == name) {
            return Err(invalid(
                &format!("{at}.function.name"),
                format!("{name} is taken (by another tool, or by the tenant's tools)"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(invalid(
                    &format!("{at}.function.parameters"),
                    "parameters must be a JSON schema object",
                ))
            }
        };
        out.push(ClientTool {
            name: name.to_owned(),
            description: f["description"].as_str().unwrap_or_default().to_owned(),
            parameters: parameters.to_string(),
        });
    }
    Ok(out)
}

fn tool_choice(body: &Map<String, Value>, tools: &[ClientTool]) -> Result<ToolChoice, OpenAiError> {
    let choice =
        match body.get("tool_choice") {
            None | Some(Value::Null) => return Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => {
                    return Err(invalid(
                        "tool_choice",
                        "tool_choice must be auto, none, required or a named function",
                    ))
                }
            },
            Some(v) => match (v["type"].as_str(), v["function"]["name"].as_str()) {
                (Some("function"), Some(name)) => {
                    if !tools.iter().any(|t| t.name == name) {
                        return Err(invalid(
                            "tool_choice",
                            format!("tool_choice names {name}, which is not among tools"),
                        ));
                    }
                    ToolChoice::Function(name.to_owned())
                }
                _ => return Err(invalid(
                    "tool_choice",
                    "a named tool_choice is {\"type\":\"function\",\"function\":{\"name\":...}}",
                )),
            },
        };
    if tools.is_empty() && matches!(choice, ToolChoice::Required) {
        return Err(invalid("tool_choice", "tool_choice required needs tools"));
    }
    Ok(choice)
}

fn stop(body: &Map<String, Value>) -> Result<Vec<String>, OpenAiError> {
    let list = match body.get("stop") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop", "stop must be a string or an array of strings"))?,
        Some(_) => {
            return Err(invalid(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP_SEQUENCES
        || list
            .iter()
            .any(|s| !(1..=MAX_STOP_CHARS).contains(&s.chars().count()))
    {
        return Err(invalid(
            "stop",
            format!("stop holds at most {MAX_STOP_SEQUENCES} sequences of 1 to {MAX_STOP_CHARS} characters"),
        ));
    }
    Ok(list)
}

fn response_format(body: &Map<String, Value>) -> Result<ResponseFormat, OpenAiError> {
    let Some(format) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match format["type"].as_str() {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") if format["json_schema"].is_object() => Ok(ResponseFormat::JsonSchema(
            format["json_schema"].to_string(),
        )),
        _ => Err(invalid(
            "response_format",
            "response_format type must be text, json_object or json_schema (with json_schema)",
        )),
    }
}

fn max_tokens(body: &Map<String, Value>) -> Result<Option<u32>, OpenAiError> {
    let mut found = None;
    for name in ["max_completion_tokens", "max_tokens"] {
        match body.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_MAX_TOKENS)).contains(&n) => {
                    found = found.or(Some(n as u32));
                }
                _ => {
                    return Err(invalid(
                        name,
                        format!("{name} must be a whole number from 1 to {MAX_MAX_TOKENS}"),
                    ))
                }
            },
        }
    }
    Ok(found)
}

fn boolean(body: &Map<String, Value>, name: &str) -> Result<bool, OpenAiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(name, format!("{name} must be true or false"))),
    }
}

/// The parameters of a chat completion we read; any other is refused.
const CHAT_PARAMETERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "logprobs",
    "parallel_tool_calls",
    "store",
    "tenant_tools",
];

/// Whether `value` of OpenAI's chat parameter `name`, one we do not
/// implement, asks for nothing: null, or the value that means OpenAI's own
/// default (what client libraries send when they fill in every field).
/// `None`: not a parameter of OpenAI's chat completions.
fn asks_nothing(name: &str, value: &Value) -> Option<bool> {
    let default = match name {
        "audio" | "prediction" | "web_search_options" | "reasoning_effort" | "verbosity" => false,
        "functions" => value.as_array().is_some_and(Vec::is_empty),
        "function_call" => value == "none",
        "logit_bias" => value.as_object().is_some_and(Map::is_empty),
        "top_logprobs" => value.as_u64() == Some(0),
        "modalities" => value == &serde_json::json!(["text"]),
        "service_tier" => value == "auto" || value == "default",
        // Labels for stored completions (none are stored) and hints for
        // OpenAI's own caching and abuse checks: nothing to do.
        "metadata" => value.is_object(),
        "prompt_cache_key" | "safety_identifier" => value.is_string(),
        _ => return None,
    };
    Some(default || value.is_null())
}

/// Reads a chat completion request.
pub fn chat_completion(body: &Value) -> Result<ChatCompletion, OpenAiError> {
    let body = object(body)?;
    for (name, value) in body {
        if CHAT_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        match asks_nothing(name, value) {
            Some(true) => {}
            Some(false) => return Err(unsupported(
                name,
                "this server does not implement it (null, or OpenAI's default value, is accepted)",
            )),
            None => return Err(unsupported(name, "this server does not implement it")),
        }
    }
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err(unsupported("n", "one choice per request (n: 1)")),
    }
    if boolean(body, "logprobs")? {
        return Err(unsupported(
            "logprobs",
            "log probabilities are not available",
        ));
    }
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        return Err(unsupported(
            "parallel_tool_calls",
            "a model may call several tools at once here",
        ));
    }
    if boolean(body, "store")? {
        return Err(unsupported(
            "store",
            "completions are not stored; send x-session-id to keep a conversation",
        ));
    }
    match body.get("user") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("user", "user must be a string")),
    }
    let stream = boolean(body, "stream")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(invalid(
                    "stream_options",
                    "stream_options needs stream: true",
                ));
            }
            if let Some(other) = o.keys().find(|k| k.as_str() != "include_usage") {
                return Err(unsupported(
                    &format!("stream_options.{other}"),
                    "not implemented",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid(
                        "stream_options.include_usage",
                        "include_usage must be true or false",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|s| *s <= protocol::ingest::MAX_SAFE_INTEGER)
                .ok_or_else(|| {
                    invalid(
                        "seed",
                        "seed must be a whole number from 0 to 9007199254740991 (2^53 - 1)",
                    )
                })?,
        ),
    };
    let tenant_tools = match body.get("tenant_tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(name) if TENANT_TOOLS.contains(&name) => {
                        if !names.iter().any(|n: &String| n == name) {
                            names.push(name.to_owned());
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "tenant_tools",
                            format!("tenant_tools names tools among {}", TENANT_TOOLS.join(", ")),
                        ))
                    }
                }
            }
            Some(names)
        }
        Some(_) => {
            return Err(invalid(
                "tenant_tools",
                "tenant_tools must be an array of names",
            ))
        }
    };
    let tools = tools(body)?;
    Ok(ChatCompletion {
        model: model(body)?,
        messages: messages(body)?,
        stream,
        include_usage,
        max_tokens: max_tokens(body)?,
        tool_choice: tool_choice(body, &tools)?,
        tools,
        options: GenerationOptions {
            temperature: number(body, "temperature", 0.0, 2.0)?,
            top_p: number(body, "top_p", 0.0, 1.0)?,
            seed,
            presence_penalty: number(body, "presence_penalty", -2.0, 2.0)?,
            frequency_penalty: number(body, "frequency_penalty", -2.0, 2.0)?,
            stop: stop(body)?,
            response_format: response_format(body)?,
        },
        tenant_tools,
    })
}

/// The parameters of an embeddings request we read.
const EMBEDDING_PARAMETERS: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];

/// Reads an embeddings request.
pub fn embeddings(body: &Value) -> Result<EmbeddingsRequest, OpenAiError> {
    let body = object(body)?;
    if let Some(other) = body
        .keys()
        .find(|k| !EMBEDDING_PARAMETERS.contains(&k.as_str()))
    {
        return Err(unsupported(other, "this server does not implement it"));
    }
    let texts = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::Array(items))
            if items.iter().all(|v| v.is_number() || v.is_array()) && !items.is_empty() =>
        {
            return Err(unsupported(
                "input",
                "token arrays; send the text itself (a string or an array of strings)",
            ))
        }
        None => return Err(invalid("input", "input is required")),
        Some(_) => {
            return Err(invalid(
                "input",
                "input must be a string or an array of strings",
            ))
        }
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_TEXTS {
        return Err(invalid(
            "input",
            format!("input holds 1 to {MAX_EMBED_TEXTS} texts"),
        ));
    }
    if let Some(i) = texts
        .iter()
        .position(|t| t.is_empty() || t.chars().count() > MAX_EMBED_CHARS)
    {
        return Err(invalid(
            "input",
            format!("input[{i}] must be 1 to {MAX_EMBED_CHARS} characters"),
        ));
    }
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(invalid(
                "encoding_format",
                "encoding_format must be float or base64",
            ))
        }
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|d| *d > 0)
                .ok_or_else(|| invalid("dimensions", "dimensions must be a whole number"))?,
        ),
    };
    match body.get("user") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("user", "user must be a string")),
    }
    Ok(EmbeddingsRequest {
        model: model(body)?,
        texts,
        base64,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(e: &OpenAiError) -> Option<&str> {
        e.param.as_deref()
    }

    #[test]
    fn a_full_request_is_read() {
        let c = chat_completion(&json!({
            "model": "chat",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Oslo?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "rain"}
            ],
            "stream": true, "stream_options": {"include_usage": true},
            "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.9, "seed": 4,
            "stop": "END", "user": "u1", "n": 1,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_object"},
            "tenant_tools": ["vector_search", "vector_search"]
        }))
        .unwrap();
        assert_eq!(c.messages.len(), 4);
        assert_eq!(c.messages[0].role, Speaker::System);
        assert_eq!(c.messages[1].content, "Weather in Oslo?");
        assert_eq!(c.messages[2].tool_calls[0].name, "get_weather");
        assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert!(c.stream && c.include_usage);
        assert_eq!(c.max_tokens, Some(50));
        assert_eq!(c.options.stop, vec!["END".to_owned()]);
        assert_eq!(c.options.seed, Some(4));
        assert_eq!(c.tool_choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(c.options.response_format, ResponseFormat::JsonObject);
        assert_eq!(c.tenant_tools, Some(vec!["vector_search".into()]));
    }

    #[test]
    fn a_long_conversation_reserves_its_size() {
        let short = chat_completion(
            &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(short.input_estimate(), crate::limits::TURN_INPUT_ESTIMATE);
        let long = chat_completion(&json!({"model": "chat",
            "messages": [{"role": "user", "content": "x".repeat(40_000)}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d".repeat(3_999)}}]}))
        .unwrap();
        let schema = r#"{"properties":{},"type":"object"}"#.len() as u64;
        assert_eq!(
            long.input_estimate(),
            (40_000 + 1 + 3_999 + schema).div_ceil(4)
        );
    }

    #[test]
    fn unsupported_parameters_are_named() {
        let base = || json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        for (field, value) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("logit_bias", json!({"1": 5})),
            ("audio", json!({})),
            ("functions", json!([{"name": "f"}])),
            ("parallel_tool_calls", json!(false)),
            ("store", json!(true)),
        ] {
            let mut body = base();
            body[field] = value;
            let e = chat_completion(&body).unwrap_err();
            assert_eq!((e.status, param(&e)), (400, Some(field)), "{field}");
            assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        }
        // What clients send by default is fine.
        let mut body = base();
        body["n"] = json!(1);
        body["logprobs"] = json!(false);
        body["parallel_tool_calls"] = json!(true);
        assert!(chat_completion(&body).is_ok());
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let with = |patch: Value| {
            let mut body =
                json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            chat_completion(&body).unwrap_err()
        };
        assert_eq!(param(&with(json!({"temperature": 3}))), Some("temperature"));
        assert_eq!(param(&with(json!({"max_tokens": 0}))), Some("max_tokens"));
        assert_eq!(param(&with(json!({"messages": []}))), Some("messages"));
        assert_eq!(
            param(&with(
                json!({"messages": [{"role": "robot", "content": "x"}]})
            )),
            Some("messages[0].role")
        );
        assert_eq!(
            param(&with(
                json!({"messages": [{"role": "tool", "content": "x"}]})
            )),
            Some("messages[0].tool_call_id")
        );
        assert_eq!(
            param(&with(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
            )),
            Some("messages[0].content[0]")
        );
        assert_eq!(
            param(&with(json!({"tool_choice": "required"}))),
            Some("tool_choice")
        );
        assert_eq!(
            param(&with(
                json!({"tools": [{"type": "function", "function": {"name": "vector_search"}}]})
            )),
            Some("tools[0].function.name")
        );
        assert_eq!(
            param(&with(json!({"stop": ["a", "b", "c", "d", "e"]}))),
            Some("stop")
        );
        assert_eq!(
            param(&with(json!({"stream_options": {"include_usage": true}}))),
            Some("stream_options")
        );
        assert_eq!(
            param(&with(json!({"tenant_tools": ["rm"]}))),
            Some("tenant_tools")
        );
        assert_eq!(param(&with(json!({"model": 5}))), Some("model"));
        // A model name is ASCII of the allowed characters.
        for bad in ["é".repeat(64), "gpt 4".into(), String::new()] {
            assert_eq!(param(&with(json!({ "model": bad }))), Some("model"));
        }
        // A seed JavaScript holds exactly, or 400 (not a failed model call).
        assert_eq!(
            param(&with(json!({"seed": 9_007_199_254_740_993u64}))),
            Some("seed")
        );
        assert_eq!(param(&with(json!({"seed": -1}))), Some("seed"));
        let ok = json!({"model": "@cf/meta/llama-3.1-8b-instruct", "seed": 9_007_199_254_740_991u64,
            "messages": [{"role": "user", "content": "hi"}]});
        assert!(chat_completion(&ok).is_ok());
        let e = chat_completion(&json!([1])).unwrap_err();
        assert_eq!((e.status, param(&e)), (400, None));
    }

    #[test]
    fn openais_other_parameters_are_accepted_when_they_ask_for_nothing() {
        let with = |name: &str, value: Value| {
            let mut body =
                json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
            body[name] = value;
            chat_completion(&body)
        };
        for (name, value) in [
            ("logit_bias", json!({})),
            ("logit_bias", Value::Null),
            ("top_logprobs", json!(0)),
            ("modalities", json!(["text"])),
            ("service_tier", json!("auto")),
            ("service_tier", json!("default")),
            ("metadata", json!({"app": "x"})),
            ("prompt_cache_key", json!("k")),
            ("safety_identifier", json!("u-1")),
            ("functions", json!([])),
            ("function_call", json!("none")),
            ("audio", Value::Null),
            ("prediction", Value::Null),
            ("reasoning_effort", Value::Null),
            ("verbosity", Value::Null),
            ("web_search_options", Value::Null),
        ] {
            assert!(with(name, value.clone()).is_ok(), "{name}: {value}");
        }
        for (name, value) in [
            ("logit_bias", json!({"50256": -100})),
            ("top_logprobs", json!(3)),
            ("modalities", json!(["text", "audio"])),
            ("service_tier", json!("flex")),
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!("auto")),
            ("reasoning_effort", json!("high")),
            ("audio", json!({"voice": "alloy"})),
            ("metadata", json!("x")),
            ("frobnicate", Value::Null),
        ] {
            let e = with(name, value.clone()).unwrap_err();
            assert_eq!(param(&e), Some(name), "{name}: {value}");
        }
    }

    #[test]
    fn embeddings_are_read() {
        let one = embeddings(&json!({"model": "embedding", "input": "hello"})).unwrap();
        assert_eq!((one.texts.len(), one.base64), (1, false));
        let many = embeddings(&json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 768})).unwrap();
        assert_eq!(
            (many.texts.len(), many.base64, many.dimensions),
            (2, true, Some(768))
        );
        for (body, p) in [
            (json!({"model": "m", "input": [1, 2, 3]}), "input"),
            (json!({"model": "m", "input": [[1, 2]]}), "input"),
            (json!({"model": "m", "input": ""}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m"}), "input"),
            (
                json!({"model": "m", "input": "x", "encoding_format": "hex"}),
                "encoding_format",
            ),
            (json!({"input": "x"}), "model"),
            (json!({"model": "m", "input": "x", "extra": 1}), "extra"),
        ] {
            let e = embeddings(&body).unwrap_err();
            assert_eq!((e.status, param(&e)), (400, Some(p)), "{body}");
        }
        let tokens = embeddings(&json!({"model": "m", "input": [1, 2]})).unwrap_err();
        assert_eq!(tokens.code.as_deref(), Some("unsupported_parameter"));
    }
}
