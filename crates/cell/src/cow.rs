//! Copy-on-write changes: what a cell wrote to a `cow` workspace, kept on the host.
//!
//! Overlayfs records changes in its upper directory: new and modified files as themselves,
//! deletions as *whiteouts* (character devices 0/0), and directories that replace a lower
//! directory wholesale as *opaque* (an `overlay.opaque` xattr). [`changes`] reads exactly that
//! and nothing else — the upper layer never contains unchanged files — so listing is
//! proportional to what changed, not to the size of the project.
//!
//! [`apply`] first plans every operation and checks it can be done, then performs it, so a
//! plan that cannot be applied changes nothing.
//!
//! The upper layer was written by the cell, so it is hostile input: every host operation on it
//! and on the project goes through [`warren_fsx::Dir`] handles (resolution beneath a directory
//! fd, no link followed, regular files only, sizes capped). A symlink is content (its target),
//! never a path to read or write through; a FIFO, socket or device is named and refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CellError;
use crate::spec::CowLayer;

/// One changed path, relative to the workspace root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A file, symlink or directory that did not exist.
    Added {
        /// Relative path.
        path: PathBuf,
    },
    /// A file or symlink whose content or metadata changed.
    Modified {
        /// Relative path.
        path: PathBuf,
    },
    /// A path that was removed.
    Deleted {
        /// Relative path.
        path: PathBuf,
    },
}

impl Change {
    /// The path this change concerns.
    pub fn path(&self) -> &Path {
        match self {
            Change::Added { path } | Change::Modified { path } | Change::Deleted { path } => path,
        }
    }

    /// One-letter marker like `git status --short`.
    pub fn marker(&self) -> char {
        match self {
            Change::Added { .. } => 'A',
            Change::Modified { .. } => 'M',
            Change::Deleted { .. } => 'D',
        }
    }
}

/// Metadata kept next to a layer so later commands know which workspace it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The host workspace the layer overlays.
    pub workspace: PathBuf,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Creation time in nanoseconds since the epoch, for conflict detection.
    #[serde(default)]
    pub created_ns: u128,
}

/// Record which workspace a layer belongs to.
pub fn write_meta(layer: &CowLayer, workspace: &Path) -> Result<(), CellError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let meta = LayerMeta {
        workspace: workspace.to_path_buf(),
        created: now.as_secs(),
        created_ns: now.as_nanos(),
    };
    let p = layer.root.join("meta.json");
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| CellError::Spec(e.to_string()))?;
    std::fs::write(&p, json).map_err(CellError::io("write", p))
}

/// A layer found in the state directory.
#[derive(Clone, Debug)]
pub struct StoredLayer {
    /// The cell id it came from.
    pub id: String,
    /// Its directories.
    pub layer: CowLayer,
    /// Its metadata.
    pub meta: LayerMeta,
}

/// Open the layer of cell `id` under `state_dir`.
pub fn open(state_dir: &Path, id: &str) -> Result<StoredLayer, CellError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(CellError::Spec(format!("{id:?} is not a cell id")));
    }
    let layer = CowLayer::at(state_dir, id);
    let p = layer.root.join("meta.json");
    let text = std::fs::read(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CellError::Spec(format!(
                "no changes kept for cell {id} (looked in {})",
                layer.root.display()
            ))
        } else {
            CellError::io("read", &p)(e)
        }
    })?;
    let meta = serde_json::from_slice(&text)
        .map_err(|e| CellError::Spec(format!("{}: {e}", p.display())))?;
    Ok(StoredLayer {
        id: id.to_owned(),
        layer,
        meta,
    })
}

/// Every layer kept under `state_dir`, oldest first.
pub fn list(state_dir: &Path) -> Vec<StoredLayer> {
    let mut out: Vec<StoredLayer> = std::fs::read_dir(state_dir.join("changes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| open(state_dir, &e.file_name().to_string_lossy()).ok())
        .collect();
    out.sort_by_key(|l| l.meta.created);
    out
}

/// Bytes of one file shown as text in a diff; larger files are named with their size.
pub const MAX_TEXT_BYTES: u64 = 4 << 20;
/// Bytes of a whole diff; the rest is summarized.
pub const MAX_DIFF_BYTES: usize = 16 << 20;

/// Top-level names a cell's layer may never change on the host: Warren's own project
/// configuration (a cell that wrote `.warren/config.toml` would redirect the next run).
pub const RESERVED: &[&str] = &[".warren"];

/// Directory levels a layer may nest. A cell can nest directories without end (`cd` into
/// each); the host walks them recursively, holding a descriptor per level, so a deeper layer is
/// refused with an error instead of exhausting the host's stack or descriptors.
pub const MAX_DEPTH: usize = 256;

fn fsx_err(base: &Path) -> impl FnOnce(warren_fsx::Error) -> CellError + '_ {
    move |e| CellError::Spec(format!("{}: {}", base.display(), e))
}

fn is_reserved(rel: &Path) -> bool {
    rel.components()
        .next()
        .is_some_and(|c| RESERVED.iter().any(|r| c.as_os_str() == *r))
}

fn is_opaque(dir: &warren_fsx::Dir) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| matches!(dir.xattr(name), Ok(Some(v)) if v.first() == Some(&b'y')))
}

/// One changed path with what the upper and lower layers hold there (their `lstat`; links are
/// never followed).
#[derive(Clone, Debug)]
pub struct Detail {
    /// The change.
    pub change: Change,
    /// What the layer holds (`None` for a deletion).
    pub upper: Option<warren_fsx::Stat>,
    /// What the project holds (`None` for an addition).
    pub lower: Option<warren_fsx::Stat>,
}

