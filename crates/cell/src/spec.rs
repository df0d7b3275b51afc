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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cgroup: CgroupLimits::default(),
            tmp_bytes: 256 << 20,
            nofile: 1024,
            fsize: 1 << 30,
            max_output_bytes: 1 << 20,
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
        }
    }
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
}
