//! One test per injected fault: what is retried, what fails at once, and that a retried
//! stream never duplicates output.

use std::time::{Duration, Instant};

use warren_llm::{LlmError, StreamEvent};
use warren_testkit::mockllm::{MockLlm, Reply, Turn};

use super::{anthropic, chat, openai, request};

fn ok_reply() -> Turn {
    Turn::Reply(Reply {
        text: "final answer".into(),
        input_tokens: 10,
        output_tokens: 3,
        ..Default::default()
    })
}

#[test]
fn rate_limit_is_retried_after_retry_after() {
    let mock = MockLlm::start(vec![
        Turn::Status {
            code: 429,
            retry_after: Some(1),
        },
        ok_reply(),
    ])
    .unwrap();
    let t = Instant::now();
    let r = chat(&openai(&mock), &request(true)).0.unwrap();
    assert_eq!(r.text, "final answer");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let mock = MockLlm::start(vec![
        Turn::Status {
            code: 500,
            retry_after: None,
        },
        Turn::Status {
            code: 503,
            retry_after: None,
        },
        ok_reply(),
    ])
    .unwrap();
    assert_eq!(
        chat(&anthropic(&mock), &request(true)).0.unwrap().text,
        "final answer"
    );
    // Exhausted attempts (3 here) end in the provider's status and message.
    let mock = MockLlm::start(vec![
        Turn::Status {
            code: 500,
            retry_after: None
        };
        3
    ])
    .unwrap();
    match chat(&openai(&mock), &request(true)).0 {
        Err(LlmError::Status {
            status: 500,
            provider,
            ..
        }) => assert_eq!(provider, "openai"),
        other => panic!("expected a 500 error, got {other:?}"),
    }
    assert_eq!(mock.requests().len(), 3);
}

#[test]
fn invalid_key_fails_at_once_naming_the_variable() {
    let mock = MockLlm::start(vec![Turn::Unauthorized, ok_reply()]).unwrap();
    let err = chat(&openai(&mock), &request(true)).0.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LlmError::Auth { status: 401, .. }), "{msg}");
    assert!(
        msg.contains("openai") && msg.contains("OPENAI_API_KEY"),
        "{msg}"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "an auth failure must not be retried"
    );
    let mock = MockLlm::start(vec![Turn::Unauthorized]).unwrap();
    let msg = chat(&anthropic(&mock), &request(true))
        .0
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ANTHROPIC_API_KEY"), "{msg}");
}

#[test]
fn slow_response_within_timeouts_succeeds() {
    let mock = MockLlm::start(vec![Turn::Slow {
        delay: Duration::from_millis(150),
        then: Box::new(ok_reply()),
    }])
    .unwrap();
    assert_eq!(
        chat(&openai(&mock), &request(true)).0.unwrap().text,
        "final answer"
    );
}

fn restarts(events: &[StreamEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Restart { .. }))
        .count()
}

/// What a consumer that honours `Restart` ends up showing.
fn shown(events: &[StreamEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            StreamEvent::TextDelta(t) => s.push_str(t),
            StreamEvent::Restart { .. } => s.clear(),
            StreamEvent::ToolCallStarted { .. } => {}
        }
    }
    s
}

#[test]
fn stalled_stream_times_out_and_is_retried_without_duplicates() {
    let long = Reply {
        text: "this answer streams in many small pieces".into(),
        ..Default::default()
    };
    let mock = MockLlm::start(vec![
        Turn::Stall {
            reply: long.clone(),
            stall: Duration::from_secs(3),
        },
        Turn::Reply(long.clone()),
    ])
    .unwrap();
    let (r, events) = chat(&openai(&mock), &request(true));
    let r = r.unwrap();
    assert_eq!(r.text, long.text, "the answer holds one attempt only");
    assert_eq!(restarts(&events), 1);
    assert_eq!(shown(&events), long.text);
}

#[test]
fn truncated_stream_is_retried_without_duplicates() {
    let long = Reply {
        text: "a reply cut off in the middle of the stream".into(),
        ..Default::default()
    };
    for provider in [openai, anthropic] {
        let mock = MockLlm::start(vec![
            Turn::Truncated(long.clone()),
            Turn::Reply(long.clone()),
        ])
        .unwrap();
        let (r, events) = chat(&provider(&mock), &request(true));
        assert_eq!(r.unwrap().text, long.text);
        assert_eq!(restarts(&events), 1);
        assert_eq!(shown(&events), long.text);
    }
}

#[test]
fn malformed_json_is_retried_then_reported() {
    let mock = MockLlm::start(vec![Turn::MalformedJson, ok_reply()]).unwrap();
    assert_eq!(
        chat(&anthropic(&mock), &request(true)).0.unwrap().text,
        "final answer"
    );
    let mock = MockLlm::start(vec![Turn::MalformedJson; 3]).unwrap();
    let err = chat(&openai(&mock), &request(false)).0.unwrap_err();
    assert!(matches!(err, LlmError::Protocol { .. }), "{err}");
}

#[test]
fn connection_refused_is_a_transport_error_after_retries() {
    let mut c = warren_llm::ProviderConfig::openai_from_env(|k| {
        (k == "OPENAI_BASE_URL").then(|| "http://127.0.0.1:9/v1".to_string())
    });
    super::fast(&mut c);
    let p = warren_llm::build(c).unwrap();
    let err = chat(&p, &request(true)).0.unwrap_err();
    assert!(matches!(err, LlmError::Transport { .. }), "{err}");
}

#[test]
fn concurrency_is_limited_per_provider() {
    let turns = (0..6)
        .map(|_| Turn::Slow {
            delay: Duration::from_millis(100),
            then: Box::new(ok_reply()),
        })
        .collect();
    let mock = MockLlm::start(turns).unwrap();
    let base = format!("{}/v1", mock.base_url());
    let mut c = warren_llm::ProviderConfig::openai_from_env(|k| {
        (k == "OPENAI_BASE_URL").then(|| base.clone())
    });
    super::fast(&mut c);
    c.max_concurrency = 2;
    let p = warren_llm::build(c).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut sink = |_e: StreamEvent| {};
                p.chat(&request(true), &mut sink).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    // 6 requests of 100 ms, 2 at a time: at least 3 rounds.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}
