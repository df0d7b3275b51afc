//! A real local HTTP mock LLM server for tests.
//!
//! [`MockLlm::start`] binds `127.0.0.1:0` and serves two wire formats from a background thread
//! with its own tokio runtime, so it works from sync and async tests alike:
//!
//! - OpenAI Chat Completions at `POST /v1/chat/completions`;
//! - Anthropic Messages at `POST /v1/messages`.
//!
//! Each request to either endpoint consumes the next [`Turn`] of one shared script (a single
//! queue across both endpoints). A turn is either a normal [`Reply`] — rendered as a JSON body
//! or, when the request says `"stream": true`, as server-sent events split into many small
//! deltas — or an injected fault: an error status, a delay, a stalled or truncated stream,
//! malformed JSON, a 401. Every request received (any path) is recorded *before* the response is
//! chosen; see [`MockLlm::requests`].
//!
//! The HTTP/1.1 server is a small hand-written one on `tokio::net` rather than a framework, so
//! faults are byte-exact: a stream can end without its terminating chunk, a body can stop short
//! of its `content-length`, and a connection can close with no response at all. Every response
//! carries `connection: close` and the connection is closed after it. Streams use chunked
//! transfer encoding, one chunk per event, as the real APIs do.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A running mock LLM server. Dropping it shuts the server down (closing any open connections)
/// and joins its thread.
pub struct MockLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One request the server received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recorded {
    /// The request target as sent, including any query string (e.g. `/v1/messages?beta=true`).
    pub path: String,
    /// Headers in the order received, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Null` if it was empty or not JSON.
    pub body: Value,
}

impl Recorded {
    /// The value of the first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer; each request to an LLM endpoint consumes one.
#[derive(Clone, Debug)]
pub enum Turn {
    /// A normal assistant reply.
    Reply(Reply),
    /// Respond with this HTTP status and a JSON error body in the provider's error shape;
    /// `retry_after` adds a `Retry-After: <secs>` header.
    Status {
        /// The HTTP status code.
        code: u16,
        /// Seconds for the `Retry-After` header, if any.
        retry_after: Option<u64>,
    },
    /// Sleep this long before answering with `then` (the pair takes one turn slot).
    Slow {
        /// How long to wait before answering.
        delay: Duration,
        /// The answer.
        then: Box<Turn>,
    },
    /// Streaming: send the first half of the reply's events, then send nothing for `stall`,
    /// then close (without the terminating chunk). Non-streaming: sleep `stall`, then close
    /// without any response.
    Stall {
        /// The reply whose first half is sent.
        reply: Reply,
        /// How long to hold the connection silent.
        stall: Duration,
    },
    /// Respond 200 with a body that is not valid JSON (non-streaming), or a stream whose second
    /// event's data is not valid JSON (streaming; the stream is otherwise well formed).
    MalformedJson,
    /// Streaming: send the first half of the events, then close the connection without `[DONE]`
    /// / `message_stop` and without the terminating chunk. Non-streaming: announce the full
    /// `content-length` but send only the first half of the JSON body, then close.
    Truncated(Reply),
    /// Answer 401 in the provider's error shape (`authentication_error`). The turn is consumed.
    Unauthorized,
}

/// A normal assistant reply.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// The assistant text; empty for none.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Reported prompt / input tokens.
    pub input_tokens: u64,
    /// Reported completion / output tokens.
    pub output_tokens: u64,
    /// Reported cached prompt tokens (OpenAI `cached_tokens`, Anthropic
    /// `cache_read_input_tokens`).
    pub cached_tokens: u64,
}

impl Reply {
    /// A text-only reply with no usage.
    pub fn text(text: impl Into<String>) -> Self {
        Reply {
            text: text.into(),
            ..Default::default()
        }
    }
}

/// One tool call in a [`Reply`].
#[derive(Clone, Debug)]
pub struct ToolCall {
    /// The call id (e.g. `call_1` / `toolu_1`).
    pub id: String,
    /// The tool name.
    pub name: String,
    /// Raw JSON text of the arguments; may be deliberately invalid JSON.
    pub arguments: String,
}

