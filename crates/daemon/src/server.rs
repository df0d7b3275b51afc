//! The daemon process: one per state directory (an exclusive lock), a unix socket for local
//! clients (mode 0600, or 0660 for a chosen group), an optional TCP listener that requires the
//! bearer token kept in `<state>/token` (0600), both served within [`ConnLimits`], and a
//! graceful shutdown on SIGTERM/SIGINT that requeues running tasks for resume.

use std::ffi::CString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warren_store::Store;

use warren_runtime::engine::{Engine, Options};

use crate::conn::ConnLimits;

/// The daemon could not start, or its runtime failed. Each names what it was doing and the
/// path or address involved.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or directory of the state directory.
    #[error("{}: {source}", path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon holds the state directory's lock.
    #[error("another daemon is running on this state directory (pid {pid})")]
    Locked {
        /// Its pid, as its pid file says.
        pid: String,
    },
    /// The socket's group.
    #[error("group {name:?}: {problem}")]
    Group {
        /// The group as given.
        name: String,
        /// `does not exist` or `invalid name`.
        problem: &'static str,
    },
    /// The TCP listener.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database.
    #[error(transparent)]
    Store(#[from] warren_store::StoreError),
    /// The async runtime or the signal handlers.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being set up.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::File {
        path: path.to_owned(),
        source,
    }
}

/// Where things live in a state directory.
pub struct Paths {
    /// The database.
    pub db: PathBuf,
    /// The unix socket.
    pub socket: PathBuf,
    /// The TCP bearer token.
    pub token: PathBuf,
    /// The running daemon's pid.
    pub pid: PathBuf,
    /// Held (flock) while a daemon runs.
    pub lock: PathBuf,
    /// Output of a background daemon.
    pub log: PathBuf,
}

impl Paths {
    /// The layout of `state`.
    pub fn of(state: &Path) -> Self {
        Paths {
            db: state.join("warren.db"),
            socket: state.join("warren.sock"),
            token: state.join("token"),
            pid: state.join("daemon.pid"),
            lock: state.join("daemon.lock"),
            log: state.join("daemon.log"),
        }
    }
}

/// Listener settings.
pub struct Listen {
    /// Give this group read/write access to the socket (mode 0660).
    pub socket_group: Option<String>,
    /// Also listen on TCP here (bearer token required).
    pub tcp: Option<SocketAddr>,
}

/// Read the token, creating it (32 random bytes, hex, mode 0600) if missing.
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))?;
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

fn lock_exclusive(path: &Path) -> Result<std::fs::File, ServeError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(file_error(path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(path.with_file_name("daemon.pid")).unwrap_or_default();
        return Err(ServeError::Locked {
            pid: pid.trim().to_owned(),
        });
    }
    Ok(f)
}

