//! `warren mcp` end to end: the official Python MCP SDK (PyPI `mcp`, a real client) launches
//! `warren mcp` over stdio, as Claude Code or Cursor would, in front of a real daemon with
//! real cells and the mock model. The client submits a goal, follows it with progress
//! notifications, reads the result and the diff, and gets a refusal as a tool error.
//!
//! The SDK comes from `$WARREN_TEST_MCP_PYTHON` (a Python with `mcp` installed; `.ci/run`
//! makes one); without it the test is skipped with the reason, and fails under CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier, skip};

use super::daemon::{Conn, DaemonProc, MANIFEST, deploy, http, reply, tool_results, workspace};
use super::{WARREN, stderr, stdout};

fn mcp_python() -> Option<PathBuf> {
    match std::env::var_os("WARREN_TEST_MCP_PYTHON").map(PathBuf::from) {
        Some(p) if p.exists() => Some(p),
        other => {
            skip(&format!(
                "WARREN_TEST_MCP_PYTHON (a Python with the `mcp` SDK) is {other:?}; .ci/run creates one"
            ));
            None
        }
    }
}

/// `cmd`'s output; killed if it runs past `limit` (a hung session fails, not hangs, the test).
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: signalling our own child, which has not been reaped (we wait below).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let o = child.wait_with_output().unwrap();
    let _ = tx.send(());
    o
}

