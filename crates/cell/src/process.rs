//! The process tier: a cell made of Linux namespaces, Landlock, seccomp and cgroups, whose
//! init is `warren-jail`. See `warren_jail` for what happens inside.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use warren_protocol::guest::{
    ClientFrame, Decoder, ExecSpec, ExitInfo, Request, Response, SECRET_LEN, ServerFrame,
    secret_to_hex,
};
use warren_protocol::jail::{CgroupPlacement, JailConfig, LandlockReport, Rlimits, StartReport};

use crate::cgroup::{CellCgroups, Hierarchy, RealFs};
use crate::error::CellError;
use crate::spec::{CellSpec, CowLayer, WorkspaceMode, base_env, resolve_identity};
use crate::{Cell, ExecOutcome, OutputSink, Tier};

/// How to start a cell's supervisor: the `warren` binary with `__jail`, or a test binary.
#[derive(Clone, Debug)]
pub struct JailProgram {
    /// Executable path.
    pub program: PathBuf,
    /// Arguments before the config is read from stdin.
    pub args: Vec<String>,
    /// Fork supervisors from a shared, long-lived fork server instead of executing the
    /// program once per cell (for hosts that start many cells).
    pub fork_server: bool,
}

/// The dedicated jail binary's name, looked for next to the current executable.
pub const JAIL_BINARY: &str = "warren-jail";

impl JailProgram {
    /// What the `warren` CLI executes for a cell: the small [`JAIL_BINARY`] next to it when
    /// it is there (built and installed with `warren`), so a cold start loads a few hundred
    /// kilobytes instead of the whole CLI; otherwise this executable with the hidden `__jail`
    /// subcommand.
    pub fn current_exe() -> Result<Self, CellError> {
        let program =
            std::env::current_exe().map_err(CellError::io("locate", "current executable"))?;
        Ok(Self::next_to(program))
    }

    /// [`JailProgram::current_exe`] for the executable `program`.
    pub fn next_to(program: PathBuf) -> Self {
        let jail = program.with_file_name(JAIL_BINARY);
        // SAFETY: access(2) with a valid C string; it only checks permissions.
        let runnable = std::ffi::CString::new(jail.as_os_str().as_encoded_bytes())
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0);
        if runnable && jail.is_file() {
            return JailProgram {
                program: jail,
                args: Vec::new(),
                fork_server: false,
            };
        }
        JailProgram {
            program,
            args: vec!["__jail".into()],
            fork_server: false,
        }
    }
}

/// What the cell reported when it became ready.
#[derive(Clone, Debug)]
pub struct StartInfo {
    /// Host pid of the cell's init.
    pub init_pid: i32,
    /// Host pid of the supervisor.
    pub supervisor_pid: i32,
    /// Landlock status.
    pub landlock: LandlockReport,
    /// Number of seccomp rules.
    pub seccomp_rules: usize,
    /// cgroup hierarchy enforcing limits, if any.
    pub cgroup: Option<&'static str>,
    /// Host uid/gid the cell user maps to.
    pub host_identity: (u32, u32),
}

/// The cell's supervisor: our child (direct exec), a fork server's child (held by pidfd),
/// or our own fork running the jail in process ([`ProcessCell::start_in_process`]).
enum Supervisor {
    /// Spawned (by a thread that waits for it) or forked by the fork server: a pidfd.
    Forked {
        pidfd: OwnedFd,
    },
    Own {
        pid: i32,
        pidfd: OwnedFd,
    },
}

/// The jail's entry for a supervisor forked in process (`warren_jail::main_in_process`):
/// runs the supervisor to completion with the status pipe at fd 3 and returns its exit code.
/// The host crate passes it in; this crate never links the jail.
pub type InProcessJail = fn(JailConfig) -> i32;

/// Whether this process has exactly one thread (`/proc/self/stat` field 20).
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat").is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(17).map(|n| n == "1"))
            .unwrap_or(false)
    })
}

