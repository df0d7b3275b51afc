//! What a caller asks for ([`CellSpec`]) and how it becomes the explicit namespace the jail
//! builds ([`CellSpec::mount_spec`]).
//!
//! The default namespace is deliberately small: read-only system directories, a generated
//! `/etc` holding only non-secret files, `/workspace`, a size-capped `/tmp`, a minimal `/dev`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use warren_protocol::jail::{CELL_GID, CELL_UID};
use warren_protocol::mount::{Mount, MountKind, MountSpec, check_path};

use crate::cgroup::CgroupLimits;
use crate::error::CellError;

/// How `/workspace` is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceMode {
    /// Read-only bind.
    ReadOnly,
    /// Read-write bind: changes land on the host directly.
    ReadWrite,
    /// Copy-on-write overlay: changes land in a host-side upper layer, for review.
    Cow,
}

/// The host directory exposed as `/workspace`.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Host directory (absolute, canonical).
    pub host: PathBuf,
    /// How it is mounted.
    pub mode: WorkspaceMode,
}

/// Per-process and whole-cell limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// cgroup limits (memory, pids, cpu).
    pub cgroup: CgroupLimits,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub fsize: u64,
    /// Bytes of each of stdout/stderr forwarded per command.
    pub max_output_bytes: u64,
    /// Bytes a copy-on-write workspace's upper layer may hold ([`crate::disk`]); `None`:
    /// unbounded.
    pub disk_bytes: Option<u64>,
}

/// The default disk bound of a copy-on-write workspace.
pub const DEFAULT_DISK_BYTES: u64 = 4 << 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cgroup: CgroupLimits::default(),
            tmp_bytes: 256 << 20,
            nofile: 1024,
            fsize: 1 << 30,
            max_output_bytes: 1 << 20,
            disk_bytes: Some(DEFAULT_DISK_BYTES),
        }
    }
}

/// Everything needed to start a cell.
#[derive(Clone, Debug)]
pub struct CellSpec {
    /// `/workspace`, if any.
    pub workspace: Option<Workspace>,
    /// Limits.
    pub limits: Limits,
    /// Extra environment for every command (on top of the fixed allowlist).
    pub env: Vec<(String, String)>,
    /// Extra mounts appended to the default namespace (e.g. a tool directory, read-only).
    pub extra_mounts: Vec<Mount>,
    /// Capability scopes under the mounts (Landlock; see [`MountSpec::scopes`]).
    pub scopes: Vec<warren_protocol::mount::Scope>,
    /// Host uid/gid the cell user maps to; `None` picks one (see [`resolve_identity`]).
    pub identity: Option<(u32, u32)>,
    /// Where copy-on-write layers are kept (`<state>/changes/<cell-id>`).
    pub state_dir: PathBuf,
    /// Refuse to start without Landlock (default true).
    pub require_landlock: bool,
    /// Use this id instead of a fresh random one (a task names its cell after itself).
    pub id: Option<String>,
    /// Network egress through a host-side proxy listening on this unix socket (its directory
    /// is bind-mounted into the cell); `None`: no network at all.
    pub egress: Option<PathBuf>,
    /// Warren's own directories besides `state_dir` (which holds the daemon's socket, its API
    /// token and the databases): by default its system and user configuration
    /// ([`default_private_dirs`]). None of them is ever visible in a cell: one inside the
    /// workspace is masked, a workspace inside one is refused ([`CellSpec::mount_spec`]).
    pub private_dirs: Vec<PathBuf>,
    /// The tier to start (default: the process tier).
    pub tier: crate::Tier,
    /// WebAssembly modules the cell may run (absolute host paths, from the operator's
    /// manifest): the wasi tier's only commands; ignored by the process tier.
    pub wasm_modules: Vec<PathBuf>,
}

/// Where the egress proxy's socket directory appears in a cell.
pub const EGRESS_DIR: &str = "/run/egress";
/// The loopback port of the in-cell forwarder (`HTTP_PROXY=http://127.0.0.1:3128`).
pub const EGRESS_PORT: u16 = 3128;

impl CellSpec {
    /// A spec with defaults and no workspace.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        CellSpec {
            workspace: None,
            limits: Limits::default(),
            env: Vec::new(),
            extra_mounts: Vec::new(),
            scopes: Vec::new(),
            identity: None,
            state_dir: state_dir.into(),
            require_landlock: true,
            egress: None,
            id: None,
            private_dirs: default_private_dirs(),
            tier: crate::Tier::Process,
            wasm_modules: Vec::new(),
        }
    }
}

