//! `warren-probe`: an escape probe that runs *inside* a Warren cell.
//!
//! Each invocation (`warren-probe CASE ARGS...`) attempts exactly one kind of
//! escape and prints exactly one line of JSON on stdout:
//!
//! ```text
//! {"case":"<case>","outcome":"blocked"|"escaped"|"info","detail":"...", ...extra}
//! ```
//!
//! * `blocked`: every attempt made by the case failed (the detail gives the
//!   error of each attempt);
//! * `escaped`: at least one attempt succeeded (the detail says which);
//! * `info`: the case only reports facts.
//!
//! The exit status is 0 for these; an unknown case or bad arguments print an
//! `error` outcome and exit with status 2. File contents are never printed,
//! only byte counts.
//!
//! Syscalls that a seccomp filter might answer by killing the process are
//! attempted in a short-lived forked child ([`isolated`]), so a
//! `SECCOMP_RET_KILL_*` action shows up as a blocked attempt ("killed by
//! signal 31 (SIGSYS)") instead of a probe that dies without a report.

use std::ffi::{CString, OsString, c_int, c_long, c_void};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// `NETLINK_AUDIT` from `<linux/netlink.h>`.
const NETLINK_AUDIT: c_int = 9;
/// `KEY_SPEC_PROCESS_KEYRING` from `<linux/keyctl.h>`.
const KEY_SPEC_PROCESS_KEYRING: c_long = -2;
/// `KEY_SPEC_SESSION_KEYRING` from `<linux/keyctl.h>`.
const KEY_SPEC_SESSION_KEYRING: c_long = -3;
/// `KEYCTL_GET_KEYRING_ID` from `<linux/keyctl.h>`.
const KEYCTL_GET_KEYRING_ID: c_long = 0;
/// `BPF_MAP_CREATE` from `<linux/bpf.h>`.
const BPF_MAP_CREATE: c_long = 0;
/// `BPF_MAP_TYPE_ARRAY` from `<linux/bpf.h>`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `PERF_TYPE_SOFTWARE` from `<linux/perf_event.h>`.
const PERF_TYPE_SOFTWARE: u32 = 1;
/// `PERF_COUNT_SW_CPU_CLOCK` from `<linux/perf_event.h>`.
const PERF_COUNT_SW_CPU_CLOCK: u32 = 0;
/// `SYSLOG_ACTION_READ_ALL`.
const SYSLOG_ACTION_READ_ALL: c_long = 3;
/// `SYSLOG_ACTION_SIZE_BUFFER`.
const SYSLOG_ACTION_SIZE_BUFFER: c_long = 10;

/// One mebibyte.
const MIB: usize = 1 << 20;
/// Upper bound on the bytes `read-file` reads (devices like `/dev/zero` never end).
const READ_CAP: u64 = 16 * MIB as u64;

/// A value whose address is the same in a forked child (for `process-vm-readv`).
static PROBE_SECRET: u64 = 0x5741_5252_454e_2121;

/// The verdict of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Every attempt failed.
    Blocked,
    /// At least one attempt succeeded.
    Escaped,
    /// The case only reports facts.
    Info,
    /// Unknown case, bad arguments, or the case could not run.
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Blocked => "blocked",
            Outcome::Escaped => "escaped",
            Outcome::Info => "info",
            Outcome::Error => "error",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "blocked" => Outcome::Blocked,
            "escaped" => Outcome::Escaped,
            "info" => Outcome::Info,
            _ => Outcome::Error,
        }
    }
}

/// What a case reports: outcome, human detail and extra JSON fields.
#[derive(Debug)]
struct Report {
    outcome: Outcome,
    detail: String,
    extra: Vec<(&'static str, Value)>,
}

impl Report {
    fn new(outcome: Outcome, detail: impl Into<String>) -> Report {
        Report {
            outcome,
            detail: detail.into(),
            extra: Vec::new(),
        }
    }

    fn error(detail: impl Into<String>) -> Report {
        Report::new(Outcome::Error, detail)
    }

    fn with(mut self, key: &'static str, value: Value) -> Report {
        self.extra.push((key, value));
        self
    }

    /// The JSON line: `case`, `outcome`, `detail` first, then the extra fields.
    fn to_line(&self, case: &str) -> String {
        let mut line = format!(
            "{{\"case\":{},\"outcome\":{},\"detail\":{}",
            json!(case),
            json!(self.outcome.as_str()),
            json!(self.detail)
        );
        for (key, value) in &self.extra {
            line.push(',');
            line.push_str(&json!(key).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push('}');
        line
    }
}

/// The result of one attempt: the syscall's non-negative return value, or the error text.
type Attempt = Result<i64, String>;

/// Collects the attempts of a case; the case escaped if any attempt succeeded.
#[derive(Debug, Default)]
struct Attempts {
    parts: Vec<String>,
    succeeded: Vec<String>,
}

impl Attempts {
    /// Records an attempt; returns whether it succeeded.
    fn add<T: std::fmt::Display, E: std::fmt::Display>(
        &mut self,
        label: &str,
        result: Result<T, E>,
    ) -> bool {
        match result {
            Ok(v) => {
                self.parts.push(format!("{label}: succeeded ({v})"));
                self.succeeded.push(label.to_string());
                true
            }
            Err(e) => {
                self.parts.push(format!("{label}: {e}"));
                false
            }
        }
    }

    /// Records a note that is not an attempt.
    fn note(&mut self, text: impl Into<String>) {
        self.parts.push(text.into());
    }

    fn report(self) -> Report {
        let joined = self.parts.join("; ");
        if self.succeeded.is_empty() {
            Report::new(Outcome::Blocked, joined)
        } else {
            let detail = format!("succeeded: {} | {joined}", self.succeeded.join(", "));
            Report::new(Outcome::Escaped, detail)
        }
    }
}

// ---------------------------------------------------------------------------
// Syscall helpers
// ---------------------------------------------------------------------------

fn last_err() -> String {
    io::Error::last_os_error().to_string()
}

/// Converts a C-style return value (negative means failure, errno set).
fn cvt<T: Into<i64>>(ret: T) -> Attempt {
    let ret = ret.into();
    if ret < 0 { Err(last_err()) } else { Ok(ret) }
}

/// Like [`cvt`] for `ssize_t` returns.
fn cvt_isize(ret: isize) -> Attempt {
    if ret < 0 {
        Err(last_err())
    } else {
        Ok(i64::try_from(ret).unwrap_or(i64::MAX))
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "argument contains a NUL byte".to_string())
}

fn path_cstring(path: &Path) -> Result<CString, String> {
    cstring(path.as_os_str().as_bytes())
}

fn signal_name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGSYS => "SIGSYS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

/// Waits for `pid` to terminate (any kind of child, traced or not); returns the wait status.
fn reap(pid: libc::pid_t) -> Option<c_int> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid out-pointer; waiting has no memory-safety preconditions.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Some(status);
            }
            continue;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Sends SIGKILL to `pid` and reaps it.
fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
}

/// Forks a child that sleeps in `pause()` forever and dies with its parent.
fn fork_sleeper() -> io::Result<libc::pid_t> {
    // SAFETY: the probe is single-threaded; the child only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: prctl and pause are async-signal-safe and take no pointers here.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            loop {
                libc::pause();
            }
        }
    }
    Ok(pid)
}

