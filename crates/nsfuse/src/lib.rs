//! A namespace file service served to the process tier over FUSE.
//!
//! The wasi tier reaches its capability files (`/cap/ws`, `/cap/nostr`) through the host's own
//! file-system calls: a write to `/cap/ws/ctl` is answered within the call. A process in a cell
//! makes real system calls on a real mount, so the host serves the *same* service there over
//! FUSE: [`mount`] puts a [`FileService`] on a host directory, and the cell gets that
//! directory as a bind mount. Every open, read and write a process makes becomes one call of
//! the service, with the answer on the same descriptor — live, not a spool directory polled
//! for files.
//!
//! Design choices:
//!
//! - **No libfuse and no `fusermount`.** The daemon is root (cells need it), so it opens
//!   `/dev/fuse` and calls `mount(2)` itself, then hands the descriptor to `fuser`'s session
//!   loop ([`fuser::Session::from_fd`]). Nothing setuid is involved.
//! - **`allow_other`, no `default_permissions`.** The cell's processes run as another user; the
//!   service decides what each operation may do, as it does for a WebAssembly module. The
//!   mount is `nosuid,nodev,noexec`.
//! - **Direct I/O and no caching** (`FOPEN_DIRECT_IO`, zero TTLs): a capability file's content
//!   is computed per handle, so the kernel must neither cache nor trust a size.
//! - **Everything the cell sends is hostile.** Names are parsed into [`NsPath`] (no `..`, no
//!   NUL, bounded); inode and open-handle tables are capped (`ENOSPC`, `EMFILE` past them);
//!   reads are capped at 1 MiB per call. A service error becomes an errno, never a panic.
//! - **Several loop threads** (4): a read that waits (a WebSocket's next message) does not
//!   stop the other operations.
//!
//! When the daemon dies, its mounts stay behind, disconnected; [`clear`] (called by [`mount`]
//! first) detaches a stale one.

#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, WriteFlags,
};
use warren_ns::{FileService, Handle, Kind, NsError, NsPath, OpenMode, Stat};

/// The most inodes one mount hands out (paths looked up); past it, `ENOSPC`.
pub const MAX_INODES: usize = 1 << 16;
/// The most files open at once on one mount; past it, `EMFILE`.
pub const MAX_HANDLES: usize = 1024;
/// The most bytes one read returns.
const MAX_READ: u32 = 1 << 20;
/// Session loop threads.
const THREADS: usize = 4;

/// Whether this host can serve FUSE mounts: root, and `/dev/fuse` opens.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("serving files over FUSE needs root (mount(2))".into());
    }
    open_dev().map(drop)
}

fn open_dev() -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("/dev/fuse: {e}"))
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Detach whatever is mounted at `target` (a mount a killed daemon left, disconnected).
pub fn clear(target: &Path) {
    let Ok(c) = cstr(target) else { return };
    for _ in 0..8 {
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return;
        }
    }
}

/// A service mounted on a host directory; detached when dropped.
pub struct Mounted {
    target: PathBuf,
    _session: fuser::BackgroundSession,
}

impl Mounted {
    /// The host directory it is mounted on.
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Detached: a cell still holding its bind keeps it until the cell's namespace goes;
        // then the connection ends and the loop threads return.
        clear(&self.target);
    }
}

/// Serve `svc` on the host directory `target` (created if missing), its files owned by
/// `owner` (the cell's identity, so they look like the cell's own).
pub fn mount(
    target: &Path,
    svc: Arc<dyn FileService>,
    owner: (u32, u32),
) -> std::io::Result<Mounted> {
    clear(target);
    std::fs::create_dir_all(target)?;
    let dev = open_dev().map_err(std::io::Error::other)?;
    let opts = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,max_read={MAX_READ}",
        dev.as_raw_fd()
    ))
    .map_err(std::io::Error::other)?;
    let t = cstr(target)?;
    // SAFETY: valid NUL-terminated strings; `opts` names our open /dev/fuse descriptor.
    let rc = unsafe {
        libc::mount(
            c"warren".as_ptr(),
            t.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut config = fuser::Config::default();
    config.acl = SessionACL::All;
    config.n_threads = Some(THREADS);
    let started = fuser::Session::from_fd(
        NsFs::new(svc, owner),
        OwnedFd::from(dev),
        SessionACL::All,
        config,
    )
    .and_then(fuser::Session::spawn);
    match started {
        Ok(session) => Ok(Mounted {
            target: target.to_owned(),
            _session: session,
        }),
        Err(e) => {
            clear(target);
            Err(e)
        }
    }
}

fn errno(e: &NsError) -> Errno {
    match e {
        NsError::NotFound(_) => Errno::ENOENT,
        NsError::NotADirectory(_) => Errno::ENOTDIR,
        NsError::IsADirectory(_) => Errno::EISDIR,
        NsError::Exists(_) => Errno::EEXIST,
        NsError::NotEmpty(_) => Errno::ENOTEMPTY,
        NsError::Denied(_) => Errno::EACCES,
        NsError::NoSpace { .. } => Errno::ENOSPC,
        NsError::InvalidPath(m) if m.contains("longer") => Errno::ENAMETOOLONG,
        NsError::InvalidPath(_) => Errno::EINVAL,
        NsError::Failed(_) => Errno::EIO,
    }
}

#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, NsPath>,
    ids: HashMap<String, u64>,
    next: u64,
}

#[derive(Default)]
struct Handles {
    open: HashMap<u64, Arc<Mutex<Box<dyn Handle>>>>,
    next: u64,
}

