//! The fork server: one long-lived, single-threaded process that forks a cell supervisor per
//! request, so a host starting many cells pays for one `execve` of Warren's binary, not one
//! per cell.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket on stdin: the host sends one message per cell —
//! the [`JailConfig`] as JSON, with the write end of the cell's status pipe attached
//! (`SCM_RIGHTS`). The server forks; the child becomes that cell's supervisor exactly as if it
//! had been executed directly. The server answers with the child's pid and a pidfd for it
//! (attached), so the host can signal it and wait for it although it is not the host's child.
//! The server ignores SIGCHLD, so the kernel reaps exited supervisors; a pidfd still reports
//! the exit. When the host closes the socket, or dies (parent-death signal), the server exits.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use warren_protocol::jail::{JailConfig, StartReport};

use crate::supervisor::{StatusPipe, supervise};
use crate::sys;

const MAX_MESSAGE: usize = 4 << 20;

/// Receive one message and at most one descriptor.
fn recv(sock: RawFd, buf: &mut [u8]) -> Option<(usize, Option<OwnedFd>)> {
    let mut space = [0u64; 8]; // cmsg buffer, aligned
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr pointing at live local buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space);
    // SAFETY: recvmsg into the buffers described above.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return None;
    }
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into `space`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let p = libc::CMSG_DATA(c) as *const RawFd;
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let raw = std::ptr::read_unaligned(p.add(i));
                    // Keep the first, close any extra a confused peer attached.
                    let owned = OwnedFd::from_raw_fd(raw);
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, fd))
}

/// Send one message with one descriptor attached.
pub fn send(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut space = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr pointing at live local buffers; one SCM_RIGHTS descriptor.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(sys::errno("sendmsg"));
        }
    }
    Ok(())
}

/// Receive one message with (optionally) one descriptor; for the host side.
pub fn receive(sock: RawFd, buf: &mut [u8]) -> Option<(usize, Option<OwnedFd>)> {
    recv(sock, buf)
}

/// The pid the server answers when it could not start a supervisor.
pub const NO_PID: i32 = 0;

/// Run the server on the socket at fd 0 until the host goes away. Returns the exit code.
pub fn run() -> i32 {
    // Die with the host; keep nothing the host leaked to us; no terminal.
    if sys::set_parent_death_signal(libc::SIGKILL).is_err() {
        return 1;
    }
    sys::close_from(3);
    // SAFETY: setsid, signal dispositions and getpid have no memory-safety preconditions.
    let me = unsafe {
        libc::setsid();
        libc::signal(libc::SIGCHLD, libc::SIG_IGN); // the kernel reaps exited supervisors
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::getpid()
    };
    let sock = 0;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Some((n, status_fd)) = recv(sock, &mut buf) else {
            return 0;
        };
        let Some(status_fd) = status_fd else { continue };
        let status = StatusPipe::from_owned(status_fd);
        let config: JailConfig = match serde_json::from_slice(&buf[..n]) {
            Ok(c) => c,
            Err(e) => {
                status.report(&StartReport::Refused {
                    step: "parse config".into(),
                    reason: e.to_string(),
                });
                let _ = send(sock, &0i32.to_le_bytes(), -1);
                continue;
            }
        };
        // SAFETY: this process is single-threaded, so the child may run arbitrary code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: restoring default dispositions and closing the server's socket.
            unsafe {
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                libc::close(sock);
            }
            let code = supervise(config, status, me);
            // SAFETY: leave without running the server's destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        drop(status);
        if pid < 0 {
            let _ = send(sock, &0i32.to_le_bytes(), -1);
            continue;
        }
        // A pidfd before anything could reap the child: the kernel only auto-reaps once it has
        // exited, and the pidfd stays valid (and readable) after that.
        // SAFETY: pidfd_open on our own child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
        let _ = send(sock, &pid.to_le_bytes(), pidfd);
        if pidfd >= 0 {
            // SAFETY: closing the descriptor we just opened (the host has its copy).
            unsafe { libc::close(pidfd) };
        }
    }
}