/// Runs `attempt` in a forked child and returns its result.
///
/// A child killed by a signal (e.g. SIGSYS from a seccomp kill action) is
/// reported as a failed attempt. If forking is impossible the attempt runs in
/// this process instead.
fn isolated(attempt: impl FnOnce() -> Attempt) -> Attempt {
    let mut fds: [c_int; 2] = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return attempt();
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the probe is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        drop((rd, wr));
        return attempt();
    }
    if pid == 0 {
        drop(rd);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt))
            .unwrap_or_else(|_| Err("attempt panicked".to_string()));
        let (ret, ok, msg) = match result {
            Ok(v) => (v, 1u8, String::new()),
            Err(e) => (-1, 0u8, e),
        };
        let mut msg_bytes = msg.into_bytes();
        msg_bytes.truncate(4096);
        let mut buf = Vec::with_capacity(13 + msg_bytes.len());
        buf.extend_from_slice(&ret.to_ne_bytes());
        buf.push(ok);
        buf.extend_from_slice(&u32::try_from(msg_bytes.len()).unwrap_or(0).to_ne_bytes());
        buf.extend_from_slice(&msg_bytes);
        let mut pipe = File::from(wr);
        let _ = pipe.write_all(&buf);
        // SAFETY: _exit terminates the child without running the parent's destructors/atexit.
        unsafe { libc::_exit(0) };
    }
    drop(wr);
    let mut pipe = File::from(rd);
    let mut head = [0u8; 13];
    let read = pipe.read_exact(&mut head).and_then(|()| {
        let mut ret = [0u8; 8];
        ret.copy_from_slice(&head[..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[9..13]);
        let mut msg = vec![0u8; u32::from_ne_bytes(len) as usize];
        pipe.read_exact(&mut msg)?;
        Ok((
            i64::from_ne_bytes(ret),
            head[8] == 1,
            String::from_utf8_lossy(&msg).into_owned(),
        ))
    });
    let status = reap(pid);
    match (read, status) {
        (Ok((ret, true, _)), _) => Ok(ret),
        (Ok((_, false, msg)), _) => Err(msg),
        (Err(_), Some(st)) if libc::WIFSIGNALED(st) => {
            let sig = libc::WTERMSIG(st);
            Err(format!("killed by signal {sig} ({})", signal_name(sig)))
        }
        (Err(_), Some(st)) => Err(format!(
            "attempt child exited with status {} without a result",
            libc::WEXITSTATUS(st)
        )),
        (Err(e), None) => Err(format!("attempt child lost: {e}")),
    }
}

/// `socket(domain, ty, proto)`, closing the socket again on success.
fn try_socket(domain: c_int, ty: c_int, proto: c_int) -> Attempt {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    let r = cvt(fd);
    if fd >= 0 {
        // SAFETY: `fd` was just returned by socket and is owned by us.
        unsafe { libc::close(fd) };
    }
    r
}

// ---------------------------------------------------------------------------
// Files and paths
// ---------------------------------------------------------------------------

fn case_read_file(path: &Path) -> Report {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Report::new(Outcome::Blocked, format!("open: {e}")),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    let mut truncated = false;
    let result = loop {
        if total >= READ_CAP {
            truncated = true;
            break Ok(());
        }
        match file.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    // The buffer is dropped unprinted: only the count leaves this function.
    drop(buf);
    match result {
        Ok(()) => {
            let cap = if truncated {
                " (stopped at the read cap)"
            } else {
                ""
            };
            Report::new(
                Outcome::Escaped,
                format!("open: succeeded; read: {total} bytes{cap}"),
            )
            .with("bytes", json!(total))
        }
        Err(e) if total > 0 => Report::new(
            Outcome::Escaped,
            format!("open: succeeded; read: {total} bytes, then read: {e}"),
        )
        .with("bytes", json!(total)),
        Err(e) => Report::new(Outcome::Blocked, format!("open: succeeded; read: {e}"))
            .with("bytes", json!(0)),
    }
}

fn case_write_file(path: &Path) -> Report {
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return Report::new(Outcome::Blocked, format!("open: {e}")),
    };
    match file.write(b"x") {
        Ok(n) => Report::new(
            Outcome::Escaped,
            format!("open: succeeded; write: {n} bytes"),
        )
        .with("bytes", json!(n)),
        Err(e) => Report::new(Outcome::Blocked, format!("open: succeeded; write: {e}")),
    }
}

fn case_mkdir(path: &Path) -> Report {
    let mut a = Attempts::default();
    a.add(
        "mkdir",
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map(|()| "created"),
    );
    a.report()
}

fn case_list_dir(path: &Path) -> Report {
    let dir = match std::fs::read_dir(path) {
        Ok(d) => d,
        Err(e) => return Report::new(Outcome::Blocked, format!("opendir: {e}")),
    };
    let mut entries = 0u64;
    let mut first_err = None;
    for entry in dir {
        match entry {
            Ok(_) => entries += 1,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let mut detail = format!("opendir: succeeded; readdir: {entries} entries");
    if let Some(e) = first_err {
        detail.push_str(&format!(" (readdir error: {e})"));
    }
    Report::new(Outcome::Escaped, detail).with("entries", json!(entries))
}

fn mknod_attempt(path: &CString, mode: libc::mode_t, dev: libc::dev_t) -> Attempt {
    // SAFETY: `path` is a valid NUL-terminated string.
    cvt(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
}

fn case_mknod_block(path: &Path) -> Report {
    let mut chr = path.as_os_str().to_os_string();
    chr.push("c");
    let (blk_c, chr_c) = match (path_cstring(path), path_cstring(Path::new(&chr))) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) | (_, Err(e)) => return Report::error(e),
    };
    let mut a = Attempts::default();
    a.add(
        &format!("mknod S_IFBLK 8:0 {}", path.display()),
        isolated(|| mknod_attempt(&blk_c, libc::S_IFBLK | 0o600, libc::makedev(8, 0))),
    );
    a.add(
        &format!("mknod S_IFCHR 1:3 {}", Path::new(&chr).display()),
        isolated(|| mknod_attempt(&chr_c, libc::S_IFCHR | 0o600, libc::makedev(1, 3))),
    );
    a.report()
}

fn case_open_device(path: &Path) -> Report {
    let mut a = Attempts::default();
    let r = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map(|f| format!("fd {}", f.as_raw_fd()));
    a.add("open O_RDWR", r);
    a.report()
}

fn case_chmod_setuid(path: &Path) -> Report {
    if let Err(e) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(path)
    {
        return Report::new(Outcome::Blocked, format!("create: {e}"));
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o4755)) {
        return Report::new(
            Outcome::Blocked,
            format!("create: succeeded; chmod 04755: {e}"),
        );
    }
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            let setuid = mode & 0o4000 != 0;
            Report::new(
                Outcome::Info,
                format!(
                    "create: succeeded; chmod 04755: succeeded; mode on disk {mode:04o} (setuid bit {})",
                    if setuid { "set" } else { "not set" }
                ),
            )
            .with("mode", json!(format!("{mode:04o}")))
            .with("setuid", json!(setuid))
        }
        Err(e) => Report::new(
            Outcome::Info,
            format!("create: succeeded; chmod 04755: succeeded; stat: {e}"),
        ),
    }
}

