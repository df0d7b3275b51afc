//! The exec server: the cell's pid 1 after confinement.
//!
//! One thread accepts connections on the listening socket the supervisor bound in the host's
//! network namespace; each connection gets a thread that authenticates it, runs one request,
//! and closes. One reaper thread collects every exited child — commands and the orphans
//! re-parented to pid 1 alike — and hands each command's status to its connection through a
//! pipe, so a connection can `poll()` output, client input and the exit in one loop.
//!
//! Spawning happens under the reaper's lock, and the reaper holds the same lock while it calls
//! `waitpid(-1)`: that way it can never reap a child before its pid is registered (nor a child
//! whose `exec` failed, which `std::process` reaps itself).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use warren_protocol::guest::{
    ClientFrame, Decoder, ExecSpec, ExitInfo, FailureCode, Request, Response, SECRET_LEN,
    ServerFrame, VERSION, secrets_equal,
};

use crate::{spawn, sys};

const CHUNK: usize = 64 * 1024;
/// How long a client has to authenticate.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// After the command exits, how long to wait for output still buffered in its pipes (a
/// background job may keep them open forever; we do not wait for it).
const DRAIN_GRACE: Duration = Duration::from_millis(25);

struct Session {
    cwd: String,
    env: BTreeMap<String, String>,
}

struct Shared {
    secret: [u8; SECRET_LEN],
    /// The strict Landlock ruleset each command stacks before exec (-1: none).
    commands_ruleset: RawFd,
    session: Mutex<Session>,
    /// pid -> write end of the pipe that receives its wait status.
    waiting: Mutex<HashMap<i32, OwnedFd>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serve forever. `sigchld` is the (already blocked) signal set the reaper waits on.
pub fn serve(
    listener: UnixListener,
    secret: [u8; SECRET_LEN],
    cwd: String,
    env: Vec<(String, String)>,
    sigchld: libc::sigset_t,
    commands_ruleset: Option<OwnedFd>,
) -> ! {
    let commands_ruleset = commands_ruleset.map_or(-1, std::os::fd::IntoRawFd::into_raw_fd);
    let shared = Arc::new(Shared {
        secret,
        commands_ruleset,
        session: Mutex::new(Session {
            cwd,
            env: env.into_iter().collect(),
        }),
        waiting: Mutex::new(HashMap::new()),
    });
    let reaper = Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || reap_forever(&reaper, &sigchld));
    if spawned.is_err() {
        // Without a reaper no command can report its exit: fail hard, the host sees the cell die.
        std::process::exit(70);
    }
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => continue,
        };
        let s = Arc::clone(&shared);
        // A thread per connection. If the pids limit is exhausted (a fork bomb), handle the
        // connection inline rather than drop it.
        let conn = Arc::new(Mutex::new(Some(conn)));
        let c2 = Arc::clone(&conn);
        let r = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Some(c) = lock(&c2).take() {
                    handle(c, &s);
                }
            });
        if r.is_err()
            && let Some(c) = lock(&conn).take()
        {
            handle(c, &shared);
        }
    }
}

fn reap_forever(shared: &Shared, set: &libc::sigset_t) {
    loop {
        sys::wait_signal(set);
        let mut waiting = lock(&shared.waiting);
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(w) = waiting.remove(&pid) {
                let mut f = std::fs::File::from(w);
                let _ = f.write_all(&status.to_le_bytes());
            }
            // Otherwise an orphan re-parented to pid 1: reaped, nothing to report.
        }
    }
}

fn send(conn: &mut UnixStream, frame: &ServerFrame) -> io::Result<()> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    conn.write_all(&buf)
}

fn fail(conn: &mut UnixStream, code: FailureCode, message: impl Into<String>) {
    let _ = send(
        conn,
        &ServerFrame::Done(Response::Failed {
            code,
            message: message.into(),
        }),
    );
}

