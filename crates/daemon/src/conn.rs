//! Serving the API on a listener, with the limits a long-lived daemon on a network needs:
//!
//! - a **header read timeout** ([`ConnLimits::header_read`]): a request's head must arrive
//!   within it, and an idle keep-alive connection is closed after it (hyper starts the timer
//!   whenever it waits for a head) — a slowloris client trickling headers is cut off;
//! - an **idle timeout** ([`ConnLimits::idle`]): a connection on which nothing was read or
//!   written for that long while the server waits for the client (a trickled or stalled body,
//!   a client that stops reading a response or a stream) is closed; event streams send
//!   keep-alives (SSE comments, WebSocket pings) well within it;
//! - a **connection cap** ([`ConnLimits::max_connections`]) per listener: past it a connection
//!   is answered `503` (`{"code": "unavailable", …}`) and closed. A WebSocket holds its slot
//!   until it ends.
//!
//! A declared body over the API's limit is answered by the router ([`crate::api`]) at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use warren_protocol::api::{ErrorBody, ErrorCode};

/// Limits on every connection of one listener.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request's head must arrive within this; an idle keep-alive connection closes after it.
    pub header_read: Duration,
    /// Nothing read or written for this long, while waiting on the client: the connection
    /// closes.
    pub idle: Duration,
    /// Connections served at once; more are answered 503.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Refusals (503 answers past the cap) written at once; past this many, a connection is
/// dropped without an answer.
const MAX_REFUSING: usize = 64;

/// Serve `app` on `listener` within `limits` until `stop` turns true; then stop accepting,
/// let open requests finish (graceful shutdown of every connection) and return once they
/// have. Upgraded connections (WebSockets) are not waited for.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Every connection task holds a receiver; `closed()` resolves when the last one ended.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (io, _addr) = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if let Ok(r) = Arc::clone(&refusing).try_acquire_owned() {
                tokio::spawn(refuse(io, r));
            }
            continue;
        };
        let io = Watched::new(io, limits.idle, slot);
        let svc = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        let open = open_rx.clone();
        let header_read = limits.header_read;
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(header_read);
            let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answer a connection past the cap with a JSON 503 and close it.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, _r: OwnedSemaphorePermit) {
    let body = serde_json::to_string(&ErrorBody {
        code: ErrorCode::Unavailable,
        message: "too many connections to this daemon; try again".into(),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection before it
        // read the answer.
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            let n = tokio::io::AsyncReadExt::read(&mut io, &mut sink).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// A connection that fails (`TimedOut`) once it waited `idle` with nothing read or written,
/// and holds its listener slot while it lives (through a WebSocket upgrade too).
struct Watched<T> {
    io: T,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<T> Watched<T> {
    fn new(io: T, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Watched {
            io,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            _slot: slot,
        }
    }

    fn progressed(&mut self) {
        self.last = Instant::now();
    }

    /// Called when an operation waits on the client: `Ready(Err)` once `idle` has passed since
    /// the last progress; otherwise the timer wakes this task when it might have.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        loop {
            let due = self.last + self.idle;
            if self.timer.deadline() != due {
                self.timer.as_mut().reset(due);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.last + self.idle => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle too long",
                    )));
                }
                Poll::Ready(()) => {}
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.waiting(cx),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
