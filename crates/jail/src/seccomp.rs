//! The cell's seccomp policy, kept as reviewed data: one line per rule with its reason.
//!
//! The filter is a deny-list layered *under* namespaces and Landlock: the process already has
//! no capabilities, so most of these calls would fail anyway. The filter exists so that a
//! kernel bug reachable through one of these (historically: user namespaces, io_uring, bpf,
//! userfaultfd, keyctl, perf) is not reachable at all, and so that interfaces namespaces do
//! not confine (AF_VSOCK above all) are closed.
//!
//! Three stacked filters, because seccompiler gives one action per filter:
//! 1. `clone3` → `ENOSYS`: its flags live in a struct seccomp cannot inspect; libc falls back
//!    to `clone`, whose flags we can check.
//! 2. socket families not needed → `EAFNOSUPPORT`, so programs fall back gracefully.
//! 3. everything else listed → `EPERM`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls denied outright with `EPERM`, each with the reason it is denied.
pub const DENIED: &[(&str, libc::c_long, &str)] = &[
    (
        "mount",
        libc::SYS_mount,
        "a cell's namespace is fixed at start; no remounting",
    ),
    (
        "umount2",
        libc::SYS_umount2,
        "unmounting could reveal what a mount hides",
    ),
    (
        "pivot_root",
        libc::SYS_pivot_root,
        "changing root is the jail's job only",
    ),
    (
        "chroot",
        libc::SYS_chroot,
        "no nested roots (classic escape with an open dir fd)",
    ),
    (
        "open_tree",
        libc::SYS_open_tree,
        "new mount API: mount manipulation",
    ),
    (
        "move_mount",
        libc::SYS_move_mount,
        "new mount API: mount manipulation",
    ),
    (
        "fsopen",
        libc::SYS_fsopen,
        "new mount API: creating filesystems",
    ),
    (
        "fsconfig",
        libc::SYS_fsconfig,
        "new mount API: configuring filesystems",
    ),
    (
        "fsmount",
        libc::SYS_fsmount,
        "new mount API: creating mounts",
    ),
    (
        "fspick",
        libc::SYS_fspick,
        "new mount API: reconfiguring mounts",
    ),
    (
        "mount_setattr",
        libc::SYS_mount_setattr,
        "could clear read-only/nosuid",
    ),
    (
        "ptrace",
        libc::SYS_ptrace,
        "no debugging of siblings: reads and writes any memory",
    ),
    (
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "cross-process memory read",
    ),
    (
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "cross-process memory write",
    ),
    ("kcmp", libc::SYS_kcmp, "kernel pointer comparison oracle"),
    (
        "pidfd_getfd",
        libc::SYS_pidfd_getfd,
        "stealing another process's descriptors",
    ),
    ("kexec_load", libc::SYS_kexec_load, "replacing the kernel"),
    (
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replacing the kernel",
    ),
    ("init_module", libc::SYS_init_module, "loading kernel code"),
    (
        "finit_module",
        libc::SYS_finit_module,
        "loading kernel code",
    ),
    (
        "delete_module",
        libc::SYS_delete_module,
        "unloading kernel code",
    ),
    (
        "bpf",
        libc::SYS_bpf,
        "large kernel attack surface; no legitimate use in a cell",
    ),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        "side channels and a history of kernel bugs",
    ),
    (
        "userfaultfd",
        libc::SYS_userfaultfd,
        "widens race windows in kernel exploits",
    ),
    (
        "keyctl",
        libc::SYS_keyctl,
        "kernel keyrings are not namespaced",
    ),
    (
        "add_key",
        libc::SYS_add_key,
        "kernel keyrings are not namespaced",
    ),
    (
        "request_key",
        libc::SYS_request_key,
        "kernel keyrings are not namespaced",
    ),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "opens files by handle, bypassing paths (shocker)",
    ),
    (
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "pairs with open_by_handle_at",
    ),
    ("setns", libc::SYS_setns, "joining other namespaces"),
    (
        "unshare",
        libc::SYS_unshare,
        "new namespaces would regain capabilities inside them",
    ),
    (
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "io_uring bypasses seccomp for its operations",
    ),
    (
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "io_uring bypasses seccomp for its operations",
    ),
    (
        "io_uring_register",
        libc::SYS_io_uring_register,
        "io_uring bypasses seccomp for its operations",
    ),
    ("reboot", libc::SYS_reboot, "host power state"),
    ("swapon", libc::SYS_swapon, "host memory configuration"),
    ("swapoff", libc::SYS_swapoff, "host memory configuration"),
    ("acct", libc::SYS_acct, "process accounting is host-wide"),
    (
        "quotactl",
        libc::SYS_quotactl,
        "filesystem quotas are host-wide",
    ),
    ("iopl", libc::SYS_iopl, "raw I/O port access"),
    ("ioperm", libc::SYS_ioperm, "raw I/O port access"),
    (
        "clock_settime",
        libc::SYS_clock_settime,
        "the clock is host-wide",
    ),
    (
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        "the clock is host-wide",
    ),
    (
        "settimeofday",
        libc::SYS_settimeofday,
        "the clock is host-wide",
    ),
    ("adjtimex", libc::SYS_adjtimex, "the clock is host-wide"),
    ("syslog", libc::SYS_syslog, "kernel log leaks addresses"),
    (
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "obsolete profiling interface",
    ),
    (
        "uselib",
        libc::SYS_uselib,
        "obsolete; loads a library by path",
    ),
    ("vhangup", libc::SYS_vhangup, "terminal control of the host"),
    (
        "personality",
        libc::SYS_personality,
        "disables ASLR and other hardening",
    ),
    (
        "nfsservctl",
        libc::SYS_nfsservctl,
        "obsolete kernel NFS control",
    ),
    (
        "sethostname",
        libc::SYS_sethostname,
        "identity is fixed by the host",
    ),
    (
        "setdomainname",
        libc::SYS_setdomainname,
        "identity is fixed by the host",
    ),
    (
        "fanotify_init",
        libc::SYS_fanotify_init,
        "filesystem-wide monitoring",
    ),
    ("mbind", libc::SYS_mbind, "NUMA policy can starve the host"),
    (
        "move_pages",
        libc::SYS_move_pages,
        "NUMA page moves across processes",
    ),
    (
        "migrate_pages",
        libc::SYS_migrate_pages,
        "NUMA page moves across processes",
    ),
];

