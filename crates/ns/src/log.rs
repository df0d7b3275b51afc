//! [`LogFs`]: append-only files (a cell's `/logs`): every write lands at the end, whatever
//! its offset; nothing is cut, rewritten or removed. Capped like [`MemFs`].

use crate::mem::MemFs;
use crate::{Entry, FileService, Handle, NsError, NsPath, OpenMode, Result, Stat};

/// Append-only files in memory, at most `limit` bytes.
#[derive(Clone, Debug)]
pub struct LogFs(MemFs);

impl LogFs {
    /// Empty, holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        LogFs(MemFs::new(limit))
    }
}

impl FileService for LogFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        self.0.stat(path)
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        self.0.list(path)
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        if mode.truncate && self.0.stat(path).is_ok_and(|s| s.size > 0) {
            return Err(NsError::Denied(format!("{path}: append-only")));
        }
        let inner = self.0.open(path, mode)?;
        Ok(Box::new(Append {
            inner,
            path: path.to_string(),
        }))
    }

    fn mkdir(&self, path: &NsPath) -> Result<()> {
        self.0.mkdir(path)
    }
}

struct Append {
    inner: Box<dyn Handle>,
    path: String,
}

impl Handle for Append {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&mut self, _offset: u64, data: &[u8]) -> Result<usize> {
        let end = self.inner.size()?;
        self.inner.write_at(end, data)
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        if len == self.inner.size()? {
            return Ok(());
        }
        Err(NsError::Denied(format!("{}: append-only", self.path)))
    }

    fn size(&self) -> Result<u64> {
        self.inner.size()
    }
}
