//! Driving `tokio-postgres` on the calling thread, without an async runtime.
//!
//! The [`crate::Store`] trait is synchronous, and the daemon calls it from tokio worker
//! threads, where no runtime can be entered (`postgres`, the driver's sync wrapper, panics
//! there). Handing each call to a runtime thread works but costs two thread hand-offs per
//! round trip (measured: 160 µs for a `SELECT` on this 2-core machine, against ~60 µs for
//! libpq). So each connection is a nonblocking socket of our own, given to
//! `Config::connect_raw`, and [`Link::run`] polls the caller's future and the connection
//! in turn, sleeping in `poll(2)` on the socket when both wait: the round trip is then the
//! caller and the server only, as with libpq.
//!
//! The waker only sets a flag: a wake means one side can go on without the socket (the
//! client consumed a response the connection was holding back, or a response reached the
//! client), so both are polled again at once; with no wake, the loop sleeps until the socket
//! is ready. A wait is bounded (100 ms) so nothing can hang on a missed readiness.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};

/// Where libpq looks when a connection string names no host.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// A nonblocking unix or TCP socket, and whether its last write would have blocked (then
/// waits also wait for it to take more).
pub(crate) struct Sock {
    stream: Stream,
    write_blocked: Arc<AtomicBool>,
}

enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match &self.stream {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn io<T>(
        &mut self,
        f: impl FnOnce(&mut dyn RwStream) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        let r = match &mut self.stream {
            Stream::Unix(s) => f(s),
            Stream::Tcp(s) => f(s),
        };
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Poll::Pending,
            r => Poll::Ready(r),
        }
    }
}

trait RwStream: Read + Write {}
impl<T: Read + Write> RwStream for T {}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = match this.io(|s| s.read(buf.initialize_unfilled())) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = this.io(|s| s.write(buf));
        this.write_blocked.store(r.is_pending(), Ordering::Relaxed);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &this.stream {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
        Poll::Ready(r)
    }
}

/// One connection: the client handle and the connection it sends through.
pub(crate) struct Link {
    pub client: Client,
    /// `None` once it ended or failed (dropping it fails the client's waiting requests).
    pub conn: Option<Connection<Sock, NoTlsStream>>,
    pub fd: RawFd,
    pub write_blocked: Arc<AtomicBool>,
}

/// Why a connection could not be opened or used.
#[derive(Debug)]
pub(crate) enum LinkError {
    Io(String),
    Pg(tokio_postgres::Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => f.write_str(e),
            LinkError::Pg(e) => write!(f, "{e}"),
        }
    }
}

/// Open the socket `config` names (the first host that answers) and log in.
pub(crate) fn connect(config: &Config) -> Result<Link, LinkError> {
    let hosts: Vec<Host> = if config.get_hosts().is_empty() {
        vec![Host::Unix(DEFAULT_SOCKET_DIR.into())]
    } else {
        config.get_hosts().to_vec()
    };
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let mut last = String::from("no host to connect to");
    for (i, host) in hosts.iter().enumerate() {
        let port = config
            .get_ports()
            .get(i)
            .or_else(|| config.get_ports().first())
            .copied()
            .unwrap_or(5432);
        let sock = match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                std::os::unix::net::UnixStream::connect(&path)
                    .map(Stream::Unix)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Host::Tcp(name) => connect_tcp(name, port, timeout).map(Stream::Tcp),
        };
        let stream = match sock {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let nonblocking = match &stream {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        };
        nonblocking.map_err(|e| LinkError::Io(e.to_string()))?;
        let write_blocked = Arc::new(AtomicBool::new(false));
        let sock = Sock {
            stream,
            write_blocked: Arc::clone(&write_blocked),
        };
        let fd = sock.fd();
        let (client, conn) =
            alone(fd, &write_blocked, config.connect_raw(sock, NoTls)).map_err(LinkError::Pg)?;
        return Ok(Link {
            client,
            conn: Some(conn),
            fd,
            write_blocked,
        });
    }
    Err(LinkError::Io(last))
}

fn connect_tcp(name: &str, port: u16, timeout: Duration) -> Result<std::net::TcpStream, String> {
    use std::net::ToSocketAddrs;
    let addrs = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("{name}:{port}: {e}"))?;
    let mut last = format!("{name}:{port}: no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

/// Wait until `fd` is readable (or writable, if the last write would have blocked), at most
/// 100 ms.
fn wait(fd: RawFd, write_blocked: &AtomicBool) {
    let write = write_blocked.load(Ordering::Relaxed);
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 100) };
}

/// Run a future that drives its own socket (the login) to completion.
fn alone<F: Future>(fd: RawFd, write_blocked: &AtomicBool, f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        wait(fd, write_blocked);
    }
}

/// Run `f` (queries on a [`Link`]'s client) to completion, driving the link's connection
/// `conn` (socket `fd`) meanwhile. A connection that ends or fails is dropped, which fails
/// the client's waiting requests ("connection closed").
pub(crate) fn drive<F: Future>(
    conn: &mut Option<Connection<Sock, NoTlsStream>>,
    fd: RawFd,
    write_blocked: &AtomicBool,
    f: F,
) -> F::Output {
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&woken));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    // Once `f` is done, what it queued without waiting (a dropped statement's Close) is sent.
    let flush = |conn: &mut Option<Connection<Sock, NoTlsStream>>, cx: &mut Context<'_>| {
        if let Some(c) = conn.as_mut()
            && Pin::new(c).poll(cx).is_ready()
        {
            *conn = None;
        }
    };
    loop {
        woken.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            flush(conn, &mut cx);
            return v;
        }
        // Sends what the client queued, reads what the server answered.
        if let Some(c) = conn.as_mut()
            && Pin::new(c).poll(&mut cx).is_ready()
        {
            *conn = None;
        }
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            flush(conn, &mut cx);
            return v;
        }
        if conn.is_some() && !woken.0.load(Ordering::SeqCst) {
            wait(fd, write_blocked);
        }
    }
}

/// A waker that records that it was called.
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Link {
    /// Whether the connection ended: open another. Reads what the server sent while the
    /// connection sat idle first (one nonblocking read), so a backend the server ended (a
    /// restart, `pg_terminate_backend`, an idle timeout) is noticed before a request is
    /// written to it, and the request goes to a new connection instead of failing.
    pub fn broken(&mut self) -> bool {
        if let Some(c) = self.conn.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            if Pin::new(c).poll(&mut cx).is_ready() {
                self.conn = None;
            }
        }
        self.conn.is_none() || self.client.is_closed()
    }

    /// Notifications received (for a connection that `LISTEN`s), waiting at most 100 ms for
    /// the first; `Err` when the connection is gone.
    pub fn notifications(&mut self) -> Result<Vec<String>, ()> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let conn = self.conn.as_mut().ok_or(())?;
        for round in 0..2 {
            loop {
                match conn.poll_message(&mut cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                        out.push(n.channel().to_owned());
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_)) | None) => return Err(()),
                    Poll::Pending => break,
                }
            }
            if round == 0 && out.is_empty() {
                wait(self.fd, &self.write_blocked);
            } else {
                break;
            }
        }
        Ok(out)
    }
}
