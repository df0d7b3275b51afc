//! Thin, checked wrappers over the raw system calls the jail needs.
//!
//! The jail is deliberately written against `libc` alone: every call here is one syscall, its
//! error is the errno, and nothing allocates behind the caller's back (important after
//! `clone()`, where the child must not touch locks the parent's other threads might hold).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The `io::Error` for the current errno, tagged with what was being done.
pub fn errno(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Turn a `-1`-on-error return into a `Result`.
pub fn check(ret: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if ret < 0 { Err(errno(what)) } else { Ok(ret) }
}

/// [`check`] for a call of the fd-based mount API (`open_tree`, `move_mount`,
/// `mount_setattr`, `fsopen`, `fsconfig`, `fsmount`): `ENOSYS` means the kernel lacks the API
/// every cell is built with, and the error says so by name.
pub fn check_mount_api(ret: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if ret >= 0 {
        return Ok(ret);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        Err(io::Error::new(
            e.kind(),
            format!(
                "{what}: {e}: the kernel lacks the fd-based mount API (open_tree, move_mount, \
                 fsopen, fsmount: Linux 5.2; mount_setattr: Linux 5.12) that cells are built with"
            ),
        ))
    } else {
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// Build a C string, mapping interior NULs to an error.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// `MOUNT_ATTR_*` flags for [`mount_setattr`].
pub mod attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Ignore set-user/group-id bits and file capabilities.
    pub const NOSUID: u64 = 0x2;
    /// Device nodes cannot be opened.
    pub const NODEV: u64 = 0x4;
    /// Files cannot be executed.
    pub const NOEXEC: u64 = 0x8;
    /// Ids are mapped through the user namespace given with the call.
    pub const IDMAP: u64 = 0x0010_0000;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(OPEN_TREE_CLONE)`: a detached copy of the mount at `path` (recursively), held
/// by a file descriptor. Capturing every source this way *before* the new root is assembled
/// means no later mount can shadow a source (a workspace under `/tmp`, say).
pub fn open_tree_clone(path: &str, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check_mount_api(fd, &format!("open_tree {path}"))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr` on a detached or attached mount: set `set` flags (recursively when asked).
pub fn mount_setattr(fd: RawFd, path: &str, set: u64, recursive: bool) -> io::Result<()> {
    mount_setattr_with(fd, path, set, recursive, None)
}

/// [`mount_setattr`], optionally attaching an idmapping (`MOUNT_ATTR_IDMAP` in `set`, with the
/// user namespace that carries the mapping).
pub fn mount_setattr_with(
    fd: RawFd,
    path: &str,
    set: u64,
    recursive: bool,
    userns: Option<RawFd>,
) -> io::Result<()> {
    let c = cstr(path)?;
    let mut flags = if recursive { AT_RECURSIVE } else { 0 };
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    let a = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd as u64),
    };
    // SAFETY: `c` and `a` live across the call; the size passed matches the struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c.as_ptr(),
            flags,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_mount_api(r, &format!("mount_setattr {path:?}")).map(drop)
}

/// `move_mount` a detached mount (by fd) onto `target`.
pub fn move_mount(fd: RawFd, target: &str) -> io::Result<()> {
    let empty = c"";
    let t = cstr(target)?;
    // SAFETY: both strings are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_mount_api(r, &format!("move_mount onto {target}")).map(drop)
}

/// Create a detached filesystem mount with the new mount API (`fsopen`/`fsconfig`/`fsmount`).
/// String options are resolved by the kernel at creation time — for overlayfs this is when the
/// host paths of `lowerdir`/`upperdir` are looked up, before anything is shadowed.
pub fn fs_mount(fstype: &str, options: &[(&str, &str)], attrs: u64) -> io::Result<OwnedFd> {
    let t = cstr(fstype)?;
    // SAFETY: `t` is a valid C string.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) };
    let fs = check_mount_api(fs, &format!("fsopen {fstype}"))?;
    // SAFETY: fresh descriptor from the kernel.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    use std::os::fd::AsRawFd;
    for (k, v) in options {
        let (k, v) = (cstr(k)?, cstr(v)?);
        // An empty value means a flag option (`userxattr`), set with FSCONFIG_SET_FLAG.
        let (cmd, value) = if v.is_empty() {
            (FSCONFIG_SET_FLAG, std::ptr::null())
        } else {
            (FSCONFIG_SET_STRING, v.as_ptr())
        };
        // SAFETY: strings valid for the call; value is null only for flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                k.as_ptr(),
                value,
                0,
            )
        };
        check_mount_api(r, &format!("fsconfig {fstype} {}", k.to_string_lossy()))?;
    }
    // SAFETY: no pointers passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            0usize,
            0usize,
            0,
        )
    };
    check_mount_api(r, &format!("create {fstype} superblock"))?;
    // SAFETY: no pointers passed.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    let m = check_mount_api(m, &format!("fsmount {fstype}"))?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// Classic `mount(2)`.
