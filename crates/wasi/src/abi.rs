//! `wasi_snapshot_preview1`, served from a [`MountTable`].
//!
//! Every pointer and length a module passes is hostile: each is checked against the guest's
//! memory before use ([`slice`], [`slice_mut`]), an out-of-range one is `EFAULT`, never a
//! panic. Paths are resolved relative to a directory descriptor and may not climb above it
//! (`..` past it, or an absolute path, is `ENOTCAPABLE`, as in wasmtime's `cap-std`); below
//! that, the mount table resolves by whole components, and the services it mounts never follow
//! a host symbolic link. The namespace has no links of its own: `path_symlink` and `path_link`
//! are `ENOTSUP`, `path_readlink` is `EINVAL`.
//!
//! One preopen, `/` at fd 3: wasi-libc (and so Rust's std and C programs) map an absolute path
//! to the longest matching preopen, and the mount table then picks the mount. Listing `/` shows
//! the mount points.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker};

use warren_ns::{Handle, Kind, MountTable, NsError, NsPath, OpenMode, Stat};

use crate::{Invocation, Limiter, Policy, Sink, Stop};

// Errno values of preview 1.
const SUCCESS: u16 = 0;
const EACCES: u16 = 2;
const EBADF: u16 = 8;
const EEXIST: u16 = 20;
const EFAULT: u16 = 21;
const EILSEQ: u16 = 25;
const EINVAL: u16 = 28;
const EIO: u16 = 29;
const EISDIR: u16 = 31;
const EMFILE: u16 = 33;
const ENAMETOOLONG: u16 = 37;
const ENOENT: u16 = 44;
const ENOSPC: u16 = 51;
const ENOTDIR: u16 = 54;
const ENOTEMPTY: u16 = 55;
const ENOTSUP: u16 = 58;
const ESPIPE: u16 = 70;
const EXDEV: u16 = 75;
const ENOTCAPABLE: u16 = 76;

// File types.
const FT_CHAR: u8 = 2;
const FT_DIR: u8 = 3;
const FT_FILE: u8 = 4;

const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHTS_ALL: u64 = (1 << 30) - 1;

const OFLAG_CREAT: i32 = 1;
const OFLAG_DIRECTORY: i32 = 2;
const OFLAG_EXCL: i32 = 4;
const OFLAG_TRUNC: i32 = 8;
const FDFLAG_APPEND: i32 = 1;

/// The most iovecs in one call (Linux's `IOV_MAX`).
const IOV_MAX: u32 = 1024;
/// The largest file `path_rename` copies.
const RENAME_MAX: u64 = 64 << 20;
/// The most subscriptions in one `poll_oneoff`.
const POLL_MAX: u32 = 1024;

/// A call's failure: an errno for the module, or a reason to stop the run.
pub(crate) enum Fail {
    Errno(u16),
    Stop(Stop),
}

impl From<u16> for Fail {
    fn from(e: u16) -> Fail {
        Fail::Errno(e)
    }
}

impl From<NsError> for Fail {
    fn from(e: NsError) -> Fail {
        Fail::Errno(match e {
            NsError::NotFound(_) => ENOENT,
            NsError::NotADirectory(_) => ENOTDIR,
            NsError::IsADirectory(_) => EISDIR,
            NsError::Exists(_) => EEXIST,
            NsError::NotEmpty(_) => ENOTEMPTY,
            NsError::Denied(_) => EACCES,
            NsError::NoSpace { .. } => ENOSPC,
            NsError::InvalidPath(m) if m.contains("longer") => ENAMETOOLONG,
            NsError::InvalidPath(_) => EINVAL,
            NsError::Failed(_) => EIO,
        })
    }
}

type R = Result<(), Fail>;

fn ret(r: R) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(i32::from(SUCCESS)),
        Err(Fail::Errno(e)) => Ok(i32::from(e)),
        Err(Fail::Stop(s)) => Err(wasmtime::Error::new(s)),
    }
}

/// An open descriptor.
enum Fd {
    Stdin,
    Out(usize),
    Dir {
        path: NsPath,
    },
    File {
        h: Box<dyn Handle>,
        pos: u64,
        read: bool,
        write: bool,
        append: bool,
    },
}

/// What the cap let through of one output stream.
#[derive(Default)]
pub(crate) struct Out {
    pub(crate) kept: Vec<u8>,
    pub(crate) dropped: u64,
    cap: u64,
}

/// A run's host state.
pub struct Ctx {
    args: Vec<String>,
    env: Vec<String>,
    ns: Arc<MountTable>,
    fds: Vec<Option<Fd>>,
    max_fds: usize,
    stdin: Vec<u8>,
    stdin_pos: usize,
    pub(crate) out: [Out; 2],
    pub(crate) sink: Option<Box<dyn Sink>>,
    pub(crate) limiter: Limiter,
    deadline: Instant,
    started: Instant,
    policy: Policy,
}

