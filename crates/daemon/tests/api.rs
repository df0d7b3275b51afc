//! The API over a real listener without root: the router served by [`conn::serve`] on a TCP
//! port with a bearer token, over an engine whose cells are the runtime's recording fake
//! ([`FakeCells`]) and whose model is scripted. Requests are raw HTTP/1.1 and WebSocket frames,
//! so what is on the wire is what is tested: error bodies, connection limits and timeouts,
//! streams whose client went away; and insta snapshots of the OpenAPI document and of each
//! response shape (volatile fields redacted; `CI=true` fails on a mismatch and writes nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use warren_daemon::conn::{self, ConnLimits};
use warren_llm::Provider;
use warren_protocol::api::TaskState;
use warren_runtime::engine::{Engine, Options};
use warren_runtime::fake::{FakeCells, ScriptedModel, tool_call};
use warren_store::Store;
use warren_store::sqlite::SqliteStore;
use warren_testkit::TempDir;

/// Plays the model: `write…` writes a file and finishes, `ask…` runs a shell command (which
/// needs approval under [`ASKING`]) and finishes; anything else finishes at once.
fn scripted() -> Arc<ScriptedModel> {
    ScriptedModel::new(vec![
        (
            "write",
            vec![vec![tool_call(
                "w",
                "write_file",
                json!({"path": "a.txt", "content": "hi\n"}),
            )]],
        ),
        (
            "ask",
            vec![vec![tool_call(
                "s",
                "shell",
                json!({"command": "echo approved"}),
            )]],
        ),
    ])
}

const MANIFEST: &str =
    "name: coder\ndescription: t\ntools: [shell, read_file, write_file, finish]\n";
const ASKING: &str =
    "name: asker\ndescription: t\ntools: [shell, finish]\napproval_required: [shell]\n";

/// A served API: the engine, its TCP address and token.
struct Api {
    _t: TempDir,
    addr: SocketAddr,
    token: String,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
}

impl Api {
    /// Serve within `limits`; `schedule`: run the engine's scheduling loop (otherwise tasks
    /// stay queued).
    async fn start(name: &str, limits: ConnLimits, schedule: bool) -> Api {
        // No host probe in tests (it forks a dozen children); health shows this instead.
        warren_daemon::api::health::set_host_tiers(warren_cell::check::HostTiers::new(vec![
            "process".into(),
        ]));
        let t = TempDir::new(name);
        let state = t.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&state.join("warren.db")).unwrap());
        let opts =
            Options::for_tests(&state, FakeCells::new(), scripted() as Arc<dyn Provider>).unwrap();
        let engine = Engine::new(store, opts).unwrap();
        if schedule {
            tokio::spawn(Arc::clone(&engine).run());
        }
        let token = "test-token-0123456789".to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = warren_daemon::api::router(Arc::clone(&engine), Some(token.as_str().into()));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(conn::serve(listener, app, limits, stop_rx));
        Api {
            _t: t,
            addr,
            token,
            engine,
            stop,
        }
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}\r\n", self.token)
    }

    /// One request (`Connection: close`) with the token; status and body as JSON (or a string).
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = self.raw(&request(method, path, &self.auth(), body)).await;
        (r.status, r.json())
    }

    async fn raw(&self, req: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        // A body larger than the server takes may be cut off by its early answer.
        let _ = s.write_all(req).await;
        read_response(&mut s).await
    }

    async fn deploy(&self, manifest: &str) -> Value {
        let (code, a) = self
            .call(
                "POST",
                "/v1/agents",
                Some(&json!({ "manifest": manifest }).to_string()),
            )
            .await;
        assert_eq!(code, 201, "{a}");
        a
    }

    async fn submit(&self, agent: &str, goal: &str) -> String {
        let body = json!({"agent": agent, "goal": goal}).to_string();
        let (code, t) = self.call("POST", "/v1/tasks", Some(&body)).await;
        assert_eq!(code, 201, "{t}");
        t["id"].as_str().unwrap().to_owned()
    }

    async fn wait_state(&self, id: &str, want: TaskState) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, t) = self.call("GET", &format!("/v1/tasks/{id}"), None).await;
            assert_eq!(code, 200, "{t}");
            if t["state"] == want.as_str() {
                return t;
            }
            assert!(Instant::now() < deadline, "{t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.engine.shutdown().await;
    }
}

