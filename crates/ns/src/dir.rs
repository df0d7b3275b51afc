//! [`DirFs`]: a host directory as a file service — how a namespace reaches real files (a
//! workspace, the upper directory of a task's layer).
//!
//! The directory's contents are the cell's (or the project's) and hostile: every operation
//! resolves beneath the directory's descriptor without following a link (`warren-fsx`:
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), opens only regular files (a FIFO,
//! device or socket is refused by kind, never opened for I/O), and writes stay within a
//! per-file cap. Links and special files are not shown: a namespace has files and
//! directories only, and a link could only ever be refused.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use warren_fsx::Dir;

use crate::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

/// A host directory, read-only or writable, with a cap on each file's size.
pub struct DirFs {
    root: Arc<Dir>,
    writable: bool,
    max_file: u64,
}

impl DirFs {
    /// Serve the (trusted, host-chosen) directory `root`; writes allowed when `writable`, no
    /// file larger than `max_file` bytes written.
    pub fn new(root: Dir, writable: bool, max_file: u64) -> Self {
        DirFs {
            root: Arc::new(root),
            writable,
            max_file,
        }
    }

    fn rel(path: &NsPath) -> PathBuf {
        path.parts().iter().collect()
    }

    fn write_check(&self, path: &NsPath) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(NsError::Denied(path.to_string()))
        }
    }

    /// The directory holding `path`, opened beneath the root, and `path`'s name.
    fn parent(&self, path: &NsPath) -> Result<(Dir, String)> {
        let name = path
            .name()
            .ok_or_else(|| NsError::Denied("/".into()))?
            .to_owned();
        let dir = self
            .root
            .sub(Self::rel(&path.parent()))
            .map_err(|e| fs_err(&path.parent(), e))?;
        Ok((dir, name))
    }
}

/// A host error as the cell may see it: the namespace path, never the host's.
fn fs_err(path: &NsPath, e: warren_fsx::Error) -> NsError {
    use warren_fsx::Error as E;
    let p = path.to_string();
    match e {
        e if e.is_not_found() => NsError::NotFound(p),
        E::Symlink { .. } | E::Escapes { .. } => NsError::Denied(p),
        E::WrongKind {
            found: warren_fsx::Kind::Dir,
            ..
        } => NsError::IsADirectory(p),
        E::WrongKind {
            wanted: warren_fsx::Kind::Dir,
            found: warren_fsx::Kind::File,
            ..
        } => NsError::NotADirectory(p),
        E::WrongKind { .. } => NsError::Denied(p),
        E::TooLarge { max, .. } => NsError::NoSpace {
            path: p,
            limit: max,
        },
        E::Io { source, .. } => match source.raw_os_error() {
            Some(libc::EEXIST) => NsError::Exists(p),
            Some(libc::ENOTEMPTY) => NsError::NotEmpty(p),
            Some(libc::ENOTDIR) => NsError::NotADirectory(p),
            Some(libc::EISDIR) => NsError::IsADirectory(p),
            Some(libc::ELOOP | libc::EXDEV | libc::EACCES | libc::EPERM) => NsError::Denied(p),
            Some(libc::ENOSPC | libc::EDQUOT) => NsError::NoSpace { path: p, limit: 0 },
            _ => NsError::Failed(format!("{p}: {}", source.kind())),
        },
    }
}

fn kind(k: warren_fsx::Kind) -> Option<Kind> {
    match k {
        warren_fsx::Kind::File => Some(Kind::File),
        warren_fsx::Kind::Dir => Some(Kind::Dir),
        _ => None,
    }
}

impl FileService for DirFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        let st = self
            .root
            .stat(Self::rel(path))
            .map_err(|e| fs_err(path, e))?
            .ok_or_else(|| NsError::NotFound(path.to_string()))?;
        let kind = kind(st.kind).ok_or_else(|| NsError::Denied(path.to_string()))?;
        Ok(Stat {
            kind,
            size: if kind == Kind::File { st.size } else { 0 },
            writable: self.writable,
        })
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        let dir = self
            .root
            .sub(Self::rel(path))
            .map_err(|e| fs_err(path, e))?;
        let entries = dir.entries().map_err(|e| fs_err(path, e))?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                Some(Entry {
                    name: e.name.into_string().ok()?,
                    kind: kind(e.stat.kind)?,
                })
            })
            .collect())
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let rel = Self::rel(path);
        let file = if mode.write || mode.truncate {
            self.write_check(path)?;
            if mode.create && mode.exclusive && self.stat(path).is_ok() {
                return Err(NsError::Exists(path.to_string()));
            }
            let (f, _) = self
                .root
                .open_file_rw(&rel, mode.create)
                .map_err(|e| fs_err(path, e))?;
            if mode.truncate {
                f.set_len(0)
                    .map_err(|e| NsError::Failed(format!("{path}: {}", e.kind())))?;
            }
            f
        } else {
            self.root.open_file(&rel).map_err(|e| fs_err(path, e))?.0
        };
        Ok(Box::new(FileHandle {
            file,
            path: path.to_string(),
            mode,
            max: self.max_file,
        }))
    }

    fn mkdir(&self, path: &NsPath) -> Result<()> {
        self.write_check(path)?;
        let (dir, name) = self.parent(path)?;
        match dir.mkdir(&name, 0o755) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NsError::Exists(path.to_string())),
            Err(e) => Err(fs_err(path, e)),
        }
    }

    fn remove(&self, path: &NsPath) -> Result<()> {
        self.write_check(path)?;
        let (dir, name) = self.parent(path)?;
        let st = dir
            .stat(&name)
            .map_err(|e| fs_err(path, e))?
            .ok_or_else(|| NsError::NotFound(path.to_string()))?;
        match st.kind {
            warren_fsx::Kind::Dir => dir.remove_dir(&name),
            warren_fsx::Kind::File => dir.remove_file(&name),
            _ => return Err(NsError::Denied(path.to_string())),
        }
        .map_err(|e| fs_err(path, e))
    }
}

struct FileHandle {
    file: std::fs::File,
    path: String,
    mode: OpenMode,
    max: u64,
}

impl FileHandle {
    fn io(&self, e: std::io::Error) -> NsError {
        NsError::Failed(format!("{}: {}", self.path, e.kind()))
    }
}

impl Handle for FileHandle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if !self.mode.read {
            return Err(NsError::Denied(self.path.clone()));
        }
        self.file.read_at(buf, offset).map_err(|e| self.io(e))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<usize> {
        if !self.mode.write {
            return Err(NsError::Denied(self.path.clone()));
        }
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.max) {
            return Err(NsError::NoSpace {
                path: self.path.clone(),
                limit: self.max,
            });
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io(e))?;
        Ok(data.len())
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        if !self.mode.write {
            return Err(NsError::Denied(self.path.clone()));
        }
        if len > self.max {
            return Err(NsError::NoSpace {
                path: self.path.clone(),
                limit: self.max,
            });
        }
        self.file.set_len(len).map_err(|e| self.io(e))
    }

    fn size(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io(e))
    }
}