// ---------------------------------------------------------------------------
// Networking
// ---------------------------------------------------------------------------

/// socket(AF_UNIX, SOCK_STREAM) + connect to `name` (abstract if `abstract_ns`).
fn unix_connect(name: &[u8], abstract_ns: bool) -> Report {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract: leading NUL then the name (no terminator). Pathname: name then NUL.
    let start = usize::from(abstract_ns);
    if start + name.len() + usize::from(!abstract_ns) > addr.sun_path.len() {
        return Report::error("socket name too long for sockaddr_un");
    }
    for (dst, src) in addr.sun_path[start..].iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path)
        + start
        + name.len()
        + usize::from(!abstract_ns);
    let Ok(len) = libc::socklen_t::try_from(len) else {
        return Report::error("bad socket address length");
    };
    let mut a = Attempts::default();
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        a.add::<i64, _>("socket(AF_UNIX)", Err(last_err()));
        return a.report();
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    a.note("socket(AF_UNIX): succeeded");
    a.add("connect", cvt(r));
    a.report()
}

fn case_tcp_connect(addr: SocketAddr) -> Report {
    let mut a = Attempts::default();
    a.add(
        &format!("connect {addr}"),
        isolated(|| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map(|_| 0)
                .map_err(|e| e.to_string())
        }),
    );
    a.report()
}

fn case_tcp_bind(port: u16) -> Report {
    let mut a = Attempts::default();
    for ip in ["127.0.0.1", "0.0.0.0"] {
        let addr = format!("{ip}:{port}");
        let r = isolated(|| {
            TcpListener::bind(addr.as_str())
                .map(|_| 0)
                .map_err(|e| e.to_string())
        });
        a.add(&format!("bind {addr}"), r);
    }
    a.report()
}

/// Listen on `0.0.0.0:PORT` (every address the cell has) and answer each connection with one
/// line, until `millis` have passed. Meant to run in the background of a cell, so a test can
/// show the listener is reachable inside the cell and not from the host.
fn case_tcp_serve(port: u16, millis: u64) -> Report {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => return Report::new(Outcome::Blocked, format!("bind 0.0.0.0:{port}: {e}")),
    };
    if let Err(e) = listener.set_nonblocking(true) {
        return Report::error(format!("set_nonblocking: {e}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let mut served = 0u64;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.write_all(b"warren-cell-listener\n");
                served += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Report::error(format!("accept: {e}")),
        }
    }
    Report::new(Outcome::Escaped, format!("listened on 0.0.0.0:{port}"))
        .with("served", json!(served))
}

fn case_udp_send(addr: SocketAddr) -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
        sock.send_to(b"warren-probe-udp", addr)
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            .map_err(|e| format!("send_to: {e}"))
    });
    a.add(&format!("udp send_to {addr}"), r);
    a.report()
}

fn case_dns(name: &str) -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| match (name, 80).to_socket_addrs() {
        Ok(addrs) => match addrs.count() {
            0 => Err("resolved to no addresses".to_string()),
            n => Ok(i64::try_from(n).unwrap_or(i64::MAX)),
        },
        Err(e) => Err(e.to_string()),
    });
    let count = r.as_ref().map(|n| *n).unwrap_or(0);
    a.add(
        &format!("resolve {name}"),
        r.map(|n| format!("{n} addresses")),
    );
    a.report().with("addresses", json!(count))
}

fn case_raw_socket() -> Report {
    let mut a = Attempts::default();
    a.add(
        "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)",
        isolated(|| try_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)),
    );
    a.add(
        "socket(AF_PACKET, SOCK_RAW, 0)",
        isolated(|| try_socket(libc::AF_PACKET, libc::SOCK_RAW, 0)),
    );
    a.report()
}

/// `struct sockaddr_vm` from `<linux/vm_sockets.h>`.
#[repr(C)]
struct SockaddrVm {
    svm_family: libc::sa_family_t,
    svm_reserved1: u16,
    svm_port: u32,
    svm_cid: u32,
    svm_flags: u8,
    svm_zero: [u8; 3],
}

fn case_vsock() -> Report {
    let mut a = Attempts::default();
    let ok = a.add(
        "socket(AF_VSOCK, SOCK_STREAM)",
        isolated(|| try_socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)),
    );
    if ok {
        let r = isolated(|| {
            // SAFETY: socket takes no pointers.
            let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                return Err(format!("socket: {}", last_err()));
            }
            let addr = SockaddrVm {
                svm_family: libc::AF_VSOCK as libc::sa_family_t,
                svm_reserved1: 0,
                svm_port: 1024,
                svm_cid: 2,
                svm_flags: 0,
                svm_zero: [0; 3],
            };
            let len = std::mem::size_of::<SockaddrVm>() as libc::socklen_t;
            // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
            let r = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
            cvt(r).map_err(|e| format!("connect: {e}"))
        });
        a.add("connect vsock cid 2 port 1024", r);
    }
    a.report()
}

fn case_netlink_audit() -> Report {
    let mut a = Attempts::default();
    a.add(
        "socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT)",
        isolated(|| try_socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_AUDIT)),
    );
    a.report()
}

// ---------------------------------------------------------------------------
// Processes and kernel interfaces
// ---------------------------------------------------------------------------

/// Forks a sleeping target, runs `f(target)`, then kills and reaps the target.
fn with_sleeper(f: impl FnOnce(libc::pid_t) -> Attempt) -> Attempt {
    let target = fork_sleeper().map_err(|e| format!("fork: {e}"))?;
    let r = f(target);
    kill_and_reap(target);
    r
}