impl Detail {
    /// Why [`apply`] will not apply this change, if it will not: a FIFO, socket or device, or a
    /// path under Warren's own `.warren/`.
    pub fn refusal(&self) -> Option<String> {
        let rel = self.change.path();
        if is_reserved(rel) {
            return Some("Warren's own project configuration is never applied from a cell".into());
        }
        match self.upper {
            Some(s) if s.kind.is_special() => Some(format!(
                "a {} (special files are never applied)",
                s.kind.name()
            )),
            _ => None,
        }
    }
}

/// List the changes in a layer against the workspace it overlays, sorted by path.
pub fn changes(layer: &CowLayer, workspace: &Path) -> Result<Vec<Change>, CellError> {
    Ok(details(layer, workspace)?
        .into_iter()
        .map(|d| d.change)
        .collect())
}

/// [`changes`] with each path's upper and lower `lstat`.
pub fn details(layer: &CowLayer, workspace: &Path) -> Result<Vec<Detail>, CellError> {
    let (upper, lower) = open_pair(layer, workspace)?;
    details_in(&upper, &lower)
}

/// Handles on a layer's upper directory and on the workspace it overlays, opened once per
/// operation and shared by its listing, diffing, conflict check and apply.
fn open_pair(
    layer: &CowLayer,
    workspace: &Path,
) -> Result<(warren_fsx::Dir, warren_fsx::Dir), CellError> {
    let upper = warren_fsx::Dir::open(&layer.upper).map_err(fsx_err(&layer.upper))?;
    let lower = warren_fsx::Dir::open(workspace).map_err(fsx_err(workspace))?;
    Ok((upper, lower))
}

fn details_in(upper: &warren_fsx::Dir, lower: &warren_fsx::Dir) -> Result<Vec<Detail>, CellError> {
    let mut out = Vec::new();
    walk(upper, Some(lower), Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.change.path().cmp(b.change.path()));
    Ok(out)
}

fn walk(
    upper: &warren_fsx::Dir,
    lower: Option<&warren_fsx::Dir>,
    rel: &Path,
    out: &mut Vec<Detail>,
) -> Result<(), CellError> {
    if rel.components().count() >= MAX_DEPTH {
        return Err(CellError::Spec(format!(
            "{}: the layer nests directories deeper than {MAX_DEPTH} levels; it is not listed, shown or applied (discard it)",
            rel.display()
        )));
    }
    for e in upper.entries().map_err(fsx_err(upper.label()))? {
        let rel_path = rel.join(&e.name);
        let below = match lower {
            Some(l) => l.stat(&e.name).ok().flatten(),
            None => None,
        };
        let st = e.stat;
        if st.is_whiteout() {
            if let Some(b) = below {
                out.push(Detail {
                    change: Change::Deleted { path: rel_path },
                    upper: None,
                    lower: Some(b),
                });
            }
            continue;
        }
        if st.kind == warren_fsx::Kind::Dir {
            let sub = upper.sub(&e.name).map_err(fsx_err(upper.label()))?;
            let lower_is_dir = below.is_some_and(|b| b.kind == warren_fsx::Kind::Dir);
            let opaque = is_opaque(&sub);
            if !lower_is_dir || opaque {
                if let Some(b) = below {
                    out.push(Detail {
                        change: Change::Deleted {
                            path: rel_path.clone(),
                        },
                        upper: None,
                        lower: Some(b),
                    });
                }
                out.push(Detail {
                    change: Change::Added {
                        path: rel_path.clone(),
                    },
                    upper: Some(st),
                    lower: None,
                });
            }
            let sub_lower = if lower_is_dir && !opaque {
                lower.and_then(|l| l.sub(&e.name).ok())
            } else {
                None
            };
            walk(&sub, sub_lower.as_ref(), &rel_path, out)?;
        } else if let Some(b) = below {
            out.push(Detail {
                change: Change::Modified { path: rel_path },
                upper: Some(st),
                lower: Some(b),
            });
        } else {
            out.push(Detail {
                change: Change::Added { path: rel_path },
                upper: Some(st),
                lower: None,
            });
        }
    }
    Ok(())
}

/// Bytes the layer's upper directory holds (links not followed): each file's size — its
/// apparent size, so a sparse file counts in full and the figure does not move while the
/// kernel allocates blocks for writes already made — plus 512 bytes per entry.
pub fn usage(layer: &CowLayer) -> Result<u64, CellError> {
    fn du(d: &warren_fsx::Dir, depth: usize) -> u64 {
        if depth >= MAX_DEPTH {
            // Deeper than any listing goes: count it as over every bound.
            return u64::MAX / 2;
        }
        let Ok(entries) = d.entries() else { return 0 };
        entries
            .iter()
            .map(|e| {
                let own = 512
                    + if e.stat.kind == warren_fsx::Kind::File {
                        e.stat.size
                    } else {
                        0
                    };
                if e.stat.kind == warren_fsx::Kind::Dir {
                    own.saturating_add(d.sub(&e.name).map(|s| du(&s, depth + 1)).unwrap_or(0))
                } else {
                    own
                }
            })
            .fold(0u64, u64::saturating_add)
    }
    let upper = warren_fsx::Dir::open(&layer.upper).map_err(fsx_err(&layer.upper))?;
    Ok(du(&upper, 0))
}

/// Limits of one [`diff_with`].
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// Bytes of one file shown as text.
    pub max_text_bytes: u64,
    /// Bytes of the whole diff.
    pub max_bytes: usize,
    /// Stop (and say so) at this instant.
    pub deadline: Option<std::time::Instant>,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            max_text_bytes: MAX_TEXT_BYTES,
            max_bytes: MAX_DIFF_BYTES,
            deadline: None,
        }
    }
}

/// What one side of a diff holds, read safely.
enum Side {
    Nothing,
    Text(String),
    Binary(u64),
    TooLarge(u64),
    Link(String),
    Dir,
    Special(warren_fsx::Kind),
    Unreadable(String),
}