fn bind_socket(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, ServeError> {
    // We hold the lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(path);
    // SAFETY: umask has no preconditions; restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let l = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.map_err(file_error(path))?;
    if let Some(g) = group {
        let group = |problem| ServeError::Group {
            name: g.to_owned(),
            problem,
        };
        let name = CString::new(g).map_err(|_| group("invalid name"))?;
        // SAFETY: getgrnam with a valid C string; the result is read at once.
        let gr = unsafe { libc::getgrnam(name.as_ptr()) };
        if gr.is_null() {
            return Err(group("does not exist"));
        }
        // SAFETY: gr is non-null, pointing at libc's static group entry.
        let gid = unsafe { (*gr).gr_gid };
        std::os::unix::fs::chown(path, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
            .map_err(file_error(path))?;
    }
    Ok(l)
}

/// Each running cell holds a few descriptors in the daemon (pidfd, command connections):
/// raise the soft limit to the hard one.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// What the daemon tells its operator as it runs (the binary prints it; this library does
/// not print).
#[derive(Debug)]
pub enum Notice {
    /// Serving: the worker's name and where (the unix socket, and the TCP address with the
    /// token's file).
    Ready {
        /// The engine's worker name.
        worker: String,
        /// `unix:PATH` and, with TCP, ` and http://ADDR (bearer token in FILE)`.
        listening: String,
    },
    /// SIGTERM or SIGINT arrived: running tasks are being requeued for resume.
    ShuttingDown,
}

/// Run the daemon until SIGTERM or SIGINT. Blocks; builds its own runtime. `notify` hears
/// when it is ready and when it shuts down.
pub fn run(
    opts: Options,
    listen: Listen,
    store: Option<warren_store::Location>,
    notify: &(dyn Fn(Notice) + Send + Sync),
) -> Result<(), ServeError> {
    let state = opts.state_dir.clone();
    std::fs::create_dir_all(&state).map_err(file_error(&state))?;
    let paths = Paths::of(&state);
    let _lock = lock_exclusive(&paths.lock)?;
    std::fs::write(&paths.pid, format!("{}\n", std::process::id()))
        .map_err(file_error(&paths.pid))?;
    let location = store.unwrap_or_else(|| warren_store::Location::Sqlite(paths.db.clone()));
    let store: Arc<dyn Store> = warren_store::open(&location)?;
    if let warren_store::Location::Sqlite(db) = &location {
        // Tasks and transcripts are the operator's business only (SQLite gives its -wal and
        // -shm files the database file's mode). The state directory itself stays traversable:
        // cells reach their task directories through it.
        let _ = std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o600));
    }
    let token = match listen.tcp {
        Some(_) => Some(ensure_token(&paths.token).map_err(file_error(&paths.token))?),
        None => None,
    };
    raise_nofile();
    // A running tool call holds a blocking thread, and glibc gives threads their own malloc
    // arenas (up to 8 per core), each keeping freed memory: with a thousand running tasks that
    // is most of the daemon's footprint. A few shared arenas suffice for short critical
    // sections.
    // SAFETY: mallopt before the runtime's threads exist.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Every running tool call holds a blocking thread (a cell's command runs synchronously):
    // allow as many as there can be running tasks, several calls each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(8192)
        .enable_all()
        .thread_name("warren-daemon")
        .build()
        .map_err(|source| ServeError::Runtime {
            what: "start the async runtime",
            source,
        })?;
    let socket = paths.socket.clone();
    let result = rt.block_on(async move {
        let daemon = Engine::new(store, opts)?;
        let unix = bind_socket(&paths.socket, listen.socket_group.as_deref())?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The host's cell tiers, for `/health`: probed once, now.
        let _ = tokio::task::spawn_blocking(crate::api::health::host_tiers).await;
        let mut servers = Vec::new();
        let app = crate::api::router(Arc::clone(&daemon), None);
        servers.push(tokio::spawn(crate::conn::serve(
            unix,
            app,
            ConnLimits::default(),
            stop_rx.clone(),
        )));
        let mut where_ = format!("unix:{}", paths.socket.display());
        if let (Some(addr), Some(token)) = (listen.tcp, token) {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?;
            let bound = tcp
                .local_addr()
                .map_err(|source| ServeError::Listen { addr, source })?;
            where_.push_str(&format!(
                " and http://{bound} (bearer token in {})",
                paths.token.display()
            ));
            // /mcp answers the listener's own address too (clients name it in `Host`).
            let hosts = crate::api::tcp_mcp_hosts(bound);
            let app = crate::api::router_with_mcp(Arc::clone(&daemon), Some(token.into()), hosts);
            servers.push(tokio::spawn(crate::conn::serve(
                tcp,
                app,
                ConnLimits::default(),
                stop_rx.clone(),
            )));
        }
        let sched = tokio::spawn(Arc::clone(&daemon).run());
        let signal = |kind| {
            tokio::signal::unix::signal(kind).map_err(|source| ServeError::Runtime {
                what: "handle signals",
                source,
            })
        };
        let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
        notify(Notice::Ready {
            worker: daemon.worker().to_owned(),
            listening: where_,
        });
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        notify(Notice::ShuttingDown);
        daemon.shutdown().await;
        let _ = stop_tx.send(true);
        let _ = sched.await;
        for s in servers {
            // Open streams would hold the graceful shutdown forever: give them a moment.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s).await;
        }
        Ok::<(), ServeError>(())
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(state.join("daemon.pid"));
    result
}
