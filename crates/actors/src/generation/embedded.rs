//! The embedded generator: deterministic, and honest about what it is — it
//! is not a language model. It decides like a tool-using model would (search
//! the tenant's documents, or read a KV key the user names), then answers by
//! quoting the passages it found, with numbered citations, streamed word by
//! word. It exercises every path a real model does: tool calls, tool results
//! fed back, streamed text, usage.

use crate::ports::{
    ChatMessage, GenerateRequest, GenerationEvent, Generator, PortError, Role, ToolCall, ToolSpec,
};
use protocol::completion::{ResponseFormat, ToolChoice};
use serde_json::{json, Value};

/// The name it reports wherever a model name appears.
pub const EXTRACTIVE_MODEL: &str = "local/extractive";

/// See the module documentation. It answers under the name it is given:
/// in an embedded deployment, every model of a tenant's chain is served by
/// it under that model's name, so routing (fallbacks, timeouts) runs and is
/// reported exactly as with Workers AI.
#[derive(Debug, Clone)]
pub struct ExtractiveGenerator {
    name: String,
}

impl Default for ExtractiveGenerator {
    fn default() -> Self {
        Self::named(EXTRACTIVE_MODEL)
    }
}

impl ExtractiveGenerator {
    /// The generator, answering as `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The generator standing in for `model` (a position of a chain in the
    /// embedded configuration), named so that nobody mistakes its answer for
    /// that model's: `local/extractive:<model>` (cut to the 128 characters a
    /// model name may have), or `local/extractive` itself.
    pub fn standing_in_for(model: &str) -> Self {
        if model == EXTRACTIVE_MODEL {
            return Self::default();
        }
        let mut name = format!("{EXTRACTIVE_MODEL}:{model}");
        // Model names are checked ASCII before they get here; cut at a
        // character boundary all the same, so no name can panic.
        let mut end = name.len().min(protocol::coordinator::MAX_MODEL_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        Self { name }
    }
}

/// A `prefix:rest` word of `text` that looks like a KV key (`config:theme`).
pub fn kv_key_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| "`'\".,;!?()[]{}".contains(c)))
        .find(|w| {
            let Some((prefix, rest)) = w.split_once(':') else {
                return false;
            };
            !prefix.is_empty()
                && prefix.bytes().all(|b| b.is_ascii_lowercase())
                && !rest.is_empty()
                && !rest.starts_with('/')
        })
        .map(str::to_owned)
}

fn first_sentence(text: &str, max_chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = flat
        .char_indices()
        .find(|&(i, c)| c == '.' && i > 20)
        .map(|(i, _)| i + 1)
        .unwrap_or(flat.len());
    let sentence = flat.get(..end).unwrap_or(&flat);
    if sentence.chars().count() > max_chars {
        let cut: String = sentence.chars().take(max_chars).collect();
        format!("{}…", cut.trim_end())
    } else {
        sentence.to_owned()
    }
}

/// How a passage is cited: its document and its position there
/// (`doc-a (chunk 3)`); a result without a position (stored before matches
/// carried one) names the chunk's id instead.
fn source(m: &Value) -> String {
    let doc = m["docId"].as_str().unwrap_or("?");
    match m["chunk"].as_u64() {
        Some(chunk) => format!("{doc} (chunk {chunk})"),
        None => format!("{doc} ({})", m["id"].as_str().unwrap_or("?")),
    }
}