/// Warren's configuration directories: `/etc/warren` and `$HOME/.config/warren` (keys, the
/// user's trust decisions).
pub fn default_private_dirs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/warren")];
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".config/warren"));
    }
    v
}

/// System directories bound read-only when present (symlinks are recreated as symlinks, as
/// on merged-/usr hosts where `/bin -> usr/bin`).
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// Host `/etc` entries a cell may see, each needed by ordinary programs and none secret.
/// Everything else (shadow, gshadow, sudoers, ssh keys, machine-id, credentials of package
/// managers, …) does not exist in a cell, except what [`crate::hostpaths::etc_entries`]
/// derives from the installed toolchains (a JVM's configuration directory, say).
pub const ETC_ALLOWLIST: &[(&str, &str)] = &[
    ("ld.so.cache", "dynamic linker's library index"),
    ("ld.so.conf", "dynamic linker configuration"),
    ("ld.so.conf.d", "dynamic linker configuration"),
    (
        "alternatives",
        "Debian's /usr/bin/* -> alternatives symlinks (awk, editor, java, …)",
    ),
    ("ssl", "CA certificates for TLS clients"),
    ("ca-certificates", "CA certificates for TLS clients"),
    ("localtime", "time zone"),
    ("protocols", "getprotobyname"),
    ("services", "getservbyname"),
    ("mime.types", "MIME lookups"),
    ("bash.bashrc", "bash start-up"),
    ("profile", "sh start-up"),
    ("inputrc", "readline"),
    ("magic", "file(1)"),
    ("python3", "Python site configuration"),
    ("python3.11", "Python site configuration"),
    ("perl", "Perl configuration"),
];

/// Device nodes a cell gets. No block devices, no `/dev/kvm`, no `/dev/vsock`, no `/dev/fuse`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The fixed environment of every command; nothing from the host leaks in.
pub fn base_env(hostname: &str) -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/tmp"),
        ("USER", "agent"),
        ("LOGNAME", "agent"),
        ("SHELL", "/bin/sh"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
        ("TMPDIR", "/tmp"),
        ("HOSTNAME", hostname),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Which host uid/gid the cell user (uid 1000 inside) maps to.
///
/// - An ordinary user can only map itself: the cell runs as the caller.
/// - Root maps to the workspace's owner when that is not root (so a cell on a developer's
///   checkout acts as that developer), otherwise to `nobody` (65534). Host root is never
///   mapped into a cell: a process that is root on the host but merely capability-less would
///   still own every root-owned file it could reach.
pub fn resolve_identity(spec: &CellSpec) -> (u32, u32) {
    if let Some(id) = spec.identity {
        return id;
    }
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        return (euid, egid);
    }
    if let Some(ws) = &spec.workspace
        && let Ok(m) = std::fs::metadata(&ws.host)
        && m.uid() != 0
    {
        return (m.uid(), if m.gid() != 0 { m.gid() } else { m.uid() });
    }
    (65534, 65534)
}

/// When root runs a cell on a workspace whose owner is not the cell's host identity (a
/// root-owned checkout, mapped to `nobody`), present the workspace through an idmapped mount so
/// the cell can edit it as its owner would. Needs root; ordinary users map themselves and own
/// their workspace already.
///
/// Disk uid 0 is never mapped read-write: whatever the cell created there (a setuid binary,
/// say) would be root's on the host. A root-owned `rw` workspace is refused; `cow` maps it as
/// the overlay's read-only lower layer, and `apply` masks modes.
pub fn workspace_idmap(
    spec: &CellSpec,
    host_uid: u32,
) -> Result<Option<warren_protocol::jail::IdMap>, CellError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let Some(ws) = spec.workspace.as_ref() else {
        return Ok(None);
    };
    if ws.mode == WorkspaceMode::ReadOnly {
        return Ok(None);
    }
    let Ok(m) = std::fs::metadata(&ws.host) else {
        return Ok(None);
    };
    if m.uid() == host_uid {
        return Ok(None);
    }
    if m.uid() == 0 && ws.mode == WorkspaceMode::ReadWrite {
        return Err(CellError::Spec(format!(
            "{} is owned by root: a read-write workspace would let the cell create root-owned (setuid) files on the host; use a copy-on-write workspace (review, then apply) or give the tree an ordinary owner",
            ws.host.display()
        )));
    }
    Ok(Some(warren_protocol::jail::IdMap {
        target: "/workspace".into(),
        disk_uid: m.uid(),
        disk_gid: m.gid(),
    }))
}

