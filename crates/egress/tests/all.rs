//! The egress proxy against real sockets: the proxy on a unix socket and on TCP 127.0.0.1:0,
//! a tiny HTTP origin, a TCP echo server and a TLS server, all on 127.0.0.1:0.
//!
//! Test names are answered by `resolve_override` with addresses in 203.0.113.0/24 (a
//! documentation range: public-looking, routed nowhere), and `dial_override` points those
//! addresses at the local servers. So the checks see exactly what they would see in
//! production, and every byte stays on this machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use warren_egress::{
    Attempt, Config, Decision, FetchRequest, Policy, RecordingAudit, fetch, serve_tcp, serve_unix,
};

const ORIGIN_IP: &str = "203.0.113.10";
const ECHO_IP: &str = "203.0.113.11";
const DOWN_IP: &str = "203.0.113.12";
const TLS_IP: &str = "203.0.113.13";
const ORIGIN_BODY: &str = "hello from origin\n";
const WAIT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Aborts a spawned server when the test ends.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A tiny HTTP/1.1 origin: records each raw request (head and Content-Length body), answers
/// 200 with `ORIGIN_BODY` and closes.
async fn origin() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let request = read_request(&mut s).await;
                log.lock().unwrap().push(request);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ORIGIN_BODY}",
                    ORIGIN_BODY.len()
                );
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen, Task(task))
}

/// Reads a request head and its Content-Length body.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return buf;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = Vec::new();
    let _ = s.take(length as u64).read_to_end(&mut body).await;
    buf.extend_from_slice(&body);
    buf
}

/// A TCP echo server: copies until EOF, then closes its side.
async fn echo() -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, Task(task))
}

fn test_ca() -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(include_bytes!("tls/test-ca.pem")).unwrap()
}

