//! Host capability detection (`warren check`).
//!
//! [`detect`] runs a set of small probes and returns a [`HostReport`]: every
//! sandboxing mechanism Warren may use, whether it works, what was found and
//! *how* it was found, followed by which cell tiers can run on this host.
//! [`render`] turns the report into aligned human-readable text; the report
//! itself is the `--json` output (field names are stable, snake_case).
//!
//! # Forked probes
//!
//! Probes that would change the calling process (unsharing namespaces,
//! dropping privileges, installing a seccomp filter, mounting) run in a
//! `fork()`ed child. Everything the child needs (paths, buffers, BPF program)
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
//! take locks; the `warren` CLI is single-threaded when it calls [`detect`],
//! and the test harness's other threads cannot hold anything the children use.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Everything `warren check` found out about this host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Kernel release, as reported by `uname(2)` (`utsname.release`).
    pub kernel: String,
    /// Effective uid of the process that ran the probes.
    pub euid: u32,
    /// Every probed mechanism, in a stable order.
    pub features: Vec<Feature>,
    /// Which cell tiers can run, derived from `features`.
    pub tiers: Vec<TierStatus>,
}

/// One probed host mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `"user_namespace.unprivileged"`.
    pub name: String,
    /// Whether the mechanism is usable by this process.
    pub available: bool,
    /// What was found, e.g. `"ABI 7: fs, refer, truncate, ..."`.
    pub detail: String,
    /// How it was detected, e.g. `"fork + unshare(CLONE_NEWUSER)"`.
    pub how: String,
}

/// Whether one cell tier can run on this host.
#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    /// Tier name: `"process"`, `"microvm"`, `"wasi"` or `"oci"`.
    pub tier: String,
    /// Whether cells of this tier can run here.
    pub runnable: bool,
    /// Names of the required features that are not available.
    pub missing: Vec<String>,
    /// Free-form remarks (resource limit enforcement, build status, ...).
    pub note: String,
}

/// Which cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum CgroupLayout {
    /// Unified (v2) hierarchy only.
    V2 {
        /// Mount point of the cgroup2 filesystem.
        mount: PathBuf,
        /// Controllers listed in the root's `cgroup.controllers`.
        controllers: Vec<String>,
    },
    /// Legacy (v1) hierarchies only.
    V1 {
        /// Controller name → mount directory of its hierarchy.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// Both a cgroup2 mount and v1 controller hierarchies.
    Hybrid {
        /// Mount point of the cgroup2 filesystem.
        v2_mount: PathBuf,
        /// Controllers listed in the v2 root's `cgroup.controllers`.
        v2_controllers: Vec<String>,
        /// Controller name → mount directory of its v1 hierarchy.
        v1: BTreeMap<String, PathBuf>,
    },
    /// No cgroup filesystem is mounted.
    None,
}

impl HostReport {
    /// `Ok(())` if the process tier can run; otherwise an error naming the
    /// missing mechanisms, e.g.
    /// `"process tier cannot run: missing user_namespace.current_user, landlock"`.
    pub fn process_tier_ready(&self) -> Result<(), String> {
        match self.tiers.iter().find(|t| t.tier == "process") {
            Some(t) if t.runnable => Ok(()),
            Some(t) if t.missing.is_empty() => {
                Err("process tier cannot run: missing (unknown)".to_string())
            }
            Some(t) => Err(format!(
                "process tier cannot run: missing {}",
                t.missing.join(", ")
            )),
            None => Err("process tier cannot run: not evaluated".to_string()),
        }
    }

    fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    fn has(&self, name: &str) -> bool {
        self.feature(name).is_some_and(|f| f.available)
    }
}

/// The uid/gid the probes drop to when run as root to test "unprivileged".
const NOBODY: u32 = 65534;

/// Features the process tier cannot run without.
const PROCESS_TIER_REQUIRES: [&str; 9] = [
    "user_namespace.current_user",
    "namespace.mount",
    "namespace.pid",
    "namespace.net",
    "namespace.ipc",
    "namespace.uts",
    "namespace.cgroup",
    "landlock",
    "seccomp",
];

/// Runs every probe and derives the tier statuses. Never panics; a probe that
/// cannot run is reported as unavailable with the reason in `detail`.
pub fn detect() -> HostReport {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mut features = vec![probe_userns_current(euid), probe_userns_unprivileged(euid)];
    features.extend(probe_namespaces());
    features.push(probe_overlayfs(euid));
    features.push(probe_overlayfs_userns(euid));
    features.extend(probe_landlock());
    features.extend(probe_seccomp());
    features.extend(probe_cgroups());
    features.push(probe_fuse());
    features.push(probe_kvm());
    features.push(probe_vsock());
    features.push(probe_bubblewrap());

    let mut report = HostReport {
        kernel: kernel_release(),
        euid,
        features,
        tiers: Vec::new(),
    };
    report.tiers = tiers(&report);
    report
}