fn bind(target: &str, source: &str, readonly: bool) -> Mount {
    Mount {
        target: target.into(),
        kind: MountKind::Bind {
            source: source.into(),
            readonly,
        },
    }
}

fn file(target: &str, contents: String) -> Mount {
    Mount {
        target: target.into(),
        kind: MountKind::File { contents },
    }
}

/// Copy-on-write layer directories of a cell.
#[derive(Clone, Debug)]
pub struct CowLayer {
    /// `<state>/changes/<id>`.
    pub root: PathBuf,
    /// Overlay upper dir (the changes).
    pub upper: PathBuf,
    /// Overlay work dir.
    pub work: PathBuf,
}

impl CowLayer {
    /// Layout under the state directory.
    pub fn at(state_dir: &Path, id: &str) -> Self {
        let root = state_dir.join("changes").join(id);
        CowLayer {
            upper: root.join("upper"),
            work: root.join("work"),
            root,
        }
    }
}

fn utf8(p: &Path) -> Result<&str, CellError> {
    p.to_str()
        .ok_or_else(|| CellError::Spec(format!("path {} is not UTF-8", p.display())))
}

impl CellSpec {
    /// The explicit namespace for this spec. `cow` must be given when the workspace is `Cow`.
    pub fn mount_spec(
        &self,
        hostname: &str,
        cow: Option<&CowLayer>,
    ) -> Result<MountSpec, CellError> {
        let mut mounts = Vec::new();
        for dir in SYSTEM_DIRS {
            let Ok(meta) = std::fs::symlink_metadata(dir) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(dir).map_err(CellError::io("readlink", *dir))?;
                mounts.push(Mount {
                    target: (*dir).into(),
                    kind: MountKind::Symlink {
                        points_to: utf8(&target)?.to_owned(),
                    },
                });
            } else if meta.is_dir() {
                mounts.push(bind(dir, dir, true));
            }
        }
        // /etc: generated identity files, then allowlisted host entries.
        mounts.push(file("/etc/passwd", format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{CELL_UID}:{CELL_GID}:Warren agent:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )));
        mounts.push(file(
            "/etc/group",
            format!("root:x:0:\nagent:x:{CELL_GID}:\nnogroup:x:65534:\n"),
        ));
        mounts.push(file("/etc/hostname", format!("{hostname}\n")));
        mounts.push(file(
            "/etc/hosts",
            format!("127.0.0.1 localhost {hostname}\n::1 localhost ip6-localhost\n"),
        ));
        mounts.push(file(
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n".into(),
        ));
        mounts.push(file(
            "/etc/resolv.conf",
            "# no network in this cell\n".into(),
        ));
        // Named and derived from the installed toolchains (see `hostpaths`).
        for host in crate::hostpaths::etc_entries() {
            mounts.push(bind(&host, &host, true));
        }
        // /workspace.
        if let Some(ws) = &self.workspace {
            let host = utf8(&ws.host)?;
            check_path(host).map_err(|e| CellError::Spec(e.to_string()))?;
            if !ws.host.is_dir() {
                return Err(CellError::Spec(format!(
                    "workspace {host} is not a directory"
                )));
            }
            mounts.push(match ws.mode {
                WorkspaceMode::ReadOnly => bind("/workspace", host, true),
                WorkspaceMode::ReadWrite => bind("/workspace", host, false),
                WorkspaceMode::Cow => {
                    let cow =
                        cow.ok_or_else(|| CellError::Spec("cow workspace without a layer".into()))?;
                    Mount {
                        target: "/workspace".into(),
                        kind: MountKind::Cow {
                            lower: host.to_owned(),
                            upper: utf8(&cow.upper)?.to_owned(),
                            work: utf8(&cow.work)?.to_owned(),
                        },
                    }
                }
            });
            mounts.extend(self.own_files_masks(ws, cow)?);
        }
        mounts.push(Mount {
            target: "/tmp".into(),
            kind: MountKind::Tmpfs {
                size_bytes: self.limits.tmp_bytes,
                mode: 0o1777,
                readonly: false,
            },
        });
        // /dev: a small tmpfs with bound character devices and the usual symlinks, read-only
        // once populated (only the devices themselves and /dev/shm are writable).
        mounts.push(Mount {
            target: "/dev".into(),
            kind: MountKind::Tmpfs {
                size_bytes: 64 << 10,
                mode: 0o755,
                readonly: true,
            },
        });
        for d in DEVICES {
            let p = format!("/dev/{d}");
            if std::fs::metadata(&p).is_ok() {
                mounts.push(Mount {
                    target: p.clone(),
                    kind: MountKind::Device { source: p },
                });
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            mounts.push(Mount {
                target: format!("/dev/{name}"),
                kind: MountKind::Symlink {
                    points_to: target.into(),
                },
            });
        }
        mounts.push(Mount {
            target: "/dev/shm".into(),
            kind: MountKind::Tmpfs {
                size_bytes: self.limits.tmp_bytes.min(64 << 20),
                mode: 0o1777,
                readonly: false,
            },
        });
        mounts.extend(self.extra_mounts.iter().cloned());
        if let Some(sock) = &self.egress {
            let dir = sock
                .parent()
                .ok_or_else(|| CellError::Spec("egress socket has no directory".into()))?;
            mounts.push(Mount {
                target: EGRESS_DIR.into(),
                kind: MountKind::Bind {
                    source: utf8(dir)?.to_owned(),
                    readonly: true,
                },
            });
        }
        let spec = MountSpec {
            mounts,
            scopes: self.scopes.clone(),
        };
        spec.validate()
            .map_err(|e| CellError::Spec(e.to_string()))?;
        Ok(spec)
    }
}

