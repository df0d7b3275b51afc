//! Fault injection at the kernel seam, for tests only.
//!
//! A [`Fault`] takes one confinement mechanism away from a process and everything it starts,
//! by installing a seccomp filter that makes that mechanism's system calls fail the way a
//! kernel without it would. The fail-closed tests start cells (and `warren check`) under each
//! fault and assert the refusal names exactly the mechanism that is gone.
//!
//! Two ways in, both test-only:
//! - `warren-test-jail --warren-test-fault=NAME`: the jail binary of this crate installs the
//!   fault before it becomes the cell's supervisor ([`take_from_args`]). The production
//!   `warren` binary has no such flag; it never links this crate.
//! - [`Fault::apply_to`]: any `Command` (the `warren` binary, say) runs under the fault, the
//!   filter installed between fork and exec.
//!
//! A filter survives `fork`, `clone` and `execve` and cannot be removed, so the fault holds for
//! the supervisor, the cell's init and every command. Installing it sets no-new-privs, which
//! the cell sets anyway.

use std::collections::BTreeMap;
use std::ffi::OsString;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The command-line flag of `warren-test-jail`.
pub const FLAG: &str = "--warren-test-fault=";

/// One mechanism taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing a cell needs is taken away; an unrelated call (`acct`) is denied. The positive
    /// control: the fault machinery itself does not make a start fail.
    Control,
    /// `landlock_create_ruleset`, `landlock_add_rule`, `landlock_restrict_self` fail with
    /// `ENOSYS`, as in a kernel built without Landlock.
    Landlock,
    /// `seccomp(2)` fails with `ENOSYS` and `prctl(PR_SET_SECCOMP)` with `EINVAL`, as in a
    /// kernel without seccomp filters.
    Seccomp,
    /// Creating a user namespace fails with `EPERM` (`clone` or `unshare` with
    /// `CLONE_NEWUSER`; `clone3`, whose flags a filter cannot read, with `ENOSYS` so callers
    /// fall back to `clone`), as on a host that disables unprivileged user namespaces.
    Userns,
    /// The fd-based mount API (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `open_tree`,
    /// `move_mount`, `mount_setattr`) fails with `ENOSYS`, as in a kernel older than 5.2.
    MountApi,
}

