//! The OpenAI-compatible API end to end against `wrangler dev`, driven by a
//! real OpenAI client crate (`async-openai`) and, for what a client library
//! hides, on the wire: completions (plain, streamed with usage, with the
//! tenant's tools and citations, with the client's tools round-tripped),
//! embeddings in both encodings, models, a session's stored turn, and every
//! class of error in OpenAI's shape.

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestToolMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequestArgs, FinishReason, FunctionObjectArgs,
};
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EncodingFormat};
use async_openai::Client;
use e2e::chat::parse_sse;
use e2e::http::{send, Reply};
use e2e::{shared, Deployment, Server};
use futures::StreamExt;
use serde_json::{json, Value};

const A: &str = "mrrainbowsmoke";

fn client(server: &Server, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.url("/v1"))
            .with_api_key(key),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn post(server: &Server, key: &str, path: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        "POST",
        &server.url(path),
        &headers,
        Some(body.to_string().as_bytes()),
    )
}

/// The `data:` payloads of an OpenAI stream, in order.
fn data_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The tenant's documents for the `rag` tests (idempotent).
fn ingest_docs(server: &Server) {
    server.ingest(
        A,
        json!([
            {"id": "oai-lighthouse", "text": "The Brightwater lighthouse keeper lights the lamp at dusk and logs every passing ship in a leather-bound ledger."},
            {"id": "oai-bakery", "text": "The harbour bakery opens at five and sells rye loaves to the fishermen before the tide turns."}
        ]),
    );
}

#[test]
fn a_client_library_completes_plain_and_streamed_with_usage() {
    let server = shared(Deployment::Dedicated(A));
    ingest_docs(&server);
    let key = server.create_key(A, &["chat"]);
    let openai = client(&server, &key);
    let rt = runtime();
    let question = "Who logs the passing ships at the lighthouse?";
    let request = CreateChatCompletionRequestArgs::default()
        .model("rag")
        .messages(vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content("Answer from the tenant's documents.")
                .build()
                .unwrap()
                .into(),
            user(question),
        ])
        .max_completion_tokens(200u32)
        .build()
        .unwrap();
    let answer = rt
        .block_on(openai.chat().create(request.clone()))
        .expect("a completion");
    assert_eq!(answer.object, "chat.completion");
    let choice = &answer.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let text = choice.message.content.clone().unwrap_or_default();
    assert!(
        text.contains("ledger"),
        "answered from the lighthouse document: {text}"
    );
    let usage = answer.usage.clone().expect("usage");
    assert!(
        usage.prompt_tokens > 0 && usage.completion_tokens > 0,
        "{usage:?}"
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    // The same completion streamed, with a usage chunk at the end.
    let mut streamed = request.clone();
    streamed.stream = Some(true);
    streamed.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let (content, finishes, last_usage, chunks) = rt.block_on(async {
        let mut stream = openai
            .chat()
            .create_stream(streamed)
            .await
            .expect("a stream");
        let (mut content, mut finishes, mut last_usage, mut chunks) =
            (String::new(), Vec::new(), None, 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("a chunk");
            chunks += 1;
            assert_eq!(chunk.object, "chat.completion.chunk");
            for c in &chunk.choices {
                content.push_str(c.delta.content.as_deref().unwrap_or_default());
                finishes.extend(c.finish_reason);
            }
            if chunk.usage.is_some() {
                last_usage = chunk.usage;
            }
        }
        (content, finishes, last_usage, chunks)
    });
    assert!(chunks > 3, "streamed in pieces, not one chunk ({chunks})");
    assert_eq!(content, text, "the stream says what the plain answer said");
    assert_eq!(finishes, vec![FinishReason::Stop]);
    let last_usage = last_usage.expect("a usage chunk");
    assert_eq!(last_usage.completion_tokens, usage.completion_tokens);

    // What standard clients ignore: the tenant tool's run and its citations.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "rag", "messages": [{"role": "user", "content": question}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let message = &r.json()["choices"][0]["message"];
    assert_eq!(message["tenant_tool_runs"][0]["name"], "vector_search");
    let cited = message["citations"].to_string();
    assert!(cited.contains("oai-lighthouse"), "{cited}");

    // The three completions are in the tenant's usage, under the key and
    // the model that answered, with the tokens they reported.
    let key_id = key.split('_').nth(2).expect("tp_<tenant>_<id>_<secret>");
    let path = format!("/admin/usage?groupBy=model&key={key_id}");
    let started = std::time::Instant::now();
    let row = loop {
        let report = server.as_operator(A, "GET", &path, None).json();
        let row = report["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["group"] == answer.model.as_str()))
            .cloned();
        match row {
            Some(row) if row["requests"] == 3 => break row,
            _ if started.elapsed() > std::time::Duration::from_secs(10) => {
                panic!("no usage row of 3 requests for {}: {report}", answer.model)
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    assert!(
        row["outputTokens"].as_u64() >= Some(2 * u64::from(usage.completion_tokens)),
        "{row}"
    );
}

fn weather_tool() -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObjectArgs::default()
            .name("get_weather")
            .description("The weather in a city")
            .parameters(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"]
            }))
            .build()
            .unwrap(),
    })
}