/// A TLS origin for `tls.test` (certificate signed by the test CA).
async fn tls_origin() -> (SocketAddr, Task) {
    let chain = vec![CertificateDer::from_pem_slice(include_bytes!("tls/tls.test.pem")).unwrap()];
    let key =
        PrivateKeyDer::from_pem_slice(include_bytes!("tls/tls.test.test-only-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let request = read_request(&mut tls).await;
                let body = if request.starts_with(b"GET /secure HTTP/1.1\r\n") {
                    "secure ok\n"
                } else {
                    "unexpected\n"
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, Task(task))
}

/// The proxy, serving on both a unix socket and TCP, with its test servers.
struct Proxy {
    tcp: SocketAddr,
    unix: PathBuf,
    config: Arc<Config>,
    audit: Arc<RecordingAudit>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    serve_tcp: Task,
    _tasks: Vec<Task>,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proxy {
    async fn new() -> Proxy {
        Proxy::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut Config)) -> Proxy {
        let (origin_addr, seen, origin_task) = origin().await;
        let (echo_addr, echo_task) = echo().await;
        let (tls_addr, tls_task) = tls_origin().await;
        // A port nothing listens on: bind, note, close.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let entries: Vec<String> = [
            "allowed.test",
            "echo.test:443,7000",
            "*.example.test:443",
            "loop.test:443",
            "private.test:443",
            "meta.test:443",
            "v6loop.test:443",
            "mapped.test:443",
            "mixed.test:443",
            "down.test:443",
            "empty.test:443",
            "tls.test:443",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut config = Config::new(Policy::parse(&entries).unwrap());
        config.connect_timeout = Duration::from_secs(2);
        config.idle_timeout = Duration::from_secs(5);
        config.head_timeout = Duration::from_secs(2);
        for (name, addrs) in [
            ("allowed.test", vec![ORIGIN_IP]),
            ("echo.test", vec![ECHO_IP]),
            ("a.example.test", vec![ECHO_IP]),
            ("a.b.example.test", vec![ECHO_IP]),
            ("example.test", vec![ECHO_IP]),
            ("loop.test", vec!["127.0.0.1"]),
            ("private.test", vec!["10.1.2.3"]),
            ("meta.test", vec!["169.254.169.254"]),
            ("v6loop.test", vec!["::1"]),
            ("mapped.test", vec!["::ffff:127.0.0.1"]),
            ("mixed.test", vec![ECHO_IP, "192.168.1.1"]),
            ("down.test", vec![DOWN_IP]),
            ("empty.test", vec![]),
            ("tls.test", vec![TLS_IP]),
            // Not in the policy: resolvable, so a refusal is the policy's doing.
            ("nope.test", vec![ECHO_IP]),
        ] {
            config
                .resolve_override
                .insert(name.to_string(), addrs.into_iter().map(ip).collect());
        }
        config.dial_override.insert(ip(ORIGIN_IP), origin_addr);
        config.dial_override.insert(ip(ECHO_IP), echo_addr);
        config.dial_override.insert(ip(DOWN_IP), closed);
        config.dial_override.insert(ip(TLS_IP), tls_addr);
        config.extra_root_certs.push(test_ca().to_vec());
        tweak(&mut config);
        let config = Arc::new(config);
        let audit = Arc::new(RecordingAudit::new());

        let dir = std::env::temp_dir().join(format!(
            "warren-egress-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let unix = dir.join("proxy.sock");
        let unix_listener = UnixListener::bind(&unix).unwrap();
        let tcp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tcp_listener.local_addr().unwrap();
        let serve_unix_task =
            tokio::spawn(serve_unix(unix_listener, config.clone(), audit.clone()));
        let serve_tcp_task = tokio::spawn(serve_tcp(tcp_listener, config.clone(), audit.clone()));
        Proxy {
            tcp,
            unix,
            config,
            audit,
            seen,
            serve_tcp: Task(serve_tcp_task),
            _tasks: vec![Task(serve_unix_task), origin_task, echo_task, tls_task],
            dir,
        }
    }

    /// Waits for exactly `n` recorded attempts: at least `n` within the wait, and still `n`
    /// a moment later (no late duplicates).
    async fn attempts(&self, n: usize) -> Vec<Attempt> {
        let got = self.audit.wait_for(n, WAIT).await;
        assert!(got.len() >= n, "expected {n} attempts, got {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = self.audit.attempts();
        assert_eq!(got.len(), n, "expected exactly {n} attempts, got {got:#?}");
        got
    }

    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.tcp).await.unwrap()
    }
}

/// A unique-enough suffix for temp dirs of tests running in parallel in one process.
fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Sends `request`, reads until the proxy closes, returns the response as text.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a CONNECT and reads the proxy's answer head (byte by byte: nothing of the tunnel
/// is consumed).
async fn connect<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, target: &str) -> String {
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(s).await
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("no answer from the proxy")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends `n` patterned bytes through an open tunnel to the echo server and checks they come
/// back, then half-closes and expects the tunnel to close.
async fn echo_through<S: AsyncRead + AsyncWrite + Unpin>(s: S, n: usize) {
    let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = async {
        tokio::time::timeout(WAIT, r.read_to_end(&mut back))
            .await
            .expect("tunnel did not close after the echo")
            .unwrap();
    };
    tokio::join!(write, read);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

fn assert_denied(a: &Attempt, reason: &str) {
    match &a.decision {
        Decision::Denied(r) => assert!(r.contains(reason), "reason {r:?} lacks {reason:?}"),
        other => panic!("expected Denied({reason:?}), got {other:?}"),
    }
}

// --- CONNECT ---------------------------------------------------------------------------

#[tokio::test]
async fn connect_tunnel_carries_bytes_both_ways_and_is_audited_with_byte_counts() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    let answer = connect(&mut s, "echo.test:443").await;
    assert_eq!(answer, "HTTP/1.1 200 Connection Established\r\n\r\n");
    echo_through(s, 200_000).await;

    let a = &p.attempts(1).await[0];
    assert_eq!(a.method, "CONNECT");
    assert_eq!((a.host.as_str(), a.port), ("echo.test", 443));
    assert_eq!(a.resolved, vec![ip(ECHO_IP)]);
    assert_eq!(a.dialed, Some(ip(ECHO_IP)));
    assert_eq!(a.decision, Decision::Allowed);
    assert_eq!((a.bytes_up, a.bytes_down), (200_000, 200_000));
    assert!(a.duration > Duration::ZERO);
}

#[tokio::test]
async fn connect_over_the_unix_socket_works_the_same() {
    let p = Proxy::new().await;
    let mut s = UnixStream::connect(&p.unix).await.unwrap();
    assert!(
        connect(&mut s, "ECHO.test.:7000")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    echo_through(s, 10).await;
    let a = &p.attempts(1).await[0];
    assert_eq!((a.host.as_str(), a.port), ("echo.test", 7000));
    assert_eq!(
        (a.decision.clone(), a.bytes_up, a.bytes_down),
        (Decision::Allowed, 10, 10)
    );
}

#[tokio::test]
async fn bytes_sent_right_behind_the_connect_head_are_tunneled() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\n\r\nearly bytes")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut back = [0u8; 11];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"early bytes");
    drop(s);
    let a = &p.attempts(1).await[0];
    assert_eq!((a.bytes_up, a.bytes_down), (11, 11));
}

#[tokio::test]
async fn many_tunnels_at_once_are_each_audited_once() {
    let p = Proxy::new().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let addr = p.tcp;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            assert!(
                connect(&mut s, "echo.test:443")
                    .await
                    .starts_with("HTTP/1.1 200 ")
            );
            echo_through(s, 1000 + i).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let attempts = p.attempts(20).await;
    let mut sizes: Vec<u64> = attempts.iter().map(|a| a.bytes_up).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (1000..1020).collect::<Vec<u64>>());
    assert!(
        attempts
            .iter()
            .all(|a| a.decision == Decision::Allowed && a.bytes_up == a.bytes_down)
    );
}

// --- plain HTTP ------------------------------------------------------------------------

#[tokio::test]
async fn plain_get_is_forwarded_in_origin_form_with_connection_close_and_no_proxy_headers() {
    let p = Proxy::new().await;
    let request = "GET http://Allowed.test/path/x?q=1#frag HTTP/1.1\r\n\
                   Host: evil.test\r\n\
                   User-Agent: egress-test\r\n\
                   Proxy-Authorization: Basic c2VjcmV0\r\n\
                   Proxy-Connection: keep-alive\r\n\
                   Connection: keep-alive, X-Hop\r\n\
                   X-Hop: dropped\r\n\
                   Accept: */*\r\n\r\n";
    let response = exchange(p.tcp().await, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("X-Origin: yes"));
    assert!(response.ends_with(ORIGIN_BODY));

    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let forwarded = String::from_utf8(seen[0].clone()).unwrap();
    assert_eq!(
        forwarded,
        "GET /path/x?q=1 HTTP/1.1\r\n\
         Host: allowed.test\r\n\
         User-Agent: egress-test\r\n\
         Accept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    assert!(!forwarded.to_ascii_lowercase().contains("proxy-"));

    let a = &p.attempts(1).await[0];
    assert_eq!(a.method, "GET");
    assert_eq!((a.host.as_str(), a.port), ("allowed.test", 80));
    assert_eq!(a.dialed, Some(ip(ORIGIN_IP)));
    assert_eq!(a.decision, Decision::Allowed);
    assert_eq!(a.bytes_up, forwarded.len() as u64);
    assert_eq!(a.bytes_down, response.len() as u64);
}

#[tokio::test]
async fn plain_post_body_is_forwarded_by_content_length_even_when_it_arrives_later() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    s.write_all(b"POST http://allowed.test:443/submit HTTP/1.0\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = exchange(s, b" world").await;
    assert!(response.ends_with(ORIGIN_BODY), "{response}");
    let forwarded = String::from_utf8(p.seen.lock().unwrap()[0].clone()).unwrap();
    assert_eq!(
        forwarded,
        "POST /submit HTTP/1.0\r\nHost: allowed.test:443\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
    );
    let a = &p.attempts(1).await[0];
    assert_eq!((a.method.as_str(), a.port), ("POST", 443));
    assert_eq!(a.bytes_up, forwarded.len() as u64);
}

#[tokio::test]
async fn a_body_cut_short_by_the_client_ends_the_request_as_failed() {
    let p = Proxy::new().await;
    let response = exchange_half_closed(
        p.tcp().await,
        b"PUT http://allowed.test/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert_eq!(
        response, "",
        "no response relayed for an unfinished request"
    );
    let a = &p.attempts(1).await[0];
    assert!(
        matches!(&a.decision, Decision::Failed(r) if r.contains("closed before sending the whole body")),
        "{:?}",
        a.decision
    );
}

/// Like `exchange`, but half-closes after sending.
async fn exchange_half_closed<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> String {
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn chunked_request_bodies_are_refused_with_411() {
    let p = Proxy::new().await;
    let response = exchange(
        p.tcp().await,
        b"POST http://allowed.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 411 "), "{response}");
    assert!(p.seen.lock().unwrap().is_empty());
    assert_denied(&p.attempts(1).await[0], "chunked");
}

// --- refusals by name ------------------------------------------------------------------

#[tokio::test]
async fn a_name_not_in_the_allowlist_is_refused_with_403_and_audited() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    let answer = connect(&mut s, "nope.test:443").await;
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert_eq!(body, "egress denied: nope.test is not in the allowlist\n");
    drop(s);
    p.audit.wait_for(1, WAIT).await;

    let response = exchange(p.tcp().await, b"GET http://nope.test/ HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    assert!(response.ends_with("egress denied: nope.test is not in the allowlist\n"));

    let attempts = p.attempts(2).await;
    for (a, method) in attempts.iter().zip(["CONNECT", "GET"]) {
        assert_eq!(a.method, method);
        assert_eq!(a.host, "nope.test");
        assert_eq!(
            a.decision,
            Decision::Denied("nope.test is not in the allowlist".into())
        );
        assert!(a.resolved.is_empty(), "a refused name is not even resolved");
        assert_eq!(a.dialed, None);
        assert_eq!((a.bytes_up, a.bytes_down), (0, 0));
    }
    assert!(p.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_wildcard_allows_subdomains_at_any_depth_but_not_the_apex() {
    let p = Proxy::new().await;
    for host in ["a.example.test", "a.b.example.test"] {
        let mut s = p.tcp().await;
        let answer = connect(&mut s, &format!("{host}:443")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{host}: {answer}");
        echo_through(s, 3).await;
    }
    let mut s = p.tcp().await;
    assert!(
        connect(&mut s, "example.test:443")
            .await
            .starts_with("HTTP/1.1 403 ")
    );
    drop(s);
    let attempts = p.attempts(3).await;
    assert_eq!(
        attempts
            .iter()
            .filter(|a| a.decision == Decision::Allowed)
            .count(),
        2
    );
    let apex = attempts.iter().find(|a| a.host == "example.test").unwrap();
    assert_denied(apex, "example.test is not in the allowlist");
}

#[tokio::test]
async fn a_port_not_in_the_rule_is_refused() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    let answer = connect(&mut s, "allowed.test:22").await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    drop(s);
    let response = exchange(
        p.tcp().await,
        b"GET http://echo.test:8080/ HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(response.contains("port 8080 is not allowed for echo.test (allowed: 443, 7000)"));
    let attempts = p.attempts(2).await;
    assert_denied(
        &attempts[0],
        "port 22 is not allowed for allowed.test (allowed: 80, 443)",
    );
    assert_eq!(attempts[0].port, 22);
}

#[tokio::test]
async fn ip_literals_are_refused_even_public_ones() {
    let p = Proxy::new().await;
    for (target, extra) in [
        ("10.0.0.1:443", "(10.0.0.1 is private)"),
        ("203.0.113.10:443", ""),
        ("[::1]:443", "(::1 is loopback)"),
        ("[::ffff:169.254.169.254]:443", "is cloud metadata"),
    ] {
        let mut s = p.tcp().await;
        let answer = connect(&mut s, target).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "{target}: {answer}");
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(
            body.contains("IP literals are not allowed; use a name in the allowlist"),
            "{body}"
        );
        assert!(body.contains(extra), "{target}: {body}");
    }
    let response = exchange(p.tcp().await, b"GET http://127.0.0.1/ HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    let attempts = p.attempts(5).await;
    for a in &attempts {
        assert_denied(a, "IP literals are not allowed");
        assert_eq!(a.dialed, None);
    }
}

// --- refusals by address ---------------------------------------------------------------

#[tokio::test]
async fn allowed_names_resolving_to_forbidden_addresses_are_refused() {
    let p = Proxy::new().await;
    let cases = [
        ("loop.test", "loop.test resolves to 127.0.0.1 (loopback)"),
        (
            "private.test",
            "private.test resolves to 10.1.2.3 (private)",
        ),
        (
            "meta.test",
            "meta.test resolves to 169.254.169.254 (cloud metadata)",
        ),
        ("v6loop.test", "v6loop.test resolves to ::1 (loopback)"),
        (
            "mapped.test",
            "mapped.test resolves to ::ffff:127.0.0.1 (loopback)",
        ),
    ];
    for (host, reason) in cases {
        let mut s = p.tcp().await;
        let answer = connect(&mut s, &format!("{host}:443")).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "{host}: {answer}");
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert_eq!(body, format!("egress denied: {reason}\n"));
    }
    let attempts = p.attempts(cases.len()).await;
    for (a, (host, reason)) in attempts.iter().zip(cases) {
        assert_eq!(a.host, host);
        assert_eq!(a.decision, Decision::Denied(reason.into()));
        assert_eq!(a.resolved.len(), 1, "the answer is recorded");
        assert_eq!(a.dialed, None, "nothing was dialed");
    }
}

#[tokio::test]
async fn one_forbidden_address_among_public_ones_refuses_the_name() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    assert!(
        connect(&mut s, "mixed.test:443")
            .await
            .starts_with("HTTP/1.1 403 ")
    );
    drop(s);
    let a = &p.attempts(1).await[0];
    assert_eq!(a.resolved, vec![ip(ECHO_IP), ip("192.168.1.1")]);
    assert_denied(a, "mixed.test resolves to 192.168.1.1 (private)");
    assert_eq!(a.dialed, None);
}

// --- failures and bounds ---------------------------------------------------------------

#[tokio::test]
async fn a_dial_failure_is_502_and_audited_as_failed() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    let answer = connect(&mut s, "down.test:443").await;
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    drop(s);
    let mut s = p.tcp().await;
    assert!(
        connect(&mut s, "empty.test:443")
            .await
            .starts_with("HTTP/1.1 502 ")
    );
    drop(s);
    let attempts = p.attempts(2).await;
    assert_eq!(attempts[0].dialed, Some(ip(DOWN_IP)));
    assert!(
        matches!(&attempts[0].decision, Decision::Failed(r) if r.contains("connecting to 203.0.113.12 port 443")),
        "{:?}",
        attempts[0].decision
    );
    assert_eq!(
        attempts[1].decision,
        Decision::Failed("empty.test has no addresses".into())
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let p = Proxy::with(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut s = p.tcp().await;
    assert!(
        connect(&mut s, "echo.test:443")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let quiet_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel was not closed")
        .unwrap();
    let waited = quiet_since.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    let a = &p.attempts(1).await[0];
    assert_eq!(
        (a.decision.clone(), a.bytes_up, a.bytes_down),
        (Decision::Allowed, 1, 1)
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_with_431() {
    let p = Proxy::new().await;
    let mut request = b"GET http://allowed.test/ HTTP/1.1\r\n".to_vec();
    for i in 0..400 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    assert!(request.len() > 16 * 1024);
    let response = exchange(p.tcp().await, &request).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    let a = &p.attempts(1).await[0];
    assert_eq!(a.method, "GET");
    assert_denied(a, "request head larger than 16384 bytes");
    assert!(p.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_slow_request_head_is_refused_with_408() {
    let p = Proxy::with(|c| c.head_timeout = Duration::from_millis(300)).await;
    let mut s = p.tcp().await;
    s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nHost: ech")
        .await
        .unwrap();
    let started = Instant::now();
    let mut response = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut response))
        .await
        .expect("the proxy waited forever for the head")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let a = &p.attempts(1).await[0];
    assert_eq!(a.method, "CONNECT");
    assert_denied(a, "request head not received within");
}

#[tokio::test]
async fn malformed_requests_get_400_and_are_audited() {
    let p = Proxy::new().await;
    let cases: [(&[u8], &str); 8] = [
        (b"NONSENSE\r\n\r\n", "not METHOD TARGET VERSION"),
        (b"GET /relative HTTP/1.1\r\nHost: allowed.test\r\n\r\n", "send the absolute URL"),
        (b"GET https://allowed.test/ HTTP/1.1\r\n\r\n", "go through CONNECT"),
        (b"GET http://allowed.test@nope.test/ HTTP/1.1\r\n\r\n", "user info"),
        (b"CONNECT echo.test HTTP/1.1\r\n\r\n", "a port is required"),
        (b"GET http://allowed.test/ HTTP/1.1\nHost: x\r\n\r\n", "bare CR or LF"),
        (b"GET http://allowed.test/ HTTP/1.1\r\nHost : x\r\n\r\n", "bad header name"),
        (
            b"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "conflicting Content-Length",
        ),
    ];
    for (request, reason) in cases {
        let response = exchange(p.tcp().await, request).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{reason}: {response}"
        );
        assert!(response.contains(reason), "{reason}: {response}");
    }
    let attempts = p.attempts(cases.len()).await;
    for (a, (_, reason)) in attempts.iter().zip(cases) {
        assert_denied(a, reason);
    }
    assert!(p.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_not_an_attempt() {
    let p = Proxy::new().await;
    drop(p.tcp().await);
    drop(UnixStream::connect(&p.unix).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.audit.attempts().is_empty());
}

#[tokio::test]
async fn stopping_the_server_ends_open_tunnels_and_records_them_once() {
    let p = Proxy::new().await;
    let mut s = p.tcp().await;
    assert!(
        connect(&mut s, "echo.test:443")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    s.write_all(b"abc").await.unwrap();
    let mut three = [0u8; 3];
    s.read_exact(&mut three).await.unwrap();
    p.serve_tcp.0.abort();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the tunnel outlived its server");
    let a = &p.attempts(1).await[0];
    assert_eq!(a.decision, Decision::Failed("interrupted".into()));
    assert_eq!((a.bytes_up, a.bytes_down), (3, 3));
}

// --- fetch -----------------------------------------------------------------------------

#[tokio::test]
async fn fetch_returns_the_origins_response_and_caps_the_body() {
    let p = Proxy::new().await;
    let mut req = FetchRequest::get("http://allowed.test/doc?x=1");
    req.headers.push(("X-Agent".into(), "1".into()));
    req.headers
        .push(("Proxy-Authorization".into(), "dropped".into()));
    let r = fetch(&p.config, &*p.audit, &req).await;
    assert_eq!(r.error, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ORIGIN_BODY);
    assert!(!r.truncated);
    assert!(r.headers.contains(&("x-origin".into(), "yes".into())));
    let forwarded = String::from_utf8(p.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(
        forwarded.starts_with("GET /doc?x=1 HTTP/1.1\r\n"),
        "{forwarded}"
    );
    let lower = forwarded.to_ascii_lowercase();
    assert!(lower.contains("host: allowed.test\r\n"));
    assert!(lower.contains("connection: close\r\n"));
    assert!(lower.contains("x-agent: 1\r\n"));
    assert!(!lower.contains("proxy-"));

    req.max_body_bytes = 5;
    let r = fetch(&p.config, &*p.audit, &req).await;
    assert_eq!((r.body.as_str(), r.truncated), ("hello", true));

    let attempts = p.attempts(2).await;
    assert_eq!(attempts[0].decision, Decision::Allowed);
    assert_eq!(attempts[0].bytes_up, forwarded.len() as u64);
    assert!(attempts[0].bytes_down > ORIGIN_BODY.len() as u64);
    assert_eq!(
        (attempts[0].host.as_str(), attempts[0].port),
        ("allowed.test", 80)
    );
}

#[tokio::test]
async fn fetch_posts_a_body() {
    let p = Proxy::new().await;
    let req: FetchRequest = serde_json::from_str(
        r#"{"method":"POST","url":"http://allowed.test/in","body":"{\"a\":1}","headers":[["Content-Type","application/json"]]}"#,
    )
    .unwrap();
    let r = fetch(&p.config, &*p.audit, &req).await;
    assert_eq!((r.status, r.error.clone()), (200, None));
    let forwarded = String::from_utf8(p.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(forwarded.starts_with("POST /in HTTP/1.1\r\n"));
    assert!(
        forwarded
            .to_ascii_lowercase()
            .contains("content-length: 7\r\n")
    );
    assert!(forwarded.ends_with("\r\n\r\n{\"a\":1}"));
    assert_eq!(p.attempts(1).await[0].method, "POST");
}

#[tokio::test]
async fn fetch_refusals_come_back_as_errors_not_panics() {
    let p = Proxy::new().await;
    let cases = [
        (
            "http://nope.test/",
            "egress denied: nope.test is not in the allowlist",
        ),
        (
            "http://meta.test:443/",
            "egress denied: meta.test resolves to 169.254.169.254 (cloud metadata)",
        ),
        (
            "http://10.0.0.1/",
            "egress denied: IP literals are not allowed",
        ),
        ("ftp://allowed.test/", "egress denied: bad URL"),
        (
            "http://down.test:443/",
            "egress failed: connecting to 203.0.113.12",
        ),
    ];
    for (url, error) in cases {
        let r = fetch(&p.config, &*p.audit, &FetchRequest::get(url)).await;
        assert_eq!(r.status, 0, "{url}");
        let got = r.error.unwrap();
        assert!(got.starts_with(error), "{url}: {got}");
    }
    let attempts = p.attempts(cases.len()).await;
    assert!(
        attempts[..4]
            .iter()
            .all(|a| matches!(a.decision, Decision::Denied(_)))
    );
    assert!(matches!(attempts[4].decision, Decision::Failed(_)));
    assert!(p.seen.lock().unwrap().is_empty());
    // A request that cannot be sent is refused before anything is resolved or dialed.
    let mut bad = FetchRequest::get("http://allowed.test/");
    bad.headers
        .push(("X-Smuggle".into(), "a\r\nHost: evil.test".into()));
    let r = fetch(&p.config, &*p.audit, &bad).await;
    assert!(r.error.unwrap().starts_with("egress denied: bad header"));
    bad.headers.clear();
    bad.method = "GET /x HTTP/1.1\r\n".into();
    let r = fetch(&p.config, &*p.audit, &bad).await;
    assert!(r.error.unwrap().starts_with("egress denied: bad method"));
    let attempts = p.attempts(cases.len() + 2).await;
    for a in &attempts[cases.len()..] {
        assert!(matches!(a.decision, Decision::Denied(_)));
        assert_eq!((a.resolved.len(), a.dialed), (0, None));
    }
    // The wire form an interface would hand back.
    let json = serde_json::to_value(
        fetch(
            &p.config,
            &*p.audit,
            &FetchRequest::get("http://nope.test/"),
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["status"], 0);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("not in the allowlist")
    );
}

#[tokio::test]
async fn fetch_https_checks_the_certificate_against_the_allowed_name() {
    let p = Proxy::new().await;
    let r = fetch(
        &p.config,
        &*p.audit,
        &FetchRequest::get("https://tls.test/secure"),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str(), r.error.clone()),
        (200, "secure ok\n", None)
    );

    // The same server, without the test CA: an untrusted certificate fails the request.
    let mut untrusting = (*p.config).clone();
    untrusting.extra_root_certs.clear();
    let r = fetch(
        &untrusting,
        &*p.audit,
        &FetchRequest::get("https://tls.test/secure"),
    )
    .await;
    let error = r.error.unwrap();
    assert!(error.contains("TLS handshake with tls.test"), "{error}");

    // A server that does not speak TLS (the echo server) fails the handshake.
    let r = fetch(
        &p.config,
        &*p.audit,
        &FetchRequest::get("https://echo.test/"),
    )
    .await;
    let error = r.error.unwrap();
    assert!(error.contains("TLS handshake with echo.test"), "{error}");

    let attempts = p.attempts(3).await;
    assert_eq!(attempts[0].decision, Decision::Allowed);
    assert!(attempts[0].bytes_up > 0 && attempts[0].bytes_down > 0);
    assert!(matches!(&attempts[1].decision, Decision::Failed(r) if r.contains("TLS handshake")));
    assert!(matches!(&attempts[2].decision, Decision::Failed(_)));
}

// --- a real client ---------------------------------------------------------------------

/// Runs curl with `args`, or returns `None` (after saying why) when curl is missing outside
/// CI. In CI (CI=true) a missing curl fails the test.
async fn curl(args: Vec<String>) -> Option<std::process::Output> {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "curl is required in CI (install it with apt-get install curl)"
        );
        eprintln!("skipped: curl is not installed");
        return None;
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .arg("-q") // no ~/.curlrc
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(&args)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Some(output)
}

#[tokio::test]
async fn curl_fetches_plain_http_through_the_proxy() {
    let p = Proxy::new().await;
    let proxy = format!("http://{}", p.tcp);
    let Some(out) = curl(vec![
        "-x".into(),
        proxy.clone(),
        "http://allowed.test/curl".into(),
    ])
    .await
    else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), ORIGIN_BODY);
    let forwarded = String::from_utf8(p.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(
        forwarded.starts_with("GET /curl HTTP/1.1\r\nHost: allowed.test\r\n"),
        "{forwarded}"
    );
    assert!(forwarded.ends_with("Connection: close\r\n\r\n"));
    assert!(!forwarded.to_ascii_lowercase().contains("proxy-"));

    let out = curl(vec![
        "-x".into(),
        proxy,
        "-w".into(),
        "%{http_code}".into(),
        "http://nope.test/".into(),
    ])
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("403"));
    let attempts = p.attempts(2).await;
    assert_eq!(attempts[0].decision, Decision::Allowed);
    assert_denied(&attempts[1], "nope.test is not in the allowlist");
}

#[tokio::test]
async fn curl_tunnels_through_connect() {
    let p = Proxy::new().await;
    let proxy = format!("http://{}", p.tcp);
    let Some(out) = curl(vec![
        "-p".into(),
        "-x".into(),
        proxy.clone(),
        "http://allowed.test/tunneled".into(),
    ])
    .await
    else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), ORIGIN_BODY);
    // Through a tunnel the origin sees curl's own request, untouched.
    let forwarded = String::from_utf8(p.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(
        forwarded.starts_with("GET /tunneled HTTP/1.1\r\n"),
        "{forwarded}"
    );

    let out = curl(vec![
        "-p".into(),
        "-x".into(),
        proxy,
        "http://loop.test:443/".into(),
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let attempts = p.attempts(2).await;
    assert_eq!(attempts[0].method, "CONNECT");
    assert_eq!(
        (attempts[0].host.as_str(), attempts[0].port),
        ("allowed.test", 80)
    );
    assert_eq!(attempts[0].decision, Decision::Allowed);
    assert_eq!(attempts[0].bytes_up, forwarded.len() as u64);
    assert_denied(&attempts[1], "loop.test resolves to 127.0.0.1 (loopback)");
}

#[test]
fn a_fetch_request_needs_only_a_url_in_json() {
    let req: FetchRequest = serde_json::from_str(r#"{"url":"https://a.test/"}"#).unwrap();
    assert_eq!(req, FetchRequest::get("https://a.test/"));
    assert_eq!(req.max_body_bytes, 1024 * 1024);
}
