//! A stdio MCP server inside a cell: its command runs through the cell's exec channel with
//! stdin streamed, and its stdout is the byte stream rmcp reads.
//!
//! `Cell::exec` blocks until the command ends, so it runs on a thread of its own. Two socket
//! pairs join it to the async side: what rmcp writes reaches the command's stdin, what the
//! command writes to stdout reaches rmcp. Its stderr is kept — the last [`STDERR_TAIL`] bytes
//! — for the error that reports its death. When the command ends, the thread records how
//! ([`Process::exited`]) and closes the stream, so a pending request fails at once instead of
//! waiting out its timeout.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::watch;
use warren_cell::{Cell, ExecSpec, OutputSink};
use warren_config::manifest::{McpServer, McpTransport};

use crate::{EXIT_GRACE, McpError};

/// Bytes of a server's stderr kept for error reports.
pub const STDERR_TAIL: usize = 4096;

/// A running server command.
pub struct Process {
    exit: watch::Receiver<Option<String>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    cell: Arc<dyn Cell>,
}

struct Sink {
    out: Option<StdStream>,
    err: Arc<Mutex<VecDeque<u8>>>,
}

impl OutputSink for Sink {
    fn stdout(&mut self, bytes: &[u8]) {
        // Nobody reads any more (the session closed): drop the rest.
        if let Some(out) = &mut self.out
            && out.write_all(bytes).is_err()
        {
            self.out = None;
        }
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let mut tail = self.err.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend(bytes);
        let extra = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..extra);
    }
}

fn describe(r: Result<warren_cell::ExecOutcome, warren_cell::error::CellError>) -> String {
    match r {
        Err(e) => format!("could not run: {e}"),
        Ok(o) => {
            if let Some((_, message)) = o.failure {
                return format!("could not start: {message}");
            }
            if o.oom_killed {
                return "was killed for using more memory than its cell allows".into();
            }
            match (o.exit.code, o.exit.signal) {
                (_, Some(sig)) => format!("was killed by signal {sig}"),
                (Some(code), None) => format!("exited with status {code}"),
                (None, None) => "ended".into(),
            }
        }
    }
}

/// Start `decl`'s command in `cell`: the process, and the streams rmcp reads and writes.
pub fn spawn(
    decl: &McpServer,
    cell: Arc<dyn Cell>,
) -> Result<(Process, UnixStream, UnixStream), McpError> {
    let McpTransport::Stdio { command } = &decl.transport else {
        return Err(McpError::Spawn {
            server: decl.name.clone(),
            command: String::new(),
            reason: "not a stdio server".into(),
        });
    };
    let spawn_err = |reason: String| McpError::Spawn {
        server: decl.name.clone(),
        command: command.join(" "),
        reason,
    };
    let (in_host, in_cell) = StdStream::pair().map_err(|e| spawn_err(e.to_string()))?;
    let (out_host, out_cell) = StdStream::pair().map_err(|e| spawn_err(e.to_string()))?;
    let to_tokio = |s: StdStream| {
        s.set_nonblocking(true)?;
        UnixStream::from_std(s)
    };
    let read = to_tokio(out_host).map_err(|e| spawn_err(e.to_string()))?;
    let write = to_tokio(in_host).map_err(|e| spawn_err(e.to_string()))?;
    let spec = ExecSpec {
        argv: command.clone(),
        env: decl
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: None,
        // A server lives as long as its task: no timeout, and its output is a stream of
        // messages, each bounded by the transport, not a result to cap.
        timeout_ms: None,
        max_output_bytes: u64::MAX,
        stdin: true,
    };
    let (tx, exit) = watch::channel(None);
    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    let sink = Sink {
        out: Some(out_cell),
        err: Arc::clone(&stderr),
    };
    let runner = Arc::clone(&cell);
    std::thread::Builder::new()
        .name(format!("mcp-{}", decl.name))
        .spawn(move || {
            let mut sink = sink;
            let r = runner.exec(&spec, Some(Box::new(in_cell)), &mut sink);
            // Close the stream first: the session sees the end at once.
            drop(sink);
            let _ = tx.send(Some(describe(r)));
        })
        .map_err(|e| spawn_err(e.to_string()))?;
    Ok((Process { exit, stderr, cell }, read, write))
}

impl Process {
    /// Resolves when the command has ended.
    pub async fn exited(&self) {
        let mut rx = self.exit.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// The end of its stderr, as text.
    pub fn stderr(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The error for a server that ended: how, and the end of its stderr.
    pub async fn ended(&self, server: &str) -> McpError {
        let _ = tokio::time::timeout(EXIT_GRACE, self.exited()).await;
        McpError::Exited {
            server: server.to_owned(),
            status: self
                .exit
                .borrow()
                .clone()
                .unwrap_or_else(|| "closed its output".into()),
            stderr: self.stderr(),
        }
    }

    /// The error for a failed request: the server's end if it ended meanwhile (that is the
    /// real reason), else the protocol's.
    pub async fn failure(&self, server: &str, what: &str, reason: String) -> McpError {
        if tokio::time::timeout(EXIT_GRACE, self.exited())
            .await
            .is_ok()
        {
            return self.ended(server).await;
        }
        McpError::Protocol {
            server: server.to_owned(),
            what: what.to_owned(),
            reason,
            stderr: self.stderr(),
        }
    }

    /// Stop the command (and everything else in its cell).
    pub fn stop(&self) {
        self.cell.terminate();
    }
}