/// The project's own Warren directory (`.warren/config.toml`), masked in every cell.
pub const PROJECT_DIR: &str = ".warren";

/// An empty, read-only tmpfs over `target`: what a cell sees where Warren keeps its own files.
fn mask(target: String) -> Mount {
    Mount {
        target,
        kind: MountKind::Tmpfs {
            size_bytes: 4096,
            mode: 0o555,
            readonly: true,
        },
    }
}

/// `p` made absolute with every existing prefix resolved (the rest appended as written).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut tail = Vec::new();
    let mut head = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(head) {
            return tail.iter().rev().fold(c, |acc: PathBuf, t| acc.join(t));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_owned());
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// When `/workspace` is copy-on-write and neither the project nor the layer has `.warren`, a
/// directory in the layer to mask (so the cell cannot create `.warren` either): created here,
/// owned by the cell, and to be removed with [`remove_cow_mountpoint`] once the cell is gone
/// (it is empty: the mask covered it all along). `None`: nothing was created.
pub fn prepare_cow_mountpoint(
    layer: &CowLayer,
    workspace: &Path,
    owner: (u32, u32),
) -> Result<Option<PathBuf>, CellError> {
    if std::fs::symlink_metadata(workspace.join(PROJECT_DIR)).is_ok() {
        return Ok(None);
    }
    let upper = warren_fsx::Dir::open(&layer.upper)
        .map_err(|e| CellError::Spec(format!("copy-on-write layer: {e}")))?;
    let fail = |e: warren_fsx::Error| CellError::Spec(format!("copy-on-write layer: {e}"));
    match upper.stat(PROJECT_DIR).map_err(fail)? {
        // Left by an earlier cell of this layer that did not get to remove it.
        Some(st) if st.kind == warren_fsx::Kind::Dir => {
            let empty = upper
                .sub(PROJECT_DIR)
                .and_then(|d| d.entries())
                .map_err(fail)?
                .is_empty();
            Ok(empty.then(|| layer.upper.join(PROJECT_DIR)))
        }
        // The layer's own doing (a whiteout, a file): the cell's business, no Warren file.
        Some(_) => Ok(None),
        None => {
            upper.mkdir(PROJECT_DIR, 0o755).map_err(fail)?;
            // SAFETY: geteuid has no preconditions.
            let owner = (unsafe { libc::geteuid() } == 0).then_some(owner);
            upper
                .set_mode_owner(PROJECT_DIR, 0o755, owner)
                .map_err(fail)?;
            Ok(Some(layer.upper.join(PROJECT_DIR)))
        }
    }
}

