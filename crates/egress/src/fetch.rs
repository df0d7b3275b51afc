//! One HTTP request made by the host for a cell, under the proxy's rules: for interfaces that
//! are not a socket (a `/cap/http` file the cell writes a request to and reads a response
//! from).
//!
//! The same gate as the proxy ([`crate::open`]): policy by name, one resolution, every address
//! checked, a checked address dialed. The HTTP/1.1 exchange is hyper's client over that very
//! socket, with TLS by rustls (web PKI roots, ring) for `https://`, so the certificate is
//! checked against the name that was allowed. Redirects are returned, not followed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;

use crate::head::{self, is_field_value, is_token};
use crate::{Audit, Config, Decision, Recorder, Refusal};

/// One request for [`fetch`]. In JSON, everything but `url` may be left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The method, `GET` when left out.
    #[serde(default = "default_method")]
    pub method: String,
    /// An absolute `http://` or `https://` URL. User info (`user@`) is refused.
    pub url: String,
    /// Request headers, in order, as `[name, value]` pairs. `Host`, `Content-Length`,
    /// `Connection`, `Transfer-Encoding` and other hop-by-hop or `Proxy-*` headers are set by
    /// `fetch` and ignored here.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The request body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// The most response-body bytes kept; the rest is not read (`truncated` is set).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Bound on the whole request, in milliseconds (30 s when left out).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_max_body() -> u64 {
    1024 * 1024
}

impl FetchRequest {
    /// A `GET` of `url` with the defaults (1 MiB body cap, 30 s).
    pub fn get(url: impl Into<String>) -> FetchRequest {
        FetchRequest {
            method: default_method(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            max_body_bytes: default_max_body(),
            timeout_ms: None,
        }
    }
}

/// What [`fetch`] got. A refused or failed request has `error` set (and `status` 0 when no
/// response arrived); `fetch` never panics on a bad request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The HTTP status, or 0 when there was no response.
    pub status: u16,
    /// Response headers as `[name, value]` pairs: names in lower case, repeated names kept
    /// (grouped by name), values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The response body when it is UTF-8 text (empty otherwise: see `body_base64`).
    pub body: String,
    /// The response body, base64-encoded, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Whether the body was cut at `max_body_bytes`.
    pub truncated: bool,
    /// Why the request was refused (`egress denied: ...`) or failed (`egress failed: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FetchResponse {
    fn error(e: String) -> FetchResponse {
        FetchResponse {
            error: Some(e),
            ..FetchResponse::default()
        }
    }
}

/// Headers `fetch` sets itself or never sends.
const OWN_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Executes one HTTP request under `config`'s policy and resolution rules and records it in
/// `audit` exactly once, like a proxied request. The response body is capped at
/// `req.max_body_bytes`; redirects are not followed.
pub async fn fetch(config: &Config, audit: &dyn Audit, req: &FetchRequest) -> FetchResponse {
    let mut rec = Recorder::new(audit);
    rec.attempt().method = head::guess_method(req.method.as_bytes());
    let limit = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
    // Counted outside `run`, so that a request cut off by the time limit still reports them.
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let outcome = tokio::time::timeout(limit, run(config, req, rec.attempt(), &up, &down)).await;
    rec.attempt().bytes_up = up.load(Ordering::Relaxed);
    rec.attempt().bytes_down = down.load(Ordering::Relaxed);
    let (response, decision) = match outcome {
        Ok(Ok(response)) => {
            let decision = match &response.error {
                None => Decision::Allowed,
                Some(e) => Decision::Failed(e.trim_start_matches("egress failed: ").into()),
            };
            (response, decision)
        }
        Ok(Err(Refusal::Denied(reason))) => (
            FetchResponse::error(format!("egress denied: {reason}")),
            Decision::Denied(reason),
        ),
        Ok(Err(Refusal::Failed(reason))) => (
            FetchResponse::error(format!("egress failed: {reason}")),
            Decision::Failed(reason),
        ),
        Err(_) => {
            let reason = format!("the request took longer than {limit:?}");
            (
                FetchResponse::error(format!("egress failed: {reason}")),
                Decision::Failed(reason),
            )
        }
    };
    rec.finish(decision);
    response
}

async fn run(
    config: &Config,
    req: &FetchRequest,
    attempt: &mut crate::Attempt,
    up: &Arc<AtomicU64>,
    down: &Arc<AtomicU64>,
) -> Result<FetchResponse, Refusal> {
    if !is_token(req.method.as_bytes()) || req.method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::Denied(format!("bad method {:?}", req.method)));
    }
    let url = head::parse_url(&req.url).map_err(|p| Refusal::Denied(format!("bad URL: {p}")))?;
    for (name, value) in &req.headers {
        if !is_token(name.as_bytes()) || !is_field_value(value.as_bytes()) {
            return Err(Refusal::Denied(format!("bad header {name:?}")));
        }
    }
    // The request is built (and so validated) before anything is dialed.
    let host =
        crate::allowlist::normalize_host(&url.host).map_err(|d| Refusal::Denied(d.reason))?;
    let default_port = if url.https { 443 } else { 80 };
    let host_header = if url.port == default_port {
        host.clone()
    } else {
        format!("{host}:{}", url.port)
    };
    let mut builder = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(url.path.as_str())
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in &req.headers {
        if !OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let body = Bytes::from(req.body.clone().unwrap_or_default());
    let request = builder
        .body(Full::new(body))
        .map_err(|e| Refusal::Denied(format!("bad request: {e}")))?;
    let stream = crate::open(config, &url.host, url.port, attempt).await?;
    let counted = Counted {
        inner: stream,
        up: up.clone(),
        down: down.clone(),
    };
    if url.https {
        let tls = tls_connect(config, &host, counted)
            .await
            .map_err(Refusal::Failed)?;
        exchange(tls, request, req.max_body_bytes, config.idle_timeout).await
    } else {
        exchange(counted, request, req.max_body_bytes, config.idle_timeout).await
    }
}

async fn tls_connect<S>(
    config: &Config,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in &config.extra_root_certs {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("bad extra root certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("TLS server name {host}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))
}

/// Aborts a spawned task when dropped (the connection driver outliving a timed-out fetch).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
    max: u64,
    idle: Duration,
) -> Result<FetchResponse, Refusal>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |what: &str, e: &dyn std::fmt::Display| Refusal::Failed(format!("{what}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed("HTTP handshake", &e))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("sending the request", &e))?;
    let mut out = FetchResponse {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        ..FetchResponse::default()
    };
    let mut body = response.into_body();
    let mut bytes: Vec<u8> = Vec::new();
    let cap = usize::try_from(max).unwrap_or(usize::MAX);
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                out.error = Some(format!("egress failed: no body bytes for {idle:?}"));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                out.error = Some(format!("egress failed: reading the body: {e}"));
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap - bytes.len();
                    if data.len() > room {
                        bytes.extend_from_slice(&data[..room]);
                        out.truncated = true;
                        break;
                    }
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => out.body = text,
        Err(e) => out.body_base64 = Some(base64(e.as_bytes())),
    }
    Ok(out)
}

/// Standard base64 with padding (a few lines rather than a dependency).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A socket that counts the bytes through it (below TLS, so these are wire bytes).
struct Counted<S> {
    inner: S,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.down.fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.up.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