impl Ctx {
    pub(crate) fn new(inv: &Invocation, deadline: Instant) -> Ctx {
        Ctx {
            args: inv.args.clone(),
            env: inv.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ns: inv.ns.clone(),
            fds: vec![
                Some(Fd::Stdin),
                Some(Fd::Out(0)),
                Some(Fd::Out(1)),
                Some(Fd::Dir {
                    path: NsPath::root(),
                }),
            ],
            max_fds: inv.limits.fds.max(4),
            stdin: inv.stdin.clone(),
            stdin_pos: 0,
            out: [
                Out {
                    cap: inv.limits.output,
                    ..Out::default()
                },
                Out {
                    cap: inv.limits.output,
                    ..Out::default()
                },
            ],
            sink: None,
            limiter: Limiter {
                memory: inv.limits.memory,
                table_elements: inv.limits.table_elements,
            },
            deadline,
            started: Instant::now(),
            policy: inv.policy,
        }
    }

    fn fd(&mut self, fd: i32) -> Result<&mut Fd, Fail> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get_mut(i))
            .and_then(Option::as_mut)
            .ok_or(Fail::Errno(EBADF))
    }

    fn insert(&mut self, f: Fd) -> Result<u32, Fail> {
        let i = match self.fds.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.fds.len() < self.max_fds => {
                self.fds.push(None);
                self.fds.len() - 1
            }
            None => return Err(EMFILE.into()),
        };
        self.fds[i] = Some(f);
        Ok(i as u32)
    }

    fn write_out(&mut self, which: usize, data: &[u8]) {
        let o = &mut self.out[which];
        let room = o.cap.saturating_sub(o.kept.len() as u64) as usize;
        let take = room.min(data.len());
        o.kept.extend_from_slice(&data[..take]);
        o.dropped += (data.len() - take) as u64;
        if let Some(s) = self.sink.as_mut()
            && take > 0
        {
            if which == 0 {
                s.stdout(&data[..take]);
            } else {
                s.stderr(&data[..take]);
            }
        }
    }

    /// The path `rel` names relative to directory descriptor `fd`: never above it.
    fn resolve(&mut self, fd: i32, rel: &[u8]) -> Result<NsPath, Fail> {
        let Fd::Dir { path } = self.fd(fd)? else {
            return Err(ENOTDIR.into());
        };
        let base = path.clone();
        let rel = std::str::from_utf8(rel).map_err(|_| Fail::Errno(EILSEQ))?;
        if rel.contains('\0') {
            return Err(EINVAL.into());
        }
        if rel.starts_with('/') {
            return Err(ENOTCAPABLE.into());
        }
        let mut depth = 0i64;
        for c in rel.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(ENOTCAPABLE.into());
                    }
                }
                _ => depth += 1,
            }
        }
        Ok(base.join(rel)?)
    }

    fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

// ---- guest memory ----

fn mem<'a>(c: &'a mut Caller<'_, Ctx>) -> Result<(&'a mut [u8], &'a mut Ctx), Fail> {
    let m = c
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or(Fail::Errno(EINVAL))?;
    Ok(m.data_and_store_mut(c))
}

fn range(len_of: usize, ptr: i32, len: u32) -> Result<std::ops::Range<usize>, Fail> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as usize).ok_or(Fail::Errno(EFAULT))?;
    if end > len_of {
        return Err(EFAULT.into());
    }
    Ok(start..end)
}

fn slice(m: &[u8], ptr: i32, len: u32) -> Result<&[u8], Fail> {
    let r = range(m.len(), ptr, len)?;
    Ok(&m[r])
}

fn slice_mut(m: &mut [u8], ptr: i32, len: u32) -> Result<&mut [u8], Fail> {
    let r = range(m.len(), ptr, len)?;
    Ok(&mut m[r])
}

fn put(m: &mut [u8], ptr: i32, bytes: &[u8]) -> R {
    slice_mut(m, ptr, bytes.len() as u32)?.copy_from_slice(bytes);
    Ok(())
}

fn put_u32(m: &mut [u8], ptr: i32, v: u32) -> R {
    put(m, ptr, &v.to_le_bytes())
}

fn put_u64(m: &mut [u8], ptr: i32, v: u64) -> R {
    put(m, ptr, &v.to_le_bytes())
}