/// The answer to the tool results since the last user message.
pub fn compose_answer(results: &[&ChatMessage]) -> String {
    let mut parts = Vec::new();
    for msg in results {
        let value: Value = serde_json::from_str(&msg.content).unwrap_or(Value::Null);
        match msg.name.as_deref() {
            Some("vector_search") => {
                let matches = value["matches"].as_array().cloned().unwrap_or_default();
                if matches.is_empty() {
                    parts.push("I found nothing about that in this tenant's documents.".to_owned());
                    continue;
                }
                let mut answer = String::from("From this tenant's documents:");
                let mut sources = String::from("Sources:");
                for (n, m) in matches.iter().take(3).enumerate() {
                    let text = m["text"].as_str().unwrap_or_default();
                    answer.push_str(&format!(" {} [{}]", first_sentence(text, 160), n + 1));
                    sources.push_str(&format!(" [{}] {}", n + 1, source(m)));
                }
                parts.push(format!("{answer} {sources}"));
            }
            Some("kv_get") => {
                let key = value["key"].as_str().unwrap_or("?");
                let text = match (&value["error"], &value["value"]) {
                    (Value::String(e), _) => format!("I could not read that key: {e}"),
                    (_, Value::String(v)) => format!("The value of {key} is {v}."),
                    _ => format!("There is no value stored for {key}."),
                };
                parts.push(text);
            }
            Some(other) => parts.push(format!(
                "The {other} tool answered: {}",
                first_sentence(&msg.content, 200)
            )),
            None => parts.push("A tool answered, but I cannot use its result.".to_owned()),
        }
    }
    parts.join(" ")
}

/// Whether `question` names the function `name` (as written, or with its
/// underscores and dashes read as spaces), ignoring case.
fn mentions(question: &str, name: &str) -> bool {
    let question = question.to_lowercase();
    let name = name.to_lowercase();
    question.contains(&name) || question.contains(&name.replace(['_', '-'], " "))
}

/// Most required properties a made-up call fills ([`arguments_for`]).
const MAX_ARGUMENTS: usize = 32;
/// Most characters of the question a made-up string argument carries.
const MAX_ARGUMENT_CHARS: usize = 500;

/// Arguments for a call of `tool` about `question`, from its JSON schema:
/// each required property gets the question (a string, its first
/// [`MAX_ARGUMENT_CHARS`] characters), 0, false, an empty array or object
/// by its type; nothing else is made up. At most [`MAX_ARGUMENTS`]
/// properties: a model's call is bounded by its output, and a schema
/// listing thousands must not make an answer of the question times
/// thousands.
fn arguments_for(tool: &ToolSpec, question: &str) -> Value {
    let schema = &tool.parameters;
    let question: String = question.chars().take(MAX_ARGUMENT_CHARS).collect();
    let mut arguments = serde_json::Map::new();
    for name in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ARGUMENTS)
    {
        let Some(name) = name.as_str() else { continue };
        let value = match schema["properties"][name]["type"].as_str() {
            Some("integer") | Some("number") => json!(0),
            Some("boolean") => json!(false),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!(question),
        };
        arguments.insert(name.to_owned(), value);
    }
    Value::Object(arguments)
}

/// Rough token count: words.
fn words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

impl Generator for ExtractiveGenerator {
    fn model(&self) -> &str {
        &self.name
    }

