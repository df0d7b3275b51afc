//! The cell's pid 1: finish confinement, report, serve.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use warren_protocol::guest::secret_from_hex;
use warren_protocol::jail::{CELL_GID, CELL_UID, JailConfig, StartReport};

use crate::supervisor::StatusPipe;
use crate::{landlock_rules, mounts, seccomp, serve, sys};

/// Run as the cell's init. Never returns.
pub fn run(
    cfg: &JailConfig,
    listener: UnixListener,
    sync_r: OwnedFd,
    mut status: StatusPipe,
    signals: libc::sigset_t,
    premounted: Option<(String, OwnedFd)>,
) -> ! {
    let (commands_ruleset, forwarder) = match setup(cfg, &sync_r, premounted) {
        Ok((ready, ruleset, forwarder)) => {
            status.report(&ready);
            status.close();
            (ruleset, forwarder)
        }
        Err((step, reason)) => {
            status.report(&StartReport::Refused { step, reason });
            std::process::exit(1);
        }
    };
    drop(sync_r);
    // The supervisor blocked these; pid 1 only needs SIGCHLD blocked (for the reaper).
    // SAFETY: adjusting this thread's signal mask with a locally built set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _ = signals;
    let mut chld: libc::sigset_t = sys::block_signals(&[libc::SIGCHLD]);
    // SAFETY: rebuild a set containing only SIGCHLD for the reaper to wait on.
    unsafe {
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
    }
    // Started after the signal masks are final, so its threads keep SIGCHLD blocked too.
    if let (Some(listener), Some(e)) = (forwarder, &cfg.egress) {
        let socket = e.socket.clone();
        let _ = std::thread::Builder::new()
            .name("egress-accept".into())
            .stack_size(64 << 10)
            .spawn(move || forward(listener, socket));
    }
    let secret = secret_from_hex(&cfg.secret_hex).unwrap_or([0; 32]);
    serve::serve(
        listener,
        secret,
        cfg.cwd.clone(),
        cfg.env.clone(),
        chld,
        commands_ruleset,
    )
}

type StepError = (String, String);

fn at<T, E: std::fmt::Display>(step: &str, r: Result<T, E>) -> Result<T, StepError> {
    r.map_err(|e| (step.to_owned(), e.to_string()))
}

