//! Host paths a cell sees besides the system directories and its own mounts: the `/etc`
//! entries that installed toolchains need, and read-only paths a policy adds.
//!
//! `/etc` holds secrets next to ordinary configuration, so a cell never gets the host's `/etc`
//! wholesale. A host entry `/etc/NAME` is bound read-only into a cell when it exists and
//!
//! 1. it is named in [`ETC_ALLOWLIST`](crate::spec::ETC_ALLOWLIST), each with its reason; or
//! 2. its name matches one of [`ETC_PATTERNS`]: a family of packages that keep their
//!    configuration under a versioned name (Debian's `java-17-openjdk`, `java-21-openjdk`, …);
//!    or
//! 3. an installed toolchain links into it: the toolchain homes below [`TOOLCHAIN_HOMES`] —
//!    where Debian's alternatives for `java`, `javac`, … resolve — keep symlinks in their
//!    `lib/` and `conf/` that point to `/etc/NAME/…` (a JVM reads `lib/jvm.cfg` before
//!    anything else, and it is such a link). What the toolchain itself points at is what it
//!    needs; nothing is guessed;
//!
//! and NAME is not one of [`ETC_NEVER`] (secrets, and the files a cell gets generated), whatever
//! rule matched. Derivation costs one listing of `/etc` and of each toolchain home's `lib/` and
//! `conf/` per cell start (tens of entries, no `stat` per entry). `/etc/alternatives` itself is
//! visible (allowlisted) but not walked: its few hundred links (~0.6 ms to resolve on every
//! start) point into the toolchain homes, and those are walked instead.

use std::path::{Component, Path, PathBuf};

use warren_protocol::mount::{Mount, MountKind, check_path};

use crate::spec::ETC_ALLOWLIST;

/// Families of `/etc` entries: (prefix, suffix, reason). A name matches when it starts with
/// the prefix, ends with the suffix and has something in between.
pub const ETC_PATTERNS: &[(&str, &str, &str)] = &[(
    "java-",
    "-openjdk",
    "Debian's OpenJDK configuration, one directory per version (the JVM's lib/jvm.cfg, conf/ and lib/security link into it)",
)];

/// Directories whose subdirectories are toolchain homes, each with its reason. A home's
/// `lib/` and `conf/` entries that are symlinks into `/etc/NAME/…` bring `/etc/NAME` into the
/// cell.
pub const TOOLCHAIN_HOMES: &[(&str, &str)] = &[(
    "/usr/lib/jvm",
    "JVM homes, where the alternatives for java, javac, jar, … resolve",
)];

/// `/etc` entries no rule may bring into a cell: secrets, and what a cell gets generated.
pub const ETC_NEVER: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "passwd",
    "passwd-",
    "group",
    "group-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "machine-id",
    "subuid",
    "subgid",
    "security",
    "pam.d",
    "hostname",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "warren",
];

/// Whether `name` (one component) matches a pattern of [`ETC_PATTERNS`].
pub fn matches_pattern(name: &str) -> bool {
    ETC_PATTERNS.iter().any(|(prefix, suffix, _)| {
        name.len() > prefix.len() + suffix.len()
            && name.starts_with(prefix)
            && name.ends_with(suffix)
    })
}

/// The `/etc` entry a symlink target names (`/etc/java-17-openjdk/jvm-amd64.cfg` →
/// `java-17-openjdk`), if it is an absolute, plain path below `/etc`.
pub fn etc_entry_of(target: &Path) -> Option<String> {
    let mut c = target.components();
    if c.next() != Some(Component::RootDir) || c.next() != Some(Component::Normal("etc".as_ref())) {
        return None;
    }
    let name = match c.next()? {
        Component::Normal(n) => n.to_str()?.to_owned(),
        _ => return None,
    };
    c.all(|x| matches!(x, Component::Normal(_))).then_some(name)
}

fn allowed(name: &str) -> bool {
    !ETC_NEVER.contains(&name) && !name.is_empty() && !name.contains('/')
}

fn dir_entries(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir).into_iter().flatten().flatten()
}

/// The `/etc` entries the toolchains under `homes` link into (see the module comment).
pub fn linked_from_toolchains(homes: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for root in homes {
        for home in dir_entries(root) {
            // Symlinked homes (Debian's `java-1.17.0-openjdk-amd64`) are the same home again.
            if !home.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for sub in ["lib", "conf"] {
                for e in dir_entries(&home.path().join(sub)) {
                    if !e.file_type().is_ok_and(|t| t.is_symlink()) {
                        continue;
                    }
                    if let Some(name) = std::fs::read_link(e.path())
                        .ok()
                        .and_then(|t| etc_entry_of(&t))
                        && !out.contains(&name)
                    {
                        out.push(name);
                    }
                }
            }
        }
    }
    out
}

