//! `warren run` and the daemon are one runtime: the same scripted session through each
//! produces the same audit kinds and the same event kinds, in the same order.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::mockllm::{MockLlm, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::WARREN;
use super::daemon::{DaemonProc, deploy, reply, tool_results, warren_at, workspace};

/// Writes hello.txt, runs a command, finishes.
fn session(body: &Value) -> Turn {
    match tool_results(body) {
        0 => reply(vec![(
            "w1",
            "write_file",
            json!({"path": "hello.txt", "content": "hi\n"}),
        )]),
        1 => reply(vec![("s1", "shell", json!({"command": "cat hello.txt"}))]),
        _ => reply(vec![(
            "f1",
            "finish",
            json!({"summary": "wrote hello.txt"}),
        )]),
    }
}

/// (audit kinds, event kinds) recorded for `task` in the store of `state`, in order.
fn kinds(state: &Path, task: &str) -> (Vec<String>, Vec<String>) {
    let db = rusqlite::Connection::open(state.join("warren.db")).unwrap();
    let read = |sql: &str| -> Vec<String> {
        let mut st = db.prepare(sql).unwrap();
        st.query_map([task], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    (
        read("SELECT kind FROM audit WHERE task = ?1 ORDER BY seq"),
        read("SELECT kind FROM events WHERE task = ?1 ORDER BY id"),
    )
}

#[test]
fn warren_run_and_the_daemon_record_the_same_audit_and_event_kinds() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("equivalence");
    let mock = MockLlm::start_responder(session).unwrap();

    // Through `warren run`.
    let local = t.path().join("local");
    let t1 = TempDir::new("equivalence-ws1");
    let ws1 = workspace(&t1);
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&local)
        .args([
            "run",
            "--provider",
            "openai",
            "--model",
            "mock-model",
            "--no-apply",
        ])
        .arg("--workspace")
        .arg(&ws1)
        .arg("write hello.txt")
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.base_url()))
        .env("OPENAI_API_KEY", "sk-test")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let id_local = err
        .split("task ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();

    // Through the daemon.
    let remote = t.path().join("remote");
    let t2 = TempDir::new("equivalence-ws2");
    let ws2 = workspace(&t2);
    deploy(
        &remote,
        "name: coder\ndescription: test agent\nprovider: openai\nmodel: mock-model\ntools: [shell, read_file, write_file, edit_file, list_files, grep, finish]\n",
    );
    let d = DaemonProc::start(&remote, &mock, &[]);
    let (code, v) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "write hello.txt", "workspace": ws2.display().to_string()})),
    );
    assert_eq!(code, 201, "{v}");
    let id_remote = v["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id_remote, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");

    let (audit_local, events_local) = kinds(&local, &id_local);
    let (audit_remote, events_remote) = kinds(&remote, &id_remote);
    assert_eq!(audit_local, audit_remote, "audit kinds differ");
    assert_eq!(events_local, events_remote, "event kinds differ");
    // And they say what happened, not nothing.
    for k in [
        "task.submitted",
        "task.started",
        "model.call",
        "tool.call",
        "task.state",
    ] {
        assert!(
            audit_local.iter().any(|a| a == k),
            "no {k} in {audit_local:?}"
        );
    }
    for k in [
        "task.state",
        "agent.turn",
        "agent.tool_call",
        "agent.tool_result",
        "agent.finished",
    ] {
        assert!(
            events_local.iter().any(|e| e == k),
            "no {k} in {events_local:?}"
        );
    }
    // Both kept the change for review.
    let diff = warren_at(&local, &["diff", &id_local]);
    assert!(String::from_utf8_lossy(&diff.stdout).contains("hello.txt"));
}
