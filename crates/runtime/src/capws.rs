//! `/cap/ws`: WebSocket connections as files (after OANIX), reached only through the egress
//! policy, served live by the host.
//!
//! ```text
//! /cap/ws/README
//! /cap/ws/ctl            write `connect ws://host[:port]/path`, read back the new id ("1\n");
//!                        write `close ID`, read back "ok\n"
//! /cap/ws/ID/out         each write sends one message (text when UTF-8, else binary)
//! /cap/ws/ID/in          a handle reads one received message (waiting up to 30 s), then EOF
//! /cap/ws/ID/status      "open\n", or "closed: why\n"
//! ```
//!
//! Everything a module writes is hostile: the control line is capped and parsed strictly,
//! only `ws://` with a host and no user info is accepted, the host goes through the same
//! allowlist, resolution and address checks as the proxy (and is audited as `WEBSOCKET`),
//! connections per service and message sizes are bounded, and a peer's close or failure is
//! reported in `status`, never a panic. `wss://` is refused for now (no TLS client here yet).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};
use warren_ns::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

/// The README placed in `/cap/ws`.
pub const README: &str = "Open a WebSocket: write `connect ws://host/path` to /cap/ws/ctl and read the\nconnection's id from the same handle. Then write messages to /cap/ws/ID/out (one write,\none message), read each received message from a fresh handle on /cap/ws/ID/in, and see\n/cap/ws/ID/status. `close ID` on ctl closes it. Only destinations your task may reach are\nallowed; every connection is audited.\n";

/// Connections one service holds at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The largest message sent or received.
pub const MAX_MESSAGE: usize = 1 << 20;
/// How long a read of `in` waits for a message.
pub const READ_WAIT: Duration = Duration::from_secs(30);
const MAX_CTL: usize = 4096;

struct Conn {
    socket: Mutex<WebSocket<TcpStream>>,
    status: Mutex<String>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, WebSocket<TcpStream>> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
    fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Inner {
    config: Arc<warren_egress::Config>,
    audit: Arc<dyn warren_egress::Audit>,
    rt: tokio::runtime::Runtime,
    conns: Mutex<BTreeMap<u32, Arc<Conn>>>,
    next: Mutex<u32>,
}

/// The `/cap/ws` service.
#[derive(Clone)]
pub struct WsFs(Arc<Inner>);

impl WsFs {
    /// A service whose connections go through `config`'s policy, audited in `audit`.
    pub fn new(
        config: Arc<warren_egress::Config>,
        audit: Arc<dyn warren_egress::Audit>,
    ) -> Result<WsFs> {
        let rt = io_runtime("cap/ws")?;
        Ok(WsFs(Arc::new(Inner {
            config,
            audit,
            rt,
            conns: Mutex::new(BTreeMap::new()),
            next: Mutex::new(1),
        })))
    }

    fn conns(&self) -> MutexGuard<'_, BTreeMap<u32, Arc<Conn>>> {
        self.0.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self, id: &str, path: &NsPath) -> Result<Arc<Conn>> {
        id.parse::<u32>()
            .ok()
            .and_then(|n| self.conns().get(&n).cloned())
            .ok_or_else(|| NsError::NotFound(path.to_string()))
    }

    /// Run one control line; the answer is what the handle reads.
    fn control(&self, line: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(line) else {
            return "error: the control line is not UTF-8\n".into();
        };
        let text = text.trim();
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        match verb {
            "connect" => match self.connect(arg.trim()) {
                Ok(id) => format!("{id}\n"),
                Err(e) => format!("error: {e}\n"),
            },
            "close" => match arg
                .trim()
                .parse::<u32>()
                .ok()
                .and_then(|n| self.conns().remove(&n))
            {
                Some(c) => {
                    let _ = c.lock().close(None);
                    let _ = c.lock().flush();
                    "ok\n".into()
                }
                None => format!("error: no connection {:?}\n", arg.trim()),
            },
            _ => "error: expected `connect ws://host/path` or `close ID`\n".into(),
        }
    }

    fn connect(&self, url: &str) -> std::result::Result<u32, String> {
        if self.conns().len() >= MAX_CONNECTIONS {
            return Err(format!("at most {MAX_CONNECTIONS} connections at once"));
        }
        let inner = &self.0;
        let socket = dial(
            &inner.rt,
            &inner.config,
            inner.audit.as_ref(),
            url,
            READ_WAIT,
        )?;
        let mut next = inner.next.lock().unwrap_or_else(|p| p.into_inner());
        let id = *next;
        *next += 1;
        self.conns().insert(
            id,
            Arc::new(Conn {
                socket: Mutex::new(socket),
                status: Mutex::new("open".into()),
            }),
        );
        Ok(id)
    }
}