/// Remove what [`prepare_cow_mountpoint`] created, if it is still an empty directory.
pub fn remove_cow_mountpoint(layer: &CowLayer) {
    if let Ok(upper) = warren_fsx::Dir::open(&layer.upper) {
        let _ = upper.remove_dir(PROJECT_DIR);
    }
}

impl CellSpec {
    /// Masks over Warren's own files inside `/workspace`, right after the workspace mount
    /// (kept apart from the rest of the namespace on purpose):
    ///
    /// - the project's `.warren/` (its config may name endpoints; the cell must neither read
    ///   nor write it). Read-write: masked even when absent (the jail creates the empty
    ///   mountpoint on the host, so the cell cannot create `.warren`); a `.warren` that is a
    ///   link or a file is refused, since the cell could replace it with a directory.
    ///   Copy-on-write: masked in the merged view (see [`prepare_cow_mountpoint`]).
    /// - the state directory (database, daemon socket, API token, layers) and
    ///   [`CellSpec::private_dirs`] when they lie inside the workspace: created if missing (so
    ///   nothing can appear there unmasked later), then masked. A read-write cell could move
    ///   the parents of one that is not directly below the workspace root and plant its own
    ///   files in its place, so that is refused; directly below the root the mountpoint
    ///   cannot be moved.
    ///
    /// A workspace that is one of these directories or lies inside one is refused.
    fn own_files_masks(
        &self,
        ws: &Workspace,
        cow: Option<&CowLayer>,
    ) -> Result<Vec<Mount>, CellError> {
        let root = resolved(&ws.host);
        let mut targets: Vec<String> = Vec::new();
        let target_of = |rel: &Path| -> Result<String, CellError> {
            let t = format!("/workspace/{}", utf8(rel)?);
            check_path(&t).map_err(|e| CellError::Spec(e.to_string()))?;
            Ok(t)
        };
        let own = std::iter::once((&self.state_dir, "the state directory")).chain(
            self.private_dirs
                .iter()
                .map(|d| (d, "Warren's configuration")),
        );
        for (dir, what) in own {
            let dir = resolved(dir);
            if root.starts_with(&dir) {
                return Err(CellError::Spec(format!(
                    "workspace {} is {what} ({}) or inside it: Warren's own files never enter a cell",
                    root.display(),
                    dir.display()
                )));
            }
            let Ok(rel) = dir.strip_prefix(&root) else {
                continue;
            };
            if ws.mode == WorkspaceMode::ReadWrite && rel.components().count() > 1 {
                return Err(CellError::Spec(format!(
                    "{what} ({}) lies inside the read-write workspace {}: a read-write cell could move its parent directories and plant its own files there; use a copy-on-write or read-only workspace, or keep it outside the workspace",
                    dir.display(),
                    root.display()
                )));
            }
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => continue, // not a directory: holds nothing of Warren's
                Err(_) => {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)
                        .map_err(CellError::io("create", &dir))?;
                }
            }
            targets.push(target_of(rel)?);
        }
        let project = root.join(PROJECT_DIR);
        let meta = std::fs::symlink_metadata(&project);
        let is_dir = meta.as_ref().is_ok_and(|m| m.is_dir());
        let masked = match ws.mode {
            WorkspaceMode::ReadOnly => is_dir,
            WorkspaceMode::ReadWrite => match &meta {
                Ok(_) if is_dir => true,
                Ok(_) => {
                    return Err(CellError::Spec(format!(
                        "{} is not a directory (a link or a file): a read-write cell could replace it with Warren's configuration; remove it, or use a copy-on-write workspace",
                        project.display()
                    )));
                }
                // Absent: the jail creates the mountpoint, if the cell could create it at all.
                Err(_) => writable(&root),
            },
            WorkspaceMode::Cow => {
                match cow.map(|c| std::fs::symlink_metadata(c.upper.join(PROJECT_DIR))) {
                    Some(Ok(m)) => m.is_dir(),
                    _ => is_dir,
                }
            }
        };
        if masked {
            targets.push(target_of(Path::new(PROJECT_DIR))?);
        }
        // Parents first; nothing below another mask needs one of its own.
        targets.sort();
        targets.dedup();
        let mut out: Vec<Mount> = Vec::new();
        for t in targets {
            if !out.iter().any(|m| t.starts_with(&format!("{}/", m.target))) {
                out.push(mask(t));
            }
        }
        Ok(out)
    }
}