    async fn generate(
        &self,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<(), PortError> {
        if let ResponseFormat::JsonSchema(_) = request.options.response_format {
            return Err(PortError::Unsupported(format!(
                "{} cannot follow a JSON schema",
                self.name
            )));
        }
        let offered: Vec<&ToolSpec> = request
            .tools
            .iter()
            .filter(|t| match &request.tool_choice {
                ToolChoice::None => false,
                ToolChoice::Function(only) => &t.name == only,
                ToolChoice::Auto | ToolChoice::Required => true,
            })
            .collect();
        let has_tool = |name: &str| offered.iter().any(|t| t.name == name);
        let last_user = request.messages.iter().rposition(|m| m.role == Role::User);
        // The tools' answers to the question (to the whole conversation
        // when it holds no user message).
        let tool_results: Vec<&ChatMessage> = request
            .messages
            .iter()
            .skip(last_user.map_or(0, |i| i + 1))
            .filter(|m| m.role == Role::Tool)
            .collect();
        let question = last_user
            .and_then(|i| request.messages.get(i))
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let answer = if tool_results.is_empty() {
            // A function the question names (`get_weather`, or "get
            // weather"), other than the tenant's own tools.
            let named = offered.iter().find(|t| {
                !matches!(t.name.as_str(), "kv_get" | "vector_search")
                    && mentions(question, &t.name)
            });
            let call = match (kv_key_in(question), named) {
                (_, Some(tool)) => Some((tool.name.as_str(), arguments_for(tool, question))),
                (Some(key), None) if has_tool("kv_get") => Some(("kv_get", json!({ "key": key }))),
                // No question, nothing to search for.
                _ if question.trim().is_empty() && request.tool_choice == ToolChoice::Auto => None,
                _ if has_tool("vector_search") => {
                    Some(("vector_search", json!({ "query": question, "topK": 3 })))
                }
                // Bound to call one: the first offered.
                _ if request.tool_choice != ToolChoice::Auto => offered
                    .first()
                    .map(|tool| (tool.name.as_str(), arguments_for(tool, question))),
                _ => None,
            };
            if let Some((name, arguments)) = call {
                on_event(GenerationEvent::ToolCall(ToolCall {
                    id: format!("call-{}", request.messages.len()),
                    name: name.to_owned(),
                    arguments,
                }));
                return Ok(());
            }
            if question.trim().is_empty() {
                "There is no question to answer: send a user message.".to_owned()
            } else {
                "I can only answer from this tenant's documents, and I have no tool to read them."
                    .to_owned()
            }
        } else {
            compose_answer(&tool_results)
        };
        let answer = match request.options.response_format {
            ResponseFormat::JsonObject => json!({ "answer": answer }).to_string(),
            _ => answer,
        };
        let mut emitted = 0;
        for (i, word) in answer.split(' ').enumerate() {
            if emitted >= request.max_tokens {
                break;
            }
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            on_event(GenerationEvent::Text(piece));
            emitted += 1;
        }
        let prompt: u32 = request.messages.iter().map(|m| words(&m.content)).sum();
        on_event(GenerationEvent::Usage {
            prompt_tokens: prompt,
            completion_tokens: emitted,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stand_in_says_what_it_stands_in_for() {
        assert_eq!(
            ExtractiveGenerator::standing_in_for("@cf/qwen/qwen3-30b-a3b-fp8").model(),
            "local/extractive:@cf/qwen/qwen3-30b-a3b-fp8"
        );
        assert_eq!(
            ExtractiveGenerator::standing_in_for(EXTRACTIVE_MODEL).model(),
            EXTRACTIVE_MODEL
        );
        let long = ExtractiveGenerator::standing_in_for(&"m".repeat(128));
        assert!(
            protocol::keys::valid_model(long.model()),
            "still a model name"
        );
    }
    use crate::ports::ToolSpec;

    fn msg(role: Role, content: &str, name: Option<&str>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            name: name.map(str::to_owned),
        }
    }

    fn request(messages: Vec<ChatMessage>) -> GenerateRequest {
        let tool = |n: &str| ToolSpec {
            name: n.into(),
            description: String::new(),
            parameters: json!({}),
        };
        GenerateRequest {
            options: Default::default(),
            tool_choice: Default::default(),
            model: EXTRACTIVE_MODEL.into(),
            messages,
            tools: vec![tool("vector_search"), tool("kv_get")],
            max_tokens: 100,
        }
    }

    fn run(req: &GenerateRequest) -> Vec<GenerationEvent> {
        let mut out = Vec::new();
        futures::executor::block_on(
            ExtractiveGenerator::default().generate(req, &mut |e| out.push(e)),
        )
        .unwrap();
        out
    }

    #[test]
    fn a_question_becomes_a_search() {
        let events = run(&request(vec![msg(
            Role::User,
            "How do lifetimes work?",
            None,
        )]));
        let [GenerationEvent::ToolCall(call)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(call.name, "vector_search");
        assert_eq!(call.arguments["query"], "How do lifetimes work?");
    }

    #[test]
    fn a_stand_in_for_any_name_is_cut_at_a_character_boundary() {
        // 17 bytes of prefix, then two-byte characters: byte 128 falls
        // inside one.
        let g = ExtractiveGenerator::standing_in_for(&"é".repeat(64));
        assert!(g.model().len() <= protocol::coordinator::MAX_MODEL_NAME_LEN);
        assert!(g.model().starts_with("local/extractive:éé"));
    }

    #[test]
    fn made_up_arguments_are_bounded_whatever_the_schema() {
        let names: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        let tool = ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: json!({ "type": "object", "required": names }),
        };
        let question = "a".repeat(150_000);
        let args = arguments_for(&tool, &question);
        let args = args.as_object().unwrap();
        assert_eq!(args.len(), MAX_ARGUMENTS);
        assert!(args
            .values()
            .all(|v| v.as_str().unwrap().chars().count() == MAX_ARGUMENT_CHARS));
        // Typed properties keep their placeholders.
        let typed = ToolSpec {
            parameters: json!({ "required": ["n", "q"], "properties": { "n": { "type": "integer" } } }),
            ..tool
        };
        assert_eq!(
            arguments_for(&typed, "why?"),
            json!({ "n": 0, "q": "why?" })
        );
    }

    #[test]
    fn a_conversation_without_a_question_is_answered_not_searched_forever() {
        // No user message: nothing to search for.
        let events = run(&request(vec![msg(Role::System, "be brief", None)]));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, GenerationEvent::ToolCall(_))),
            "{events:?}"
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, GenerationEvent::Text(t) if t.contains("no"))));
        // Bound to call a tool, it calls one once; the tool's answer (here
        // an error) is then composed, not searched again.
        let mut req = request(vec![msg(Role::System, "be brief", None)]);
        req.tool_choice = ToolChoice::Required;
        assert!(matches!(
            run(&req).as_slice(),
            [GenerationEvent::ToolCall(_)]
        ));
        req.messages.push(msg(Role::Assistant, "", None));
        req.messages.push(msg(
            Role::Tool,
            r#"{"error":"query must be 1 to 2000 characters"}"#,
            Some("vector_search"),
        ));
        let events = run(&req);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, GenerationEvent::ToolCall(_))),
            "{events:?}"
        );
    }

    #[test]
    fn a_key_becomes_a_kv_read() {
        assert_eq!(
            kv_key_in("what is `config:theme`?").as_deref(),
            Some("config:theme")
        );
        assert_eq!(kv_key_in("see https://example.com"), None);
        assert_eq!(kv_key_in("no keys here"), None);
        let events = run(&request(vec![msg(
            Role::User,
            "read config:theme please",
            None,
        )]));
        let [GenerationEvent::ToolCall(call)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(
            (call.name.as_str(), &call.arguments["key"]),
            ("kv_get", &json!("config:theme"))
        );
    }

    #[test]
    fn results_become_a_cited_streamed_answer() {
        let result = json!({"matches":[
            {"id":"doc-a","docId":"doc-a","chunkId":"v1","chunk":3,"score":0.9,"text":"Lifetimes ensure references stay valid. More text."},
            {"id":"doc-b","docId":"doc-b","chunkId":"v2","chunk":0,"score":0.5,"text":"The borrow checker compares scopes."}
        ]});
        let mut req = request(vec![
            msg(Role::User, "lifetimes?", None),
            msg(Role::Assistant, "", None),
            msg(Role::Tool, &result.to_string(), Some("vector_search")),
        ]);
        let events = run(&req);
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            text.contains("Lifetimes ensure references stay valid. [1]"),
            "{text}"
        );
        assert!(
            text.contains("Sources: [1] doc-a (chunk 3) [2] doc-b (chunk 0)"),
            "each citation names the document and the passage's place in it: {text}"
        );
        // A result stored before matches carried their position names the
        // chunk's id.
        let old = json!({"matches":[{"id":"v9","docId":"doc-c","score":0.5,"text":"Old."}]});
        let old = msg(Role::Tool, &old.to_string(), Some("vector_search"));
        assert!(compose_answer(&[&old]).ends_with("[1] doc-c (v9)"));
        assert!(events.len() > 10, "streamed word by word");
        assert!(matches!(events.last(), Some(GenerationEvent::Usage { .. })));
        // The token budget is honoured.
        req.max_tokens = 3;
        let n = run(&req)
            .iter()
            .filter(|e| matches!(e, GenerationEvent::Text(_)))
            .count();
        assert_eq!(n, 3);
    }

    #[test]
    fn client_functions_are_called_when_named_or_required() {
        let weather = ToolSpec {
            name: "get_weather".into(),
            description: String::new(),
            parameters: json!({"type":"object","properties":{
                "city":{"type":"string"},"days":{"type":"integer"},"metric":{"type":"boolean"}},
                "required":["city","days"]}),
        };
        let mut req = request(vec![msg(Role::User, "What does get weather say?", None)]);
        req.tools = vec![weather.clone()];
        let events = run(&req);
        let [GenerationEvent::ToolCall(call)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(call.name, "get_weather");
        assert_eq!(
            call.arguments,
            json!({"city": "What does get weather say?", "days": 0})
        );
        // Not named: answered in text, unless a call is required.
        req.messages = vec![msg(Role::User, "hello", None)];
        assert!(matches!(run(&req).first(), Some(GenerationEvent::Text(_))));
        req.tool_choice = ToolChoice::Required;
        assert!(matches!(
            run(&req).first(),
            Some(GenerationEvent::ToolCall(_))
        ));
        req.tool_choice = ToolChoice::None;
        req.messages = vec![msg(Role::User, "get_weather now", None)];
        assert!(matches!(run(&req).first(), Some(GenerationEvent::Text(_))));
        // The function's result is quoted.
        req.tool_choice = ToolChoice::Auto;
        req.messages = vec![
            msg(Role::User, "get_weather now", None),
            msg(Role::Tool, "Rain all day in Oslo.", Some("get_weather")),
        ];
        let text = crate::generation::text_of(&run(&req));
        assert_eq!(text, "The get_weather tool answered: Rain all day in Oslo.");
    }

    #[test]
    fn json_answers_and_schemas() {
        let mut req = request(vec![
            msg(Role::User, "x", None),
            msg(
                Role::Tool,
                r#"{"key":"config:a","value":"blue"}"#,
                Some("kv_get"),
            ),
        ]);
        req.options.response_format = ResponseFormat::JsonObject;
        let text = crate::generation::text_of(&run(&req));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["answer"], "The value of config:a is blue.");
        req.options.response_format = ResponseFormat::JsonSchema("{}".into());
        let refused =
            futures::executor::block_on(ExtractiveGenerator::default().generate(&req, &mut |_| {}));
        assert!(matches!(refused, Err(PortError::Unsupported(_))));
    }

    #[test]
    fn empty_results_and_kv_answers() {
        let none = msg(Role::Tool, r#"{"matches":[]}"#, Some("vector_search"));
        assert!(compose_answer(&[&none]).contains("found nothing"));
        let kv = msg(
            Role::Tool,
            r#"{"key":"config:a","value":"blue"}"#,
            Some("kv_get"),
        );
        assert_eq!(compose_answer(&[&kv]), "The value of config:a is blue.");
        let refused = msg(
            Role::Tool,
            r#"{"key":"secret:a","error":"not allowed"}"#,
            Some("kv_get"),
        );
        assert!(compose_answer(&[&refused]).contains("could not read"));
        let missing = msg(
            Role::Tool,
            r#"{"key":"config:b","value":null}"#,
            Some("kv_get"),
        );
        assert!(compose_answer(&[&missing]).contains("no value"));
    }
}