/// `clone` flags that create namespaces: a clone with any of them is denied.
pub const CLONE_NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u64),
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u64),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u64),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u64),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u64),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u64),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u64),
    ("CLONE_NEWTIME", 0x80),
];

/// Socket families a cell may create. Everything else (AF_VSOCK above all, which network
/// namespaces do not confine, AF_PACKET, AF_BLUETOOTH, AF_ALG, …) is refused.
pub const ALLOWED_FAMILIES: &[(&str, u64, &str)] = &[
    ("AF_UNIX", libc::AF_UNIX as u64, "local IPC inside the cell"),
    (
        "AF_INET",
        libc::AF_INET as u64,
        "confined by the empty netns and Landlock TCP rules",
    ),
    (
        "AF_INET6",
        libc::AF_INET6 as u64,
        "confined by the empty netns and Landlock TCP rules",
    ),
];

/// `ioctl` requests denied on any descriptor.
pub const DENIED_IOCTLS: &[(&str, u64, &str)] = &[
    (
        "TIOCSTI",
        libc::TIOCSTI,
        "injects keystrokes into a terminal's input queue",
    ),
    (
        "TIOCLINUX",
        libc::TIOCLINUX,
        "console selection can inject input",
    ),
];

/// Netlink is allowed only for `NETLINK_ROUTE` (getaddrinfo's address-config query); other
/// protocols (audit, uevent, …) are host-wide interfaces.
const NETLINK_ROUTE: u64 = 0;

/// How many rules the compiled policy holds (reported by the cell on start).
pub fn rule_count() -> usize {
    DENIED.len() + CLONE_NAMESPACE_FLAGS.len() + 2 + ALLOWED_FAMILIES.len() + DENIED_IOCTLS.len()
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        TargetArch::x86_64
    }
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// Compile the three filters. Order of installation does not matter for correctness: each
/// syscall matches at most one filter, and an errno always beats the others' "allow".
pub fn compile() -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    let errno = |e: i32| SeccompAction::Errno(e as u32);

    // 1. clone3 -> ENOSYS.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        errno(libc::ENOSYS),
        arch(),
    )?;

    // 2. socket families.
    let not_allowed: Vec<SeccompCondition> = ALLOWED_FAMILIES
        .iter()
        .map(|(_, fam, _)| cond(0, SeccompCmpOp::Ne, *fam))
        .collect::<Result<_, _>>()?;
    let mut other_family = not_allowed.clone();
    other_family.push(cond(0, SeccompCmpOp::Ne, libc::AF_NETLINK as u64)?);
    let netlink_not_route = vec![
        cond(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64)?,
        cond(2, SeccompCmpOp::Ne, NETLINK_ROUTE)?,
    ];
    let family_rules = vec![
        SeccompRule::new(other_family)?,
        SeccompRule::new(netlink_not_route)?,
    ];
    let families = SeccompFilter::new(
        BTreeMap::from([
            (libc::SYS_socket, family_rules.clone()),
            (libc::SYS_socketpair, vec![SeccompRule::new(not_allowed)?]),
        ]),
        SeccompAction::Allow,
        errno(libc::EAFNOSUPPORT),
        arch(),
    )?;

    // 3. EPERM list.
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr, _)| (*nr, vec![])).collect();
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|(_, flag)| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|(_, req, _)| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *req)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let denied = SeccompFilter::new(rules, SeccompAction::Allow, errno(libc::EPERM), arch())?;

    [clone3, families, denied]
        .into_iter()
        .map(BpfProgram::try_from)
        .collect()
}

/// Install the compiled filters on the calling thread (and so on every process it forks).
pub fn install(programs: &[BpfProgram]) -> Result<(), seccompiler::Error> {
    for p in programs {
        seccompiler::apply_filter(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_names_are_unique() {
        assert!(compile().is_ok());
        let mut names: Vec<_> = DENIED.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate syscall in DENIED");
        assert!(DENIED.iter().all(|(_, _, why)| !why.is_empty()));
    }

    #[test]
    fn issue_minimum_is_covered() {
        for required in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "open_by_handle_at",
            "setns",
            "unshare",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "quotactl",
            "iopl",
            "ioperm",
            "clock_settime",
            "settimeofday",
            "adjtimex",
            "syslog",
        ] {
            assert!(
                DENIED.iter().any(|(n, _, _)| *n == required),
                "{required} not denied"
            );
        }
        assert!(
            !ALLOWED_FAMILIES
                .iter()
                .any(|(_, f, _)| *f == libc::AF_VSOCK as u64)
        );
    }
}
