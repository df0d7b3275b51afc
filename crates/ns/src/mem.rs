//! [`MemFs`]: a tree of files and directories in memory, with a cap on the bytes it holds
//! (`/tmp` of a WASI cell, the upper layer of an in-memory overlay).
//!
//! The cap counts file contents; a write or extension past it fails with
//! [`NsError::NoSpace`] and changes nothing. Handles name their file by path: a file removed
//! (or replaced) while open is seen as such by the handle — there are no orphaned inodes to
//! keep memory alive past the cap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File(Vec<u8>),
}

#[derive(Debug)]
struct Tree {
    nodes: BTreeMap<NsPath, Node>,
    used: u64,
    limit: u64,
    read_only: bool,
}

/// Files in memory, at most `limit` bytes of them.
#[derive(Clone, Debug)]
pub struct MemFs(Arc<Mutex<Tree>>);

impl MemFs {
    /// An empty tree holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(NsPath::root(), Node::Dir);
        MemFs(Arc::new(Mutex::new(Tree {
            nodes,
            used: 0,
            limit,
            read_only: false,
        })))
    }

    /// Refuse every change from now on (what a finished task's `/task` becomes).
    pub fn freeze(&self) {
        self.lock().read_only = true;
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tree {
    fn dir_exists(&self, p: &NsPath) -> Result<()> {
        match self.nodes.get(p) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(NsError::NotADirectory(p.to_string())),
            None => Err(NsError::NotFound(p.to_string())),
        }
    }

    fn writable(&self, p: &NsPath) -> Result<()> {
        if self.read_only {
            return Err(NsError::Denied(p.to_string()));
        }
        Ok(())
    }

    /// Change file `p`'s contents with `f`, keeping the byte count and the cap.
    fn edit(&mut self, p: &NsPath, new_len: u64, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        self.writable(p)?;
        let old = match self.nodes.get(p) {
            Some(Node::File(d)) => d.len() as u64,
            Some(Node::Dir) => return Err(NsError::IsADirectory(p.to_string())),
            None => return Err(NsError::NotFound(p.to_string())),
        };
        let used = (self.used - old).saturating_add(new_len);
        if new_len > old && used > self.limit {
            return Err(NsError::NoSpace {
                path: p.to_string(),
                limit: self.limit,
            });
        }
        if let Some(Node::File(d)) = self.nodes.get_mut(p) {
            f(d);
        }
        self.used = used;
        Ok(())
    }
}

impl FileService for MemFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        let t = self.lock();
        match t.nodes.get(path) {
            Some(Node::Dir) => Ok(Stat {
                kind: Kind::Dir,
                size: 0,
                writable: !t.read_only,
            }),
            Some(Node::File(d)) => Ok(Stat {
                kind: Kind::File,
                size: d.len() as u64,
                writable: !t.read_only,
            }),
            None => Err(NsError::NotFound(path.to_string())),
        }
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        let t = self.lock();
        t.dir_exists(path)?;
        let depth = path.parts().len() + 1;
        Ok(t.nodes
            .range(path.clone()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.parts().len() == depth)
            .map(|(p, n)| Entry {
                name: p.name().unwrap_or_default().to_owned(),
                kind: match n {
                    Node::Dir => Kind::Dir,
                    Node::File(_) => Kind::File,
                },
            })
            .collect())
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let mut t = self.lock();
        match t.nodes.get(path) {
            Some(Node::Dir) => return Err(NsError::IsADirectory(path.to_string())),
            Some(Node::File(_)) if mode.create && mode.exclusive => {
                return Err(NsError::Exists(path.to_string()));
            }
            Some(Node::File(_)) => {}
            None if mode.create && mode.write => {
                t.writable(path)?;
                if path.is_root() {
                    return Err(NsError::IsADirectory(path.to_string()));
                }
                t.dir_exists(&path.parent())?;
                t.nodes.insert(path.clone(), Node::File(Vec::new()));
            }
            None => return Err(NsError::NotFound(path.to_string())),
        }
        if mode.write {
            t.writable(path)?;
        }
        if mode.truncate && mode.write {
            t.edit(path, 0, Vec::clear)?;
        }
        Ok(Box::new(MemHandle {
            fs: self.clone(),
            path: path.clone(),
            mode,
        }))
    }

    fn mkdir(&self, path: &NsPath) -> Result<()> {
        let mut t = self.lock();
        t.writable(path)?;
        if t.nodes.contains_key(path) {
            return Err(NsError::Exists(path.to_string()));
        }
        t.dir_exists(&path.parent())?;
        t.nodes.insert(path.clone(), Node::Dir);
        Ok(())
    }

    fn remove(&self, path: &NsPath) -> Result<()> {
        let mut t = self.lock();
        t.writable(path)?;
        if path.is_root() {
            return Err(NsError::Denied("/".into()));
        }
        match t.nodes.get(path) {
            None => Err(NsError::NotFound(path.to_string())),
            Some(Node::Dir) => {
                let has_children = t
                    .nodes
                    .range(path.clone()..)
                    .nth(1)
                    .is_some_and(|(p, _)| p.starts_with(path));
                if has_children {
                    return Err(NsError::NotEmpty(path.to_string()));
                }
                t.nodes.remove(path);
                Ok(())
            }
            Some(Node::File(d)) => {
                let n = d.len() as u64;
                t.nodes.remove(path);
                t.used -= n;
                Ok(())
            }
        }
    }
}

struct MemHandle {
    fs: MemFs,
    path: NsPath,
    mode: OpenMode,
}

impl Handle for MemHandle {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if !self.mode.read {
            return Err(NsError::Denied(self.path.to_string()));
        }
        let t = self.fs.lock();
        match t.nodes.get(&self.path) {
            Some(Node::File(d)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(d.len());
                let n = buf.len().min(d.len() - start);
                buf[..n].copy_from_slice(&d[start..start + n]);
                Ok(n)
            }
            Some(Node::Dir) => Err(NsError::IsADirectory(self.path.to_string())),
            None => Err(NsError::NotFound(self.path.to_string())),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<usize> {
        if !self.mode.write {
            return Err(NsError::Denied(self.path.to_string()));
        }
        let mut t = self.fs.lock();
        let len = match t.nodes.get(&self.path) {
            Some(Node::File(d)) => d.len() as u64,
            _ => 0,
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| NsError::InvalidPath("offset overflows".into()))?;
        t.edit(&self.path, len.max(end), |d| {
            let (o, e) = (offset as usize, end as usize);
            if d.len() < e {
                d.resize(e, 0);
            }
            d[o..e].copy_from_slice(data);
        })?;
        Ok(data.len())
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        if !self.mode.write {
            return Err(NsError::Denied(self.path.to_string()));
        }
        self.fs
            .lock()
            .edit(&self.path, len, |d| d.resize(len as usize, 0))
    }

    fn size(&self) -> Result<u64> {
        self.fs.stat(&self.path).map(|s| s.size)
    }
}