impl ToolCall {
    /// A tool call from its parts.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

/// Chooses the answer from the request body (see [`MockLlm::start_responder`]).
pub type Responder = Arc<dyn Fn(&Value) -> Turn + Send + Sync>;

struct State {
    turns: VecDeque<Turn>,
    responder: Option<Responder>,
    requests: Vec<Recorded>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl MockLlm {
    /// Start on 127.0.0.1:0 in a background thread with its own tokio runtime.
    pub fn start(script: Vec<Turn>) -> io::Result<MockLlm> {
        Self::start_with(script, None)
    }

    /// Start a server that answers each request by calling `responder` with the request body,
    /// instead of from a queue: the answer can depend on the conversation so far (e.g. the
    /// number of tool results in it), so a client that restarts and asks again gets the same
    /// answer for the same state. Requests are still recorded.
    pub fn start_responder(
        responder: impl Fn(&Value) -> Turn + Send + Sync + 'static,
    ) -> io::Result<MockLlm> {
        Self::start_with(Vec::new(), Some(Arc::new(responder)))
    }

    fn start_with(script: Vec<Turn>, responder: Option<Responder>) -> io::Result<MockLlm> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let state = Arc::new(Mutex::new(State {
            turns: script.into(),
            responder,
            requests: Vec::new(),
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("mockllm".into())
            .spawn(move || {
                rt.block_on(serve(listener, st, rx));
                // Dropping the runtime cancels in-flight connection tasks, closing their sockets.
                drop(rt);
            })?;
        Ok(MockLlm {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash). OpenAI clients use
    /// `base_url + "/v1/chat/completions"`; Anthropic clients use `base_url + "/v1/messages"`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Append a turn to the script at runtime.
    pub fn push(&self, turn: Turn) {
        lock(&self.state).turns.push_back(turn);
    }

    /// How many turns remain unconsumed.
    pub fn remaining(&self) -> usize {
        lock(&self.state).turns.len()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(handle_conn(sock, Arc::clone(&state)));
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 plumbing
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

const MAX_HEAD: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

async fn read_line(r: &mut BufReader<TcpStream>, budget: &mut usize) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n > *budget {
        return Err(bad("request head too large"));
    }
    *budget -= n;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Request> {
    let mut budget = MAX_HEAD;
    let mut line = read_line(r, &mut budget).await?;
    // Tolerate stray blank lines before the request line (RFC 9112 §2.2).
    while line.is_empty() {
        line = read_line(r, &mut budget).await?;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let h = read_line(r, &mut budget).await?;
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        r.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let size_line = read_line(r, &mut budget).await?;
            let hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(r, &mut budget).await?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(bad("request body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().map_err(|_| bad("bad content-length"))?;
        if n > MAX_BODY {
            return Err(bad("request body too large"));
        }
        body.resize(n, 0);
        r.read_exact(&mut body).await?;
    }
    Ok(Request {
        method,
        target,
        headers,
        body,
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Mock Status",
    }
}

fn head(code: u16, content_type: &str, extra: &[(&str, String)]) -> String {
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: {content_type}\r\nconnection: close\r\n",
        reason(code)
    );
    for (n, v) in extra {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h
}

/// A complete response with a `content-length` body.
async fn write_body(
    w: &mut TcpStream,
    code: u16,
    extra: &[(&str, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = head(code, "application/json", extra);
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes).await?;
    w.flush().await?;
    w.shutdown().await
}

async fn write_sse_head(w: &mut TcpStream) -> io::Result<()> {
    let mut out = head(
        200,
        "text/event-stream",
        &[("cache-control", "no-cache".to_owned())],
    );
    out.push_str("transfer-encoding: chunked\r\n\r\n");
    w.write_all(out.as_bytes()).await?;
    w.flush().await
}

/// Write each event as one chunk.
async fn write_events(w: &mut TcpStream, events: &[String]) -> io::Result<()> {
    for e in events {
        let chunk = format!("{:x}\r\n{e}\r\n", e.len());
        w.write_all(chunk.as_bytes()).await?;
        w.flush().await?;
    }
    Ok(())
}

/// The terminating chunk, then close.
async fn finish_sse(w: &mut TcpStream) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await?;
    w.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    OpenAi,
    Anthropic,
}

async fn handle_conn(sock: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(sock);
    let Ok(req) = read_request(&mut reader).await else {
        return;
    };
    let _ = respond(reader.get_mut(), &state, req).await;
}

async fn respond(w: &mut TcpStream, state: &Mutex<State>, req: Request) -> io::Result<()> {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let route = req.target.split('?').next().unwrap_or_default();
    let provider = match (req.method.as_str(), route) {
        ("POST", "/v1/chat/completions") => Some(Provider::OpenAi),
        ("POST", "/v1/messages") => Some(Provider::Anthropic),
        _ => None,
    };
    let turn = {
        let mut st = lock(state);
        st.requests.push(Recorded {
            path: req.target.clone(),
            headers: req.headers,
            body: body.clone(),
        });
        if provider.is_some() {
            match &st.responder {
                Some(f) => Some(f(&body)),
                None => st.turns.pop_front(),
            }
        } else {
            None
        }
    };
    let Some(p) = provider else {
        let msg = format!("mock: no route for {} {}", req.method, req.target);
        let b = json!({"error": {"message": msg, "type": "invalid_request_error", "code": null}});
        return write_body(w, 404, &[], b.to_string().as_bytes()).await;
    };
    let Some(mut turn) = turn else {
        return write_error(w, p, 500, None, "mock script exhausted").await;
    };
    let model = body["model"].as_str().unwrap_or("mock").to_owned();
    let streaming = body["stream"].as_bool() == Some(true);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let events = |r: &Reply| match p {
        Provider::OpenAi => openai_events(&model, r, include_usage),
        Provider::Anthropic => anthropic_events(&model, r),
    };
    let full = |r: &Reply| match p {
        Provider::OpenAi => openai_body(&model, r),
        Provider::Anthropic => anthropic_body(&model, r),
    };
    loop {
        match turn {
            Turn::Slow { delay, then } => {
                tokio::time::sleep(delay).await;
                turn = *then;
            }
            Turn::Reply(r) => {
                if streaming {
                    write_sse_head(w).await?;
                    write_events(w, &events(&r)).await?;
                    return finish_sse(w).await;
                }
                return write_body(w, 200, &[], full(&r).to_string().as_bytes()).await;
            }
            Turn::Status { code, retry_after } => {
                let msg = format!("mock error: HTTP {code}");
                return write_error(w, p, code, retry_after, &msg).await;
            }
            Turn::Unauthorized => {
                return write_error(w, p, 401, None, "mock: invalid API key").await;
            }
            Turn::Stall { reply, stall } => {
                if streaming {
                    let evs = events(&reply);
                    write_sse_head(w).await?;
                    write_events(w, &evs[..evs.len() / 2]).await?;
                }
                tokio::time::sleep(stall).await;
                // Close without finishing: dropping the socket sends FIN.
                return Ok(());
            }
            Turn::Truncated(r) => {
                if streaming {
                    let evs = events(&r);
                    write_sse_head(w).await?;
                    write_events(w, &evs[..evs.len() / 2]).await?;
                    w.shutdown().await?;
                    return Ok(());
                }
                let b = full(&r).to_string().into_bytes();
                let mut out = head(200, "application/json", &[]);
                out.push_str(&format!("content-length: {}\r\n\r\n", b.len()));
                w.write_all(out.as_bytes()).await?;
                w.write_all(&b[..b.len() / 2]).await?;
                w.flush().await?;
                w.shutdown().await?;
                return Ok(());
            }
            Turn::MalformedJson => {
                if !streaming {
                    let b = match p {
                        Provider::OpenAi => r#"{"id":"chatcmpl-mock","choices":[{"index":0,"mess"#,
                        Provider::Anthropic => r#"{"id":"msg_mock","type":"message","content":[{"#,
                    };
                    return write_body(w, 200, &[], b.as_bytes()).await;
                }
                let evs = events(&Reply::text("x"));
                let (bad_event, tail) = match p {
                    Provider::OpenAi => (
                        "data: {\"id\":\"chatcmpl-mock\",\"choices\":[{\"delta\":{\"content\":\"oops\n\n"
                            .to_owned(),
                        "data: [DONE]\n\n".to_owned(),
                    ),
                    Provider::Anthropic => (
                        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\n\n"
                            .to_owned(),
                        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
                    ),
                };
                write_sse_head(w).await?;
                write_events(w, &[evs[0].clone(), bad_event, tail]).await?;
                return finish_sse(w).await;
            }
        }
    }
}

fn error_type(p: Provider, code: u16) -> &'static str {
    match (p, code) {
        (_, 429) => "rate_limit_error",
        (_, 401 | 403) => "authentication_error",
        (Provider::Anthropic, 529) => "overloaded_error",
        (Provider::OpenAi, 500..) => "server_error",
        (Provider::Anthropic, 500..) => "api_error",
        _ => "invalid_request_error",
    }
}

fn error_body(p: Provider, code: u16, msg: &str) -> Value {
    let t = error_type(p, code);
    match p {
        Provider::OpenAi => json!({"error": {"message": msg, "type": t, "code": null}}),
        Provider::Anthropic => json!({"type": "error", "error": {"type": t, "message": msg}}),
    }
}

async fn write_error(
    w: &mut TcpStream,
    p: Provider,
    code: u16,
    retry_after: Option<u64>,
    msg: &str,
) -> io::Result<()> {
    let extra: Vec<(&str, String)> = retry_after
        .map(|s| ("retry-after", s.to_string()))
        .into_iter()
        .collect();
    let b = error_body(p, code, msg).to_string();
    write_body(w, code, &extra, b.as_bytes()).await
}

// ---------------------------------------------------------------------------------------------
// Wire formats
// ---------------------------------------------------------------------------------------------

/// Split into pieces of 3, 4, 5, 3, 4, 5… characters (never splitting a UTF-8 sequence).
fn split_pieces(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < chars.len() {
        let n = 3 + k % 3;
        let end = (i + n).min(chars.len());
        out.push(chars[i..end].iter().collect());
        i = end;
        k += 1;
    }
    out
}

fn openai_usage(r: &Reply) -> Value {
    json!({
        "prompt_tokens": r.input_tokens,
        "completion_tokens": r.output_tokens,
        "total_tokens": r.input_tokens + r.output_tokens,
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
    })
}

fn finish_reason(r: &Reply) -> &'static str {
    if r.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

fn openai_body(model: &str, r: &Reply) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if r.text.is_empty() { Value::Null } else { Value::String(r.text.clone()) },
    });
    if !r.tool_calls.is_empty() {
        message["tool_calls"] = r
            .tool_calls
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "type": "function",
                    "function": {"name": t.name, "arguments": t.arguments},
                })
            })
            .collect();
    }
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(r)}],
        "usage": openai_usage(r),
    })
}