fn get_u32(m: &[u8], ptr: i32) -> Result<u32, Fail> {
    let b = slice(m, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The (pointer, length) pairs of an iovec array, each checked to lie in memory.
fn iovecs(m: &[u8], iovs: i32, n: i32) -> Result<Vec<(i32, u32)>, Fail> {
    let n = n as u32;
    if n > IOV_MAX {
        return Err(EINVAL.into());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = (iovs as u32)
            .checked_add(i * 8)
            .ok_or(Fail::Errno(EFAULT))? as i32;
        let ptr = get_u32(m, at)? as i32;
        let len = get_u32(m, at.wrapping_add(4))?;
        range(m.len(), ptr, len)?;
        out.push((ptr, len));
    }
    Ok(out)
}

fn path_arg(m: &[u8], ptr: i32, len: i32) -> Result<Vec<u8>, Fail> {
    let len = len as u32;
    if len as usize > warren_ns::MAX_PATH {
        return Err(ENAMETOOLONG.into());
    }
    Ok(slice(m, ptr, len)?.to_vec())
}

// ---- stat ----

fn ino(p: &NsPath) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

fn filestat(m: &mut [u8], ptr: i32, ino: u64, ft: u8, size: u64) -> R {
    let b = slice_mut(m, ptr, 64)?;
    b.fill(0);
    b[8..16].copy_from_slice(&ino.to_le_bytes());
    b[16] = ft;
    b[24..32].copy_from_slice(&1u64.to_le_bytes());
    b[32..40].copy_from_slice(&size.to_le_bytes());
    Ok(())
}

fn kind_ft(k: Kind) -> u8 {
    match k {
        Kind::Dir => FT_DIR,
        Kind::File => FT_FILE,
    }
}

fn stat_of(ns: &MountTable, p: &NsPath) -> Result<Stat, Fail> {
    Ok(ns.stat(&p.to_string())?)
}

// ---- the functions ----

fn args_sizes(list: &[String], m: &mut [u8], count: i32, size: i32) -> R {
    put_u32(m, count, list.len() as u32)?;
    let total: usize = list.iter().map(|a| a.len() + 1).sum();
    put_u32(m, size, total as u32)
}

fn args_write(list: &[String], m: &mut [u8], ptrs: i32, buf: i32) -> R {
    let mut at = buf as u32;
    for (i, a) in list.iter().enumerate() {
        put_u32(m, ptrs.wrapping_add((i * 4) as i32), at)?;
        put(m, at as i32, a.as_bytes())?;
        put(m, (at as usize + a.len()) as i32, &[0])?;
        at = at
            .checked_add(a.len() as u32 + 1)
            .ok_or(Fail::Errno(EFAULT))?;
    }
    Ok(())
}

fn clock_time(c: &mut Caller<'_, Ctx>, id: i32, ptr: i32) -> R {
    let (m, ctx) = mem(c)?;
    if !ctx.policy.clock {
        return Err(ENOTCAPABLE.into());
    }
    let ns = match id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        1 => ctx.started.elapsed().as_nanos() as u64,
        _ => return Err(EINVAL.into()),
    };
    put_u64(m, ptr, ns)
}

fn fd_write(c: &mut Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, at: Option<u64>, nw: i32) -> R {
    let (m, ctx) = mem(c)?;
    let vecs = iovecs(m, iovs, n)?;
    let mut total: u64 = 0;
    match ctx.fd(fd)? {
        Fd::Out(which) => {
            if at.is_some() {
                return Err(ESPIPE.into());
            }
            let which = *which;
            for (p, l) in &vecs {
                ctx.write_out(which, slice(m, *p, *l)?);
                total += u64::from(*l);
            }
        }
        Fd::File {
            h,
            pos,
            write,
            append,
            ..
        } => {
            if !*write {
                return Err(EBADF.into());
            }
            let mut off = match at {
                Some(o) => o,
                None if *append => h.size()?,
                None => *pos,
            };
            for (p, l) in &vecs {
                let n = h.write_at(off, slice(m, *p, *l)?)?;
                off += n as u64;
                total += n as u64;
            }
            if at.is_none() {
                *pos = off;
            }
        }
        Fd::Stdin => return Err(EBADF.into()),
        Fd::Dir { .. } => return Err(EISDIR.into()),
    }
    put_u32(m, nw, total as u32)
}

fn fd_read(c: &mut Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, at: Option<u64>, nr: i32) -> R {
    let (m, ctx) = mem(c)?;
    let vecs = iovecs(m, iovs, n)?;
    let mut total: usize = 0;
    if ctx.past_deadline() {
        return Err(Fail::Stop(Stop::Deadline));
    }
    let stdin_pos = ctx.stdin_pos;
    match ctx.fd(fd)? {
        Fd::Stdin => {
            if at.is_some() {
                return Err(ESPIPE.into());
            }
            let mut pos = stdin_pos;
            for (p, l) in &vecs {
                let dst = slice_mut(m, *p, *l)?;
                let src = &ctx.stdin[pos.min(ctx.stdin.len())..];
                let k = dst.len().min(src.len());
                dst[..k].copy_from_slice(&src[..k]);
                pos += k;
                total += k;
                if k < dst.len() {
                    break;
                }
            }
            ctx.stdin_pos = pos;
        }
        Fd::File { h, pos, read, .. } => {
            if !*read {
                return Err(EBADF.into());
            }
            let mut off = at.unwrap_or(*pos);
            for (p, l) in &vecs {
                let dst = slice_mut(m, *p, *l)?;
                let k = h.read_at(off, dst)?;
                off += k as u64;
                total += k;
                if k < dst.len() {
                    break;
                }
            }
            if at.is_none() {
                *pos = off;
            }
        }
        Fd::Out(_) => return Err(EBADF.into()),
        Fd::Dir { .. } => return Err(EISDIR.into()),
    }
    put_u32(m, nr, total as u32)
}

fn fd_seek(c: &mut Caller<'_, Ctx>, fd: i32, off: i64, whence: i32, out: i32) -> R {
    let (m, ctx) = mem(c)?;
    let new = match ctx.fd(fd)? {
        Fd::File { h, pos, .. } => {
            let base = match whence {
                0 => 0i128,
                1 => i128::from(*pos),
                2 => i128::from(h.size()?),
                _ => return Err(EINVAL.into()),
            };
            let n = base + i128::from(off);
            if n < 0 || n > i128::from(i64::MAX) {
                return Err(EINVAL.into());
            }
            *pos = n as u64;
            *pos
        }
        Fd::Dir { .. } => return Err(EISDIR.into()),
        _ => return Err(ESPIPE.into()),
    };
    put_u64(m, out, new)
}

fn fd_fdstat(c: &mut Caller<'_, Ctx>, fd: i32, out: i32) -> R {
    let (m, ctx) = mem(c)?;
    let (ft, flags) = match ctx.fd(fd)? {
        Fd::Stdin | Fd::Out(_) => (FT_CHAR, 0u16),
        Fd::Dir { .. } => (FT_DIR, 0),
        Fd::File { append, .. } => (FT_FILE, u16::from(*append)),
    };
    let b = slice_mut(m, out, 24)?;
    b.fill(0);
    b[0] = ft;
    b[2..4].copy_from_slice(&flags.to_le_bytes());
    b[8..16].copy_from_slice(&RIGHTS_ALL.to_le_bytes());
    b[16..24].copy_from_slice(&RIGHTS_ALL.to_le_bytes());
    Ok(())
}

fn fd_filestat(c: &mut Caller<'_, Ctx>, fd: i32, out: i32) -> R {
    let (m, ctx) = mem(c)?;
    let (ft, size, i) = match ctx.fd(fd)? {
        Fd::Stdin | Fd::Out(_) => (FT_CHAR, 0, fd as u64),
        Fd::Dir { path } => (FT_DIR, 0, ino(path)),
        Fd::File { h, .. } => (FT_FILE, h.size()?, 0x8000_0000 | fd as u64),
    };
    filestat(m, out, i, ft, size)
}

fn fd_readdir(c: &mut Caller<'_, Ctx>, fd: i32, buf: i32, len: i32, cookie: i64, used: i32) -> R {
    let (m, ctx) = mem(c)?;
    let Fd::Dir { path } = ctx.fd(fd)? else {
        return Err(ENOTDIR.into());
    };
    let path = path.clone();
    let entries = ctx.ns.list(&path.to_string())?;
    let mut all: Vec<(String, u8, u64)> = vec![
        (".".into(), FT_DIR, ino(&path)),
        ("..".into(), FT_DIR, ino(&path.parent())),
    ];
    for e in entries {
        let i = path.child(&e.name).map(|p| ino(&p)).unwrap_or(0);
        all.push((e.name, kind_ft(e.kind), i));
    }
    let out = slice_mut(m, buf, len as u32)?;
    let mut w = 0usize;
    for (idx, (name, ft, i)) in all.iter().enumerate().skip(cookie.max(0) as usize) {
        let mut rec = Vec::with_capacity(24 + name.len());
        rec.extend_from_slice(&(idx as u64 + 1).to_le_bytes());
        rec.extend_from_slice(&i.to_le_bytes());
        rec.extend_from_slice(&(name.len() as u32).to_le_bytes());
        rec.extend_from_slice(&[*ft, 0, 0, 0]);
        rec.extend_from_slice(name.as_bytes());
        let k = rec.len().min(out.len() - w);
        out[w..w + k].copy_from_slice(&rec[..k]);
        w += k;
        if w == out.len() {
            break;
        }
    }
    put_u32(m, used, w as u32)
}

#[allow(clippy::too_many_arguments)]
fn path_open(
    c: &mut Caller<'_, Ctx>,
    fd: i32,
    p: i32,
    plen: i32,
    oflags: i32,
    rights: i64,
    fdflags: i32,
    out: i32,
) -> R {
    let (m, ctx) = mem(c)?;
    let rel = path_arg(m, p, plen)?;
    let path = ctx.resolve(fd, &rel)?;
    let rights = rights as u64;
    let mut read = rights & RIGHT_FD_READ != 0;
    let write = rights & RIGHT_FD_WRITE != 0;
    if !read && !write {
        read = true;
    }
    let existing = ctx.ns.stat(&path.to_string());
    if oflags & OFLAG_DIRECTORY != 0 {
        if oflags & (OFLAG_CREAT | OFLAG_TRUNC) != 0 {
            return Err(EINVAL.into());
        }
        return match existing {
            Ok(s) if s.kind == Kind::Dir => {
                let n = ctx.insert(Fd::Dir { path })?;
                put_u32(m, out, n)
            }
            Ok(_) => Err(ENOTDIR.into()),
            Err(e) => Err(e.into()),
        };
    }
    if let Ok(s) = &existing
        && s.kind == Kind::Dir
    {
        if write || oflags & OFLAG_CREAT != 0 {
            return Err(if oflags & OFLAG_EXCL != 0 {
                EEXIST
            } else {
                EISDIR
            }
            .into());
        }
        let n = ctx.insert(Fd::Dir { path })?;
        return put_u32(m, out, n);
    }
    let mode = OpenMode {
        read,
        write,
        create: oflags & OFLAG_CREAT != 0,
        exclusive: oflags & OFLAG_EXCL != 0,
        truncate: oflags & OFLAG_TRUNC != 0,
    };
    if (mode.create || mode.truncate) && !write {
        return Err(EINVAL.into());
    }
    let h = ctx.ns.open(&path.to_string(), mode)?;
    let n = ctx.insert(Fd::File {
        h,
        pos: 0,
        read,
        write,
        append: fdflags & FDFLAG_APPEND != 0,
    })?;
    put_u32(m, out, n)
}

fn path_op(
    c: &mut Caller<'_, Ctx>,
    fd: i32,
    p: i32,
    plen: i32,
) -> Result<(NsPath, Arc<MountTable>), Fail> {
    let (m, ctx) = mem(c)?;
    let rel = path_arg(m, p, plen)?;
    let path = ctx.resolve(fd, &rel)?;
    Ok((path, ctx.ns.clone()))
}

fn path_filestat(c: &mut Caller<'_, Ctx>, fd: i32, p: i32, plen: i32, out: i32) -> R {
    let (path, ns) = path_op(c, fd, p, plen)?;
    let s = stat_of(&ns, &path)?;
    let (m, _) = mem(c)?;
    filestat(m, out, ino(&path), kind_ft(s.kind), s.size)
}

fn remove(c: &mut Caller<'_, Ctx>, fd: i32, p: i32, plen: i32, dir: bool) -> R {
    let (path, ns) = path_op(c, fd, p, plen)?;
    let s = stat_of(&ns, &path)?;
    match (s.kind, dir) {
        (Kind::Dir, false) => return Err(EISDIR.into()),
        (Kind::File, true) => return Err(ENOTDIR.into()),
        _ => {}
    }
    Ok(ns.remove(&path.to_string())?)
}

#[allow(clippy::too_many_arguments)]
fn path_rename(
    c: &mut Caller<'_, Ctx>,
    fd: i32,
    p: i32,
    plen: i32,
    fd2: i32,
    q: i32,
    qlen: i32,
) -> R {
    let (from, ns) = path_op(c, fd, p, plen)?;
    let (to, _) = path_op(c, fd2, q, qlen)?;
    let (sa, _) = ns.resolve_path(&from)?;
    let (sb, _) = ns.resolve_path(&to)?;
    if !Arc::ptr_eq(&sa, &sb) {
        return Err(EXDEV.into());
    }
    if stat_of(&ns, &from)?.kind == Kind::Dir {
        return Err(ENOTSUP.into());
    }
    if from == to {
        return Ok(());
    }
    // Services have no rename: a copy and a remove (not atomic; a file past RENAME_MAX is
    // refused rather than half-copied).
    let data = ns
        .read(&from.to_string(), RENAME_MAX)
        .map_err(|e| match e {
            NsError::NoSpace { .. } => Fail::Errno(ENOTSUP),
            e => e.into(),
        })?;
    ns.write(&to.to_string(), &data)?;
    Ok(ns.remove(&from.to_string())?)
}

fn poll_oneoff(c: &mut Caller<'_, Ctx>, subs: i32, events: i32, n: i32, nout: i32) -> R {
    let (m, ctx) = mem(c)?;
    let n = n as u32;
    if n == 0 || n > POLL_MAX {
        return Err(EINVAL.into());
    }
    let mut ready: Vec<[u8; 32]> = Vec::new();
    let mut sleep: Option<(Duration, Vec<u64>)> = None;
    for i in 0..n {
        let at = (subs as u32)
            .checked_add(i * 48)
            .ok_or(Fail::Errno(EFAULT))? as i32;
        let s = slice(m, at, 48)?;
        let userdata = u64::from_le_bytes(s[0..8].try_into().unwrap_or([0; 8]));
        let tag = s[8];
        let mut ev = [0u8; 32];
        ev[0..8].copy_from_slice(&userdata.to_le_bytes());
        ev[10] = tag;
        match tag {
            0 => {
                let id = u32::from_le_bytes(s[16..20].try_into().unwrap_or([0; 4]));
                let timeout = u64::from_le_bytes(s[24..32].try_into().unwrap_or([0; 8]));
                let flags = u16::from_le_bytes(s[40..42].try_into().unwrap_or([0; 2]));
                let d = if flags & 1 != 0 {
                    // Absolute: against the clock it names (which the policy must allow).
                    if !ctx.policy.clock {
                        return Err(ENOTCAPABLE.into());
                    }
                    let now = match id {
                        0 => SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0),
                        1 => ctx.started.elapsed().as_nanos() as u64,
                        _ => return Err(EINVAL.into()),
                    };
                    Duration::from_nanos(timeout.saturating_sub(now))
                } else {
                    Duration::from_nanos(timeout)
                };
                match &mut sleep {
                    Some((best, who)) if d < *best => {
                        *best = d;
                        *who = vec![userdata];
                    }
                    Some((best, who)) if d == *best => who.push(userdata),
                    Some(_) => {}
                    None => sleep = Some((d, vec![userdata])),
                }
            }
            1 | 2 => {
                // Every descriptor here is always ready: report it at once.
                let fd = u32::from_le_bytes(s[16..20].try_into().unwrap_or([0; 4]));
                let avail = match ctx.fd(fd as i32) {
                    Ok(Fd::Stdin) if tag == 1 => {
                        (ctx.stdin.len() - ctx.stdin_pos.min(ctx.stdin.len())) as u64
                    }
                    Ok(_) => 0,
                    Err(_) => {
                        ev[8..10].copy_from_slice(&EBADF.to_le_bytes());
                        0
                    }
                };
                ev[16..24].copy_from_slice(&avail.to_le_bytes());
                ready.push(ev);
            }
            _ => return Err(EINVAL.into()),
        }
    }
    if ready.is_empty()
        && let Some((d, who)) = sleep
    {
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        if d >= left {
            std::thread::sleep(left);
            return Err(Fail::Stop(Stop::Deadline));
        }
        std::thread::sleep(d);
        for u in who {
            let mut ev = [0u8; 32];
            ev[0..8].copy_from_slice(&u.to_le_bytes());
            ready.push(ev);
        }
    }
    for (i, ev) in ready.iter().enumerate() {
        put(m, events.wrapping_add((i * 32) as i32), ev)?;
    }
    put_u32(m, nout, ready.len() as u32)
}