/// A WebSocket client connection to `url` (`ws://` only, parsed strictly) through the egress
/// gate (audited as `WEBSOCKET`), with `wait` as its read and write timeout and messages
/// capped at [`MAX_MESSAGE`]. Errors say `refused: …` or `failed: …`.
pub(crate) fn dial(
    rt: &tokio::runtime::Runtime,
    config: &warren_egress::Config,
    audit: &dyn warren_egress::Audit,
    url: &str,
    wait: Duration,
) -> std::result::Result<WebSocket<TcpStream>, String> {
    let (host, port, path) = parse_ws_url(url)?;
    let stream = crate::caphttp::block_on(
        rt,
        warren_egress::connect(config, audit, "WEBSOCKET", &host, port),
    )
    .map_err(|()| "failed: the connection attempt failed".to_string())?
    .map_err(|d| match d {
        warren_egress::Decision::Denied(why) => format!("refused: {why}"),
        warren_egress::Decision::Failed(why) => format!("failed: {why}"),
        warren_egress::Decision::Allowed => "failed".into(),
    })?;
    let stream = stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .map_err(|e| format!("failed: {e}"))?;
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(wait)))
        .map_err(|e| format!("failed: {e}"))?;
    let authority = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    tungstenite::client::client_with_config(format!("ws://{authority}{path}"), stream, Some(config))
        .map(|(socket, _)| socket)
        .map_err(|e| format!("failed: WebSocket handshake: {e}"))
}

/// A current-thread tokio runtime for a capability service's I/O.
pub(crate) fn io_runtime(what: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NsError::Failed(format!("{what} runtime: {e}")))
}

/// `ws://host[:port][/path]` → (host, port, path). Only `ws://`; no user info, no fragment.
fn parse_ws_url(url: &str) -> std::result::Result<(String, u16, String), String> {
    if url.starts_with("wss://") {
        return Err("wss:// is not supported yet (use ws://)".into());
    }
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url:?} is not a ws:// URL"))?;
    if rest.chars().any(|c| c.is_control() || c == ' ' || c == '#') {
        return Err("the URL has spaces, control characters or a fragment".into());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    if authority.contains('@') {
        return Err("user info in the URL is refused".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        ),
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok((host, port, path))
}

impl FileService for WsFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        let file = |writable| Stat {
            kind: Kind::File,
            size: 0,
            writable,
        };
        match path.parts() {
            [] => Ok(Stat {
                kind: Kind::Dir,
                size: 0,
                writable: false,
            }),
            [n] if n == "README" => Ok(Stat {
                size: README.len() as u64,
                ..file(false)
            }),
            [n] if n == "ctl" => Ok(file(true)),
            [id] => self.conn(id, path).map(|_| Stat {
                kind: Kind::Dir,
                size: 0,
                writable: false,
            }),
            [id, f] if f == "in" || f == "status" => self.conn(id, path).map(|_| file(false)),
            [id, f] if f == "out" => self.conn(id, path).map(|_| file(true)),
            _ => Err(NsError::NotFound(path.to_string())),
        }
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        let f = |n: &str| Entry {
            name: n.into(),
            kind: Kind::File,
        };
        match path.parts() {
            [] => {
                let mut v = vec![f("README"), f("ctl")];
                v.extend(self.conns().keys().map(|id| Entry {
                    name: id.to_string(),
                    kind: Kind::Dir,
                }));
                v.sort();
                Ok(v)
            }
            [id] => self
                .conn(id, path)
                .map(|_| vec![f("in"), f("out"), f("status")]),
            _ => Err(NsError::NotADirectory(path.to_string())),
        }
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let ro = |m: OpenMode| {
            if m.write || m.create || m.truncate {
                Err(NsError::Denied(path.to_string()))
            } else {
                Ok(())
            }
        };
        match path.parts() {
            [n] if n == "README" => {
                ro(mode)?;
                Ok(Box::new(Snapshot(README.as_bytes().to_vec())))
            }
            [n] if n == "ctl" => Ok(Box::new(Ctl {
                svc: self.clone(),
                request: Vec::new(),
                answer: None,
            })),
            [id, f] if f == "status" => {
                ro(mode)?;
                let c = self.conn(id, path)?;
                Ok(Box::new(Snapshot(format!("{}\n", c.status()).into_bytes())))
            }
            [id, f] if f == "in" => {
                ro(mode)?;
                Ok(Box::new(In {
                    conn: self.conn(id, path)?,
                    message: None,
                }))
            }
            [id, f] if f == "out" => Ok(Box::new(Out {
                conn: self.conn(id, path)?,
            })),
            [_] | [] => Err(NsError::IsADirectory(path.to_string())),
            _ => Err(NsError::NotFound(path.to_string())),
        }
    }
}

fn read_from(data: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = (offset as usize).min(data.len());
    let n = buf.len().min(data.len() - start);
    buf[..n].copy_from_slice(&data[start..start + n]);
    n
}

