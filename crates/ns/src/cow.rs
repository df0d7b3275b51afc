//! [`CowFs`]: a copy-on-write overlay — a read-only *lower* service seen through a writable
//! *upper* one, as overlayfs does for the process tier's `/workspace`.
//!
//! Reads come from the upper service where it has the path, else from the lower. The first
//! write to a lower file copies it up whole (its parents as directories first); removing a
//! lower path records a *whiteout*, so it is gone from the merged view while the lower
//! service is never changed. What the cell changed is exactly the upper service plus the
//! whiteouts ([`CowFs::changes`]), which is what a diff and an apply need.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

/// A writable view of `lower` whose changes go to `upper`.
pub struct CowFs {
    lower: Arc<dyn FileService>,
    upper: Arc<dyn FileService>,
    whiteouts: Mutex<BTreeSet<NsPath>>,
    /// The largest file copied up (a lower file past it cannot be written through the view).
    copy_limit: u64,
}

/// What a [`CowFs`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Paths removed from the lower view.
    pub removed: Vec<String>,
}

impl CowFs {
    /// `lower` as seen through `upper`; files larger than `copy_limit` are not copied up.
    pub fn new(lower: Arc<dyn FileService>, upper: Arc<dyn FileService>, copy_limit: u64) -> Self {
        CowFs {
            lower,
            upper,
            whiteouts: Mutex::new(BTreeSet::new()),
            copy_limit,
        }
    }

    /// The whiteouts (the upper service holds the rest of the changes).
    pub fn changes(&self) -> Changes {
        Changes {
            removed: self.wo().iter().map(ToString::to_string).collect(),
        }
    }

    fn wo(&self) -> MutexGuard<'_, BTreeSet<NsPath>> {
        self.whiteouts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `p` or one of its ancestors was removed (and not made again in the upper).
    fn hidden(&self, p: &NsPath) -> bool {
        let wo = self.wo();
        let mut q = p.clone();
        loop {
            if wo.contains(&q) {
                return true;
            }
            if q.is_root() {
                return false;
            }
            q = q.parent();
        }
    }

    /// The lower service's view of `p`, unless hidden.
    fn lower_stat(&self, p: &NsPath) -> Option<Stat> {
        if self.hidden(p) {
            return None;
        }
        self.lower.stat(p).ok()
    }

    /// Make `dir` and its parents exist in the upper service (they exist in the merged view).
    fn copy_up_dirs(&self, dir: &NsPath) -> Result<()> {
        let mut missing = Vec::new();
        let mut q = dir.clone();
        while !q.is_root() && self.upper.stat(&q).is_err() {
            missing.push(q.clone());
            q = q.parent();
        }
        for d in missing.into_iter().rev() {
            match self.upper.mkdir(&d) {
                Ok(()) | Err(NsError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl FileService for CowFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        if let Ok(s) = self.upper.stat(path) {
            return Ok(s);
        }
        match self.lower_stat(path) {
            Some(s) => Ok(Stat {
                writable: true,
                ..s
            }),
            None => Err(NsError::NotFound(path.to_string())),
        }
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        let st = self.stat(path)?;
        if st.kind != Kind::Dir {
            return Err(NsError::NotADirectory(path.to_string()));
        }
        let mut out: Vec<Entry> = self.upper.list(path).unwrap_or_default();
        if self.lower_stat(path).is_some_and(|s| s.kind == Kind::Dir) {
            for e in self.lower.list(path)? {
                let child = path.child(&e.name)?;
                if !out.iter().any(|o| o.name == e.name) && !self.hidden(&child) {
                    out.push(e);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let in_upper = self.upper.stat(path).is_ok();
        if !mode.write || in_upper {
            if in_upper {
                return self.upper.open(path, mode);
            }
            if self.lower_stat(path).is_some() {
                return self.lower.open(path, mode);
            }
            return Err(NsError::NotFound(path.to_string()));
        }
        // A write: into the upper service, copying the lower file up first.
        let lower = self.lower_stat(path);
        match lower {
            Some(s) if s.kind == Kind::Dir => return Err(NsError::IsADirectory(path.to_string())),
            Some(_) if mode.create && mode.exclusive => {
                return Err(NsError::Exists(path.to_string()));
            }
            None if !mode.create => return Err(NsError::NotFound(path.to_string())),
            _ => {}
        }
        let parent = path.parent();
        if self.stat(&parent)?.kind != Kind::Dir {
            return Err(NsError::NotADirectory(parent.to_string()));
        }
        self.copy_up_dirs(&parent)?;
        let content = match lower {
            Some(_) if !mode.truncate => crate::read_all(&*self.lower, path, self.copy_limit)?,
            _ => Vec::new(),
        };
        crate::write_all(&*self.upper, path, &content)?;
        self.wo().remove(path);
        self.upper.open(
            path,
            OpenMode {
                create: false,
                exclusive: false,
                ..mode
            },
        )
    }

    fn mkdir(&self, path: &NsPath) -> Result<()> {
        if self.stat(path).is_ok() {
            return Err(NsError::Exists(path.to_string()));
        }
        let parent = path.parent();
        if self.stat(&parent)?.kind != Kind::Dir {
            return Err(NsError::NotADirectory(parent.to_string()));
        }
        self.copy_up_dirs(&parent)?;
        self.upper.mkdir(path)?;
        // Made where a removed directory was: it is empty, because a directory is removed only
        // once empty, so each of its lower entries has a whiteout of its own already.
        self.wo().remove(path);
        Ok(())
    }

    fn remove(&self, path: &NsPath) -> Result<()> {
        let st = self.stat(path)?;
        if st.kind == Kind::Dir && !self.list(path)?.is_empty() {
            return Err(NsError::NotEmpty(path.to_string()));
        }
        if self.upper.stat(path).is_ok() {
            self.upper.remove(path)?;
        }
        if self.lower.stat(path).is_ok() {
            self.wo().insert(path.clone());
        }
        Ok(())
    }
}
