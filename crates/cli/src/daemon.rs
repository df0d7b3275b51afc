//! `warren daemon` (foreground, for systemd and containers) and `warren daemon start|stop|status`
//! (a background daemon for a person at a terminal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use warren_daemon::server::{Listen, Paths};
use warren_runtime::engine::Options;
use warren_runtime::scheduler::Limits;

/// Settings of a daemon.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Also listen on TCP (e.g. 127.0.0.1:7777); requests must carry the bearer token kept in
    /// the state directory's `token` file (created 0600 on first use).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Let this group use the unix socket (mode 0660 instead of 0600).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Name on task leases; keep it stable so a restarted daemon resumes its own tasks at once
    /// (default: the host name).
    #[arg(long, value_name = "NAME")]
    worker: Option<String>,
    /// Tasks running at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_running: usize,
    /// Tasks running at once per agent.
    #[arg(long, value_name = "N", default_value_t = 4)]
    max_per_agent: usize,
    /// Queued tasks accepted at most (more are refused with 429).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_queued: u64,
    /// Task lease; a task whose daemon stops renewing it is resumed by another (e.g. 30s).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = crate::exec_policy::parse_duration)]
    lease: Duration,
    /// A task claimed this many times without finishing is interrupted instead of resumed.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_attempts: u32,
    /// The operator's policy (TOML, `[capabilities]`: tools, paths, network) bounding what
    /// every agent may request. Without it, agents get what their manifests ask for, and no
    /// network.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// A task waiting for approval longer than this is denied.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = crate::exec_policy::parse_duration)]
    approval_timeout: Duration,
    /// Embedder for the memory tools' code index and notes: none (full text only; the
    /// default), openai, local, hash; or $WARREN_EMBEDDER.
    #[arg(long, value_name = "NAME")]
    embedder: Option<String>,
    /// Where tasks, checkpoints, events and the audit log live: a `postgres://…` URL shared by
    /// several daemons (each with its own --worker name and state directory; any of them
    /// claims any task, and resumes those of a node that died), or a SQLite file (default:
    /// warren.db in the state directory).
    #[arg(
        long,
        value_name = "URL|FILE",
        env = "WARREN_STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    /// Task directories and cells' copy-on-write layers (default: the state directory). Nodes
    /// sharing a PostgreSQL store need a directory they all mount (NFS, CephFS): a task resumed
    /// on another node continues from the workspace changes it made on the first.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep model prompts (system prompt and messages, secrets redacted) in the audit log.
    #[arg(long)]
    audit_prompts: bool,
    /// Test hook: the egress proxy answers NAME with IP instead of asking DNS.
    #[arg(long, value_name = "NAME=IP", hide = true)]
    egress_test_resolve: Vec<String>,
    /// Test hook: the egress proxy dials ADDR when the checked address is IP.
    #[arg(long, value_name = "IP=ADDR", hide = true)]
    egress_test_dial: Vec<String>,
}

