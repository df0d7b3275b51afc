//! A small HTTP/1.1 client for the daemon's API, over its unix socket (default) or TCP with
//! the bearer token (`--url`, `WARREN_URL`; token from `WARREN_TOKEN` or the state directory).
//!
//! hyper's connection API directly, not reqwest: reqwest cannot speak over a unix socket.

use std::path::{Path, PathBuf};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the daemon is.
#[derive(Clone, Debug)]
pub enum Target {
    /// Its unix socket.
    Unix(PathBuf),
    /// `host:port`, with the bearer token.
    Tcp {
        /// `host:port`.
        authority: String,
        /// Bearer token.
        token: String,
    },
}

/// A failed call: the daemon's error body, or why it could not be reached.
#[derive(Debug)]
pub struct CallError {
    /// HTTP status, when the daemon answered.
    pub status: Option<u16>,
    /// `code` of the error body.
    pub code: String,
    /// For people.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

fn unreachable(msg: String) -> CallError {
    CallError {
        status: None,
        code: "unreachable".into(),
        message: msg,
    }
}

/// The daemon's address from flags, environment and the state directory.
pub fn target(url: Option<&str>, state: &Path) -> Result<Target, String> {
    let env_url = std::env::var("WARREN_URL").ok().filter(|u| !u.is_empty());
    match url.map(str::to_owned).or(env_url) {
        None => Ok(Target::Unix(state.join("warren.sock"))),
        Some(u) => {
            let authority = u
                .strip_prefix("http://")
                .ok_or_else(|| format!("--url {u:?}: only http://HOST:PORT is supported (put TLS in front of the daemon)"))?
                .trim_end_matches('/')
                .to_owned();
            let token = match std::env::var("WARREN_TOKEN").ok().filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => std::fs::read_to_string(state.join("token"))
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| {
                        format!(
                            "a TCP daemon needs its token: set WARREN_TOKEN or keep it in {} ({e})",
                            state.join("token").display()
                        )
                    })?,
            };
            Ok(Target::Tcp { authority, token })
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(t: &Target) -> Result<Sender, CallError> {
    async fn handshake<S>(io: S) -> Result<Sender, CallError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(format!("daemon: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
    match t {
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                unreachable(format!(
                    "no daemon answers on {} ({e}); start one with `warren daemon start`",
                    p.display()
                ))
            })?;
            handshake(s).await
        }
        Target::Tcp { authority, .. } => {
            let s = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map_err(|e| unreachable(format!("no daemon answers at {authority} ({e})")))?;
            handshake(s).await
        }
    }
}

fn request(t: &Target, method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    b = match t {
        Target::Unix(_) => b.header("host", "warren"),
        Target::Tcp { authority, token } => b
            .header("host", authority.as_str())
            .header("authorization", format!("Bearer {token}")),
    };
    let bytes = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(Full::new(bytes)).unwrap_or_default()
}

fn error_of(status: StatusCode, body: &[u8]) -> CallError {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    CallError {
        status: Some(status.as_u16()),
        code: v["code"].as_str().unwrap_or("error").into(),
        message: v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(body))),
    }
}

/// One request; the body of a 2xx answer, or the error.
pub async fn call(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Bytes, CallError> {
    let mut send = connect(t).await?;
    let resp = send
        .send_request(request(t, method, path, body))
        .await
        .map_err(|e| unreachable(format!("daemon: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(format!("daemon: {e}")))?
        .to_bytes();
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(error_of(status, &bytes))
    }
}

/// [`call`], parsing a JSON answer.
pub async fn call_json(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CallError> {
    let b = call(t, method, path, body).await?;
    serde_json::from_slice(&b).map_err(|e| unreachable(format!("daemon sent invalid JSON: {e}")))
}

/// Follow an SSE endpoint, calling `each` with every event's JSON data, until the server ends
/// the stream. Reconnects (resuming after the last event id) if the connection breaks.
pub async fn follow(
    t: &Target,
    path: &str,
    mut after: i64,
    each: &mut dyn FnMut(&Value),
) -> Result<(), CallError> {
    let mut failures = 0;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut send = connect(t).await?;
        let resp = send
            .send_request(request(
                t,
                Method::GET,
                &format!("{path}{sep}after={after}"),
                None,
            ))
            .await
            .map_err(|e| unreachable(format!("daemon: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let b = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(error_of(status, &b));
        }
        let frames = BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok::<Bytes, hyper::Error>),
                Err(e) => Some(Err(e)),
            }
        });
        let mut events = std::pin::pin!(frames.eventsource());
        let mut broken = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    if let Ok(id) = ev.id.parse::<i64>() {
                        after = id;
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                        each(&v);
                    }
                    failures = 0;
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if !broken {
            return Ok(());
        }
        failures += 1;
        if failures > 5 {
            return Err(unreachable("the event stream keeps breaking".into()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * failures)).await;
    }
}
