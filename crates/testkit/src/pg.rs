//! A real PostgreSQL server for tests: one private server per test process, a fresh database
//! per test.
//!
//! `WARREN_TEST_PG` names an existing server instead (a connection string for a role that may
//! `CREATE DATABASE`). Otherwise the first caller runs Debian's (or any PATH's) `initdb` and
//! `postgres` on a data directory and unix socket in the temp directory — as the `postgres`
//! user when the tests run as root, since PostgreSQL refuses to run as root — with `fsync`
//! off (a test server, not a durability claim). The server dies with the test process
//! (parent-death signal); a later run removes directories whose process is gone.
//!
//! Without PostgreSQL the caller [`crate::skip`]s: CI installs it, so there it fails.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server every test of this process uses.
struct Server {
    /// A `postgresql://` URL for the server's superuser, without a database name.
    base: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Start the private server (when this process starts one) with PostgreSQL's durable
/// defaults — `fsync`, `synchronous_commit` and `full_page_writes` on — instead of the test
/// settings: for benchmarks, whose figures must be a real server's. Call before the first
/// [`fresh_database`].
pub fn use_durable_server() {
    DURABLE.store(true, Ordering::SeqCst);
}

/// A `postgresql://` URL of a new, empty database on the test server, or `None` after
/// [`crate::skip`] (which fails in CI) when no PostgreSQL can be found or started here.
pub fn fresh_database(prefix: &str) -> Option<String> {
    let server = SERVER.get_or_init(start);
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            crate::skip(&format!("PostgreSQL: {e}"));
            return None;
        }
    };
    let name = format!(
        "{}_{}_{}",
        prefix
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase(),
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let admin = format!("{}/postgres", server.base);
    let sql = format!("CREATE DATABASE {name}");
    let created = run_sql(&admin, &sql);
    if let Err(e) = created {
        panic!("test PostgreSQL server: {e}");
    }
    Some(format!("{}/{name}", server.base))
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("WARREN_TEST_PG") {
        return Ok(Server {
            base: url.trim_end_matches('/').to_owned(),
        });
    }
    let bin = bindir().ok_or("no initdb/postgres found (Debian: apt install postgresql)")?;
    reap_stale();
    let dir = std::env::temp_dir().join(format!("warren-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let ids = if unsafe { libc::geteuid() } == 0 {
        let ids = user_ids("postgres")
            .or_else(|| user_ids("nobody"))
            .ok_or("running as root and neither a postgres nor a nobody user exists")?;
        std::os::unix::fs::chown(&dir, Some(ids.0), Some(ids.1))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        // The socket directory must be reachable by that user from the temp directory.
        Some(ids)
    } else {
        None
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let data = dir.join("data");
    let out = as_user(Command::new(bin.join("initdb")), ids)
        .args([
            "-A",
            "trust",
            "-U",
            "warren",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut cmd = as_user(Command::new(bin.join("postgres")), ids);
    cmd.arg("-D").arg(&data).arg("-k").arg(&dir).args([
        "-c",
        "listen_addresses=",
        "-c",
        "max_connections=300",
    ]);
    if !DURABLE.load(Ordering::SeqCst) {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
        std::fs::File::create(dir.join("server.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
    );
    // SAFETY: prctl is async-signal-safe. Set after the user change (which clears it): the
    // server gets SIGQUIT (immediate shutdown) when the thread that spawned it exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
    // The parent-death signal follows the spawning thread: spawn from a thread that lives as
    // long as the process, and reaps the server.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || match cmd.spawn() {
        Ok(mut child) => {
            let _ = tx.send(Ok(child.id()));
            let _ = child.wait();
        }
        Err(e) => {
            let _ = tx.send(Err(format!("postgres: {e}")));
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    // A unix socket directory is the URL's host, percent-encoded.
    let host = dir
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('/', "%2F");
    let base = format!("postgresql://warren@{host}");
    // Ready when it answers a query (the socket appears while it still starts up).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if run_sql(&format!("{base}/postgres"), "SELECT 1").is_ok() {
            return Ok(Server { base });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "the test server did not start: {}",
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    ))
}

/// Run `sql` on the database at `url`, on a thread and runtime of its own (callers may be
/// inside a tokio runtime or not).
pub fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let message = |e: tokio_postgres::Error| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        };
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connecting to {url}: {}", message(e)))?;
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {}", message(e)))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the database thread panicked".into()))
}

/// Run `cmd` as `ids` (uid, gid) when given, from the temp directory (the test's own working
/// directory may be closed to that user).
fn as_user(mut cmd: Command, ids: Option<(u32, u32)>) -> Command {
    cmd.current_dir(std::env::temp_dir());
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
        // SAFETY: setgroups is async-signal-safe; drops root's supplementary groups.
        unsafe {
            cmd.pre_exec(|| {
                libc::setgroups(0, std::ptr::null());
                Ok(())
            });
        }
    }
    cmd
}

/// The directory holding `initdb` and `postgres`: Debian's newest version, or the PATH's.
fn bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("postgres").is_file())
    })
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Remove the data directories of earlier test processes that are gone.
fn reap_stale() {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("warren-pg-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 && !alive_postmaster(&e.path()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether a server still runs on that data directory (its pid file names a live process).
fn alive_postmaster(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("data/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}
