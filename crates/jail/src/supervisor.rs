//! The supervisor: creates the cell's init, maps its ids, places it in cgroups, reaps it, and
//! cleans up. Runs on the host side of every namespace boundary with the caller's privileges.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use warren_protocol::jail::{JailConfig, StartReport};

use crate::{init, sys};

/// Write end of the status pipe shared with the init.
pub struct StatusPipe {
    fd: Option<OwnedFd>,
}

impl StatusPipe {
    /// Adopt an owned descriptor (the fork server receives it over its socket).
    pub fn from_owned(fd: OwnedFd) -> Self {
        StatusPipe { fd: Some(fd) }
    }

    /// Adopt descriptor `fd` if it is open.
    pub fn from_fd(fd: i32) -> Self {
        // SAFETY: F_GETFD only queries whether `fd` is open.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        if open {
            // SAFETY: the host passed this descriptor to us for exactly this purpose; mark it
            // close-on-exec so no command ever inherits it.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        StatusPipe {
            // SAFETY: we own the descriptor from here on (or hold nothing).
            fd: open.then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }

    /// Send the one report line (later writes are ignored by the host).
    pub fn report(&self, r: &StartReport) {
        if let Some(fd) = &self.fd {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            let mut f = std::mem::ManuallyDrop::new(
                // SAFETY: borrowed as a File only for this write; ManuallyDrop keeps it open.
                unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) },
            );
            let _ = f.write_all(&line);
        }
    }

    /// Close our end.
    pub fn close(&mut self) {
        self.fd = None;
    }
}

fn refuse(status: &StatusPipe, step: &str, reason: impl std::fmt::Display) -> i32 {
    status.report(&StartReport::Refused {
        step: step.into(),
        reason: reason.to_string(),
    });
    1
}

fn bind_abstract(name: &str) -> std::io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixListener::bind_addr(&addr)
}

/// Run the supervisor to completion; returns the process exit code.
///
/// `parent` is the process that must be our parent: the owner of the cell when the host
/// executed us directly, or the fork server.
pub fn supervise(config: JailConfig, mut status: StatusPipe, parent: i32) -> i32 {
    // Die (cleanly, via SIGTERM) with the host process that owns the cell.
    if let Err(e) = sys::set_parent_death_signal(libc::SIGTERM) {
        return refuse(&status, "parent death signal", e);
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return refuse(&status, "owner", "the owning process is gone");
    }
    if config.host_uid == 0 || config.host_gid == 0 {
        return refuse(
            &status,
            "user namespace",
            "refusing to map host root into a cell",
        );
    }
    // A new session without a controlling terminal: otherwise the cell would share the host
    // user's terminal, and `/dev/tty` inside would open it.
    // SAFETY: setsid has no preconditions; it fails only if we already lead a group.
    if unsafe { libc::setsid() } < 0 {
        return refuse(&status, "setsid", sys::errno("setsid"));
    }
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let signals = sys::block_signals(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // The init inherits our supplementary groups; as root those include host groups that
        // own files. Drop them all before the cell exists.
        // SAFETY: setgroups with an empty list.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return refuse(&status, "setgroups", sys::errno("setgroups"));
        }
    }

    let listener = match bind_abstract(&config.socket_name) {
        Ok(l) => l,
        Err(e) => return refuse(&status, "control socket", e),
    };
    // An idmapped source must be prepared here, by the supervisor: only a process privileged
    // over the source's mount (host root, outside the cell) may create one. The init inherits
    // the descriptor through clone().
    let premounted = match prepare_idmap(&config) {
        Ok(p) => p,
        Err(e) => return refuse(&status, "idmapped workspace", e),
    };
    let (sync_r, sync_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => return refuse(&status, "sync pipe", e),
    };

    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    // SAFETY: a fork-style clone (no new stack) in a single-threaded process: the child gets a
    // copy of this address space and continues below with `pid == 0`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        let all = sys::errno(
            "clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWIPC|CLONE_NEWUTS|CLONE_NEWNET)",
        );
        let (step, reason) = diagnose_namespaces(all);
        return refuse(&status, &step, reason);
    }
    if pid == 0 {
        drop(sync_w);
        init::run(&config, listener, sync_r, status, signals, premounted);
    }
    let pid = pid as i32;
    drop(sync_r);
    drop(listener);

    let kill_init = || {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    let setup = || -> Result<(), (String, std::io::Error)> {
        if !root {
            sys::write_file(&format!("/proc/{pid}/setgroups"), "deny")
                .map_err(|e| ("user namespace".into(), e))?;
        }
        let uid = warren_protocol::jail::CELL_UID;
        let gid = warren_protocol::jail::CELL_GID;
        sys::write_file(
            &format!("/proc/{pid}/uid_map"),
            &format!("{uid} {} 1\n", config.host_uid),
        )
        .map_err(|e| ("user namespace uid map".into(), e))?;
        sys::write_file(
            &format!("/proc/{pid}/gid_map"),
            &format!("{gid} {} 1\n", config.host_gid),
        )
        .map_err(|e| ("user namespace gid map".into(), e))?;
        Ok(())
    };
    if let Err((step, e)) = setup() {
        kill_init();
        wait_child(pid, &signals, &kill_init);
        remove_cgroups(&config);
        return refuse(&status, &step, e);
    }
    // Go: tell the init its host pid. Keep `sync_w` open for our whole life: the init polls it
    // to notice our death during set-up.
    let mut w = std::fs::File::from(sync_w);
    if w.write_all(&pid.to_le_bytes()).is_err() {
        kill_init();
    }
    // Join the cgroups while the init builds its root: on cgroup v1 a migration waits for an
    // RCU grace period, which need not delay the start. The init waits for this second message
    // before it creates its cgroup namespace — and so before any command can exist.
    let joined = config.cgroups.iter().try_for_each(|cg| {
        sys::write_file(&format!("{}/cgroup.procs", cg.dir), &pid.to_string())
            .map_err(|e| (format!("join cgroup {}", cg.dir), e))
    });
    match joined {
        Ok(()) => {
            if w.write_all(&[1]).is_err() {
                kill_init();
            }
        }
        Err((step, e)) => {
            kill_init();
            wait_child(pid, &signals, &kill_init);
            remove_cgroups(&config);
            return refuse(&status, &step, e);
        }
    }

    let code = wait_child(pid, &signals, &kill_init);
    // The init is gone, so the kernel has killed every process in the cell's pid namespace.
    remove_cgroups(&config);
    status.report(&StartReport::Refused {
        step: "run".into(),
        reason: format!("cell init exited (status {code}) before reporting readiness"),
    });
    status.close();
    drop(w);
    0
}

