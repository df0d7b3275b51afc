//! Warren's host-side egress proxy: the only way out of a cell, to an operator's allowlist.
//!
//! A cell has no network. When the operator's policy allows some domains, the one thing the
//! cell can reach is this proxy (served on a unix socket and exposed inside the cell as
//! `127.0.0.1:<port>` by a forwarder). Programs in the cell use it as an ordinary HTTP proxy
//! (`HTTPS_PROXY=http://127.0.0.1:<port>`): `CONNECT host:443` for TLS, absolute-form
//! `GET http://host/path` for plain HTTP. [`fetch`] does one HTTP request under the same rules
//! for interfaces that are not a socket.
//!
//! # What it stops
//!
//! - **Names not on the allowlist.** Every request is decided by the *name* asked for
//!   ([`Policy::allows`]): exact names or `*.suffix` wildcards, on listed ports (80 and 443
//!   by default). IP literals are always refused, so the allowlist cannot be skipped by
//!   asking for an address.
//! - **Allowed names that point inside.** Every address the name resolves to is checked by
//!   [`forbidden`] (loopback, private ranges, link-local and cloud metadata services, CGNAT,
//!   multicast, and the IPv6 forms that smuggle any of them). If *any* address is forbidden,
//!   the request is refused: an attacker who controls an allowed zone's DNS cannot reach the
//!   host's own services or the cloud metadata endpoint.
//! - **DNS rebinding.** The name is resolved exactly once; the proxy dials one of the
//!   addresses it checked, never re-resolving, so a second, different DNS answer never reaches
//!   a socket.
//! - **Holding the proxy hostage.** The request head is bounded in size and time, tunnels with
//!   no traffic either way are closed after an idle timeout, and connections are capped.
//! - **Going unseen.** Every attempt, allowed or not, is handed to an [`Audit`] exactly once,
//!   with the name, the addresses, the decision and its reason, and the bytes each way.
//!
//! # What it does not stop
//!
//! - **Exfiltration to an allowed destination.** An allowed host receives whatever the cell
//!   sends it. A `CONNECT` tunnel is opaque TLS: the proxy sees the name and byte counts, not
//!   the content, and does not check that the TLS SNI matches the name (a host that serves
//!   several names behind one address, like a CDN, may be reached under a different SNI).
//!   Allowing a domain that hosts user content (a paste site, a cloud bucket service) allows
//!   writing to it.
//! - **Covert channels in allowed traffic**, such as encoding data in the names of an
//!   allowed wildcard (`<data>.example.com` resolves through the host's resolver, so the
//!   lookup itself leaves the machine even when the name's addresses are then refused).
//! - **What the allowed host does next.** Redirects are the client's business: [`fetch`] does
//!   not follow them, and a client following one through the proxy makes a new, checked
//!   request.
//!
//! The proxy speaks just enough HTTP/1.1 to route: one request per client connection, answered
//! with `Connection: close`; chunked request bodies are refused (411).

#![deny(clippy::print_stdout, clippy::print_stderr)]

mod addr;
mod allowlist;
mod fetch;
mod head;
mod proxy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

pub use addr::forbidden;
pub use allowlist::{
    DEFAULT_PORTS, Denied, IP_LITERAL_REASON, NameProblem, Policy, PolicyError, Rule, RuleProblem,
};
pub use fetch::{FetchRequest, FetchResponse, fetch};
pub use proxy::{serve_tcp, serve_unix};

/// Everything the proxy needs to decide and dial. Shared read-only by all connections.
#[derive(Clone, Debug)]
pub struct Config {
    /// The allowlist.
    pub policy: Policy,
    /// Test hook: answer these names (lower case, no trailing dot) from this map instead of
    /// the system resolver. Names not in the map still go to the system resolver.
    pub resolve_override: HashMap<String, Vec<IpAddr>>,
    /// Test hook: after the policy check on a resolved address, dial this socket address
    /// (including its port) instead. Lets tests point an allowed public-looking address at a
    /// local test server. Never consulted for the check itself.
    pub dial_override: HashMap<IpAddr, SocketAddr>,
    /// Bound on resolving a name, and separately on connecting to its addresses (all of
    /// them, tried in order).
    pub connect_timeout: Duration,
    /// A tunnel or relayed request with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// The client must send its whole request head within this time (answered 408 if not).
    pub head_timeout: Duration,
    /// The largest request head accepted, request line and headers (answered 431 if larger).
    pub max_head_bytes: usize,
    /// Connections served at once by one `serve_*` call; more wait in the listen backlog.
    pub max_connections: usize,
    /// Test hook: extra trust anchors for [`fetch`]'s `https://`, as DER certificates, in
    /// addition to the built-in web PKI roots.
    pub extra_root_certs: Vec<Vec<u8>>,
}