/// Read until one complete client frame is available.
fn read_frame(conn: &mut UnixStream, dec: &mut Decoder) -> Option<ClientFrame> {
    let mut buf = [0u8; 4096];
    loop {
        match dec.next_client() {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(_) => return None,
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

fn handle(mut conn: UnixStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
    let mut dec = Decoder::default();
    match read_frame(&mut conn, &mut dec) {
        Some(ClientFrame::Hello(s)) if secrets_equal(&s, &shared.secret) => {}
        _ => {
            return fail(
                &mut conn,
                FailureCode::Unauthenticated,
                "missing or wrong cell secret",
            );
        }
    }
    if send(&mut conn, &ServerFrame::Welcome { version: VERSION }).is_err() {
        return;
    }
    let Some(ClientFrame::Request(req)) = read_frame(&mut conn, &mut dec) else {
        return fail(
            &mut conn,
            FailureCode::BadRequest,
            "expected a request frame",
        );
    };
    let _ = conn.set_read_timeout(None);
    match req {
        Request::Ping => {
            let _ = send(&mut conn, &ServerFrame::Done(Response::Ok));
        }
        Request::SetEnv { vars } => {
            let mut s = lock(&shared.session);
            for (k, v) in vars {
                match v {
                    Some(v) => s.env.insert(k, v),
                    None => s.env.remove(&k),
                };
            }
            drop(s);
            let _ = send(&mut conn, &ServerFrame::Done(Response::Ok));
        }
        Request::Chdir { path } => {
            if std::path::Path::new(&path).is_dir() && path.starts_with('/') {
                lock(&shared.session).cwd = path;
                let _ = send(&mut conn, &ServerFrame::Done(Response::Ok));
            } else {
                fail(
                    &mut conn,
                    FailureCode::BadCwd,
                    format!("{path}: not a directory"),
                );
            }
        }
        Request::Exec(spec) => exec(conn, dec, spec, shared),
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

struct Stream {
    fd: Option<OwnedFd>,
    total: u64,
    sent: u64,
}

fn exec(mut conn: UnixStream, mut dec: Decoder, spec: ExecSpec, shared: &Shared) {
    let Some(program) = spec.argv.first() else {
        return fail(&mut conn, FailureCode::BadRequest, "empty argv");
    };
    let (cwd, env) = {
        let s = lock(&shared.session);
        let mut env = s.env.clone();
        env.extend(spec.env.iter().cloned());
        (spec.cwd.clone().unwrap_or_else(|| s.cwd.clone()), env)
    };
    if !std::path::Path::new(&cwd).is_dir() {
        return fail(
            &mut conn,
            FailureCode::BadCwd,
            format!("{cwd}: not a directory"),
        );
    }
    // Resolve argv[0] against the session's PATH ourselves, as execvp would, so "not found"
    // and "not executable" are told apart before anything is spawned. The init has no
    // controlling terminal (the supervisor called setsid) and every descriptor it holds is
    // close-on-exec, so commands get stdio only.
    let path = match resolve(program, env.get("PATH").map(String::as_str), &cwd) {
        Ok(p) => p,
        Err(code) => {
            let what = if code == FailureCode::NotFound {
                "command not found"
            } else {
                "permission denied"
            };
            return fail(&mut conn, code, format!("{program}: {what}"));
        }
    };
    let cstr = |s: &str| std::ffi::CString::new(s).ok();
    let req = (|| {
        Some(spawn::SpawnRequest {
            path: std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?,
            argv: spec.argv.iter().map(|a| cstr(a)).collect::<Option<_>>()?,
            env: env
                .iter()
                .map(|(k, v)| cstr(&format!("{k}={v}")))
                .collect::<Option<_>>()?,
            cwd: cstr(&cwd)?,
            ruleset: shared.commands_ruleset,
            stdin: spec.stdin,
        })
    })();
    let Some(req) = req else {
        return fail(
            &mut conn,
            FailureCode::BadRequest,
            "NUL byte in argv, env or cwd",
        );
    };
    let (notify_r, notify_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&mut conn, FailureCode::SpawnFailed, e.to_string()),
    };
    let started = Instant::now();
    let child = {
        let mut waiting = lock(&shared.waiting);
        match spawn::spawn(&req) {
            Ok(c) => {
                waiting.insert(c.pid, notify_w);
                c
            }
            Err(e) => {
                // A child that failed before its exec has exited; the reaper collects it as an
                // orphan.
                drop(waiting);
                let code = match e.kind() {
                    io::ErrorKind::NotFound => FailureCode::NotFound,
                    // EACCES, or ENOEXEC from the exec itself.
                    io::ErrorKind::PermissionDenied => FailureCode::NotExecutable,
                    _ if e.to_string().starts_with("exec:") => FailureCode::NotExecutable,
                    _ => FailureCode::SpawnFailed,
                };
                return fail(&mut conn, code, format!("{program}: {e}"));
            }
        }
    };
    let pgid = child.pid;

    let kill_group = |sig: i32| {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pgid, sig) };
    };

    let mut out = Stream {
        fd: Some(child.stdout),
        total: 0,
        sent: 0,
    };
    let mut err = Stream {
        fd: Some(child.stderr),
        total: 0,
        sent: 0,
    };
    let mut stdin: Option<OwnedFd> = child.stdin;
    if let Some(fd) = &stdin {
        set_nonblocking(fd.as_raw_fd());
    }
    let mut stdin_pending: Vec<u8> = Vec::new();
    let mut stdin_eof = false;
    let mut client_gone = false;
    let mut status: Option<i32> = None;
    let mut timed_out = false;
    let deadline = spec
        .timeout_ms
        .map(|ms| started + Duration::from_millis(ms));
    let mut buf = vec![0u8; CHUNK];

    loop {
        // Frames may already be buffered (read together with the request).
        while let Ok(Some(f)) = dec.next_client() {
            match f {
                ClientFrame::Stdin(b) => stdin_pending.extend_from_slice(&b),
                ClientFrame::StdinEof => stdin_eof = true,
                ClientFrame::Signal(sig) => kill_group(sig),
                _ => {}
            }
        }
        if stdin_eof && stdin_pending.is_empty() {
            stdin = None;
        }
        if status.is_some() && out.fd.is_none() && err.fd.is_none() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut push = |fd: RawFd, events: i16| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            fds.len() - 1
        };
        let i_out = out.fd.as_ref().map(|f| push(f.as_raw_fd(), libc::POLLIN));
        let i_err = err.fd.as_ref().map(|f| push(f.as_raw_fd(), libc::POLLIN));
        let i_exit = status
            .is_none()
            .then(|| push(notify_r.as_raw_fd(), libc::POLLIN));
        let i_conn = (!client_gone).then(|| push(conn.as_raw_fd(), libc::POLLIN));
        let i_in = stdin
            .as_ref()
            .filter(|_| !stdin_pending.is_empty())
            .map(|f| push(f.as_raw_fd(), libc::POLLOUT));
        let timeout_ms: i32 = if status.is_some() {
            DRAIN_GRACE.as_millis() as i32
        } else if let (Some(d), false) = (deadline, timed_out) {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        } else {
            -1
        };
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            continue; // EINTR
        }
        if n == 0 {
            if status.is_some() {
                break; // drained what there was; background jobs may hold the pipes open
            }
            if deadline.is_some() && !timed_out {
                timed_out = true;
                kill_group(libc::SIGKILL);
            }
            continue;
        }
        let ready = |i: Option<usize>| i.is_some_and(|i| fds[i].revents != 0);
        for (idx, stream, is_out) in [(i_out, &mut out, true), (i_err, &mut err, false)] {
            if !ready(idx) {
                continue;
            }
            let Some(fd) = &stream.fd else { continue };
            // SAFETY: reading into a buffer we own, of the stated length.
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    stream.fd = None;
                }
                continue;
            }
            let data = &buf[..r as usize];
            stream.total += data.len() as u64;
            let room = spec.max_output_bytes.saturating_sub(stream.sent) as usize;
            let fwd = &data[..data.len().min(room)];
            if !fwd.is_empty() && !client_gone {
                stream.sent += fwd.len() as u64;
                let frame = if is_out {
                    ServerFrame::Stdout(fwd.to_vec())
                } else {
                    ServerFrame::Stderr(fwd.to_vec())
                };
                if send(&mut conn, &frame).is_err() {
                    client_gone = true;
                    kill_group(libc::SIGKILL);
                }
            }
        }
        if ready(i_exit) {
            let mut st = [0u8; 4];
            // SAFETY: reading 4 bytes into a local array from a pipe we own.
            let r = unsafe { libc::read(notify_r.as_raw_fd(), st.as_mut_ptr().cast(), st.len()) };
            if r == 4 {
                status = Some(i32::from_le_bytes(st));
            }
        }
        if ready(i_conn) {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The host hung up: nobody wants this command any more.
                    client_gone = true;
                    kill_group(libc::SIGKILL);
                }
                Ok(n) => dec.push(&buf[..n]),
            }
        }
        if let Some(fd) = &stdin
            && (ready(i_in) || !stdin_pending.is_empty())
        {
            // SAFETY: writing from a buffer we own to a non-blocking pipe.
            let r = unsafe {
                libc::write(
                    fd.as_raw_fd(),
                    stdin_pending.as_ptr().cast(),
                    stdin_pending.len(),
                )
            };
            if r > 0 {
                stdin_pending.drain(..r as usize);
            } else if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                stdin_pending.clear();
                stdin = None;
            }
        }
    }
    if client_gone {
        return;
    }
    let st = status.unwrap_or(0);
    let exited = libc::WIFEXITED(st);
    let info = ExitInfo {
        code: exited.then(|| libc::WEXITSTATUS(st)),
        signal: libc::WIFSIGNALED(st).then(|| libc::WTERMSIG(st)),
        timed_out,
        stdout_bytes: out.total,
        stderr_bytes: err.total,
        duration_us: started.elapsed().as_micros() as u64,
    };
    let _ = send(&mut conn, &ServerFrame::Done(Response::Exited(info)));
}

/// `execvp`'s lookup: a name with a slash is used as is (relative to `cwd`); otherwise the
/// first executable regular file named so in `PATH`.
fn resolve(
    program: &str,
    path: Option<&str>,
    cwd: &str,
) -> Result<std::path::PathBuf, FailureCode> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::Path::new(cwd).join(program);
        return match executable(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(FailureCode::NotExecutable),
            Err(_) => Err(FailureCode::NotFound),
        };
    }
    let mut found_unexecutable = false;
    for dir in path
        .unwrap_or("/usr/bin:/bin")
        .split(':')
        .filter(|d| !d.is_empty())
    {
        let p = std::path::Path::new(dir).join(program);
        match executable(&p) {
            Ok(true) => return Ok(p),
            Ok(false) => found_unexecutable = true,
            Err(_) => {}
        }
    }
    Err(if found_unexecutable {
        FailureCode::NotExecutable
    } else {
        FailureCode::NotFound
    })
}
