//! The host <-> cell exec protocol.
//!
//! Each request uses one connection to the init's abstract unix socket:
//!
//! ```text
//! client                                   init (pid 1 in the cell)
//!   Hello(secret) ────────────────────────►  constant-time compare; mismatch → Failed + close
//!   Request(Exec{argv,..}) ───────────────►  fork, exec, stream
//!   Stdin(bytes)* , StdinEof ─────────────►
//!               ◄─────────────────────────── Stdout(bytes)* / Stderr(bytes)*
//!   Signal(n)? ───────────────────────────►  kill(-pgid, n)
//!               ◄─────────────────────────── Done(Exited{..})
//! ```
//!
//! Frames are `u32 little-endian length` (of what follows), one tag byte, then the payload.
//! Control payloads are JSON; byte payloads are raw. The decoder never allocates more than
//! [`MAX_FRAME`] bytes for one frame, so a peer cannot exhaust memory.

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts (tag + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Length of the per-cell secret in bytes.
pub const SECRET_LEN: usize = 32;
/// Protocol version, sent in [`ServerFrame::Welcome`].
pub const VERSION: u32 = 1;

/// A command to run inside the cell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; `argv[0]` is looked up in the cell's `PATH`.
    pub argv: Vec<String>,
    /// Variables added to (or overriding) the cell's session environment for this command.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; defaults to the session's.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command's process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout and of stderr forwarded each; the rest is counted and dropped.
    pub max_output_bytes: u64,
    /// Whether the client streams stdin; otherwise the command reads `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

/// What a client asks of the init after authenticating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a command.
    Exec(ExecSpec),
    /// Set (`Some`) or remove (`None`) session environment variables for later commands.
    SetEnv {
        /// Variables to change.
        vars: Vec<(String, Option<String>)>,
    },
    /// Change the session working directory for later commands.
    Chdir {
        /// Absolute path inside the cell.
        path: String,
    },
    /// Liveness check.
    Ping,
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code if it exited.
    pub code: Option<i32>,
    /// Signal number if it was killed.
    pub signal: Option<i32>,
    /// Killed because its timeout elapsed.
    pub timed_out: bool,
    /// Total bytes the command wrote to stdout (forwarded or not).
    pub stdout_bytes: u64,
    /// Total bytes the command wrote to stderr (forwarded or not).
    pub stderr_bytes: u64,
    /// Wall-clock duration in microseconds.
    pub duration_us: u64,
}

impl ExitInfo {
    /// Whether stdout exceeded the cap and was truncated.
    pub fn stdout_truncated(&self, cap: u64) -> bool {
        self.stdout_bytes > cap
    }
    /// Whether stderr exceeded the cap and was truncated.
    pub fn stderr_truncated(&self, cap: u64) -> bool {
        self.stderr_bytes > cap
    }
}

/// Machine-readable reasons a request failed inside the cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// Wrong or missing secret.
    Unauthenticated,
    /// Malformed frame or request.
    BadRequest,
    /// `argv[0]` not found.
    NotFound,
    /// `argv[0]` found but not executable.
    NotExecutable,
    /// `cwd` does not exist or is not a directory.
    BadCwd,
    /// Could not create the process (e.g. pids limit reached).
    SpawnFailed,
}

/// The final answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The command ran and ended.
    Exited(ExitInfo),
    /// A non-exec request succeeded.
    Ok,
    /// The request failed before or instead of running anything.
    Failed {
        /// Why.
        code: FailureCode,
        /// Details for humans.
        message: String,
    },
}

/// Frames sent by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// The per-cell secret; must be the first frame.
    Hello([u8; SECRET_LEN]),
    /// The one request of this connection.
    Request(Request),
    /// Bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Close the command's stdin.
    StdinEof,
    /// Deliver a signal to the command's process group.
    Signal(i32),
}

/// Frames sent by the init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// Authentication succeeded.
    Welcome {
        /// [`VERSION`] of the init.
        version: u32,
    },
    /// Bytes the command wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The request's final answer; the init closes the connection after it.
    Done(Response),
}

/// Errors decoding frames from a peer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Length prefix larger than [`MAX_FRAME`] or zero.
    #[error("frame length {0} out of range")]
    Length(usize),
    /// Unknown tag byte.
    #[error("unknown frame tag {0}")]
    Tag(u8),
    /// Payload of the wrong size or invalid JSON.
    #[error("malformed {what} frame: {detail}")]
    Payload {
        /// Which frame.
        what: &'static str,
        /// Parser detail.
        detail: String,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const STDIN: u8 = 3;
    pub const STDIN_EOF: u8 = 4;
    pub const SIGNAL: u8 = 5;
    pub const WELCOME: u8 = 16;
    pub const STDOUT: u8 = 17;
    pub const STDERR: u8 = 18;
    pub const DONE: u8 = 19;
}

fn put(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    // Payloads are bounded by callers (chunks of at most 64 KiB, small JSON); a frame larger
    // than MAX_FRAME would be rejected by the peer rather than corrupt the stream.
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(payload);
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, p: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(p).map_err(|e| FrameError::Payload {
        what,
        detail: e.to_string(),
    })
}

