//! What a cell could read of a workspace on the host, for host tools that answer a task from
//! an index the host built over everything (`code_search`).
//!
//! The index is built by the daemon (often root) and holds files the task's cell could never
//! open. A task's answers are limited to files its cell's host identity could read *now*:
//! each directory from the workspace root down needs search (`x`) permission, the file read
//! (`r`) permission and must be a regular file reached without a symlink (every step is an
//! `lstat` beneath a directory handle, `warren-fsx`; a failed look counts as unreadable).
//! Permission classes are those of the kernel's DAC check: owner bits if the identity owns it,
//! else group bits if its group does, else other bits. Root's override does not apply: a cell
//! never runs as host root. Through an idmapped workspace mount (root running a cell on a tree
//! it does not own as the cell) the tree's owner appears as the cell's identity and every other
//! owner as nobody in particular, so ownership is the mapped one.
//!
//! Not consulted: POSIX ACLs and capabilities (an ACL granting the cell more than the mode
//! bits do hides a file it could read; one taking away what the mode bits grant is the case
//! this check would miss), and the cell's own copy-on-write changes (the index is of the host
//! tree).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use warren_fsx::{Dir, Kind, Stat};

/// A cell's host identity, as file permissions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reader {
    /// The cell's host uid.
    pub uid: u32,
    /// The cell's host gid (cells have no supplementary groups).
    pub gid: u32,
    /// The workspace's idmapped mount: on-disk owner uid and gid shown as the cell's.
    pub idmap: Option<(u32, u32)>,
}

const READ: u32 = 4;
const SEARCH: u32 = 1;

impl Reader {
    /// Whether this identity has `want` (`r` = 4, `x` = 1) on a file with `st`.
    pub fn may(&self, st: &Stat, want: u32) -> bool {
        let (owner, group) = match self.idmap {
            Some((uid, gid)) => (st.uid == uid, st.gid == gid),
            None => (st.uid == self.uid, st.gid == self.gid),
        };
        let bits = if owner {
            st.mode >> 6
        } else if group {
            st.mode >> 3
        } else {
            st.mode
        } & 7;
        bits & want == want
    }

    /// The paths of `rels` (relative to `root`) this identity could read now.
    pub fn readable<'a>(
        &self,
        root: &Path,
        rels: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        let Ok(top) = Dir::open(root) else {
            return BTreeSet::new();
        };
        let mut dirs: HashMap<String, bool> = HashMap::new();
        let mut out = BTreeSet::new();
        for rel in rels {
            if self.reads(&top, rel, &mut dirs) {
                out.insert(rel.to_owned());
            }
        }
        out
    }

    fn reads(&self, top: &Dir, rel: &str, dirs: &mut HashMap<String, bool>) -> bool {
        let mut searchable = |d: &str| -> bool {
            if let Some(&ok) = dirs.get(d) {
                return ok;
            }
            let ok = matches!(top.stat(d), Ok(Some(st)) if st.kind == Kind::Dir && self.may(&st, SEARCH));
            dirs.insert(d.to_owned(), ok);
            ok
        };
        if !searchable("") {
            return false;
        }
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            if !searchable(&rel[..at + i]) {
                return false;
            }
            at += i + 1;
        }
        matches!(top.stat(rel), Ok(Some(st)) if st.kind == Kind::File && self.may(&st, READ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(uid: u32, gid: u32, mode: u32) -> Stat {
        Stat {
            kind: Kind::File,
            mode,
            size: 0,
            blocks: 0,
            uid,
            gid,
            rdev: 0,
            mtime_ns: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
        }
    }

    #[test]
    fn permission_classes_are_the_kernels() {
        let cell = Reader {
            uid: 1000,
            gid: 100,
            idmap: None,
        };
        assert!(cell.may(&st(1000, 5, 0o400), READ), "owner bits");
        assert!(
            !cell.may(&st(1000, 100, 0o044), READ),
            "the owner's bits decide, not the others'"
        );
        assert!(cell.may(&st(0, 100, 0o040), READ), "group bits");
        assert!(
            !cell.may(&st(0, 100, 0o404), READ),
            "the group's bits decide"
        );
        assert!(cell.may(&st(0, 0, 0o004), READ), "other bits");
        assert!(
            !cell.may(&st(0, 0, 0o600), READ),
            "root's file: no override for a cell"
        );
        assert!(cell.may(&st(0, 0, 0o001), SEARCH) && !cell.may(&st(0, 0, 0o004), SEARCH));
        // Through an idmapped mount the tree's owner (root here) is the cell; its own host uid
        // on disk is nobody in particular.
        let mapped = Reader {
            idmap: Some((0, 0)),
            ..cell
        };
        assert!(mapped.may(&st(0, 0, 0o600), READ));
        assert!(!mapped.may(&st(1000, 100, 0o600), READ));
    }
}
