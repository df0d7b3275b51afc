//! [`FuncFs`]: files whose content is computed by the host — a capability's interface.
//!
//! Two kinds of file, in the service's root:
//!
//! - **computed** (`computed(name, f)`): each open calls `f` once and the handle reads that
//!   snapshot (a status, a clock the policy allows);
//! - **request/response** (`request(name, limit, f)`): writes on a handle collect a request
//!   (at most `limit` bytes: more is [`NsError::NoSpace`], and `f` is not called); the first
//!   read after them calls `f` with the request, on the reading thread — answered within the
//!   call, no copy-out step or polling in between — and the handle then reads the response
//!   from offset 0 (seek back to the start after writing, as with Plan 9's ctl files).
//!   Each handle is one exchange; `f` sees every request whole and decides, like any host
//!   code, that it is hostile.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::map::Bytes;
use crate::{Entry, FileService, Handle, Kind, NsError, NsPath, OpenMode, Result, Stat};

type Compute = Arc<dyn Fn() -> Result<Vec<u8>> + Send + Sync>;
type Answer = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync>;

#[derive(Clone)]
enum Func {
    Computed(Compute),
    Request { limit: usize, answer: Answer },
}

/// Files served by functions.
#[derive(Clone, Default)]
pub struct FuncFs {
    files: BTreeMap<String, Func>,
}

impl FuncFs {
    /// No files.
    pub fn new() -> Self {
        FuncFs::default()
    }

    /// A read-only file computed at each open.
    pub fn computed(
        mut self,
        name: &str,
        f: impl Fn() -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Self> {
        NsPath::root().child(name)?;
        self.files
            .insert(name.to_owned(), Func::Computed(Arc::new(f)));
        Ok(self)
    }

    /// A request/response file: write at most `limit` bytes, read `f`'s answer.
    pub fn request(
        mut self,
        name: &str,
        limit: usize,
        f: impl Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Self> {
        NsPath::root().child(name)?;
        self.files.insert(
            name.to_owned(),
            Func::Request {
                limit,
                answer: Arc::new(f),
            },
        );
        Ok(self)
    }

    fn get(&self, path: &NsPath) -> Result<&Func> {
        match path.parts() {
            [name] => self
                .files
                .get(name)
                .ok_or_else(|| NsError::NotFound(path.to_string())),
            [] => Err(NsError::IsADirectory("/".into())),
            _ => Err(NsError::NotFound(path.to_string())),
        }
    }
}

impl FileService for FuncFs {
    fn stat(&self, path: &NsPath) -> Result<Stat> {
        if path.is_root() {
            return Ok(Stat {
                kind: Kind::Dir,
                size: 0,
                writable: false,
            });
        }
        let f = self.get(path)?;
        Ok(Stat {
            kind: Kind::File,
            size: 0,
            writable: matches!(f, Func::Request { .. }),
        })
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>> {
        if !path.is_root() {
            self.get(path)?;
            return Err(NsError::NotADirectory(path.to_string()));
        }
        Ok(self
            .files
            .keys()
            .map(|n| Entry {
                name: n.clone(),
                kind: Kind::File,
            })
            .collect())
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<Box<dyn Handle>> {
        match self.get(path)?.clone() {
            Func::Computed(f) => {
                if mode.write || mode.truncate {
                    return Err(NsError::Denied(path.to_string()));
                }
                Ok(Box::new(Bytes(Arc::from(f()?))))
            }
            Func::Request { limit, answer } => Ok(Box::new(Exchange {
                path: path.to_string(),
                limit,
                answer,
                request: Vec::new(),
                response: None,
            })),
        }
    }
}

/// One request and its response.
struct Exchange {
    path: String,
    limit: usize,
    answer: Answer,
    request: Vec<u8>,
    response: Option<Arc<[u8]>>,
}

impl Handle for Exchange {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if self.response.is_none() {
            let r = (self.answer)(&self.request)?;
            self.response = Some(Arc::from(r));
        }
        let r = self
            .response
            .clone()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        Bytes(r).read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<usize> {
        if self.response.is_some() {
            return Err(NsError::Denied(format!(
                "{}: answered already (open it again for another request)",
                self.path
            )));
        }
        let end = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
            .filter(|e| *e <= self.limit)
            .ok_or_else(|| NsError::NoSpace {
                path: self.path.clone(),
                limit: self.limit as u64,
            })?;
        if self.request.len() < end {
            self.request.resize(end, 0);
        }
        self.request[end - data.len()..end].copy_from_slice(data);
        Ok(data.len())
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        if self.response.is_some() || len > self.limit as u64 {
            return Err(NsError::Denied(self.path.clone()));
        }
        self.request.resize(len as usize, 0);
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self
            .response
            .as_ref()
            .map_or(self.request.len(), |r| r.len()) as u64)
    }
}