/// The host `/etc` entries (`/etc/NAME`) bound read-only into every cell: the allowlist in its
/// order, then the derived entries sorted. Only entries that exist are returned.
pub fn etc_entries() -> Vec<String> {
    let mut named: Vec<String> = ETC_ALLOWLIST.iter().map(|(n, _)| (*n).to_owned()).collect();
    let mut derived: Vec<String> = dir_entries(Path::new("/etc"))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| matches_pattern(n))
        .collect();
    let homes: Vec<&Path> = TOOLCHAIN_HOMES.iter().map(|(h, _)| Path::new(*h)).collect();
    derived.extend(linked_from_toolchains(&homes));
    derived.sort();
    derived.dedup();
    derived.retain(|d| !named.contains(d));
    named.extend(derived);
    named
        .into_iter()
        .filter(|n| allowed(n))
        .map(|n| format!("/etc/{n}"))
        .filter(|p| std::fs::metadata(p).is_ok())
        .collect()
}

/// Cell paths a read-only path may not be at or below: the cell's kernel interfaces and
/// devices, and what Warren mounts in cells itself.
pub const READ_ONLY_REFUSED: &[(&str, &str)] = &[
    ("/proc", "the cell's own procfs"),
    ("/sys", "kernel interfaces are never mounted in a cell"),
    ("/dev", "the cell's minimal /dev"),
    ("/workspace", "Warren mounts the workspace there"),
    ("/task", "Warren mounts the task's files there"),
    ("/logs", "Warren mounts the task's logs there"),
    ("/cap", "Warren's capability files"),
    ("/run/egress", "the egress proxy's socket"),
];

/// A read-only path a policy adds that is refused ([`check_read_only_path`]). Each names the
/// path as given.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyPathError {
    /// Mount paths are UTF-8.
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A relative path.
    #[error("{path:?} is not an absolute path")]
    NotAbsolute {
        /// The path.
        path: String,
    },
    /// `//`, `.`, `..` or a trailing `/`.
    #[error("{path:?} is not a normalized path (no //, . or .., no trailing /)")]
    NotNormalized {
        /// The path.
        path: String,
    },
    /// At or below one of [`READ_ONLY_REFUSED`].
    #[error("{path} is at or below {base} ({why})")]
    Reserved {
        /// The path.
        path: String,
        /// The refused cell path it is at or below.
        base: &'static str,
        /// Why that is refused.
        why: &'static str,
    },
    /// One of the system directories.
    #[error("{path} is a system directory every cell already sees read-only")]
    SystemDir {
        /// The path.
        path: String,
    },
    /// It cannot be looked at or resolved (it does not exist, say).
    #[error("{path}: {source}")]
    Inspect {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A symlink is on the way.
    #[error("{path} is or passes through a symlink (to {}); name the real path", target.display())]
    Symlink {
        /// The path.
        path: String,
        /// Where it resolves.
        target: PathBuf,
    },
    /// It holds or lies inside Warren's own state or configuration.
    #[error("{path} holds or lies inside {what} {}", dir.display())]
    Private {
        /// The path.
        path: String,
        /// What the directory is.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
    },
}

