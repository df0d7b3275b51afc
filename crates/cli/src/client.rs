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
use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_protocol::api::{ErrorBody, EventView};

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
pub enum CallError {
    /// No answer: the daemon could not be reached, broke off, or sent what is not JSON of the
    /// expected shape.
    Unreachable(String),
    /// The daemon refused the request with its error body.
    Api {
        /// HTTP status.
        status: u16,
        /// The body: a stable code and a message for people.
        body: ErrorBody,
    },
    /// An error answer that is not an [`ErrorBody`] (something in front of the daemon, or a
    /// code this version does not know): its status and text.
    Unrecognized {
        /// HTTP status.
        status: u16,
        /// `STATUS: body`.
        message: String,
    },
}

impl CallError {
    /// HTTP status, when the daemon answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Unreachable(_) => None,
            CallError::Api { status, .. } | CallError::Unrecognized { status, .. } => Some(*status),
        }
    }

    /// The error's code as printed with `--json`: the body's
    /// [`ErrorCode`](warren_protocol::api::ErrorCode), `unreachable` without an answer,
    /// `error` for an answer that is not an error body.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Unreachable(_) => "unreachable",
            CallError::Api { body, .. } => body.code.as_str(),
            CallError::Unrecognized { .. } => "error",
        }
    }

    /// For people.
    pub fn message(&self) -> &str {
        match self {
            CallError::Unreachable(m) | CallError::Unrecognized { message: m, .. } => m,
            CallError::Api { body, .. } => &body.message,
        }
    }

    /// The CLI's exit status for it: 3 when no daemon answered (as `warren status` says
    /// "not running"), 1 for a refusal, whatever its code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Unreachable(_) => 3,
            CallError::Api { .. } | CallError::Unrecognized { .. } => 1,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

fn unreachable(msg: String) -> CallError {
    CallError::Unreachable(msg)
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

/// A request without a body, for [`call`] and [`call_as`].
pub const NO_BODY: Option<&()> = None;

fn request<B: Serialize + ?Sized>(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Request<Full<Bytes>>, CallError> {
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
            Bytes::from(
                serde_json::to_vec(v).map_err(|e| unreachable(format!("request body: {e}")))?,
            )
        }
        None => Bytes::new(),
    };
    b.body(Full::new(bytes))
        .map_err(|e| unreachable(format!("request {path}: {e}")))
}

fn error_of(status: StatusCode, body: &[u8]) -> CallError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => CallError::Api {
            status: status.as_u16(),
            body,
        },
        Err(_) => CallError::Unrecognized {
            status: status.as_u16(),
            message: format!("{status}: {}", String::from_utf8_lossy(body)),
        },
    }
}

/// One request; the body of a 2xx answer, or the error.
pub async fn call<B: Serialize + ?Sized>(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Bytes, CallError> {
    let req = request(t, method, path, body)?;
    let mut send = connect(t).await?;
    let resp = send
        .send_request(req)
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

/// [`call`], deserializing the JSON answer (a `warren_protocol::api` type).
pub async fn call_as<T: DeserializeOwned, B: Serialize + ?Sized>(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<T, CallError> {
    let b = call(t, method, path, body).await?;
    serde_json::from_slice(&b).map_err(|e| unreachable(format!("daemon sent invalid JSON: {e}")))
}

/// One line of JSON for `--json`: an answer as a `serde_json::Value` prints it, keys sorted
/// (what earlier versions printed, which re-printed the daemon's JSON), so the same view prints
/// alike from the daemon and from the CLI's local mode.
pub fn json_line<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_value(v)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| {
            serde_json::json!({"error": {"code": "internal", "message": e.to_string()}}).to_string()
        })
}

/// Follow an SSE endpoint, calling `each` with every event, until the server ends
/// the stream. Reconnects (resuming after the last event id) if the connection breaks.
pub async fn follow(
    t: &Target,
    path: &str,
    mut after: i64,
    each: &mut dyn FnMut(&EventView),
) -> Result<(), CallError> {
    let mut failures = 0;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut send = connect(t).await?;
        let req = request(
            t,
            Method::GET,
            &format!("{path}{sep}after={after}"),
            NO_BODY,
        )?;
        let resp = send
            .send_request(req)
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
                    if let Ok(v) = serde_json::from_str::<EventView>(&ev.data) {
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
