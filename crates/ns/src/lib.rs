//! Namespace primitives: an agent's world as a mount table of file services.
//!
//! After Plan 9 (and OANIX, which tried it for agents): what a cell sees is not a disk but a
//! *namespace* — `/workspace`, `/task`, `/logs`, `/tmp`, `/cap/http`, … — each mount point
//! served by a [`FileService`]. A service can be a tree in memory ([`mem::MemFs`], e.g. `/tmp`
//! with a size cap), a fixed map of files ([`map::MapFs`], e.g. `/task`), files computed when
//! read or answered when written ([`func::FuncFs`], e.g. `/cap/http/request`: write a request,
//! read the response on the same handle), an append-only log ([`log::LogFs`], `/logs`), a host
//! directory reached only beneath itself ([`dir::DirFs`]), a copy-on-write overlay of two
//! services ([`cow::CowFs`]), or another service narrowed to path grants ([`scope::ScopedFs`],
//! Landlock's rules applied by the host).
//!
//! Everything here is host code acting on what a cell chose (paths, sizes, write orders), so:
//!
//! - paths are parsed once into [`NsPath`] — absolute, normalized, `..` clamped at the root as
//!   Plan 9 does, NUL and over-long names refused — and services only ever see paths relative
//!   to their mount;
//! - the [`MountTable`] resolves by whole components (`/workspace2` is not under
//!   `/workspace`), longest mount first;
//! - every service that stores bytes has a cap, and a write past it fails without a partial
//!   effect.
//!
//! The WASI tier serves its filesystem calls from a mount table directly; the process tier's
//! host side uses the same services behind its capability files.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cow;
pub mod dir;
pub mod func;
pub mod log;
pub mod map;
pub mod mem;
pub mod scope;

use std::fmt;
use std::sync::Arc;

/// The longest name of one component.
pub const MAX_NAME: usize = 255;
/// The longest path, in bytes.
pub const MAX_PATH: usize = 4096;

/// Failures of namespace operations (what a cell is told; no host path appears in them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// Nothing at that path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A file where a directory was needed.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A directory where a file was needed.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// Something exists there already.
    #[error("{0}: exists")]
    Exists(String),
    /// A directory that still has entries.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// The service does not allow it (read-only, append-only, not creatable).
    #[error("{0}: permission denied")]
    Denied(String),
    /// The service's size cap would be exceeded; nothing was written.
    #[error("{path}: no space (limit {limit} bytes)")]
    NoSpace {
        /// The path written.
        path: String,
        /// The service's cap.
        limit: u64,
    },
    /// A malformed path (NUL, too long, not absolute).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A service failed (its message, for the cell).
    #[error("{0}")]
    Failed(String),
}

/// Namespace results.
pub type Result<T> = std::result::Result<T, NsError>;

/// An absolute, normalized path in a namespace: its components, none empty, `.` or `..`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsPath(Vec<String>);

impl NsPath {
    /// The root, `/`.
    pub fn root() -> Self {
        NsPath(Vec::new())
    }

