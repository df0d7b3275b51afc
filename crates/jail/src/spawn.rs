//! Starting a command inside the cell: `clone(CLONE_VM | CLONE_VFORK)` and `execve`.
//!
//! This is what glibc's `posix_spawn` does, with the few extra steps a cell needs between the
//! clone and the exec. `std::process::Command` would `fork()` instead: copy the init's page
//! tables, then take a copy-on-write fault for every page either side touches. Sharing the
//! address space until the exec avoids both; the init's thread is suspended until the child
//! has exec'd (or failed), so the child can use the memory prepared for it.
//!
//! In the child, between clone and exec, only raw system calls run, on data prepared before
//! the clone: no allocation, no locks.

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys;

/// Everything the child needs, prepared by the parent.
pub struct SpawnRequest {
    /// Absolute path of the program.
    pub path: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// `KEY=VALUE` environment.
    pub env: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// The stricter Landlock ruleset to stack (-1 for none).
    pub ruleset: RawFd,
    /// Pipe stdin (else /dev/null).
    pub stdin: bool,
}

/// A started command.
pub struct Spawned {
    /// Its pid (and process group id).
    pub pid: i32,
    /// Write end of its stdin, when piped.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    ruleset: RawFd,
    err: RawFd,
}

const STACK: usize = 64 * 1024;

extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's `ChildArgs`, alive while the parent is suspended
    // (CLONE_VFORK); every call below is a raw syscall on memory prepared before the clone.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |step: i32| -> libc::c_int {
            let e = *libc::__errno_location();
            let msg = [step, e];
            libc::write(a.err, msg.as_ptr().cast(), 8);
            libc::_exit(127)
        };
        // A clean signal state: nothing blocked, SIGPIPE back to default (the init ignores it,
        // and an ignored disposition would survive the exec).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for (i, fd) in a.stdio.iter().enumerate() {
            if libc::dup2(*fd, i as i32) < 0 {
                return fail(1);
            }
        }
        // Its own process group: a timeout or cancellation kills everything it started.
        if libc::setpgid(0, 0) != 0 {
            return fail(2);
        }
        if libc::chdir(a.cwd) != 0 {
            return fail(3);
        }
        // The out-of-memory killer must take commands, never the init, or the whole cell dies.
        // A child of the init starts non-dumpable (its /proc entry belongs to the unmapped
        // root); become dumpable to raise our own score — no privilege needed — then stack the
        // strict ruleset. Until the exec no other command can read this process's memory:
        // ptrace and process_vm_* are seccomp-denied, and Landlock refuses /proc/<pid>/mem
        // from a more restricted domain (every other command) to a less restricted one.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
        // The flag is the memory's, which is still the init's: clear it again now, so the
        // init is non-dumpable before the command runs (the exec gives the command memory of
        // its own, dumpable as usual). The init clears it once more when `clone` returns.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // From here on /proc is read-only too.
        if a.ruleset >= 0 && libc::syscall(libc::SYS_landlock_restrict_self, a.ruleset, 0) != 0 {
            return fail(4);
        }
        libc::execve(a.path, a.argv, a.envp);
        fail(5)
    }
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::pipe()
}

/// Spawn a command. The caller holds the reaper's lock, so the pid can be registered before
/// the reaper could collect it.
pub fn spawn(req: &SpawnRequest) -> io::Result<Spawned> {
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (in_r, in_w) = if req.stdin {
        let (r, w) = pipe_pair()?;
        (r, Some(w))
    } else {
        // SAFETY: open with a static path; the result is checked.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(sys::errno("open /dev/null"));
        }
        // SAFETY: a fresh descriptor we own.
        (unsafe { OwnedFd::from_raw_fd(fd) }, None)
    };
    let (status_r, status_w) = pipe_pair()?;
    let argv: Vec<*const libc::c_char> = req
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = req
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let args = ChildArgs {
        path: req.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: req.cwd.as_ptr(),
        stdio: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        ruleset: req.ruleset,
        err: status_w.as_raw_fd(),
    };
    let mut stack = vec![0u8; STACK];
    // SAFETY: the stack grows down from the end of a buffer that outlives the child's use of
    // it (CLONE_VFORK suspends us until the child has exec'd or exited); `args` likewise.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(
            child,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut c_void,
        )
    };
    drop(stack);
    // The child's PR_SET_DUMPABLE(1) above acted on the memory it shared with us until its
    // exec: the init's own. Make the init non-dumpable again (its /proc entries back to the
    // unmapped root), whether or not the exec succeeded.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(sys::errno("clone"));
    }
    drop(status_w);
    // The child has exec'd (the close-on-exec status pipe is closed: read returns 0) or
    // reported which step failed and its errno.
    let mut msg = [0i32; 2];
    // SAFETY: reading into a local array from a pipe we own.
    let n = unsafe { libc::read(status_r.as_raw_fd(), msg.as_mut_ptr().cast(), 8) };
    if n == 8 {
        let step = ["", "stdio", "setpgid", "chdir", "landlock", "exec"][msg[0] as usize % 6];
        let e = io::Error::from_raw_os_error(msg[1]);
        return Err(io::Error::new(e.kind(), format!("{step}: {e}")));
    }
    Ok(Spawned {
        pid,
        stdin: in_w,
        stdout: out_r,
        stderr: err_r,
    })
}
