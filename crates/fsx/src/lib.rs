//! Capability handles for host I/O on trees that a cell or a model controls.
//!
//! Everything a cell produced is hostile input to the host: the copy-on-write upper layer, the
//! files under `/cap/*`, a read-write workspace, anything a task directory holds that the cell
//! can write. A path into such a tree is not a name the host may simply `open`: any component
//! may be a symlink planted to point at `/etc/shadow`, a FIFO that blocks the reader forever,
//! `/dev/zero` that never ends, or something swapped between a check and its use.
//!
//! So host code never touches those trees by path. It holds a [`Dir`] — an open directory
//! file descriptor, in the spirit of cap-std and Wasmtime's pre-opened directories — and every
//! operation names a path *relative* to it:
//!
//! - resolution stays beneath the handle and follows no link at all: `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, or, where `openat2` is
//!   missing, a walk with `O_NOFOLLOW` at every component; `..` and absolute paths are refused
//!   before any system call;
//! - files are opened `O_PATH` first and checked with `fstat` on that descriptor: regular files
//!   only (a FIFO, device or socket is refused by kind, never opened for reading), sizes capped
//!   before reading and again while reading;
//! - new files are created `O_CREAT | O_EXCL | O_NOFOLLOW` under random names, their mode and
//!   owner set with `fchmod`/`fchown` on the descriptor, and moved into place with `renameat`
//!   (which replaces a planted symlink instead of writing through it);
//! - nothing is resolved twice: an operation opens the parent directory once and acts on the
//!   last component relative to that descriptor.
//!
//! The trusted part of a path — the state directory, a workspace the user named — is opened
//! once with [`Dir::open`]; everything below it goes through the handle. `grep -rn
//! warren_fsx` finds every host operation on cell-controlled paths.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// What can go wrong. Every variant names the path (relative to the handle) involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path, relative to the handle.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A component of the path is a symlink; links are never followed.
    #[error("{path}: a symlink is in the way; links are not followed")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The path is absolute, has `..`, or otherwise leaves its directory.
    #[error("{path}: leaves its directory")]
    Escapes {
        /// The path.
        path: PathBuf,
    },
    /// The path is not of the kind the operation needs (a FIFO where a file was expected).
    #[error("{path}: is a {found}, not a {wanted}")]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        found: Kind,
        /// What was needed.
        wanted: Kind,
    },
    /// The file is larger than the caller allows.
    #[error("{path}: larger than the {max}-byte limit")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
}