impl Config {
    /// A configuration with `policy` and the defaults: 10 s to resolve and 10 s to connect,
    /// 5 min idle, 10 s and 16 KiB for the request head, 256 connections, no test hooks.
    pub fn new(policy: Policy) -> Config {
        Config {
            policy,
            resolve_override: HashMap::new(),
            dial_override: HashMap::new(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_connections: 256,
            extra_root_certs: Vec::new(),
        }
    }
}

/// One attempt to leave a cell, allowed or not, as handed to [`Audit::record`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// `CONNECT` for a tunnel, else the HTTP method (`GET`, `POST`, ...); for a request that
    /// could not be parsed, whatever came before the first space, possibly empty.
    pub method: String,
    /// The host asked for, normalized (lower case, no trailing dot) when it was a valid name;
    /// empty when the request was too malformed to name one.
    pub host: String,
    /// The port asked for (0 when unknown).
    pub port: u16,
    /// Every address the name resolved to (empty when refused before resolving).
    pub resolved: Vec<IpAddr>,
    /// The checked address the proxy connected to, or last tried to. Never an address that
    /// was not in `resolved`; the test hook `dial_override` may have redirected the socket.
    pub dialed: Option<IpAddr>,
    /// What happened.
    pub decision: Decision,
    /// Bytes sent from the cell to the destination (the request body or tunnel payload; the
    /// forwarded request head of a plain HTTP request counts too).
    pub bytes_up: u64,
    /// Bytes sent from the destination back to the cell.
    pub bytes_down: u64,
    /// When the attempt started: the client's connection was accepted, or `fetch` was called.
    pub started: SystemTime,
    /// How long the attempt lasted, from the client's connection (or the `fetch` call) to
    /// the close.
    pub duration: Duration,
}

/// The outcome of an [`Attempt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The policy allowed it and the connection was made (it may have been closed later for
    /// idleness or by either end: that is still `Allowed`).
    Allowed,
    /// Refused by the proxy; the reason is for people (it is also the 403 body).
    Denied(String),
    /// Allowed, but resolving, dialing or the exchange failed.
    Failed(String),
}

/// Where attempts go. Implementations must be quick and must not block on I/O for long: they
/// are called on the connection's task, once per attempt, when it ends.
pub trait Audit: Send + Sync {
    /// Records one attempt.
    fn record(&self, a: &Attempt);
}

/// An [`Audit`] that keeps every attempt in memory: a fake for tests, public so that other
/// crates' tests can use it.
#[derive(Debug, Default)]
pub struct RecordingAudit {
    attempts: Mutex<Vec<Attempt>>,
}

impl RecordingAudit {
    /// An empty recorder.
    pub fn new() -> RecordingAudit {
        RecordingAudit::default()
    }

    /// A copy of everything recorded so far, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until at least `n` attempts are recorded, or `timeout` passes, and returns what
    /// is recorded then. Attempts are recorded when a connection ends, so a test that has
    /// just seen a response close waits here rather than sleeping.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.attempts();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Audit for RecordingAudit {
    fn record(&self, a: &Attempt) {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(a.clone());
    }
}