#[test]
fn the_clients_tools_are_called_and_their_results_answered() {
    let server = shared(Deployment::Dedicated(A));
    let key = server.create_key(A, &["chat"]);
    let openai = client(&server, &key);
    let rt = runtime();
    let question = "What does get_weather say about Oslo?";
    let first = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages(vec![user(question)])
        .tools(vec![weather_tool()])
        .build()
        .unwrap();
    let answer = rt
        .block_on(openai.chat().create(first))
        .expect("a completion");
    let choice = &answer.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.clone().expect("tool calls");
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(call.function.name, "get_weather");
    let arguments: Value = serde_json::from_str(&call.function.arguments).expect("JSON arguments");
    assert!(arguments["city"].is_string(), "{arguments}");

    // The client runs the function and sends its result back.
    let second = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages(vec![
            user(question),
            ChatCompletionRequestAssistantMessageArgs::default()
                .tool_calls(vec![ChatCompletionMessageToolCalls::Function(
                    ChatCompletionMessageToolCall {
                        id: call.id.clone(),
                        function: call.function.clone(),
                    },
                )])
                .build()
                .unwrap()
                .into(),
            ChatCompletionRequestToolMessageArgs::default()
                .tool_call_id(call.id.clone())
                .content("Rain all day in Oslo.")
                .build()
                .unwrap()
                .into(),
        ])
        .tools(vec![weather_tool()])
        .build()
        .unwrap();
    let answer = rt
        .block_on(openai.chat().create(second))
        .expect("a completion");
    assert_eq!(answer.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("The get_weather tool answered: Rain all day in Oslo.")
    );

    // Streamed, the call arrives by index and the stream ends with tool_calls.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "stream": true, "tool_choice": "required",
                "messages": [{"role": "user", "content": "hello"}],
                "tools": [{"type": "function", "function": {"name": "lookup", "parameters":
                    {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = data_lines(&r.body);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .expect("a tool call chunk");
    assert_eq!(
        (call["index"].as_u64(), call["function"]["name"].as_str()),
        (Some(0), Some("lookup"))
    );
    assert_eq!(call["function"]["arguments"], "{\"n\":0}");
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(finish, vec!["tool_calls"]);
}

#[test]
fn the_wire_chunk_order_done_and_finish_reasons() {
    let server = shared(Deployment::Dedicated(A));
    let key = server.create_key(A, &["chat"]);
    // `length`: the token budget runs out mid-answer.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "stream": true, "max_tokens": 3,
                "messages": [{"role": "user", "content": "tell me something"}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    let lines = data_lines(&r.body);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(lines.iter().filter(|l| *l == "[DONE]").count(), 1);
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The first delta names the role; only the last chunk has a finish reason.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let reasons: Vec<Option<&str>> = chunks
        .iter()
        .map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(reasons.last(), Some(&Some("length")));
    assert!(
        reasons[..reasons.len() - 1].iter().all(Option::is_none),
        "{reasons:?}"
    );
    let id = &chunks[0]["id"];
    assert!(
        chunks.iter().all(|c| &c["id"] == id),
        "one id per completion"
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked"
    );
    let words: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(words.split_whitespace().count(), 3, "{words}");

    // `stop`: a stop sequence ends the answer before it, never showing it.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        &[],
    );
    let full = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let cut_at = full
        .find(" tenant")
        .expect("the embedded answer names the tenant");
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "stop": [" tenant"], "messages": [{"role": "user", "content": "hi"}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], full[..cut_at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // json_object: the answer is one JSON object.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "hi"}]}),
        &[],
    );
    let content = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let parsed: Value = serde_json::from_str(&content).expect("a JSON answer");
    assert!(parsed.is_object(), "{content}");
}

#[test]
fn embeddings_in_both_encodings_and_the_models() {
    let server = shared(Deployment::Dedicated(A));
    let key = server.create_key(A, &["search"]);
    let openai = client(&server, &key);
    let rt = runtime();
    let request = CreateEmbeddingRequestArgs::default()
        .model("embedding")
        .input(vec!["lighthouse keeper", "rye bread"])
        .build()
        .unwrap();
    let floats = rt
        .block_on(openai.embeddings().create(request.clone()))
        .expect("embeddings");
    assert_eq!(floats.data.len(), 2);
    assert_eq!(floats.data[1].index, 1);
    assert_eq!(floats.data[0].embedding.len(), 768);
    assert_ne!(floats.data[0].embedding, floats.data[1].embedding);
    assert!(floats.usage.prompt_tokens > 0);
    let mut base64 = request;
    base64.encoding_format = Some(EncodingFormat::Base64);
    let encoded = rt
        .block_on(openai.embeddings().create_base64(base64))
        .expect("base64 embeddings");
    let decoded: Vec<f32> = encoded.data[0].embedding.clone().into();
    assert_eq!(
        decoded, floats.data[0].embedding,
        "base64 holds the same floats"
    );
    // The model an answer names can be sent back.
    let again = CreateEmbeddingRequestArgs::default()
        .model(floats.model.clone())
        .input("lighthouse keeper")
        .build()
        .unwrap();
    let again = rt
        .block_on(openai.embeddings().create(again))
        .unwrap_or_else(|e| panic!("{}: {e}", floats.model));
    assert_eq!(again.data[0].embedding, floats.data[0].embedding);

    // A dimension other than the model's, and token arrays, are refused.
    let r = post(
        &server,
        &key,
        "/v1/embeddings",
        &json!({"model": "embedding", "input": "x", "dimensions": 100}),
        &[],
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("dimensions"))
    );
    let r = post(
        &server,
        &key,
        "/v1/embeddings",
        &json!({"model": "embedding", "input": [1, 2, 3]}),
        &[],
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("unsupported_parameter"))
    );

    // Models: the aliases resolve to the tenant's defaults.
    let list = rt.block_on(openai.models().list()).expect("models");
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    for alias in ["chat", "rag", "embedding"] {
        assert!(ids.contains(&alias), "{ids:?}");
    }
    let chat = rt
        .block_on(openai.models().retrieve("chat"))
        .expect("the chat alias");
    assert_eq!(chat.id, "chat");
    // A model id with `@` and `/`, escaped in the path as client libraries
    // may send it, is the same model.
    let listed = list
        .data
        .iter()
        .find(|m| m.id.contains('/'))
        .map(|m| m.id.clone())
        .expect("a model with a path-like id");
    for path in [
        format!("/v1/models/{listed}"),
        format!(
            "/v1/models/{}",
            listed.replace('@', "%40").replace('/', "%2F")
        ),
    ] {
        let r = send(
            "GET",
            &server.url(&path),
            &[("authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!(
            (r.status, r.json()["id"].as_str()),
            (200, Some(listed.as_str())),
            "{path}: {}",
            r.body
        );
    }
    let missing = rt.block_on(openai.models().retrieve("no-such-model"));
    match missing {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_error_class_in_openais_shape() {
    let server = shared(Deployment::Dedicated(A));
    let chat_key = server.create_key(A, &["chat"]);
    let search_key = server.create_key(A, &["search"]);
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let shape = |r: &Reply| {
        let e = &r.json()["error"];
        assert!(
            e["message"].is_string() && e["type"].is_string(),
            "{}",
            r.body
        );
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{}",
            r.body
        );
        (r.status, e["type"].as_str().unwrap_or_default().to_owned())
    };
    // 401: a wrong key, and none.
    let r = post(
        &server,
        "tp_mrrainbowsmoke_000000000000_0000",
        "/v1/chat/completions",
        &body,
        &[],
    );
    assert_eq!(shape(&r), (401, "authentication_error".into()));
    let r = send("GET", &server.url("/v1/models"), &[], None);
    assert_eq!(shape(&r), (401, "authentication_error".into()));
    // 403: a key without the chat scope.
    let r = post(&server, &search_key, "/v1/chat/completions", &body, &[]);
    assert_eq!(shape(&r), (403, "permission_error".into()));
    // 404: a model the key may not use.
    let mut other = body.clone();
    other["model"] = json!("@cf/some/other-model");
    let r = post(&server, &chat_key, "/v1/chat/completions", &other, &[]);
    assert_eq!(shape(&r).0, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // 400: validation, naming the parameter; unsupported parameters too.
    for (patch, param) in [
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"temperature": 9}), "temperature"),
        (json!({"messages": []}), "messages"),
    ] {
        let mut b = body.clone();
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = post(&server, &chat_key, "/v1/chat/completions", &b, &[]);
        assert_eq!(shape(&r), (400, "invalid_request_error".into()), "{param}");
        assert_eq!(r.json()["error"]["param"], param);
    }
    let r = send(
        "POST",
        &server.url("/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {chat_key}")),
            ("content-type", "application/json"),
        ],
        Some(b"{not json"),
    );
    assert_eq!(shape(&r).0, 400);
    // 404 for an unknown /v1 route, in the same shape.
    let r = send(
        "GET",
        &server.url("/v1/nothing"),
        &[("authorization", &format!("Bearer {chat_key}"))],
        None,
    );
    assert_eq!(shape(&r).0, 404);
    // 429 with Retry-After: a key with one request a minute.
    let made = server.as_operator(
        A,
        "POST",
        "/admin/keys",
        Some(json!({"name": "one", "scopes": ["chat"], "limits": {"rpm": 1}})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let limited = made.json()["key"].as_str().unwrap().to_owned();
    let r = post(&server, &limited, "/v1/chat/completions", &body, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&server, &limited, "/v1/chat/completions", &body, &[]);
    assert_eq!(shape(&r), (429, "rate_limit_error".into()));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
}

#[test]
fn a_session_header_stores_the_conversation() {
    let server = shared(Deployment::Dedicated(A));
    ingest_docs(&server);
    let key = server.create_key(A, &["chat"]);
    let session = "oai-session-1";
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "When does the harbour bakery open?"}]}),
        &[("x-session-id", session)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(answer.contains("five"), "{answer}");
    let citations = v["choices"][0]["message"]["citations"].as_array().cloned();
    assert!(
        citations.is_some_and(|c| !c.is_empty()),
        "the session's search is cited: {v}"
    );
    // The turn is in the session's history, as a turn of /api/chat would be.
    let history = send(
        "GET",
        &server.url(&format!("/api/sessions/{session}/history")),
        &[("authorization", &format!("Bearer {key}"))],
        None,
    );
    assert_eq!(history.status, 200, "{}", history.body);
    let text = history.body.clone();
    assert!(
        text.contains("When does the harbour bakery open?"),
        "{text}"
    );
    assert!(text.contains(&answer[..20]), "{text}");
    // Client tools do not go with a session.
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
        &[("x-session-id", session)],
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("tools"))
    );
    // The completion objects' names are no client's session.
    let r = post(
        &server,
        &key,
        "/api/chat",
        &json!({"sessionId": "v1-abc-0", "message": "squat"}),
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_session")
    );
    let r = post(
        &server,
        &key,
        "/v1/chat/completions",
        &json!({"model": "chat", "temperature": 0.5, "messages": [{"role": "user", "content": "x"}]}),
        &[("x-session-id", session)],
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("temperature"))
    );
    // The SSE dialect of our own route is unchanged beside it.
    let r = post(
        &server,
        &key,
        "/api/chat",
        &json!({"sessionId": session, "message": "and the lighthouse?"}),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        parse_sse(r.body.as_bytes()).last().unwrap().data["type"],
        "done"
    );
}