fn side(dir: &warren_fsx::Dir, rel: &Path, st: Option<warren_fsx::Stat>, max: u64) -> Side {
    let Some(st) = st else { return Side::Nothing };
    match st.kind {
        warren_fsx::Kind::Dir => Side::Dir,
        warren_fsx::Kind::Symlink => match dir.read_link(rel) {
            Ok(t) => Side::Link(t.to_string_lossy().into_owned()),
            Err(e) => Side::Unreadable(e.to_string()),
        },
        warren_fsx::Kind::File if st.size > max => Side::TooLarge(st.size),
        warren_fsx::Kind::File => match dir.read(rel, max) {
            Ok(b) if b.contains(&0) => Side::Binary(b.len() as u64),
            Ok(b) => match String::from_utf8(b) {
                Ok(s) => Side::Text(s),
                Err(e) => Side::Binary(e.into_bytes().len() as u64),
            },
            Err(warren_fsx::Error::TooLarge { .. }) => Side::TooLarge(st.size),
            Err(e) => Side::Unreadable(e.to_string()),
        },
        k => Side::Special(k),
    }
}

fn git_mode(st: &warren_fsx::Stat) -> String {
    match st.kind {
        warren_fsx::Kind::Symlink => "120000".into(),
        warren_fsx::Kind::Dir => "40000".into(),
        _ => format!("100{:03o}", st.mode & 0o777),
    }
}

/// A unified diff of the layer against its workspace, with default limits.
pub fn diff(layer: &CowLayer, workspace: &Path) -> Result<String, CellError> {
    diff_with(layer, workspace, &DiffOptions::default())
}

/// A unified diff of the layer against its workspace. Nothing a hostile layer holds is
/// followed or opened for reading unless it is a regular file: a symlink is shown as its
/// target (mode 120000, like git), a FIFO, socket or device is named as refused, a mode change
/// is shown (setuid, setgid and sticky bits are named as dropped: [`apply`] never keeps them),
/// a directory added or deleted is listed, files over `max_text_bytes` are named with their
/// size, and the whole diff stops at `max_bytes` or the deadline, saying what it left out.
pub fn diff_with(
    layer: &CowLayer,
    workspace: &Path,
    opts: &DiffOptions,
) -> Result<String, CellError> {
    let (upper, lower) = open_pair(layer, workspace)?;
    let all = details_in(&upper, &lower)?;
    let total = all.len();
    let mut out = String::new();
    for (i, d) in all.into_iter().enumerate() {
        if opts
            .deadline
            .is_some_and(|t| std::time::Instant::now() >= t)
        {
            out.push_str(&format!(
                "warren: the diff stopped at its time limit; {} of {total} changes not shown (`warren diff` shows them)\n",
                total - i
            ));
            break;
        }
        if out.len() >= opts.max_bytes {
            out.push_str(&format!(
                "warren: the diff reached its size limit; {} of {total} changes not shown\n",
                total - i
            ));
            break;
        }
        render(&mut out, &d, &upper, &lower, opts.max_text_bytes);
    }
    Ok(out)
}

fn render(
    out: &mut String,
    d: &Detail,
    upper: &warren_fsx::Dir,
    lower: &warren_fsx::Dir,
    max: u64,
) {
    let rel = d.change.path();
    let name = display_path(rel);
    out.push_str(&format!("diff --warren a/{name} b/{name}\n"));
    if let Some(why) = d.refusal() {
        out.push_str(&format!("refused b/{name}: {why}; not applied\n"));
        return;
    }
    let (old_st, new_st) = match d.change {
        Change::Added { .. } => (None, d.upper),
        Change::Deleted { .. } => (d.lower, None),
        Change::Modified { .. } => (d.lower, d.upper),
    };
    match (old_st, new_st) {
        (None, Some(n)) => {
            let what = if n.kind == warren_fsx::Kind::Dir {
                "new directory mode"
            } else {
                "new file mode"
            };
            out.push_str(&format!("{what} {}\n", git_mode(&n)));
        }
        (Some(o), None) => {
            let what = if o.kind == warren_fsx::Kind::Dir {
                "deleted directory mode"
            } else {
                "deleted file mode"
            };
            out.push_str(&format!("{what} {}\n", git_mode(&o)));
        }
        (Some(o), Some(n)) if git_mode(&o) != git_mode(&n) => {
            out.push_str(&format!(
                "old mode {}\nnew mode {}\n",
                git_mode(&o),
                git_mode(&n)
            ));
        }
        _ => {}
    }
    if let Some(n) = new_st
        && n.kind != warren_fsx::Kind::Symlink
        && n.mode & 0o7000 != 0
    {
        out.push_str(&format!(
            "warren: mode {:04o} has setuid/setgid/sticky bits; applied as {:04o}\n",
            n.mode,
            n.mode & 0o777
        ));
    }
    let old = side(lower, rel, old_st, max);
    let new = side(upper, rel, new_st, max);
    let (a, b) = (
        if old_st.is_some() {
            format!("a/{name}")
        } else {
            "/dev/null".to_owned()
        },
        if new_st.is_some() {
            format!("b/{name}")
        } else {
            "/dev/null".to_owned()
        },
    );
    let text = |s: &Side| -> Option<String> {
        match s {
            Side::Nothing => Some(String::new()),
            Side::Text(t) => Some(t.clone()),
            // A symlink's content is its target, without a newline (as git shows it).
            Side::Link(t) => Some(t.clone()),
            _ => None,
        }
    };
    let describe = |s: &Side| -> Option<String> {
        match s {
            Side::Binary(n) => Some(format!("binary, {n} bytes")),
            Side::TooLarge(n) => Some(format!("{n} bytes, too large to show")),
            Side::Special(k) => Some(format!("a {k}")),
            Side::Unreadable(e) => Some(format!("unreadable: {e}")),
            _ => None,
        }
    };
    if matches!(old, Side::Dir) || matches!(new, Side::Dir) {
        if matches!(old, Side::Dir) && new_st.is_none() {
            let n = lower
                .sub(rel)
                .map(|s| count_entries(&s, 100_000, 0))
                .unwrap_or(0);
            out.push_str(&format!(
                "deleted directory a/{name}/ ({n} entries below)\n"
            ));
        }
        return;
    }
    match (text(&old), text(&new)) {
        (Some(o), Some(n)) => {
            let text = similar::TextDiff::from_lines(&o, &n)
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string();
            out.push_str(&text);
            // A last line without a newline (a symlink's target, say) is marked as git marks
            // it, so the next header starts on a line of its own.
            if !text.is_empty() && !text.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
        _ => {
            let o = describe(&old).unwrap_or_else(|| "text".into());
            let n = describe(&new).unwrap_or_else(|| "text".into());
            out.push_str(&format!("Files {a} ({o}) and {b} ({n}) differ\n"));
        }
    }
}

/// A path as diffs and change lists print it: as is when it is printable, else quoted C-style
/// like git (`"a\nb"`, octal for other control and invalid bytes), so a name the cell chose
/// cannot forge diff headers or terminal escapes in what a reviewer reads.
pub fn display_path(p: &Path) -> String {
    let bytes = p.as_os_str().as_encoded_bytes();
    let plain = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() || c == '"' || c == '\\'));
    if let Some(s) = plain {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        out.push_str(&format!("\\{byte:03o}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\{byte:03o}"));
        }
    }
    out.push('"');
    out
}

