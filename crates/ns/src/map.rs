//! [`MapFs`]: a fixed set of read-only files (a task's `/task`: its goal, its inputs).
//! Directories are implied by the files' paths.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

/// Read-only files given up front.
#[derive(Clone, Debug, Default)]
pub struct MapFs {
    files: BTreeMap<NsPath, Arc<[u8]>>,
}

impl MapFs {
    /// No files.
    pub fn new() -> Self {
        MapFs::default()
    }

    /// Add file `path` (absolute within the service) with `data`.
    pub fn with(mut self, path: &str, data: impl Into<Vec<u8>>) -> Result<Self> {
        let p = NsPath::parse(path)?;
        if p.is_root() {
            return Err(NsError::IsADirectory("/".into()));
        }
        if self
            .files
            .keys()
            .any(|f| f.starts_with(&p) || p.starts_with(f))
        {
            return Err(NsError::Exists(p.to_string()));
        }
        self.files.insert(p, Arc::from(data.into()));
        Ok(self)
    }

    fn is_dir(&self, p: &NsPath) -> bool {
        self.files
            .keys()
            .any(|f| f.parts().len() > p.parts().len() && f.starts_with(p))
    }
}

impl FileService for MapFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        if let Some(d) = self.files.get(path) {
            return Ok(Stat {
                kind: Kind::File,
                size: d.len() as u64,
                writable: false,
            });
        }
        if path.is_root() || self.is_dir(path) {
            return Ok(Stat {
                kind: Kind::Dir,
                size: 0,
                writable: false,
            });
        }
        Err(NsError::NotFound(path.to_string()))
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        if self.files.contains_key(path) {
            return Err(NsError::NotADirectory(path.to_string()));
        }
        if !path.is_root() && !self.is_dir(path) {
            return Err(NsError::NotFound(path.to_string()));
        }
        let depth = path.parts().len();
        let mut out: Vec<Entry> = self
            .files
            .keys()
            .filter(|f| f.parts().len() > depth && f.starts_with(path))
            .map(|f| Entry {
                name: f.parts()[depth].clone(),
                kind: if f.parts().len() == depth + 1 {
                    Kind::File
                } else {
                    Kind::Dir
                },
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        let Some(data) = self.files.get(path) else {
            return Err(if path.is_root() || self.is_dir(path) {
                NsError::IsADirectory(path.to_string())
            } else if mode.create {
                NsError::Denied(path.to_string())
            } else {
                NsError::NotFound(path.to_string())
            });
        };
        if mode.write || mode.truncate {
            return Err(NsError::Denied(path.to_string()));
        }
        Ok(Box::new(Bytes(Arc::clone(data))))
    }
}

/// A read-only handle on fixed bytes (also what computed files hand out).
pub(crate) struct Bytes(pub(crate) Arc<[u8]>);

impl Handle for Bytes {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<usize> {
        Err(NsError::Denied("read-only file".into()))
    }

    fn set_len(&mut self, _: u64) -> Result<()> {
        Err(NsError::Denied("read-only file".into()))
    }

    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}