    /// Parse an absolute path. `.` and empty components are dropped, `..` removes the previous
    /// component and stays at the root (`/../etc` is `/etc`): lexical, as in Plan 9, because
    /// nothing in a namespace is a symbolic link that `..` could mean to follow back.
    pub fn parse(path: &str) -> Result<Self> {
        if path.len() > MAX_PATH {
            return Err(NsError::InvalidPath(format!(
                "longer than {MAX_PATH} bytes"
            )));
        }
        if path.contains('\0') {
            return Err(NsError::InvalidPath("contains NUL".into()));
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(NsError::InvalidPath(format!("{path:?} is not absolute")));
        };
        let mut parts: Vec<String> = Vec::new();
        for c in rest.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name if name.len() > MAX_NAME => {
                    return Err(NsError::InvalidPath(format!(
                        "a name longer than {MAX_NAME} bytes"
                    )));
                }
                name => parts.push(name.to_owned()),
            }
        }
        Ok(NsPath(parts))
    }

    /// `self` joined with a path relative to it (the same rules as [`NsPath::parse`]; `..`
    /// stops at the namespace's root, not at `self`).
    pub fn join(&self, rel: &str) -> Result<Self> {
        NsPath::parse(&format!("{self}/{rel}"))
    }

    /// The components.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (none for `/`).
    pub fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// The parent (`/` for `/`).
    pub fn parent(&self) -> NsPath {
        let mut p = self.0.clone();
        p.pop();
        NsPath(p)
    }

    /// `self` with `name` appended (a single component, checked).
    pub fn child(&self, name: &str) -> Result<NsPath> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(NsError::InvalidPath(format!("{name:?} is not a name")));
        }
        if name.contains('\0') || name.len() > MAX_NAME {
            return Err(NsError::InvalidPath("a malformed name".into()));
        }
        let mut p = self.0.clone();
        p.push(name.to_owned());
        Ok(NsPath(p))
    }

    /// Whether `self` is `prefix` or lies under it, by whole components.
    pub fn starts_with(&self, prefix: &NsPath) -> bool {
        self.0.len() >= prefix.0.len() && self.0[..prefix.0.len()] == prefix.0[..]
    }

    /// The rest of `self` below `prefix` (as a path from a service's root).
    pub fn strip_prefix(&self, prefix: &NsPath) -> Option<NsPath> {
        self.starts_with(prefix)
            .then(|| NsPath(self.0[prefix.0.len()..].to_vec()))
    }
}

impl fmt::Display for NsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for p in &self.0 {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories, and for computed files until read).
    pub size: u64,
    /// Whether it can be written (or, for a directory, written in).
    pub writable: bool,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Read.
    pub read: bool,
    /// Write.
    pub write: bool,
    /// Create it if missing (needs `write`).
    pub create: bool,
    /// Fail if it exists (with `create`).
    pub exclusive: bool,
    /// Empty it first (needs `write`).
    pub truncate: bool,
}

impl OpenMode {
    /// Read only.
    pub fn read() -> Self {
        OpenMode {
            read: true,
            ..OpenMode::default()
        }
    }

    /// Write, creating and emptying (`>` in a shell).
    pub fn create() -> Self {
        OpenMode {
            write: true,
            create: true,
            truncate: true,
            ..OpenMode::default()
        }
    }

    /// Read and write an existing file.
    pub fn read_write() -> Self {
        OpenMode {
            read: true,
            write: true,
            ..OpenMode::default()
        }
    }
}

/// An open file.
pub trait Handle: Send {
    /// Read from `offset` into `buf`; 0 at the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Write `data` at `offset` (past the end: the gap reads as zeros); all of it or an error.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<usize>;
    /// Cut or extend to `len` bytes.
    fn set_len(&mut self, len: u64) -> Result<()>;
    /// Its size now.
    fn size(&self) -> Result<u64>;
}

/// A tree of files served under one mount point. Paths are relative to the mount (the
/// service's root is `/`), parsed and normalized already.
pub trait FileService: Send + Sync {
    /// What is at `path`.
    fn stat(&self, path: &NsPath) -> Result<Stat>;
    /// The entries of directory `path`, sorted by name.
    fn list(&self, path: &NsPath) -> Result<Vec<Entry>>;
    /// Open file `path`.
    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>>;
    /// Make directory `path` (its parent must exist).
    fn mkdir(&self, path: &NsPath) -> Result<()> {
        Err(NsError::Denied(path.to_string()))
    }
    /// Remove file or empty directory `path`.
    fn remove(&self, path: &NsPath) -> Result<()> {
        Err(NsError::Denied(path.to_string()))
    }
}