/// A daemon with the test agent, whose model writes hello.txt and finishes.
fn daemon(t: &TempDir, extra: &[&str]) -> (DaemonProc, PathBuf, MockLlm) {
    let state = t.path().join("state");
    deploy(&state, MANIFEST);
    let mock = MockLlm::start_responder(|body: &Value| match tool_results(body) {
        0 => reply(vec![(
            "w1",
            "write_file",
            serde_json::json!({"path": "hello.txt", "content": "hi over mcp\n"}),
        )]),
        _ => reply(vec![(
            "f1",
            "finish",
            serde_json::json!({"summary": "wrote hello.txt"}),
        )]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, extra);
    (d, workspace(t), mock)
}

/// Run the Python client (`tests/mcp/client.py`) with `args`; what it saw.
fn session(python: &Path, args: &[&std::ffi::OsStr], d: &DaemonProc) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    let o = output_within(&mut cmd, Duration::from_secs(120));
    assert!(
        o.status.success(),
        "client failed:\n{}\n{}\ndaemon:\n{}",
        stdout(&o),
        stderr(&o),
        d.log.lock().unwrap()
    );
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

/// What every session must have seen, whichever the transport.
fn assert_session(seen: &Value, ws: &Path) {
    assert_eq!(seen["server"], "warren", "{seen}");
    // The SDK and rmcp agree on the newest revision both speak.
    eprintln!("negotiated MCP revision {}", seen["protocol"]);
    assert!(
        ["2026-07-28", "2025-11-25"].contains(&seen["protocol"].as_str().unwrap_or_default()),
        "{seen}"
    );
    assert_eq!(
        seen["tools"],
        serde_json::json!([
            "cancel_task",
            "decide_approval",
            "list_agents",
            "submit_task",
            "task_diff",
            "task_events",
            "task_result",
            "task_status",
            "wait_task"
        ])
    );
    assert_eq!(seen["agents"], serde_json::json!(["coder"]));
    assert_eq!(seen["submitted_state"], "queued");
    assert_eq!(seen["final"]["state"], "succeeded", "{seen}");
    let progress: Vec<&str> = seen["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        progress.contains(&"agent.tool_call") && progress.contains(&"task.state"),
        "a progress notification per event, naming its kind: {progress:?}"
    );
    assert_eq!(seen["result"]["summary"], "wrote hello.txt", "{seen}");
    let diff = seen["diff"]["text"].as_str().unwrap();
    assert!(diff.contains("+hi over mcp"), "{diff}");
    assert_eq!(
        seen["diff_resource"], diff,
        "the diff resource is the same text"
    );
    assert!(!ws.join("hello.txt").exists(), "the project is untouched");
    assert_eq!(seen["missing"]["is_error"], true);
    assert_eq!(seen["missing"]["content"]["code"], "not_found");
}

#[test]
fn the_python_sdk_submits_a_goal_over_stdio_follows_it_and_reads_the_result_and_diff() {
    if !require_process_tier() {
        return;
    }
    let Some(python) = mcp_python() else {
        return;
    };
    let t = TempDir::new("mcp-stdio");
    let (d, ws, _mock) = daemon(&t, &[]);
    let seen = session(
        &python,
        &[
            "stdio".as_ref(),
            WARREN.as_ref(),
            d.state.as_os_str(),
            ws.as_os_str(),
        ],
        &d,
    );
    assert_session(&seen, &ws);
}

#[test]
fn the_python_sdk_does_the_same_over_the_daemon_s_streamable_http_endpoint_behind_its_token() {
    if !require_process_tier() {
        return;
    }
    let Some(python) = mcp_python() else {
        return;
    };
    let t = TempDir::new("mcp-http");
    let (d, ws, _mock) = daemon(&t, &["--listen", "127.0.0.1:0"]);
    let addr = d.tcp.clone().expect("a TCP listener");
    let token = std::fs::read_to_string(d.state.join("token")).unwrap();
    let token = token.trim();
    let url = format!("http://{addr}/mcp");
    let seen = session(
        &python,
        &[
            "http".as_ref(),
            url.as_ref(),
            token.as_ref(),
            ws.as_os_str(),
        ],
        &d,
    );
    assert_session(&seen, &ws);

    // The API's authentication holds for /mcp, and no browser page can drive it.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let accept = ("Accept", "application/json, text/event-stream");
    let (code, _) = http(
        &Conn::Tcp(addr.clone()),
        "POST",
        "/mcp",
        &[accept],
        Some(init),
    );
    assert_eq!(code, 401, "no token");
    let bearer = format!("Bearer {token}");
    let (code, body) = http(
        &Conn::Tcp(addr.clone()),
        "POST",
        "/mcp",
        &[
            accept,
            ("Authorization", &bearer),
            ("Origin", "https://evil.example"),
        ],
        Some(init),
    );
    assert_eq!(code, 403, "an Origin is refused: {body}");
}

/// The status code of a raw `initialize` POST to `addr`'s `/mcp` naming `host` in `Host`, with
/// `origin` in `Origin` when given.
fn post_initialize(addr: &str, host: &str, origin: Option<&str>) -> u16 {
    use std::io::{BufRead, Write};
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut status = String::new();
    std::io::BufReader::new(s).read_line(&mut status).unwrap();
    status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status:?}"))
}

#[test]
fn the_conformance_fixture_is_served_with_the_daemon_s_host_and_origin_checks() {
    use std::io::BufRead;
    let mut fixture = Command::new(WARREN)
        .args(["mcp", "--conformance-fixture", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(fixture.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.strip_suffix("/mcp"))
        .unwrap_or_else(|| panic!("not the line announcing the address: {line:?}"))
        .to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let own = format!("http://{addr}");
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let codes = [
        post_initialize(&addr, &addr, None),
        post_initialize(&addr, &addr, Some(&own)),
        post_initialize(&addr, &addr, Some(&other_port)),
        post_initialize(&addr, &addr, Some("http://evil.example.com")),
        post_initialize(&addr, "evil.example.com", Some("http://evil.example.com")),
        post_initialize(&addr, "evil.example.com", None),
    ];
    fixture.kill().unwrap();
    fixture.wait().unwrap();
    // No Origin, or the listener's own: served. Another local server's page, a web page, a
    // DNS-rebinding name: refused.
    assert_eq!(codes, [200, 200, 403, 403, 403, 403]);
}
