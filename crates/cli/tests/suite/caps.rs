//! `/cap/ws` and `/cap/nostr` for the process tier: a real daemon, a real cell, a real
//! WebSocket echo server and a real relay from the test kit. The cell's processes use the
//! capability files with ordinary system calls; the host serves them live over FUSE — the same
//! services a WebAssembly module reaches — under the task's egress policy, audited.

use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, audit_lines, deploy, reply, tool_output, tool_results};

/// A Python program run in the cell: one exchange on a capability file (write, seek back,
/// read on the same descriptor), printing the answer.
fn exchange(path: &str, request: &str) -> String {
    format!(
        "python3 -c \"import os,sys; f=os.open('{path}', os.O_RDWR); os.write(f, sys.argv[1].encode()); os.lseek(f, 0, 0); print(os.read(f, 65536).decode().strip())\" '{request}'"
    )
}

#[test]
fn a_process_cell_uses_cap_ws_and_cap_nostr_live_under_the_tasks_policy() {
    if !require_process_tier() {
        return;
    }
    if let Err(e) = warren_nsfuse::available() {
        warren_testkit::skip(&format!("FUSE: {e}"));
        return;
    }
    let t = TempDir::new("caps-live");
    let state = t.path().join("state");
    let echo = warren_testkit::ws::echo_server();
    let (relay, relay_events) = warren_testkit::relay::start(|_| true);
    let manifest = "name: caps
description: talks over WebSocket and signs Nostr events
provider: openai
model: mock-model
tools: [shell, finish]
capabilities:
  network: [echo.test, relay.test, nowhere.test, denied-by-policy.test]
  nostr:
    relays: [\"ws://relay.test/\"]
    kinds: [\"1\"]
";
    deploy(&state, manifest);
    let ws_session = concat!(
        "python3 -c \"",
        "import os\n",
        "f=os.open('/cap/ws/ctl', os.O_RDWR); os.write(f, b'connect ws://echo.test/'); os.lseek(f, 0, 0)\n",
        "i=os.read(f, 64).decode().strip(); os.close(f); print('id', i)\n",
        "o=os.open('/cap/ws/'+i+'/out', os.O_WRONLY); os.write(o, b'hello over fuse'); os.close(o)\n",
        "n=os.open('/cap/ws/'+i+'/in', os.O_RDONLY); print('got', os.read(n, 4096).decode()); os.close(n)\n",
        "print('status', open('/cap/ws/'+i+'/status').read().strip())\n",
        "\""
    )
    .to_owned();
    let steps: Vec<String> = vec![
        ws_session,
        exchange("/cap/ws/ctl", "connect ws://nowhere.test/"),
        exchange("/cap/ws/ctl", "connect ws://denied-by-policy.test/"),
        exchange(
            "/cap/nostr/sign",
            r#"{"kind": 1, "content": "signed in a cell"}"#,
        ),
        exchange(
            "/cap/nostr/sign",
            r#"{"kind": 7, "content": "not granted"}"#,
        ),
        exchange(
            "/cap/nostr/publish",
            r#"{"kind": 1, "content": "to the relay"}"#,
        ),
        "cat /cap/nostr/pubkey; ls /cap/nostr; ls /cap/ws".into(),
        // What a process cannot do there: make links or files the services do not have.
        "ln -s /etc/passwd /cap/ws/l; echo \"ln=$?\"; echo x > /cap/nostr/key; echo \"new=$?\""
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
    std::fs::write(
        &policy,
        "[capabilities]\nnetwork = [\"echo.test\", \"relay.test\", \"nowhere.test\"]\n",
    )
    .unwrap();
    let (dial_echo, dial_relay) = (
        format!("203.0.113.7=127.0.0.1:{}", echo.port()),
        format!("203.0.113.8=127.0.0.1:{}", relay.port()),
    );
    let d = DaemonProc::start(
        &state,
        &mock,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--egress-test-resolve",
            "echo.test=203.0.113.7",
            "--egress-test-resolve",
            "relay.test=203.0.113.8",
            "--egress-test-resolve",
            "nowhere.test=127.0.0.1",
            "--egress-test-dial",
            &dial_echo,
            "--egress-test-dial",
            &dial_relay,
        ],
    );
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "caps", "goal": "talk"})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, Duration::from_secs(90));
    assert_eq!(done["state"], "succeeded", "{done}");
    let reqs = mock.requests();
    let out = |n: usize| tool_output(&reqs, &format!("s{n}"));
    assert!(n_steps == 8);
    for n in 0..n_steps {
        eprintln!("step {n}: {}", out(n));
    }
    // A WebSocket through files: the echo came back on the connection's `in`.
    let ws = out(0);
    assert!(
        ws.contains("id 1") && ws.contains("got hello over fuse") && ws.contains("status open"),
        "{ws}"
    );
    // The egress policy holds: a name that resolves to loopback, a name the operator's policy
    // lacks.
    assert!(
        out(1).contains("error") && out(1).contains("loopback"),
        "{}",
        out(1)
    );
    assert!(out(2).contains("error"), "{}", out(2));
    // Signing: a NIP-01 event under the agent's key, for a granted kind only.
    let signed: Value = serde_json::from_str(
        out(3)
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or("null"),
    )
    .unwrap_or(Value::Null);
    assert_eq!(signed["kind"], 1, "{}", out(3));
    assert_eq!(signed["content"], "signed in a cell");
    assert_eq!(signed["sig"].as_str().map(str::len), Some(128), "{signed}");
    assert!(
        out(4).contains("error") && !out(4).contains("\"sig\""),
        "{}",
        out(4)
    );
    // Publishing reaches the relay, which accepts the event.
    assert!(out(5).contains("\"accepted\":true"), "{}", out(5));
    assert!(
        relay_events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["content"] == "to the relay"),
        "the relay has no such event"
    );
    // The public key is readable; the secret key is not in the cell at all.
    let listing = out(6);
    assert!(
        listing.contains(signed["pubkey"].as_str().unwrap_or("?")),
        "{listing}"
    );
    for name in ["README", "publish", "sign"] {
        assert!(listing.contains(name), "{listing}");
    }
    assert!(
        !listing
            .lines()
            .any(|l| l.ends_with(".key") || l.contains("secret") || l == "key"),
        "{listing}"
    );
    let hostile = out(7);
    assert!(
        !hostile.contains("ln=0") && !hostile.contains("new=0"),
        "{hostile}"
    );
    // Every connection and every signature audited.
    let audit = audit_lines(&state, &id);
    let egress: Vec<&Value> = audit
        .iter()
        .filter(|r| r["kind"] == "egress")
        .map(|r| &r["data"])
        .collect();
    let decided = |host: &str, decision: &str| {
        egress
            .iter()
            .any(|e| e["host"] == host && e["decision"] == decision)
    };
    assert!(decided("echo.test", "allowed"), "{egress:?}");
    assert!(decided("nowhere.test", "denied"), "{egress:?}");
    assert!(decided("denied-by-policy.test", "denied"), "{egress:?}");
    assert!(decided("relay.test", "allowed"), "{egress:?}");
    let signed_records = audit.iter().filter(|r| r["kind"] == "nostr.signed").count();
    assert_eq!(signed_records, 2, "sign and publish, not the refused kind");
    // The task's mounts are gone once it ended.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id),
        "a capability mount outlived its task"
    );
}
