//! Landlock rules derived from the cell's mount spec.
//!
//! The mount table decides what exists; Landlock independently decides what may be done with
//! it, from the same [`MountSpec`]: read and execute where something is mounted, write only
//! below writable mounts, signals and abstract unix sockets scoped to the cell. If a mount
//! were ever made writable by mistake, Landlock would still refuse the write — two
//! independent layers, one source of truth.
//!
//! TCP is not restricted here. Landlock can only name ports, not addresses, and the cell's
//! private network namespace — its own `lo` and nothing else — is what keeps traffic in: a
//! test server on `127.0.0.1` inside the cell works, every other address is unroutable, and
//! the only way out is the egress forwarder on `127.0.0.1:3128` when the task has one.

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use warren_protocol::jail::LandlockReport;
use warren_protocol::mount::{MountKind, MountSpec};

/// The newest ABI this build applies. ABI 7 adds audit-logging controls, no new rights; ABI 8
/// and 9 are applied as 7 until their new rights (thread sync, unix-socket scoping) are wired
/// and tested.
const KNOWN: ABI = ABI::V7;
const KNOWN_NUM: u32 = 7;

/// The kernel's Landlock ABI version, or the errno explaining its absence (`ENOSYS`: not
/// built; `EOPNOTSUPP`: disabled at boot).
pub fn query_abi() -> Result<u32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented way to query the ABI: null attr, zero size, VERSION flag; no
    // memory is accessed and no descriptor is created.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(u32::try_from(r).unwrap_or(0))
    }
}

/// The kernel's Landlock ABI version (0 when Landlock is unavailable).
pub fn kernel_abi() -> u32 {
    query_abi().unwrap_or(0)
}

fn abi_from(n: u32) -> ABI {
    match n {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => KNOWN,
    }
}

/// Errors applying Landlock.
#[derive(Debug)]
pub struct LandlockError(pub String);

/// Landlock as applied to a cell.
pub struct Confinement {
    /// What is enforced.
    pub report: LandlockReport,
    /// The stricter ruleset every command stacks on top of the init's domain between fork and
    /// exec (`None` when Landlock is unavailable and not required).
    pub commands: Option<std::os::fd::OwnedFd>,
}

/// Confine the calling thread (the init, and so everything it forks) and prepare the
/// commands' ruleset. Paths are the cell's own (this runs after `pivot_root`).
///
/// Two domains, because a Landlock domain can only ever narrow: the init's allows writing
/// `/proc` (so a new command can still raise its own `oom_score_adj` — commands, never the
/// init, must be the out-of-memory killer's choice), and each command then stacks the strict
/// ruleset, in which `/proc` is read-only.
pub fn apply(spec: &MountSpec, required: bool) -> Result<Confinement, LandlockError> {
    let (kernel, why) = match query_abi() {
        Ok(n) => (n, "ABI 0".to_string()),
        Err(errno) => (0, std::io::Error::from_raw_os_error(errno).to_string()),
    };
    if kernel == 0 {
        return if required {
            Err(LandlockError(format!(
                "Landlock is not available in this kernel (landlock_create_ruleset failed: \
                 {why}); refusing to start without it"
            )))
        } else {
            Ok(Confinement {
                report: LandlockReport::default(),
                commands: None,
            })
        };
    }
    let applied = kernel.min(KNOWN_NUM);
    let abi = abi_from(applied);
    let err = |e: landlock::RulesetError| LandlockError(e.to_string());
    let init_rules = rules(spec, abi, true);
    let command_rules = rules(spec, abi, false);
    // Open each path once; both rulesets refer to the same descriptors.
    let mut fds: std::collections::BTreeMap<&str, (PathFd, bool)> =
        std::collections::BTreeMap::new();
    for (path, _) in init_rules.iter().chain(&command_rules) {
        if !fds.contains_key(path.as_str()) {
            // A scope whose path does not exist grants nothing (its parent is read-only, so it
            // cannot be created either).
            if spec.scopes.iter().any(|s| s.path == *path)
                && std::fs::symlink_metadata(path).is_err()
            {
                continue;
            }
            let fd = PathFd::new(path).map_err(|e| LandlockError(format!("open {path}: {e}")))?;
            let dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
            fds.insert(path, (fd, dir));
        }
    }
    let build = |rules: &[(String, BitFlags<AccessFs>)]| {
        let mut created = ruleset(applied)?;
        for (path, access) in rules {
            let Some((fd, dir)) = fds.get(path.as_str()) else {
                continue;
            };
            // Rules on files may only carry file rights (a bind of /dev/null, say).
            let access = if *dir {
                *access
            } else {
                *access & AccessFs::from_file(abi)
            };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(err)?;
        }
        Ok::<_, LandlockError>(created)
    };
    let status = build(&init_rules)?.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError(format!(
            "Landlock only partially enforced: {:?}",
            status.ruleset
        )));
    }
    let commands: Option<std::os::fd::OwnedFd> = build(&command_rules)?.into();
    if commands.is_none() {
        return Err(LandlockError(
            "no Landlock ruleset descriptor for commands".into(),
        ));
    }
    Ok(Confinement {
        report: LandlockReport {
            kernel_abi: kernel,
            applied_abi: applied,
            filesystem: true,
            // TCP is left to the network namespace (see the module comment).
            tcp: false,
            scoped: applied >= 6,
        },
        commands,
    })
}