fn openai_events(model: &str, r: &Reply, include_usage: bool) -> Vec<String> {
    let chunk = |choices: Value| {
        let mut v = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": choices,
        });
        if include_usage {
            // As the real API does when usage is requested: null on every chunk but the last.
            v["usage"] = Value::Null;
        }
        v
    };
    let delta = |d: Value| chunk(json!([{"index": 0, "delta": d, "finish_reason": null}]));
    let mut evs = vec![delta(json!({"role": "assistant", "content": ""}))];
    for piece in split_pieces(&r.text) {
        evs.push(delta(json!({"content": piece})));
    }
    // Per call: its header chunk, then its argument fragments; calls are interleaved round-robin.
    let mut queues: Vec<VecDeque<Value>> = r
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut q = VecDeque::new();
            q.push_back(delta(json!({"tool_calls": [{
                "index": i, "id": t.id, "type": "function",
                "function": {"name": t.name, "arguments": ""},
            }]})));
            for frag in split_pieces(&t.arguments) {
                q.push_back(delta(json!({"tool_calls": [{
                    "index": i, "function": {"arguments": frag},
                }]})));
            }
            q
        })
        .collect();
    while queues.iter().any(|q| !q.is_empty()) {
        for q in &mut queues {
            if let Some(v) = q.pop_front() {
                evs.push(v);
            }
        }
    }
    evs.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish_reason(r)}]),
    ));
    if include_usage {
        let mut u = chunk(json!([]));
        u["usage"] = openai_usage(r);
        evs.push(u);
    }
    let mut out: Vec<String> = evs.iter().map(|v| format!("data: {v}\n\n")).collect();
    out.push("data: [DONE]\n\n".to_owned());
    out
}