fn request(method: &str, path: &str, headers: &str, body: Option<&str>) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n{headers}");
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// An error as the API promises it: `{code, message}` JSON and nothing else.
    fn error(&self) -> (u16, String) {
        let v = self.json();
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{}",
            self.head
        );
        let o = v.as_object().unwrap_or_else(|| panic!("not JSON: {v}"));
        assert!(
            o.len() == 2 && v["code"].is_string() && v["message"].is_string(),
            "{v}"
        );
        (self.status, v["code"].as_str().unwrap().to_owned())
    }
}

/// Read a response: its head, then `Content-Length` bytes of body, or to the end.
async fn read_response(s: &mut (impl AsyncRead + Unpin)) -> Resp {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 65536];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let r = parse(&raw);
                if let Some(n) = r
                    .header("content-length")
                    .and_then(|n| n.parse::<usize>().ok())
                    && raw.len() >= split + 4 + n
                {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Resp {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// Whether the server closes `s` (EOF or a reset) within `within`, reading and dropping
/// whatever it sends first.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_a_code_and_a_message() {
    let api = Api::start("api-errors", ConnLimits::default(), false).await;
    api.deploy(MANIFEST).await;
    let id = api.submit("coder", "x").await;
    let auth = api.auth();

    // Optional bodies past the limit: 413 JSON like every other body (they were plain text).
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(2 << 20));
    for action in ["cancel", "retry", "approve", "deny"] {
        let path = format!("/v1/tasks/{id}/{action}");
        let r = api.raw(&request("POST", &path, &auth, Some(&big))).await;
        assert_eq!(r.error(), (413, "payload_too_large".into()), "{action}");
    }
    // A declared 10 GB body is answered at once, before any of it is sent.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: warren\r\n{auth}Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let r = read_response(&mut s).await;
    assert_eq!(r.error(), (413, "payload_too_large".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The WebSocket route without an upgrade.
    let r = api
        .raw(&request(
            "GET",
            &format!("/v1/tasks/{id}/events/ws"),
            &auth,
            None,
        ))
        .await;
    assert_eq!(r.error(), (400, "invalid_request".into()));
    assert!(r.json()["message"].as_str().unwrap().contains("WebSocket"));
    // Malformed ids and bodies, unknown routes and methods, and the token.
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "GET",
            "/v1/tasks/not%20an%20id",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            &format!("/v1/tasks/{}", "a".repeat(65)),
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"agent": "coder", "goal": "x", "colour": 1}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            &format!("/v1/tasks/{id}/cancel"),
            Some(r#"{"colour": 1}"#),
            400,
            "invalid_request",
        ),
        ("GET", "/v1/tasks?limit=0", None, 400, "invalid_request"),
        (
            "GET",
            "/v1/tasks?state=sleeping",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/approvals?colour=1",
            None,
            400,
            "invalid_request",
        ),
        ("DELETE", "/v1/approvals/x", None, 400, "invalid_request"),
        ("GET", "/v1/tasks/t000000000000", None, 404, "not_found"),
        ("GET", "/v1/nothing", None, 404, "not_found"),
        ("DELETE", "/v1/tasks", None, 405, "method_not_allowed"),
        (
            "POST",
            &format!("/v1/tasks/{id}/retry"),
            None,
            409,
            "conflict",
        ),
        (
            "GET",
            &format!("/v1/tasks/{id}/approval"),
            None,
            409,
            "conflict",
        ),
        (
            "GET",
            &format!("/v1/tasks/{id}/result"),
            None,
            409,
            "conflict",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = api.raw(&request(method, path, &auth, *body)).await;
        assert_eq!(r.error(), (*status, (*code).to_owned()), "{method} {path}");
    }
    let r = api.raw(&request("GET", "/health", "", None)).await;
    assert_eq!(r.error(), (401, "unauthorized".into()));
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    let wrong = "Authorization: Bearer test-token-0123456788\r\n";
    let r = api.raw(&request("GET", "/health", wrong, None)).await;
    assert_eq!(r.error(), (401, "unauthorized".into()));
    // The scheme is case-insensitive; the token is not.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let h = format!("Authorization: {scheme} {}\r\n", api.token);
        let r = api.raw(&request("GET", "/health", &h, None)).await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.head);
    }
    let h = format!("Authorization: Bearer {}\r\n", api.token.to_uppercase());
    let r = api.raw(&request("GET", "/health", &h, None)).await;
    assert_eq!(r.status, 401);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_and_connections_capped() {
    let limits = ConnLimits {
        header_read: Duration::from_millis(300),
        idle: Duration::from_millis(800),
        max_connections: 64,
    };
    let api = Api::start("api-slowloris", limits, false).await;
    // Headers trickled and never finished: closed after the header read timeout.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: warren\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Trickling does not extend it.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut || closed_within(&mut s, Duration::from_secs(1)).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A keep-alive connection left idle after its answer: closed too.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let req = format!("GET /health HTTP/1.1\r\nHost: warren\r\n{}\r\n", api.auth());
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    // A body that stalls after its head: closed after the idle timeout.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let req = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: warren\r\n{}Content-Length: 100\r\n\r\n{{\"agent\"",
        api.auth()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    api.stop().await;

    // The cap: past it a connection gets a JSON 503 at once; a freed slot serves again.
    let limits = ConnLimits {
        header_read: Duration::from_secs(30),
        idle: Duration::from_secs(30),
        max_connections: 3,
    };
    let api = Api::start("api-cap", limits, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(api.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = api.raw(&request("GET", "/health", &api.auth(), None)).await;
    assert_eq!(r.error(), (503, "unavailable".into()));
    assert!(started.elapsed() < Duration::from_secs(2));
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = api.raw(&request("GET", "/health", &api.auth(), None)).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.stop().await;
}

/// Open a WebSocket to `path`; returns the stream after the 101. A 503 (no free connection
/// slot) is tried again for up to 2 s.
async fn websocket(api: &Api, path: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match try_websocket(api, path).await {
            Ok(s) => return s,
            Err(head) if head.starts_with("HTTP/1.1 503") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(head) => panic!("{head}"),
        }
    }
}

async fn try_websocket(api: &Api, path: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: warren\r\n{}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        api.auth()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 101") {
        Ok(s)
    } else {
        Err(head)
    }
}

