//! The child-probe harness.
//!
//! Probes that would change the calling process (unsharing namespaces,
//! dropping privileges, installing a seccomp filter, mounting) run in a
//! `fork()`ed child ([`run_in_child`]). Everything the child needs (paths, buffers, BPF program)
//! is prepared before forking; the child only makes raw libc calls, never
//! allocates, and leaves with `_exit`. The parent reaps it with `waitpid`,
//! killing it with `SIGKILL` if it has not finished after 5 s.
//!
//! Child → parent protocol:
//!
//! * exit status `0`: every step succeeded;
//! * exit status `1..=250`: the `errno` of the step that failed (Linux errno
//!   values are all below 134);
//! * exit status `251`: a step failed without an `errno`;
//! * exit status `252`: the probe panicked in the child;
//! * before exiting with a failure, the child writes one byte — the index of
//!   the failing step — to a `O_CLOEXEC | O_NONBLOCK` pipe, so the parent can
//!   name the failing call (e.g. "setresuid(65534) failed: EPERM").
//!
//! A child killed by a signal or by the timeout is reported as such.
//!
//! `fork` is only sound here because the probes' children never allocate or
//! take locks: whatever another thread of the caller holds (a malloc lock, a
//! mutex) the child never waits for.

use std::ffi::CStr;
use std::time::{Duration, Instant};

/// The uid/gid the probes drop to when run as root to test "unprivileged".
pub(super) const NOBODY: u32 = 65534;

/// How long a probe child may run before it is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit status: a step failed but errno was 0 or out of range.
const EXIT_NO_ERRNO: i32 = 251;
/// Exit status: the probe closure panicked.
const EXIT_PANIC: i32 = 252;

/// A failed step inside a probe child: its index and the errno it left.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepError {
    pub(super) step: u8,
    pub(super) errno: i32,
}

/// What happened to a probe child.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ChildOutcome {
    /// Exit status 0.
    Success,
    /// A step failed; `step` is `None` if the child did not report it.
    Failed {
        step: Option<u8>,
        errno: Option<i32>,
    },
    /// The probe panicked in the child.
    Panicked,
    /// Killed by a signal (not by us).
    Signaled(i32),
    /// Did not finish within [`CHILD_TIMEOUT`]; killed.
    TimedOut,
    /// The child could not be started: (call, errno).
    NotStarted(&'static str, i32),
}

pub(super) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Maps a libc return value to a step result (negative = failure).
pub(super) fn ck(step: u8, ret: libc::c_int) -> Result<(), StepError> {
    if ret < 0 {
        Err(StepError {
            step,
            errno: last_errno(),
        })
    } else {
        Ok(())
    }
}

/// Opens `path` write-only and writes `data` to it. Safe to call after fork
/// (no allocation). Returns `-1` with errno set on failure.
pub(super) fn write_path(path: &CStr, data: &[u8]) -> libc::c_int {
    // SAFETY: path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return -1;
    }
    write_fd_and_close(fd, data)
}

/// Writes `data` in one `write(2)` and closes `fd`; `-1` with errno on failure.
pub(super) fn write_fd_and_close(fd: libc::c_int, data: &[u8]) -> libc::c_int {
    // SAFETY: data is a valid buffer of data.len() bytes; fd is owned by us.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let errno = last_errno();
    // SAFETY: fd is a descriptor we opened and close exactly once.
    unsafe { libc::close(fd) };
    if usize::try_from(n).ok() == Some(data.len()) {
        0
    } else {
        // Restore the write's errno (close may have clobbered it).
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = if n < 0 { errno } else { libc::EIO } };
        -1
    }
}