/// Renders the report as aligned text: one line per feature (✓/✗, id,
/// detail) with the detection method beneath it, then one line per tier.
pub fn render(report: &HostReport) -> String {
    let mut out = String::new();
    let who = if report.euid == 0 { " (root)" } else { "" };
    out.push_str(&format!(
        "Warren host check: kernel {}, euid {}{}\n\nFeatures\n",
        report.kernel, report.euid, who
    ));
    let width = report
        .features
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
    for f in &report.features {
        out.push_str(&format!(
            "  {} {:<width$}  {}\n",
            mark(f.available),
            f.name,
            f.detail
        ));
        out.push_str(&format!("    {:<width$}  how: {}\n", "", f.how));
    }
    out.push_str("\nTiers\n");
    let twidth = report
        .tiers
        .iter()
        .map(|t| t.tier.chars().count())
        .max()
        .unwrap_or(0);
    for t in &report.tiers {
        let status = if t.runnable {
            "runnable".to_string()
        } else if t.missing.is_empty() {
            "not runnable".to_string()
        } else {
            format!("not runnable, missing {}", t.missing.join(", "))
        };
        let note = if t.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", t.note)
        };
        out.push_str(&format!(
            "  {} {:<twidth$}  {}{}\n",
            mark(t.runnable),
            t.tier,
            status,
            note
        ));
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn feature(
    name: &str,
    available: bool,
    detail: impl Into<String>,
    how: impl Into<String>,
) -> Feature {
    Feature {
        name: name.to_string(),
        available,
        detail: detail.into(),
        how: how.into(),
    }
}

// ---------------------------------------------------------------------------
// Tiers

fn tiers(report: &HostReport) -> Vec<TierStatus> {
    let missing: Vec<String> = PROCESS_TIER_REQUIRES
        .iter()
        .filter(|name| !report.has(name))
        .map(|name| (*name).to_string())
        .collect();
    let abi = report
        .feature("landlock")
        .filter(|f| f.available)
        .and_then(|f| f.detail.strip_prefix("ABI "))
        .and_then(|d| d.split(':').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    let landlock_note = if abi == 0 {
        "no Landlock".to_string()
    } else {
        format!("Landlock ABI {abi}")
    };
    let process = TierStatus {
        tier: "process".to_string(),
        runnable: missing.is_empty(),
        missing,
        note: format!("{}; {}", cgroup_note(report), landlock_note),
    };

    let kvm = report.has("kvm");
    let microvm = TierStatus {
        tier: "microvm".to_string(),
        runnable: kvm,
        missing: if kvm {
            Vec::new()
        } else {
            vec!["kvm".to_string()]
        },
        note: if kvm {
            "KVM is usable, but the microvm tier is not built in this version".to_string()
        } else {
            "not built in this version".to_string()
        },
    };
    let unbuilt = |tier: &str| TierStatus {
        tier: tier.to_string(),
        runnable: false,
        missing: Vec::new(),
        note: "not built in this version".to_string(),
    };
    vec![process, microvm, unbuilt("wasi"), unbuilt("oci")]
}

/// Which cgroup version would enforce each of the memory/pids/cpu limits.
fn cgroup_note(report: &HostReport) -> String {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    let mut none = Vec::new();
    for ctrl in ["memory", "pids", "cpu"] {
        if report.has(&format!("cgroup.v2.{ctrl}")) {
            v2.push(ctrl);
        } else if report.has(&format!("cgroup.v1.{ctrl}")) {
            v1.push(ctrl);
        } else {
            none.push(ctrl);
        }
    }
    if none.len() == 3 {
        return "no writable cgroup: memory/pids/cpu limits will be refused".to_string();
    }
    let mut parts = Vec::new();
    if !v2.is_empty() {
        parts.push(format!("limits via cgroup v2 ({})", v2.join(", ")));
    }
    if !v1.is_empty() {
        parts.push(format!("limits via cgroup v1 ({})", v1.join(", ")));
    }
    if !none.is_empty() {
        let list = none.join("/");
        parts.push(format!(
            "no writable cgroup for {list}: {list} limits will be refused"
        ));
    }
    parts.join("; ")
}

// ---------------------------------------------------------------------------
// Forked-child machinery

/// How long a probe child may run before it is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit status: a step failed but errno was 0 or out of range.
const EXIT_NO_ERRNO: i32 = 251;
/// Exit status: the probe closure panicked.
const EXIT_PANIC: i32 = 252;

/// A failed step inside a probe child: its index and the errno it left.
#[derive(Debug, Clone, Copy)]
struct StepError {
    step: u8,
    errno: i32,
}

/// What happened to a probe child.
#[derive(Debug, Clone, PartialEq)]
enum ChildOutcome {
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

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Maps a libc return value to a step result (negative = failure).
fn ck(step: u8, ret: libc::c_int) -> Result<(), StepError> {
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
fn write_path(path: &CStr, data: &[u8]) -> libc::c_int {
    // SAFETY: path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return -1;
    }
    write_fd_and_close(fd, data)
}

/// Writes `data` in one `write(2)` and closes `fd`; `-1` with errno on failure.
fn write_fd_and_close(fd: libc::c_int, data: &[u8]) -> libc::c_int {
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
fn run_in_child<F: FnOnce() -> Result<(), StepError>>(probe: F) -> ChildOutcome {
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
fn describe(outcome: &ChildOutcome, steps: &[&str]) -> (bool, String) {
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
fn errno_text(errno: i32) -> String {
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
fn drop_to_nobody() -> Result<(), StepError> {
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

const DROP_STEPS: [&str; 4] = [
    "setgroups(0, NULL)",
    "setresgid(65534)",
    "setresuid(65534)",
    "prctl(PR_SET_DUMPABLE, 1)",
];

// ---------------------------------------------------------------------------
// User namespaces and other namespaces

fn probe_userns_current(euid: u32) -> Feature {
    let outcome = run_in_child(|| {
        // SAFETY: unshare only affects the (forked) calling process.
        ck(0, unsafe { libc::unshare(libc::CLONE_NEWUSER) })
    });
    let (ok, why) = describe(&outcome, &["unshare(CLONE_NEWUSER)"]);
    let detail = if ok {
        format!("unshare(CLONE_NEWUSER) works as euid {euid}")
    } else {
        why
    };
    feature(
        "user_namespace.current_user",
        ok,
        detail,
        "fork + unshare(CLONE_NEWUSER) in the child",
    )
}

fn probe_userns_unprivileged(euid: u32) -> Feature {
    let root = euid == 0;
    let outcome = run_in_child(|| {
        if root {
            drop_to_nobody()?;
        }
        // SAFETY: unshare only affects the (forked) calling process.
        ck(4, unsafe { libc::unshare(libc::CLONE_NEWUSER) })
    });
    let steps = [
        DROP_STEPS[0],
        DROP_STEPS[1],
        DROP_STEPS[2],
        DROP_STEPS[3],
        "unshare(CLONE_NEWUSER)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let uid = if root { NOBODY } else { euid };
    let mut detail = if ok {
        format!("unshare(CLONE_NEWUSER) works as uid {uid}")
    } else {
        format!("as uid {uid}: {why}")
    };
    let sysctls: Vec<String> = [
        (
            "kernel.unprivileged_userns_clone",
            "/proc/sys/kernel/unprivileged_userns_clone",
        ),
        (
            "user.max_user_namespaces",
            "/proc/sys/user/max_user_namespaces",
        ),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ]
    .iter()
    .filter_map(|(name, path)| {
        std::fs::read_to_string(path)
            .ok()
            .map(|v| format!("{name}={}", v.trim()))
    })
    .collect();
    if !sysctls.is_empty() {
        detail.push_str(&format!("; {}", sysctls.join(", ")));
    }
    let how = if root {
        "fork + setgroups(0, NULL) + setresgid(65534) + setresuid(65534) + prctl(PR_SET_DUMPABLE, 1) + unshare(CLONE_NEWUSER); \
         sysctls read from /proc/sys"
            .to_string()
    } else {
        format!(
            "fork + unshare(CLONE_NEWUSER) as euid {euid} (already unprivileged); sysctls read from /proc/sys"
        )
    };
    feature("user_namespace.unprivileged", ok, detail, how)
}

fn probe_namespaces() -> Vec<Feature> {
    [
        ("namespace.mount", libc::CLONE_NEWNS, "CLONE_NEWNS"),
        ("namespace.pid", libc::CLONE_NEWPID, "CLONE_NEWPID"),
        ("namespace.net", libc::CLONE_NEWNET, "CLONE_NEWNET"),
        ("namespace.ipc", libc::CLONE_NEWIPC, "CLONE_NEWIPC"),
        ("namespace.uts", libc::CLONE_NEWUTS, "CLONE_NEWUTS"),
        ("namespace.cgroup", libc::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    ]
    .iter()
    .map(|&(name, flag, flag_name)| {
        let outcome = run_in_child(|| {
            // SAFETY: unshare only affects the (forked) calling process.
            ck(0, unsafe { libc::unshare(libc::CLONE_NEWUSER | flag) })
        });
        let call = format!("unshare(CLONE_NEWUSER | {flag_name})");
        let (ok, why) = describe(&outcome, &[call.as_str()]);
        let detail = if ok { format!("{call} works") } else { why };
        feature(name, ok, detail, format!("fork + {call} in the child"))
    })
    .collect()
}

// ---------------------------------------------------------------------------
// Overlayfs

/// Scratch directories for an overlay mount test; removed on drop.
struct OverlayDirs {
    base: PathBuf,
    merged: CString,
    probe_file: CString,
    mount_data: CString,
}

static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

impl OverlayDirs {
    /// Creates `<tmp>/warren-check-<pid>-<nanos>-<n>/{lower,upper,work,merged}`,
    /// owned by `owner` (uid = gid) if given.
    fn create(owner: Option<u32>) -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let tmp = std::env::temp_dir();
        let mut base = None;
        for _ in 0..8 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = tmp.join(format!(
                "warren-check-{}-{nanos:08x}-{n}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => {
                    base = Some(candidate);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create scratch dir in {}: {e}",
                        tmp.display()
                    ));
                }
            }
        }
        let base = base.ok_or_else(|| format!("cannot create scratch dir in {}", tmp.display()))?;
        // From here on, dropping `dirs` cleans up.
        let mut dirs = OverlayDirs {
            base: base.clone(),
            merged: CString::default(),
            probe_file: CString::default(),
            mount_data: CString::default(),
        };
        let sub = |name: &str| base.join(name);
        for name in ["lower", "upper", "work", "merged"] {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(sub(name))
                .map_err(|e| format!("cannot create {}: {e}", sub(name).display()))?;
        }
        if let Some(id) = owner {
            for p in [
                base.clone(),
                sub("lower"),
                sub("upper"),
                sub("work"),
                sub("merged"),
            ] {
                std::os::unix::fs::chown(&p, Some(id), Some(id))
                    .map_err(|e| format!("cannot chown {}: {e}", p.display()))?;
            }
        }
        let bytes = |p: PathBuf| p.as_os_str().as_bytes().to_vec();
        for p in [sub("lower"), sub("upper"), sub("work")] {
            if p.as_os_str()
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b',' | b':' | b'\\'))
            {
                return Err(format!(
                    "scratch path {} contains ',', ':' or '\\'; overlay options cannot express it",
                    p.display()
                ));
            }
        }
        let mut data = b"lowerdir=".to_vec();
        data.extend(bytes(sub("lower")));
        data.extend(b",upperdir=");
        data.extend(bytes(sub("upper")));
        data.extend(b",workdir=");
        data.extend(bytes(sub("work")));
        let nul = |e: std::ffi::NulError| format!("scratch path contains NUL: {e}");
        dirs.mount_data = CString::new(data).map_err(nul)?;
        dirs.merged = CString::new(bytes(sub("merged"))).map_err(nul)?;
        dirs.probe_file = CString::new(bytes(sub("merged").join("probe"))).map_err(nul)?;
        Ok(dirs)
    }

    /// `mount("overlay", merged, "overlay", 0, data)` + create and write a
    /// file in `merged`; steps `first..=first + 2`. Safe to call after fork.
    fn mount_and_write(&self, first: u8) -> Result<(), StepError> {
        // SAFETY: all pointers are valid NUL-terminated strings owned by self.
        ck(first, unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                self.merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                self.mount_data.as_ptr().cast(),
            )
        })?;
        // SAFETY: probe_file is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                self.probe_file.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        ck(first + 1, fd)?;
        ck(first + 2, write_fd_and_close(fd, b"warren\n"))
    }
}

impl Drop for OverlayDirs {
    fn drop(&mut self) {
        remove_tree(&self.base);
    }
}

/// Removes a directory tree, first making every directory in it accessible
/// (overlayfs leaves a mode-000 `work/work` behind). Errors are ignored.
fn remove_tree(path: &Path) {
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(path);
    let _ = std::fs::remove_dir_all(path);
}

/// Make every mount in the (new) mount namespace private: step `step`.
fn make_root_private(step: u8) -> Result<(), StepError> {
    // SAFETY: valid string pointers / nulls as mount(2) permits for a
    // propagation change.
    ck(step, unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

fn overlay_listed() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

fn probe_overlayfs(euid: u32) -> Feature {
    let listed = overlay_listed();
    let listed_text = if listed {
        "\"overlay\" listed in /proc/filesystems"
    } else {
        "\"overlay\" not listed in /proc/filesystems (the module may still load on demand)"
    };
    if euid != 0 {
        return feature(
            "overlayfs",
            listed,
            format!("{listed_text}; mount not tested (not root)"),
            "grep overlay /proc/filesystems",
        );
    }
    let how = "grep overlay /proc/filesystems; fork + unshare(CLONE_NEWNS) + mount(\"/\", MS_REC|MS_PRIVATE) \
               + mount overlay over scratch dirs in $TMPDIR + write a file in merged";
    let dirs = match OverlayDirs::create(None) {
        Ok(d) => d,
        Err(e) => return feature("overlayfs", false, format!("{listed_text}; {e}"), how),
    };
    let outcome = run_in_child(|| {
        // SAFETY: unshare only affects the (forked) calling process.
        ck(0, unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        make_root_private(1)?;
        dirs.mount_and_write(2)
    });
    drop(dirs);
    let steps = [
        "unshare(CLONE_NEWNS)",
        "mount(\"/\", MS_REC|MS_PRIVATE)",
        "mount(overlay)",
        "open(merged/probe, O_CREAT)",
        "write(merged/probe)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let detail = if ok {
        format!("{listed_text}; overlay mount and write into merged work as root")
    } else {
        format!("{listed_text}; {why}")
    };
    feature("overlayfs", ok, detail, how)
}

fn probe_overlayfs_userns(euid: u32) -> Feature {
    let root = euid == 0;
    // SAFETY: getegid has no preconditions and cannot fail.
    let egid = unsafe { libc::getegid() };
    let (uid, gid) = if root { (NOBODY, NOBODY) } else { (euid, egid) };
    let how = format!(
        "fork{} + unshare(CLONE_NEWUSER|CLONE_NEWNS) + write deny to /proc/self/setgroups, \
         \"0 {uid} 1\" to uid_map, \"0 {gid} 1\" to gid_map + mount overlay over scratch dirs in $TMPDIR \
         + write a file in merged",
        if root {
            " + drop to uid/gid 65534 (scratch dirs chowned to it) + prctl(PR_SET_DUMPABLE, 1)"
        } else {
            ""
        }
    );
    let dirs = match OverlayDirs::create(root.then_some(NOBODY)) {
        Ok(d) => d,
        Err(e) => return feature("overlayfs.user_namespace", false, e, how),
    };
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    let outcome = run_in_child(|| {
        if root {
            drop_to_nobody()?;
        }
        // SAFETY: unshare only affects the (forked) calling process.
        ck(4, unsafe {
            libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
        })?;
        ck(5, write_path(c"/proc/self/setgroups", b"deny"))?;
        ck(6, write_path(c"/proc/self/uid_map", uid_map.as_bytes()))?;
        ck(7, write_path(c"/proc/self/gid_map", gid_map.as_bytes()))?;
        make_root_private(8)?;
        dirs.mount_and_write(9)
    });
    drop(dirs);
    let steps = [
        DROP_STEPS[0],
        DROP_STEPS[1],
        DROP_STEPS[2],
        DROP_STEPS[3],
        "unshare(CLONE_NEWUSER|CLONE_NEWNS)",
        "write /proc/self/setgroups",
        "write /proc/self/uid_map",
        "write /proc/self/gid_map",
        "mount(\"/\", MS_REC|MS_PRIVATE)",
        "mount(overlay)",
        "open(merged/probe, O_CREAT)",
        "write(merged/probe)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let detail = if ok {
        format!("overlay mount and write into merged work inside a user namespace (as uid {uid})")
    } else {
        format!("as uid {uid}: {why}")
    };
    feature("overlayfs.user_namespace", ok, detail, how)
}

// ---------------------------------------------------------------------------
// Landlock

/// Landlock ABI version of the running kernel, or `(0, errno)` if Landlock is
/// unsupported (`ENOSYS`: not built; `EOPNOTSUPP`: disabled at boot). The same query the cell's
/// init makes before it applies Landlock.
fn landlock_probe() -> (u32, Option<i32>) {
    match warren_jail::landlock_rules::query_abi() {
        Ok(abi) => (abi, None),
        Err(errno) => (0, Some(errno)),
    }
}

/// The running kernel's Landlock ABI version (0 if Landlock is unsupported).
pub fn landlock_abi() -> u32 {
    landlock_probe().0
}

/// Short names of the access rights / controls a Landlock ABI provides.
fn landlock_rights(abi: u32) -> Vec<&'static str> {
    [
        (1, "fs"),
        (2, "refer"),
        (3, "truncate"),
        (4, "tcp bind/connect"),
        (5, "ioctl on devices"),
        (6, "scope signal+abstract unix"),
        (7, "audit logging"),
        (8, "thread sync"),
    ]
    .iter()
    .filter(|(min, _)| abi >= *min)
    .map(|(_, name)| *name)
    .collect()
}

fn probe_landlock() -> Vec<Feature> {
    let (abi, errno) = landlock_probe();
    let how = "syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)";
    let detail = if abi > 0 {
        format!("ABI {abi}: {}", landlock_rights(abi).join(", "))
    } else {
        match errno {
            Some(libc::ENOSYS) => "not supported by this kernel (ENOSYS)".to_string(),
            Some(libc::EOPNOTSUPP) => {
                "built but disabled (EOPNOTSUPP): add landlock to the lsm= boot parameter"
                    .to_string()
            }
            Some(e) => format!("unavailable: {}", errno_text(e)),
            None => "unavailable: ABI 0".to_string(),
        }
    };
    let derived = |name: &str, min: u32, what: &str| {
        feature(
            name,
            abi >= min,
            if abi >= min {
                format!("{what} (ABI {abi} >= {min})")
            } else {
                format!("{what} needs ABI >= {min}, have {abi}")
            },
            format!("derived from the Landlock ABI ({how})"),
        )
    };
    vec![
        feature("landlock", abi >= 1, detail, how),
        derived("landlock.filesystem", 1, "filesystem access rules"),
        derived("landlock.tcp", 4, "TCP bind/connect rules"),
        derived(
            "landlock.scope",
            6,
            "scoping of signals and abstract unix sockets",
        ),
    ]
}

// ---------------------------------------------------------------------------
// Seccomp

fn probe_seccomp() -> Vec<Feature> {
    // One instruction: BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
    let mut filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: filter.as_mut_ptr(),
    };
    let outcome = run_in_child(|| {
        // SAFETY: prctl with integer arguments.
        ck(0, unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        })?;
        // SAFETY: prog points to a valid one-instruction filter that outlives
        // the call (the kernel copies it).
        ck(1, unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        })?;
        // A syscall under the filter must still work.
        // SAFETY: getpid has no preconditions.
        ck(2, unsafe { libc::getpid() })
    });
    let (ok, why) = describe(
        &outcome,
        &[
            "prctl(PR_SET_NO_NEW_PRIVS)",
            "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)",
            "getpid under the filter",
        ],
    );
    let detail = if ok {
        "an allow-all BPF filter installs after PR_SET_NO_NEW_PRIVS".to_string()
    } else {
        why
    };
    let seccomp = feature(
        "seccomp",
        ok,
        detail,
        "fork + prctl(PR_SET_NO_NEW_PRIVS, 1) + prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, 1-insn allow-all)",
    );
    let actions_path = "/proc/sys/kernel/seccomp/actions_avail";
    let (notif, detail) = match std::fs::read_to_string(actions_path) {
        Ok(s) => {
            let actions = s.trim().to_string();
            let has = actions.split_whitespace().any(|a| a == "user_notif");
            (has, format!("actions_avail: {actions}"))
        }
        Err(e) => (false, format!("cannot read {actions_path}: {e}")),
    };
    vec![
        seccomp,
        feature(
            "seccomp.user_notif",
            notif,
            detail,
            format!("\"user_notif\" in {actions_path}"),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Cgroups

/// Controllers a cgroup v1 hierarchy can carry (other super options such as
/// `rw`, `xattr`, `name=systemd`, `release_agent=...` are not controllers).
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// One cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
struct CgroupMount {
    /// Where it is mounted.
    mount_point: PathBuf,
    /// Root of the mount within its hierarchy (field 4 of mountinfo).
    root: String,
    /// `cgroup2` (true) or `cgroup` (false).
    v2: bool,
    /// v1: controllers from the super options (empty for v2).
    controllers: Vec<String>,
    /// v1: the raw super options.
    options: String,
}

/// Decodes mountinfo's octal escapes (`\040` = space, ...).
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses the cgroup / cgroup2 entries of a `/proc/self/mountinfo` text.
fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or_default();
        let options = fields.get(sep + 3).copied().unwrap_or_default();
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            options
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_string)
                .collect()
        };
        mounts.push(CgroupMount {
            mount_point: unescape_mountinfo(mount_point),
            root: unescape_mountinfo(root).to_string_lossy().into_owned(),
            v2,
            controllers,
            options: options.to_string(),
        });
    }
    mounts
}

