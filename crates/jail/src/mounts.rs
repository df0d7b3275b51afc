//! Build a cell's root from its [`MountSpec`], then `pivot_root` into it.
//!
//! Three phases, in this order for a reason:
//! 1. **Capture.** Every host source is captured as a detached mount held by a file descriptor
//!    (`open_tree(OPEN_TREE_CLONE)` for binds and devices, `fsopen`/`fsmount` for overlays).
//!    Read-only, nosuid and nodev are set on the detached mount, recursively, before it is ever
//!    visible — so there is no window where a bind is writable, and no separate remount that
//!    could be forgotten for a sub-mount.
//! 2. **Assemble.** A fresh tmpfs becomes the new root; the captured mounts are moved into
//!    place, tmpfs mounts made, symlinks and small host-chosen files written. Because sources
//!    were captured first, mounting the new root over a path cannot shadow a source (a
//!    workspace under `/tmp`, say).
//! 3. **Switch.** `pivot_root` into the new root, detach the old one entirely, and make the
//!    root itself read-only.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};

use warren_protocol::mount::{MountKind, MountSpec};

use crate::sys::{self, attr};

/// Where the new root is assembled (in the cell's private mount namespace only).
const STAGING: &str = "/tmp";

enum Captured {
    /// A detached mount to move into place; `dir` says whether the mountpoint is a directory.
    Tree { fd: OwnedFd, dir: bool },
    /// Made in phase 2.
    Later,
}

/// A failed step, named for the report (`"mount /workspace"`).
#[derive(Debug)]
pub struct MountError {
    /// Which step failed.
    pub step: String,
    /// The underlying error.
    pub error: io::Error,
}

fn step<T>(what: impl Into<String>, r: io::Result<T>) -> Result<T, MountError> {
    r.map_err(|error| MountError {
        step: what.into(),
        error,
    })
}