/// A running process-tier cell. Dropping it kills the cell.
pub struct ProcessCell {
    id: String,
    socket_name: String,
    secret: [u8; SECRET_LEN],
    supervisor: Option<Supervisor>,
    cgroups: Option<CellCgroups>,
    cow: Option<CowLayer>,
    /// The disk bound's watcher of a copy-on-write workspace.
    disk: Option<crate::disk::DiskWatch>,
    /// The empty `.warren` made in the layer to mask it ([`crate::spec::prepare_cow_mountpoint`]),
    /// removed once the cell is gone.
    cow_mountpoint: bool,
    info: StartInfo,
    max_output: u64,
}

/// A fresh random id like `c3f9a0b1c2d3e`.
pub fn new_cell_id() -> String {
    let b = random_bytes::<6>();
    format!(
        "c{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writing into the unfilled tail of a local buffer.
        let r = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if r > 0 {
            filled += r as usize;
        }
    }
    b
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

impl ProcessCell {
    /// Start a cell. Fails closed: any missing mechanism refuses the start with its name.
    pub fn start(spec: &CellSpec, jail: &JailProgram) -> Result<Self, CellError> {
        Self::start_with(spec, jail, None)
    }

    /// Start a cell whose supervisor is this process's own fork running `entry`, with no
    /// `execve` at all (the one-shot cold start of `warren exec`: no second program to load).
    /// Only while this process is single-threaded — then the child is exactly the fresh
    /// single-threaded process the jail needs — and never with a fork server; otherwise (or
    /// if the fork fails) it starts the cell as [`ProcessCell::start`] does.
    pub fn start_in_process(
        spec: &CellSpec,
        jail: &JailProgram,
        entry: InProcessJail,
    ) -> Result<Self, CellError> {
        Self::start_with(spec, jail, Some(entry))
    }

    fn start_with(
        spec: &CellSpec,
        jail: &JailProgram,
        entry: Option<InProcessJail>,
    ) -> Result<Self, CellError> {
        let id = match &spec.id {
            Some(id)
                if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                id.clone()
            }
            Some(id) => return Err(CellError::Spec(format!("{id:?} is not a valid cell id"))),
            None => new_cell_id(),
        };
        let hostname = format!("warren-{id}");
        let (host_uid, host_gid) = resolve_identity(spec);
        if host_uid == 0 || host_gid == 0 {
            return Err(CellError::Spec(
                "a cell may not run as host root (uid/gid 0)".into(),
            ));
        }

        // Copy-on-write layer: created on the host, owned by the cell's host identity.
        let mut fresh_layer = false;
        let mut cow_mountpoint = false;
        let cow = match &spec.workspace {
            Some(ws) if ws.mode == WorkspaceMode::Cow => {
                let layer = CowLayer::at(&spec.state_dir, &id);
                // A layer that exists already is a resumed task's work: reused, never removed.
                fresh_layer = !layer.upper.exists();
                for d in [&layer.upper, &layer.work] {
                    std::fs::create_dir_all(d).map_err(CellError::io("create", d))?;
                    chown(d, host_uid, host_gid)?;
                }
                crate::cow::write_meta(&layer, &ws.host)?;
                // `.warren` is masked in the merged view even when the project has none.
                cow_mountpoint =
                    crate::spec::prepare_cow_mountpoint(&layer, &ws.host, (host_uid, host_gid))?
                        .is_some();
                Some(layer)
            }
            _ => None,
        };
        let mounts = spec.mount_spec(&hostname, cow.as_ref());
        let mounts = match mounts {
            Ok(m) => m,
            Err(e) => {
                if let Some(c) = &cow {
                    if fresh_layer {
                        let _ = std::fs::remove_dir_all(&c.root);
                    } else if cow_mountpoint {
                        crate::spec::remove_cow_mountpoint(c);
                    }
                }
                return Err(e);
            }
        };

        // Refused before anything is created (a root-owned read-write workspace).
        let idmap = crate::spec::workspace_idmap(spec, host_uid)?;
        let cgroups = if spec.limits.cgroup.any() {
            let Some(h) = Hierarchy::detect() else {
                return Err(CellError::Refused {
                    step: "cgroup".into(),
                    reason: "limits requested but no cgroup hierarchy with memory, pids and cpu controllers is available".into(),
                });
            };
            Some(CellCgroups::create(
                Box::new(RealFs),
                h,
                &id,
                &spec.limits.cgroup,
            )?)
        } else {
            None
        };

        let secret = random_bytes::<SECRET_LEN>();
        let socket_name = format!(
            "warren/{id}/{}",
            random_bytes::<8>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut env = base_env(&hostname);
        env.extend(spec.env.iter().cloned());
        let egress = match &spec.egress {
            Some(sock) => {
                let name = sock
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| CellError::Spec("egress socket name is not UTF-8".into()))?;
                let proxy = format!("http://127.0.0.1:{}", crate::spec::EGRESS_PORT);
                for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.push((k.into(), proxy.clone()));
                }
                env.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
                env.push(("no_proxy".into(), "localhost,127.0.0.1".into()));
                Some(warren_protocol::jail::Egress {
                    port: crate::spec::EGRESS_PORT,
                    socket: format!("{}/{name}", crate::spec::EGRESS_DIR),
                })
            }
            None => None,
        };
        let config = JailConfig {
            egress,
            cell_id: id.clone(),
            socket_name: socket_name.clone(),
            secret_hex: secret_to_hex(&secret),
            host_uid,
            host_gid,
            hostname,
            mounts,
            env,
            cwd: if spec.workspace.is_some() {
                "/workspace".into()
            } else {
                "/tmp".into()
            },
            rlimits: Rlimits {
                nofile: spec.limits.nofile,
                // No one file may outgrow the disk bound of a copy-on-write workspace.
                fsize: match (&spec.workspace, spec.limits.disk_bytes) {
                    (Some(ws), Some(d)) if ws.mode == WorkspaceMode::Cow => {
                        spec.limits.fsize.min(d)
                    }
                    _ => spec.limits.fsize,
                },
            },
            cgroups: cgroups
                .as_ref()
                .map(|c| {
                    c.dirs
                        .iter()
                        .map(|d| CgroupPlacement {
                            dir: d.display().to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            owner_pid: std::process::id() as i32,
            idmap,
            require_landlock: spec.require_landlock,
        };

        let mut cell = ProcessCell {
            id,
            socket_name,
            secret,
            supervisor: None,
            cgroups,
            cow,
            disk: None,
            cow_mountpoint,
            info: StartInfo {
                init_pid: 0,
                supervisor_pid: 0,
                landlock: LandlockReport::default(),
                seccomp_rules: 0,
                cgroup: None,
                host_identity: (host_uid, host_gid),
            },
            max_output: spec.limits.max_output_bytes,
        };
        cell.info.cgroup = cell.cgroups.as_ref().map(|c| c.hierarchy().name());
        match cell.spawn_supervisor(jail, &config, entry) {
            Ok(()) => {
                if let (Some(layer), Some(limit)) = (cell.cow.clone(), spec.limits.disk_bytes) {
                    cell.disk = Some(crate::disk::DiskWatch::start(
                        layer,
                        limit,
                        cell.info.init_pid,
                    ));
                }
                Ok(cell)
            }
            Err(e) => {
                // Drop tears down whatever was created; a refused new cow layer is discarded.
                if let Some(c) = cell.cow.take().filter(|_| fresh_layer) {
                    let _ = std::fs::remove_dir_all(&c.root);
                }
                Err(e)
            }
        }
    }

    fn spawn_supervisor(
        &mut self,
        jail: &JailProgram,
        config: &JailConfig,
        entry: Option<InProcessJail>,
    ) -> Result<(), CellError> {
        if let Some(entry) = entry.filter(|_| !jail.fork_server && single_threaded()) {
            return self.fork_supervisor(entry, config);
        }
        if jail.fork_server {
            let (status_r, status_w) = pipe()?;
            let json = serde_json::to_vec(config).map_err(|e| CellError::Spec(e.to_string()))?;
            let (pid, pidfd) = crate::forkserver::launch(jail, &json, &status_w)?;
            drop(status_w);
            self.info.supervisor_pid = pid;
            self.supervisor = Some(Supervisor::Forked { pidfd });
            return self.read_report(status_r);
        }
        let (status_r, status_w) = pipe()?;
        let status_w_fd = status_w.as_raw_fd();
        let mut cmd = Command::new(&jail.program);
        cmd.args(&jail.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("WARREN_JAIL_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        // SAFETY: between fork and exec we only call dup2 and close_range (async-signal-safe) to
        // place the status pipe at fd 3 (dup2 clears its close-on-exec) and close the rest.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(status_w_fd, warren_protocol::jail::STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Descriptors this process inherited without close-on-exec must not reach
                // the cell: mark everything above the status pipe close-on-exec.
                // CLOSE_RANGE_CLOEXEC (4): std still needs its exec-error pipe until the exec.
                libc::syscall(
                    libc::SYS_close_range,
                    warren_protocol::jail::STATUS_FD as u32 + 1,
                    u32::MAX,
                    4u32,
                );
                Ok(())
            });
        }
        // The supervisor's parent-death signal fires when the *thread* that spawned it exits
        // (not the process), and the caller may be a pooled thread that exits when idle (a
        // tokio blocking thread: after 10 s without work), which would take the cell down in
        // the middle of a task. So a thread of the cell's own spawns it and lives exactly as
        // long as it (it reaps it); the cell holds a pidfd.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("warren-cell".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id() as i32;
                // SAFETY: pidfd_open on our own child, not reaped before the wait below.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                let opened = if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = child.kill();
                    Err(e)
                } else {
                    // SAFETY: a fresh descriptor we own.
                    Ok((
                        pid,
                        unsafe { OwnedFd::from_raw_fd(fd as i32) },
                        child.stdin.take(),
                    ))
                };
                let _ = tx.send(opened);
                // Reaps it when it exits (killed above if its pidfd could not be opened).
                let _ = child.wait();
            })
            .map_err(|source| CellError::Spawn {
                program: jail.program.clone(),
                source,
            })?;
        let (pid, pidfd, stdin) = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread died")))
            .map_err(|source| CellError::Spawn {
                program: jail.program.clone(),
                source,
            })?;
        drop(status_w);
        self.info.supervisor_pid = pid;
        let json = serde_json::to_vec(config).map_err(|e| CellError::Spec(e.to_string()))?;
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&json);
        }
        self.supervisor = Some(Supervisor::Forked { pidfd });
        self.read_report(status_r)
    }

    /// Fork this (single-threaded) process; the child puts the status pipe at fd 3 and
    /// `/dev/null` on stdin and stdout (and stderr unless `WARREN_JAIL_DEBUG` is set), then
    /// runs the jail's `entry` and exits with its code, never returning here. The jail closes
    /// every other descriptor and scrubs the command line and environment first.
    fn fork_supervisor(
        &mut self,
        entry: InProcessJail,
        config: &JailConfig,
    ) -> Result<(), CellError> {
        let (status_r, status_w) = pipe()?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(CellError::io("open", "/dev/null"))?;
        let debug = std::env::var_os("WARREN_JAIL_DEBUG").is_some();
        let config = config.clone();
        // SAFETY: this process is single-threaded (checked by the caller), so the child is a
        // complete copy that may run any code; it leaves only through `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(CellError::io("fork", "supervisor")(
                std::io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            let (s, n) = (status_w.as_raw_fd(), null.as_raw_fd());
            // SAFETY: dup2 onto the standard descriptors and the status slot (dup2 clears
            // close-on-exec on the copies); the originals are closed by the jail.
            unsafe {
                libc::dup2(s, warren_protocol::jail::STATUS_FD);
                libc::dup2(n, 0);
                libc::dup2(n, 1);
                if !debug {
                    libc::dup2(n, 2);
                }
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(config)))
                .unwrap_or(101);
            // SAFETY: leave the child without running the host's destructors or atexit.
            unsafe { libc::_exit(code) };
        }
        drop(status_w);
        // SAFETY: pidfd_open on our own, not yet reaped, child.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: killing and reaping the child we just forked.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(CellError::io("pidfd_open", "supervisor")(e));
        }
        // SAFETY: a fresh descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        self.info.supervisor_pid = pid;
        self.supervisor = Some(Supervisor::Own { pid, pidfd });
        self.read_report(status_r)
    }

    /// Read the cell's one line on the status pipe: Ready or Refused.
    fn read_report(&mut self, status_r: OwnedFd) -> Result<(), CellError> {
        if !wait_readable(&status_r, START_TIMEOUT) {
            return Err(CellError::Refused {
                step: "start".into(),
                reason: format!("no report from the cell within {START_TIMEOUT:?}"),
            });
        }
        let mut line = String::new();
        let _ = BufReader::new(std::fs::File::from(status_r)).read_line(&mut line);
        match serde_json::from_str::<StartReport>(&line) {
            Ok(StartReport::Ready {
                init_pid,
                landlock,
                seccomp_rules,
            }) => {
                self.info.init_pid = init_pid;
                self.info.landlock = landlock;
                self.info.seccomp_rules = seccomp_rules;
                Ok(())
            }
            Ok(StartReport::Refused { step, reason }) => Err(CellError::Refused { step, reason }),
            Err(_) => {
                Err(CellError::Refused {
                    step: "start".into(),
                    reason: "the cell supervisor exited without a report; run with WARREN_JAIL_DEBUG=1 to see its stderr".into(),
                })
            }
        }
    }

    /// What the cell reported on start.
    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    /// The copy-on-write layer, when `/workspace` is `cow`.
    pub fn cow_layer(&self) -> Option<&CowLayer> {
        self.cow.as_ref()
    }

    /// cgroups of the cell, if limits are enforced.
    pub fn cgroups(&self) -> Option<&CellCgroups> {
        self.cgroups.as_ref()
    }

    /// Connect and authenticate with an arbitrary secret (tests of the channel use this).
    pub fn connect_with_secret(
        &self,
        secret: &[u8; SECRET_LEN],
    ) -> Result<(UnixStream, Decoder), CellError> {
        self.connect_and_send(secret, None)
    }

    /// Connect, then send the hello and (optionally) the request in one write.
    fn connect_and_send(
        &self,
        secret: &[u8; SECRET_LEN],
        req: Option<Request>,
    ) -> Result<(UnixStream, Decoder), CellError> {
        use std::os::linux::net::SocketAddrExt;
        let chan = |what: String| CellError::Channel {
            id: self.id.clone(),
            what,
        };
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(self.socket_name.as_bytes())
            .map_err(|e| chan(format!("socket name: {e}")))?;
        let mut conn =
            UnixStream::connect_addr(&addr).map_err(|e| chan(format!("connect: {e}")))?;
        let mut buf = Vec::new();
        ClientFrame::Hello(*secret).encode(&mut buf);
        if let Some(r) = req {
            ClientFrame::Request(r).encode(&mut buf);
        }
        conn.write_all(&buf)
            .map_err(|e| chan(format!("send: {e}")))?;
        Ok((conn, Decoder::default()))
    }

    fn request(&self, req: Request) -> Result<Response, CellError> {
        let (mut conn, mut dec) = self.connect_and_send(&self.secret, Some(req))?;
        loop {
            match self.read_server(&mut conn, &mut dec)? {
                ServerFrame::Welcome { .. } => continue,
                ServerFrame::Done(r) => return Ok(r),
                _ => return Err(self.chan("unexpected output frame".into())),
            }
        }
    }

    fn chan(&self, what: String) -> CellError {
        CellError::Channel {
            id: self.id.clone(),
            what,
        }
    }

    fn read_server(
        &self,
        conn: &mut UnixStream,
        dec: &mut Decoder,
    ) -> Result<ServerFrame, CellError> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match dec.next_server() {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(self.chan(format!("protocol: {e}"))),
            }
            match conn.read(&mut buf) {
                Ok(0) => {
                    return Err(self.chan("the cell closed the connection (did it die?)".into()));
                }
                Ok(n) => dec.push(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(self.chan("no answer from the cell's init in time".into()));
                }
                Err(e) => return Err(self.chan(format!("read: {e}"))),
            }
        }
    }

    /// Ask the supervisor to stop the cell now, without waiting: every process in it dies and
    /// commands running in it fail. Resources are released when the cell is dropped. (For
    /// cancellation while other threads still hold the cell inside a command.)
    pub fn terminate(&self) {
        match &self.supervisor {
            Some(Supervisor::Forked { pidfd } | Supervisor::Own { pidfd, .. }) => {
                pidfd_signal(pidfd, libc::SIGTERM);
            }
            None => {}
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut d) = self.disk.take() {
            d.stop();
        }
        // SIGTERM asks the supervisor to kill the init (taking the whole pid namespace with it)
        // and remove the cgroups; it exits promptly. Wait on a pidfd, not a sleep loop.
        match self.supervisor.take() {
            Some(Supervisor::Own { pid, pidfd }) => {
                pidfd_signal(&pidfd, libc::SIGTERM);
                if !wait_readable(&pidfd, Duration::from_secs(5)) {
                    pidfd_signal(&pidfd, libc::SIGKILL);
                }
                // SAFETY: reaping our own child (it has exited or been SIGKILLed).
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            Some(Supervisor::Forked { pidfd }) => {
                pidfd_signal(&pidfd, libc::SIGTERM);
                if !wait_readable(&pidfd, Duration::from_secs(5)) {
                    pidfd_signal(&pidfd, libc::SIGKILL);
                    wait_readable(&pidfd, Duration::from_secs(5));
                }
            }
            None => {}
        }
        if let Some(cg) = &self.cgroups {
            cg.remove();
        }
        if let (Some(layer), true) = (&self.cow, self.cow_mountpoint) {
            crate::spec::remove_cow_mountpoint(layer);
            self.cow_mountpoint = false;
        }
    }
}

