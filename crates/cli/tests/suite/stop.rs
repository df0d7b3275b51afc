//! A run stops when told to, even while a model call is in flight (issue 20): a timeout, a
//! SIGTERM, a SIGINT during a retry's backoff, a daemon's cancel — each against a slow or a
//! stalled model server, each ending within a few seconds with its documented exit code, the
//! changes kept and the reason recorded.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::WARREN;
use super::daemon::{DaemonProc, deploy, workspace};

/// A model that answers after `delay` (the request is read at once).
fn slow(delay: Duration) -> Turn {
    Turn::Slow {
        delay,
        then: Box::new(Turn::Reply(Reply::text("too late"))),
    }
}

fn write_then(next: Turn) -> Vec<Turn> {
    vec![
        Turn::Reply(Reply {
            tool_calls: vec![ToolCall {
                id: "w1".into(),
                name: "write_file".into(),
                arguments: json!({"path": "kept.txt", "content": "work so far\n"}).to_string(),
            }],
            ..Default::default()
        }),
        next,
    ]
}

fn run(mock: &MockLlm, state: &std::path::Path, ws: &std::path::Path, extra: &[&str]) -> Child {
    std::process::Command::new(WARREN)
        .arg("run")
        .args(["--workspace", ws.to_str().unwrap(), "--provider", "openai"])
        .args(extra)
        .arg("work slowly")
        .env("WARREN_STATE_DIR", state)
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.base_url()))
        .env("OPENAI_API_KEY", "sk-test-key-must-not-leak")
        // A stalled stream is not cut by the idle timeout within these tests.
        .env("WARREN__LLM__IDLE_TIMEOUT", "60s")
        .env("WARREN__LLM__RETRY_BASE", "10ms")
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until the mock has received `n` requests (the last one is then in flight).
fn requested(mock: &MockLlm, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.requests().len() < n {
        assert!(Instant::now() < deadline, "the model was never asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling the child we started, not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Its exit code, its stderr, and how long it took after `since`.
fn ended(child: Child, since: Instant) -> (Option<i32>, String, Duration) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        since.elapsed(),
    )
}

#[test]
fn a_timeout_ends_a_run_during_a_slow_model_call_with_exit_124() {
    if !require_process_tier() {
        return;
    }
    let (s, ws) = (
        TempDir::new("stop-timeout"),
        TempDir::new("stop-timeout-ws"),
    );
    let mock = MockLlm::start(write_then(slow(Duration::from_secs(60)))).unwrap();
    let started = Instant::now();
    let child = run(&mock, s.path(), ws.path(), &["--timeout", "3s"]);
    let (code, err, took) = ended(child, started);
    eprintln!("--timeout 3s with a 60 s model call: ended after {took:?}");
    assert_eq!(code, Some(124), "{err}");
    assert!(err.contains("timed out after 3s"), "{err}");
    assert!(
        err.contains("changes kept as") && err.contains("kept.txt"),
        "{err}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(mock.requests().len(), 2, "no model call after the timeout");
    let audit = std::process::Command::new(WARREN)
        .args(["audit", "export"])
        .env("WARREN_STATE_DIR", s.path())
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("task.state") && audit.contains("timed out after 3s"),
        "the audit log says why: {audit}"
    );
}

#[test]
fn sigterm_during_a_stalled_model_stream_ends_the_run_with_exit_143() {
    if !require_process_tier() {
        return;
    }
    let (s, ws) = (TempDir::new("stop-term"), TempDir::new("stop-term-ws"));
    let stall = Turn::Stall {
        reply: Reply::text("half of an answer that never ends"),
        stall: Duration::from_secs(60),
    };
    let mock = MockLlm::start(write_then(stall)).unwrap();
    let child = run(&mock, s.path(), ws.path(), &[]);
    requested(&mock, 2);
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let (code, err, took) = ended(child, sent);
    eprintln!("SIGTERM during a stalled stream: ended after {took:?}");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("interrupted by signal 15"), "{err}");
    assert!(err.contains("kept.txt"), "the changes are kept: {err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(mock.requests().len(), 2, "no model call after the signal");
}

#[test]
fn sigint_during_a_retry_backoff_ends_the_run_with_exit_130() {
    if !require_process_tier() {
        return;
    }
    let (s, ws) = (TempDir::new("stop-int"), TempDir::new("stop-int-ws"));
    let busy = Turn::Status {
        code: 429,
        retry_after: Some(60),
    };
    let mock = MockLlm::start(write_then(busy)).unwrap();
    let child = run(&mock, s.path(), ws.path(), &[]);
    requested(&mock, 2);
    let sent = Instant::now();
    signal(&child, libc::SIGINT);
    let (code, err, took) = ended(child, sent);
    eprintln!("SIGINT during a 60 s Retry-After backoff: ended after {took:?}");
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(mock.requests().len(), 2, "the backoff was not waited out");
}

#[test]
fn a_daemon_cancel_during_a_slow_model_call_ends_the_task_at_once() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("stop-cancel");
    let state = t.path().join("state");
    deploy(&state, super::daemon::MANIFEST);
    let mock = MockLlm::start(write_then(slow(Duration::from_secs(60)))).unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let ws = workspace(&t);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "work slowly", "workspace": ws.display().to_string()})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    requested(&mock, 2);
    let sent = Instant::now();
    let (code, _) = d.call("POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert!(code < 300, "{code}");
    let done = d.wait_done(&id, Duration::from_secs(30));
    let took = sent.elapsed();
    eprintln!("cancel during a 60 s model call: ended after {took:?}");
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn a_daemon_task_s_timeout_and_the_daemon_s_shutdown_end_slow_model_calls_at_once() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("stop-daemon");
    let state = t.path().join("state");
    deploy(
        &state,
        &super::daemon::MANIFEST.replace("limits: {timeout: 5m}", "limits: {timeout: 2s}"),
    );
    let mut turns = write_then(slow(Duration::from_secs(60)));
    turns.extend(write_then(slow(Duration::from_secs(60))));
    let mock = MockLlm::start(turns).unwrap();
    let mut d = DaemonProc::start(&state, &mock, &[]);
    let ws = workspace(&t);
    let submit = |d: &DaemonProc| {
        let (_, task) = d.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": "coder", "goal": "work slowly", "workspace": ws.display().to_string()})),
        );
        task["id"].as_str().unwrap().to_owned()
    };
    // The manifest's 2 s timeout, during a 60 s model call.
    let started = Instant::now();
    let id = submit(&d);
    let done = d.wait_done(&id, Duration::from_secs(30));
    let took = started.elapsed();
    eprintln!("a 2 s task timeout during a 60 s model call: ended after {took:?}");
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("timed out after 2s"),
        "{done}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");

    // SIGTERM to the daemon during the next task's model call: it stops at once and the task
    // goes back to the queue, to resume from its checkpoints at the next start.
    deploy(&state, super::daemon::MANIFEST);
    let id = submit(&d);
    requested(&mock, 4);
    let sent = Instant::now();
    let status = d.terminate();
    let took = sent.elapsed();
    eprintln!("daemon SIGTERM during a 60 s model call: exited after {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    use warren_store::Store;
    let store = warren_store::sqlite::SqliteStore::open(&state.join("warren.db")).unwrap();
    let task = store.get_task(&id).unwrap();
    assert_eq!(task.state, warren_store::TaskState::Queued, "{task:?}");
}