impl Error {
    /// The path does not exist (or a parent directory does not).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Directory levels the recursive operations ([`Dir::remove_all`]) descend at most.
pub const MAX_DEPTH: usize = 256;

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The kind of a directory entry, from `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device (an overlay whiteout is one, 0/0).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & libc_s_ifmt() {
            0o100_000 => Kind::File,
            0o040_000 => Kind::Dir,
            0o120_000 => Kind::Symlink,
            0o010_000 => Kind::Fifo,
            0o140_000 => Kind::Socket,
            0o020_000 => Kind::CharDevice,
            0o060_000 => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    /// A word for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Unknown => "special file",
        }
    }

    /// A FIFO, socket, device or unknown kind: never read, never applied.
    pub fn is_special(self) -> bool {
        !matches!(self, Kind::File | Kind::Dir | Kind::Symlink)
    }
}

const fn libc_s_ifmt() -> u32 {
    0o170_000
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `lstat` says of an entry (never of a link's target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The kind.
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node (0/0 for an overlay whiteout).
    pub rdev: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// Device of the file system.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Hard links.
    pub nlink: u64,
}

impl Stat {
    fn from_raw(s: &rustix::fs::Stat) -> Stat {
        let secs = u128::try_from(s.st_mtime).unwrap_or(0);
        #[allow(clippy::unnecessary_fallible_conversions)]
        let nanos = u128::try_from(s.st_mtime_nsec).unwrap_or(0);
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Stat {
            kind: Kind::from_mode(s.st_mode as u32),
            mode: s.st_mode as u32 & 0o7777,
            size: u64::try_from(s.st_size).unwrap_or(0),
            blocks: u64::try_from(s.st_blocks).unwrap_or(0),
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            mtime_ns: secs * 1_000_000_000 + nanos,
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            nlink: s.st_nlink as u64,
        }
    }

    /// An overlayfs whiteout: a character device 0/0.
    pub fn is_whiteout(&self) -> bool {
        self.kind == Kind::CharDevice && self.rdev == 0
    }
}

/// One entry of a directory.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its name (one component).
    pub name: OsString,
    /// Its `lstat`.
    pub stat: Stat,
}

/// A temporary file created in a [`Dir`] under a random name, to be renamed into place.
#[derive(Debug)]
pub struct TempFile {
    /// Its name in the directory.
    pub name: OsString,
    /// The open file (write-only).
    pub file: File,
}

/// An open directory: the capability every operation below is relative to.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// The path this handle was opened at, for messages only (never used to open anything).
    label: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> Error + use<> {
    let path = path.to_path_buf();
    move |e| match e {
        Errno::LOOP => Error::Symlink { path },
        Errno::XDEV => Error::Escapes { path },
        e => Error::Io {
            op,
            path,
            source: e.into(),
        },
    }
}

/// Refuse absolute paths and `..`; drop `.` components. The empty path means the handle itself.
fn clean(rel: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::Escapes { path: rel.into() });
            }
        }
    }
    Ok(out)
}

/// One component: no slash, not `.` or `..`, not empty.
fn single(name: &OsStr) -> Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Error::Escapes { path: name.into() });
    }
    Ok(name)
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` beneath `dir` without links, or the component walk where `openat2` is missing.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let rel = clean(rel)?;
    let path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &rel
    };
    // openat2 refuses any flag beyond DIRECTORY, NOFOLLOW and CLOEXEC with O_PATH.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY
    };
    match rustix::fs::openat2(dir, path, flags, mode, RESOLVE) {
        Err(Errno::NOSYS) | Err(Errno::PERM) if !openat2_works() => walk(dir, &rel, flags, mode),
        r => r.map_err(io_err("open", &rel)),
    }
}

/// Whether `openat2` exists here (some seccomp profiles answer `EPERM` or `ENOSYS`).
fn openat2_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        rustix::fs::openat2(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::empty(),
        )
        .is_ok()
    })
}

/// The fallback: each directory component opened `O_NOFOLLOW | O_DIRECTORY` from the last.
fn walk(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel.iter().collect();
    let Some((last, parents)) = parts.split_last() else {
        return rustix::fs::openat(dir, ".", flags, mode).map_err(io_err("open", rel));
    };
    let mut cur: Option<OwnedFd> = None;
    for p in parents {
        let at = cur.as_ref().map_or(dir, AsFd::as_fd);
        let next = rustix::fs::openat(
            at,
            *p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => Error::Symlink { path: rel.into() },
            e => io_err("open", rel)(e),
        })?;
        cur = Some(next);
    }
    let at = cur.as_ref().map_or(dir, AsFd::as_fd);
    rustix::fs::openat(at, *last, flags, mode).map_err(io_err("open", rel))
}

fn split(rel: &Path) -> Result<(PathBuf, OsString)> {
    let rel = clean(rel)?;
    let name = rel
        .file_name()
        .ok_or_else(|| Error::Escapes { path: rel.clone() })?
        .to_owned();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((parent, name))
}

impl Dir {
    /// Open a trusted directory (one the host chose: the state directory, a workspace the
    /// user named). This is the only call that resolves a path the ordinary way.
    pub fn open(path: impl AsRef<Path>) -> Result<Dir> {
        let path = path.as_ref();
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", path))?;
        Ok(Dir {
            fd,
            label: path.into(),
        })
    }