impl ClientFrame {
    /// Append the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientFrame::Hello(s) => put(out, tag::HELLO, s),
            ClientFrame::Request(r) => put(out, tag::REQUEST, &json(r)),
            ClientFrame::Stdin(b) => put(out, tag::STDIN, b),
            ClientFrame::StdinEof => put(out, tag::STDIN_EOF, &[]),
            ClientFrame::Signal(n) => put(out, tag::SIGNAL, &n.to_le_bytes()),
        }
    }

    fn decode(tag: u8, p: &[u8]) -> Result<Self, FrameError> {
        Ok(match tag {
            tag::HELLO => ClientFrame::Hello(p.try_into().map_err(|_| FrameError::Payload {
                what: "hello",
                detail: format!("secret of {} bytes", p.len()),
            })?),
            tag::REQUEST => ClientFrame::Request(parse("request", p)?),
            tag::STDIN => ClientFrame::Stdin(p.to_vec()),
            tag::STDIN_EOF => ClientFrame::StdinEof,
            tag::SIGNAL => {
                let b: [u8; 4] = p.try_into().map_err(|_| FrameError::Payload {
                    what: "signal",
                    detail: format!("{} bytes", p.len()),
                })?;
                ClientFrame::Signal(i32::from_le_bytes(b))
            }
            t => return Err(FrameError::Tag(t)),
        })
    }
}

impl ServerFrame {
    /// Append the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerFrame::Welcome { version } => put(out, tag::WELCOME, &version.to_le_bytes()),
            ServerFrame::Stdout(b) => put(out, tag::STDOUT, b),
            ServerFrame::Stderr(b) => put(out, tag::STDERR, b),
            ServerFrame::Done(r) => put(out, tag::DONE, &json(r)),
        }
    }

    fn decode(tag: u8, p: &[u8]) -> Result<Self, FrameError> {
        Ok(match tag {
            tag::WELCOME => {
                let b: [u8; 4] = p.try_into().map_err(|_| FrameError::Payload {
                    what: "welcome",
                    detail: format!("{} bytes", p.len()),
                })?;
                ServerFrame::Welcome {
                    version: u32::from_le_bytes(b),
                }
            }
            tag::STDOUT => ServerFrame::Stdout(p.to_vec()),
            tag::STDERR => ServerFrame::Stderr(p.to_vec()),
            tag::DONE => ServerFrame::Done(parse("done", p)?),
            t => return Err(FrameError::Tag(t)),
        })
    }
}

/// Incremental frame decoder: feed bytes as they arrive, take frames as they complete.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_raw(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(FrameError::Length(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let tag = self.buf[4];
        let payload = self.buf[5..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some((tag, payload)))
    }

    /// The next complete client frame, if one has fully arrived.
    pub fn next_client(&mut self) -> Result<Option<ClientFrame>, FrameError> {
        self.next_raw()?
            .map(|(t, p)| ClientFrame::decode(t, &p))
            .transpose()
    }

    /// The next complete server frame, if one has fully arrived.
    pub fn next_server(&mut self) -> Result<Option<ServerFrame>, FrameError> {
        self.next_raw()?
            .map(|(t, p)| ServerFrame::decode(t, &p))
            .transpose()
    }
}

/// Compare secrets without an early exit, so timing reveals nothing about the prefix.
pub fn secrets_equal(a: &[u8; SECRET_LEN], b: &[u8; SECRET_LEN]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Hex-encode a secret for the jail config.
pub fn secret_to_hex(s: &[u8; SECRET_LEN]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decode [`secret_to_hex`]'s output.
pub fn secret_from_hex(h: &str) -> Option<[u8; SECRET_LEN]> {
    if h.len() != SECRET_LEN * 2 {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_client(f: ClientFrame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let mut d = Decoder::default();
        // Feed one byte at a time: frames must reassemble across arbitrary splits.
        for b in &buf {
            assert!(matches!(d.next_client(), Ok(None)));
            d.push(std::slice::from_ref(b));
        }
        assert_eq!(d.next_client().ok().flatten(), Some(f));
    }

    #[test]
    fn client_frames_roundtrip() {
        roundtrip_client(ClientFrame::Hello([7; SECRET_LEN]));
        roundtrip_client(ClientFrame::Request(Request::Exec(ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            timeout_ms: Some(5),
            max_output_bytes: 10,
            ..Default::default()
        })));
        roundtrip_client(ClientFrame::Stdin(b"\0\xff binary".to_vec()));
        roundtrip_client(ClientFrame::StdinEof);
        roundtrip_client(ClientFrame::Signal(9));
    }

    #[test]
    fn server_frames_roundtrip() {
        for f in [
            ServerFrame::Welcome { version: VERSION },
            ServerFrame::Stdout(b"out".to_vec()),
            ServerFrame::Stderr(vec![]),
            ServerFrame::Done(Response::Exited(ExitInfo {
                code: Some(3),
                ..Default::default()
            })),
            ServerFrame::Done(Response::Failed {
                code: FailureCode::NotFound,
                message: "nope".into(),
            }),
        ] {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            let mut d = Decoder::default();
            d.push(&buf);
            assert_eq!(d.next_server().ok().flatten(), Some(f));
        }
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(d.next_client(), Err(FrameError::Length(_))));
        let mut d = Decoder::default();
        d.push(&[2, 0, 0, 0, 99, 0]);
        assert!(matches!(d.next_client(), Err(FrameError::Tag(99))));
        let mut d = Decoder::default();
        d.push(&[3, 0, 0, 0, 1, 1, 2]);
        assert!(matches!(
            d.next_client(),
            Err(FrameError::Payload { what: "hello", .. })
        ));
        let mut d = Decoder::default();
        let mut buf = Vec::new();
        put(&mut buf, tag::REQUEST, b"{not json");
        d.push(&buf);
        assert!(matches!(
            d.next_client(),
            Err(FrameError::Payload {
                what: "request",
                ..
            })
        ));
    }

    #[test]
    fn secrets() {
        let s = [0xab; SECRET_LEN];
        assert_eq!(secret_from_hex(&secret_to_hex(&s)), Some(s));
        assert_eq!(secret_from_hex("zz"), None);
        let mut t = s;
        t[31] = 0;
        assert!(secrets_equal(&s, &s));
        assert!(!secrets_equal(&s, &t));
    }
}