/// Builds the layout from parsed mounts and the v2 root's controllers. The
/// first mount of each hierarchy wins (later ones are usually bind mounts).
fn layout_from_mounts(mounts: &[CgroupMount], v2_controllers: Vec<String>) -> CgroupLayout {
    let v2 = mounts.iter().find(|m| m.v2);
    let mut v1 = BTreeMap::new();
    for m in mounts.iter().filter(|m| !m.v2) {
        for c in &m.controllers {
            v1.entry(c.clone()).or_insert_with(|| m.mount_point.clone());
        }
    }
    match (v2, v1.is_empty()) {
        (Some(m), true) => CgroupLayout::V2 {
            mount: m.mount_point.clone(),
            controllers: v2_controllers,
        },
        (Some(m), false) => CgroupLayout::Hybrid {
            v2_mount: m.mount_point.clone(),
            v2_controllers,
            v1,
        },
        (None, false) => CgroupLayout::V1 { mounts: v1 },
        (None, true) => CgroupLayout::None,
    }
}

/// Reads a whitespace-separated controller list (`cgroup.controllers`,
/// `cgroup.subtree_control`); empty if unreadable.
fn read_controllers(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn read_cgroup_mounts() -> Vec<CgroupMount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse_cgroup_mounts(&s))
        .unwrap_or_default()
}