fn case_ptrace_sibling() -> Report {
    let mut a = Attempts::default();
    let attach = isolated(|| {
        with_sleeper(|pid| {
            let null = std::ptr::null_mut::<c_void>();
            // SAFETY: PTRACE_ATTACH takes no pointers (addr and data are ignored).
            let r = cvt(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, null, null) });
            if r.is_ok() {
                reap_stop(pid);
                // SAFETY: as above; detaching a tracee we attached to.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, null, null) };
            }
            r
        })
    });
    a.add("ptrace(PTRACE_ATTACH)", attach);
    let seize = isolated(|| {
        with_sleeper(|pid| {
            let null = std::ptr::null_mut::<c_void>();
            // SAFETY: PTRACE_SEIZE with null addr/data takes no pointers.
            cvt(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) })
        })
    });
    a.add("ptrace(PTRACE_SEIZE)", seize);
    a.report()
}

/// Waits for the attach stop of a freshly attached tracee.
fn reap_stop(pid: libc::pid_t) {
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
}

fn case_process_vm_readv() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        with_sleeper(|pid| {
            let mut buf = [0u8; 8];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: std::hint::black_box(&raw const PROBE_SECRET)
                    .cast_mut()
                    .cast(),
                iov_len: 8,
            };
            // SAFETY: `local` describes our own 8-byte buffer; `remote` is only read by the
            // kernel in the target's address space.
            let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            match cvt_isize(n)? {
                0 => Err("read 0 bytes".to_string()),
                n => Ok(n),
            }
        })
    });
    let bytes = r.as_ref().map(|n| *n).unwrap_or(0);
    a.add("process_vm_readv", r.map(|n| format!("{n} bytes")));
    a.report().with("bytes", json!(bytes))
}

fn case_mount() -> Report {
    let mut a = Attempts::default();
    a.add(
        "mount tmpfs on /tmp",
        isolated(|| {
            // SAFETY: all strings are NUL-terminated literals; data is null.
            cvt(unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            })
        }),
    );
    a.add(
        "mount --bind /tmp /workspace",
        isolated(|| {
            // SAFETY: all strings are NUL-terminated literals; fstype and data are null.
            cvt(unsafe {
                libc::mount(
                    c"/tmp".as_ptr(),
                    c"/workspace".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })
        }),
    );
    a.add(
        "umount2 /proc MNT_DETACH",
        isolated(|| {
            // SAFETY: NUL-terminated literal.
            cvt(unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) })
        }),
    );
    a.report()
}

fn case_unshare() -> Report {
    let flags: [(&str, c_int); 8] = [
        ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
        ("CLONE_NEWNS", libc::CLONE_NEWNS),
        ("CLONE_NEWNET", libc::CLONE_NEWNET),
        ("CLONE_NEWPID", libc::CLONE_NEWPID),
        ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
        ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
        ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
        (
            "CLONE_NEWUSER|CLONE_NEWNS",
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        ),
    ];
    let mut a = Attempts::default();
    for (name, flag) in flags {
        // SAFETY: unshare takes no pointers; it runs in a throwaway child.
        let r = isolated(|| cvt(unsafe { libc::unshare(flag) }));
        a.add(&format!("unshare({name})"), r);
    }
    let r = isolated(|| {
        let flags = c_long::from(libc::CLONE_NEWUSER | libc::SIGCHLD);
        // SAFETY: a fork-like clone (no new stack, no tid pointers); the child exits at once.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags,
                0 as c_long,
                0 as c_long,
                0 as c_long,
                0 as c_long,
            )
        };
        if pid == 0 {
            // SAFETY: we are the clone child; leave immediately.
            unsafe { libc::_exit(0) };
        }
        let r = cvt(pid)?;
        reap(libc::pid_t::try_from(pid).unwrap_or(-1));
        Ok(r)
    });
    a.add(
        "clone(CLONE_NEWUSER|SIGCHLD)",
        r.map(|pid| format!("child pid {pid}")),
    );
    a.report()
}

fn case_setns() -> Report {
    let mut a = Attempts::default();
    for path in ["/proc/self/ns/net", "/proc/1/ns/mnt", "/proc/self/ns/user"] {
        match File::open(path) {
            Ok(f) => {
                let fd = f.as_raw_fd();
                // SAFETY: `fd` is an open namespace fd inherited by the child.
                let r = isolated(|| cvt(unsafe { libc::setns(fd, 0) }));
                a.add(&format!("setns {path}"), r);
            }
            Err(e) => {
                a.add::<i64, _>(&format!("open {path}"), Err(e));
            }
        }
    }
    a.report()
}

fn pivot_root_attempt() -> Attempt {
    // SAFETY: NUL-terminated literals.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, c"/tmp".as_ptr(), c"/tmp".as_ptr()) })
}

fn case_chroot(with_chroot: bool) -> Report {
    let mut a = Attempts::default();
    if with_chroot {
        // SAFETY: NUL-terminated literal.
        a.add(
            "chroot /tmp",
            isolated(|| cvt(unsafe { libc::chroot(c"/tmp".as_ptr()) })),
        );
    }
    a.add("pivot_root /tmp /tmp", isolated(pivot_root_attempt));
    a.report()
}

fn case_kill(pid: libc::pid_t) -> Report {
    let mut a = Attempts::default();
    // SAFETY: kill takes no pointers.
    a.add(
        &format!("kill({pid}, 0)"),
        cvt(unsafe { libc::kill(pid, 0) }),
    );
    // SAFETY: kill takes no pointers.
    a.add(
        &format!("kill({pid}, SIGKILL)"),
        cvt(unsafe { libc::kill(pid, libc::SIGKILL) }),
    );
    a.report()
}

fn case_io_uring() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        let mut params = [0u64; 15]; // struct io_uring_params: 120 bytes
        // SAFETY: `params` is a writable, zeroed 120-byte io_uring_params.
        cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, 8 as c_long, params.as_mut_ptr()) })
    });
    a.add("io_uring_setup(8)", r);
    a.report()
}

fn case_bpf() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        let mut attr = [0u32; 32]; // union bpf_attr, 128 bytes
        attr[0] = BPF_MAP_TYPE_ARRAY; // map_type
        attr[1] = 4; // key_size
        attr[2] = 4; // value_size
        attr[3] = 1; // max_entries
        let size = std::mem::size_of_val(&attr) as c_long;
        // SAFETY: `attr` is a valid 128-byte bpf_attr.
        cvt(unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), size) })
    });
    a.add("bpf(BPF_MAP_CREATE, ARRAY)", r);
    a.report()
}