fn setup(
    cfg: &JailConfig,
    sync_r: &OwnedFd,
    premounted: Option<(String, OwnedFd)>,
) -> Result<(StartReport, Option<OwnedFd>, Option<std::net::TcpListener>), StepError> {
    if secret_from_hex(&cfg.secret_hex).is_none() {
        return Err(("config".into(), "malformed cell secret".into()));
    }
    // Wait for the supervisor to map our ids and place us in cgroups.
    let mut pid = [0u8; 4];
    let mut f = std::fs::File::from(at("sync", sync_r.try_clone())?);
    at("wait for supervisor", f.read_exact(&mut pid))?;
    let init_pid = i32::from_le_bytes(pid);

    // Become the cell user. We keep our capabilities in the new user namespace: the cell's
    // root (uid 0) is unmapped, so this is not a "root → non-root" transition that clears them.
    // SAFETY: plain id-setting syscalls.
    unsafe {
        if libc::setresgid(CELL_GID, CELL_GID, CELL_GID) != 0 {
            return Err(("setresgid".into(), sys::errno("setresgid").to_string()));
        }
        if libc::setresuid(CELL_UID, CELL_UID, CELL_UID) != 0 {
            return Err(("setresuid".into(), sys::errno("setresuid").to_string()));
        }
    }
    let host = sys::cstr(&cfg.hostname).map_err(|e| ("hostname".to_owned(), e.to_string()))?;
    // SAFETY: valid C string and its length.
    if unsafe { libc::sethostname(host.as_ptr(), cfg.hostname.len()) } != 0 {
        return Err(("hostname".into(), sys::errno("sethostname").to_string()));
    }
    if let Err(e) = cfg.mounts.validate() {
        return Err(("mount spec".into(), e.to_string()));
    }
    mounts::build_root(&cfg.mounts, premounted).map_err(|e| (e.step, e.error.to_string()))?;

    // The supervisor moves us into the cell's cgroups while we build the root; wait for it,
    // then take a cgroup namespace rooted there: /proc/self/cgroup shows "/" and the host's
    // hierarchy stays hidden.
    let mut joined = [0u8; 1];
    at("wait for cgroups", f.read_exact(&mut joined))?;
    // SAFETY: unshare with a flag constant.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err((
            "cgroup namespace".into(),
            sys::errno("unshare(CLONE_NEWCGROUP)").to_string(),
        ));
    }
    at("rlimit core", sys::lower_rlimit(libc::RLIMIT_CORE, 0))?;
    at(
        "rlimit nofile",
        sys::lower_rlimit(libc::RLIMIT_NOFILE, cfg.rlimits.nofile),
    )?;
    at(
        "rlimit fsize",
        sys::lower_rlimit(libc::RLIMIT_FSIZE, cfg.rlimits.fsize),
    )?;

    // The cell's own loopback, up in every cell while we still hold CAP_NET_ADMIN over its
    // network namespace: local servers and their tests work, and `lo` is the namespace's only
    // interface, so nothing else becomes reachable. With egress, the forwarder's port is
    // bound now, before any command exists to take it.
    at("loopback", sys::loopback_up())?;
    let forwarder = match &cfg.egress {
        Some(e) => Some(at(
            "egress listener",
            std::net::TcpListener::bind(("127.0.0.1", e.port)),
        )?),
        None => None,
    };
    at("drop capabilities", sys::drop_all_caps())?;
    // Credential changes above reset the parent-death signal; set it now, then make sure the
    // supervisor did not die before it took effect.
    at(
        "parent death signal",
        sys::set_parent_death_signal(libc::SIGKILL),
    )?;
    let mut pfd = libc::pollfd {
        fd: sync_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) };
    if pfd.revents & libc::POLLHUP != 0 {
        std::process::exit(1);
    }
    // Non-dumpable: the init's /proc entries (environ, mem, fd, …) become owned by the host's
    // root, which is unmapped here, so no command in the cell can read or ptrace its pid 1.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err((
            "dumpable".into(),
            sys::errno("prctl(PR_SET_DUMPABLE)").to_string(),
        ));
    }
    at("no_new_privs", sys::set_no_new_privs())?;
    let confinement = landlock_rules::apply(&cfg.mounts, cfg.require_landlock)
        .map_err(|e| ("landlock".to_owned(), e.0))?;
    let programs = at("seccomp compile", seccomp::compile())?;
    at("seccomp install", seccomp::install(&programs))?;
    Ok((
        StartReport::Ready {
            init_pid,
            landlock: confinement.report,
            seccomp_rules: seccomp::rule_count(),
        },
        confinement.commands,
        forwarder,
    ))
}

/// Forward each connection on `listener` to the unix socket at `socket` (the host's egress
/// proxy), both ways, until either side closes. Threads: a few per open connection.
fn forward(listener: std::net::TcpListener, socket: String) {
    use std::io::copy;
    use std::os::unix::net::UnixStream;
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.clone();
        let _ = std::thread::Builder::new()
            .name("egress".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let Ok(unix) = UnixStream::connect(&socket) else {
                    return;
                };
                let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
                    return;
                };
                let up = std::thread::Builder::new()
                    .name("egress-up".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let _ = copy(&mut tcp_r, &mut unix_w);
                        let _ = unix_w.shutdown(std::net::Shutdown::Write);
                    });
                let (mut unix_r, mut tcp_w) = (unix, tcp);
                let _ = copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
                if let Ok(h) = up {
                    let _ = h.join();
                }
            });
    }
}