/// The FUSE side of one service.
struct NsFs {
    svc: Arc<dyn FileService>,
    owner: (u32, u32),
    inodes: Mutex<Inodes>,
    handles: Mutex<Handles>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NsFs {
    fn new(svc: Arc<dyn FileService>, owner: (u32, u32)) -> NsFs {
        let mut inodes = Inodes {
            next: 2,
            ..Inodes::default()
        };
        inodes.paths.insert(1, NsPath::root());
        inodes.ids.insert(NsPath::root().to_string(), 1);
        NsFs {
            svc,
            owner,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(Handles {
                next: 1,
                ..Handles::default()
            }),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<NsPath, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn ino(&self, path: &NsPath) -> Result<u64, Errno> {
        let mut t = lock(&self.inodes);
        let key = path.to_string();
        if let Some(i) = t.ids.get(&key) {
            return Ok(*i);
        }
        if t.paths.len() >= MAX_INODES {
            return Err(Errno::ENOSPC);
        }
        let i = t.next;
        t.next += 1;
        t.paths.insert(i, path.clone());
        t.ids.insert(key, i);
        Ok(i)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<NsPath, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        self.path(parent)?.child(name).map_err(|e| errno(&e))
    }

    fn attr(&self, ino: u64, s: &Stat) -> FileAttr {
        let dir = s.kind == Kind::Dir;
        let perm = match (dir, s.writable) {
            (true, true) => 0o755,
            (true, false) => 0o555,
            (false, true) => 0o644,
            (false, false) => 0o444,
        };
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(ino),
            size: s.size,
            blocks: s.size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm,
            nlink: if dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn stat_attr(&self, path: &NsPath) -> Result<FileAttr, Errno> {
        let s = self.svc.stat(path).map_err(|e| errno(&e))?;
        Ok(self.attr(self.ino(path)?, &s))
    }

    fn open_handle(&self, path: &NsPath, mode: OpenMode) -> Result<FileHandle, Errno> {
        if lock(&self.handles).open.len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        let h = self.svc.open(path, mode).map_err(|e| errno(&e))?;
        let mut t = lock(&self.handles);
        let fh = t.next;
        t.next += 1;
        t.open.insert(fh, Arc::new(Mutex::new(h)));
        Ok(FileHandle(fh))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Mutex<Box<dyn Handle>>>, Errno> {
        lock(&self.handles)
            .open
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }
}

fn mode_of(flags: i32, acc: OpenAccMode) -> OpenMode {
    OpenMode {
        read: matches!(acc, OpenAccMode::O_RDONLY | OpenAccMode::O_RDWR),
        write: matches!(acc, OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR),
        create: false,
        exclusive: false,
        truncate: flags & libc::O_TRUNC != 0,
    }
}

/// Live content: never cached by the kernel.
const TTL: Duration = Duration::ZERO;

impl Filesystem for NsFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.stat_attr(&p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.stat_attr(&p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = self.path(ino).and_then(|path| {
            if let Some(len) = size {
                // Truncation (`> file`): on the open handle when there is one.
                match fh.map(|f| self.handle(f)) {
                    Some(Ok(h)) => lock(&h).set_len(len).map_err(|e| errno(&e))?,
                    _ => {
                        let mut h = self
                            .svc
                            .open(
                                &path,
                                OpenMode {
                                    write: true,
                                    ..OpenMode::default()
                                },
                            )
                            .map_err(|e| errno(&e))?;
                        h.set_len(len).map_err(|e| errno(&e))?;
                    }
                }
            }
            // Modes, owners and times are not the cell's to change: reported as they are.
            self.stat_attr(&path)
        });
        match done {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let done = self.child(parent, name).and_then(|p| {
            self.svc.mkdir(&p).map_err(|e| errno(&e))?;
            self.stat_attr(&p)
        });
        match done {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .child(parent, name)
            .and_then(|p| self.svc.remove(&p).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = mode_of(flags.0, flags.acc_mode());
        match self.path(ino).and_then(|p| self.open_handle(&p, mode)) {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let acc = match flags & libc::O_ACCMODE {
            libc::O_RDWR => OpenAccMode::O_RDWR,
            libc::O_RDONLY => OpenAccMode::O_RDONLY,
            _ => OpenAccMode::O_WRONLY,
        };
        let mode = OpenMode {
            write: true,
            create: true,
            exclusive: flags & libc::O_EXCL != 0,
            ..mode_of(flags, acc)
        };
        let done = self.child(parent, name).and_then(|p| {
            let fh = self.open_handle(&p, mode)?;
            match self.stat_attr(&p) {
                Ok(a) => Ok((fh, a)),
                Err(e) => {
                    lock(&self.handles).open.remove(&fh.0);
                    Err(e)
                }
            }
        });
        match done {
            Ok((fh, a)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let done = self.handle(fh).and_then(|h| {
            let mut buf = vec![0u8; size.min(MAX_READ) as usize];
            let n = lock(&h).read_at(offset, &mut buf).map_err(|e| errno(&e))?;
            buf.truncate(n);
            Ok(buf)
        });
        match done {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let done = self
            .handle(fh)
            .and_then(|h| lock(&h).write_at(offset, data).map_err(|e| errno(&e)));
        match done {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).open.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self
            .path(ino)
            .and_then(|p| self.svc.stat(&p).map_err(|e| errno(&e)))
        {
            Ok(s) if s.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.path(ino).and_then(|p| {
            let entries = self.svc.list(&p).map_err(|e| errno(&e))?;
            let mut out = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (ino.0, FileType::Directory, "..".to_owned()),
            ];
            for e in entries {
                let child = p.child(&e.name).map_err(|e| errno(&e))?;
                let kind = match e.kind {
                    Kind::Dir => FileType::Directory,
                    Kind::File => FileType::RegularFile,
                };
                out.push((self.ino(&child)?, kind, e.name));
            }
            Ok(out)
        });
        match listed {
            Ok(all) => {
                for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}