fn case_keyctl() -> Report {
    let mut a = Attempts::default();
    let add = isolated(|| {
        // SAFETY: NUL-terminated literals; payload "x" is 1 byte long.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"warren".as_ptr(),
                c"x".as_ptr(),
                1 as c_long,
                KEY_SPEC_PROCESS_KEYRING,
            )
        })
    });
    a.add("add_key(user, warren, process keyring)", add);
    let get = isolated(|| {
        // SAFETY: KEYCTL_GET_KEYRING_ID takes no pointers.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_GET_KEYRING_ID,
                KEY_SPEC_SESSION_KEYRING,
                1 as c_long,
            )
        })
    });
    a.add("keyctl(KEYCTL_GET_KEYRING_ID, session, create)", get);
    let req = isolated(|| {
        // SAFETY: NUL-terminated literals; callout info is null.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_request_key,
                c"user".as_ptr(),
                c"warren".as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0 as c_long,
            )
        })
    });
    a.add("request_key(user, warren)", req);
    a.report()
}

fn case_perf_event() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        let mut attr = [0u32; 32]; // struct perf_event_attr, 128 bytes
        attr[0] = PERF_TYPE_SOFTWARE; // type
        attr[1] = 128; // size
        attr[2] = PERF_COUNT_SW_CPU_CLOCK; // config (low half)
        // SAFETY: `attr` is a valid 128-byte perf_event_attr.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_mut_ptr(),
                0 as c_long,
                -1 as c_long,
                -1 as c_long,
                0 as c_long,
            )
        })
    });
    a.add("perf_event_open(SOFTWARE, CPU_CLOCK)", r);
    a.report()
}

fn case_userfaultfd() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        // SAFETY: userfaultfd takes no pointers.
        cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, c_long::from(libc::O_CLOEXEC)) })
    });
    a.add("userfaultfd(O_CLOEXEC)", r);
    a.report()
}

fn case_sethostname() -> Report {
    let mut a = Attempts::default();
    let name = b"pwned";
    // SAFETY: `name` is valid for `name.len()` bytes.
    let r = isolated(|| cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }));
    a.add("sethostname(pwned)", r);
    a.report()
}

fn tiocsti_attempt(fd: RawFd) -> Attempt {
    let byte: libc::c_char = b'x' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from the given valid pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSTI, &byte) })
}

fn case_tiocsti() -> Report {
    let mut a = Attempts::default();
    a.add("ioctl(0, TIOCSTI)", isolated(|| tiocsti_attempt(0)));
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
    {
        Ok(tty) => {
            let fd = tty.as_raw_fd();
            a.add("ioctl(/dev/tty, TIOCSTI)", isolated(|| tiocsti_attempt(fd)));
        }
        Err(e) => {
            a.add::<i64, _>("open /dev/tty", Err(e));
        }
    }
    a.report()
}

fn case_module() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        // SAFETY: null image with length 0; NUL-terminated params.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<c_void>(),
                0 as c_long,
                c"".as_ptr(),
            )
        })
    });
    a.add("init_module(NULL, 0)", r);
    match File::open("/dev/null") {
        Ok(f) => {
            let fd = c_long::from(f.as_raw_fd());
            let r = isolated(|| {
                // SAFETY: `fd` is open; params is a NUL-terminated literal.
                cvt(unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0 as c_long) })
            });
            a.add("finit_module(/dev/null)", r);
        }
        Err(e) => {
            a.add::<i64, _>("open /dev/null", Err(e));
        }
    }
    let r = isolated(|| {
        // SAFETY: NUL-terminated literal.
        cvt(unsafe { libc::syscall(libc::SYS_delete_module, c"x".as_ptr(), 0 as c_long) })
    });
    a.add("delete_module(x)", r);
    a.report()
}

fn case_kexec_reboot() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        // SAFETY: zero segments, null segment pointer.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_kexec_load,
                0 as c_long,
                0 as c_long,
                std::ptr::null::<c_void>(),
                0 as c_long,
            )
        })
    });
    a.add("kexec_load(0, 0, NULL, 0)", r);
    // SAFETY: reboot takes no pointers; CAD_OFF only changes Ctrl-Alt-Del handling.
    let r = isolated(|| cvt(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) }));
    a.add("reboot(LINUX_REBOOT_CMD_CAD_OFF)", r);
    a.report()
}

fn case_clock() -> Report {
    let mut a = Attempts::default();
    let r = isolated(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        cvt(unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) })
            .map_err(|e| format!("clock_gettime: {e}"))?;
        // SAFETY: `ts` is a valid timespec.
        cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
    });
    a.add("clock_settime(CLOCK_REALTIME, now)", r);
    let r = isolated(|| {
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid out-pointer; the timezone pointer may be null.
        cvt(unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) })
            .map_err(|e| format!("gettimeofday: {e}"))?;
        // SAFETY: `tv` is a valid timeval; the timezone pointer may be null.
        cvt(unsafe { libc::settimeofday(&tv, std::ptr::null()) })
    });
    a.add("settimeofday(now)", r);
    a.report()
}

fn case_swap_acct() -> Report {
    let mut a = Attempts::default();
    let path = Path::new("/tmp/x");
    // Make sure the target exists so that acct() can actually succeed if permitted.
    let created = !path.exists()
        && OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .is_ok();
    let r = isolated(|| {
        // SAFETY: NUL-terminated literal.
        let r = cvt(unsafe { libc::swapon(c"/tmp/x".as_ptr(), 0) });
        if r.is_ok() {
            // SAFETY: NUL-terminated literal; undo the swapon.
            unsafe { libc::swapoff(c"/tmp/x".as_ptr()) };
        }
        r
    });
    a.add("swapon(/tmp/x)", r);
    let r = isolated(|| {
        // SAFETY: NUL-terminated literal.
        let r = cvt(unsafe { libc::acct(c"/tmp/x".as_ptr()) });
        if r.is_ok() {
            // SAFETY: a null path turns accounting off again.
            unsafe { libc::acct(std::ptr::null()) };
        }
        r
    });
    a.add("acct(/tmp/x)", r);
    if created {
        let _ = std::fs::remove_file(path);
    }
    let r = isolated(|| {
        // SAFETY: SIZE_BUFFER takes no buffer.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_syslog,
                SYSLOG_ACTION_SIZE_BUFFER,
                std::ptr::null_mut::<c_void>(),
                0 as c_long,
            )
        })
    });
    a.add("syslog(SYSLOG_ACTION_SIZE_BUFFER)", r);
    let r = isolated(|| {
        let mut buf = vec![0u8; 16 * 1024];
        let len = buf.len() as c_long;
        // SAFETY: `buf` is writable for `len` bytes. Its contents are discarded.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_syslog,
                SYSLOG_ACTION_READ_ALL,
                buf.as_mut_ptr(),
                len,
            )
        })
    });
    a.add(
        "syslog(SYSLOG_ACTION_READ_ALL)",
        r.map(|n| format!("{n} bytes")),
    );
    a.report()
}

