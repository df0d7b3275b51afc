//! Idmapped mounts: present a tree owned by one uid as owned by another, without chown.
//!
//! The supervisor (root, outside the cell) builds the idmapped tree before it creates the
//! cell: a throw-away user namespace carries the mapping "disk owner → the cell's host
//! identity"; `mount_setattr(MOUNT_ATTR_IDMAP)` attaches it to a detached clone of the source.
//! The init inherits the descriptor through `clone()` and uses it as the source of its mount.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use warren_protocol::jail::IdMap;

use crate::sys::{self, attr};

/// A user namespace whose uid and gid maps send `disk` ids to `host` ids, as an fd.
fn mapping_namespace(
    disk_uid: u32,
    disk_gid: u32,
    host_uid: u32,
    host_gid: u32,
) -> io::Result<OwnedFd> {
    let (r, w) = sys::pipe()?;
    // SAFETY: fork-style clone in the single-threaded supervisor; the child only blocks on a
    // read and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(sys::errno("clone(CLONE_NEWUSER) for the idmap"));
    }
    if pid == 0 {
        drop(w);
        let mut b = [0u8; 1];
        // SAFETY: blocking read into a local byte, then exit without unwinding.
        unsafe {
            libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(r);
    let pid = pid as i32;
    let result = (|| {
        sys::write_file(
            &format!("/proc/{pid}/uid_map"),
            &format!("{disk_uid} {host_uid} 1\n"),
        )?;
        sys::write_file(
            &format!("/proc/{pid}/gid_map"),
            &format!("{disk_gid} {host_gid} 1\n"),
        )?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    drop(w); // lets the helper exit
    let mut st = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    result
}

/// A detached, idmapped, `nosuid`/`nodev` clone of `source` (read-only if asked).
pub fn idmapped_tree(
    source: &str,
    map: &IdMap,
    host_uid: u32,
    host_gid: u32,
    readonly: bool,
) -> io::Result<OwnedFd> {
    let ns = mapping_namespace(map.disk_uid, map.disk_gid, host_uid, host_gid)?;
    let tree = sys::open_tree_clone(source, false)?;
    let mut set = attr::IDMAP | attr::NOSUID | attr::NODEV;
    if readonly {
        set |= attr::RDONLY;
    }
    sys::mount_setattr_with(tree.as_raw_fd(), "", set, false, Some(ns.as_raw_fd()))
        .map_err(|e| io::Error::new(e.kind(), format!("idmap {source}: {e}")))?;
    Ok(tree)
}