    /// Create a trusted directory (and its parents) if needed, then open it.
    pub fn create_trusted(path: impl AsRef<Path>, mode: u32) -> Result<Dir> {
        let path = path.as_ref();
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|source| Error::Io {
                op: "create",
                path: path.into(),
                source,
            })?;
        Dir::open(path)
    }

    /// The path this handle was opened at (for messages).
    pub fn label(&self) -> &Path {
        &self.label
    }

    fn at(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.label.clone()
        } else {
            self.label.join(rel)
        }
    }

    /// Open the directory `rel` beneath this one.
    pub fn sub(&self, rel: impl AsRef<Path>) -> Result<Dir> {
        let rel = rel.as_ref();
        let fd = open_beneath(
            self.fd.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Error::Io { source, .. } if source.raw_os_error() == Some(libc_enotdir()) => {
                // Either a component or the last one is not a directory.
                match self.stat(rel) {
                    Ok(Some(s)) => Error::WrongKind {
                        path: rel.into(),
                        found: s.kind,
                        wanted: Kind::Dir,
                    },
                    _ => Error::Io {
                        op: "open",
                        path: rel.into(),
                        source: Errno::NOTDIR.into(),
                    },
                }
            }
            e => e,
        })?;
        Ok(Dir {
            fd,
            label: self.at(rel),
        })
    }

    /// Open `rel` for reading: a regular file, reached without links; anything else is refused
    /// by kind without ever being opened for reading (a FIFO cannot block, a device cannot
    /// be read). Returns the file and its `fstat`.
    pub fn open_file(&self, rel: impl AsRef<Path>) -> Result<(File, Stat)> {
        let rel = rel.as_ref();
        self.open_regular(rel, OFlags::RDONLY)
    }

    /// Open `rel` for reading and writing: a regular file reached without links. With
    /// `create`, a missing file is made (mode 0644, `O_EXCL`: never an existing object, and a
    /// link planted in its place is not written through but refused as a link). A FIFO, a
    /// device or a socket is refused by kind without being opened for I/O.
    pub fn open_file_rw(&self, rel: impl AsRef<Path>, create: bool) -> Result<(File, Stat)> {
        let rel = rel.as_ref();
        if create {
            match open_beneath(
                self.fd.as_fd(),
                rel,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NONBLOCK,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => {
                    let st = Stat::from_raw(&rustix::fs::fstat(&fd).map_err(io_err("stat", rel))?);
                    return Ok((File::from(fd), st));
                }
                Err(Error::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
                Err(e) => return Err(e),
            }
        }
        self.open_regular(rel, OFlags::RDWR)
    }

    /// Open `rel` with `access`: first `O_PATH` (no I/O, no links) to check it is a regular
    /// file, then that very inode for I/O.
    fn open_regular(&self, rel: &Path, access: OFlags) -> Result<(File, Stat)> {
        let path_fd = open_beneath(self.fd.as_fd(), rel, OFlags::PATH, Mode::empty())?;
        let st = Stat::from_raw(&rustix::fs::fstat(&path_fd).map_err(io_err("stat", rel))?);
        if st.kind != Kind::File {
            return Err(Error::WrongKind {
                path: rel.into(),
                found: st.kind,
                wanted: Kind::File,
            });
        }
        self.reopen(&path_fd, rel, &st, access)
    }

    /// Open for I/O the very inode an `O_PATH` descriptor holds (no second resolution), and
    /// check it is still that regular file.
    fn reopen(
        &self,
        path_fd: &OwnedFd,
        rel: &Path,
        st: &Stat,
        access: OFlags,
    ) -> Result<(File, Stat)> {
        // Re-open the very inode the O_PATH descriptor holds (no second resolution).
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(path_fd));
        let fd = match rustix::fs::open(
            proc.as_str(),
            access | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // No /proc: open the last component again beneath the parent, non-blocking, and
            // check it is the same inode.
            Err(_) => open_beneath(
                self.fd.as_fd(),
                rel,
                access | OFlags::NONBLOCK,
                Mode::empty(),
            )?,
        };
        let again = Stat::from_raw(&rustix::fs::fstat(&fd).map_err(io_err("stat", rel))?);
        if (again.dev, again.ino) != (st.dev, st.ino) || again.kind != Kind::File {
            return Err(Error::Io {
                op: "open",
                path: rel.into(),
                source: std::io::Error::other("the file was replaced while it was opened"),
            });
        }
        Ok((File::from(fd), again))
    }

    /// Read a regular file, at most `max` bytes (more is [`Error::TooLarge`]).
    pub fn read(&self, rel: impl AsRef<Path>, max: u64) -> Result<Vec<u8>> {
        let rel = rel.as_ref();
        let (f, st) = self.open_file(rel)?;
        if st.size > max {
            return Err(Error::TooLarge {
                path: rel.into(),
                max,
            });
        }
        read_capped(f, rel, max, st.size)
    }

    /// `lstat` of `rel` (never a link's target); `None` when it does not exist.
    pub fn stat(&self, rel: impl AsRef<Path>) -> Result<Option<Stat>> {
        let rel = rel.as_ref();
        let rel = clean(rel)?;
        if rel.as_os_str().is_empty() {
            return rustix::fs::fstat(&self.fd)
                .map(|s| Some(Stat::from_raw(&s)))
                .map_err(io_err("stat", &rel));
        }
        let (parent, name) = split(&rel)?;
        let dir = match self.sub_fd(&parent) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(Stat::from_raw(&s))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err("stat", &rel)(e)),
        }
    }

    fn sub_fd(&self, rel: &Path) -> Result<OwnedFd> {
        open_beneath(
            self.fd.as_fd(),
            rel,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Error::Io { source, .. } if source.raw_os_error() == Some(libc_enotdir()) => {
                Error::Symlink { path: rel.into() }
            }
            e => e,
        })
    }

    /// The target of the symlink `rel` (at most 4096 bytes, as the kernel allows).
    pub fn read_link(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let rel = rel.as_ref();
        let (parent, name) = split(rel)?;
        let dir = self.sub_fd(&parent)?;
        let t = rustix::fs::readlinkat(&dir, &name, Vec::new()).map_err(io_err("readlink", rel))?;
        Ok(PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }

    /// This directory's entries (not `.` and `..`), each with its `lstat`, sorted by name.
    /// An entry that vanishes while listing is left out.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let here = Path::new("");
        let dup = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", here))?;
        let d = rustix::fs::Dir::new(dup).map_err(io_err("read", here))?;
        let mut out = Vec::new();
        for e in d {
            let e = e.map_err(io_err("read", here))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_owned();
            match rustix::fs::statat(&self.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => out.push(Entry {
                    name,
                    stat: Stat::from_raw(&s),
                }),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("stat", Path::new(&name))(e)),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// An extended attribute of this directory itself (`None` when it has none of that name).
    pub fn xattr(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 256];
        match rustix::fs::fgetxattr(&self.fd, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::RANGE) => Ok(None),
            Err(e) => Err(io_err("getxattr", Path::new(""))(e)),
        }
    }

    /// Create a file under a fresh random name (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600):
    /// nothing planted can be written through. Rename it into place with [`Dir::rename`].
    pub fn temp_file(&self) -> Result<TempFile> {
        for _ in 0..16 {
            let name: OsString = format!(".warren-tmp-{:016x}", fastrand::u64(..)).into();
            match rustix::fs::openat(
                &self.fd,
                &name,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    return Ok(TempFile {
                        name,
                        file: File::from(fd),
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_err("create", Path::new(&name))(e)),
            }
        }
        Err(Error::Io {
            op: "create",
            path: self.label.clone(),
            source: std::io::Error::other("no free temporary name"),
        })
    }

    /// Write `bytes` to `name` in this directory atomically: a temporary file, `fchmod` to
    /// `mode & 0o777`, `fchown` to `owner` when given, then `renameat` over `name`. A symlink
    /// or FIFO planted at `name` is replaced, never written through; a directory there is an
    /// error.
    pub fn write(
        &self,
        name: impl AsRef<OsStr>,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let name = single(name.as_ref())?;
        let mut t = self.temp_file()?;
        let r = (|| {
            use std::io::Write;
            t.file.write_all(bytes).map_err(|source| Error::Io {
                op: "write",
                path: name.into(),
                source,
            })?;
            set_mode_owner(&t.file, Path::new(name), mode, owner)?;
            self.rename(&t.name, name)
        })();
        if r.is_err() {
            let _ = self.remove_file(&t.name);
        }
        r
    }

    /// Rename `from` to `to`, both single names in this directory (`renameat`: neither is
    /// followed if it is a link).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<()> {
        let (from, to) = (single(from.as_ref())?, single(to.as_ref())?);
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io_err("rename", Path::new(to)))
    }

    /// Create the directory `name` here with `mode & 0o777`; `Ok(false)` if one exists already
    /// (a non-directory there is an error).
    pub fn mkdir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<bool> {
        let name = single(name.as_ref())?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode & 0o777)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => match self.stat(name)? {
                Some(s) if s.kind == Kind::Dir => Ok(false),
                Some(s) => Err(Error::WrongKind {
                    path: name.into(),
                    found: s.kind,
                    wanted: Kind::Dir,
                }),
                None => Err(io_err("mkdir", Path::new(name))(Errno::EXIST)),
            },
            Err(e) => Err(io_err("mkdir", Path::new(name))(e)),
        }
    }

    /// Create the directory `name` if needed and open it (it must be a real directory).
    pub fn ensure_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<Dir> {
        let name = name.as_ref();
        self.mkdir(name, mode)?;
        self.sub(name)
    }

    /// Create a symlink `name` → `target` here (the target is stored, never resolved).
    pub fn symlink(&self, target: impl AsRef<Path>, name: impl AsRef<OsStr>) -> Result<()> {
        let name = single(name.as_ref())?;
        rustix::fs::symlinkat(target.as_ref(), &self.fd, name)
            .map_err(io_err("symlink", Path::new(name)))
    }

    /// Remove the non-directory `name` here (a link itself, never its target).
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = single(name.as_ref())?;
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(io_err("remove", Path::new(name)))
    }

    /// Remove the empty directory `name` here.
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = single(name.as_ref())?;
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
            .map_err(io_err("remove", Path::new(name)))
    }

    /// Remove `name` here and, if it is a directory, everything below it — without following
    /// any link (each level is opened beneath the last). Missing is fine.
    ///
    /// A tree nested deeper than [`MAX_DEPTH`] levels is an error (one descriptor is held per
    /// level; a cell can nest without end).
    pub fn remove_all(&self, name: impl AsRef<OsStr>) -> Result<()> {
        self.remove_all_at(name.as_ref(), 0)
    }

    fn remove_all_at(&self, name: &OsStr, depth: usize) -> Result<()> {
        let name = single(name)?;
        if depth >= MAX_DEPTH {
            return Err(Error::Io {
                op: "remove",
                path: name.into(),
                source: std::io::Error::other(format!("nested deeper than {MAX_DEPTH} levels")),
            });
        }
        match self.stat(name)? {
            None => Ok(()),
            Some(s) if s.kind == Kind::Dir => {
                let sub = self.sub(name)?;
                // A directory of mode 000 (overlayfs' work/work) must be listable to empty it.
                let _ = rustix::fs::fchmod(&sub.fd, Mode::from_raw_mode(0o700));
                for e in sub.entries()? {
                    sub.remove_all_at(&e.name, depth + 1)?;
                }
                self.remove_dir(name)
            }
            Some(_) => self.remove_file(name),
        }
    }

    /// Set the mode (`& 0o7777` as given) and optionally the owner of `rel`, through a
    /// descriptor (`fchmod`/`fchown`); a symlink is refused.
    pub fn set_mode_owner(
        &self,
        rel: impl AsRef<Path>,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let rel = rel.as_ref();
        let st = self.stat(rel)?.ok_or_else(|| Error::Io {
            op: "chmod",
            path: rel.into(),
            source: Errno::NOENT.into(),
        })?;
        let fd = match st.kind {
            Kind::Dir => self.sub(rel)?.fd,
            Kind::File => self.open_file(rel)?.0.into(),
            k => {
                return Err(Error::WrongKind {
                    path: rel.into(),
                    found: k,
                    wanted: Kind::File,
                });
            }
        };
        fchmod_chown(&fd, rel, mode, owner)
    }

    /// The raw descriptor, for calls this module does not wrap (`fchown` of the directory).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn libc_enotdir() -> i32 {
    Errno::NOTDIR.raw_os_error()
}

