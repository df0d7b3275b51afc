//! The daemon end to end: a real `warren daemon` process, its API over a real unix socket and
//! TCP listener, real cells, the model played by the local mock server.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::{WARREN, stderr, stdout};

pub const MANIFEST: &str = "name: coder
description: test agent
provider: openai
model: mock-model
tools: [shell, read_file, write_file, finish]
limits: {timeout: 5m}
";

/// Tool results in an OpenAI request: the conversation's position.
pub fn tool_results(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count())
}

/// The first user message (the goal).
pub fn goal_of(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

pub fn reply(calls: Vec<(&str, &str, Value)>) -> Turn {
    Turn::Reply(Reply {
        tool_calls: calls
            .into_iter()
            .map(|(id, name, args)| ToolCall::new(id, name, args.to_string()))
            .collect(),
        input_tokens: 100,
        output_tokens: 10,
        ..Default::default()
    })
}

/// Writes hello.txt, reads it back with the shell, finishes.
fn hello_agent(body: &Value) -> Turn {
    match tool_results(body) {
        0 => reply(vec![(
            "w1",
            "write_file",
            json!({"path": "hello.txt", "content": "hi from the daemon\n"}),
        )]),
        1 => reply(vec![("s1", "shell", json!({"command": "cat hello.txt"}))]),
        _ => reply(vec![(
            "f1",
            "finish",
            json!({"summary": "wrote hello.txt"}),
        )]),
    }
}

/// A running `warren daemon`; killed (SIGKILL) when dropped.
pub struct DaemonProc {
    pub child: Child,
    pub state: PathBuf,
    pub tcp: Option<String>,
    pub log: Arc<Mutex<String>>,
}

impl DaemonProc {
    pub fn start(state: &Path, mock: &MockLlm, extra: &[&str]) -> DaemonProc {
        Self::start_env(state, mock, extra, &[])
    }

    pub fn start_env(
        state: &Path,
        mock: &MockLlm,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonProc {
        Self::start_worker(state, mock, "test-worker", extra, env)
    }

    /// A daemon with its own worker name (one node of several).
    pub fn start_worker(
        state: &Path,
        mock: &MockLlm,
        worker: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonProc {
        let mut c = Command::new(WARREN);
        c.envs(env.iter().copied());
        c.arg("--state-dir")
            .arg(state)
            .args(["daemon", "--worker", worker])
            .args(extra)
            .env("OPENAI_BASE_URL", format!("{}/v1", mock.base_url()))
            .env("OPENAI_API_KEY", "sk-test-key-must-not-leak")
            .env("WARREN__LLM__IDLE_TIMEOUT", "2s")
            .env("WARREN__LLM__RETRY_BASE", "10ms")
            .env_remove("ANTHROPIC_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains(" ready on ") {
                    let _ = tx.send(line.clone());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("daemon did not start: {}", log.lock().unwrap()));
        let tcp = ready
            .split("http://")
            .nth(1)
            .map(|r| r.split_whitespace().next().unwrap().to_owned());
        DaemonProc {
            child,
            state: state.to_owned(),
            tcp,
            log,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.state.join("warren.sock")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = http(
            &Conn::Unix(self.socket()),
            method,
            path,
            &[],
            body.map(|b| b.to_string()).as_deref(),
        );
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Wait until task `id` is in a terminal state; returns it.
    pub fn wait_done(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, t) = self.call("GET", &format!("/v1/tasks/{id}"), None);
            assert_eq!(code, 200, "{t}");
            let s = t["state"].as_str().unwrap().to_owned();
            if ["succeeded", "failed", "cancelled", "interrupted"].contains(&s.as_str()) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still {s}; daemon log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub enum Conn {
    Unix(PathBuf),
    Tcp(String),
}

fn connect(c: &Conn) -> Box<dyn ReadWrite> {
    match c {
        Conn::Unix(p) => Box::new(std::os::unix::net::UnixStream::connect(p).unwrap()),
        Conn::Tcp(a) => Box::new(std::net::TcpStream::connect(a.as_str()).unwrap()),
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&body[..nl]).unwrap_or("0");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = nl + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = &body[(end + 2).min(body.len())..];
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    c: &Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut s = connect(c);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        // A body larger than the server accepts may be cut off by its early answer.
        let _ = s.write_all(b.as_bytes());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut payload = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    (code, String::from_utf8_lossy(&payload).into_owned())
}

/// Deploy the test manifest through the CLI (the local store, shared with the daemon).
pub fn deploy(state: &Path, manifest: &str) {
    let f = state.join("coder.yaml");
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(&f, manifest).unwrap();
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(state)
        .args(["agent", "deploy"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A task's audit records (`warren audit export --task`), parsed.
pub fn audit_lines(state: &Path, task: &str) -> Vec<Value> {
    let o = warren_at(state, &["audit", "export", "--task", task]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What the model was told a tool call `call` returned (an OpenAI `tool` message), or "".
pub fn tool_output(reqs: &[warren_testkit::mockllm::Recorded], call: &str) -> String {
    reqs.iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == call)
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

pub fn warren_at(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(WARREN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

pub fn workspace(t: &TempDir) -> PathBuf {
    let ws = t.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("README"), "a project\n").unwrap();
    ws
}

#[test]
fn the_api_checks_tokens_validates_input_and_describes_itself() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-api");
    let state = t.path().join("state");
    let mock = MockLlm::start_responder(hello_agent).unwrap();
    let d = DaemonProc::start(&state, &mock, &["--listen", "127.0.0.1:0"]);
    let tcp = Conn::Tcp(d.tcp.clone().expect("tcp address"));
    let token = std::fs::read_to_string(state.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    // The token and the socket are private to the daemon's user.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("token")), 0o600);
    assert_eq!(mode(&d.socket()), 0o600);

    // TCP: no token, a wrong one, a right one.
    let (code, body) = http(&tcp, "GET", "/health", &[], None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "unauthorized"
    );
    let (code, _) = http(
        &tcp,
        "GET",
        "/v1/tasks",
        &[("Authorization", "Bearer nope")],
        None,
    );
    assert_eq!(code, 401);
    let auth = format!("Bearer {token}");
    let (code, body) = http(&tcp, "GET", "/health", &[("Authorization", &auth)], None);
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["worker"], "test-worker");
    // The scheme is case-insensitive.
    let lower = format!("bearer {token}");
    let (code, body) = http(&tcp, "GET", "/health", &[("Authorization", &lower)], None);
    assert_eq!(code, 200, "{body}");

    // Malformed input: 4xx with one error shape, nothing stored.
    let bad = |method: &str, path: &str, body: Option<&str>| {
        let (code, text) = http(&Conn::Unix(d.socket()), method, path, &[], body);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
        (code, v["message"].as_str().unwrap().to_owned())
    };
    let (code, msg) = bad(
        "POST",
        "/v1/tasks",
        Some("{\"agent\": \"coder\",\n \"goal\": }"),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("line 2"), "{msg}");
    let (code, msg) = bad(
        "POST",
        "/v1/tasks",
        Some(r#"{"agent": "coder", "goal": "x", "colour": 1}"#),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("colour"), "{msg}");
    let (code, msg) = bad(
        "POST",
        "/v1/tasks",
        Some(r#"{"agent": "ghost", "goal": "x"}"#),
    );
    assert_eq!(code, 404);
    assert!(
        msg.contains("ghost") && msg.contains("not deployed"),
        "{msg}"
    );
    let (code, msg) = bad(
        "POST",
        "/v1/agents",
        Some(&json!({"manifest": "name: x\ntools: [shell, teleport]\n"}).to_string()),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("manifest:2:"), "names line and column: {msg}");
    let (code, a) = d.call("POST", "/v1/agents", Some(&json!({"manifest": MANIFEST})));
    assert_eq!((code, a["version"].as_u64()), (201, Some(1)), "{a}");
    let (code, msg) = bad(
        "POST",
        "/v1/tasks",
        Some(r#"{"agent": "coder", "goal": "   "}"#),
    );
    assert_eq!(code, 400, "{msg}");
    let (code, msg) = bad(
        "POST",
        "/v1/tasks",
        Some(r#"{"agent": "coder", "goal": "x", "workspace": "relative/dir"}"#),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("absolute"), "{msg}");
    let big = format!(r#"{{"agent": "coder", "goal": "{}"}}"#, "x".repeat(2 << 20));
    let (code, _) = bad("POST", "/v1/tasks", Some(&big));
    assert_eq!(code, 413);
    // Optional bodies too (they were plain text), and a WebSocket route without an upgrade.
    for path in ["cancel", "retry", "approve", "deny"] {
        let (code, _) = bad(
            "POST",
            &format!("/v1/tasks/t000000000000/{path}"),
            Some(&big),
        );
        assert_eq!(code, 413, "{path}");
    }
    let (code, _) = bad(
        "POST",
        "/v1/tasks/t000000000000/cancel",
        Some("{\"colour\": 1}"),
    );
    assert_eq!(code, 400);
    let (code, _) = bad("GET", "/v1/tasks?state=sleeping", None);
    assert_eq!(code, 400);
    let (code, _) = bad("GET", "/v1/tasks?limit=lots", None);
    assert_eq!(code, 400);
    let (code, _) = bad("GET", "/v1/tasks/t000000000000", None);
    assert_eq!(code, 404);
    let (code, _) = bad("GET", "/v1/nothing", None);
    assert_eq!(code, 404);
    let (code, _) = bad("DELETE", "/v1/tasks", None);
    assert_eq!(code, 405);
    let (_, list) = d.call("GET", "/v1/tasks", None);
    assert_eq!(list, json!([]), "no rejected submission was stored");
    let (code, t) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "x"})),
    );
    assert_eq!(code, 201, "{t}");
    let (code, msg) = bad(
        "GET",
        &format!("/v1/tasks/{}/events/ws", t["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("WebSocket"), "{msg}");
    d.wait_done(t["id"].as_str().unwrap(), Duration::from_secs(30));

    // The OpenAPI document comes from the code and names every route.
    let (code, doc) = d.call("GET", "/openapi.json", None);
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/tasks",
        "/v1/tasks/{id}/cancel",
        "/v1/tasks/{id}/events/stream",
        "/v1/agents/{name}",
        "/metrics",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    // Query parameters are in the query and optional; the bearer scheme and its 401 are there.
    for (p, name) in [
        ("/v1/tasks", "state"),
        ("/v1/tasks", "limit"),
        ("/v1/tasks/{id}/events", "after"),
        ("/v1/approvals", "agent"),
    ] {
        let params = doc["paths"][p]["get"]["parameters"].as_array().unwrap();
        let param = params.iter().find(|q| q["name"] == name).unwrap();
        assert_eq!(param["in"], "query", "{p} {name}: {param}");
        assert_ne!(param["required"], true, "{p} {name}: {param}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["paths"]["/v1/tasks"]["post"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/v1/tasks/{id}/cancel"]["post"]["responses"]["413"].is_object());

    let (code, m) = http(&Conn::Unix(d.socket()), "GET", "/metrics", &[], None);
    assert_eq!(code, 200);
    assert!(
        m.contains("# TYPE warren_tasks_submitted_total counter"),
        "{m}"
    );
    assert!(m.contains("warren_tasks_queued 0"), "{m}");
}

/// Read WebSocket text messages until the server closes.
fn websocket_messages(sock: &Path, path: &str) -> Vec<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: warren\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 101 "), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if r.read_exact(&mut h).is_err() {
            return out;
        }
        let op = h[0] & 0x0f;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).unwrap();
        match op {
            1 => out.push(serde_json::from_slice(&payload).unwrap()),
            8 => return out,
            _ => {}
        }
    }
}

#[test]
fn a_task_runs_through_the_daemon_and_every_view_of_it_agrees() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-task");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    let mock = MockLlm::start_responder(hello_agent).unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);

    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "task",
            "submit",
            "coder",
            "write hello.txt",
            "--follow",
            "--workspace",
        ])
        .arg(&ws)
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        o.status.success(),
        "{out}\n{err}\n{}",
        d.log.lock().unwrap()
    );
    assert!(
        out.contains("── turn 1") && out.contains("→ write_file"),
        "{out}"
    );
    assert!(out.contains("result: wrote hello.txt"), "{out}");
    let id = err
        .split("task ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    // The project itself is untouched; the change is in the task's diff.
    assert!(!ws.join("hello.txt").exists());
    let diff = stdout(&warren_at(&state, &["task", "diff", &id]));
    assert!(diff.contains("+hi from the daemon"), "{diff}");
    let r: Value = serde_json::from_str(&stdout(&warren_at(
        &state,
        &["task", "result", &id, "--json"],
    )))
    .unwrap();
    assert_eq!(r["success"], true);
    assert_eq!(r["turns"], 3);
    let s: Value = serde_json::from_str(&stdout(&warren_at(
        &state,
        &["task", "status", &id, "--json"],
    )))
    .unwrap();
    assert_eq!(s["state"], "succeeded");
    let l: Value = serde_json::from_str(&stdout(&warren_at(
        &state,
        &["task", "list", "--state", "succeeded", "--json"],
    )))
    .unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1);
    let st: Value =
        serde_json::from_str(&stdout(&warren_at(&state, &["status", "--json"]))).unwrap();
    assert_eq!(
        (st["status"].as_str(), st["running"].as_u64()),
        (Some("ok"), Some(0))
    );
    // The reviewed changes apply to the project like any kept layer.
    let o = warren_at(&state, &["apply", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt")).unwrap(),
        "hi from the daemon\n"
    );

    // Events: the JSON list, SSE resumed after an id, and the WebSocket all agree.
    let (_, all) = d.call("GET", &format!("/v1/tasks/{id}/events"), None);
    let all = all.as_array().unwrap().clone();
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in [
        "task.state",
        "agent.turn",
        "agent.tool_call",
        "agent.tool_result",
        "agent.finished",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let mid = all[all.len() / 2]["id"].as_i64().unwrap();
    let (code, sse) = http(
        &Conn::Unix(d.socket()),
        "GET",
        &format!("/v1/tasks/{id}/events/stream"),
        &[("Last-Event-ID", &mid.to_string())],
        None,
    );
    assert_eq!(code, 200);
    let ids: Vec<i64> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let expected: Vec<i64> = all
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|i| *i > mid)
        .collect();
    assert_eq!(
        ids, expected,
        "SSE resumes right after Last-Event-ID and ends with the task"
    );
    let ws_events = websocket_messages(&d.socket(), &format!("/v1/tasks/{id}/events/ws?after=0"));
    assert_eq!(ws_events.len(), all.len());
    assert_eq!(ws_events.last().unwrap()["id"], all.last().unwrap()["id"]);

    // No key in anything the daemon stored or logged.
    let db = std::fs::read(state.join("warren.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("sk-test-key-must-not-leak"));
    assert!(!d.log.lock().unwrap().contains("sk-test-key-must-not-leak"));
}

#[test]
fn cancelling_a_running_task_kills_its_cell_and_is_recorded() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-cancel");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    let marker = format!("sleep 3{}", std::process::id() % 1000);
    let m2 = marker.clone();
    let mock = MockLlm::start_responder(move |b| match tool_results(b) {
        0 => reply(vec![(
            "s1",
            "shell",
            json!({"command": format!("{m2}; echo never")}),
        )]),
        _ => reply(vec![(
            "f1",
            "finish",
            json!({"summary": "should not get here"}),
        )]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "sleep", "workspace": ws.display().to_string()})),
    );
    assert_eq!(code, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    // Wait until the command runs in the cell.
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = || {
        Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .status
            .success()
    };
    while !running() {
        assert!(Instant::now() < deadline, "{}", d.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = warren_at(
        &state,
        &[
            "task",
            "cancel",
            &id,
            "--reason",
            "changed my mind",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(v["reason"], "changed my mind");
    assert!(!running(), "the cell's command was killed");
    let (_, ev) = d.call("GET", &format!("/v1/tasks/{id}/events"), None);
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "task.cancelled")
    );
    // Cancelling again is a conflict; retrying resumes it.
    let o = warren_at(&state, &["task", "cancel", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already cancelled"), "{}", stderr(&o));
    let (code, _) = d.call("POST", &format!("/v1/tasks/{id}/retry"), None);
    assert_eq!(code, 200);
}

#[test]
fn a_full_queue_answers_429_with_a_clear_message() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-queue");
    let state = t.path().join("state");
    deploy(&state, MANIFEST);
    let mock = MockLlm::start_responder(|_| Turn::Slow {
        delay: Duration::from_secs(60),
        then: Box::new(Turn::Reply(Reply::text("late"))),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--max-running", "1", "--max-queued", "2"]);
    let submit = || {
        d.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": "coder", "goal": "wait"})),
        )
    };
    let (code, first) = submit();
    assert_eq!(code, 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d
        .call(
            "GET",
            &format!("/v1/tasks/{}", first["id"].as_str().unwrap()),
            None,
        )
        .1["state"]
        != "running"
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(submit().0, 201);
    assert_eq!(submit().0, 201);
    let (code, e) = submit();
    assert_eq!(code, 429, "{e}");
    assert_eq!(e["code"], "queue_full");
    assert!(e["message"].as_str().unwrap().contains("at most 2"), "{e}");
    let (_, m) = http(&Conn::Unix(d.socket()), "GET", "/metrics", &[], None);
    assert!(m.contains("warren_tasks_rejected_total 1"), "{m}");
}

#[test]
fn sigterm_requeues_running_tasks_and_a_restart_resumes_them() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-sigterm");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    // Turn 1 writes a file; turn 2 is slow (the daemon is stopped meanwhile); turn 3 finishes.
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "w1",
            "write_file",
            json!({"path": "a.txt", "content": "one\n"}),
        )]),
        1 => Turn::Slow {
            delay: Duration::from_millis(1500),
            then: Box::new(reply(vec![(
                "s1",
                "shell",
                json!({"command": "cat a.txt >> b.txt"}),
            )])),
        },
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let mut d = DaemonProc::start(&state, &mock, &[]);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(
            &json!({"agent": "coder", "goal": "two files", "workspace": ws.display().to_string()}),
        ),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mock.requests().iter().any(|r| tool_results(&r.body) == 1) {
        assert!(Instant::now() < deadline, "{}", d.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.terminate();
    assert!(
        status.success(),
        "graceful exit: {status:?}\n{}",
        d.log.lock().unwrap()
    );
    assert!(d.log.lock().unwrap().contains("requeued for resume"));
    let o = warren_at(&state, &["task", "status", &id, "--json"]);
    assert_eq!(o.status.code(), Some(3), "no daemon answers now");
    let db = warren_store_state(&state, &id);
    assert_eq!(db, "queued");

    let d2 = DaemonProc::start(&state, &mock, &[]);
    let done = d2.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    let writes = mock
        .requests()
        .iter()
        .filter(|r| tool_results(&r.body) == 0)
        .count();
    assert_eq!(writes, 1, "the recorded first turn was not asked again");
    let diff = stdout(&warren_at(&state, &["task", "diff", &id]));
    assert!(
        diff.contains("+one"),
        "the resumed cell saw the first life's changes: {diff}"
    );
}

/// A task's state read from the database directly (no daemon running).
fn warren_store_state(state: &Path, id: &str) -> String {
    use warren_store::Store;
    let s = warren_store::sqlite::SqliteStore::open(&state.join("warren.db")).unwrap();
    s.get_task(id).unwrap().state.as_str().to_owned()
}

#[test]
fn a_background_daemon_starts_serves_remote_clients_and_stops() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-bg");
    let state = t.path().join("state");
    let json_of = |o: &std::process::Output| -> Value {
        serde_json::from_str(&stdout(o)).unwrap_or_else(|_| panic!("{}{}", stdout(o), stderr(o)))
    };
    let o = warren_at(
        &state,
        &["daemon", "start", "--listen", "127.0.0.1:0", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let started = json_of(&o);
    assert_eq!(started["running"], true);
    // `start` returns once every listener is bound, and says where.
    let listening = started["listening"].as_str().unwrap().to_owned();
    assert!(listening.starts_with("unix:"), "{listening}");
    let again = warren_at(&state, &["daemon", "start", "--json"]);
    assert!(
        json_of(&again)["message"]
            .as_str()
            .unwrap()
            .contains("already running")
    );
    let st = json_of(&warren_at(&state, &["daemon", "status", "--json"]));
    assert_eq!(st["status"], "ok");

    // A remote client: TCP with the token.
    let addr = listening
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let url = format!("http://{addr}");
    let f = t.path().join("coder.yaml");
    std::fs::write(&f, MANIFEST).unwrap();
    let remote = |args: &[&str]| {
        Command::new(WARREN)
            .arg("--state-dir")
            .arg(&state)
            .args(["--url", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let o = remote(&["agent", "deploy", f.to_str().unwrap(), "--json"]);
    assert_eq!(json_of(&o)["version"], 1);
    let list = json_of(&remote(&["agent", "list", "--json"]));
    assert_eq!(list[0]["name"], "coder");
    let show = json_of(&remote(&["agent", "show", "coder", "--json"]));
    assert!(show["manifest"].as_str().unwrap().contains("mock-model"));
    assert_eq!(json_of(&remote(&["task", "list", "--json"])), json!([]));
    // A wrong token is refused with the daemon's message.
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args(["--url", &url, "task", "list", "--json"])
        .env("WARREN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_of(&o)["error"]["code"], "unauthorized");
    // A manifest error names the file, line and column, before anything is sent.
    let bad = t.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\ntools: [teleport]\n").unwrap();
    let o = remote(&["agent", "deploy", bad.to_str().unwrap()]);
    assert!(stderr(&o).contains("bad.yaml:2:"), "{}", stderr(&o));
    let o = remote(&["agent", "remove", "coder", "--json"]);
    assert_eq!(json_of(&o)["removed"], "coder");

    let o = warren_at(&state, &["daemon", "stop", "--json"]);
    assert_eq!(json_of(&o)["stopped"], true, "{}", stderr(&o));
    let o = warren_at(&state, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(json_of(&o)["status"], "not_running");
    assert!(!state.join("warren.sock").exists());
}

#[test]
fn a_task_past_its_timeout_fails_and_its_cell_is_killed() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("daemon-timeout");
    let state = t.path().join("state");
    deploy(&state, &MANIFEST.replace("timeout: 5m", "timeout: 2s"));
    let marker = format!("sleep 4{}", std::process::id() % 1000);
    let m2 = marker.clone();
    let mock = MockLlm::start_responder(move |_| {
        reply(vec![("s1", "shell", json!({"command": m2.clone()}))])
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let started = Instant::now();
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "forever"})),
    );
    let done = d.wait_done(task["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{done}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let alive = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        !alive.status.success(),
        "the task's command was killed with its cell"
    );
}