fn case_iopl() -> Report {
    let mut a = Attempts::default();
    // SAFETY: iopl takes no pointers; it runs in a throwaway child.
    a.add(
        "iopl(3)",
        isolated(|| cvt(unsafe { libc::syscall(libc::SYS_iopl, 3 as c_long) })),
    );
    // SAFETY: ioperm takes no pointers; it runs in a throwaway child.
    a.add(
        "ioperm(0x80, 1, 1)",
        isolated(|| cvt(unsafe { libc::ioperm(0x80, 1, 1) })),
    );
    a.report()
}

/// `struct file_handle` with an 8-byte handle.
#[repr(C)]
struct FileHandle8 {
    handle_bytes: u32,
    handle_type: c_int,
    f_handle: [u8; 8],
}

fn case_open_by_handle() -> Report {
    let mut a = Attempts::default();
    match File::open("/") {
        Ok(root) => {
            let mount_fd = c_long::from(root.as_raw_fd());
            let r = isolated(|| {
                let mut fh = FileHandle8 {
                    handle_bytes: 8,
                    handle_type: 1,
                    f_handle: [0; 8],
                };
                // SAFETY: `fh` is a valid file_handle with 8 handle bytes; mount_fd is open.
                cvt(unsafe {
                    libc::syscall(
                        libc::SYS_open_by_handle_at,
                        mount_fd,
                        &raw mut fh,
                        c_long::from(libc::O_RDONLY),
                    )
                })
            });
            a.add("open_by_handle_at(/, type 1)", r);
        }
        Err(e) => {
            a.add::<i64, _>("open /", Err(e));
        }
    }
    a.report()
}

/// `__X32_SYSCALL_BIT`: x32 system calls are native x86_64 numbers with this bit set.
const X32_SYSCALL_BIT: c_long = 0x4000_0000;

/// Raw x32 system calls (`getpid`, and `write` of one byte to `/dev/null`); native `getpid` is
/// reported as a control. The error text carries the errno (`os error N`), so a caller can tell
/// a filter's answer (`EPERM`) from a kernel without x32 (`ENOSYS`).
fn case_x32_syscall() -> Report {
    let mut a = Attempts::default();
    // SAFETY: getpid takes no arguments.
    let native = unsafe { libc::syscall(libc::SYS_getpid) };
    a.note(format!("native getpid: {native}"));
    a.add(
        "syscall(0x40000000 | SYS_getpid)",
        // SAFETY: getpid takes no arguments; an x32 number is just a number to the kernel.
        isolated(|| cvt(unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) })),
    );
    let write = match OpenOptions::new().write(true).open("/dev/null") {
        Ok(null) => {
            let fd = c_long::from(null.as_raw_fd());
            isolated(|| {
                let byte = b"x";
                // SAFETY: write(fd, buf, 1) with a valid one-byte buffer and an open fd.
                cvt(unsafe {
                    libc::syscall(X32_SYSCALL_BIT | libc::SYS_write, fd, byte.as_ptr(), 1usize)
                })
            })
        }
        Err(e) => Err(format!("open /dev/null: {e}")),
    };
    a.add("syscall(0x40000000 | SYS_write, /dev/null, 1 byte)", write);
    a.report().with("native_getpid", json!(native))
}

// ---------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------

fn case_fork_bomb(limit: u64) -> Report {
    let max = limit.saturating_mul(4);
    let mut pids: Vec<libc::pid_t> = Vec::new();
    let mut error: Option<io::Error> = None;
    while (pids.len() as u64) < max {
        match fork_sleeper() {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    for &pid in &pids {
        // SAFETY: kill takes no pointers; `pid` is our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &pids {
        reap(pid);
    }
    let forked = pids.len() as u64;
    let (outcome, detail) = match &error {
        Some(e) if forked < max => (
            Outcome::Blocked,
            format!("fork failed after {forked} children: {e}"),
        ),
        Some(e) => (
            Outcome::Escaped,
            format!("forked {forked} children, then fork: {e}"),
        ),
        None => (
            Outcome::Escaped,
            format!("forked {forked} children (limit*4 = {max}) without failure"),
        ),
    };
    Report::new(outcome, detail)
        .with("forked", json!(forked))
        .with("error", error.map_or(Value::Null, |e| json!(e.to_string())))
}

fn case_memory_hog(mib: u64) -> Report {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut failure = None;
    for _ in 0..mib {
        let mut chunk: Vec<u8> = Vec::new();
        if let Err(e) = chunk.try_reserve_exact(MIB) {
            failure = Some(e.to_string());
            break;
        }
        chunk.resize(MIB, 0);
        for byte in chunk.iter_mut().step_by(4096) {
            *byte = 1;
        }
        chunks.push(std::hint::black_box(chunk));
    }
    let allocated = std::hint::black_box(&chunks).len() as u64;
    match failure {
        Some(e) => Report::new(
            Outcome::Blocked,
            format!("allocation failed after {allocated} MiB: {e}"),
        )
        .with("allocated_mib", json!(allocated)),
        None => Report::new(
            Outcome::Escaped,
            format!("allocated and touched {allocated} MiB"),
        )
        .with("allocated_mib", json!(allocated)),
    }
}

fn case_spin() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

fn case_disk_fill(path: &Path, limit: u64) -> Report {
    let stop_at = limit.saturating_mul(4);
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            return Report::new(Outcome::Blocked, format!("open: {e}"))
                .with("written", json!(0))
                .with("error", json!(e.to_string()));
        }
    };
    let chunk = vec![b'x'; MIB];
    let mut written: u64 = 0;
    let mut error: Option<io::Error> = None;
    'outer: while written < stop_at {
        let mut off = 0;
        while off < chunk.len() {
            match file.write(&chunk[off..]) {
                Ok(0) => {
                    error = Some(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
                    break 'outer;
                }
                Ok(n) => {
                    off += n;
                    written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break 'outer;
                }
            }
        }
    }
    drop(file);
    let removed = match std::fs::remove_file(path) {
        Ok(()) => "file removed".to_string(),
        Err(e) => format!("remove: {e}"),
    };
    let (outcome, detail) = match &error {
        Some(e) if written <= limit.saturating_add(MIB as u64) => (
            Outcome::Blocked,
            format!("write failed after {written} bytes (limit {limit}): {e}; {removed}"),
        ),
        Some(e) => (
            Outcome::Escaped,
            format!("wrote {written} bytes (> limit {limit} + 1 MiB) before write: {e}; {removed}"),
        ),
        None => (
            Outcome::Escaped,
            format!("wrote {written} bytes (limit*4) without failure; {removed}"),
        ),
    };
    Report::new(outcome, detail)
        .with("written", json!(written))
        .with("error", error.map_or(Value::Null, |e| json!(e.to_string())))
}