/// `warren daemon start|stop|status`.
#[derive(Subcommand, Debug)]
pub enum DaemonAction {
    /// Start a daemon in the background (output in the state directory's daemon.log).
    Start {
        /// Settings.
        #[command(flatten)]
        args: Box<DaemonArgs>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop the background daemon: running tasks are requeued and resume at the next start.
    Stop {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Whether a daemon runs, and its counts.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// `warren daemon` in the foreground.
pub fn foreground(a: DaemonArgs, state: &Path) -> i32 {
    // The daemon's own log (library crates report through `tracing`, never print).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let loaded = match crate::load_config() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warren: {e}");
            return 2;
        }
    };
    let mut jail = match warren_cell::JailProgram::current_exe() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("warren: {e}");
            return 1;
        }
    };
    jail.fork_server = true;
    let policy = match &a.policy {
        None => warren_runtime::capabilities::PolicyFile::default(),
        Some(f) => match std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))
            .and_then(|t| {
                warren_runtime::capabilities::PolicyFile::parse(f, &t).map_err(|e| e.to_string())
            }) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("warren: {e}");
                return 2;
            }
        },
    };
    let memory = match warren_memory::embed::from_env(a.embedder.as_deref()).and_then(|e| {
        std::fs::create_dir_all(state).map_err(|x| x.to_string())?;
        let db =
            warren_memory::MemoryDb::open(&state.join("memory.db")).map_err(|x| x.to_string())?;
        Ok(warren_runtime::memory_tools::Memory {
            db: std::sync::Arc::new(db),
            embedder: e,
        })
    }) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("warren: memory: {e}");
            return 2;
        }
    };
    // Test hooks, but a malformed one is an error, never silently ignored.
    let mut egress_resolve = HashMap::new();
    for e in &a.egress_test_resolve {
        match e
            .split_once('=')
            .map(|(n, ip)| (n, ip.parse::<std::net::IpAddr>()))
        {
            Some((n, Ok(ip))) => egress_resolve.insert(n.to_owned(), vec![ip]),
            _ => {
                eprintln!("warren daemon: --egress-test-resolve {e:?}: expected NAME=IP");
                return 2;
            }
        };
    }
    let mut egress_dial = HashMap::new();
    for e in &a.egress_test_dial {
        let parsed = e.split_once('=').and_then(|(ip, addr)| {
            Some((
                ip.parse::<std::net::IpAddr>().ok()?,
                addr.parse::<std::net::SocketAddr>().ok()?,
            ))
        });
        match parsed {
            Some((ip, addr)) => egress_dial.insert(ip, addr),
            None => {
                eprintln!("warren daemon: --egress-test-dial {e:?}: expected IP=ADDRESS:PORT");
                return 2;
            }
        };
    }
    let opts = Options {
        memory,
        state_dir: state.to_owned(),
        work_dir: a.work_dir.clone(),
        worker: a.worker.unwrap_or_else(hostname),
        limits: Limits {
            global: a.max_running.max(1),
            per_agent: a.max_per_agent.max(1),
            agent: HashMap::new(),
            max_queued: a.max_queued,
        },
        lease: a.lease.max(Duration::from_secs(1)),
        cells: Arc::new(warren_runtime::wasicell::TieredCells {
            process: Arc::new(warren_runtime::cells::ProcessCells { jail }),
            wasi: Arc::new(warren_runtime::wasicell::WasiCells::new(Some(
                state.join("wasm-cache"),
            ))),
        }),
        provider: None,
        max_turns: None,
        loaded,
        env: std::env::vars().collect(),
        max_attempts: a.max_attempts.max(1),
        policy: policy.layer(),
        approval_timeout: a.approval_timeout,
        audit_prompts: a.audit_prompts,
        egress_resolve,
        egress_dial,
        // The daemon's user's and the operator's skills (a submitted workspace's own skills
        // are not used: trust is a person's decision about a project, not the daemon's).
        skills: crate::skills::used_roots(None, false),
        mcp_annotation_approval: policy.capabilities.mcp_approval.unwrap_or_default()
            == warren_runtime::capabilities::McpApproval::Annotations,
        plans: warren_runtime::plan::PlanLimits::from_policy(&policy.plans),
    };
    let listen = Listen {
        socket_group: a.socket_group,
        tcp: a.listen,
    };
    let notify = |n: warren_daemon::server::Notice| match n {
        warren_daemon::server::Notice::Ready { worker, listening } => eprintln!(
            "warren daemon: worker {worker} ready on {listening} (pid {})",
            std::process::id()
        ),
        warren_daemon::server::Notice::ShuttingDown => {
            eprintln!("warren daemon: shutting down; running tasks are requeued for resume")
        }
    };
    let store = a.store.as_deref().map(warren_store::Location::parse);
    match warren_daemon::server::run(opts, listen, store, &notify) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warren daemon: {e}");
            1
        }
    }
}

fn running_pid(paths: &Paths) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&paths.pid)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// The addresses in the daemon's ready line (`warren daemon: worker W ready on WHERE (pid P)`),
/// if the log has one past byte `from`.
fn ready_line(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    // A log past a few hundred KiB at start is not ours to read whole.
    f.take(256 * 1024).read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("warren daemon: worker ")?;
        let (_, on) = rest.split_once(" ready on ")?;
        let (listening, _) = on.rsplit_once(" (pid ")?;
        Some(listening.to_owned())
    })
}

