//! The fd-based mount API every cell's root is built with: `open_tree` and `mount_setattr` (how
//! binds are captured read-only before they are visible), `fsopen`/`fsconfig`/`fsmount` (how
//! overlays and tmpfs are made) and `move_mount` (how they are put in place). Probed as the
//! jail uses it: in a child, inside fresh user and mount namespaces.

use std::ffi::CStr;

use super::harness::{StepError, ck, describe, last_errno, run_in_child};
use super::report::{Feature, feature};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_RDONLY: u64 = 1;
const MOUNT_ATTR_NOSUID: u64 = 2;
const MOUNT_ATTR_NODEV: u64 = 4;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const STEPS: [&str; 8] = [
    "unshare(CLONE_NEWUSER | CLONE_NEWNS)",
    "mount(\"/\", MS_REC | MS_PRIVATE)",
    "fsopen(\"tmpfs\")",
    "fsconfig(FSCONFIG_CMD_CREATE)",
    "fsmount",
    "move_mount onto /tmp",
    "open_tree(\"/tmp\", OPEN_TREE_CLONE)",
    "mount_setattr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)",
];

/// A raw syscall's result as a step result (negative = failure).
fn ckl(step: u8, ret: libc::c_long) -> Result<libc::c_int, StepError> {
    if ret < 0 {
        Err(StepError {
            step,
            errno: last_errno(),
        })
    } else {
        Ok(libc::c_int::try_from(ret).unwrap_or(-1))
    }
}

pub(super) fn probe_mount_api() -> Feature {
    let root: &CStr = c"/";
    let tmp: &CStr = c"/tmp";
    let tmpfs: &CStr = c"tmpfs";
    let empty: &CStr = c"";
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let outcome = run_in_child(|| {
        // SAFETY: every call below affects only this forked child's namespaces and mounts
        // (nothing propagates out of a private mount namespace); all pointers are to
        // NUL-terminated strings and a struct that outlive the calls.
        unsafe {
            ck(0, libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
            ck(
                1,
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
            )?;
            let fs = ckl(
                2,
                libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), FSOPEN_CLOEXEC),
            )?;
            ckl(
                3,
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs,
                    FSCONFIG_CMD_CREATE,
                    0usize,
                    0usize,
                    0,
                ),
            )?;
            let mnt = ckl(
                4,
                libc::syscall(
                    libc::SYS_fsmount,
                    fs,
                    FSMOUNT_CLOEXEC,
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                ),
            )?;
            ckl(
                5,
                libc::syscall(
                    libc::SYS_move_mount,
                    mnt,
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    tmp.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ),
            )?;
            // The new tmpfs has no submounts, so a non-recursive clone is allowed.
            let tree = ckl(
                6,
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    tmp.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                ),
            )?;
            ckl(
                7,
                libc::syscall(
                    libc::SYS_mount_setattr,
                    tree,
                    empty.as_ptr(),
                    libc::AT_EMPTY_PATH as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ),
            )?;
        }
        Ok(())
    });
    let (ok, why) = describe(&outcome, &STEPS);
    let detail = if ok {
        "fsopen, fsconfig, fsmount, move_mount, open_tree and mount_setattr work in a user namespace"
            .to_string()
    } else {
        why
    };
    feature(
        "mount_api",
        ok,
        detail,
        format!("fork + {}", STEPS.join(" + ")),
    )
}