fn count_entries(d: &warren_fsx::Dir, budget: usize, depth: usize) -> usize {
    if depth >= MAX_DEPTH {
        return 0;
    }
    let Ok(entries) = d.entries() else { return 0 };
    let mut n = 0;
    for e in entries {
        n += 1;
        if n >= budget {
            break;
        }
        if e.stat.kind == warren_fsx::Kind::Dir
            && let Ok(s) = d.sub(&e.name)
        {
            n += count_entries(&s, budget - n, depth + 1);
        }
    }
    n
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    /// Paths written.
    pub written: Vec<PathBuf>,
    /// Paths removed.
    pub removed: Vec<PathBuf>,
    /// Paths not applied, each with the reason (special files, Warren's own `.warren/`).
    pub refused: Vec<(PathBuf, String)>,
}

/// Progress of an apply: operations done of the total.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Operations done.
    pub done: usize,
    /// Operations planned.
    pub total: usize,
}

enum Op {
    Remove(PathBuf),
    MkDir(PathBuf, u32),
    Copy(PathBuf, u32),
    Symlink(PathBuf, PathBuf),
}

/// How to undo one completed step (paths relative to the workspace; names in their parent).
enum Undo {
    /// Put the original back from where it was set aside.
    Restore {
        parent: PathBuf,
        aside: OsString,
        name: OsString,
    },
    /// Remove what we created.
    RemoveFile(PathBuf, OsString),
    RemoveDir(PathBuf, OsString),
}

/// Paths the layer changes that the project changed too since the layer was created: a file
/// modified (or, for an addition, created) after the task started.
pub fn conflicts(
    layer: &CowLayer,
    workspace: &Path,
    since_ns: u128,
) -> Result<Vec<PathBuf>, CellError> {
    let (upper, lower) = open_pair(layer, workspace)?;
    conflicts_in(&details_in(&upper, &lower)?, &lower, since_ns)
}

fn conflicts_in(
    all: &[Detail],
    lower: &warren_fsx::Dir,
    since_ns: u128,
) -> Result<Vec<PathBuf>, CellError> {
    let mut out = Vec::new();
    // A path both deleted and added was replaced (a link by a directory, say): the project
    // had it, so only a change since the layer was created is a conflict.
    let replaced: std::collections::HashSet<&Path> = all
        .iter()
        .filter(|d| matches!(d.change, Change::Deleted { .. }))
        .map(|d| d.change.path())
        .collect();
    for d in all {
        // The project now, not as listed (it may have changed since).
        let Ok(Some(m)) = lower.stat(d.change.path()) else {
            continue;
        };
        let is_dir = m.kind == warren_fsx::Kind::Dir;
        let upper_is_dir = d.upper.is_some_and(|u| u.kind == warren_fsx::Kind::Dir);
        let changed = match d.change {
            Change::Added { .. } if replaced.contains(d.change.path()) => m.mtime_ns > since_ns,
            Change::Added { .. } => !(is_dir && upper_is_dir),
            Change::Modified { .. } | Change::Deleted { .. } => !is_dir && m.mtime_ns > since_ns,
        };
        if changed {
            out.push(d.change.path().to_path_buf());
        }
    }
    Ok(out)
}

/// Apply a layer's changes to its workspace, all or nothing.
///
/// Refuses, changing nothing, when the project changed a path the layer also changes since
/// the layer was created ([`conflicts`]). Every host operation goes through a handle on the
/// workspace ([`warren_fsx::Dir`]): no link in the project or the layer is followed, files are
/// written under random `O_EXCL` names and renamed into place, modes are masked to `0777`
/// (never setuid, setgid or sticky), FIFOs, sockets, devices and Warren's own `.warren/` are
/// refused by name ([`ApplyReport::refused`]). What is replaced or removed is first set aside
/// in its own directory, so if any step fails every completed step is undone and the project
/// is as it was.
pub fn apply(layer: &CowLayer, workspace: &Path) -> Result<ApplyReport, CellError> {
    apply_with(layer, workspace, &mut |_| {})
}