#[test]
fn a_long_conversation_reserves_its_size_against_tpm() {
    let server = shared(Deployment::Dedicated(A));
    let made = server.as_operator(
        A,
        "POST",
        "/admin/keys",
        Some(json!({"name": "tpm", "scopes": ["chat"], "limits": {"tpm": 5000}})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let key = made.json()["key"].as_str().unwrap().to_owned();
    // 30,000 characters are about 7,500 input tokens, more than the key's
    // tokens per minute: a full bucket admits work larger than the whole
    // limit (else it could never run), and is left in debt by its size.
    let long =
        json!({"model": "chat", "messages": [{"role": "user", "content": "word ".repeat(6_000)}]});
    let r = post(&server, &key, "/v1/chat/completions", &long, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    // So a short completion (a turn's 1,000 + 512) is refused now, whether
    // the long one has settled (about 6,000 used) or not (8,012 reserved):
    // had it reserved only a turn's estimate, 3,488 would be left.
    let short = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&server, &key, "/v1/chat/completions", &short, &[]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tpm"),
        "{}",
        r.body
    );
}

/// Requests built to break the embedded generator or the deployed
/// bindings get a clear answer, and the Worker keeps serving.
#[test]
fn adversarial_completions_get_a_clear_answer_and_the_worker_keeps_serving() {
    let server = shared(Deployment::Dedicated(A));
    let chat_key = server.create_key(A, &["chat"]);
    let operator = e2e::ADMIN_TOKEN;
    let hi = json!([{"role": "user", "content": "hi"}]);
    // A model name byte 128 of whose stand-in name falls inside a
    // character (the operator may name any model): 400, not a panic.
    let r = post(
        &server,
        operator,
        "/v1/chat/completions",
        &json!({"model": "é".repeat(64), "messages": hi}),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "model");
    // A seed JavaScript cannot hold: 400 naming it, not a failed model.
    let r = post(
        &server,
        &chat_key,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": hi, "seed": 9_007_199_254_740_993u64}),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "seed");
    // A tool whose schema requires a thousand properties, a long question
    // and a forced call: the made-up call stays small.
    let required: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let r = post(
        &server,
        &chat_key,
        "/v1/chat/completions",
        &json!({
            "model": "chat",
            "messages": [{"role": "user", "content": "a".repeat(150_000)}],
            "tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "required": required}}}],
            "tool_choice": "required"
        }),
        &[],
    );
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(500)]);
    let call = &r.json()["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "f");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    let arguments = arguments.as_object().unwrap();
    assert!(arguments.len() <= 32, "{} arguments", arguments.len());
    assert!(arguments
        .values()
        .all(|v| v.as_str().unwrap().chars().count() <= 500));
    // A conversation without a user message: answered, not searched until
    // the tool limit (a 502).
    let r = post(
        &server,
        &chat_key,
        "/v1/chat/completions",
        &json!({"model": "rag", "messages": [{"role": "system", "content": "be brief"}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let content = r.json()["choices"][0]["message"]["content"].clone();
    assert!(
        content.as_str().is_some_and(|c| !c.is_empty()),
        "{}",
        r.body
    );
    // And the Worker still answers.
    let r = post(
        &server,
        &chat_key,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": hi}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