/// The cgroup hierarchies mounted on this host (from `/proc/self/mountinfo`
/// and the v2 root's `cgroup.controllers`).
pub fn cgroup_layout() -> CgroupLayout {
    let mounts = read_cgroup_mounts();
    let v2_controllers = mounts
        .iter()
        .find(|m| m.v2)
        .map(|m| read_controllers(&m.mount_point.join("cgroup.controllers")))
        .unwrap_or_default();
    layout_from_mounts(&mounts, v2_controllers)
}

/// One line of `/proc/self/cgroup`: (controllers, path). The v2 line has
/// hierarchy id 0 and no controllers.
#[derive(Debug, Clone, PartialEq)]
struct ProcCgroup {
    v2: bool,
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            Some(ProcCgroup {
                v2: id == "0" && ctrls.is_empty(),
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The directory of our own cgroup `own_path` inside `mount`, if it is
/// visible there.
fn own_cgroup_dir(mount: &CgroupMount, own_path: &str) -> Option<PathBuf> {
    if own_path.split('/').any(|c| c == "..") {
        return None;
    }
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        own_path
    } else if own_path == root {
        ""
    } else {
        own_path.strip_prefix(root).filter(|r| r.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        Some(mount.mount_point.clone())
    } else {
        Some(mount.mount_point.join(rel))
    }
}

/// Whether `dir` is a directory we may create entries in (`access(W_OK)`).
fn dir_writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

fn writable_text(dir: &Path) -> String {
    format!(
        "{} ({})",
        dir.display(),
        if dir_writable(dir) {
            "writable"
        } else {
            "not writable"
        }
    )
}

fn probe_cgroups() -> Vec<Feature> {
    let mounts = read_cgroup_mounts();
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map(|s| parse_proc_cgroup(&s))
        .unwrap_or_default();
    let mut out = probe_cgroup_v2(&mounts, &own);
    out.extend(probe_cgroup_v1(&mounts, &own));
    out
}

fn probe_cgroup_v2(mounts: &[CgroupMount], own: &[ProcCgroup]) -> Vec<Feature> {
    let ctrl_how = |c: &str, mount: &str| {
        format!(
            "\"{c}\" in {mount}/cgroup.controllers (root and own cgroup) + access(own cgroup dir, W_OK) \
             from /proc/self/cgroup \"0::\""
        )
    };
    let Some(m) = mounts.iter().find(|m| m.v2) else {
        let mut out = vec![feature(
            "cgroup.v2",
            false,
            "no cgroup2 mount in /proc/self/mountinfo",
            "look for fstype cgroup2 in /proc/self/mountinfo",
        )];
        for c in ["memory", "pids", "cpu"] {
            out.push(feature(
                &format!("cgroup.v2.{c}"),
                false,
                "cgroup v2 not mounted",
                ctrl_how(c, "<cgroup2 mount>"),
            ));
        }
        return out;
    };
    let mount_str = m.mount_point.display().to_string();
    let root_ctrls = read_controllers(&m.mount_point.join("cgroup.controllers"));
    let root_subtree = read_controllers(&m.mount_point.join("cgroup.subtree_control"));
    let own_path = own.iter().find(|p| p.v2).map(|p| p.path.clone());
    let own_dir = own_path.as_deref().and_then(|p| own_cgroup_dir(m, p));
    let own_ctrls = own_dir
        .as_ref()
        .map(|d| read_controllers(&d.join("cgroup.controllers")))
        .unwrap_or_default();
    let writable = own_dir.as_deref().is_some_and(dir_writable);
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(" ")
        }
    };
    let own_text = match (&own_path, &own_dir) {
        (Some(p), Some(d)) => format!("own cgroup {p} at {}", writable_text(d)),
        (Some(p), None) => format!("own cgroup {p} not visible under {mount_str}"),
        (None, _) => "no \"0::\" line in /proc/self/cgroup".to_string(),
    };
    let mut out = vec![feature(
        "cgroup.v2",
        true,
        format!(
            "cgroup2 at {mount_str}; controllers: {}; subtree_control: {}; {own_text}",
            list(&root_ctrls),
            list(&root_subtree)
        ),
        format!(
            "fstype cgroup2 in /proc/self/mountinfo; {mount_str}/cgroup.controllers and \
             cgroup.subtree_control; /proc/self/cgroup \"0::\" line; access(W_OK)"
        ),
    )];
    for c in ["memory", "pids", "cpu"] {
        let in_root = root_ctrls.iter().any(|x| x == c);
        let in_own = own_ctrls.iter().any(|x| x == c);
        let (ok, detail) = if !in_root {
            (
                false,
                format!("\"{c}\" not in {mount_str}/cgroup.controllers"),
            )
        } else if own_dir.is_none() {
            (
                false,
                format!("\"{c}\" enabled at the root, but {own_text}"),
            )
        } else if !in_own {
            (
                false,
                format!("\"{c}\" enabled at the root but not delegated to our cgroup; {own_text}"),
            )
        } else if !writable {
            (
                false,
                format!("\"{c}\" available but cannot create child groups: {own_text}"),
            )
        } else {
            (
                true,
                format!("\"{c}\" available; child groups can be created: {own_text}"),
            )
        };
        out.push(feature(
            &format!("cgroup.v2.{c}"),
            ok,
            detail,
            ctrl_how(c, &mount_str),
        ));
    }
    out
}

fn probe_cgroup_v1(mounts: &[CgroupMount], own: &[ProcCgroup]) -> Vec<Feature> {
    let v1: Vec<&CgroupMount> = mounts.iter().filter(|m| !m.v2).collect();
    let summary = v1
        .iter()
        .map(|m| format!("{} [{}]", m.mount_point.display(), m.options))
        .collect::<Vec<_>>()
        .join(", ");
    let any = v1.iter().any(|m| !m.controllers.is_empty());
    let mut out = vec![feature(
        "cgroup.v1",
        any,
        if v1.is_empty() {
            "no cgroup (v1) mounts in /proc/self/mountinfo".to_string()
        } else {
            summary
        },
        "fstype cgroup in /proc/self/mountinfo, controllers from the super options",
    )];
    for c in ["memory", "pids", "cpu"] {
        let how = format!(
            "\"{c}\" in a cgroup v1 mount's options in /proc/self/mountinfo + own path from \
             /proc/self/cgroup + access(W_OK)"
        );
        let Some(m) = v1.iter().find(|m| m.controllers.iter().any(|x| x == c)) else {
            out.push(feature(
                &format!("cgroup.v1.{c}"),
                false,
                "not mounted",
                how,
            ));
            continue;
        };
        let own_path = own
            .iter()
            .find(|p| !p.v2 && p.controllers.iter().any(|x| x == c))
            .map(|p| p.path.clone());
        let own_dir = own_path.as_deref().and_then(|p| own_cgroup_dir(m, p));
        let mount = m.mount_point.display();
        let (ok, detail) = match (&own_path, &own_dir) {
            (Some(p), Some(d)) => (
                dir_writable(d),
                format!("mounted at {mount}; own cgroup {p} at {}", writable_text(d)),
            ),
            (Some(p), None) => (
                false,
                format!("mounted at {mount}; own cgroup {p} not visible there"),
            ),
            (None, _) => (
                false,
                format!("mounted at {mount}; no \"{c}\" line in /proc/self/cgroup"),
            ),
        };
        out.push(feature(&format!("cgroup.v1.{c}"), ok, detail, how));
    }
    out
}

// ---------------------------------------------------------------------------
// Devices: fuse, kvm, vsock

/// `open(path, flags | O_CLOEXEC)`; the fd or the errno.
fn open_dev(path: &CStr, flags: libc::c_int) -> Result<libc::c_int, i32> {
    // SAFETY: path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 { Err(last_errno()) } else { Ok(fd) }
}

fn close_fd(fd: libc::c_int) {
    // SAFETY: fd was opened by us and is closed exactly once.
    unsafe { libc::close(fd) };
}

fn probe_fuse() -> Feature {
    let how = "/dev/fuse exists + open(/dev/fuse, O_RDWR)";
    if !Path::new("/dev/fuse").exists() {
        return feature("fuse", false, "no /dev/fuse", how);
    }
    match open_dev(c"/dev/fuse", libc::O_RDWR) {
        Ok(fd) => {
            close_fd(fd);
            feature("fuse", true, "/dev/fuse opens read-write", how)
        }
        Err(e) => feature(
            "fuse",
            false,
            format!(
                "/dev/fuse exists but open(O_RDWR) failed: {}",
                errno_text(e)
            ),
            how,
        ),
    }
}

/// `KVM_GET_API_VERSION = _IO(0xAE, 0x00)`.
const KVM_GET_API_VERSION: libc::Ioctl = 0xAE00;
/// `KVM_CREATE_VM = _IO(0xAE, 0x01)`.
const KVM_CREATE_VM: libc::Ioctl = 0xAE01;
/// The only KVM API version ever released.
const KVM_API_VERSION: libc::c_int = 12;

/// Which hardware virtualization flag `/proc/cpuinfo` shows, if any.
fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v));
    for line in flags {
        for flag in line.split_whitespace() {
            match flag {
                "vmx" => return Some("vmx"),
                "svm" => return Some("svm"),
                _ => {}
            }
        }
    }
    None
}