/// [`apply`], reporting progress after each operation.
pub fn apply_with(
    layer: &CowLayer,
    workspace: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplyReport, CellError> {
    let since = warren_fsx::Dir::open(&layer.root)
        .ok()
        .and_then(|d| d.read("meta.json", 1 << 20).ok())
        .and_then(|b| serde_json::from_slice::<LayerMeta>(&b).ok())
        .map_or(0, |m| {
            if m.created_ns > 0 {
                m.created_ns
            } else {
                u128::from(m.created) * 1_000_000_000
            }
        });
    let (upper, lower) = open_pair(layer, workspace)?;
    let all = details_in(&upper, &lower)?;
    if since > 0 {
        let clash = conflicts_in(&all, &lower, since)?;
        if !clash.is_empty() {
            let list: Vec<String> = clash.iter().map(|p| p.display().to_string()).collect();
            return Err(CellError::Spec(format!(
                "the project changed since the task started, in paths the task also changed: {}; nothing was applied",
                list.join(", ")
            )));
        }
    }
    apply_plan(&upper, &lower, all, None, progress)
}

fn parent_and_name(rel: &Path) -> (PathBuf, OsString) {
    (
        rel.parent().map(Path::to_path_buf).unwrap_or_default(),
        rel.file_name().map(OsStr::to_owned).unwrap_or_default(),
    )
}

/// Directory handles of the workspace, the last one kept (changes are sorted by path, so
/// runs of operations share a parent and each is resolved once).
struct Parents<'a> {
    root: &'a warren_fsx::Dir,
    last: Option<(PathBuf, warren_fsx::Dir)>,
}

