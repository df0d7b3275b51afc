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
use warren_store::sqlite::SqliteStore;

use warren_runtime::engine::{Engine, Options};

use crate::conn::ConnLimits;

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

fn lock_exclusive(path: &Path) -> Result<std::fs::File, String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(path.with_file_name("daemon.pid")).unwrap_or_default();
        return Err(format!(
            "another daemon is running on this state directory (pid {})",
            pid.trim()
        ));
    }
    Ok(f)
}

fn bind_socket(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, String> {
    // We hold the lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(path);
    // SAFETY: umask has no preconditions; restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let l = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(g) = group {
        let name = CString::new(g).map_err(|_| format!("group {g:?}: invalid name"))?;
        // SAFETY: getgrnam with a valid C string; the result is read at once.
        let gr = unsafe { libc::getgrnam(name.as_ptr()) };
        if gr.is_null() {
            return Err(format!("group {g:?} does not exist"));
        }
        // SAFETY: gr is non-null, pointing at libc's static group entry.
        let gid = unsafe { (*gr).gr_gid };
        std::os::unix::fs::chown(path, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
            .map_err(|e| format!("{}: {e}", path.display()))?;
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

/// Run the daemon until SIGTERM or SIGINT. Blocks; builds its own runtime.
pub fn run(opts: Options, listen: Listen) -> Result<(), String> {
    let state = opts.state_dir.clone();
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    let paths = Paths::of(&state);
    let _lock = lock_exclusive(&paths.lock)?;
    std::fs::write(&paths.pid, format!("{}\n", std::process::id()))
        .map_err(|e| format!("{}: {e}", paths.pid.display()))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&paths.db).map_err(|e| e.to_string())?);
    // Tasks and transcripts are the operator's business only (SQLite gives its -wal and -shm
    // files the database file's mode). The state directory itself stays traversable: cells
    // reach their task directories through it.
    let _ = std::fs::set_permissions(&paths.db, std::fs::Permissions::from_mode(0o600));
    let token = match listen.tcp {
        Some(_) => Some(
            ensure_token(&paths.token).map_err(|e| format!("{}: {e}", paths.token.display()))?,
        ),
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
        .map_err(|e| e.to_string())?;
    let socket = paths.socket.clone();
    let result = rt.block_on(async move {
        let daemon = Engine::new(store, opts).map_err(|e| e.to_string())?;
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
                .map_err(|e| format!("listen on {addr}: {e}"))?;
            let bound = tcp.local_addr().map_err(|e| e.to_string())?;
            where_.push_str(&format!(
                " and http://{bound} (bearer token in {})",
                paths.token.display()
            ));
            let app = crate::api::router(Arc::clone(&daemon), Some(token.into()));
            servers.push(tokio::spawn(crate::conn::serve(
                tcp,
                app,
                ConnLimits::default(),
                stop_rx.clone(),
            )));
        }
        let sched = tokio::spawn(Arc::clone(&daemon).run());
        eprintln!(
            "warren daemon: worker {} ready on {where_} (pid {})",
            daemon.worker(),
            std::process::id()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("warren daemon: shutting down; running tasks are requeued for resume");
        daemon.shutdown().await;
        let _ = stop_tx.send(true);
        let _ = sched.await;
        for s in servers {
            // Open streams would hold the graceful shutdown forever: give them a moment.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s).await;
        }
        Ok::<(), String>(())
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(state.join("daemon.pid"));
    result
}
