//! Both wire formats, streaming and not: text, parallel tool calls assembled from fragments,
//! usage including cached tokens, prompt caching markers.

use warren_llm::{StopReason, StreamEvent, Usage};
use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};

use super::{anthropic, chat, openai, request};

fn reply() -> Reply {
    Reply {
        text: "Let me look at the files first.".into(),
        tool_calls: vec![
            ToolCall {
                id: "call_1".into(),
                name: "shell".into(),
                arguments: r#"{"cmd":"ls -la /workspace"}"#.into(),
            },
            ToolCall {
                id: "call_2".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"README.md","limit":40}"#.into(),
            },
        ],
        input_tokens: 1200,
        output_tokens: 80,
        cached_tokens: 1000,
    }
}

fn check(r: &warren_llm::ChatResponse) {
    assert_eq!(r.text, "Let me look at the files first.");
    assert_eq!(r.tool_calls.len(), 2);
    assert_eq!(
        (r.tool_calls[0].id.as_str(), r.tool_calls[0].name.as_str()),
        ("call_1", "shell")
    );
    assert_eq!(r.tool_calls[0].arguments, r#"{"cmd":"ls -la /workspace"}"#);
    let args: serde_json::Value = serde_json::from_str(&r.tool_calls[1].arguments).unwrap();
    assert_eq!(args, serde_json::json!({"path": "README.md", "limit": 40}));
    assert_eq!(r.stop_reason, StopReason::ToolUse);
}

#[test]
fn openai_streaming_assembles_parallel_tool_calls_and_usage() {
    let mock = MockLlm::start(vec![Turn::Reply(reply())]).unwrap();
    let (r, events) = chat(&openai(&mock), &request(true));
    let r = r.unwrap();
    check(&r);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 1200,
            output_tokens: 80,
            cached_input_tokens: 1000
        }
    );
    let streamed: String = events
        .iter()
        .filter_map(|e| {
            if let StreamEvent::TextDelta(t) = e {
                Some(t.as_str())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(streamed, r.text);
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta(_)))
            .count()
            > 1,
        "text should arrive in pieces"
    );
    let started: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallStarted { .. }))
        .collect();
    assert_eq!(started.len(), 2);
    // The request is OpenAI-shaped, asks for usage, and carries the key as a bearer token.
    let req = &mock.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.body["model"], "any-model-name-passes");
    assert_eq!(req.body["messages"][0]["role"], "system");
    assert_eq!(req.body["stream_options"]["include_usage"], true);
    assert_eq!(req.body["tools"][0]["function"]["name"], "shell");
    assert!(
        req.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer sk-test-openai")
    );
}

#[test]
fn openai_non_streaming() {
    let mock = MockLlm::start(vec![Turn::Reply(reply())]).unwrap();
    let (r, events) = chat(&openai(&mock), &request(false));
    check(&r.unwrap());
    assert!(events.is_empty());
    assert_eq!(mock.requests()[0].body["stream"], false);
}

#[test]
fn anthropic_streaming_assembles_tool_input_and_caches_the_prefix() {
    let mock = MockLlm::start(vec![Turn::Reply(reply())]).unwrap();
    let (r, events) = chat(&anthropic(&mock), &request(true));
    let r = r.unwrap();
    check(&r);
    // Anthropic reports uncached input separately; Warren's input count includes the cache.
    assert_eq!(r.usage.cached_input_tokens, 1000);
    assert_eq!(r.usage.input_tokens, 1200 + 1000);
    assert_eq!(r.usage.output_tokens, 80);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::ToolCallStarted { name, .. } if name == "read_file"))
    );
    let req = &mock.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.body["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(req.body["tools"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(req.body["tools"][0]["input_schema"]["type"], "object");
    assert!(
        req.headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && v == "sk-ant-test")
    );
    assert!(req.headers.iter().any(|(k, _)| k == "anthropic-version"));
}

#[test]
fn anthropic_non_streaming() {
    let mock = MockLlm::start(vec![Turn::Reply(reply())]).unwrap();
    let (r, _) = chat(&anthropic(&mock), &request(false));
    check(&r.unwrap());
}

#[test]
fn conversation_with_tool_results_maps_to_each_format() {
    use warren_llm::Message;
    let mut req = request(true);
    req.messages.push(Message::Assistant {
        text: String::new(),
        tool_calls: vec![
            warren_llm::ToolCall {
                id: "c1".into(),
                name: "shell".into(),
                arguments: r#"{"cmd":"true"}"#.into(),
            },
            warren_llm::ToolCall {
                id: "c2".into(),
                name: "shell".into(),
                arguments: "not json".into(),
            },
        ],
    });
    req.messages.push(Message::Tool {
        call_id: "c1".into(),
        content: "ok".into(),
        is_error: false,
    });
    req.messages.push(Message::Tool {
        call_id: "c2".into(),
        content: "invalid arguments".into(),
        is_error: true,
    });
    let mock = MockLlm::start(vec![
        Turn::Reply(Reply {
            text: "done".into(),
            ..Default::default()
        }),
        Turn::Reply(Reply {
            text: "done".into(),
            ..Default::default()
        }),
    ])
    .unwrap();
    chat(&openai(&mock), &req).0.unwrap();
    chat(&anthropic(&mock), &req).0.unwrap();
    let reqs = mock.requests();
    let o = &reqs[0].body["messages"];
    assert_eq!(o[2]["tool_calls"][1]["function"]["arguments"], "not json");
    assert_eq!(
        (o[3]["role"].as_str(), o[3]["tool_call_id"].as_str()),
        (Some("tool"), Some("c1"))
    );
    let a = &reqs[1].body["messages"];
    // Tool results travel in one user message after the assistant's tool_use blocks.
    assert_eq!(a[1]["content"][1]["input"], serde_json::json!({}));
    assert_eq!(a[2]["role"], "user");
    assert_eq!(a[2]["content"].as_array().unwrap().len(), 2);
    assert_eq!(a[2]["content"][1]["is_error"], true);
}

#[test]
fn invalid_tool_arguments_pass_through_raw() {
    let mock = MockLlm::start(vec![Turn::Reply(Reply {
        tool_calls: vec![ToolCall {
            id: "x".into(),
            name: "shell".into(),
            arguments: r#"{"cmd": "unterminated"#.into(),
        }],
        ..Default::default()
    })])
    .unwrap();
    let r = chat(&openai(&mock), &request(true)).0.unwrap();
    assert_eq!(r.tool_calls[0].arguments, r#"{"cmd": "unterminated"#);
}