fn chown(path: &std::path::Path, uid: u32, gid: u32) -> Result<(), CellError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(()); // an ordinary user already owns what it creates
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(CellError::io("chown", path))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), CellError> {
    let mut fds = [0; 2];
    // SAFETY: valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CellError::io("pipe", "status")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send `sig` to the process a pidfd we hold refers to (no siginfo); at worst it is gone.
fn pidfd_signal(pidfd: &OwnedFd, sig: i32) {
    // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            0usize,
            0u32,
        );
    }
}

fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n > 0
}

impl Drop for ProcessCell {
    fn drop(&mut self) {
        self.kill_now();
    }
}

impl Cell for ProcessCell {
    fn id(&self) -> &str {
        &self.id
    }

    fn terminate(&self) {
        ProcessCell::terminate(self);
    }

    fn cow_layer(&self) -> Option<&CowLayer> {
        ProcessCell::cow_layer(self)
    }

    fn tier(&self) -> Tier {
        Tier::Process
    }

    fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, CellError> {
        let oom_before = self.cgroups.as_ref().map_or(0, |c| c.oom_kills());
        let disk_before = self.disk.as_ref().map_or(0, |d| d.kills());
        let cap = spec.max_output_bytes;
        let mut spec = spec.clone();
        spec.stdin = stdin.is_some();
        let (mut conn, mut dec) =
            self.connect_and_send(&self.secret, Some(Request::Exec(spec.clone())))?;
        // The init enforces the timeout; if it goes silent well past it, give up on it.
        if let Some(ms) = spec.timeout_ms {
            let _ =
                conn.set_read_timeout(Some(Duration::from_millis(ms) + Duration::from_secs(10)));
        }
        if let Some(mut input) = stdin {
            // Detached: the command may finish without reading its input, and a blocking read
            // of (say) a terminal cannot be interrupted; the thread ends with the socket.
            let mut w = conn
                .try_clone()
                .map_err(|e| self.chan(format!("clone socket: {e}")))?;
            std::thread::spawn(move || {
                let mut chunk = vec![0u8; 32 * 1024];
                let mut out = Vec::new();
                loop {
                    let n = match input.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    out.clear();
                    ClientFrame::Stdin(chunk[..n].to_vec()).encode(&mut out);
                    if w.write_all(&out).is_err() {
                        return;
                    }
                }
                out.clear();
                ClientFrame::StdinEof.encode(&mut out);
                let _ = w.write_all(&out);
            });
        }
        let (mut sent_out, mut sent_err) = (0u64, 0u64);
        let result = loop {
            match self.read_server(&mut conn, &mut dec)? {
                ServerFrame::Welcome { .. } => {}
                // The init is inside the cell: treat what it says as hostile and enforce the
                // output cap here too.
                ServerFrame::Stdout(b) => {
                    let room = cap.saturating_sub(sent_out) as usize;
                    let b = &b[..b.len().min(room)];
                    sent_out += b.len() as u64;
                    sink.stdout(b);
                }
                ServerFrame::Stderr(b) => {
                    let room = cap.saturating_sub(sent_err) as usize;
                    let b = &b[..b.len().min(room)];
                    sent_err += b.len() as u64;
                    sink.stderr(b);
                }
                ServerFrame::Done(r) => break r,
            }
        };
        match result {
            Response::Exited(exit) => {
                let oom_after = self.cgroups.as_ref().map_or(0, |c| c.oom_kills());
                // The victim may be any process of the command (a pipeline's `tail`, say), so the
                // cgroup's counter decides, not the top process's signal.
                let oom_killed = oom_after > oom_before && exit.code != Some(0);
                let disk_exceeded = self.disk.as_ref().map_or(0, |d| d.kills()) > disk_before
                    && exit.code != Some(0);
                Ok(ExecOutcome {
                    disk_exceeded,
                    stdout_truncated: exit.stdout_truncated(cap),
                    stderr_truncated: exit.stderr_truncated(cap),
                    exit,
                    oom_killed,
                    failure: None,
                })
            }
            Response::Failed { code, message } => Ok(ExecOutcome {
                exit: ExitInfo::default(),
                oom_killed: false,
                disk_exceeded: false,
                stdout_truncated: false,
                stderr_truncated: false,
                failure: Some((code, message)),
            }),
            Response::Ok => Err(self.chan("unexpected Ok for exec".into())),
        }
    }

