//! The jail: the only Warren code that runs inside (or right at the edge of) a cell.
//!
//! `warren-jail` (or `warren __jail`, or the test binary `warren-test-jail`) starts here as the
//! cell's **supervisor**: a fresh, single-threaded process spawned by the host with the cell's
//! [`JailConfig`] on stdin and a status pipe on fd 3. It
//!
//! 1. binds the cell's abstract control socket in the *host's* network namespace,
//! 2. `clone()`s the cell's init into new user, mount, pid, ipc, uts and net namespaces,
//! 3. writes the init's uid/gid maps (cell uid 1000 → an unprivileged host uid; host root is
//!    never mapped), moves it into its cgroups, and lets it go,
//! 4. waits; on SIGTERM (or its owner's death) kills the init, which takes every process of
//!    the cell's pid namespace with it, then removes the cgroups and exits.
//!
//! The **init** (pid 1 in the cell) joins a new cgroup namespace, builds the root from the
//! mount spec ([`mounts`]), pivots into it, sets rlimits, drops every capability, sets
//! no-new-privs, applies Landlock ([`landlock_rules`]) and seccomp ([`seccomp`]) to itself —
//! so every command it ever forks inherits them and cannot shed them — reports
//! [`StartReport::Ready`], and serves exec requests ([`serve`]).
//!
//! A host that starts many cells (a daemon, a benchmark) can instead run one long-lived
//! `warren-jail --fork-server` ([`forkserver`]), which forks a supervisor per cell rather
//! than paying for an `execve` each time; and a single-threaded host that links this crate
//! (`warren exec`) forks the supervisor itself and enters it through [`main_in_process`].
//!
//! This crate depends on `libc`, `landlock`, `seccompiler` and `serde_json` only: no async
//! runtime, no HTTP, nothing the cell does not need.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod landlock_rules;
pub mod mounts;
pub mod seccomp;
pub mod serve;
pub mod spawn;
pub mod sys;

pub mod forkserver;
pub mod idmap;
mod init;
mod supervisor;

use std::io::Read;

use warren_protocol::jail::{JailConfig, StartReport};

pub use warren_protocol::jail::STATUS_FD;

/// Entry point: read the config from stdin and supervise the cell. Returns the exit code.
pub fn main_from_args<I>(args: I) -> i32
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    if args.into_iter().any(|a| a == "--fork-server") {
        return forkserver::run();
    }
    // Whatever descriptors our parent leaked to us (its parent's, without close-on-exec) stop
    // here: only stdin (the config) and the status pipe are kept.
    sys::close_from(STATUS_FD as u32 + 1);
    let mut input = Vec::new();
    let status = supervisor::StatusPipe::from_fd(STATUS_FD);
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        status.report(&StartReport::Refused {
            step: "read config".into(),
            reason: e.to_string(),
        });
        return 2;
    }
    let config: JailConfig = match serde_json::from_slice(&input) {
        Ok(c) => c,
        Err(e) => {
            status.report(&StartReport::Refused {
                step: "parse config".into(),
                reason: e.to_string(),
            });
            return 2;
        }
    };
    let owner = config.owner_pid;
    supervisor::supervise(config, status, owner)
}

/// Entry point of a supervisor that a single-threaded host *forked* rather than executed
/// (no `execve`, no dynamic loading: the one-shot cold start). The host has put the status
/// pipe at [`STATUS_FD`] and `/dev/null` on stdin and stdout. What the host process leaves
/// behind is removed before anything else, so the process is what an executed supervisor
/// would be: every descriptor above the status pipe closed; the command line and the
/// environment overwritten with zeros and the environment cleared (`/proc/PID/cmdline` is
/// readable without ptrace rights, even inside the cell once this process's child is its
/// pid 1); the name set to `warren-jail`. The rest of the host's memory stays in the
/// supervisor (host side) and its init, which is non-dumpable: no command can read it.
/// Returns the exit code; the caller must `_exit` with it, never return into the host.
pub fn main_in_process(config: JailConfig) -> i32 {
    sys::close_from(STATUS_FD as u32 + 1);
    sys::scrub_command_line_and_environment();
    let status = supervisor::StatusPipe::from_fd(STATUS_FD);
    let owner = config.owner_pid;
    supervisor::supervise(config, status, owner)
}
