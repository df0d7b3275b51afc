//! The proxy server: accept, read one request head, decide, then tunnel or relay.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::head::{self, HeadError};
use crate::{Audit, Config, Decision, Recorder, Refusal};

/// Serves the proxy on a unix socket until the returned future is dropped. Dropping it also
/// ends every connection it accepted (each is recorded as `Failed("interrupted")` if it had
/// not finished). At most `config.max_connections` are served at once.
///
/// Whoever can connect to the socket can use the allowlist: the socket file's place and
/// permissions (the caller bound it) are what confine the proxy to its cell. Give each cell
/// its own proxy, so that one cell's connections and idle tunnels cannot crowd out another's.
pub async fn serve_unix(listener: UnixListener, config: Arc<Config>, audit: Arc<dyn Audit>) {
    serve(Listener::Unix(listener), config, audit).await;
}

/// Serves the proxy on TCP, exactly as [`serve_unix`] does on a unix socket. Meant for
/// tests and for a forwarder on the host's loopback; never bind it where others can reach it.
pub async fn serve_tcp(listener: TcpListener, config: Arc<Config>, audit: Arc<dyn Audit>) {
    serve(Listener::Tcp(listener), config, audit).await;
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

async fn serve(listener: Listener, config: Arc<Config>, audit: Arc<dyn Audit>) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // Owning the connections' tasks here means dropping `serve` aborts them all.
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (config, audit) = (config.clone(), audit.clone());
        match &listener {
            Listener::Unix(l) => match l.accept().await {
                Ok((stream, _)) => {
                    tasks.spawn(async move {
                        handle(stream, &config, &*audit).await;
                        drop(permit);
                    });
                }
                Err(_) => accept_failed().await,
            },
            Listener::Tcp(l) => match l.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(async move {
                        handle(stream, &config, &*audit).await;
                        drop(permit);
                    });
                }
                Err(_) => accept_failed().await,
            },
        }
    }
}

/// Accept fails when the process is out of file descriptors (or a connection was reset
/// before it was accepted): wait a moment rather than spin.
async fn accept_failed() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Headers never forwarded: hop-by-hop ones (RFC 9110 section 7.6.1), the proxy's own
/// (`Proxy-*`), `Host` (rebuilt from the checked URL) and `Transfer-Encoding` (refused).
const DROPPED: [&str; 10] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

async fn handle<S>(mut client: S, config: &Config, audit: &dyn Audit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rec = Recorder::new(audit);
    let (raw, leftover) =
        match head::read_head(&mut client, config.max_head_bytes, config.head_timeout).await {
            Ok(x) => x,
            Err(HeadError::Silent) => {
                rec.discard();
                return;
            }
            Err(HeadError::TooLarge(seen)) => {
                rec.attempt().method = head::guess_method(&seen);
                let reason = format!("request head larger than {} bytes", config.max_head_bytes);
                respond(&mut client, 431, "Request Header Fields Too Large", &reason).await;
                return rec.finish(Decision::Denied(reason));
            }
            Err(HeadError::Timeout(seen)) => {
                rec.attempt().method = head::guess_method(&seen);
                let reason = format!("request head not received within {:?}", config.head_timeout);
                respond(&mut client, 408, "Request Timeout", &reason).await;
                return rec.finish(Decision::Denied(reason));
            }
            Err(HeadError::Truncated(seen)) => {
                rec.attempt().method = head::guess_method(&seen);
                return rec.finish(Decision::Denied(
                    "client closed before the end of the request head".into(),
                ));
            }
        };
    let head = match head::parse(&raw) {
        Ok(h) => h,
        Err(problem) => {
            rec.attempt().method = head::guess_method(&raw);
            return bad_request(&mut client, rec, &format!("malformed request: {problem}")).await;
        }
    };
    rec.attempt().method.clone_from(&head.method);
    if head.method.eq_ignore_ascii_case("CONNECT") {
        tunnel(client, config, rec, &head, leftover).await;
    } else {
        forward(client, config, rec, head, leftover).await;
    }
}