/// One frame from the server (unmasked): opcode and payload.
async fn frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .expect("a frame within 5 s")
        .ok()?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await.ok()?;
        len = u64::from_be_bytes(b);
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_end_when_the_client_goes_away_and_close_frames_are_answered() {
    // One connection at a time: a stream the server did not end would hold the only slot.
    // Without a scheduling loop the task stays queued, so its stream never ends by itself.
    let limits = ConnLimits {
        max_connections: 1,
        ..ConnLimits::default()
    };
    let api = Api::start("api-ws", limits, false).await;
    // (Set up through the engine: the only connection slot is the WebSocket's.)
    let deploy = warren_runtime::action::Action::Deploy {
        origin: "t".into(),
        manifest: MANIFEST.into(),
    };
    let op = warren_runtime::action::Caller::operator("test");
    api.engine.handle(&op, deploy.into()).await.unwrap();
    let submit = warren_runtime::action::Action::Submit(warren_protocol::api::SubmitTask {
        agent: "coder".into(),
        goal: "x".into(),
        ..Default::default()
    });
    let id = match api.engine.handle(&op, submit.into()).await.unwrap() {
        warren_runtime::action::Answer::Task(t) => t.id,
        other => panic!("{other:?}"),
    };
    let path = format!("/v1/tasks/{id}/events/ws");
    for _ in 0..3 {
        let mut ws = websocket(&api, &path).await;
        let (op, first) = frame(&mut ws).await.unwrap();
        assert_eq!(op, 1);
        let ev: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(ev["kind"], "task.state", "{ev}");
        // The client goes away without a word: the server must notice (it has nothing to send)
        // and free the slot, or the next WebSocket gets a 503.
        drop(ws);
    }
    // A close frame is answered with one, then the server closes.
    let mut ws = websocket(&api, &path).await;
    frame(&mut ws).await.unwrap();
    let code = 1000u16.to_be_bytes();
    let mask = [1u8, 2, 3, 4];
    let masked = [code[0] ^ mask[0], code[1] ^ mask[1]];
    let mut close = vec![0x88, 0x80 | 2];
    close.extend_from_slice(&mask);
    close.extend_from_slice(&masked);
    ws.write_all(&close).await.unwrap();
    let (op, payload) = frame(&mut ws).await.expect("a close frame back");
    assert_eq!(op, 8, "{payload:?}");
    assert_eq!(payload.get(..2), Some(&code[..]));
    assert!(closed_within(&mut ws, Duration::from_secs(3)).await);
    drop(ws);
    // And the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = api.raw(&request("GET", "/health", &api.auth(), None)).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.head);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.stop().await;
}