fn probe_kvm() -> Feature {
    let how = "open(/dev/kvm, O_RDWR) + ioctl KVM_GET_API_VERSION (0xAE00) == 12 + ioctl KVM_CREATE_VM \
               (0xAE01) + vmx/svm in /proc/cpuinfo flags";
    let virt = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| cpu_virt_flag(&s));
    let cpu_text = match virt {
        Some(f) => format!("CPU has {f}"),
        None => "CPU has no vmx/svm".to_string(),
    };
    if !Path::new("/dev/kvm").exists() {
        return feature("kvm", false, format!("no /dev/kvm; {cpu_text}"), how);
    }
    let fd = match open_dev(c"/dev/kvm", libc::O_RDWR) {
        Ok(fd) => fd,
        Err(e) => {
            return feature(
                "kvm",
                false,
                format!(
                    "/dev/kvm exists but open(O_RDWR) failed: {}; {cpu_text}",
                    errno_text(e)
                ),
                how,
            );
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and touches no memory.
    let api = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION, 0) };
    if api != KVM_API_VERSION {
        let why = if api < 0 {
            format!("KVM_GET_API_VERSION failed: {}", errno_text(last_errno()))
        } else {
            format!("KVM_GET_API_VERSION returned {api}, expected {KVM_API_VERSION}")
        };
        close_fd(fd);
        return feature(
            "kvm",
            false,
            format!("/dev/kvm opens, but {why}; {cpu_text}"),
            how,
        );
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1.
    let vm = unsafe { libc::ioctl(fd, KVM_CREATE_VM, 0) };
    let vm_errno = last_errno();
    close_fd(fd);
    if vm < 0 {
        return feature(
            "kvm",
            false,
            format!(
                "/dev/kvm opens, API {api}, but KVM_CREATE_VM failed: {}; {cpu_text}",
                errno_text(vm_errno)
            ),
            how,
        );
    }
    close_fd(vm);
    match virt {
        Some(f) => feature(
            "kvm",
            true,
            format!("/dev/kvm opens, API {api}, KVM_CREATE_VM works, CPU has {f}"),
            how,
        ),
        None => feature(
            "kvm",
            false,
            format!(
                "/dev/kvm opens, API {api}, KVM_CREATE_VM works, but CPU has no vmx/svm: \
                 PVM-only host, stock guest kernels will not boot"
            ),
            how,
        ),
    }
}

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID`.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::Ioctl = 0x7b9;
/// `VMADDR_CID_ANY`: no local CID.
const VMADDR_CID_ANY: u32 = u32::MAX;

fn probe_vsock() -> Feature {
    let how = "/dev/vsock exists + socket(AF_VSOCK, SOCK_STREAM, 0) + ioctl(/dev/vsock, \
               IOCTL_VM_SOCKETS_GET_LOCAL_CID)";
    let confine = "network namespaces do not confine vsock, so cells deny AF_VSOCK with seccomp";
    let dev = Path::new("/dev/vsock").exists();
    // SAFETY: socket with integer arguments; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let sock_text = if sock < 0 {
        format!("socket(AF_VSOCK) failed: {}", errno_text(last_errno()))
    } else {
        close_fd(sock);
        "socket(AF_VSOCK) works".to_string()
    };
    let cid_text = if dev {
        match open_dev(c"/dev/vsock", libc::O_RDONLY) {
            Ok(fd) => {
                let mut cid: u32 = VMADDR_CID_ANY;
                // SAFETY: the ioctl writes one u32 to &mut cid.
                let r = unsafe {
                    libc::ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid as *mut u32)
                };
                let errno = last_errno();
                close_fd(fd);
                if r < 0 {
                    format!("local CID unknown: {}", errno_text(errno))
                } else if cid == VMADDR_CID_ANY {
                    "no local CID".to_string()
                } else {
                    format!("local CID {cid}")
                }
            }
            Err(e) => format!("open(/dev/vsock) failed: {}", errno_text(e)),
        }
    } else {
        "no /dev/vsock".to_string()
    };
    feature(
        "vsock",
        sock >= 0,
        format!("{sock_text}; {cid_text}; {confine}"),
        how,
    )
}

// ---------------------------------------------------------------------------
// Bubblewrap, kernel

fn probe_bubblewrap() -> Feature {
    use std::os::unix::fs::PermissionsExt;
    let how = "search $PATH for an executable named bwrap (not run); informational";
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("bwrap"))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    match found {
        Some(p) => feature("bubblewrap", true, format!("found at {}", p.display()), how),
        None => feature("bubblewrap", false, "bwrap not found on PATH", how),
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
    }
    // SAFETY: uname NUL-terminates release within the array.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The cgroup lines of this development machine's mountinfo (hybrid).
    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A typical systemd pure-v2 host.
    const PURE_V2: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:24 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    /// An older systemd v1 host with co-mounted controllers and no unified.
    const PURE_V1: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
";

    fn paths(pairs: &[(&str, &str)]) -> BTreeMap<String, PathBuf> {
        pairs
            .iter()
            .map(|(c, p)| ((*c).to_string(), PathBuf::from(p)))
            .collect()
    }

    #[test]
    fn check_mountinfo_hybrid() {
        let mounts = parse_cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 10);
        let layout = layout_from_mounts(&mounts, vec!["hugetlb".to_string()]);
        let base = "/sys/fs/cgroup";
        let v1: Vec<(&str, String)> = [
            "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids",
        ]
        .iter()
        .map(|c| (*c, format!("{base}/{c}")))
        .collect();
        let v1: Vec<(&str, &str)> = v1.iter().map(|(c, p)| (*c, p.as_str())).collect();
        assert_eq!(
            layout,
            CgroupLayout::Hybrid {
                v2_mount: PathBuf::from("/sys/fs/cgroup/unified"),
                v2_controllers: vec!["hugetlb".to_string()],
                v1: paths(&v1),
            }
        );
        // name=systemd carries no controller.
        let systemd = mounts
            .iter()
            .find(|m| m.mount_point == Path::new("/sys/fs/cgroup/systemd"))
            .unwrap();
        assert!(systemd.controllers.is_empty());
        assert!(!systemd.v2);
    }

    #[test]
    fn check_mountinfo_pure_v2() {
        let mounts = parse_cgroup_mounts(PURE_V2);
        assert_eq!(mounts.len(), 1);
        assert!(mounts[0].v2);
        let ctrls: Vec<String> = ["cpuset", "cpu", "io", "memory", "pids"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            layout_from_mounts(&mounts, ctrls.clone()),
            CgroupLayout::V2 {
                mount: PathBuf::from("/sys/fs/cgroup"),
                controllers: ctrls,
            }
        );
    }

    #[test]
    fn check_mountinfo_pure_v1_and_none() {
        let mounts = parse_cgroup_mounts(PURE_V1);
        assert_eq!(
            layout_from_mounts(&mounts, Vec::new()),
            CgroupLayout::V1 {
                mounts: paths(&[
                    ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
                    ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
                    ("memory", "/sys/fs/cgroup/memory"),
                ]),
            }
        );
        // Mount root is honoured when locating our own cgroup.
        let mem = mounts.iter().find(|m| m.controllers == ["memory"]).unwrap();
        assert_eq!(
            own_cgroup_dir(mem, "/docker/abc/sub"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/sub"))
        );
        assert_eq!(own_cgroup_dir(mem, "/docker/abcdef"), None);
        assert_eq!(
            own_cgroup_dir(mem, "/docker/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            layout_from_mounts(&parse_cgroup_mounts(""), Vec::new()),
            CgroupLayout::None
        );
    }

    #[test]
    fn check_mountinfo_escapes_and_proc_cgroup() {
        assert_eq!(unescape_mountinfo(r"/a\040b\\c"), PathBuf::from(r"/a b\\c"));
        let parsed =
            parse_proc_cgroup("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(parsed.len(), 3);
        assert!(!parsed[0].v2);
        assert_eq!(parsed[1].controllers, ["cpu", "cpuacct"]);
        assert!(parsed[2].v2);
        assert_eq!(parsed[2].path, "/user.slice");
    }

    #[test]
    fn check_landlock_rights_by_abi() {
        assert!(landlock_rights(0).is_empty());
        assert_eq!(landlock_rights(1), ["fs"]);
        assert_eq!(landlock_rights(3), ["fs", "refer", "truncate"]);
        assert_eq!(landlock_rights(4).last(), Some(&"tcp bind/connect"));
        assert_eq!(landlock_rights(6).len(), 6);
        assert_eq!(landlock_rights(6)[5], "scope signal+abstract unix");
        assert_eq!(landlock_rights(7).last(), Some(&"audit logging"));
        assert_eq!(landlock_rights(8).last(), Some(&"thread sync"));
        assert_eq!(landlock_rights(99).len(), 8);
    }

    #[test]
    fn check_cpu_virt_flag() {
        assert_eq!(cpu_virt_flag("flags\t\t: fpu vme vmx sse\n"), Some("vmx"));
        assert_eq!(cpu_virt_flag("flags\t\t: fpu svm\n"), Some("svm"));
        assert_eq!(cpu_virt_flag("flags\t\t: fpu vmxnotreally\n"), None);
    }

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
    }

    #[test]
    fn check_detect_reports_everything() {
        let report = detect();
        assert!(!report.kernel.is_empty());
        assert!(report.tiers.iter().any(|t| t.tier == "process"));
        for tier in ["microvm", "wasi", "oci"] {
            assert!(report.tiers.iter().any(|t| t.tier == tier), "{tier}");
        }
        for f in &report.features {
            assert!(!f.how.is_empty(), "{} has no how", f.name);
            assert!(!f.detail.is_empty(), "{} has no detail", f.name);
        }
        let mut names: Vec<&str> = report.features.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), report.features.len(), "duplicate feature ids");
        for required in PROCESS_TIER_REQUIRES {
            assert!(names.contains(&required), "{required} not probed");
        }
        match report.process_tier_ready() {
            Ok(()) => assert!(report.tiers[0].runnable),
            Err(e) => assert!(e.starts_with("process tier cannot run: missing "), "{e}"),
        }
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["features"].is_array());
        let text = render(&report);
        assert!(text.contains("process"));
        // No scratch directories left behind.
        let tmp = std::env::temp_dir();
        let prefix = format!("warren-check-{}-", std::process::id());
        let leftovers = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        assert_eq!(leftovers, 0);
        println!("{text}");
    }

    #[test]
    fn check_process_tier_ready_message() {
        let report = HostReport {
            kernel: "x".to_string(),
            euid: 1000,
            features: Vec::new(),
            tiers: Vec::new(),
        };
        let tiers = tiers(&report);
        let report = HostReport { tiers, ..report };
        let err = report.process_tier_ready().unwrap_err();
        assert!(err.starts_with(
            "process tier cannot run: missing user_namespace.current_user, namespace.mount"
        ));
        assert!(err.ends_with("landlock, seccomp"));
        assert!(report.tiers[0].note.contains("no writable cgroup"));
    }
}
