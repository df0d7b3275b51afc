//! Indexing a workspace: walk it (honouring `.gitignore` and friends), skip binary and huge
//! files, chunk, embed, store. Incremental by content hash: an unchanged file (same hash, same
//! embedder) is not read twice; a removed file's chunks are dropped.
//!
//! The workspace is hostile input (a read-write cell, or a diff applied from one, can plant
//! anything in it), so the walk and every read go through `warren-fsx` handles: directories
//! are listed and entered beneath the workspace's handle without following a link, only
//! regular files are opened (a FIFO, socket, device or symlink is counted and never opened —
//! a FIFO would block the reader), sizes are checked on the open file before reading and
//! capped while reading, and the ignore files themselves (`.gitignore`, `.ignore`,
//! `.git/info/exclude`) are read the same way.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use warren_fsx::{Dir, Kind};

use crate::chunk::chunk;
use crate::db::{MemoryDb, MemoryError, db, to_blob};
use crate::embed::Embedder;

/// Files larger than this are not indexed.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Ignore files larger than this are not read.
const MAX_IGNORE_BYTES: u64 = 1 << 20;

/// What indexing did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Files looked at.
    pub files_seen: u64,
    /// Files (re)indexed.
    pub files_indexed: u64,
    /// Files skipped as unchanged.
    pub files_unchanged: u64,
    /// Files whose chunks were dropped (gone from the workspace).
    pub files_removed: u64,
    /// Files skipped as binary (or not UTF-8).
    pub skipped_binary: u64,
    /// Files skipped as larger than [`MAX_FILE_BYTES`].
    pub skipped_large: u64,
    /// Entries skipped as neither a regular file nor a directory (symlinks, FIFOs, sockets,
    /// devices): never opened.
    pub skipped_special: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Lines in the files (re)indexed.
    pub lines: u64,
    /// Bytes of the files (re)indexed.
    pub bytes: u64,
    /// Wall time.
    #[serde(with = "millis")]
    pub elapsed: Duration,
    /// `none` when retrieval will be full-text only.
    pub embedder: String,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Progress as files are processed.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Files processed.
    pub done: u64,
    /// Files found so far (the walk runs ahead).
    pub total: u64,
}

struct Pending {
    path: String,
    hash: String,
    chunks: Vec<crate::chunk::Chunk>,
}

