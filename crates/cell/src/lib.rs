//! Host side of Warren's cells.
//!
//! A **cell** is where an agent's hands work: every command and file operation runs inside
//! one, and its whole world is the explicit namespace of mounts it was given. This crate owns
//! the [`Cell`] trait and its tiers (today the [`process`] tier: namespaces + Landlock +
//! seccomp + cgroups), turns a [`CellSpec`] into that namespace, manages cgroups ([`cgroup`]),
//! keeps copy-on-write changes for review ([`cow`]), and detects what the host supports
//! ([`check`]).
//!
//! Key design choice: the host never confines a command itself. It hands a complete,
//! declarative [`warren_protocol::jail::JailConfig`] to a freshly executed supervisor
//! (`warren_jail`), which builds the cell and reports `Ready` or `Refused` — fail closed, with
//! the missing mechanism named. Commands then travel over an authenticated channel; anything
//! the cell sends back is treated as hostile input (the host re-enforces output caps).
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cgroup;
pub mod check;
pub mod cow;
pub mod disk;
pub mod error;
pub mod forkserver;
pub mod hostpaths;
pub mod mountinfo;
pub mod process;
pub mod spec;

use std::io::Read;

pub use error::CellError;
pub use process::{JailProgram, ProcessCell, StartInfo};
pub use spec::{CellSpec, Limits, Workspace, WorkspaceMode};
pub use warren_protocol::guest::{ExecSpec, ExitInfo, FailureCode};

/// Isolation tiers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    /// Linux namespaces, Landlock, seccomp, cgroups.
    #[default]
    Process,
    /// WebAssembly modules (WASI preview 1) in the host's engine, over a namespace the host
    /// serves itself (`warren-wasi`); commands are the modules a manifest names.
    Wasi,
}

/// Receives a command's output as it streams.
pub trait OutputSink {
    /// Bytes written to stdout.
    fn stdout(&mut self, bytes: &[u8]);
    /// Bytes written to stderr.
    fn stderr(&mut self, bytes: &[u8]);
}

/// Collects output in memory (tests, tools that need the text).
#[derive(Default, Debug)]
pub struct Collect {
    /// Everything received on stdout.
    pub stdout: Vec<u8>,
    /// Everything received on stderr.
    pub stderr: Vec<u8>,
}

impl OutputSink for Collect {
    fn stdout(&mut self, b: &[u8]) {
        self.stdout.extend_from_slice(b);
    }
    fn stderr(&mut self, b: &[u8]) {
        self.stderr.extend_from_slice(b);
    }
}

/// How a command ended, from the host's point of view.
#[derive(Clone, Debug, Default)]
pub struct ExecOutcome {
    /// Exit code/signal, byte counts, timing, as reported by the cell.
    pub exit: ExitInfo,
    /// Killed by the out-of-memory killer of the cell's memory cgroup.
    pub oom_killed: bool,
    /// Killed because the copy-on-write layer grew past its disk limit ([`disk`]).
    pub disk_exceeded: bool,
    /// stdout exceeded the cap and was cut.
    pub stdout_truncated: bool,
    /// stderr exceeded the cap and was cut.
    pub stderr_truncated: bool,
    /// The command could not be started (not found, not executable, bad cwd, …).
    pub failure: Option<(FailureCode, String)>,
}

/// A running cell of any tier.
pub trait Cell: Send + Sync {
    /// The cell's id.
    fn id(&self) -> &str;
    /// Its tier.
    fn tier(&self) -> Tier;
    /// Run a command inside, streaming its output to `sink`.
    fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, CellError>;
    /// Change the session environment for later commands.
    fn set_env(&self, vars: Vec<(String, Option<String>)>) -> Result<(), CellError>;
    /// Change the session working directory for later commands.
    fn chdir(&self, path: &str) -> Result<(), CellError>;
    /// The output cap of this cell's commands.
    fn max_output_bytes(&self) -> u64;
    /// Kill every process of the cell and release its resources (idempotent).
    fn kill(&mut self);
    /// Stop every command running in the cell now, from any thread, even while `exec` blocks
    /// on one (idempotent). Later commands fail; resources go when the cell is dropped.
    fn terminate(&self);
    /// Where the cell keeps its copy-on-write workspace changes (none for a read-only or
    /// read-write workspace, or none at all).
    fn cow_layer(&self) -> Option<&spec::CowLayer> {
        None
    }
    /// Read the file at `path` (absolute, or relative to the session's directory) directly,
    /// at most `max` bytes — for tiers whose files the host serves itself. `None`: this tier
    /// has no such path, and file tools run commands (`cat`) in the cell instead.
    fn read_file(&self, path: &str, max: u64) -> Option<Result<Vec<u8>, String>> {
        let _ = (path, max);
        None
    }
    /// Replace the file at `path` with `data`, creating its directories; `None` as for
    /// [`Cell::read_file`].
    fn write_file(&self, path: &str, data: &[u8]) -> Option<Result<(), String>> {
        let _ = (path, data);
        None
    }
}