/// Read a whole file, at most `max` bytes (more is [`NsError::NoSpace`]).
pub fn read_all(s: &dyn FileService, path: &NsPath, max: u64) -> Result<Vec<u8>> {
    let mut h = s.open(path, OpenMode::read())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = h.read_at(out.len() as u64, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() as u64 + n as u64 > max {
            return Err(NsError::NoSpace {
                path: path.to_string(),
                limit: max,
            });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Create or replace file `path` with `data`.
pub fn write_all(s: &dyn FileService, path: &NsPath, data: &[u8]) -> Result<()> {
    let mut h = s.open(path, OpenMode::create())?;
    h.write_at(0, data).map(drop)
}

/// A namespace: services mounted at paths.
#[derive(Clone, Default)]
pub struct MountTable {
    /// Longest mount point first, so the first match is the right one.
    mounts: Vec<(NsPath, Arc<dyn FileService>)>,
}

impl MountTable {
    /// An empty namespace.
    pub fn new() -> Self {
        MountTable::default()
    }

    /// Mount `service` at `at` (an absolute path; replacing what was mounted exactly there).
    pub fn mount(&mut self, at: &str, service: Arc<dyn FileService>) -> Result<()> {
        let at = NsPath::parse(at)?;
        self.mounts.retain(|(p, _)| *p != at);
        self.mounts.push((at, service));
        self.mounts.sort_by(|a, b| {
            b.0.parts()
                .len()
                .cmp(&a.0.parts().len())
                .then(a.0.cmp(&b.0))
        });
        Ok(())
    }

    /// The mount points, longest first.
    pub fn mount_points(&self) -> Vec<String> {
        self.mounts.iter().map(|(p, _)| p.to_string()).collect()
    }

    /// The service serving `path` and the path within it: the longest mount point that is
    /// `path` or a whole-component prefix of it.
    pub fn resolve(&self, path: &str) -> Result<(Arc<dyn FileService>, NsPath)> {
        let p = NsPath::parse(path)?;
        self.resolve_path(&p)
    }

    /// [`MountTable::resolve`] for a parsed path.
    pub fn resolve_path(&self, p: &NsPath) -> Result<(Arc<dyn FileService>, NsPath)> {
        for (at, s) in &self.mounts {
            if let Some(rel) = p.strip_prefix(at) {
                return Ok((Arc::clone(s), rel));
            }
        }
        Err(NsError::NotFound(p.to_string()))
    }

    /// Mount points directly below `dir` that no service there shows (`/` lists `task`,
    /// `workspace`, … although no service is mounted at `/`).
    fn synthetic_children(&self, dir: &NsPath) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .mounts
            .iter()
            .filter(|(at, _)| at.parts().len() > dir.parts().len() && at.starts_with(dir))
            .map(|(at, _)| Entry {
                name: at.parts()[dir.parts().len()].clone(),
                kind: Kind::Dir,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What is at `path` (a directory on the way to a mount point is one).
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let p = NsPath::parse(path)?;
        match self.resolve_path(&p) {
            Ok((s, rel)) => s.stat(&rel),
            Err(e) if self.synthetic_children(&p).is_empty() => Err(e),
            Err(_) => Ok(Stat {
                kind: Kind::Dir,
                size: 0,
                writable: false,
            }),
        }
    }

    /// The entries of directory `path`: its service's, and the mount points below it.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let p = NsPath::parse(path)?;
        let mounted = self.synthetic_children(&p);
        let mut out = match self.resolve_path(&p) {
            Ok((s, rel)) => s.list(&rel)?,
            Err(e) if mounted.is_empty() => return Err(e),
            Err(_) => Vec::new(),
        };
        for m in mounted {
            if !out.iter().any(|e| e.name == m.name) {
                out.push(m);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Open file `path`.
    pub fn open(&self, path: &str, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let (s, rel) = self.resolve(path)?;
        s.open(&rel, mode)
    }

    /// Make directory `path`.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        let (s, rel) = self.resolve(path)?;
        if rel.is_root() {
            return Err(NsError::Exists(path.into()));
        }
        s.mkdir(&rel)
    }

    /// Remove `path` (never a mount point).
    pub fn remove(&self, path: &str) -> Result<()> {
        let (s, rel) = self.resolve(path)?;
        if rel.is_root() {
            return Err(NsError::Denied(format!("{path}: a mount point")));
        }
        s.remove(&rel)
    }

    /// Read a whole file, at most `max` bytes.
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let (s, rel) = self.resolve(path)?;
        read_all(&*s, &rel, max)
    }

    /// Create or replace a file.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let (s, rel) = self.resolve(path)?;
        write_all(&*s, &rel, data)
    }
}
