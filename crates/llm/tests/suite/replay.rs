//! Record a session against the mock, replay it without any server, and catch divergence.

use warren_llm::record::{Recorder, Replay};
use warren_llm::{LlmError, Message, Provider, StreamEvent};
use warren_testkit::TempDir;
use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};

use super::request;

fn run(
    p: &dyn Provider,
    req: &warren_llm::ChatRequest,
) -> Result<warren_llm::ChatResponse, LlmError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sink = |_e: StreamEvent| {};
        p.chat(req, &mut sink).await
    })
}

#[test]
fn record_then_replay_deterministically_and_detect_divergence() {
    let dir = TempDir::new("transcript");
    let path = dir.path().join("t.jsonl");
    let mock = MockLlm::start(vec![
        Turn::Reply(Reply {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "shell".into(),
                arguments: r#"{"cmd":"ls"}"#.into(),
            }],
            ..Default::default()
        }),
        Turn::Reply(Reply {
            text: "all done".into(),
            ..Default::default()
        }),
    ])
    .unwrap();
    let base = format!("{}/v1", mock.base_url());
    let mut c = warren_llm::ProviderConfig::openai_from_env(|k| match k {
        "OPENAI_BASE_URL" => Some(base.clone()),
        "OPENAI_API_KEY" => Some("sk-secret-never-recorded".into()),
        _ => None,
    });
    super::fast(&mut c);
    let inner = warren_llm::client::HttpProvider::new(c, warren_llm::openai::OpenAi).unwrap();
    let rec = Recorder::new(inner, &path).unwrap();
    let mut req = request(true);
    let first = run(&rec, &req).unwrap();
    req.messages.push(Message::Assistant {
        text: String::new(),
        tool_calls: first.tool_calls.clone(),
    });
    req.messages.push(Message::Tool {
        call_id: "c1".into(),
        content: "README.md".into(),
        is_error: false,
    });
    let second = run(&rec, &req).unwrap();
    drop(mock); // replay needs no server
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(
        !text.contains("sk-secret"),
        "a key leaked into the transcript"
    );

    let replay = Replay::open(&path).unwrap();
    let mut req2 = request(true);
    assert_eq!(run(&replay, &req2).unwrap(), first);
    req2.messages = req.messages.clone();
    assert_eq!(run(&replay, &req2).unwrap(), second);
    assert!(matches!(
        run(&replay, &req2),
        Err(LlmError::ReplayExhausted { index: 2, .. })
    ));

    // A changed request is caught with a readable diff.
    let replay = Replay::open(&path).unwrap();
    let mut changed = request(true);
    changed.system = "You are a different test.".into();
    match run(&replay, &changed) {
        Err(LlmError::ReplayDivergence { index: 0, diff, .. }) => {
            assert!(
                diff.contains("-  \"system\": \"You are a test.\"")
                    && diff.contains("+  \"system\": \"You are a different test.\""),
                "{diff}"
            );
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
}
