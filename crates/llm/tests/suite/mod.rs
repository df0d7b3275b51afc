mod faults;
mod formats;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use warren_llm::{
    ChatRequest, Message, Provider, ProviderConfig, RetryPolicy, StreamEvent, ToolSpec,
};
use warren_testkit::mockllm::MockLlm;

pub fn openai(mock: &MockLlm) -> Arc<dyn Provider> {
    let base = format!("{}/v1", mock.base_url());
    let mut c = ProviderConfig::openai_from_env(|k| match k {
        "OPENAI_BASE_URL" => Some(base.clone()),
        "OPENAI_API_KEY" => Some("sk-test-openai".into()),
        _ => None,
    });
    fast(&mut c);
    warren_llm::build(c).unwrap()
}

pub fn anthropic(mock: &MockLlm) -> Arc<dyn Provider> {
    let base = mock.base_url();
    let mut c = ProviderConfig::anthropic_from_env(|k| match k {
        "ANTHROPIC_BASE_URL" => Some(base.clone()),
        "ANTHROPIC_API_KEY" => Some("sk-ant-test".into()),
        _ => None,
    });
    fast(&mut c);
    warren_llm::build(c).unwrap()
}

/// Quick retries and timeouts, so fault tests take milliseconds.
pub fn fast(c: &mut ProviderConfig) {
    c.retry = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    };
    c.idle_timeout = Duration::from_millis(400);
    c.connect_timeout = Duration::from_secs(5);
}

pub fn request(stream: bool) -> ChatRequest {
    ChatRequest {
        model: "any-model-name-passes".into(),
        system: "You are a test.".into(),
        messages: vec![Message::User {
            content: "hello".into(),
        }],
        tools: vec![ToolSpec {
            name: "shell".into(),
            description: "run a command".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"cmd": {"type": "string"}}}),
        }],
        max_tokens: 256,
        temperature: None,
        stream,
    }
}

/// Run one chat on a fresh runtime, collecting the events.
pub fn chat(
    p: &Arc<dyn Provider>,
    req: &ChatRequest,
) -> (
    Result<warren_llm::ChatResponse, warren_llm::LlmError>,
    Vec<StreamEvent>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut events = Vec::new();
    let r = rt.block_on(async {
        let mut sink = |e: StreamEvent| events.push(e);
        p.chat(req, &mut sink).await
    });
    (r, events)
}