/// Builds an [`Attempt`] as a request goes along and records it exactly once: by
/// [`Recorder::finish`], or, if the connection's task is dropped first (the server shut
/// down), on drop as `Failed("interrupted")`.
pub(crate) struct Recorder<'a> {
    audit: &'a dyn Audit,
    attempt: Attempt,
    t0: Instant,
    done: bool,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(audit: &'a dyn Audit) -> Recorder<'a> {
        Recorder {
            audit,
            attempt: Attempt {
                method: String::new(),
                host: String::new(),
                port: 0,
                resolved: Vec::new(),
                dialed: None,
                decision: Decision::Failed("interrupted".into()),
                bytes_up: 0,
                bytes_down: 0,
                started: SystemTime::now(),
                duration: Duration::ZERO,
            },
            t0: Instant::now(),
            done: false,
        }
    }

    pub(crate) fn attempt(&mut self) -> &mut Attempt {
        &mut self.attempt
    }

    /// Records nothing: the connection was not an attempt (it closed without a byte).
    pub(crate) fn discard(mut self) {
        self.done = true;
    }

    pub(crate) fn finish(mut self, decision: Decision) {
        self.attempt.decision = decision;
        self.record();
    }

    fn record(&mut self) {
        if !self.done {
            self.done = true;
            self.attempt.duration = self.t0.elapsed();
            self.audit.record(&self.attempt);
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.record();
    }
}

/// Why a request did not get a connection: the policy said no (403), or an allowed request
/// failed to resolve or connect (502).
#[derive(Debug)]
pub(crate) enum Refusal {
    Denied(String),
    Failed(String),
}

impl Refusal {
    pub(crate) fn decision(&self) -> Decision {
        match self {
            Refusal::Denied(r) => Decision::Denied(r.clone()),
            Refusal::Failed(r) => Decision::Failed(r.clone()),
        }
    }
}

/// A TCP connection to `host:port` through the whole gate — the policy by name, one
/// resolution, the address check on every answer, a dial of a checked address — for a
/// capability that speaks its own protocol over it (`/cap/ws`). The attempt is recorded in
/// `audit` under `method` (e.g. `WEBSOCKET`) as allowed once connected, or with the refusal
/// or failure; the bytes that later cross the connection are the caller's to count.
pub async fn connect(
    config: &Config,
    audit: &dyn Audit,
    method: &str,
    host: &str,
    port: u16,
) -> Result<TcpStream, Decision> {
    let mut rec = Recorder::new(audit);
    rec.attempt().method = method.to_string();
    match open(config, host, port, rec.attempt()).await {
        Ok(s) => {
            rec.finish(Decision::Allowed);
            Ok(s)
        }
        Err(r) => {
            let d = r.decision();
            rec.finish(d.clone());
            Err(d)
        }
    }
}

/// The whole gate, in order: the policy by name, one resolution, the address check on every
/// answer, then a connection to a checked address. Fills in the attempt's host, port,
/// resolved and dialed fields as it learns them.
pub(crate) async fn open(
    config: &Config,
    host: &str,
    port: u16,
    attempt: &mut Attempt,
) -> Result<TcpStream, Refusal> {
    attempt.host = host.to_string();
    attempt.port = port;
    let name = allowlist::normalize_host(host).map_err(|d| Refusal::Denied(d.reason))?;
    attempt.host.clone_from(&name);
    config
        .policy
        .allows(&name, port)
        .map_err(|d| Refusal::Denied(d.reason))?;
    let addrs = resolve(config, &name, port).await?;
    attempt.resolved.clone_from(&addrs);
    if let Some((ip, what)) = addrs
        .iter()
        .find_map(|ip| forbidden(*ip).map(|what| (ip, what)))
    {
        return Err(Refusal::Denied(format!("{name} resolves to {ip} ({what})")));
    }
    // Resolved once, checked, and only these addresses are ever dialed (no re-resolution, so
    // a rebinding DNS server's second answer never matters).
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut last_err = String::new();
    for ip in &addrs {
        attempt.dialed = Some(*ip);
        let target = config
            .dial_override
            .get(ip)
            .copied()
            .unwrap_or(SocketAddr::new(*ip, port));
        match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last_err = format!("connecting to {ip} port {port}: {e}"),
            Err(_) => {
                last_err = format!(
                    "connecting to {name} port {port} timed out after {:?}",
                    config.connect_timeout
                );
                break;
            }
        }
    }
    Err(Refusal::Failed(last_err))
}

async fn resolve(config: &Config, name: &str, port: u16) -> Result<Vec<IpAddr>, Refusal> {
    let mut addrs: Vec<IpAddr> = match config.resolve_override.get(name) {
        Some(list) => list.clone(),
        None => {
            match tokio::time::timeout(
                config.connect_timeout,
                tokio::net::lookup_host((name, port)),
            )
            .await
            {
                Ok(Ok(it)) => it.map(|sa| sa.ip()).collect(),
                Ok(Err(e)) => return Err(Refusal::Failed(format!("resolving {name}: {e}"))),
                Err(_) => {
                    return Err(Refusal::Failed(format!(
                        "resolving {name} timed out after {:?}",
                        config.connect_timeout
                    )));
                }
            }
        }
    };
    let mut seen = Vec::with_capacity(addrs.len());
    addrs.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    if addrs.is_empty() {
        return Err(Refusal::Failed(format!("{name} has no addresses")));
    }
    Ok(addrs)
}
