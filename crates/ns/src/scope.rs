//! [`ScopedFs`]: path grants over a service — what Landlock does for the process tier, done
//! by the host for tiers whose files it serves itself (the WASI tier).
//!
//! A task's capabilities can narrow its workspace to a few paths (`src/** write`, `docs/**
//! read`). The process tier hands those to Landlock; here the same list wraps the workspace's
//! service, with the same meaning:
//!
//! - **looking a path up and listing a directory** are always allowed, as in the process
//!   tier (whose Landlock rules grant listing the whole mount) — so a module finds a granted
//!   file below an ungranted directory;
//! - **reading a file** needs a read or write grant at or above the path;
//! - **writing, creating, making a directory and removing** need a write grant at or above
//!   the path (for a new entry: above the entry itself, which Landlock checks on its parent
//!   with the entry's own rules — the same outcome for a grant that names a directory).
//!
//! A grant on `src` covers `src` and everything below it, never `src2` ([`NsPath`]'s whole
//! components). A refusal is [`NsError::Denied`], as `EACCES` is from Landlock.

use std::sync::Arc;

use crate::{Entry, FileService, Handle, NsError, NsPath, OpenMode, Result, Stat};

/// One grant: a path below the service's root, and whether it may be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Where it applies (and below).
    pub path: NsPath,
    /// Write as well as read.
    pub write: bool,
}

/// A service narrowed to `grants`.
pub struct ScopedFs {
    inner: Arc<dyn FileService>,
    grants: Vec<Grant>,
}

impl ScopedFs {
    /// `inner`, reachable only as `grants` allow.
    pub fn new(inner: Arc<dyn FileService>, grants: Vec<Grant>) -> Self {
        ScopedFs { inner, grants }
    }

    fn allowed(&self, path: &NsPath, write: bool) -> Result<()> {
        let ok = self
            .grants
            .iter()
            .any(|g| path.starts_with(&g.path) && (g.write || !write));
        if ok {
            Ok(())
        } else {
            Err(NsError::Denied(path.to_string()))
        }
    }
}

impl FileService for ScopedFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        let mut s = self.inner.stat(path)?;
        s.writable &= self.allowed(path, true).is_ok();
        Ok(s)
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        self.inner.list(path)
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        self.allowed(path, mode.write || mode.create || mode.truncate)?;
        self.inner.open(path, mode)
    }

    fn mkdir(&self, path: &NsPath) -> Result<()> {
        self.allowed(path, true)?;
        self.inner.mkdir(path)
    }

    fn remove(&self, path: &NsPath) -> Result<()> {
        self.allowed(path, true)?;
        self.inner.remove(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use crate::mem::MemFs;
    use crate::{read_all, write_all};

    fn p(s: &str) -> NsPath {
        NsPath::parse(s).expect("path")
    }

    fn scoped() -> ScopedFs {
        let mem = Arc::new(MemFs::new(1 << 20));
        for d in ["/src", "/src2", "/docs", "/secret"] {
            mem.mkdir(&p(d)).expect("mkdir");
        }
        for f in ["/src/a.rs", "/src2/b.rs", "/docs/r.md", "/secret/key"] {
            write_all(mem.as_ref(), &p(f), b"x").expect("write");
        }
        ScopedFs::new(
            mem,
            vec![
                Grant {
                    path: p("/src"),
                    write: true,
                },
                Grant {
                    path: p("/docs"),
                    write: false,
                },
            ],
        )
    }

    #[test]
    fn attack_grants_hold_by_whole_components_and_by_access() {
        let s = scoped();
        // Granted: read and write below src, read below docs.
        assert_eq!(read_all(&s, &p("/src/a.rs"), 10).expect("read"), b"x");
        write_all(&s, &p("/src/new.rs"), b"y").expect("write in a write grant");
        s.mkdir(&p("/src/sub")).expect("mkdir in a write grant");
        assert_eq!(read_all(&s, &p("/docs/r.md"), 10).expect("read"), b"x");
        assert!(s.list(&p("/docs")).is_ok());
        // Refused: src2 is not under src; docs is read-only; secret and the root are ungranted.
        for (what, r) in [
            ("read src2", read_all(&s, &p("/src2/b.rs"), 10).map(drop)),
            ("write docs", write_all(&s, &p("/docs/r.md"), b"z")),
            ("remove docs", s.remove(&p("/docs/r.md"))),
            ("mkdir docs", s.mkdir(&p("/docs/new"))),
            ("read secret", read_all(&s, &p("/secret/key"), 10).map(drop)),
            ("write root", write_all(&s, &p("/top.txt"), b"z")),
            ("remove src", s.remove(&p("/src2"))),
        ] {
            assert!(
                matches!(r, Err(NsError::Denied(_))),
                "{what} was not refused: {r:?}"
            );
        }
        // Lookup and listing are not refused (as in the process tier), and say what is writable.
        assert!(s.stat(&p("/secret/key")).is_ok());
        assert_eq!(s.list(&p("/")).expect("list").len(), 4);
        assert!(!s.stat(&p("/docs/r.md")).expect("stat").writable);
        assert!(s.stat(&p("/src/a.rs")).expect("stat").writable);
    }
}
