//! The mount spec: a cell's whole world, listed explicitly.
//!
//! Nothing exists inside a cell unless a [`Mount`] puts it there. The host resolves a user's
//! request (`--workspace DIR --cow`, a policy file, later an agent manifest) into a
//! [`MountSpec`]; the jail executes it verbatim and derives its Landlock rules from the same
//! list, so the kernel mount table and the Landlock ruleset can never disagree about what is
//! writable.

use serde::{Deserialize, Serialize};

/// How a host directory or file appears inside the cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountKind {
    /// A bind mount of a host path. Always `nosuid`; `nodev` unless it is a device node.
    Bind {
        /// Absolute host path.
        source: String,
        /// Read-only (recursively, including sub-mounts).
        readonly: bool,
    },
    /// A copy-on-write overlay of a host directory: reads see `lower`, writes land in `upper`,
    /// which lives on the host so it can list, diff, apply or discard the changes later.
    Cow {
        /// The host directory being overlaid (never written).
        lower: String,
        /// Host directory receiving the changes.
        upper: String,
        /// Overlayfs work directory (same filesystem as `upper`).
        work: String,
    },
    /// A fresh tmpfs with a size cap.
    Tmpfs {
        /// Maximum size in bytes.
        size_bytes: u64,
        /// Octal mode of the mount root.
        mode: u32,
        /// Made read-only once everything below it is in place (`/dev`).
        #[serde(default)]
        readonly: bool,
    },
    /// A host device node (character devices only; the jail refuses block devices).
    Device {
        /// Absolute host path, e.g. `/dev/null`.
        source: String,
    },
    /// A symbolic link created in the cell's root (`/bin -> usr/bin` on merged-usr hosts).
    Symlink {
        /// The link's target, as stored in the link.
        points_to: String,
    },
    /// A small read-only file whose contents the host chose (`/etc/passwd`, `/etc/hosts`).
    File {
        /// File contents.
        contents: String,
    },
}

/// One entry in a cell's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the cell.
    pub target: String,
    /// What appears there.
    #[serde(flatten)]
    pub kind: MountKind,
}

impl Mount {
    /// Whether processes in the cell may write below this mount.
    pub fn writable(&self) -> bool {
        match &self.kind {
            MountKind::Bind { readonly, .. } | MountKind::Tmpfs { readonly, .. } => !readonly,
            MountKind::Cow { .. } => true,
            MountKind::Device { .. } | MountKind::Symlink { .. } | MountKind::File { .. } => false,
        }
    }

    /// Whether files below this mount may be executed.
    pub fn executable(&self) -> bool {
        !matches!(
            self.kind,
            MountKind::Device { .. } | MountKind::File { .. } | MountKind::Symlink { .. }
        )
    }
}

/// The ordered list of mounts making up a cell's root. Parents must precede children.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Mounts in the order they are made.
    pub mounts: Vec<Mount>,
    /// Capability scopes, enforced by Landlock: when a mount has scopes beneath it, commands
    /// may only list its directories, and read (or write) only beneath the scopes. No scopes:
    /// the mount's own access applies everywhere in it.
    #[serde(default)]
    pub scopes: Vec<Scope>,
}

/// One path of a capability scope (see [`MountSpec::scopes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Absolute cell path below (or equal to) a mount's target.
    pub path: String,
    /// Write as well as read (only effective on a writable mount).
    pub write: bool,
}

/// Why a mount spec was rejected before any kernel call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A target or source path is not absolute or contains `..`, `.` or empty components.
    #[error("mount path {0:?} must be absolute and normalised (no '.', '..' or '//')")]
    BadPath(String),
    /// Two mounts claim the same target.
    #[error("mount target {0:?} appears twice")]
    Duplicate(String),
    /// A mount would replace the cell's root or a directory Warren manages itself.
    #[error("mount target {0:?} is reserved")]
    Reserved(String),
}

/// Reject paths that are relative or not in normal form; the jail never resolves `..`.
pub fn check_path(path: &str) -> Result<(), SpecError> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !path.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadPath(path.to_owned()))
    }
}

impl MountSpec {
    /// Validate every path and the absence of duplicates and reserved targets.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.mounts {
            check_path(&m.target)?;
            if m.target == "/proc" {
                return Err(SpecError::Reserved(m.target.clone()));
            }
            match &m.kind {
                MountKind::Bind { source, .. } | MountKind::Device { source } => {
                    check_path(source)?
                }
                MountKind::Cow { lower, upper, work } => {
                    check_path(lower)?;
                    check_path(upper)?;
                    check_path(work)?;
                }
                MountKind::Tmpfs { .. } | MountKind::Symlink { .. } | MountKind::File { .. } => {}
            }
            if !seen.insert(m.target.as_str()) {
                return Err(SpecError::Duplicate(m.target.clone()));
            }
        }
        Ok(())
    }

    /// The mount at exactly `target`, if any.
    pub fn get(&self, target: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.target == target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_normalised() {
        for bad in ["", "/", "rel", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/a", "/workspace", "/usr/lib64", "/a.b/..c"] {
            assert!(check_path(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn duplicates_and_reserved_rejected() {
        let tmp = |t: &str| Mount {
            target: t.into(),
            kind: MountKind::Tmpfs {
                size_bytes: 1,
                mode: 0o755,
                readonly: false,
            },
        };
        let spec = MountSpec {
            mounts: vec![tmp("/tmp"), tmp("/tmp")],
            ..MountSpec::default()
        };
        assert_eq!(spec.validate(), Err(SpecError::Duplicate("/tmp".into())));
        let spec = MountSpec {
            mounts: vec![tmp("/proc")],
            ..MountSpec::default()
        };
        assert_eq!(spec.validate(), Err(SpecError::Reserved("/proc".into())));
    }

    #[test]
    fn writability_follows_kind() {
        let m = |kind| Mount {
            target: "/x".into(),
            kind,
        };
        assert!(
            !m(MountKind::Bind {
                source: "/a".into(),
                readonly: true
            })
            .writable()
        );
        assert!(
            m(MountKind::Bind {
                source: "/a".into(),
                readonly: false
            })
            .writable()
        );
        assert!(
            m(MountKind::Tmpfs {
                size_bytes: 1,
                mode: 0o1777,
                readonly: false,
            })
            .writable()
        );
        assert!(
            !m(MountKind::Tmpfs {
                size_bytes: 1,
                mode: 0o755,
                readonly: true,
            })
            .writable()
        );
        assert!(
            !m(MountKind::Device {
                source: "/dev/null".into()
            })
            .writable()
        );
    }

    #[test]
    fn wire_shape_is_flat_and_tagged() {
        let m = Mount {
            target: "/workspace".into(),
            kind: MountKind::Bind {
                source: "/src".into(),
                readonly: true,
            },
        };
        let json = serde_json::to_string(&m).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"target":"/workspace","kind":"bind","source":"/src","readonly":true}"#
        );
    }
}
