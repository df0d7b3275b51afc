//! Host side of the fork server (see `warren_jail::forkserver`): one long-lived server per
//! jail program, started on first use, shared by every cell this process starts.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::CellError;
use crate::process::JailProgram;

/// A connection to a running fork server.
pub struct ForkServer {
    sock: OwnedFd,
}

type Registry = Mutex<HashMap<JailProgramKey, Arc<Mutex<ForkServer>>>>;
type JailProgramKey = (std::path::PathBuf, Vec<String>);

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn spawn_err(jail: &JailProgram) -> impl Fn(std::io::Error) -> CellError + '_ {
    move |source| CellError::Spawn {
        program: jail.program.clone(),
        source,
    }
}

impl ForkServer {
    fn start(jail: &JailProgram) -> Result<Self, CellError> {
        let mut fds = [0; 2];
        // SAFETY: socketpair into a valid two-int array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(spawn_err(jail)(std::io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptors we own.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut cmd = Command::new(&jail.program);
        cmd.args(&jail.args)
            .arg("--fork-server")
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("WARREN_JAIL_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        // The server's parent-death signal fires when the *thread* that spawned it exits, so
        // spawn it from a thread that lives exactly as long as the server (it waits for it).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("warren-fork-server".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(spawn_err(jail))?;
        rx.recv()
            .map_err(|_| spawn_err(jail)(std::io::Error::other("fork server thread died")))?
            .map_err(spawn_err(jail))?;
        Ok(ForkServer { sock: ours })
    }

    /// Ask the server for a supervisor of the cell described by `config_json`. Returns its pid
    /// and a pidfd.
    fn launch(&self, config_json: &[u8], status_w: &OwnedFd) -> std::io::Result<(i32, OwnedFd)> {
        warren_jail::forkserver::send(self.sock.as_raw_fd(), config_json, status_w.as_raw_fd())?;
        let mut buf = [0u8; 16];
        let (n, fd) = warren_jail::forkserver::receive(self.sock.as_raw_fd(), &mut buf)
            .ok_or_else(|| std::io::Error::other("the fork server closed its socket"))?;
        let pid = if n == 4 {
            i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])
        } else {
            0
        };
        match (pid, fd) {
            (pid, Some(fd)) if pid > 0 => Ok((pid, fd)),
            _ => Err(std::io::Error::other(
                "the fork server could not start a supervisor",
            )),
        }
    }
}

/// Start a supervisor through the (shared, lazily started) fork server for `jail`.
pub fn launch(
    jail: &JailProgram,
    config_json: &[u8],
    status_w: &OwnedFd,
) -> Result<(i32, OwnedFd), CellError> {
    let key = (jail.program.clone(), jail.args.clone());
    for attempt in 0..2 {
        let server = {
            let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
            match reg.get(&key) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = Arc::new(Mutex::new(ForkServer::start(jail)?));
                    reg.insert(key.clone(), Arc::clone(&s));
                    s
                }
            }
        };
        let result = server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .launch(config_json, status_w);
        match result {
            Ok(r) => return Ok(r),
            Err(e) if attempt == 0 => {
                // The server died (killed, or its thread exited): forget it and start another.
                let _ = e;
                registry()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
            Err(e) => return Err(spawn_err(jail)(e)),
        }
    }
    Err(spawn_err(jail)(std::io::Error::other(
        "fork server unavailable",
    )))
}