fn ruleset(applied: u32) -> Result<landlock::RulesetCreated, LandlockError> {
    let abi = abi_from(applied);
    let err = |e: landlock::RulesetError| LandlockError(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if applied >= 6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(err)?;
    }
    ruleset.create().map_err(err)
}

/// The (path, rights) pairs for a namespace, in cell paths. Pure, so it is unit-tested.
pub fn rules(spec: &MountSpec, abi: ABI, proc_write: bool) -> Vec<(String, BitFlags<AccessFs>)> {
    let read = AccessFs::from_read(abi);
    // Writable mounts get every right except creating device nodes.
    let write = AccessFs::from_all(abi) & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let device =
        (AccessFs::ReadFile | AccessFs::WriteFile) | (AccessFs::from_all(abi) & AccessFs::IoctlDev);
    let mut out = vec![
        // Listing directories anywhere is harmless and `ls /` needs it; reading files is not
        // granted by this rule.
        ("/".to_owned(), BitFlags::from(AccessFs::ReadDir)),
        // A fresh procfs of the cell's own pid namespace: readable; writable only in the
        // init's own domain (see `apply`).
        (
            "/proc".to_owned(),
            if proc_write {
                AccessFs::ReadFile
                    | AccessFs::ReadDir
                    | AccessFs::WriteFile
                    | (AccessFs::from_all(abi) & AccessFs::Truncate)
            } else {
                AccessFs::ReadFile | AccessFs::ReadDir
            },
        ),
    ];
    if spec.mounts.iter().any(|m| m.target.starts_with("/etc/")) {
        // One rule for the generated /etc and every host entry bound below it.
        out.push(("/etc".to_owned(), read));
    }
    for m in &spec.mounts {
        let access = match &m.kind {
            MountKind::Bind { .. } | MountKind::Cow { .. } | MountKind::Tmpfs { .. } => {
                if m.writable() { write } else { read }
            }
            MountKind::Device { .. } => device,
            MountKind::File { .. } => BitFlags::from(AccessFs::ReadFile),
            MountKind::Symlink { .. } => continue,
        };
        // Capability scopes beneath this mount: the mount itself may only be listed; each
        // scope gets read, or the mount's own access when it grants writing.
        let beneath = |p: &str| p == m.target || p.starts_with(&format!("{}/", m.target));
        let scopes: Vec<_> = spec.scopes.iter().filter(|s| beneath(&s.path)).collect();
        if scopes.is_empty() || matches!(m.kind, MountKind::File { .. } | MountKind::Device { .. })
        {
            out.push((m.target.clone(), access));
            continue;
        }
        out.push((m.target.clone(), BitFlags::from(AccessFs::ReadDir)));
        for sc in scopes {
            out.push((
                sc.path.clone(),
                if sc.write { access } else { access & read },
            ));
        }
    }
    // Rules apply beneath their path, across mount points: drop every rule an ancestor's rule
    // already covers (fewer rules, same policy, faster start).
    let covered = |(path, access): &(String, BitFlags<AccessFs>)| {
        out.iter().any(|(p, a)| {
            p != path && (p == "/" || path.starts_with(&format!("{p}/"))) && a.contains(*access)
        })
    };
    let keep: Vec<bool> = out.iter().map(|r| !covered(r)).collect();
    out.into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::mount::Mount;

    #[test]
    fn rules_mirror_the_mount_spec() {
        let spec = MountSpec {
            scopes: Vec::new(),
            mounts: vec![
                Mount {
                    target: "/usr".into(),
                    kind: MountKind::Bind {
                        source: "/usr".into(),
                        readonly: true,
                    },
                },
                Mount {
                    target: "/bin".into(),
                    kind: MountKind::Symlink {
                        points_to: "usr/bin".into(),
                    },
                },
                Mount {
                    target: "/workspace".into(),
                    kind: MountKind::Cow {
                        lower: "/a".into(),
                        upper: "/b".into(),
                        work: "/c".into(),
                    },
                },
                Mount {
                    target: "/dev/null".into(),
                    kind: MountKind::Device {
                        source: "/dev/null".into(),
                    },
                },
            ],
        };
        let rules = rules(&spec, ABI::V6, false);
        let relaxed = super::rules(&spec, ABI::V6, true);
        let proc_of = |r: &[(String, BitFlags<AccessFs>)]| {
            r.iter()
                .find(|(p, _)| p == "/proc")
                .map(|(_, a)| *a)
                .unwrap_or_default()
        };
        assert!(
            !proc_of(&rules).contains(AccessFs::WriteFile),
            "commands may not write /proc"
        );
        assert!(proc_of(&relaxed).contains(AccessFs::WriteFile));
        let get = |p: &str| rules.iter().find(|(q, _)| q == p).map(|(_, a)| *a);
        let usr = get("/usr").unwrap_or_default();
        assert!(usr.contains(AccessFs::Execute) && !usr.contains(AccessFs::WriteFile));
        let ws = get("/workspace").unwrap_or_default();
        assert!(ws.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::RemoveFile));
        assert!(!ws.contains(AccessFs::MakeBlock) && !ws.contains(AccessFs::MakeChar));
        assert!(
            get("/bin").is_none(),
            "symlinks resolve to their target's rule"
        );
        let null = get("/dev/null").unwrap_or_default();
        assert!(null.contains(AccessFs::WriteFile) && !null.contains(AccessFs::Execute));
        let root = get("/").unwrap_or_default();
        assert_eq!(root, BitFlags::from(AccessFs::ReadDir));
    }

    #[test]
    fn scopes_narrow_a_mount_to_listing_plus_their_own_paths() {
        let spec = MountSpec {
            mounts: vec![Mount {
                target: "/workspace".into(),
                kind: MountKind::Bind {
                    source: "/srv/p".into(),
                    readonly: false,
                },
            }],
            scopes: vec![
                warren_protocol::mount::Scope {
                    path: "/workspace/src".into(),
                    write: true,
                },
                warren_protocol::mount::Scope {
                    path: "/workspace/docs".into(),
                    write: false,
                },
            ],
        };
        let abi = abi_from(KNOWN_NUM);
        let r = rules(&spec, abi, false);
        let get = |p: &str| r.iter().find(|(q, _)| q == p).map(|(_, a)| *a);
        assert_eq!(
            get("/workspace"),
            None,
            "listing is covered by the rule on /"
        );
        let src = get("/workspace/src").unwrap_or_default();
        assert!(src.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::ReadFile));
        let docs = get("/workspace/docs").unwrap_or_default();
        assert!(docs.contains(AccessFs::ReadFile) && !docs.contains(AccessFs::WriteFile));
    }

    #[test]
    fn rules_covered_by_an_ancestor_are_dropped() {
        let m = |t: &str, kind| Mount {
            target: t.into(),
            kind,
        };
        let spec = MountSpec {
            scopes: Vec::new(),
            mounts: vec![
                m(
                    "/etc/passwd",
                    MountKind::File {
                        contents: String::new(),
                    },
                ),
                m(
                    "/etc/ssl",
                    MountKind::Bind {
                        source: "/etc/ssl".into(),
                        readonly: true,
                    },
                ),
                m(
                    "/dev",
                    MountKind::Tmpfs {
                        size_bytes: 1,
                        mode: 0o755,
                        readonly: true,
                    },
                ),
                m(
                    "/dev/null",
                    MountKind::Device {
                        source: "/dev/null".into(),
                    },
                ),
                m(
                    "/dev/shm",
                    MountKind::Tmpfs {
                        size_bytes: 1,
                        mode: 0o1777,
                        readonly: false,
                    },
                ),
                m(
                    "/tmp",
                    MountKind::Tmpfs {
                        size_bytes: 1,
                        mode: 0o1777,
                        readonly: false,
                    },
                ),
                m(
                    "/tmp/inner",
                    MountKind::Bind {
                        source: "/x".into(),
                        readonly: true,
                    },
                ),
            ],
        };
        let r = rules(&spec, ABI::V6, false);
        let paths: Vec<&str> = r.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/proc",
                "/etc",
                "/dev",
                "/dev/null",
                "/dev/shm",
                "/tmp"
            ]
        );
        let dev = r
            .iter()
            .find(|(p, _)| p == "/dev")
            .map(|(_, a)| *a)
            .unwrap_or_default();
        assert!(!dev.contains(AccessFs::WriteFile) && !dev.contains(AccessFs::MakeReg));
    }
}