fn random(c: &mut Caller<'_, Ctx>, buf: i32, len: i32) -> R {
    let (m, ctx) = mem(c)?;
    if !ctx.policy.random {
        return Err(ENOTCAPABLE.into());
    }
    let dst = slice_mut(m, buf, len as u32)?;
    let mut filled = 0;
    while filled < dst.len() {
        let rest = &mut dst[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, a live mutable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(EIO.into());
        }
        filled += n as usize;
    }
    Ok(())
}

/// Define every preview-1 function in `linker`.
pub(crate) fn link(l: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    l.func_wrap(
        M,
        "args_sizes_get",
        |mut c: Caller<'_, Ctx>, a: i32, b: i32| {
            ret(mem(&mut c).and_then(|(m, x)| args_sizes(&x.args, m, a, b)))
        },
    )?;
    l.func_wrap(M, "args_get", |mut c: Caller<'_, Ctx>, a: i32, b: i32| {
        ret(mem(&mut c).and_then(|(m, x)| args_write(&x.args, m, a, b)))
    })?;
    l.func_wrap(
        M,
        "environ_sizes_get",
        |mut c: Caller<'_, Ctx>, a: i32, b: i32| {
            ret(mem(&mut c).and_then(|(m, x)| args_sizes(&x.env, m, a, b)))
        },
    )?;
    l.func_wrap(
        M,
        "environ_get",
        |mut c: Caller<'_, Ctx>, a: i32, b: i32| {
            ret(mem(&mut c).and_then(|(m, x)| args_write(&x.env, m, a, b)))
        },
    )?;
    l.func_wrap(
        M,
        "clock_res_get",
        |mut c: Caller<'_, Ctx>, id: i32, p: i32| {
            ret(mem(&mut c).and_then(|(m, x)| {
                if !x.policy.clock {
                    return Err(ENOTCAPABLE.into());
                }
                if !(0..=1).contains(&id) {
                    return Err(EINVAL.into());
                }
                put_u64(m, p, 1)
            }))
        },
    )?;
    l.func_wrap(
        M,
        "clock_time_get",
        |mut c: Caller<'_, Ctx>, id: i32, _prec: i64, p: i32| ret(clock_time(&mut c, id, p)),
    )?;
    l.func_wrap(
        M,
        "fd_write",
        |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, nw: i32| {
            ret(fd_write(&mut c, fd, iovs, n, None, nw))
        },
    )?;
    l.func_wrap(
        M,
        "fd_pwrite",
        |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, off: i64, nw: i32| {
            ret(fd_write(&mut c, fd, iovs, n, Some(off as u64), nw))
        },
    )?;
    l.func_wrap(
        M,
        "fd_read",
        |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, nr: i32| {
            ret(fd_read(&mut c, fd, iovs, n, None, nr))
        },
    )?;
    l.func_wrap(
        M,
        "fd_pread",
        |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, off: i64, nr: i32| {
            ret(fd_read(&mut c, fd, iovs, n, Some(off as u64), nr))
        },
    )?;
    l.func_wrap(
        M,
        "fd_seek",
        |mut c: Caller<'_, Ctx>, fd: i32, off: i64, wh: i32, p: i32| {
            ret(fd_seek(&mut c, fd, off, wh, p))
        },
    )?;
    l.func_wrap(M, "fd_tell", |mut c: Caller<'_, Ctx>, fd: i32, p: i32| {
        ret(fd_seek(&mut c, fd, 0, 1, p))
    })?;
    l.func_wrap(M, "fd_close", |mut c: Caller<'_, Ctx>, fd: i32| {
        let x = c.data_mut();
        ret(x.fd(fd).map(|_| ()).map(|()| {
            x.fds[fd as usize] = None;
        }))
    })?;
    l.func_wrap(
        M,
        "fd_renumber",
        |mut c: Caller<'_, Ctx>, from: i32, to: i32| {
            let x = c.data_mut();
            ret((|| {
                x.fd(from)?;
                x.fd(to)?;
                let f = x.fds[from as usize].take();
                x.fds[to as usize] = f;
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        M,
        "fd_fdstat_get",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32| ret(fd_fdstat(&mut c, fd, p)),
    )?;
    l.func_wrap(
        M,
        "fd_fdstat_set_flags",
        |mut c: Caller<'_, Ctx>, fd: i32, fl: i32| {
            ret(match c.data_mut().fd(fd) {
                Ok(Fd::File { append, .. }) => {
                    *append = fl & FDFLAG_APPEND != 0;
                    Ok(())
                }
                Ok(_) => Err(ENOTSUP.into()),
                Err(e) => Err(e),
            })
        },
    )?;
    l.func_wrap(
        M,
        "fd_fdstat_set_rights",
        |mut c: Caller<'_, Ctx>, fd: i32, _b: i64, _i: i64| {
            ret(c.data_mut().fd(fd).and(Err(ENOTSUP.into())))
        },
    )?;
    l.func_wrap(
        M,
        "fd_filestat_get",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32| ret(fd_filestat(&mut c, fd, p)),
    )?;
    l.func_wrap(
        M,
        "fd_filestat_set_size",
        |mut c: Caller<'_, Ctx>, fd: i32, size: i64| {
            ret(match c.data_mut().fd(fd) {
                Ok(Fd::File { h, write: true, .. }) => h.set_len(size as u64).map_err(Fail::from),
                Ok(Fd::File { .. }) => Err(EBADF.into()),
                Ok(Fd::Dir { .. }) => Err(EISDIR.into()),
                Ok(_) => Err(EINVAL.into()),
                Err(e) => Err(e),
            })
        },
    )?;
    l.func_wrap(
        M,
        "fd_filestat_set_times",
        |mut c: Caller<'_, Ctx>, fd: i32, _a: i64, _m: i64, _f: i32| {
            ret(c.data_mut().fd(fd).and(Err(ENOTSUP.into())))
        },
    )?;
    l.func_wrap(
        M,
        "fd_advise",
        |mut c: Caller<'_, Ctx>, fd: i32, _o: i64, _l: i64, _a: i32| {
            ret(c.data_mut().fd(fd).map(|_| ()))
        },
    )?;
    l.func_wrap(
        M,
        "fd_allocate",
        |mut c: Caller<'_, Ctx>, fd: i32, _o: i64, _l: i64| {
            ret(c.data_mut().fd(fd).and(Err(ENOTSUP.into())))
        },
    )?;
    for name in ["fd_sync", "fd_datasync"] {
        // Every service is synchronous: a write has landed when it returns.
        l.func_wrap(M, name, |mut c: Caller<'_, Ctx>, fd: i32| {
            ret(c.data_mut().fd(fd).map(|_| ()))
        })?;
    }
    l.func_wrap(
        M,
        "fd_prestat_get",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32| {
            ret(mem(&mut c).and_then(|(m, _)| {
                if fd != 3 {
                    return Err(EBADF.into());
                }
                put(m, p, &[0, 0, 0, 0])?;
                put_u32(m, p.wrapping_add(4), 1)
            }))
        },
    )?;
    l.func_wrap(
        M,
        "fd_prestat_dir_name",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, len: i32| {
            ret(mem(&mut c).and_then(|(m, _)| {
                if fd != 3 {
                    return Err(EBADF.into());
                }
                if len < 1 {
                    return Err(ENAMETOOLONG.into());
                }
                put(m, p, b"/")
            }))
        },
    )?;
    l.func_wrap(
        M,
        "fd_readdir",
        |mut c: Caller<'_, Ctx>, fd: i32, buf: i32, len: i32, cookie: i64, used: i32| {
            ret(fd_readdir(&mut c, fd, buf, len, cookie, used))
        },
    )?;
    l.func_wrap(
        M,
        "path_open",
        |mut c: Caller<'_, Ctx>,
         fd: i32,
         _dirflags: i32,
         p: i32,
         plen: i32,
         oflags: i32,
         rights: i64,
         _inherit: i64,
         fdflags: i32,
         out: i32| { ret(path_open(&mut c, fd, p, plen, oflags, rights, fdflags, out)) },
    )?;
    l.func_wrap(
        M,
        "path_filestat_get",
        |mut c: Caller<'_, Ctx>, fd: i32, _fl: i32, p: i32, plen: i32, out: i32| {
            ret(path_filestat(&mut c, fd, p, plen, out))
        },
    )?;
    l.func_wrap(
        M,
        "path_filestat_set_times",
        |mut c: Caller<'_, Ctx>,
         fd: i32,
         _fl: i32,
         p: i32,
         plen: i32,
         _a: i64,
         _m: i64,
         _f: i32| { ret(path_op(&mut c, fd, p, plen).and(Err(ENOTSUP.into()))) },
    )?;
    l.func_wrap(
        M,
        "path_create_directory",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, plen: i32| {
            ret(path_op(&mut c, fd, p, plen)
                .and_then(|(path, ns)| Ok(ns.mkdir(&path.to_string())?)))
        },
    )?;
    l.func_wrap(
        M,
        "path_remove_directory",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, plen: i32| ret(remove(&mut c, fd, p, plen, true)),
    )?;
    l.func_wrap(
        M,
        "path_unlink_file",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, plen: i32| {
            ret(remove(&mut c, fd, p, plen, false))
        },
    )?;
    l.func_wrap(
        M,
        "path_rename",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, plen: i32, fd2: i32, q: i32, qlen: i32| {
            ret(path_rename(&mut c, fd, p, plen, fd2, q, qlen))
        },
    )?;
    l.func_wrap(
        M,
        "path_readlink",
        |mut c: Caller<'_, Ctx>, fd: i32, p: i32, plen: i32, _b: i32, _bl: i32, _u: i32| {
            // Nothing in a namespace is a link: an existing path is "not a link".
            ret(path_op(&mut c, fd, p, plen)
                .and_then(|(path, ns)| stat_of(&ns, &path))
                .and(Err(EINVAL.into())))
        },
    )?;
    l.func_wrap(
        M,
        "path_symlink",
        |mut c: Caller<'_, Ctx>, _o: i32, _ol: i32, fd: i32, p: i32, plen: i32| {
            ret(path_op(&mut c, fd, p, plen).and(Err(ENOTSUP.into())))
        },
    )?;
    l.func_wrap(
        M,
        "path_link",
        |mut c: Caller<'_, Ctx>,
         fd: i32,
         _fl: i32,
         p: i32,
         plen: i32,
         _fd2: i32,
         _q: i32,
         _ql: i32| { ret(path_op(&mut c, fd, p, plen).and(Err(ENOTSUP.into()))) },
    )?;
    l.func_wrap(
        M,
        "poll_oneoff",
        |mut c: Caller<'_, Ctx>, s: i32, e: i32, n: i32, out: i32| {
            ret(poll_oneoff(&mut c, s, e, n, out))
        },
    )?;
    l.func_wrap(
        M,
        "proc_exit",
        |_c: Caller<'_, Ctx>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Stop::Exit(code)))
        },
    )?;
    l.func_wrap(M, "proc_raise", |_c: Caller<'_, Ctx>, _sig: i32| -> i32 {
        i32::from(ENOTSUP)
    })?;
    l.func_wrap(M, "sched_yield", |_c: Caller<'_, Ctx>| -> i32 { 0 })?;
    l.func_wrap(M, "random_get", |mut c: Caller<'_, Ctx>, b: i32, n: i32| {
        ret(random(&mut c, b, n))
    })?;
    // No sockets exist in a cell: the network is reached only through /cap/http.
    l.func_wrap(
        M,
        "sock_accept",
        |_c: Caller<'_, Ctx>, _fd: i32, _f: i32, _o: i32| -> i32 { i32::from(ENOTCAPABLE) },
    )?;
    l.func_wrap(
        M,
        "sock_recv",
        |_c: Caller<'_, Ctx>, _fd: i32, _a: i32, _b: i32, _f: i32, _o: i32, _of: i32| -> i32 {
            i32::from(ENOTCAPABLE)
        },
    )?;
    l.func_wrap(
        M,
        "sock_send",
        |_c: Caller<'_, Ctx>, _fd: i32, _a: i32, _b: i32, _f: i32, _o: i32| -> i32 {
            i32::from(ENOTCAPABLE)
        },
    )?;
    l.func_wrap(
        M,
        "sock_shutdown",
        |_c: Caller<'_, Ctx>, _fd: i32, _h: i32| -> i32 { i32::from(ENOTCAPABLE) },
    )?;
    Ok(())
}