pub fn mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a valid C string living across the call.
    let r = unsafe {
        libc::mount(
            p(&src),
            target_c.as_ptr(),
            p(&fstype),
            flags,
            p(&data) as *const libc::c_void,
        )
    };
    check(r as libc::c_long, &format!("mount {target}")).map(drop)
}

/// `pivot_root(".", ".")` followed by detaching the old root: the classic trick that needs no
/// `put_old` directory inside the new root.
pub fn pivot_into(new_root: &str) -> io::Result<()> {
    let root = cstr(new_root)?;
    let dot = c".";
    // SAFETY: valid C strings; these calls only change this process's root and cwd.
    unsafe {
        check(libc::chdir(root.as_ptr()) as libc::c_long, "chdir new root")?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()),
            "pivot_root",
        )?;
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH) as libc::c_long,
            "detach old root",
        )?;
        check(libc::chdir(c"/".as_ptr()) as libc::c_long, "chdir /")?;
    }
    Ok(())
}

/// Write a whole file (for `/proc/<pid>/uid_map` and cgroup control files).
pub fn write_file(path: &str, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))
}

/// Drop every capability: bounding set, ambient set, then effective/permitted/inheritable.
pub fn drop_all_caps() -> io::Result<()> {
    // CAP_LAST_CAP is 40 on current kernels; read it so newer kernels' caps are dropped too.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(errno("drop bounding capability"));
        }
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(r as libc::c_long, "clear ambient caps")?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let h = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs as capset(2) v3 requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &h as *const Header, d.as_ptr()) };
    check(r, "capset").map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: execve can never grant privileges again (setuid bits and
/// file capabilities are ignored), and unprivileged seccomp/Landlock become possible.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long,
        "no_new_privs",
    )
    .map(drop)
}

/// Ask the kernel to send `sig` to this process when its parent thread exits.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }
            as libc::c_long,
        "pdeathsig",
    )
    .map(drop)
}

/// Set both soft and hard limits of `resource` to `value`, never raising the hard limit.
pub fn lower_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid out-pointer.
    let r = unsafe { libc::getrlimit(resource, &mut cur) };
    check(r as libc::c_long, "getrlimit")?;
    let v = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `new` is a valid in-pointer.
    let r = unsafe { libc::setrlimit(resource, &new) };
    check(r as libc::c_long, "setrlimit").map(drop)
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r as libc::c_long, "pipe2")?;
    // SAFETY: fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Block `signals` in this thread (and threads it creates later).
pub fn block_signals(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a zeroed, locally owned set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait for one of the signals in `set` (which must be blocked).
pub fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        // SAFETY: `set` is a valid signal set; a null siginfo pointer is allowed.
        let s = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if s >= 0 {
            return s;
        }
    }
}

/// Close every descriptor from `first` up (`close_range(2)`; async-signal-safe, so it may run
/// between fork and exec).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors; no memory is touched.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Overwrite this process's command line and environment strings with zeros, clear the
/// environment, and name the process `warren-jail` (see [`crate::main_in_process`]).
///
/// The kernel shows `/proc/PID/cmdline` and `/proc/PID/environ` from the memory between the
/// addresses it recorded at `execve` (`/proc/self/stat` fields 48–51), so zeroing that
/// memory is what removes them; `clearenv` alone only forgets the pointers.
pub fn scrub_command_line_and_environment() {
    // SAFETY: clearenv in a single-threaded process (nothing else reads the environment).
    unsafe { libc::clearenv() };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) start at field 3.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<usize> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Field N (1-based) is f[N - 3].
        if let (Some(&a0), Some(&a1), Some(&e0), Some(&e1)) =
            (f.get(45), f.get(46), f.get(47), f.get(48))
        {
            for (start, end) in [(a0, a1), (e0, e1)] {
                if start != 0 && end > start && end - start < (1 << 24) {
                    // SAFETY: the kernel's record of where execve placed argv and envp
                    // strings on this process's (writable, private) stack; nothing borrows
                    // them (std only reads argv when asked, and we never ask again).
                    unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
                }
            }
        }
    }
    let name = b"warren-jail\0";
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Mark every descriptor from `first` up close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`).
/// Used between fork and exec, where `std::process` still needs its own error pipe open.
pub fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: only descriptor flags change; no memory is touched.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
}

/// Bring the loopback interface of this network namespace up (needs `CAP_NET_ADMIN` in the
/// namespace's user namespace).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the interface ioctls below, closed at the end.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a zeroed ifreq with the interface name set, passed to the flag ioctls.
    let r = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        r
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if r != 0 { Err(err) } else { Ok(()) }
}