    fn set_env(&self, vars: Vec<(String, Option<String>)>) -> Result<(), CellError> {
        self.simple(Request::SetEnv { vars })
    }

    fn chdir(&self, path: &str) -> Result<(), CellError> {
        self.simple(Request::Chdir { path: path.into() })
    }

    fn max_output_bytes(&self) -> u64 {
        self.max_output
    }

    fn kill(&mut self) {
        self.kill_now();
    }
}

impl ProcessCell {
    fn simple(&self, req: Request) -> Result<(), CellError> {
        match self.request(req)? {
            Response::Ok => Ok(()),
            Response::Failed { code, message } => Err(self.chan(format!("{code:?}: {message}"))),
            Response::Exited(_) => Err(self.chan("unexpected exit".into())),
        }
    }

    /// Liveness check through the authenticated channel.
    pub fn ping(&self) -> Result<(), CellError> {
        self.simple(Request::Ping)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_dedicated_jail_binary_is_used_when_it_sits_next_to_warren() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("warren-jailbin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let warren = dir.join("warren");
        let fallback = JailProgram::next_to(warren.clone());
        assert_eq!(
            (fallback.program.clone(), fallback.args),
            (warren.clone(), vec!["__jail".to_owned()])
        );
        // Present but not executable: still the fallback.
        let jail = dir.join(JAIL_BINARY);
        std::fs::write(&jail, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o644)).unwrap();
        // SAFETY: geteuid has no preconditions (root may "execute" a 0644 file per access(2)).
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(JailProgram::next_to(warren.clone()).program, warren);
        }
        std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = JailProgram::next_to(warren);
        assert_eq!(
            (p.program, p.args, p.fork_server),
            (jail, Vec::<String>::new(), false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_test_process_is_not_single_threaded() {
        // The harness runs tests on threads: the in-process start must fall back here.
        let _t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        assert!(!single_threaded());
    }
}