// ---------------------------------------------------------------------------
// Identity and environment
// ---------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn case_env_absent(name: &OsString) -> Report {
    let needle = name.as_bytes();
    let mut found: Vec<&str> = Vec::new();
    let mut parts = Vec::new();
    if std::env::var_os(name).is_some() {
        found.push("env");
        parts.push("std::env::var_os: present".to_string());
    } else {
        parts.push("std::env::var_os: absent".to_string());
    }
    for path in ["/proc/self/environ", "/proc/1/environ"] {
        match std::fs::read(path) {
            Ok(bytes) if contains(&bytes, needle) => {
                found.push(path);
                parts.push(format!("{path}: present ({} bytes read)", bytes.len()));
            }
            Ok(bytes) => parts.push(format!("{path}: absent ({} bytes read)", bytes.len())),
            Err(e) => parts.push(format!("{path}: not readable: {e}")),
        }
    }
    let outcome = if found.is_empty() {
        Outcome::Blocked
    } else {
        Outcome::Escaped
    };
    Report::new(outcome, parts.join("; ")).with("found_in", json!(found))
}

fn case_fds() -> Report {
    let names: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect(),
        Err(e) => return Report::error(format!("opendir /proc/self/fd: {e}")),
    };
    // The directory's own fd is closed now, so its readlink fails and it drops out.
    let mut fds: Vec<(i32, String)> = names
        .into_iter()
        .filter_map(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .map(|t| (fd, t.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
    let listing: Vec<String> = fds.iter().map(|(fd, t)| format!("{fd} -> {t}")).collect();
    let outcome = if numbers == [0, 1, 2] {
        Outcome::Blocked
    } else {
        Outcome::Escaped
    };
    let detail = if outcome == Outcome::Blocked {
        format!("only stdio open: {}", listing.join(", "))
    } else {
        format!("open fds beyond 0,1,2: {}", listing.join(", "))
    };
    let fds_json: Vec<Value> = fds
        .iter()
        .map(|(fd, t)| json!({"fd": fd, "target": t}))
        .collect();
    Report::new(outcome, detail).with("fds", Value::Array(fds_json))
}

/// The fields of `/proc/self/status` that `caps` checks.
#[derive(Debug, Default)]
struct Status {
    caps: [(&'static str, Option<String>); 5],
    no_new_privs: Option<String>,
    seccomp: Option<String>,
    uid: Vec<u32>,
    gid: Vec<u32>,
}

fn parse_status(text: &str) -> Status {
    let mut st = Status {
        caps: [
            ("CapInh", None),
            ("CapPrm", None),
            ("CapEff", None),
            ("CapBnd", None),
            ("CapAmb", None),
        ],
        ..Status::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let ids = || {
            value
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        };
        match key {
            "NoNewPrivs" => st.no_new_privs = Some(value.to_string()),
            "Seccomp" => st.seccomp = Some(value.to_string()),
            "Uid" => st.uid = ids(),
            "Gid" => st.gid = ids(),
            _ => {
                if let Some(slot) = st.caps.iter_mut().find(|(name, _)| *name == key) {
                    slot.1 = Some(value.to_string());
                }
            }
        }
    }
    st
}

fn case_caps() -> Report {
    let text = match std::fs::read_to_string("/proc/self/status") {
        Ok(t) => t,
        Err(e) => return Report::error(format!("read /proc/self/status: {e}")),
    };
    let st = parse_status(&text);
    let mut problems = Vec::new();
    let mut facts = Vec::new();
    for (name, value) in &st.caps {
        match value {
            Some(v) if u64::from_str_radix(v, 16) == Ok(0) => facts.push(format!("{name}=0")),
            Some(v) => problems.push(format!("{name}={v} (nonzero)")),
            None => problems.push(format!("{name} missing")),
        }
    }
    match st.no_new_privs.as_deref() {
        Some("1") => facts.push("NoNewPrivs=1".to_string()),
        Some(v) => problems.push(format!("NoNewPrivs={v}")),
        None => problems.push("NoNewPrivs missing".to_string()),
    }
    match st.seccomp.as_deref() {
        Some("2") => facts.push("Seccomp=2".to_string()),
        Some(v) => problems.push(format!("Seccomp={v}")),
        None => problems.push("Seccomp missing".to_string()),
    }
    match st.uid.get(1) {
        Some(0) => problems.push("euid=0".to_string()),
        Some(euid) => facts.push(format!("euid={euid}")),
        None => problems.push("Uid missing".to_string()),
    }
    let (outcome, detail) = if problems.is_empty() {
        (Outcome::Blocked, facts.join(", "))
    } else {
        (
            Outcome::Escaped,
            format!("{} (ok: {})", problems.join(", "), facts.join(", ")),
        )
    };
    let mut report = Report::new(outcome, detail);
    for (name, value) in st.caps {
        report = report.with(name, json!(value));
    }
    let num = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| s.parse::<i64>().ok())
            .map_or(Value::Null, |n| json!(n))
    };
    report
        .with("NoNewPrivs", num(&st.no_new_privs))
        .with("Seccomp", num(&st.seccomp))
        .with("Uid", json!(st.uid))
        .with("Gid", json!(st.gid))
}

fn case_setuid_exec(path: &Path) -> Report {
    let output = match std::process::Command::new(path)
        .arg("caps")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => return Report::new(Outcome::Blocked, format!("exec {}: {e}", path.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed = stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object);
    let Some(child) = parsed else {
        return Report::error(format!(
            "child ran ({}) but printed no JSON report ({} bytes of stdout)",
            output.status,
            output.stdout.len()
        ));
    };
    let outcome = Outcome::parse(child.get("outcome").and_then(Value::as_str).unwrap_or(""));
    let detail = child
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Report::new(outcome, format!("child: {detail}")).with("child", child)
}

fn case_whoami() -> Report {
    // SAFETY: these getters take no pointers and cannot fail.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    // SAFETY: a zero size with a null list only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(n).unwrap_or(0)];
    // SAFETY: `groups` has room for `n` entries.
    let got = unsafe { libc::getgroups(n.max(0), groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(got).unwrap_or(0));
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its full length.
    let hostname = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        format!("<{}>", last_err())
    };
    let cwd = match std::env::current_dir() {
        Ok(p) => p.display().to_string(),
        Err(e) => format!("<{e}>"),
    };
    let pid = std::process::id();
    let detail = format!(
        "uid={uid} euid={euid} gid={gid} egid={egid} groups={groups:?} hostname={hostname} cwd={cwd} pid={pid}"
    );
    Report::new(Outcome::Info, detail)
        .with("uid", json!(uid))
        .with("euid", json!(euid))
        .with("gid", json!(gid))
        .with("egid", json!(egid))
        .with("groups", json!(groups))
        .with("hostname", json!(hostname))
        .with("cwd", json!(cwd))
        .with("pid", json!(pid))
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

const USAGE: &str = "usage: warren-probe CASE ARGS... (cases: read-file PATH, write-file PATH, \
mkdir PATH, list-dir PATH, mknod-block PATH, open-device PATH, chmod-setuid PATH, \
unix-connect PATH, abstract-connect NAME, tcp-connect IP:PORT, tcp-bind PORT, tcp-serve PORT MILLIS, udp-send IP:PORT, \
dns NAME, raw-socket, vsock, netlink-audit, ptrace-sibling, process-vm-readv, mount, unshare, \
setns, chroot, pivot-root, kill PID, io-uring, bpf, keyctl, perf-event, userfaultfd, \
sethostname, tiocsti, module, kexec-reboot, clock, swap-acct, iopl, open-by-handle, \
x32-syscall, fork-bomb LIMIT, memory-hog MIB, spin, disk-fill PATH LIMIT_BYTES, env-absent NAME, fds, caps, \
setuid-exec PATH, whoami)";

/// Positional arguments of a case, with typed accessors that produce error reports.
struct Args {
    case: String,
    args: Vec<OsString>,
}

impl Args {
    fn expect(&self, n: usize, names: &str) -> Result<(), Report> {
        if self.args.len() == n {
            Ok(())
        } else {
            Err(Report::error(format!(
                "case {} takes {n} argument(s) ({names}), got {}",
                self.case,
                self.args.len()
            )))
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(&self.args[i])
    }

    fn string(&self, i: usize) -> Result<String, Report> {
        self.args[i]
            .clone()
            .into_string()
            .map_err(|_| Report::error(format!("argument {} is not UTF-8", i + 1)))
    }

    fn parse<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, Report>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.string(i)?;
        s.parse()
            .map_err(|e| Report::error(format!("bad {what} {s:?}: {e}")))
    }
}

fn run(a: &Args) -> Result<Report, Report> {
    let none = || a.expect(0, "none");
    let one = |what: &str| a.expect(1, what);
    let report = match a.case.as_str() {
        "read-file" => {
            one("PATH")?;
            case_read_file(&a.path(0))
        }
        "write-file" => {
            one("PATH")?;
            case_write_file(&a.path(0))
        }
        "mkdir" => {
            one("PATH")?;
            case_mkdir(&a.path(0))
        }
        "list-dir" => {
            one("PATH")?;
            case_list_dir(&a.path(0))
        }
        "mknod-block" => {
            one("PATH")?;
            case_mknod_block(&a.path(0))
        }
        "open-device" => {
            one("PATH")?;
            case_open_device(&a.path(0))
        }
        "chmod-setuid" => {
            one("PATH")?;
            case_chmod_setuid(&a.path(0))
        }
        "unix-connect" => {
            one("PATH")?;
            unix_connect(a.args[0].as_bytes(), false)
        }
        "abstract-connect" => {
            one("NAME")?;
            unix_connect(a.args[0].as_bytes(), true)
        }
        "tcp-connect" => {
            one("IP:PORT")?;
            case_tcp_connect(a.parse(0, "IP:PORT")?)
        }
        "tcp-bind" => {
            one("PORT")?;
            case_tcp_bind(a.parse(0, "PORT")?)
        }
        "tcp-serve" => {
            a.expect(2, "PORT MILLIS")?;
            case_tcp_serve(a.parse(0, "PORT")?, a.parse(1, "MILLIS")?)
        }
        "udp-send" => {
            one("IP:PORT")?;
            case_udp_send(a.parse(0, "IP:PORT")?)
        }
        "dns" => {
            one("NAME")?;
            case_dns(&a.string(0)?)
        }
        "raw-socket" => {
            none()?;
            case_raw_socket()
        }
        "vsock" => {
            none()?;
            case_vsock()
        }
        "netlink-audit" => {
            none()?;
            case_netlink_audit()
        }
        "ptrace-sibling" => {
            none()?;
            case_ptrace_sibling()
        }
        "process-vm-readv" => {
            none()?;
            case_process_vm_readv()
        }
        "mount" => {
            none()?;
            case_mount()
        }
        "unshare" => {
            none()?;
            case_unshare()
        }
        "setns" => {
            none()?;
            case_setns()
        }
        "chroot" => {
            none()?;
            case_chroot(true)
        }
        "pivot-root" => {
            none()?;
            case_chroot(false)
        }
        "kill" => {
            one("PID")?;
            case_kill(a.parse(0, "PID")?)
        }
        "io-uring" => {
            none()?;
            case_io_uring()
        }
        "bpf" => {
            none()?;
            case_bpf()
        }
        "keyctl" => {
            none()?;
            case_keyctl()
        }
        "perf-event" => {
            none()?;
            case_perf_event()
        }
        "userfaultfd" => {
            none()?;
            case_userfaultfd()
        }
        "sethostname" => {
            none()?;
            case_sethostname()
        }
        "tiocsti" => {
            none()?;
            case_tiocsti()
        }
        "module" => {
            none()?;
            case_module()
        }
        "kexec-reboot" => {
            none()?;
            case_kexec_reboot()
        }
        "clock" => {
            none()?;
            case_clock()
        }
        "swap-acct" => {
            none()?;
            case_swap_acct()
        }
        "iopl" => {
            none()?;
            case_iopl()
        }
        "open-by-handle" => {
            none()?;
            case_open_by_handle()
        }
        "x32-syscall" => {
            none()?;
            case_x32_syscall()
        }
        "fork-bomb" => {
            one("LIMIT")?;
            case_fork_bomb(a.parse(0, "LIMIT")?)
        }
        "memory-hog" => {
            one("MIB")?;
            case_memory_hog(a.parse(0, "MIB")?)
        }
        "spin" => {
            none()?;
            case_spin()
        }
        "disk-fill" => {
            a.expect(2, "PATH LIMIT_BYTES")?;
            case_disk_fill(&a.path(0), a.parse(1, "LIMIT_BYTES")?)
        }
        "env-absent" => {
            one("NAME")?;
            case_env_absent(&a.args[0])
        }
        "fds" => {
            none()?;
            case_fds()
        }
        "caps" => {
            none()?;
            case_caps()
        }
        "setuid-exec" => {
            one("PATH")?;
            case_setuid_exec(&a.path(0))
        }
        "whoami" => {
            none()?;
            case_whoami()
        }
        other => return Err(Report::error(format!("unknown case {other:?}; {USAGE}"))),
    };
    Ok(report)
}

fn main() {
    let mut argv = std::env::args_os().skip(1);
    let (case, report) = match argv.next() {
        None => (
            String::new(),
            Report::error(format!("no case given; {USAGE}")),
        ),
        Some(case) => {
            let case = String::from_utf8_lossy(&case.into_vec()).into_owned();
            let args = Args {
                case: case.clone(),
                args: argv.collect(),
            };
            let report = run(&args).unwrap_or_else(|e| e);
            (case, report)
        }
    };
    let line = report.to_line(&case);
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    std::process::exit(if report.outcome == Outcome::Error {
        2
    } else {
        0
    });
}
