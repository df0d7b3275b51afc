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

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let Ok(p) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            let Ok(n) = std::ffi::CString::new(*name) else {
                return false;
            };
            let mut v = [0u8; 4];
            // SAFETY: valid C strings and a buffer of the stated length.
            let r =
                unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            r > 0 && v[0] == b'y'
        })
}

/// List the changes in a layer against the workspace it overlays, sorted by path.
pub fn changes(layer: &CowLayer, workspace: &Path) -> Result<Vec<Change>, CellError> {
    let mut out = Vec::new();
    walk(&layer.upper, Path::new(""), workspace, false, &mut out)?;
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

fn walk(
    upper: &Path,
    rel: &Path,
    lower_root: &Path,
    lower_hidden: bool,
    out: &mut Vec<Change>,
) -> Result<(), CellError> {
    let dir = upper.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(CellError::io("read", &dir))?;
    for e in entries {
        let e = e.map_err(CellError::io("read", &dir))?;
        let rel_path = rel.join(e.file_name());
        let up = upper.join(&rel_path);
        let m = std::fs::symlink_metadata(&up).map_err(CellError::io("stat", &up))?;
        let lower = lower_root.join(&rel_path);
        let in_lower = !lower_hidden && std::fs::symlink_metadata(&lower).is_ok();
        if is_whiteout(&m) {
            if in_lower {
                out.push(Change::Deleted { path: rel_path });
            }
            continue;
        }
        if m.is_dir() {
            let lower_is_dir = in_lower && lower.is_dir() && !lower.is_symlink();
            let opaque = is_opaque(&up);
            if !lower_is_dir {
                if in_lower {
                    out.push(Change::Deleted {
                        path: rel_path.clone(),
                    });
                }
                out.push(Change::Added {
                    path: rel_path.clone(),
                });
            } else if opaque {
                // The directory was removed and recreated: everything below in the lower
                // layer is gone unless the upper layer has it again.
                out.push(Change::Deleted {
                    path: rel_path.clone(),
                });
                out.push(Change::Added {
                    path: rel_path.clone(),
                });
            }
            walk(
                upper,
                &rel_path,
                lower_root,
                lower_hidden || opaque || !lower_is_dir,
                out,
            )?;
        } else if in_lower {
            out.push(Change::Modified { path: rel_path });
        } else {
            out.push(Change::Added { path: rel_path });
        }
    }
    Ok(())
}

fn read_text(p: &Path) -> Option<String> {
    let bytes = std::fs::read(p).ok()?;
    if bytes.len() > 4 << 20 || bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// A unified diff of the layer against its workspace (text files; binaries are named).
pub fn diff(layer: &CowLayer, workspace: &Path) -> Result<String, CellError> {
    let mut out = String::new();
    for c in changes(layer, workspace)? {
        let rel = c.path();
        let (old, new) = (workspace.join(rel), layer.upper.join(rel));
        if old.is_dir() || new.is_dir() {
            continue;
        }
        let old_text = match &c {
            Change::Added { .. } => Some(String::new()),
            _ => read_text(&old),
        };
        let new_text = match &c {
            Change::Deleted { .. } => Some(String::new()),
            _ => read_text(&new),
        };
        let (a, b) = match &c {
            Change::Added { .. } => ("/dev/null".to_owned(), format!("b/{}", rel.display())),
            Change::Deleted { .. } => (format!("a/{}", rel.display()), "/dev/null".to_owned()),
            Change::Modified { .. } => (
                format!("a/{}", rel.display()),
                format!("b/{}", rel.display()),
            ),
        };
        match (old_text, new_text) {
            (Some(o), Some(n)) => {
                out.push_str(&format!("diff --warren a/{0} b/{0}\n", rel.display()));
                out.push_str(
                    &similar::TextDiff::from_lines(&o, &n)
                        .unified_diff()
                        .context_radius(3)
                        .header(&a, &b)
                        .to_string(),
                );
            }
            _ => out.push_str(&format!("Binary files {a} and {b} differ\n")),
        }
    }
    Ok(out)
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    /// Paths written.
    pub written: Vec<PathBuf>,
    /// Paths removed.
    pub removed: Vec<PathBuf>,
}

enum Op {
    Remove(PathBuf),
    MkDir(PathBuf, u32),
    Copy { from: PathBuf, to: PathBuf },
    Symlink { target: PathBuf, at: PathBuf },
}

/// How to undo one completed step.
enum Undo {
    /// Put the original back from where it was set aside.
    Restore {
        aside: PathBuf,
        to: PathBuf,
    },
    /// Remove what we created.
    RemoveFile(PathBuf),
    RemoveDir(PathBuf),
}

fn modified_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Paths the layer changes that the project changed too since the layer was created: a file
/// modified (or, for an addition, created) after the task started.
pub fn conflicts(
    layer: &CowLayer,
    workspace: &Path,
    since_ns: u128,
) -> Result<Vec<PathBuf>, CellError> {
    let mut out = Vec::new();
    for c in changes(layer, workspace)? {
        let Ok(m) = std::fs::symlink_metadata(workspace.join(c.path())) else {
            continue;
        };
        let upper_is_dir = layer.upper.join(c.path()).is_dir();
        let changed = match c {
            Change::Added { .. } => !(m.is_dir() && upper_is_dir),
            Change::Modified { .. } | Change::Deleted { .. } => {
                !m.is_dir() && modified_ns(&m) > since_ns
            }
        };
        if changed {
            out.push(c.path().to_path_buf());
        }
    }
    Ok(out)
}

fn aside_name(p: &Path) -> PathBuf {
    p.with_file_name(format!(
        ".{}.warren-orig",
        p.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ))
}

/// Apply a layer's changes to its workspace, all or nothing.
///
/// Refuses, changing nothing, when the project changed a path the layer also changes since
/// the layer was created ([`conflicts`]). Every source is checked before anything is written;
/// each file is written to a temporary name and renamed into place; what is replaced or
/// removed is first set aside in its own directory, so if any step fails every completed step
/// is undone and the project is as it was.
pub fn apply(layer: &CowLayer, workspace: &Path) -> Result<ApplyReport, CellError> {
    let since = std::fs::read(layer.root.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<LayerMeta>(&b).ok())
        .map_or(0, |m| {
            if m.created_ns > 0 {
                m.created_ns
            } else {
                u128::from(m.created) * 1_000_000_000
            }
        });
    if since > 0 {
        let clash = conflicts(layer, workspace, since)?;
        if !clash.is_empty() {
            let list: Vec<String> = clash.iter().map(|p| p.display().to_string()).collect();
            return Err(CellError::Spec(format!(
                "the project changed since the task started, in paths the task also changed: {}; nothing was applied",
                list.join(", ")
            )));
        }
    }
    apply_plan(layer, workspace, None)
}

fn apply_plan(
    layer: &CowLayer,
    workspace: &Path,
    fail_after: Option<usize>,
) -> Result<ApplyReport, CellError> {
    let changes = changes(layer, workspace)?;
    let mut plan = Vec::new();
    for c in &changes {
        let (src, dst) = (layer.upper.join(c.path()), workspace.join(c.path()));
        match c {
            Change::Deleted { .. } => plan.push(Op::Remove(dst)),
            Change::Added { .. } | Change::Modified { .. } => {
                let m = std::fs::symlink_metadata(&src).map_err(CellError::io("stat", &src))?;
                if m.is_dir() {
                    plan.push(Op::MkDir(dst, m.permissions().mode() & 0o7777));
                } else if m.file_type().is_symlink() {
                    let target =
                        std::fs::read_link(&src).map_err(CellError::io("readlink", &src))?;
                    plan.push(Op::Symlink { target, at: dst });
                } else if m.is_file() {
                    std::fs::File::open(&src).map_err(CellError::io("open", &src))?;
                    plan.push(Op::Copy { from: src, to: dst });
                } else {
                    return Err(CellError::Spec(format!(
                        "{}: not a regular file, directory or symlink",
                        c.path().display()
                    )));
                }
            }
        }
    }
    let mut report = ApplyReport::default();
    let mut undo: Vec<Undo> = Vec::new();
    let step = |op: Op, undo: &mut Vec<Undo>, report: &mut ApplyReport| -> Result<(), CellError> {
        // Set an existing path aside (same directory: a rename, never a copy).
        let set_aside = |p: &Path, undo: &mut Vec<Undo>| -> Result<(), CellError> {
            if std::fs::symlink_metadata(p).is_ok() {
                let aside = aside_name(p);
                std::fs::rename(p, &aside).map_err(CellError::io("set aside", p))?;
                undo.push(Undo::Restore {
                    aside,
                    to: p.to_path_buf(),
                });
            }
            Ok(())
        };
        match op {
            Op::Remove(p) => {
                if std::fs::symlink_metadata(&p).is_ok() {
                    set_aside(&p, undo)?;
                    report.removed.push(p);
                }
            }
            Op::MkDir(p, mode) => {
                if !p.is_dir() {
                    set_aside(&p, undo)?;
                    std::fs::create_dir(&p).map_err(CellError::io("mkdir", &p))?;
                    undo.push(Undo::RemoveDir(p.clone()));
                    let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
                    report.written.push(p);
                }
            }
            Op::Copy { from, to } => {
                let tmp = to.with_file_name(format!(
                    ".{}.warren-apply",
                    to.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ));
                std::fs::copy(&from, &tmp).map_err(CellError::io("copy", &from))?;
                if let Ok(m) = std::fs::metadata(&to) {
                    // Keep the owner of a file we replace (apply may run as root).
                    let _ = std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()));
                }
                if let Err(e) = set_aside(&to, undo) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                std::fs::rename(&tmp, &to).map_err(CellError::io("rename", &to))?;
                undo.push(Undo::RemoveFile(to.clone()));
                report.written.push(to);
            }
            Op::Symlink { target, at } => {
                set_aside(&at, undo)?;
                std::os::unix::fs::symlink(&target, &at).map_err(CellError::io("symlink", &at))?;
                undo.push(Undo::RemoveFile(at.clone()));
                report.written.push(at);
            }
        }
        Ok(())
    };
    let mut result = Ok(());
    for (i, op) in plan.into_iter().enumerate() {
        if fail_after == Some(i) {
            result = Err(CellError::Spec("injected failure".into()));
            break;
        }
        if let Err(e) = step(op, &mut undo, &mut report) {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => {
            // Commit: drop what was set aside.
            for u in undo {
                if let Undo::Restore { aside, .. } = u {
                    let _ = if aside.is_dir() && !aside.is_symlink() {
                        std::fs::remove_dir_all(&aside)
                    } else {
                        std::fs::remove_file(&aside)
                    };
                }
            }
            Ok(report)
        }
        Err(e) => {
            for u in undo.into_iter().rev() {
                let _ = match u {
                    Undo::RemoveFile(p) => std::fs::remove_file(p),
                    Undo::RemoveDir(p) => std::fs::remove_dir(p),
                    Undo::Restore { aside, to } => std::fs::rename(aside, to),
                };
            }
            Err(e)
        }
    }
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
        let err = apply_plan(&layer, &ws, Some(2)).unwrap_err().to_string();
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
}