struct Snapshot(Vec<u8>);

impl Handle for Snapshot {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        Ok(read_from(&self.0, offset, buf))
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<usize> {
        Err(NsError::Denied("read-only".into()))
    }
    fn set_len(&mut self, _: u64) -> Result<()> {
        Err(NsError::Denied("read-only".into()))
    }
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

struct Ctl {
    svc: WsFs,
    request: Vec<u8>,
    answer: Option<Vec<u8>>,
}

impl Handle for Ctl {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if self.answer.is_none() {
            self.answer = Some(self.svc.control(&self.request).into_bytes());
        }
        Ok(read_from(
            self.answer.as_deref().unwrap_or_default(),
            offset,
            buf,
        ))
    }
    fn write_at(&mut self, _offset: u64, data: &[u8]) -> Result<usize> {
        if self.request.len() + data.len() > MAX_CTL {
            return Err(NsError::NoSpace {
                path: "/cap/ws/ctl".into(),
                limit: MAX_CTL as u64,
            });
        }
        self.answer = None;
        self.request.extend_from_slice(data);
        Ok(data.len())
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        self.request.truncate(len as usize);
        Ok(())
    }
    fn size(&self) -> Result<u64> {
        Ok(self.answer.as_ref().map_or(0, Vec::len) as u64)
    }
}

struct Out {
    conn: Arc<Conn>,
}

impl Handle for Out {
    fn read_at(&mut self, _: u64, _: &mut [u8]) -> Result<usize> {
        Err(NsError::Denied("/cap/ws/ID/out is write-only".into()))
    }
    fn write_at(&mut self, _offset: u64, data: &[u8]) -> Result<usize> {
        if data.len() > MAX_MESSAGE {
            return Err(NsError::NoSpace {
                path: "/cap/ws/ID/out".into(),
                limit: MAX_MESSAGE as u64,
            });
        }
        let msg = match std::str::from_utf8(data) {
            Ok(t) => Message::text(t.to_owned()),
            Err(_) => Message::binary(data.to_vec()),
        };
        let r = self.conn.lock().send(msg);
        match r {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.conn.set_status(format!("closed: {e}"));
                Err(NsError::Failed(format!("send: {e}")))
            }
        }
    }
    fn set_len(&mut self, _: u64) -> Result<()> {
        Ok(())
    }
    fn size(&self) -> Result<u64> {
        Ok(0)
    }
}

struct In {
    conn: Arc<Conn>,
    message: Option<Vec<u8>>,
}

impl Handle for In {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if self.message.is_none() {
            let mut ws = self.conn.lock();
            let got = loop {
                match ws.read() {
                    Ok(Message::Text(t)) => break Ok(t.as_bytes().to_vec()),
                    Ok(Message::Binary(b)) => break Ok(b.to_vec()),
                    Ok(Message::Close(f)) => {
                        break Err(format!(
                            "closed by the peer{}",
                            f.map(|f| format!(": {} {}", u16::from(f.code), f.reason))
                                .unwrap_or_default()
                        ));
                    }
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        drop(ws);
                        return Err(NsError::Failed(format!("no message within {READ_WAIT:?}")));
                    }
                    Err(e) => break Err(format!("closed: {e}")),
                }
            };
            drop(ws);
            match got {
                Ok(m) => self.message = Some(m),
                Err(why) => {
                    self.conn.set_status(why.clone());
                    self.message = Some(Vec::new());
                }
            }
        }
        Ok(read_from(
            self.message.as_deref().unwrap_or_default(),
            offset,
            buf,
        ))
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<usize> {
        Err(NsError::Denied("/cap/ws/ID/in is read-only".into()))
    }
    fn set_len(&mut self, _: u64) -> Result<()> {
        Err(NsError::Denied("/cap/ws/ID/in is read-only".into()))
    }
    fn size(&self) -> Result<u64> {
        Ok(self.message.as_ref().map_or(0, Vec::len) as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn attack_ws_urls_are_parsed_strictly() {
        assert_eq!(
            parse_ws_url("ws://echo.test:8080/chat?x=1").unwrap(),
            ("echo.test".into(), 8080, "/chat?x=1".into())
        );
        assert_eq!(
            parse_ws_url("ws://echo.test").unwrap(),
            ("echo.test".into(), 80, "/".into())
        );
        for bad in [
            "http://echo.test/",
            "wss://echo.test/",
            "ws://user:pw@echo.test/",
            "ws:///path",
            "ws://echo.test:99999/",
            "ws://echo.test/a b",
            "ws://echo.test/\r\nX-Injected: 1",
            "ws://echo.test/#frag",
        ] {
            assert!(parse_ws_url(bad).is_err(), "{bad}");
        }
    }
}