/// Build the root described by `spec` and switch into it. Must run as the cell's pid 1 (for
/// `/proc`), in fresh user and mount namespaces, with capabilities in the user namespace.
///
/// `premounted` is a mount the supervisor prepared for one target (an idmapped workspace, or
/// an overlay over one); it is moved into place as is.
pub fn build_root(
    spec: &MountSpec,
    premounted: Option<(String, OwnedFd)>,
) -> Result<(), MountError> {
    let mut premounted = premounted;
    step(
        "make / private",
        sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None),
    )?;

    // Phase 1: capture.
    let mut captured = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        let what = format!("mount {}", m.target);
        let c = match &m.kind {
            MountKind::Bind { .. } | MountKind::Cow { .. }
                if premounted.as_ref().is_some_and(|(t, _)| *t == m.target) =>
            {
                match premounted.take() {
                    // Built and configured (idmap, ro, nosuid, nodev) by the supervisor.
                    Some((_, fd)) => Captured::Tree { fd, dir: true },
                    None => Captured::Later,
                }
            }
            MountKind::Bind { source, readonly } => {
                let meta = step(&what, source_metadata(source))?;
                let fd = step(&what, sys::open_tree_clone(source, true))?;
                let mut set = attr::NOSUID | attr::NODEV;
                if *readonly {
                    set |= attr::RDONLY;
                }
                step(&what, sys::mount_setattr(fd.as_raw_fd(), "", set, true))?;
                Captured::Tree {
                    fd,
                    dir: meta.is_dir(),
                }
            }
            MountKind::Device { source } => {
                let meta = step(&what, source_metadata(source))?;
                if !meta.file_type().is_char_device() {
                    return Err(MountError {
                        step: what,
                        error: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{source} is not a character device"),
                        ),
                    });
                }
                let fd = step(&what, sys::open_tree_clone(source, false))?;
                step(
                    &what,
                    sys::mount_setattr(fd.as_raw_fd(), "", attr::NOSUID | attr::NOEXEC, false),
                )?;
                Captured::Tree { fd, dir: false }
            }
            MountKind::Cow { lower, upper, work } => {
                let fd = step(
                    &what,
                    sys::fs_mount(
                        "overlay",
                        &[
                            ("lowerdir", lower),
                            ("upperdir", upper),
                            ("workdir", work),
                            ("userxattr", ""),
                        ],
                        attr::NOSUID | attr::NODEV,
                    ),
                )?;
                Captured::Tree { fd, dir: true }
            }
            MountKind::Tmpfs { .. } | MountKind::Symlink { .. } | MountKind::File { .. } => {
                Captured::Later
            }
        };
        captured.push(c);
    }

    // Phase 2: assemble under STAGING.
    step(
        "mount new root",
        sys::mount(
            Some("warren"),
            STAGING,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("size=1m,mode=0755"),
        ),
    )?;
    for (m, c) in spec.mounts.iter().zip(captured) {
        let what = format!("mount {}", m.target);
        let at = format!("{STAGING}{}", m.target);
        if let Some(parent) = std::path::Path::new(&at).parent() {
            step(
                &what,
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent),
            )?;
        }
        match (&m.kind, c) {
            (_, Captured::Tree { fd, dir }) => {
                step(&what, make_mountpoint(&at, dir))?;
                step(&what, sys::move_mount(fd.as_raw_fd(), &at))?;
            }
            (
                MountKind::Tmpfs {
                    size_bytes,
                    mode,
                    readonly,
                },
                _,
            ) => {
                step(&what, make_mountpoint(&at, true))?;
                let data = format!("size={size_bytes},mode={mode:o}");
                // A tmpfs that becomes read-only holds nothing to execute either (`/dev`).
                let noexec = if *readonly { libc::MS_NOEXEC } else { 0 };
                step(
                    &what,
                    sys::mount(
                        Some("tmpfs"),
                        &at,
                        Some("tmpfs"),
                        libc::MS_NOSUID | libc::MS_NODEV | noexec,
                        Some(&data),
                    ),
                )?;
            }
            (MountKind::Symlink { points_to }, _) => {
                step(&what, std::os::unix::fs::symlink(points_to, &at))?;
            }
            (MountKind::File { contents }, _) => {
                step(&what, write_new(&at, contents))?;
            }
            _ => {}
        }
    }

    // Read-only tmpfs mounts are sealed now that everything below them exists.
    for m in &spec.mounts {
        if let MountKind::Tmpfs { readonly: true, .. } = m.kind {
            let at = format!("{STAGING}{}", m.target);
            step(
                format!("read-only {}", m.target),
                sys::mount(
                    None,
                    &at,
                    None,
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    None,
                ),
            )?;
        }
    }

    // A fresh /proc for the cell's own pid namespace. Its kernel knobs are owned by the host's
    // root, which is unmapped here, so DAC already refuses writes; /proc/sys and
    // /proc/sysrq-trigger are additionally bound read-only, and Landlock makes all of /proc
    // read-only for commands.
    let proc_dir = format!("{STAGING}/proc");
    step("mount /proc", make_mountpoint(&proc_dir, true))?;
    step(
        "mount /proc",
        sys::mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
    )?;
    for sub in ["sys", "sysrq-trigger"] {
        let p = format!("{proc_dir}/{sub}");
        if std::fs::symlink_metadata(&p).is_ok() {
            step(format!("read-only /proc/{sub}"), bind_readonly_self(&p))?;
        }
    }

    // Phase 3: switch.
    step("pivot_root", sys::pivot_into(STAGING))?;
    step(
        "read-only root",
        sys::mount(
            None,
            "/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        ),
    )?;
    Ok(())
}

/// The metadata of a mount's host source; an error names the source.
fn source_metadata(source: &str) -> io::Result<std::fs::Metadata> {
    std::fs::metadata(source).map_err(|e| io::Error::new(e.kind(), format!("source {source}: {e}")))
}

fn make_mountpoint(path: &str, dir: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(_) if dir => std::fs::DirBuilder::new().mode(0o755).create(path),
        Err(_) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map(drop),
    }
}

fn write_new(path: &str, contents: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Bind a path onto itself read-only (for procfs knobs).
fn bind_readonly_self(path: &str) -> io::Result<()> {
    let fd = sys::open_tree_clone(path, true)?;
    sys::mount_setattr(
        fd.as_raw_fd(),
        "",
        attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
        true,
    )?;
    sys::move_mount(fd.as_raw_fd(), path)
}
