//! Capabilities and audit end to end: a real daemon, real cells, the mock model.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{
    DaemonProc, audit_lines, deploy, reply, tool_output, tool_results, warren_at, workspace,
};
use super::{WARREN, stderr, stdout};

const SCOPED: &str = "name: scoped
description: may write src/ only
provider: openai
model: mock-model
tools: [shell, read_file, write_file, finish]
capabilities:
  paths:
    - {glob: \"src/**\", access: write}
    - {glob: \"**\", access: read}
";

#[test]
fn what_the_gate_refuses_a_shell_command_cannot_do_either_and_all_of_it_is_audited() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("policy-scoped");
    let state = t.path().join("state");
    let ws = workspace(&t);
    std::fs::create_dir_all(ws.join("src")).unwrap();
    deploy(&state, SCOPED);
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "w1",
            "write_file",
            json!({"path": "README", "content": "defaced\n"}),
        )]),
        1 => reply(vec![(
            "s1",
            "shell",
            json!({"command": "echo defaced > /workspace/README"}),
        )]),
        2 => reply(vec![(
            "w2",
            "write_file",
            json!({"path": "src/ok.txt", "content": "fine\n"}),
        )]),
        3 => reply(vec![(
            "s2",
            "shell",
            json!({"command": "echo also fine > /workspace/src/shell.txt && cat /workspace/README"}),
        )]),
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let policy = t.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[capabilities]\ntools = [\"shell\", \"read_file\", \"write_file\", \"finish\"]\n",
    )
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--policy", policy.to_str().unwrap()]);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "scoped", "goal": "try", "workspace": ws.display().to_string()})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");

    // The host refused the write; the kernel refused the shell's; src/ was writable to both.
    let diff = stdout(&warren_at(&state, &["task", "diff", &id]));
    assert!(!diff.contains("defaced"), "{diff}");
    assert!(
        diff.contains("+fine") && diff.contains("+also fine"),
        "{diff}"
    );
    let reqs = mock.requests();
    let result_of = |call: &str| -> String {
        reqs.iter()
            .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == call)
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let refused = result_of("w1");
    assert!(
        refused.contains("refused by policy") && refused.contains("write access to \"README\""),
        "{refused}"
    );
    let kernel = result_of("s1");
    assert!(
        kernel.to_lowercase().contains("permission denied")
            || kernel.to_lowercase().contains("read-only"),
        "{kernel}"
    );

    // The audit log has the whole story, hash-chained.
    let records = audit_lines(&state, &id);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "task.submitted",
        "task.started",
        "model.call",
        "tool.call",
        "task.state",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "tool.call")
        .collect();
    let by_id = |c: &str| {
        calls
            .iter()
            .find(|r| r["data"]["call_id"] == c)
            .unwrap_or_else(|| panic!("{c} not audited: {calls:?}"))["data"]
            .clone()
    };
    assert_eq!(by_id("w1")["decision"], "refused");
    assert_eq!(by_id("s1")["decision"], "allowed");
    assert_eq!(by_id("s1")["is_error"], true);
    let w2 = by_id("w2");
    assert!(
        w2["capability"].as_str().unwrap().starts_with("cap-"),
        "{w2}"
    );
    assert!(w2["cell"].as_str().unwrap() == id && w2["duration_ms"].as_f64().is_some());
    let o = warren_at(&state, &["audit", "verify", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (o.status.code(), v["intact"].as_bool()),
        (Some(0), Some(true)),
        "{v}"
    );
    let head = v["head"].as_str().unwrap().to_owned();
    let o = warren_at(&state, &["audit", "tail", "-n", "3"]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    drop(d);

    // Someone edits the database: verify names the record.
    let raw = rusqlite::Connection::open(state.join("warren.db")).unwrap();
    let seq: i64 = raw
        .query_row(
            "SELECT seq FROM audit WHERE kind = 'tool.call' ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    raw.execute_batch("DROP TRIGGER audit_no_update;").unwrap();
    raw.execute(
        "UPDATE audit SET data = replace(data, 'refused', 'allowed') WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(raw);
    let o = warren_at(&state, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!(
            "record {seq}: its content does not match its hash"
        )),
        "{}",
        stdout(&o)
    );
    let o = warren_at(&state, &["audit", "verify", "--expect-head", "00"]);
    assert!(stdout(&o).contains("was expected"), "{}", stdout(&o));
    assert_ne!(head, "00");
}

#[test]
fn a_planted_key_appears_nowhere_warren_wrote() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("policy-secrets");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, &SCOPED.replace("scoped", "coder"));
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "s1",
            "shell",
            json!({"command": "env; cat /task/spec.json"}),
        )]),
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    // DaemonProc sets the provider key; plant one more secret-looking variable too.
    let planted = "ghp_PlantedTokenMustNotLeak0123456789";
    let d = DaemonProc::start_env(
        &state,
        &mock,
        &["--listen", "127.0.0.1:0"],
        &[("GITHUB_TOKEN", planted)],
    );
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "look around", "workspace": ws.display().to_string()})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(
        d.wait_done(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let token = std::fs::read_to_string(state.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let log = d.log.lock().unwrap().clone();
    drop(d);
    // Everything Warren wrote: the state directory (database, WAL, task dirs, logs, layers),
    // its output, the audit export, the events.
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![("daemon output".into(), log.into_bytes())];
    let mut stack = vec![state.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && p.file_name().unwrap() != "token" {
                haystacks.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    let export = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args(["audit", "export"])
        .output()
        .unwrap();
    haystacks.push(("audit export".into(), export.stdout));
    assert!(haystacks.len() > 10, "searched {} files", haystacks.len());
    for secret in ["sk-test-key-must-not-leak", planted, token.as_str()] {
        for (name, hay) in &haystacks {
            let found = hay.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} found in {name}");
        }
    }
}

const GUARDED: &str = "name: guarded
description: risky commands need a person
provider: openai
model: mock-model
tools: [shell, finish]
approval_required: [\"shell:echo risky*\"]
budget: {tokens: 1000000}
";

fn wait_state(d: &DaemonProc, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = d.call("GET", &format!("/v1/tasks/{id}"), None);
        if t["state"] == state {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} never {state}: {t}\n{}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn approvals_pause_the_task_and_a_remembered_one_becomes_a_narrow_rule() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("policy-approvals");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, GUARDED);
    let mock = MockLlm::start_responder(|b| {
        let cmd = match tool_results(b) {
            0 | 1 => "echo risky one >> /workspace/log",
            2 => "echo risky two >> /workspace/log",
            3 => "echo safe >> /workspace/log",
            _ => return reply(vec![("f", "finish", json!({"summary": "done"}))]),
        };
        let n = tool_results(b);
        reply(vec![(&format!("s{n}"), "shell", json!({"command": cmd}))])
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "guarded", "goal": "risky", "workspace": ws.display().to_string()})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let paused = wait_state(&d, &id, "awaiting_approval");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("echo risky one"),
        "{paused}"
    );
    let (code, pending) = d.call("GET", &format!("/v1/tasks/{id}/approval"), None);
    assert_eq!(
        (code, pending["tool"].as_str()),
        (200, Some("shell")),
        "{pending}"
    );
    let o = warren_at(&state, &["task", "approve", &id, "--remember", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same exact command again runs without asking; a different one pauses.
    let paused = wait_state(&d, &id, "awaiting_approval");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("echo risky two"),
        "{paused}"
    );
    let o = warren_at(&state, &["task", "deny", &id, "--reason", "not today"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let diff = stdout(&warren_at(&state, &["task", "diff", &id]));
    assert_eq!(diff.matches("+risky one").count(), 2, "{diff}");
    assert!(
        !diff.contains("risky two") && diff.contains("+safe"),
        "{diff}"
    );
    let told = mock
        .requests()
        .iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .any(|m| {
            m["content"]
                .as_str()
                .is_some_and(|c| c.contains("not approved: not today"))
        });
    assert!(told, "the model was told why");
    // The remembered rule: narrow (this agent, this tool, this exact command), listable, removable.
    let o = warren_at(&state, &["approvals", "list", "--json"]);
    let rules: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    assert_eq!(rules[0]["agent"], "guarded");
    assert_eq!(rules[0]["pattern"], "echo risky one >> /workspace/log");
    let rid = rules[0]["id"].to_string();
    assert!(
        warren_at(&state, &["approvals", "remove", &rid])
            .status
            .success()
    );
    let o = warren_at(&state, &["approvals", "list", "--json"]);
    assert_eq!(stdout(&o).trim(), "[]");
    let kinds: Vec<String> = audit_lines(&state, &id)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in [
        "approval.requested",
        "approval.decided",
        "approval.remembered",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not audited: {kinds:?}");
    }
    // Deciding for a task that waits for nothing is a conflict.
    let (code, _) = d.call("POST", &format!("/v1/tasks/{id}/approve"), None);
    assert_eq!(code, 409);
}

#[test]
fn a_budget_pauses_for_approval_and_an_unanswered_request_times_out_as_denied() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("policy-budget");
    let state = t.path().join("state");
    deploy(
        &state,
        &GUARDED.replace("budget: {tokens: 1000000}", "budget: {tokens: 200}"),
    );
    // Each turn reports 110 tokens: the budget is reached after two turns.
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        n @ 0..=1 => reply(vec![(
            &format!("s{n}"),
            "shell",
            json!({"command": "true"}),
        )]),
        2 => reply(vec![("r", "shell", json!({"command": "echo risky late"}))]),
        _ => reply(vec![("f", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--approval-timeout", "1500ms"]);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "guarded", "goal": "spend"})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let paused = wait_state(&d, &id, "awaiting_approval");
    let (_, pending) = d.call("GET", &format!("/v1/tasks/{id}/approval"), None);
    assert_eq!(pending["tool"], "budget", "{paused} {pending}");
    let o = warren_at(&state, &["task", "approve", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The risky call waits, nobody answers: denied at the timeout, and the task goes on.
    let paused = wait_state(&d, &id, "awaiting_approval");
    assert!(
        paused["reason"].as_str().unwrap().contains("risky late"),
        "{paused}"
    );
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let decided: Vec<Value> = audit_lines(&state, &id)
        .into_iter()
        .filter(|r| r["kind"] == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert_eq!(decided[0]["data"]["approved"], true);
    assert_eq!(decided[1]["data"]["by"], "timeout");
}

/// A tiny HTTP origin on the host's loopback; answers every request with `body`.
fn origin(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn egress_reaches_only_allowed_names_through_the_proxy_and_nothing_else() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("policy-egress");
    let state = t.path().join("state");
    let port = origin("hello from origin");
    let manifest = "name: net
description: may fetch from allowed.test
provider: openai
model: mock-model
tools: [shell, finish]
capabilities:
  network: [allowed.test, rebind.test, forbidden-by-policy.example]
";
    deploy(&state, manifest);
    let steps: Vec<String> = vec![
        "curl -sS -m 5 http://allowed.test/; echo \" curl=$?\"".into(),
        "curl -sS -m 5 http://denied.test/; echo \" curl=$?\"".into(),
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://allowed.test/', timeout=5).read().decode())\"".into(),
        "curl -sS -m 3 --noproxy '*' http://203.0.113.7/; echo \" direct=$?\"".into(),
        format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\"; echo \" loopback=$?\""),
        "curl -sS -m 5 http://rebind.test/; echo \" curl=$?\"".into(),
        "curl -sS -m 5 http://forbidden-by-policy.example/; echo \" curl=$?\"".into(),
        // The file interface: same policy, executed by the host.
        concat!(
            "cat /cap/http/README >/dev/null && ",
            "printf '{\"id\": \"r1\", \"url\": \"http://allowed.test/\"}' > /cap/http/request; ",
            "for i in $(seq 100); do [ -f /cap/http/responses/r1.json ] && break; sleep 0.05; done; ",
            "printf '{\"id\": \"r2\", \"url\": \"http://denied.test/\"}' > /cap/http/request; ",
            "for i in $(seq 100); do [ -f /cap/http/responses/r2.json ] && break; sleep 0.05; done; ",
            "cat /cap/http/responses/r1.json /cap/http/responses/r2.json"
        )
        .into(),
    ];
    let n_steps = steps.len();
    let mock = MockLlm::start_responder(move |b| {
        let n = tool_results(b);
        match steps.get(n) {
            Some(cmd) => reply(vec![(&format!("s{n}"), "shell", json!({"command": cmd}))]),
            None => reply(vec![("f", "finish", json!({"summary": "done"}))]),
        }
    })
    .unwrap();
    let policy = t.path().join("policy.toml");
    std::fs::write(&policy, "[capabilities]\nnetwork = [\"*.test\"]\n").unwrap();
    let dial = format!("203.0.113.7=127.0.0.1:{port}");
    let d = DaemonProc::start(
        &state,
        &mock,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--egress-test-resolve",
            "allowed.test=203.0.113.7",
            "--egress-test-resolve",
            "rebind.test=127.0.0.1",
            "--egress-test-resolve",
            "denied.test=203.0.113.7",
            "--egress-test-dial",
            &dial,
        ],
    );
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "net", "goal": "fetch"})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, Duration::from_secs(90));
    assert_eq!(done["state"], "succeeded", "{done}");
    let reqs = mock.requests();
    let out = |n: usize| tool_output(&reqs, &format!("s{n}"));
    // The model is told what this task's cell can reach (the daemon's agent config follows
    // the effective network capabilities): the proxy and its destinations, not "no network".
    let system = reqs[0].body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    let shell = reqs[0].body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["function"]["name"] == "shell")
        .and_then(|t| t["function"]["description"].as_str())
        .unwrap_or_default();
    for text in [system, shell] {
        assert!(
            text.contains("HTTP(S) proxy")
                && text.contains("allowed.test")
                && !text.contains("no network"),
            "{text}"
        );
    }
    assert!(
        out(0).contains("hello from origin") && out(0).contains("curl=0"),
        "{}",
        out(0)
    );
    assert!(
        out(1).contains("egress denied") && out(1).contains("not in the allowlist"),
        "{}",
        out(1)
    );
    assert!(
        out(2).contains("hello from origin"),
        "python through the proxy: {}",
        out(2)
    );
    assert!(
        !out(3).contains("hello") && !out(3).contains("direct=0"),
        "direct: {}",
        out(3)
    );
    assert!(
        !out(4).contains("loopback=0"),
        "loopback bypass: {}",
        out(4)
    );
    assert!(
        out(5).contains("egress denied") && out(5).contains("loopback"),
        "rebinding: {}",
        out(5)
    );
    assert!(
        out(6).contains("egress denied"),
        "the operator's policy bounds the manifest: {}",
        out(6)
    );
    assert!(n_steps == 8);
    let files = out(7);
    assert!(
        files.contains("\"id\": \"r1\"")
            && files.contains("hello from origin")
            && files.contains("\"status\": 200"),
        "/cap/http allowed: {files}"
    );
    assert!(
        files.contains("\"id\": \"r2\"") && files.contains("egress denied"),
        "/cap/http denied: {files}"
    );
    // Every attempt audited.
    let egress: Vec<Value> = audit_lines(&state, &id)
        .into_iter()
        .filter(|r| r["kind"] == "egress")
        .map(|r| r["data"].clone())
        .collect();
    let of = |host: &str| -> Vec<&Value> { egress.iter().filter(|e| e["host"] == host).collect() };
    assert_eq!(
        of("allowed.test").len(),
        3,
        "proxy twice, /cap/http once: {egress:?}"
    );
    assert!(
        of("allowed.test")
            .iter()
            .all(|e| e["decision"] == "allowed")
    );
    assert_eq!(of("denied.test")[0]["decision"], "denied");
    assert!(
        of("rebind.test")[0]["reason"]
            .as_str()
            .unwrap()
            .contains("loopback")
    );
    assert_eq!(of("forbidden-by-policy.example")[0]["decision"], "denied");

    // A cell without network capabilities has no way out at all.
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "exec",
            "--",
            "curl",
            "-sS",
            "-m",
            "3",
            "http://203.0.113.7/",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stdout(&o));
}