/// Replace volatile values (ids, times, durations) so a snapshot holds only the shape.
fn redact(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if keys.contains(&k.as_str()) && !x.is_null() {
                    *x = Value::String(format!("[{k}]"));
                } else {
                    redact(x, keys);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, keys)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_each_response_shape() {
    let api = Api::start("api-shapes", ConnLimits::default(), true).await;

    let mut agent = api.deploy(MANIFEST).await;
    redact(&mut agent, &["created_ms"]);
    insta::assert_json_snapshot!("agent", agent);

    let id = api.submit("coder", "write a file").await;
    api.wait_state(&id, TaskState::Succeeded).await;
    let (_, mut task) = api.call("GET", &format!("/v1/tasks/{id}"), None).await;
    redact(&mut task, &["id", "created_ms", "updated_ms"]);
    insta::assert_json_snapshot!("task", task);

    let (code, events) = api
        .call("GET", &format!("/v1/tasks/{id}/events"), None)
        .await;
    assert_eq!(code, 200);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    insta::assert_json_snapshot!("event_kinds", kinds);
    let mut first = events[0].clone();
    redact(&mut first, &["id", "task", "at_ms"]);
    insta::assert_json_snapshot!("event", first);

    let (code, result) = api
        .call("GET", &format!("/v1/tasks/{id}/result"), None)
        .await;
    assert_eq!(code, 200, "{result}");
    insta::assert_json_snapshot!("result", result);

    let (code, error) = api.call("GET", "/v1/tasks/t000000000000", None).await;
    assert_eq!(code, 404);
    insta::assert_json_snapshot!("error", error);

    api.deploy(ASKING).await;
    let asking = api.submit("asker", "ask first").await;
    api.wait_state(&asking, TaskState::AwaitingApproval).await;
    let (code, approval) = api
        .call("GET", &format!("/v1/tasks/{asking}/approval"), None)
        .await;
    assert_eq!(code, 200, "{approval}");
    insta::assert_json_snapshot!("approval", approval);
    let (code, _) = api
        .call("POST", &format!("/v1/tasks/{asking}/approve"), None)
        .await;
    assert_eq!(code, 200);
    api.wait_state(&asking, TaskState::Succeeded).await;

    // The task is recorded as succeeded a moment before it leaves the running set.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut health = loop {
        let (code, health) = api.call("GET", "/health", None).await;
        assert_eq!(code, 200);
        if health["running"] == 0 || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    redact(&mut health, &["uptime_s", "version"]);
    insta::assert_json_snapshot!("health", health);
    api.stop().await;
}

#[test]
fn snapshot_of_the_openapi_document() {
    let mut doc: Value = serde_json::from_str(&warren_daemon::api::openapi_json()).unwrap();
    // The crate's version; everything else is the API.
    doc["info"]["version"] = json!("[version]");
    insta::assert_json_snapshot!("openapi", doc);
}