/// After the cell's clone failed with `all`: which namespace is missing, found by creating each
/// in a child that exits at once — the user namespace alone first (the usual culprit: a host
/// that disables unprivileged user namespaces), then each other one beside a user namespace.
fn diagnose_namespaces(all: std::io::Error) -> (String, String) {
    let try_clone = |flags: libc::c_int| -> Result<(), std::io::Error> {
        // SAFETY: a fork-style clone in the single-threaded supervisor; the child exits at once.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: leave the child without running anything of the parent's.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid as i32, &mut st, 0) };
        Ok(())
    };
    if let Err(e) = try_clone(libc::CLONE_NEWUSER) {
        return (
            "user namespace".into(),
            format!(
                "cannot create a user namespace: clone(CLONE_NEWUSER): {e} (unprivileged user \
                 namespaces may be disabled: kernel.unprivileged_userns_clone, \
                 user.max_user_namespaces, AppArmor's restrict_unprivileged_userns; see `warren check`)"
            ),
        );
    }
    for (flag, name, what) in [
        (libc::CLONE_NEWNS, "CLONE_NEWNS", "mount namespace"),
        (libc::CLONE_NEWPID, "CLONE_NEWPID", "pid namespace"),
        (libc::CLONE_NEWIPC, "CLONE_NEWIPC", "ipc namespace"),
        (libc::CLONE_NEWUTS, "CLONE_NEWUTS", "uts namespace"),
        (libc::CLONE_NEWNET, "CLONE_NEWNET", "network namespace"),
    ] {
        if let Err(e) = try_clone(libc::CLONE_NEWUSER | flag) {
            return (
                what.into(),
                format!("cannot create a {what}: clone(CLONE_NEWUSER|{name}): {e}"),
            );
        }
    }
    ("create namespaces".into(), all.to_string())
}

/// Wait for `pid`, killing it if we are asked to stop. Returns its raw wait status.
fn wait_child(pid: i32, signals: &libc::sigset_t, kill: &dyn Fn()) -> i32 {
    loop {
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || r < 0 {
            return st;
        }
        match sys::wait_signal(signals) {
            libc::SIGCHLD => {}
            _ => kill(),
        }
    }
}

fn remove_cgroups(config: &JailConfig) {
    for cg in config.cgroups.iter().rev() {
        // The pid namespace is torn down synchronously, but the cgroup may report busy for a
        // moment while its css goes offline.
        for _ in 0..500 {
            match std::fs::remove_dir(&cg.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// The idmapped tree for `config.idmap`, if any, as (cell target, descriptor).
fn prepare_idmap(config: &JailConfig) -> std::io::Result<Option<(String, OwnedFd)>> {
    use warren_protocol::mount::MountKind;
    let Some(map) = &config.idmap else {
        return Ok(None);
    };
    let mount = config.mounts.get(&map.target).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no mount at {}", map.target),
        )
    })?;
    let (source, readonly) = match &mount.kind {
        MountKind::Bind { source, readonly } => (source, *readonly),
        MountKind::Cow { lower, upper, work } => {
            // Overlayfs refuses idmapped layers when mounted inside a user namespace, so the
            // whole overlay is built here (by root) and the init only moves it into place.
            // The lower layer is never written through.
            let lower_tree =
                crate::idmap::idmapped_tree(lower, map, config.host_uid, config.host_gid, true)?;
            let lower_path = format!("/proc/self/fd/{}", lower_tree.as_raw_fd());
            let fd = sys::fs_mount(
                "overlay",
                &[
                    ("lowerdir", &lower_path),
                    ("upperdir", upper),
                    ("workdir", work),
                ],
                sys::attr::NOSUID | sys::attr::NODEV,
            )?;
            return Ok(Some((map.target.clone(), fd)));
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a bind or cow mount", map.target),
            ));
        }
    };
    let fd = crate::idmap::idmapped_tree(source, map, config.host_uid, config.host_gid, readonly)?;
    Ok(Some((map.target.clone(), fd)))
}