/// Whether this process may create entries in `dir` (`access(W_OK)`).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_namespace_has_no_secrets_and_no_dangerous_devices() {
        let spec = CellSpec::new("/nonexistent-state")
            .mount_spec("cell", None)
            .unwrap();
        for m in &spec.mounts {
            assert!(
                !m.target.contains("shadow")
                    && !m.target.contains("sudoers")
                    && !m.target.contains("ssh"),
                "{m:?}"
            );
            if let MountKind::Device { source } = &m.kind {
                assert!(
                    ![
                        "/dev/kvm",
                        "/dev/vsock",
                        "/dev/fuse",
                        "/dev/vda",
                        "/dev/sda"
                    ]
                    .contains(&source.as_str())
                );
            }
            if let MountKind::Bind { readonly, .. } = &m.kind {
                assert!(readonly, "system binds must be read-only: {m:?}");
            }
        }
        assert!(spec.get("/tmp").is_some() && spec.get("/dev/null").is_some());
        assert!(spec.get("/workspace").is_none());
    }

    #[test]
    fn workspace_modes_map_to_mount_kinds() {
        let mut s = CellSpec::new("/state");
        s.workspace = Some(Workspace {
            host: "/usr".into(),
            mode: WorkspaceMode::ReadOnly,
        });
        let m = s.mount_spec("c", None).unwrap();
        assert!(matches!(
            m.get("/workspace").unwrap().kind,
            MountKind::Bind { readonly: true, .. }
        ));
        s.workspace = Some(Workspace {
            host: "/usr".into(),
            mode: WorkspaceMode::Cow,
        });
        assert!(s.mount_spec("c", None).is_err(), "cow needs a layer");
        let layer = CowLayer::at(Path::new("/state"), "c1");
        let m = s.mount_spec("c", Some(&layer)).unwrap();
        assert!(
            matches!(&m.get("/workspace").unwrap().kind, MountKind::Cow { upper, .. } if upper == "/state/changes/c1/upper")
        );
    }

    #[test]
    fn root_never_maps_to_host_root() {
        let mut s = CellSpec::new("/state");
        s.workspace = Some(Workspace {
            host: "/".into(),
            mode: WorkspaceMode::ReadOnly,
        });
        let (uid, gid) = resolve_identity(&s);
        assert!(uid != 0 && gid != 0);
    }

    #[test]
    fn warrens_own_directories_inside_the_workspace_are_masked_or_refused() {
        let root = std::env::temp_dir().join(format!("warren-spec-own-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ws = root.join("ws");
        std::fs::create_dir_all(ws.join(".warren")).unwrap();
        std::fs::create_dir_all(ws.join("home/.config/warren")).unwrap();
        let mut s = CellSpec::new(ws.join("state"));
        s.private_dirs = vec![ws.join("home/.config/warren")];
        let masked = |s: &CellSpec| -> Vec<String> {
            s.mount_spec("c", None)
                .unwrap()
                .mounts
                .into_iter()
                .filter(|m| {
                    m.target.starts_with("/workspace/")
                        && matches!(m.kind, MountKind::Tmpfs { readonly: true, .. })
                })
                .map(|m| m.target)
                .collect()
        };
        s.workspace = Some(Workspace {
            host: ws.clone(),
            mode: WorkspaceMode::ReadOnly,
        });
        assert_eq!(
            masked(&s),
            [
                "/workspace/.warren",
                "/workspace/home/.config/warren",
                "/workspace/state"
            ]
        );
        assert!(
            ws.join("state").is_dir(),
            "a missing state dir is created to be masked"
        );
        // Read-write: a mask below a parent the cell could move is refused.
        s.workspace = Some(Workspace {
            host: ws.clone(),
            mode: WorkspaceMode::ReadWrite,
        });
        let e = s.mount_spec("c", None).unwrap_err().to_string();
        assert!(e.contains("lies inside the read-write workspace"), "{e}");
        s.private_dirs.clear();
        assert_eq!(masked(&s), ["/workspace/.warren", "/workspace/state"]);
        // A workspace inside the state directory, or the state directory itself.
        for host in [ws.join("state"), ws.join("state/changes")] {
            std::fs::create_dir_all(&host).unwrap();
            s.workspace = Some(Workspace {
                host,
                mode: WorkspaceMode::ReadOnly,
            });
            let e = s.mount_spec("c", None).unwrap_err().to_string();
            assert!(e.contains("is the state directory"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