/// Check a read-only path a policy adds (mounted at the same path in the cell): absolute and
/// normalized, existing, free of symlinks (the cell sees it where the policy says), not at or
/// below [`READ_ONLY_REFUSED`] nor one of the system directories, and neither holding nor
/// inside the state directory `state_dir` or Warren's configuration
/// ([`crate::spec::default_private_dirs`]: keys, trust decisions). Returns the path as a string.
pub fn check_read_only_path(path: &Path, state_dir: &Path) -> Result<String, ReadOnlyPathError> {
    let s = path.to_str().ok_or_else(|| ReadOnlyPathError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    if !s.starts_with('/') {
        return Err(ReadOnlyPathError::NotAbsolute { path: s.to_owned() });
    }
    check_path(s).map_err(|_| ReadOnlyPathError::NotNormalized { path: s.to_owned() })?;
    let beneath = |base: &str| s == base || s.starts_with(&format!("{base}/"));
    if let Some(&(base, why)) = READ_ONLY_REFUSED.iter().find(|(b, _)| beneath(b)) {
        return Err(ReadOnlyPathError::Reserved {
            path: s.to_owned(),
            base,
            why,
        });
    }
    if crate::spec::SYSTEM_DIRS.contains(&s) {
        return Err(ReadOnlyPathError::SystemDir { path: s.to_owned() });
    }
    let inspect = |source| ReadOnlyPathError::Inspect {
        path: s.to_owned(),
        source,
    };
    std::fs::symlink_metadata(path).map_err(inspect)?;
    let canonical = std::fs::canonicalize(path).map_err(inspect)?;
    if canonical != path {
        return Err(ReadOnlyPathError::Symlink {
            path: s.to_owned(),
            target: canonical,
        });
    }
    let own = std::iter::once((state_dir.to_path_buf(), "Warren's state directory")).chain(
        crate::spec::default_private_dirs()
            .into_iter()
            .map(|d| (d, "Warren's configuration")),
    );
    for (dir, what) in own {
        let dir = std::fs::canonicalize(&dir)
            .or_else(|_| std::path::absolute(&dir))
            .unwrap_or(dir);
        if dir.starts_with(&canonical) || canonical.starts_with(&dir) {
            return Err(ReadOnlyPathError::Private {
                path: s.to_owned(),
                what,
                dir,
            });
        }
    }
    Ok(s.to_owned())
}

/// The mount for a checked read-only path: the host path, read-only, at the same place.
pub fn read_only_bind(path: &str) -> Mount {
    Mount {
        target: path.into(),
        kind: MountKind::Bind {
            source: path.into(),
            readonly: true,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn patterns_and_links_name_only_plain_etc_entries() {
        assert!(matches_pattern("java-17-openjdk") && matches_pattern("java-21-openjdk"));
        assert!(!matches_pattern("java--openjdk") && !matches_pattern("javascript"));
        assert_eq!(
            etc_entry_of(Path::new("/etc/java-17-openjdk/jvm-amd64.cfg")).as_deref(),
            Some("java-17-openjdk")
        );
        for bad in [
            "etc/x/y",
            "/usr/etc/x",
            "/etc/../shadow",
            "/etc/x/../../shadow",
            "/etc",
        ] {
            assert_eq!(etc_entry_of(Path::new(bad)), None, "{bad}");
        }
        for (name, _) in ETC_ALLOWLIST {
            assert!(
                !ETC_NEVER.contains(name),
                "{name} is both allowed and never"
            );
        }
    }

    #[test]
    fn a_toolchain_home_brings_what_it_links_into_and_never_a_secret() {
        let t = std::env::temp_dir().join(format!("warren-hostpaths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let home = t.join("jdk-x");
        std::fs::create_dir_all(home.join("lib")).unwrap();
        std::fs::create_dir_all(home.join("conf")).unwrap();
        let link = |at: &str, to: &str| std::os::unix::fs::symlink(to, home.join(at)).unwrap();
        link("lib/jvm.cfg", "/etc/jdk-x-config/jvm-amd64.cfg");
        link("conf/net.properties", "/etc/jdk-x-config/net.properties");
        link("conf/evil", "/etc/../etc/shadow");
        link("lib/relative", "../../etc/other");
        link("lib/plain", "/usr/share/x");
        std::fs::write(home.join("conf/file"), "x").unwrap();
        // A symlinked home is the same home again, and is skipped.
        std::os::unix::fs::symlink(&home, t.join("jdk-alias")).unwrap();
        assert_eq!(
            linked_from_toolchains(&[&t]),
            vec!["jdk-x-config".to_owned()]
        );
        std::fs::remove_dir_all(&t).unwrap();
        assert!(!allowed("shadow") && !allowed("ssh") && allowed("java-17-openjdk"));
    }

    #[test]
    fn etc_entries_exist_and_are_never_secret() {
        for p in etc_entries() {
            let name = p.strip_prefix("/etc/").unwrap();
            assert!(std::fs::metadata(&p).is_ok() && allowed(name), "{p}");
        }
        if Path::new("/etc/java-17-openjdk").is_dir() {
            assert!(etc_entries().contains(&"/etc/java-17-openjdk".to_owned()));
        }
    }

    #[test]
    fn read_only_paths_are_checked() {
        let base = PathBuf::from(format!("/var/tmp/warren-ro-{}", std::process::id()));
        let state = base.join("state");
        std::fs::create_dir_all(state.join("changes")).unwrap();
        let ok = |p: &Path| check_read_only_path(p, &state);
        assert_eq!(ok(Path::new("/usr/share")).unwrap(), "/usr/share");
        for (bad, why) in [
            ("relative/dir", "absolute"),
            ("/usr/./share", "normalized"),
            ("/proc/self", "/proc"),
            ("/sys", "/sys"),
            ("/dev/shm", "/dev"),
            ("/workspace/x", "/workspace"),
            ("/usr", "system directory"),
            ("/nonexistent-warren-path", "No such file"),
        ] {
            let e = ok(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for holds_or_inside in [base.clone(), state.clone(), state.join("changes")] {
            let e = ok(&holds_or_inside).unwrap_err();
            assert!(matches!(e, ReadOnlyPathError::Private { .. }), "{e:?}");
            let e = e.to_string();
            assert!(e.contains("state directory"), "{e}");
        }
        // Warren's configuration (keys) likewise, wherever HOME points.
        let e = ok(Path::new("/etc")).unwrap_err().to_string();
        assert!(e.contains("Warren's configuration /etc/warren"), "{e}");
        let link = base.join("link");
        std::os::unix::fs::symlink("/usr/share", &link).unwrap();
        let e = ok(&link).unwrap_err().to_string();
        assert!(e.contains("symlink (to /usr/share)"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