fn fchmod_chown(fd: &OwnedFd, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = owner {
        let (u, g) = (rustix::fs::Uid::from_raw(u), rustix::fs::Gid::from_raw(g));
        rustix::fs::fchown(fd, Some(u), Some(g)).map_err(io_err("chown", rel))?;
    }
    // After chown: the kernel clears setuid/setgid on chown, and we set exactly `mode`.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(io_err("chmod", rel))
}

/// `fchmod` (to `mode & 0o777`: never setuid, setgid or sticky) and `fchown` an open file.
pub fn set_mode_owner(f: &File, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let fd: &OwnedFd = &f.as_fd().try_clone_to_owned().map_err(|source| Error::Io {
        op: "dup",
        path: rel.into(),
        source,
    })?;
    fchmod_chown(fd, rel, mode & 0o777, owner)
}

fn read_capped(f: File, rel: &Path, max: u64, hint: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(hint.min(max)).unwrap_or(0));
    f.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|source| Error::Io {
            op: "read",
            path: rel.into(),
            source,
        })?;
    if out.len() as u64 > max {
        return Err(Error::TooLarge {
            path: rel.into(),
            max,
        });
    }
    Ok(out)
}

/// Read a file whose final component may be hostile (a project's `.warren/config.toml`): the
/// parent is trusted and resolved normally, the file itself is opened beneath it — regular,
/// not a link, at most `max` bytes. `Ok(None)` when it does not exist.
pub fn read_regular(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Escapes { path: path.into() });
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match Dir::open(parent) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    match dir.read(name, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(relabel(e, path)),
    }
}

/// Put the full path into an error that names a path relative to a handle.
pub fn relabel(e: Error, full: &Path) -> Error {
    match e {
        Error::Io { op, source, .. } => Error::Io {
            op,
            path: full.into(),
            source,
        },
        Error::Symlink { .. } => Error::Symlink { path: full.into() },
        Error::Escapes { .. } => Error::Escapes { path: full.into() },
        Error::WrongKind { found, wanted, .. } => Error::WrongKind {
            path: full.into(),
            found,
            wanted,
        },
        Error::TooLarge { max, .. } => Error::TooLarge {
            path: full.into(),
            max,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The fallback walk (for kernels without `openat2`) refuses links in every component too.
    #[test]
    fn the_component_walk_follows_no_link() {
        let root = std::env::temp_dir().join(format!("warren-fsx-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("b", root.join("a/l")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("a/b/p")).unwrap();
        let d = Dir::open(&root).unwrap();
        let fd = d.fd.as_fd();
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        assert!(walk(fd, Path::new("a/b/f"), flags, Mode::empty()).is_ok());
        assert!(walk(fd, Path::new("a/l/f"), flags, Mode::empty()).is_err());
        assert!(walk(fd, Path::new("a/b/p"), flags, Mode::empty()).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