/// `warren daemon start|stop|status`.
pub fn manage(action: DaemonAction, state: &Path) -> i32 {
    let paths = Paths::of(state);
    match action {
        DaemonAction::Status { json } => crate::tasks::status(None, state, json),
        DaemonAction::Start { args: a, json } => {
            let say = |started: bool, pid: u32, msg: String, listening: Option<&str>| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "running": started,
                            "pid": pid,
                            "message": msg,
                            "listening": listening,
                        })
                    );
                } else {
                    eprintln!("warren: {msg}");
                }
            };
            if let Some(pid) = running_pid(&paths) {
                say(
                    true,
                    pid as u32,
                    format!("a daemon is already running (pid {pid})"),
                    None,
                );
                return 0;
            }
            if let Err(e) = std::fs::create_dir_all(state) {
                eprintln!("warren: {}: {e}", state.display());
                return 1;
            }
            let log = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&paths.log)
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("warren: {}: {e}", paths.log.display());
                    return 1;
                }
            };
            // The daemon's ready line is looked for after what the log holds now.
            let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("warren: {e}");
                    return 1;
                }
            };
            let mut cmd = Command::new(exe);
            cmd.arg("--state-dir").arg(state).arg("daemon");
            if let Some(l) = a.listen {
                cmd.arg("--listen").arg(l.to_string());
            }
            if let Some(g) = &a.socket_group {
                cmd.arg("--socket-group").arg(g);
            }
            if let Some(w) = &a.worker {
                cmd.arg("--worker").arg(w);
            }
            if a.audit_prompts {
                cmd.arg("--audit-prompts");
            }
            if let Some(e) = &a.embedder {
                cmd.arg("--embedder").arg(e);
            }
            if let Some(w) = &a.work_dir {
                cmd.arg("--work-dir")
                    .arg(std::fs::canonicalize(w).unwrap_or_else(|_| w.clone()));
            }
            if let Some(s) = &a.store {
                // Through the environment: a URL may hold a password, and argv is public.
                cmd.env("WARREN_STORE", s);
            }
            if let Some(p) = &a.policy {
                cmd.arg("--policy")
                    .arg(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
            }
            cmd.args([
                "--max-running",
                &a.max_running.to_string(),
                "--max-per-agent",
                &a.max_per_agent.to_string(),
                "--max-queued",
                &a.max_queued.to_string(),
                "--lease",
                &format!("{}ms", a.lease.as_millis()),
                "--max-attempts",
                &a.max_attempts.to_string(),
                "--approval-timeout",
                &format!("{}ms", a.approval_timeout.as_millis()),
            ]);
            let err = log.try_clone();
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(err.map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
            // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal
            // session so closing the terminal does not stop it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("warren: starting the daemon: {e}");
                    return 1;
                }
            };
            // Started means every listener is bound and serving: the daemon logs its ready
            // line only then. (A connectable socket is not enough: the unix socket is bound
            // before the TCP listener, and a client reading the log for the TCP address
            // could find it missing.)
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Some(listening) = ready_line(&paths.log, log_from) {
                    say(
                        true,
                        child.id(),
                        format!(
                            "daemon started (pid {}) on {listening}; log: {}",
                            child.id(),
                            paths.log.display()
                        ),
                        Some(&listening),
                    );
                    return 0;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    say(
                        false,
                        child.id(),
                        format!(
                            "the daemon exited at start ({status}); see {}",
                            paths.log.display()
                        ),
                        None,
                    );
                    return 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            say(
                false,
                child.id(),
                format!(
                    "the daemon did not come up within 15s; see {}",
                    paths.log.display()
                ),
                None,
            );
            1
        }
        DaemonAction::Stop { json } => {
            let say = |msg: &str, stopped: bool| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"stopped": stopped, "message": msg})
                    );
                } else {
                    eprintln!("warren: {msg}");
                }
            };
            let Some(pid) = running_pid(&paths) else {
                say("no daemon is running", true);
                return 0;
            };
            // SAFETY: signalling the daemon's pid from its own pid file.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(45);
            // SAFETY: signal 0 only checks that the process exists.
            while Instant::now() < deadline && unsafe { libc::kill(pid, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above.
            if unsafe { libc::kill(pid, 0) } == 0 {
                say(
                    &format!("the daemon (pid {pid}) did not stop within 45s"),
                    false,
                );
                return 1;
            }
            say("daemon stopped", true);
            0
        }
    }
}