async fn tunnel<S>(
    mut client: S,
    config: &Config,
    mut rec: Recorder<'_>,
    head: &head::Head,
    leftover: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (host, port) = match head::parse_authority(&head.target, None) {
        Ok(x) => x,
        Err(problem) => {
            return bad_request(&mut client, rec, &format!("bad CONNECT target: {problem}")).await;
        }
    };
    let mut upstream = match crate::open(config, &host, port, rec.attempt()).await {
        Ok(s) => s,
        Err(refusal) => return refuse(&mut client, rec, refusal).await,
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return rec.finish(Decision::Failed(
            "client went away before the tunnel opened".into(),
        ));
    }
    // Bytes the client sent right behind its CONNECT (a TLS ClientHello, say) belong to the
    // tunnel.
    if !leftover.is_empty() {
        if let Err(e) = upstream.write_all(&leftover).await {
            return rec.finish(Decision::Failed(format!("tunnel: {e}")));
        }
        rec.attempt().bytes_up += leftover.len() as u64;
    }
    let a = rec.attempt();
    let result = pump(
        &mut client,
        &mut upstream,
        config.idle_timeout,
        Mode::Tunnel,
        &mut a.bytes_up,
        &mut a.bytes_down,
    )
    .await;
    rec.finish(match result {
        Ok(()) => Decision::Allowed,
        Err(e) => Decision::Failed(format!("tunnel: {e}")),
    });
}

async fn forward<S>(
    mut client: S,
    config: &Config,
    mut rec: Recorder<'_>,
    head: head::Head,
    leftover: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let url = match head::parse_url(&head.target) {
        Ok(u) if !u.https => u,
        Ok(_) => {
            return bad_request(
                &mut client,
                rec,
                "https:// URLs go through CONNECT, not GET",
            )
            .await;
        }
        Err(_) if head.target.starts_with('/') => {
            return bad_request(
                &mut client,
                rec,
                "this is a proxy: send the absolute URL (GET http://host/path)",
            )
            .await;
        }
        Err(problem) => return bad_request(&mut client, rec, &format!("bad URL: {problem}")).await,
    };
    rec.attempt().host.clone_from(&url.host);
    rec.attempt().port = url.port;
    // Body length: Content-Length only, and every copy of it must agree.
    let mut length: Option<u64> = None;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let reason = "chunked request bodies are not supported; send Content-Length";
            respond(&mut client, 411, "Length Required", reason).await;
            return rec.finish(Decision::Denied(reason.into()));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return bad_request(&mut client, rec, "bad or conflicting Content-Length")
                        .await;
                }
            }
        }
    }
    let mut upstream = match crate::open(config, &url.host, url.port, rec.attempt()).await {
        Ok(s) => s,
        Err(refusal) => return refuse(&mut client, rec, refusal).await,
    };
    // The request as the destination sees it: origin-form, Host from the checked URL, the
    // client's end-to-end headers byte for byte, and one request per connection.
    let mut out = Vec::with_capacity(raw_len(&head) + 64);
    out.extend_from_slice(format!("{} {} {}\r\n", head.method, url.path, head.version).as_bytes());
    let host = &rec.attempt().host;
    if url.port == 80 {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    } else {
        out.extend_from_slice(format!("Host: {host}:{}\r\n", url.port).as_bytes());
    }
    let listed = connection_listed(&head);
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if DROPPED.contains(&lower.as_str()) || listed.contains(&lower) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let body = length.unwrap_or(0);
    let early = leftover
        .len()
        .min(usize::try_from(body).unwrap_or(usize::MAX));
    out.extend_from_slice(&leftover[..early]);
    if let Err(e) = upstream.write_all(&out).await {
        return rec.finish(Decision::Failed(format!("sending the request: {e}")));
    }
    rec.attempt().bytes_up = out.len() as u64;
    let a = rec.attempt();
    let result = pump(
        &mut client,
        &mut upstream,
        config.idle_timeout,
        Mode::Request {
            body_left: body - early as u64,
        },
        &mut a.bytes_up,
        &mut a.bytes_down,
    )
    .await;
    rec.finish(match result {
        Ok(()) => Decision::Allowed,
        Err(e) => Decision::Failed(format!("relaying: {e}")),
    });
}

fn raw_len(head: &head::Head) -> usize {
    head.headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum()
}