impl Fault {
    /// Every fault that takes a mechanism away (not [`Fault::Control`]).
    pub const MECHANISMS: [Fault; 4] = [
        Fault::Landlock,
        Fault::Seccomp,
        Fault::Userns,
        Fault::MountApi,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Control => "control",
            Fault::Landlock => "landlock",
            Fault::Seccomp => "seccomp",
            Fault::Userns => "userns",
            Fault::MountApi => "mount-api",
        }
    }

    /// Parse a command-line name.
    pub fn parse(s: &str) -> Option<Fault> {
        [Fault::Control]
            .into_iter()
            .chain(Fault::MECHANISMS)
            .find(|f| f.name() == s)
    }

    /// `--warren-test-fault=NAME`, for `warren-test-jail`'s arguments.
    pub fn flag(self) -> String {
        format!("{FLAG}{}", self.name())
    }

    /// The filters that take this mechanism away.
    pub fn programs(self) -> Vec<BpfProgram> {
        let errno = |e: i32| SeccompAction::Errno(e as u32);
        let arg0 = |op, value| {
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value)
                .unwrap_or_else(|e| panic!("fault condition: {e}"))
        };
        let rule = |conds: Vec<SeccompCondition>| {
            SeccompRule::new(conds).unwrap_or_else(|e| panic!("fault rule: {e}"))
        };
        let (rules, action): (BTreeMap<i64, Vec<SeccompRule>>, _) = match self {
            Fault::Control => (
                BTreeMap::from([(libc::SYS_acct, vec![])]),
                errno(libc::EPERM),
            ),
            Fault::Landlock => (
                BTreeMap::from([
                    (libc::SYS_landlock_create_ruleset, vec![]),
                    (libc::SYS_landlock_add_rule, vec![]),
                    (libc::SYS_landlock_restrict_self, vec![]),
                ]),
                errno(libc::ENOSYS),
            ),
            Fault::Seccomp => {
                // The filter denying seccomp(2) goes last: installing it takes seccomp(2).
                return Self::stack(
                    &[
                        (
                            BTreeMap::from([(
                                libc::SYS_prctl,
                                vec![rule(vec![arg0(
                                    SeccompCmpOp::Eq,
                                    libc::PR_SET_SECCOMP as u64,
                                )])],
                            )]),
                            errno(libc::EINVAL),
                        ),
                        (
                            BTreeMap::from([(libc::SYS_seccomp, vec![])]),
                            errno(libc::ENOSYS),
                        ),
                    ][..],
                );
            }
            Fault::Userns => {
                let newuser = libc::CLONE_NEWUSER as u64;
                let with_newuser =
                    || vec![rule(vec![arg0(SeccompCmpOp::MaskedEq(newuser), newuser)])];
                return Self::stack(
                    &[
                        (
                            BTreeMap::from([
                                (libc::SYS_clone, with_newuser()),
                                (libc::SYS_unshare, with_newuser()),
                            ]),
                            errno(libc::EPERM),
                        ),
                        (
                            BTreeMap::from([(libc::SYS_clone3, vec![])]),
                            errno(libc::ENOSYS),
                        ),
                    ][..],
                );
            }
            Fault::MountApi => (
                BTreeMap::from([
                    (libc::SYS_fsopen, vec![]),
                    (libc::SYS_fsconfig, vec![]),
                    (libc::SYS_fsmount, vec![]),
                    (libc::SYS_fspick, vec![]),
                    (libc::SYS_open_tree, vec![]),
                    (libc::SYS_move_mount, vec![]),
                    (libc::SYS_mount_setattr, vec![]),
                ]),
                errno(libc::ENOSYS),
            ),
        };
        Self::stack(&[(rules, action)][..])
    }

    /// Single-action filters, stacked: seccompiler compiles one action per filter, and each
    /// filter's "allow" leaves the call to the others.
    fn stack(parts: &[(BTreeMap<i64, Vec<SeccompRule>>, SeccompAction)]) -> Vec<BpfProgram> {
        let arch = if cfg!(target_arch = "aarch64") {
            TargetArch::aarch64
        } else {
            TargetArch::x86_64
        };
        parts
            .iter()
            .map(|(rules, action)| {
                let filter =
                    SeccompFilter::new(rules.clone(), SeccompAction::Allow, action.clone(), arch)
                        .unwrap_or_else(|e| panic!("fault filter: {e}"));
                BpfProgram::try_from(filter).unwrap_or_else(|e| panic!("fault filter: {e}"))
            })
            .collect()
    }

    /// Install this fault on the calling thread (before it starts anything).
    pub fn install(self) -> std::io::Result<()> {
        install(&self.programs())
    }

    /// Run `cmd` under this fault: the filters are compiled now and installed in the child
    /// between fork and exec.
    pub fn apply_to(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let programs = self.programs();
        // SAFETY: `install` only makes the prctl and seccomp system calls on memory prepared
        // before the fork; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || install(&programs));
        }
    }
}

/// Install filters built by [`Fault::programs`]. Async-signal-safe (no allocation).
fn install(programs: &[BpfProgram]) -> std::io::Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}

/// Split `--warren-test-fault=NAME` off `args`: the fault to install (an unknown name is an
/// error) and the remaining arguments for the jail.
pub fn take_from_args(
    args: impl IntoIterator<Item = OsString>,
) -> Result<(Option<Fault>, Vec<OsString>), String> {
    let mut fault = None;
    let mut rest = Vec::new();
    for a in args {
        match a.to_str().and_then(|s| s.strip_prefix(FLAG)) {
            Some(name) => {
                fault = Some(Fault::parse(name).ok_or_else(|| format!("unknown fault {name:?}"))?)
            }
            None => rest.push(a),
        }
    }
    Ok((fault, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_compiles_and_names_round_trip() {
        for f in [Fault::Control].into_iter().chain(Fault::MECHANISMS) {
            assert!(f.programs().iter().all(|p| !p.is_empty()));
            assert_eq!(Fault::parse(f.name()), Some(f));
        }
        let (f, rest) = take_from_args(["--x".into(), Fault::Userns.flag().into()]).unwrap();
        assert_eq!(
            (f, rest),
            (Some(Fault::Userns), vec![OsString::from("--x")])
        );
        assert!(take_from_args([OsString::from("--warren-test-fault=nope")]).is_err());
    }
}