fn stop_reason(r: &Reply) -> &'static str {
    if r.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

fn anthropic_body(model: &str, r: &Reply) -> Value {
    let mut content = Vec::new();
    if !r.text.is_empty() {
        content.push(json!({"type": "text", "text": r.text}));
    }
    for t in &r.tool_calls {
        content.push(json!({
            "type": "tool_use", "id": t.id, "name": t.name, "input": tool_input(&t.arguments),
        }));
    }
    json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(r),
        "stop_sequence": null,
        "usage": {
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cache_read_input_tokens": r.cached_tokens,
            "cache_creation_input_tokens": 0,
        },
    })
}

fn anthropic_events(model: &str, r: &Reply) -> Vec<String> {
    let ev = |v: Value| {
        let t = v["type"].as_str().unwrap_or_default().to_owned();
        format!("event: {t}\ndata: {v}\n\n")
    };
    let mut content = Vec::new();
    let mut k = 0usize;
    if !r.text.is_empty() {
        content.push(ev(json!({
            "type": "content_block_start", "index": k,
            "content_block": {"type": "text", "text": ""},
        })));
        for piece in split_pieces(&r.text) {
            content.push(ev(json!({
                "type": "content_block_delta", "index": k,
                "delta": {"type": "text_delta", "text": piece},
            })));
        }
        content.push(ev(json!({"type": "content_block_stop", "index": k})));
        k += 1;
    }
    for t in &r.tool_calls {
        content.push(ev(json!({
            "type": "content_block_start", "index": k,
            "content_block": {"type": "tool_use", "id": t.id, "name": t.name, "input": {}},
        })));
        for frag in split_pieces(&t.arguments) {
            content.push(ev(json!({
                "type": "content_block_delta", "index": k,
                "delta": {"type": "input_json_delta", "partial_json": frag},
            })));
        }
        content.push(ev(json!({"type": "content_block_stop", "index": k})));
        k += 1;
    }
    content.insert(content.len() / 2, ev(json!({"type": "ping"})));
    let mut out = vec![ev(json!({
        "type": "message_start",
        "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {
                "input_tokens": r.input_tokens,
                "output_tokens": 1,
                "cache_read_input_tokens": r.cached_tokens,
                "cache_creation_input_tokens": 0,
            },
        },
    }))];
    out.extend(content);
    out.push(ev(json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(r), "stop_sequence": null},
        "usage": {"output_tokens": r.output_tokens},
    })));
    out.push(ev(json!({"type": "message_stop"})));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// A response as seen by the minimal test client.
    #[derive(Debug)]
    struct Resp {
        /// 0 when the server closed without a response.
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Whether the body was framed completely (terminating chunk / full content-length).
        complete: bool,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    fn post(m: &MockLlm, path: &str, body: &Value) -> Resp {
        post_with(m, path, body, &[])
    }

    fn post_with(m: &MockLlm, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut s = std::net::TcpStream::connect(m.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let b = body.to_string();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            m.addr(),
            b.len()
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&b);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_response(&raw)
    }

    fn parse_response(raw: &[u8]) -> Resp {
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(raw.is_empty(), "partial head: {raw:?}");
            return Resp {
                status: 0,
                headers: vec![],
                body: vec![],
                complete: false,
            };
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let rest = &raw[split + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (body, complete) = if get("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            let mut i = 0;
            let mut complete = false;
            while let Some(nl) = rest[i..].windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[i..i + nl]).unwrap(), 16)
                        .unwrap();
                i += nl + 2;
                if size == 0 {
                    complete = true;
                    break;
                }
                if rest.len() < i + size + 2 {
                    body.extend_from_slice(&rest[i.min(rest.len())..]);
                    break;
                }
                body.extend_from_slice(&rest[i..i + size]);
                i += size + 2;
            }
            (body, complete)
        } else if let Some(cl) = get("content-length") {
            (rest.to_vec(), rest.len() == cl.parse::<usize>().unwrap())
        } else {
            (rest.to_vec(), true)
        };
        Resp {
            status,
            headers,
            body,
            complete,
        }
    }

    /// SSE events as (event name, data).
    fn sse(body: &[u8]) -> Vec<(Option<String>, String)> {
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = None;
                let mut data = String::new();
                for l in e.lines() {
                    if let Some(v) = l.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                (name, data)
            })
            .collect()
    }

    const OAI: &str = "/v1/chat/completions";
    const ANT: &str = "/v1/messages";

    fn two_calls() -> Reply {
        Reply {
            text: "Let me look at both files for you.".into(),
            tool_calls: vec![
                ToolCall::new(
                    "call_a",
                    "read_file",
                    r#"{"path":"src/main.rs","limit":100}"#,
                ),
                ToolCall::new(
                    "call_b",
                    "list_dir",
                    r#"{"path":"crates/llm/src","deep":true}"#,
                ),
            ],
            input_tokens: 120,
            output_tokens: 34,
            cached_tokens: 64,
        }
    }

    #[test]
    fn openai_nonstreaming_two_tool_calls() {
        let m = MockLlm::start(vec![Turn::Reply(two_calls())]).unwrap();
        let r = post(
            &m,
            OAI,
            &json!({"model": "gpt-x", "messages": [], "stream": false}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["id"], "chatcmpl-mock");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-x");
        let c = &v["choices"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(
            c["message"]["content"],
            "Let me look at both files for you."
        );
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "read_file");
        assert_eq!(
            calls[0]["function"]["arguments"],
            r#"{"path":"src/main.rs","limit":100}"#
        );
        assert_eq!(calls[1]["function"]["name"], "list_dir");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 120, "completion_tokens": 34, "total_tokens": 154,
                   "prompt_tokens_details": {"cached_tokens": 64}})
        );
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn openai_nonstreaming_text_only_omits_tool_calls() {
        let m = MockLlm::start(vec![
            Turn::Reply(Reply::text("hi")),
            Turn::Reply(Reply {
                tool_calls: vec![ToolCall::new("c", "t", "{}")],
                ..Default::default()
            }),
        ])
        .unwrap();
        let v = post(&m, OAI, &json!({"model": "m", "messages": []})).json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
        let v = post(&m, OAI, &json!({"model": "m", "messages": []})).json();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn openai_streaming_reassembles() {
        let reply = two_calls();
        let m = MockLlm::start(vec![Turn::Reply(reply.clone())]).unwrap();
        let r = post(
            &m,
            OAI,
            &json!({"model": "gpt-x", "messages": [], "stream": true,
                    "stream_options": {"include_usage": true}}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(r.complete);
        let evs = sse(&r.body);
        assert!(evs.iter().all(|(n, _)| n.is_none()));
        assert_eq!(evs.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> = evs[..evs.len() - 1]
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let mut text = String::new();
        let mut text_chunks = 0;
        let mut args = [String::new(), String::new()];
        let mut ids = [None, None];
        let mut order = Vec::new();
        let mut finish = None;
        let mut usage = None;
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-x");
            let choices = c["choices"].as_array().unwrap();
            if choices.is_empty() {
                usage = Some(c["usage"].clone());
                continue;
            }
            let d = &choices[0]["delta"];
            if let Some(s) = d["content"].as_str() {
                if !s.is_empty() {
                    text_chunks += 1;
                }
                text.push_str(s);
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    ids[i] = Some(id.to_owned());
                    assert_eq!(tc["type"], "function");
                }
                let frag = tc["function"]["arguments"].as_str().unwrap();
                if !frag.is_empty() {
                    order.push(i);
                }
                args[i].push_str(frag);
            }
            if let Some(f) = choices[0]["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
        assert_eq!(text, reply.text);
        assert!(text_chunks > 3, "text should come in several chunks");
        assert_eq!(args[0], reply.tool_calls[0].arguments);
        assert_eq!(args[1], reply.tool_calls[1].arguments);
        assert_eq!(ids, [Some("call_a".to_owned()), Some("call_b".to_owned())]);
        assert_eq!(&order[..4], &[0, 1, 0, 1], "fragments are interleaved");
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        let usage = usage.expect("usage chunk");
        assert_eq!(usage["prompt_tokens"], 120);
        assert_eq!(usage["total_tokens"], 154);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 64);
        // The usage chunk is the last before [DONE].
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    }

    #[test]
    fn openai_streaming_without_usage_option() {
        let m = MockLlm::start(vec![Turn::Reply(Reply::text("hello world"))]).unwrap();
        let r = post(
            &m,
            OAI,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        let evs = sse(&r.body);
        assert_eq!(evs.last().unwrap().1, "[DONE]");
        for (_, d) in &evs[..evs.len() - 1] {
            let v: Value = serde_json::from_str(d).unwrap();
            assert!(v.get("usage").is_none());
            assert_eq!(v["choices"].as_array().unwrap().len(), 1);
        }
        let last: Value = serde_json::from_str(&evs[evs.len() - 2].1).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["choices"][0]["delta"], json!({}));
    }

    #[test]
    fn anthropic_nonstreaming_shape() {
        let mut reply = two_calls();
        reply.tool_calls[1].arguments = "{not json".into();
        let m = MockLlm::start(vec![Turn::Reply(reply)]).unwrap();
        let v = post(
            &m,
            ANT,
            &json!({"model": "claude-x", "max_tokens": 100, "messages": []}),
        )
        .json();
        assert_eq!(v["id"], "msg_mock");
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["stop_sequence"], Value::Null);
        let c = v["content"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[0],
            json!({"type": "text", "text": "Let me look at both files for you."})
        );
        assert_eq!(c[1]["type"], "tool_use");
        assert_eq!(c[1]["id"], "call_a");
        assert_eq!(c[1]["input"], json!({"path": "src/main.rs", "limit": 100}));
        assert_eq!(c[2]["input"], "{not json");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 120, "output_tokens": 34,
                   "cache_read_input_tokens": 64, "cache_creation_input_tokens": 0})
        );
    }

    #[test]
    fn anthropic_streaming_order_and_reassembly() {
        let reply = two_calls();
        let m = MockLlm::start(vec![Turn::Reply(reply.clone())]).unwrap();
        let r = post(
            &m,
            ANT,
            &json!({"model": "claude-x", "max_tokens": 100, "messages": [], "stream": true}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(r.complete);
        let evs: Vec<(String, Value)> = sse(&r.body)
            .into_iter()
            .map(|(n, d)| {
                let v: Value = serde_json::from_str(&d).unwrap();
                let n = n.unwrap();
                assert_eq!(v["type"], n.as_str(), "event name matches data type");
                (n, v)
            })
            .collect();
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "message_start");
        assert_eq!(names[names.len() - 2], "message_delta");
        assert_eq!(names[names.len() - 1], "message_stop");
        assert_eq!(names.iter().filter(|n| **n == "ping").count(), 1);
        let start = &evs[0].1["message"];
        assert_eq!(start["model"], "claude-x");
        assert_eq!(start["usage"]["input_tokens"], 120);
        assert_eq!(start["usage"]["cache_read_input_tokens"], 64);
        assert_eq!(start["content"], json!([]));

        // Walk blocks: start → deltas → stop, indices ascending.
        let mut blocks: Vec<(Value, String)> = Vec::new();
        let mut open: Option<u64> = None;
        for (n, v) in &evs[1..evs.len() - 2] {
            match n.as_str() {
                "ping" => {}
                "content_block_start" => {
                    assert!(open.is_none());
                    let i = v["index"].as_u64().unwrap();
                    assert_eq!(i as usize, blocks.len());
                    open = Some(i);
                    blocks.push((v["content_block"].clone(), String::new()));
                }
                "content_block_delta" => {
                    assert_eq!(v["index"].as_u64(), open);
                    let d = &v["delta"];
                    let piece = match d["type"].as_str().unwrap() {
                        "text_delta" => d["text"].as_str().unwrap(),
                        "input_json_delta" => d["partial_json"].as_str().unwrap(),
                        t => panic!("delta type {t}"),
                    };
                    blocks.last_mut().unwrap().1.push_str(piece);
                }
                "content_block_stop" => {
                    assert_eq!(v["index"].as_u64(), open.take());
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert!(open.is_none());
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].0, json!({"type": "text", "text": ""}));
        assert_eq!(blocks[0].1, reply.text);
        for (k, call) in reply.tool_calls.iter().enumerate() {
            let (start, json_text) = &blocks[k + 1];
            assert_eq!(start["type"], "tool_use");
            assert_eq!(start["id"], call.id.as_str());
            assert_eq!(start["name"], call.name.as_str());
            assert_eq!(start["input"], json!({}));
            assert_eq!(json_text, &call.arguments);
        }
        let md = &evs[evs.len() - 2].1;
        assert_eq!(md["delta"]["stop_reason"], "tool_use");
        assert_eq!(md["usage"]["output_tokens"], 34);
    }

    #[test]
    fn status_429_with_retry_after() {
        let m = MockLlm::start(vec![
            Turn::Status {
                code: 429,
                retry_after: Some(2),
            },
            Turn::Status {
                code: 429,
                retry_after: Some(2),
            },
            Turn::Status {
                code: 529,
                retry_after: None,
            },
            Turn::Status {
                code: 503,
                retry_after: None,
            },
        ])
        .unwrap();
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(r.json()["error"]["type"], "rate_limit_error");
        assert_eq!(r.json()["error"]["code"], Value::Null);
        let r = post(
            &m,
            ANT,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(r.json()["type"], "error");
        assert_eq!(r.json()["error"]["type"], "rate_limit_error");
        let r = post(&m, ANT, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 529);
        assert_eq!(r.header("retry-after"), None);
        assert_eq!(r.json()["error"]["type"], "overloaded_error");
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"]["type"], "server_error");
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn unauthorized_is_401_and_consumed() {
        let m = MockLlm::start(vec![Turn::Unauthorized, Turn::Unauthorized]).unwrap();
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let r = post(&m, ANT, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn truncated_stream_and_body() {
        let m = MockLlm::start(vec![
            Turn::Truncated(two_calls()),
            Turn::Truncated(two_calls()),
            Turn::Truncated(two_calls()),
        ])
        .unwrap();
        let r = post(
            &m,
            OAI,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        assert_eq!(r.status, 200);
        assert!(!r.complete, "no terminating chunk");
        let evs = sse(&r.body);
        assert!(!evs.is_empty());
        assert!(evs.iter().all(|(_, d)| d != "[DONE]"));

        let r = post(
            &m,
            ANT,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        assert!(!r.complete);
        let evs = sse(&r.body);
        assert_eq!(evs[0].0.as_deref(), Some("message_start"));
        assert!(
            evs.iter()
                .all(|(n, _)| n.as_deref() != Some("message_stop"))
        );

        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 200);
        assert!(!r.complete, "body shorter than content-length");
        assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    }

    #[test]
    fn malformed_json() {
        let m = MockLlm::start(vec![
            Turn::MalformedJson,
            Turn::MalformedJson,
            Turn::MalformedJson,
        ])
        .unwrap();
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert!(serde_json::from_slice::<Value>(&r.body).is_err());

        let r = post(
            &m,
            OAI,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        assert!(r.complete);
        let evs = sse(&r.body);
        assert!(serde_json::from_str::<Value>(&evs[0].1).is_ok());
        assert!(serde_json::from_str::<Value>(&evs[1].1).is_err());
        assert_eq!(evs.last().unwrap().1, "[DONE]");

        let r = post(
            &m,
            ANT,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        let evs = sse(&r.body);
        assert_eq!(evs[0].0.as_deref(), Some("message_start"));
        assert!(serde_json::from_str::<Value>(&evs[1].1).is_err());
    }

    #[test]
    fn a_responder_answers_by_conversation_state() {
        let m = MockLlm::start_responder(|body| {
            let n = body["messages"].as_array().map_or(0, Vec::len);
            Turn::Reply(Reply::text(format!("seen {n}")))
        })
        .unwrap();
        for n in [1usize, 3, 1] {
            let msgs: Vec<Value> = (0..n)
                .map(|_| json!({"role": "user", "content": "x"}))
                .collect();
            let r = post(
                &m,
                "/v1/chat/completions",
                &json!({"model": "m", "messages": msgs}),
            );
            assert_eq!(
                r.json()["choices"][0]["message"]["content"],
                format!("seen {n}")
            );
        }
        assert_eq!(m.requests().len(), 3);
    }

    #[test]
    fn exhausted_script_is_500() {
        let m = MockLlm::start(vec![]).unwrap();
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["error"]["message"], "mock script exhausted");
        let r = post(&m, ANT, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["error"]["type"], "api_error");
        assert_eq!(r.json()["error"]["message"], "mock script exhausted");
        // push() refills it.
        m.push(Turn::Reply(Reply::text("again")));
        assert_eq!(m.remaining(), 1);
        let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
        assert_eq!(r.status, 200);
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn records_requests_in_order() {
        let m = MockLlm::start(vec![Turn::Unauthorized, Turn::Reply(Reply::text("ok"))]).unwrap();
        let b1 = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
        post_with(&m, OAI, &b1, &[("Authorization", "Bearer sk-test")]);
        let b2 = json!({"model": "m2", "max_tokens": 5, "messages": []});
        post_with(&m, "/v1/messages?beta=true", &b2, &[("X-Api-Key", "key-2")]);
        let r = post(&m, "/nope", &json!({}));
        assert_eq!(r.status, 404);
        let reqs = m.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].path, OAI);
        assert_eq!(reqs[0].body, b1);
        assert_eq!(reqs[0].header("authorization"), Some("Bearer sk-test"));
        assert!(reqs[0].headers.iter().any(|(n, _)| n == "content-type"));
        assert!(
            reqs[0]
                .headers
                .iter()
                .all(|(n, _)| *n == n.to_ascii_lowercase())
        );
        assert_eq!(reqs[1].path, "/v1/messages?beta=true");
        assert_eq!(reqs[1].body, b2);
        assert_eq!(reqs[1].header("x-api-key"), Some("key-2"));
        assert_eq!(reqs[2].path, "/nope");
        // The unknown path did not consume a turn.
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn non_json_body_records_null() {
        let m = MockLlm::start(vec![Turn::Reply(Reply::text("ok"))]).unwrap();
        let mut s = std::net::TcpStream::connect(m.addr()).unwrap();
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nnot\r\n5\r\n json\r\n0\r\n\r\n",
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let r = parse_response(&raw);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["model"], "mock");
        assert_eq!(m.requests()[0].body, Value::Null);
    }

    #[test]
    fn slow_delays() {
        let delay = Duration::from_millis(150);
        let m = MockLlm::start(vec![Turn::Slow {
            delay,
            then: Box::new(Turn::Reply(Reply::text("late"))),
        }])
        .unwrap();
        let t = Instant::now();
        let r = post(&m, ANT, &json!({"model": "m", "messages": []}));
        assert!(t.elapsed() >= delay);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["content"][0]["text"], "late");
        assert_eq!(m.remaining(), 0);
    }

    #[test]
    fn stall_streaming_and_not() {
        let stall = Duration::from_millis(150);
        let m = MockLlm::start(vec![
            Turn::Stall {
                reply: two_calls(),
                stall,
            },
            Turn::Stall {
                reply: two_calls(),
                stall,
            },
        ])
        .unwrap();
        let t = Instant::now();
        let r = post(
            &m,
            OAI,
            &json!({"model": "m", "messages": [], "stream": true}),
        );
        assert!(t.elapsed() >= stall);
        assert_eq!(r.status, 200);
        assert!(!r.complete);
        let evs = sse(&r.body);
        assert!(!evs.is_empty());
        assert!(evs.iter().all(|(_, d)| d != "[DONE]"));

        let t = Instant::now();
        let r = post(&m, ANT, &json!({"model": "m", "messages": []}));
        assert!(t.elapsed() >= stall);
        assert_eq!(r.status, 0, "closed without a response");
    }

    #[test]
    fn drop_closes_stalled_connections() {
        let m = MockLlm::start(vec![Turn::Stall {
            reply: Reply::text("never"),
            stall: Duration::from_secs(30),
        }])
        .unwrap();
        let addr = m.addr();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            raw
        });
        let t = Instant::now();
        while m.requests().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        drop(m);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(client.join().unwrap().is_empty());
    }

    #[test]
    fn works_inside_an_async_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let m = MockLlm::start(vec![Turn::Reply(Reply::text("hi"))]).unwrap();
            let base = m.base_url();
            assert!(base.starts_with("http://127.0.0.1:"));
            assert!(!base.ends_with('/'));
            let r = tokio::task::spawn_blocking(move || {
                let r = post(&m, OAI, &json!({"model": "m", "messages": []}));
                (r, m)
            })
            .await
            .unwrap();
            assert_eq!(r.0.status, 200);
            // Dropping inside the runtime is fine: it only joins a separate thread.
            drop(r.1);
        });
    }
}