/// Header names listed in `Connection` are hop-by-hop too (RFC 9110 section 7.6.1).
fn connection_listed(head: &head::Head) -> Vec<String> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Mode {
    /// Both ways until both ends close (half-closes passed along), or idle.
    Tunnel,
    /// Up: exactly the body's remaining bytes, then nothing more is read from the client.
    /// Down: the response until the destination closes (it was told `Connection: close`).
    Request { body_left: u64 },
}

/// Why copying between the client and the destination stopped early (recorded as failed).
#[derive(Debug, thiserror::Error)]
enum PumpError {
    #[error("the client closed before sending the whole body")]
    ShortBody,
    #[error("reading from the client: {0}")]
    ReadClient(#[source] std::io::Error),
    #[error("writing to the destination: {0}")]
    WriteDestination(#[source] std::io::Error),
    #[error("reading from the destination: {0}")]
    ReadDestination(#[source] std::io::Error),
    #[error("writing to the client: {0}")]
    WriteClient(#[source] std::io::Error),
}

/// Copies bytes both ways until done or idle for `idle`, counting them. Returns an error
/// only for a socket error; idleness and closes are normal ends.
async fn pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    mode: Mode,
    up: &mut u64,
    down: &mut u64,
) -> Result<(), PumpError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let mut body_left = match mode {
        Mode::Tunnel => u64::MAX,
        Mode::Request { body_left } => body_left,
    };
    let mut client_open = body_left > 0;
    let mut upstream_open = true;
    while client_open || upstream_open {
        let want = usize::try_from(body_left)
            .unwrap_or(usize::MAX)
            .min(a.len());
        // A fresh deadline per turn: any byte either way restarts the idle clock.
        tokio::select! {
            r = client.read(&mut a[..want]), if client_open => match r {
                Ok(0) => {
                    if let Mode::Request { .. } = mode {
                        // The destination would wait for the rest of the body forever.
                        return Err(PumpError::ShortBody);
                    }
                    client_open = false;
                    let _ = upstream.shutdown().await;
                }
                Ok(n) => {
                    match tokio::time::timeout(idle, upstream.write_all(&a[..n])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(PumpError::WriteDestination(e)),
                        Err(_) => return Ok(()),
                    }
                    *up += n as u64;
                    if let Mode::Request { .. } = mode {
                        body_left -= n as u64;
                        client_open = body_left > 0;
                    }
                }
                Err(e) => return Err(PumpError::ReadClient(e)),
            },
            r = upstream.read(&mut b), if upstream_open => match r {
                Ok(0) => {
                    upstream_open = false;
                    let _ = client.shutdown().await;
                    if let Mode::Request { .. } = mode {
                        return Ok(());
                    }
                }
                Ok(n) => {
                    match tokio::time::timeout(idle, client.write_all(&b[..n])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(PumpError::WriteClient(e)),
                        Err(_) => return Ok(()),
                    }
                    *down += n as u64;
                }
                Err(e) => return Err(PumpError::ReadDestination(e)),
            },
            _ = tokio::time::sleep(idle) => return Ok(()),
        }
    }
    Ok(())
}

async fn bad_request<S>(client: &mut S, rec: Recorder<'_>, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    respond(client, 400, "Bad Request", reason).await;
    rec.finish(Decision::Denied(reason.to_string()));
}

async fn refuse<S>(client: &mut S, rec: Recorder<'_>, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &refusal {
        Refusal::Denied(reason) => {
            respond(
                client,
                403,
                "Forbidden",
                &format!("egress denied: {reason}"),
            )
            .await;
        }
        Refusal::Failed(reason) => {
            respond(
                client,
                502,
                "Bad Gateway",
                &format!("egress failed: {reason}"),
            )
            .await;
        }
    }
    rec.finish(refusal.decision());
}

/// Sends a short text response and closes politely: shut down our side, then read (and
/// discard) briefly, so that unread request bytes do not turn the close into a reset that
/// could destroy the response before the client reads it.
async fn respond<S>(client: &mut S, status: u16, phrase: &str, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = format!("{text}\n");
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let io = async {
        client.write_all(response.as_bytes()).await?;
        client.flush().await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut budget = 256 * 1024usize;
        while budget > 0 {
            let n = client.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            budget = budget.saturating_sub(n);
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), io).await;
}