/// Index `root` (its canonical path is the workspace key).
pub fn index(
    mem: &MemoryDb,
    root: &Path,
    embedder: Option<&dyn Embedder>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, MemoryError> {
    let started = Instant::now();
    let root = std::fs::canonicalize(root)
        .map_err(|e| MemoryError::Io(format!("{}: {e}", root.display())))?;
    let ws = root.display().to_string();
    let ename = embedder.map_or("none".to_owned(), |e| e.name());
    let mut report = Report {
        embedder: ename.clone(),
        ..Report::default()
    };
    let top = Dir::open(&root).map_err(|e| MemoryError::Io(e.to_string()))?;
    let (files, special) = walk(&top, &root);
    report.skipped_special = special;
    let total = files.len() as u64;
    let mut seen = HashSet::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_chunks = 0;
    for (n, (rel, size)) in files.iter().enumerate() {
        report.files_seen += 1;
        let rel = rel.clone();
        seen.insert(rel.clone());
        if *size > MAX_FILE_BYTES {
            report.skipped_large += 1;
            continue;
        }
        let bytes = match top.read(&rel, MAX_FILE_BYTES) {
            Ok(b) => b,
            Err(warren_fsx::Error::TooLarge { .. }) => {
                report.skipped_large += 1;
                continue;
            }
            // Replaced by a link or a special file since it was listed.
            Err(warren_fsx::Error::WrongKind { .. } | warren_fsx::Error::Symlink { .. }) => {
                report.skipped_special += 1;
                continue;
            }
            Err(_) => continue,
        };
        if bytes[..bytes.len().min(8192)].contains(&0) {
            report.skipped_binary += 1;
            continue;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            report.skipped_binary += 1;
            continue;
        };
        let hash: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let known: Option<(String, String)> = mem
            .lock()
            .query_row(
                "SELECT hash, embedder FROM files WHERE workspace = ?1 AND path = ?2",
                params![ws, rel],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        if known
            .as_ref()
            .is_some_and(|(h, e)| *h == hash && *e == ename)
        {
            report.files_unchanged += 1;
        } else {
            report.files_indexed += 1;
            report.bytes += text.len() as u64;
            report.lines += text.lines().count() as u64;
            let chunks = chunk(&text);
            batch_chunks += chunks.len();
            batch.push(Pending {
                path: rel,
                hash,
                chunks,
            });
            if batch_chunks >= 256 {
                report.chunks += flush(mem, &ws, embedder, &ename, &mut batch)?;
                batch_chunks = 0;
            }
        }
        progress(Progress {
            done: n as u64 + 1,
            total,
        });
    }
    report.chunks += flush(mem, &ws, embedder, &ename, &mut batch)?;
    // Files gone from the workspace.
    let known: Vec<String> = {
        let c = mem.lock();
        let mut st = c
            .prepare("SELECT path FROM files WHERE workspace = ?1")
            .map_err(db)?;
        let rows = st.query_map([&ws], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let mut c = mem.lock();
    let tx = c.transaction().map_err(db)?;
    for p in known.iter().filter(|p| !seen.contains(*p)) {
        tx.execute(
            "DELETE FROM chunks WHERE workspace = ?1 AND path = ?2",
            params![ws, p],
        )
        .map_err(db)?;
        tx.execute(
            "DELETE FROM files WHERE workspace = ?1 AND path = ?2",
            params![ws, p],
        )
        .map_err(db)?;
        report.files_removed += 1;
    }
    tx.commit().map_err(db)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The regular files of the tree beneath `top` (relative paths, sorted, with their sizes) and
/// how many entries were neither file nor directory. Hidden entries (a leading `.`) and what
/// the ignore files exclude are left out, as `git` and the `ignore` crate's walker would.
/// Iterative (no recursion however deep the tree), one directory handle open at a time
/// besides `top`; names that are not UTF-8 are left out.
fn walk(top: &Dir, root: &Path) -> (Vec<(String, u64)>, u64) {
    let mut files = Vec::new();
    let mut special = 0;
    let mut base: Vec<Gitignore> = Vec::new();
    if let Ok(b) = top.read(".git/info/exclude", MAX_IGNORE_BYTES) {
        base.extend(matcher(root, &b));
    }
    let mut stack: Vec<(PathBuf, std::rc::Rc<Vec<Gitignore>>)> =
        vec![(PathBuf::new(), std::rc::Rc::new(base))];
    while let Some((rel, outer)) = stack.pop() {
        let Ok(dir) = top.sub(&rel) else { continue };
        let abs = root.join(&rel);
        let mut rules = (*outer).clone();
        // `.ignore` after `.gitignore`: checked first, so it wins (as in the `ignore` crate).
        for name in [".gitignore", ".ignore"] {
            if let Ok(b) = dir.read(name, MAX_IGNORE_BYTES) {
                rules.extend(matcher(&abs, &b));
            }
        }
        let rules = std::rc::Rc::new(rules);
        let Ok(entries) = dir.entries() else { continue };
        for e in entries {
            let Some(name) = e.name.to_str() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let is_dir = e.stat.kind == Kind::Dir;
            if ignored(&rules, &abs.join(name), is_dir) {
                continue;
            }
            let child = rel.join(name);
            match e.stat.kind {
                Kind::Dir => stack.push((child, std::rc::Rc::clone(&rules))),
                Kind::File => files.push((child.display().to_string(), e.stat.size)),
                _ => special += 1,
            }
        }
    }
    files.sort();
    (files, special)
}

/// The rules of one ignore file, rooted at `dir`.
fn matcher(dir: &Path, text: &[u8]) -> Option<Gitignore> {
    let mut b = GitignoreBuilder::new(dir);
    for line in String::from_utf8_lossy(text).lines() {
        let _ = b.add_line(None, line);
    }
    b.build().ok()
}

/// Whether the innermost rule that says anything about `path` ignores it.
fn ignored(rules: &[Gitignore], path: &Path, is_dir: bool) -> bool {
    for r in rules.iter().rev() {
        let m = r.matched(path, is_dir);
        if m.is_ignore() {
            return true;
        }
        if m.is_whitelist() {
            return false;
        }
    }
    false
}

fn flush(
    mem: &MemoryDb,
    ws: &str,
    embedder: Option<&dyn Embedder>,
    ename: &str,
    batch: &mut Vec<Pending>,
) -> Result<u64, MemoryError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let vectors: Option<Vec<Vec<f32>>> = match embedder {
        Some(e) => {
            let texts: Vec<String> = batch
                .iter()
                .flat_map(|p| {
                    p.chunks
                        .iter()
                        .map(move |c| format!("{}\n{}", p.path, c.text))
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            Some(e.embed(&refs)?)
        }
        None => None,
    };
    let mut c = mem.lock();
    let tx = c.transaction().map_err(db)?;
    let mut n = 0u64;
    let mut vi = 0;
    for p in batch.drain(..) {
        tx.execute(
            "DELETE FROM chunks WHERE workspace = ?1 AND path = ?2",
            params![ws, p.path],
        )
        .map_err(db)?;
        for ch in &p.chunks {
            let v = vectors
                .as_ref()
                .and_then(|vs| vs.get(vi))
                .map(|v| to_blob(v));
            vi += 1;
            tx.execute(
                "INSERT INTO chunks (workspace, path, start_line, end_line, kind, text, embedder, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![ws, p.path, ch.start_line as i64, ch.end_line as i64, ch.kind, ch.text, ename, v],
            )
            .map_err(db)?;
            n += 1;
        }
        tx.execute(
            "INSERT INTO files (workspace, path, hash, embedder) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (workspace, path) DO UPDATE SET hash = excluded.hash, embedder = excluded.embedder",
            params![ws, p.path, p.hash, ename],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(n)
}