impl Parents<'_> {
    fn get(&mut self, rel: &Path) -> Result<&warren_fsx::Dir, CellError> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root);
        }
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let d = self.root.sub(rel).map_err(fsx_err(self.root.label()))?;
            self.last = Some((rel.to_path_buf(), d));
        }
        match &self.last {
            Some((_, d)) => Ok(d),
            None => Err(CellError::Spec("unreachable: no parent handle".into())),
        }
    }

    fn forget(&mut self) {
        self.last = None;
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apply_plan(
    upper: &warren_fsx::Dir,
    root: &warren_fsx::Dir,
    all: Vec<Detail>,
    fail_after: Option<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplyReport, CellError> {
    let mut report = ApplyReport::default();
    let mut plan = Vec::new();
    for d in all {
        let rel = d.change.path().to_path_buf();
        if let Some(why) = d.refusal() {
            report.refused.push((rel, why));
            continue;
        }
        match (&d.change, d.upper) {
            (Change::Deleted { .. }, _) => plan.push(Op::Remove(rel)),
            (_, Some(st)) => match st.kind {
                warren_fsx::Kind::Dir => plan.push(Op::MkDir(rel, st.mode & 0o777)),
                warren_fsx::Kind::Symlink => {
                    let target = upper.read_link(&rel).map_err(fsx_err(upper.label()))?;
                    plan.push(Op::Symlink(rel, target));
                }
                warren_fsx::Kind::File => {
                    // Checked now, so a plan that cannot be applied changes nothing.
                    upper.open_file(&rel).map_err(fsx_err(upper.label()))?;
                    plan.push(Op::Copy(rel, st.mode & 0o777));
                }
                k => {
                    report
                        .refused
                        .push((rel, format!("a {k} (special files are never applied)")));
                }
            },
            (_, None) => {}
        }
    }
    let total = plan.len();
    let mut undo: Vec<Undo> = Vec::new();
    let mut parents = Parents { root, last: None };
    let root_caller = is_root();
    let mut result = Ok(());
    for (i, op) in plan.into_iter().enumerate() {
        if fail_after == Some(i) {
            result = Err(CellError::Spec("injected failure".into()));
            break;
        }
        if let Err(e) = step(op, upper, &mut parents, root_caller, &mut undo, &mut report) {
            result = Err(e);
            break;
        }
        progress(Progress { done: i + 1, total });
    }
    parents.forget();
    match result {
        Ok(()) => {
            // Commit: drop what was set aside.
            for u in undo {
                if let Undo::Restore { parent, aside, .. } = u
                    && let Ok(p) = parents.get(&parent)
                {
                    let _ = p.remove_all(&aside);
                }
            }
            Ok(report)
        }
        Err(e) => {
            for u in undo.into_iter().rev() {
                let _ = match u {
                    Undo::RemoveFile(p, n) => parents.get(&p).map(|d| d.remove_file(&n)),
                    Undo::RemoveDir(p, n) => parents.get(&p).map(|d| d.remove_all(&n)),
                    Undo::Restore {
                        parent,
                        aside,
                        name,
                    } => parents.get(&parent).map(|d| d.rename(&aside, &name)),
                };
            }
            Err(e)
        }
    }
}

fn step(
    op: Op,
    upper: &warren_fsx::Dir,
    parents: &mut Parents<'_>,
    root_caller: bool,
    undo: &mut Vec<Undo>,
    report: &mut ApplyReport,
) -> Result<(), CellError> {
    let ws = parents.root.label().to_path_buf();
    let err = |e: warren_fsx::Error| CellError::Spec(format!("{}: {e}", ws.display()));
    // Set an existing entry aside under a fresh name in the same directory (a rename, never a
    // copy, never following it).
    let set_aside = |dir: &warren_fsx::Dir,
                     parent: &Path,
                     name: &OsStr,
                     undo: &mut Vec<Undo>|
     -> Result<Option<warren_fsx::Stat>, CellError> {
        let Some(st) = dir.stat(name).map_err(err)? else {
            return Ok(None);
        };
        let aside: OsString = format!(".warren-aside-{:016x}", fastrand::u64(..)).into();
        dir.rename(name, &aside).map_err(err)?;
        undo.push(Undo::Restore {
            parent: parent.to_path_buf(),
            aside,
            name: name.to_owned(),
        });
        Ok(Some(st))
    };
    match op {
        Op::Remove(rel) => {
            let (parent, name) = parent_and_name(&rel);
            let dir = parents.get(&parent)?;
            if set_aside(dir, &parent, &name, undo)?.is_some() {
                report.removed.push(rel);
            }
        }
        Op::MkDir(rel, mode) => {
            let (parent, name) = parent_and_name(&rel);
            let dir = parents.get(&parent)?;
            match dir.stat(&name).map_err(err)? {
                Some(s) if s.kind == warren_fsx::Kind::Dir => {}
                _ => {
                    set_aside(dir, &parent, &name, undo)?;
                    dir.mkdir(&name, mode).map_err(err)?;
                    undo.push(Undo::RemoveDir(parent.clone(), name.clone()));
                    if root_caller && let Ok(Some(p)) = dir.stat("") {
                        let _ = dir.set_mode_owner(&name, mode, Some((p.uid, p.gid)));
                    } else {
                        let _ = dir.set_mode_owner(&name, mode, None);
                    }
                    report.written.push(rel);
                }
            }
        }
        Op::Copy(rel, mode) => {
            let (parent, name) = parent_and_name(&rel);
            let (mut src, _) = upper.open_file(&rel).map_err(err)?;
            let dir = parents.get(&parent)?;
            let mut tmp = dir.temp_file().map_err(err)?;
            let written = (|| {
                std::io::copy(&mut src, &mut tmp.file).map_err(CellError::io("copy", &rel))?;
                // The owner of the file replaced, else of the directory (apply may run as
                // root on someone's checkout); the mode masked to 0777.
                let owner = if root_caller {
                    match dir.stat(&name) {
                        Ok(Some(s)) if s.kind == warren_fsx::Kind::File => Some((s.uid, s.gid)),
                        _ => dir.stat("").ok().flatten().map(|p| (p.uid, p.gid)),
                    }
                } else {
                    None
                };
                warren_fsx::set_mode_owner(&tmp.file, &rel, mode, owner).map_err(err)
            })();
            if let Err(e) = written {
                let _ = dir.remove_file(&tmp.name);
                return Err(e);
            }
            if let Err(e) = set_aside(dir, &parent, &name, undo) {
                let _ = dir.remove_file(&tmp.name);
                return Err(e);
            }
            dir.rename(&tmp.name, &name).map_err(err)?;
            undo.push(Undo::RemoveFile(parent, name));
            report.written.push(rel);
        }
        Op::Symlink(rel, target) => {
            let (parent, name) = parent_and_name(&rel);
            let dir = parents.get(&parent)?;
            set_aside(dir, &parent, &name, undo)?;
            dir.symlink(&target, &name).map_err(err)?;
            undo.push(Undo::RemoveFile(parent, name));
            report.written.push(rel);
        }
    }
    Ok(())
}

/// Record in `layer` that the workspace path `rel` was removed, as overlayfs would: a whiteout
/// (a 0/0 character device) at `rel` in the upper directory, or, when the upper directory
/// already has a directory there (removed, then made again), that directory marked opaque.
/// For tiers whose copy-on-write view the host serves itself (the WASI tier), so [`changes`],
/// [`diff`] and [`apply`] read their layers like any other. Parents are created beneath the
/// upper directory without following links. A whiteout needs `mknod` (root, or
/// `CAP_MKNOD`); without it the removal is reported as an error and not kept.
pub fn record_removal(layer: &CowLayer, rel: &Path) -> Result<(), CellError> {
    let err = |e: warren_fsx::Error| CellError::Spec(format!("{}: {e}", rel.display()));
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return Err(CellError::Spec(
            "the workspace root cannot be removed".into(),
        ));
    };
    let mut dir = warren_fsx::Dir::open(&layer.upper).map_err(err)?;
    for p in parents {
        dir = dir.ensure_dir(p, 0o755).map_err(err)?;
    }
    match dir.stat(last).map_err(err)? {
        Some(st) if st.kind == warren_fsx::Kind::Dir => {
            let sub = dir.sub(last).map_err(err)?;
            set_opaque(&sub).map_err(|e| CellError::io("mark opaque", rel)(e))
        }
        // Made again as a file: the upper file is the change; nothing more to record.
        Some(_) => Ok(()),
        None => {
            let name = std::ffi::CString::new(last.as_encoded_bytes())
                .map_err(|_| CellError::Spec(format!("{}: a NUL in the name", rel.display())))?;
            // SAFETY: mknodat reads a NUL-terminated name and a live directory descriptor.
            let r = unsafe {
                libc::mknodat(
                    std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd()),
                    name.as_ptr(),
                    libc::S_IFCHR | 0o600,
                    0,
                )
            };
            if r != 0 {
                return Err(CellError::io("record the removal of", rel)(
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
    }
}

fn set_opaque(dir: &warren_fsx::Dir) -> std::io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd());
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: fsetxattr reads a NUL-terminated name and one byte of value from live
        // buffers, on a live descriptor.
        let r = unsafe { libc::fsetxattr(fd, name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if r == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

/// Delete a layer and everything in it.
pub fn discard(layer: &CowLayer) -> Result<(), CellError> {
    // Overlayfs leaves `work/work` with mode 000; make it removable for non-root callers.
    let inner = layer.work.join("work");
    let _ = std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700));
    match std::fs::remove_dir_all(&layer.root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CellError::io("remove", &layer.root)(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-cow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lists_added_modified_and_deleted_then_applies() {
        let root = tmp("unit");
        let ws = root.join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("keep.txt"), "same\n").unwrap();
        std::fs::write(ws.join("edit.txt"), "old\n").unwrap();
        std::fs::write(ws.join("gone.txt"), "bye\n").unwrap();
        let layer = CowLayer::at(&root, "c1");
        std::fs::create_dir_all(layer.upper.join("sub")).unwrap();
        std::fs::create_dir_all(&layer.work).unwrap();
        std::fs::write(layer.upper.join("edit.txt"), "new\n").unwrap();
        std::fs::write(layer.upper.join("sub/new.txt"), "hello\n").unwrap();
        // A whiteout needs mknod of a 0/0 char device: root only. Skip that part otherwise.
        let c = std::ffi::CString::new(
            layer
                .upper
                .join("gone.txt")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: valid C string.
        let whiteout = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0;

        let got = changes(&layer, &ws).unwrap();
        let mut want = vec![
            Change::Modified {
                path: "edit.txt".into(),
            },
            Change::Added {
                path: "sub/new.txt".into(),
            },
        ];
        if whiteout {
            want.insert(
                1,
                Change::Deleted {
                    path: "gone.txt".into(),
                },
            );
        }
        assert_eq!(got, want);
        let d = diff(&layer, &ws).unwrap();
        assert!(d.contains("-old\n+new\n") && d.contains("+hello\n"), "{d}");

        apply(&layer, &ws).unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.join("edit.txt")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("sub/new.txt")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("keep.txt")).unwrap(),
            "same\n"
        );
        if whiteout {
            assert!(!ws.join("gone.txt").exists());
        }
        discard(&layer).unwrap();
        assert!(!layer.root.exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    fn setup(name: &str) -> (PathBuf, PathBuf, CowLayer) {
        let root = tmp(name);
        let ws = root.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("a.txt"), "a0\n").unwrap();
        std::fs::write(ws.join("b.txt"), "b0\n").unwrap();
        let layer = CowLayer::at(&root, "c1");
        std::fs::create_dir_all(&layer.upper).unwrap();
        std::fs::create_dir_all(&layer.work).unwrap();
        write_meta(&layer, &ws).unwrap();
        std::fs::write(layer.upper.join("a.txt"), "a1\n").unwrap();
        std::fs::write(layer.upper.join("b.txt"), "b1\n").unwrap();
        std::fs::write(layer.upper.join("c.txt"), "c1\n").unwrap();
        (root, ws, layer)
    }

    #[test]
    fn apply_refuses_when_the_project_changed_underneath() {
        let (root, ws, layer) = setup("conflict");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(ws.join("b.txt"), "edited by the developer meanwhile\n").unwrap();
        let err = apply(&layer, &ws).unwrap_err().to_string();
        assert!(
            err.contains("b.txt") && err.contains("nothing was applied"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "a0\n");
        assert!(!ws.join("c.txt").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_failure_mid_apply_leaves_the_project_as_it_was() {
        let (root, ws, layer) = setup("rollback");
        let (upper, lower) = open_pair(&layer, &ws).unwrap();
        let err = apply_plan(
            &upper,
            &lower,
            details_in(&upper, &lower).unwrap(),
            Some(2),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("injected"), "{err}");
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "a0\n");
        assert_eq!(std::fs::read_to_string(ws.join("b.txt")).unwrap(), "b0\n");
        assert!(!ws.join("c.txt").exists());
        let names: Vec<_> = std::fs::read_dir(&ws)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "leftovers: {names:?}");
        // And the same layer applies cleanly afterwards.
        apply(&layer, &ws).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("c.txt")).unwrap(), "c1\n");
        let _ = std::fs::remove_dir_all(&root);
    }
    /// A layer and workspace with a secret outside both (what a hostile layer aims at).
    fn hostile(name: &str) -> (PathBuf, PathBuf, CowLayer, PathBuf) {
        let (root, ws, layer) = setup(name);
        let secret = root.join("secret");
        std::fs::write(&secret, "TOP SECRET\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        (root, ws, layer, secret)
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn attack_apply_never_writes_through_a_planted_temporary_name() {
        let (root, ws, layer, secret) = hostile("tmpname");
        // The old apply wrote a.txt's new content to `.a.txt.warren-apply`, then renamed it.
        for n in [".a.txt.warren-apply", ".a.txt.warren-orig"] {
            std::os::unix::fs::symlink(&secret, layer.upper.join(n)).unwrap();
        }
        let r = apply(&layer, &ws).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP SECRET\n");
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "a1\n");
        // The planted links arrive as links (content), pointing where they point.
        assert!(
            std::fs::symlink_metadata(ws.join(".a.txt.warren-apply"))
                .unwrap()
                .is_symlink()
        );
        assert!(r.written.len() >= 3);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_diff_shows_a_symlink_as_its_target_never_its_content() {
        let (root, ws, layer, secret) = hostile("linkdiff");
        std::os::unix::fs::symlink(&secret, layer.upper.join("shadow")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", layer.upper.join("zero")).unwrap();
        std::os::unix::fs::symlink(&root, layer.upper.join("dirlink")).unwrap();
        let d = diff(&layer, &ws).unwrap();
        assert!(!d.contains("TOP SECRET"), "{d}");
        assert!(d.contains(&format!("+{}", secret.display())), "{d}");
        assert!(d.contains("+/dev/zero"), "{d}");
        // A link to a directory is listed too (the old diff skipped it, apply made it).
        assert!(d.contains("b/dirlink\nnew file mode 120000"), "{d}");
        // A target has no newline: marked, so every header starts a line.
        assert!(
            d.contains("+/dev/zero\n\\ No newline at end of file\n"),
            "{d}"
        );
        assert!(
            d.lines()
                .filter(|l| l.contains("diff --warren"))
                .all(|l| l.starts_with("diff"))
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_fifos_and_devices_are_refused_by_name_and_never_opened() {
        let (root, ws, layer, _) = hostile("fifo");
        mkfifo(&layer.upper.join("pipe"));
        // A FIFO where the project has a file (a modification) as well.
        std::fs::remove_file(layer.upper.join("b.txt")).unwrap();
        mkfifo(&layer.upper.join("b.txt"));
        let start = std::time::Instant::now();
        let d = diff(&layer, &ws).unwrap();
        assert!(d.contains("refused b/pipe: a FIFO"), "{d}");
        assert!(d.contains("refused b/b.txt: a FIFO"), "{d}");
        let r = apply(&layer, &ws).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        let refused: Vec<_> = r.refused.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(refused, vec![PathBuf::from("b.txt"), PathBuf::from("pipe")]);
        assert!(!ws.join("pipe").exists());
        assert_eq!(std::fs::read_to_string(ws.join("b.txt")).unwrap(), "b0\n");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_setuid_bits_never_reach_the_project_and_mode_changes_are_shown() {
        let (root, ws, layer, _) = hostile("setuid");
        std::fs::write(layer.upper.join("suid"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            layer.upper.join("suid"),
            std::fs::Permissions::from_mode(0o6755),
        )
        .unwrap();
        // b.txt: same content, only the mode changes.
        std::fs::write(layer.upper.join("b.txt"), "b0\n").unwrap();
        std::fs::set_permissions(ws.join("b.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            layer.upper.join("b.txt"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let d = diff(&layer, &ws).unwrap();
        assert!(d.contains("old mode 100644\nnew mode 100755"), "{d}");
        assert!(
            d.contains("mode 6755 has setuid/setgid/sticky bits; applied as 0755"),
            "{d}"
        );
        apply(&layer, &ws).unwrap();
        let m = std::fs::metadata(ws.join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o755);
        let m = std::fs::metadata(ws.join("b.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o755);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_warrens_own_project_config_is_never_applied() {
        let (root, ws, layer, _) = hostile("dotwarren");
        std::fs::create_dir_all(layer.upper.join(".warren")).unwrap();
        std::fs::write(
            layer.upper.join(".warren/config.toml"),
            "[provider]\nbase_url = \"http://attacker.example\"\n",
        )
        .unwrap();
        let d = diff(&layer, &ws).unwrap();
        assert!(
            d.contains("refused b/.warren/config.toml: Warren's own"),
            "{d}"
        );
        let r = apply(&layer, &ws).unwrap();
        assert!(!ws.join(".warren").exists());
        assert_eq!(r.refused.len(), 2, "{:?}", r.refused);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_a_project_symlink_is_replaced_never_written_through() {
        let (root, ws, layer, _) = hostile("projlink");
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
        write_meta(&layer, &ws).unwrap();
        // The cell replaced the link with a directory holding a file.
        std::fs::create_dir_all(layer.upper.join("out")).unwrap();
        std::fs::write(layer.upper.join("out/x"), "x\n").unwrap();
        apply(&layer, &ws).unwrap();
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        assert!(ws.join("out").is_dir() && !ws.join("out").is_symlink());
        assert_eq!(std::fs::read_to_string(ws.join("out/x")).unwrap(), "x\n");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_huge_files_and_slow_diffs_are_bounded() {
        let (root, ws, layer, _) = hostile("huge");
        let f = std::fs::File::create(layer.upper.join("huge")).unwrap();
        f.set_len(MAX_TEXT_BYTES * 4).unwrap();
        let d = diff(&layer, &ws).unwrap();
        assert!(
            d.contains(&format!("{} bytes, too large to show", MAX_TEXT_BYTES * 4)),
            "{d}"
        );
        let past = DiffOptions {
            deadline: Some(std::time::Instant::now()),
            ..DiffOptions::default()
        };
        let d = diff_with(&layer, &ws, &past).unwrap();
        assert!(
            d.contains("stopped at its time limit; 4 of 4 changes not shown"),
            "{d}"
        );
        let small = DiffOptions {
            max_bytes: 10,
            ..DiffOptions::default()
        };
        let d = diff_with(&layer, &ws, &small).unwrap();
        assert!(d.contains("reached its size limit"), "{d}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_names_cannot_forge_diff_headers_and_deep_nesting_is_refused() {
        let (root, ws, layer, _) = hostile("names");
        let evil = "x\n+++ innocent\n@@ -0,0 +1 @@\n+\x1b[2Jhidden";
        std::fs::write(layer.upper.join(evil), "payload\n").unwrap();
        let d = diff(&layer, &ws).unwrap();
        assert!(
            d.contains("\"x\\n+++ innocent\\n@@ -0,0 +1 @@\\n+\\033[2Jhidden\""),
            "{d}"
        );
        assert!(!d.contains('\x1b'), "{d}");
        assert_eq!(display_path(Path::new("plain/name.rs")), "plain/name.rs");
        // Nesting deeper than MAX_DEPTH is an error, not a stack or descriptor exhaustion.
        let mut p = layer.upper.clone();
        for _ in 0..(MAX_DEPTH + 5) {
            p.push("d");
            std::fs::create_dir(&p).unwrap();
        }
        let e = changes(&layer, &ws).unwrap_err().to_string();
        assert!(e.contains("deeper than"), "{e}");
        assert!(usage(&layer).unwrap() > 1 << 40);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn apply_reports_progress_and_usage_counts_the_upper() {
        let (root, ws, layer) = setup("progress");
        let mut seen = Vec::new();
        apply_with(&layer, &ws, &mut |p| seen.push((p.done, p.total))).unwrap();
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
        assert!(usage(&layer).unwrap() > 0);
        let _ = std::fs::remove_dir_all(&root);
    }
}