/// Runs `probe` in a forked child (see the module docs for the protocol).
/// `probe` must not allocate, lock, or print.
pub(super) fn run_in_child<F: FnOnce() -> Result<(), StepError>>(probe: F) -> ChildOutcome {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: fds points to two writable c_ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return ChildOutcome::NotStarted("pipe2", last_errno());
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // makes async-signal-safe calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let errno = last_errno();
        // SAFETY: both descriptors were just created by pipe2 and are ours.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        return ChildOutcome::NotStarted("fork", errno);
    }
    if pid == 0 {
        // Child.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe));
        let code = match result {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                let byte = [e.step];
                // SAFETY: byte is a valid 1-byte buffer; write_fd is our pipe end.
                unsafe { libc::write(write_fd, byte.as_ptr().cast(), 1) };
                if (1..EXIT_NO_ERRNO).contains(&e.errno) {
                    e.errno
                } else {
                    EXIT_NO_ERRNO
                }
            }
            Err(_) => EXIT_PANIC,
        };
        // SAFETY: _exit terminates the child without running the parent's
        // atexit handlers or flushing shared stdio buffers.
        unsafe { libc::_exit(code) }
    }

    // Parent.
    // SAFETY: write_fd is ours; the child holds its own copy.
    unsafe { libc::close(write_fd) };
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut status: libc::c_int = 0;
    let mut timed_out = false;
    loop {
        // SAFETY: status is a valid out-pointer; pid is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 {
            if last_errno() == libc::EINTR {
                continue;
            }
            // Should not happen for our own child; treat as lost.
            // SAFETY: read_fd is ours.
            unsafe { libc::close(read_fd) };
            return ChildOutcome::NotStarted("waitpid", last_errno());
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: pid is our unreaped child, so it cannot be recycled.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            loop {
                // SAFETY: as above.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid || (r < 0 && last_errno() != libc::EINTR) {
                    break;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut byte = [0u8; 1];
    // SAFETY: byte is a valid 1-byte buffer; read_fd is non-blocking.
    let n = unsafe { libc::read(read_fd, byte.as_mut_ptr().cast(), 1) };
    // SAFETY: read_fd is ours and closed once.
    unsafe { libc::close(read_fd) };
    let step = (n == 1).then_some(byte[0]);

    if timed_out {
        return ChildOutcome::TimedOut;
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => ChildOutcome::Success,
            EXIT_PANIC => ChildOutcome::Panicked,
            EXIT_NO_ERRNO => ChildOutcome::Failed { step, errno: None },
            errno => ChildOutcome::Failed {
                step,
                errno: Some(errno),
            },
        }
    } else if libc::WIFSIGNALED(status) {
        ChildOutcome::Signaled(libc::WTERMSIG(status))
    } else {
        ChildOutcome::Failed { step, errno: None }
    }
}

/// Turns a child outcome into (works, explanation of the failure).
pub(super) fn describe(outcome: &ChildOutcome, steps: &[&str]) -> (bool, String) {
    match outcome {
        ChildOutcome::Success => (true, String::new()),
        ChildOutcome::Failed { step, errno } => {
            let call = step
                .and_then(|s| steps.get(usize::from(s)))
                .copied()
                .unwrap_or("a step");
            let why = errno.map_or_else(|| "unknown error".to_string(), errno_text);
            (false, format!("{call} failed: {why}"))
        }
        ChildOutcome::Panicked => (false, "probe panicked in the child".to_string()),
        ChildOutcome::Signaled(sig) => (false, format!("probe child killed by signal {sig}")),
        ChildOutcome::TimedOut => (
            false,
            format!(
                "probe child did not finish within {} s; killed",
                CHILD_TIMEOUT.as_secs()
            ),
        ),
        ChildOutcome::NotStarted(call, errno) => (
            false,
            format!("could not run probe: {call} failed: {}", errno_text(*errno)),
        ),
    }
}

/// `"EPERM (Operation not permitted)"`.
pub(super) fn errno_text(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EUSERS => "EUSERS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        _ => "",
    };
    let msg = std::io::Error::from_raw_os_error(errno).to_string();
    let msg = msg
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        format!("errno {errno} ({msg})")
    } else {
        format!("{name} ({msg})")
    }
}

/// `setgroups(0) + setresgid(65534) + setresuid(65534) + PR_SET_DUMPABLE`,
/// steps 0..=3.
/// Safe to call after fork.
pub(super) fn drop_to_nobody() -> Result<(), StepError> {
    // SAFETY: a zero-length group list with a null pointer is valid.
    ck(0, unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain syscalls on integer arguments.
    ck(1, unsafe { libc::setresgid(NOBODY, NOBODY, NOBODY) })?;
    // SAFETY: as above.
    ck(2, unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) })?;
    // Changing credentials made us non-dumpable, which makes /proc/self/*
    // root-owned; restore dumpability so uid_map etc. stay writable.
    // SAFETY: prctl with integer arguments.
    ck(3, unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })
}

pub(super) const DROP_STEPS: [&str; 4] = [
    "setgroups(0, NULL)",
    "setresgid(65534)",
    "setresuid(65534)",
    "prctl(PR_SET_DUMPABLE, 1)",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_child_outcomes() {
        assert_eq!(run_in_child(|| Ok(())), ChildOutcome::Success);
        let failed = run_in_child(|| {
            Err(StepError {
                step: 1,
                errno: libc::EPERM,
            })
        });
        assert_eq!(
            failed,
            ChildOutcome::Failed {
                step: Some(1),
                errno: Some(libc::EPERM)
            }
        );
        let (ok, why) = describe(&failed, &["a", "setresuid(65534)"]);
        assert!(!ok);
        assert_eq!(
            why,
            "setresuid(65534) failed: EPERM (Operation not permitted)"
        );
        // A real failing call in the child: its errno comes back.
        let closed = run_in_child(|| {
            // SAFETY: closing a descriptor that is not open only sets errno.
            ck(0, unsafe { libc::close(-1) })
        });
        assert_eq!(
            describe(&closed, &["close(-1)"]).1,
            "close(-1) failed: EBADF (Bad file descriptor)"
        );
    }
}
