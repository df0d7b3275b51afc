//! The cell's seccomp policy, kept as reviewed data: one line per rule with its reason.
//!
//! The filter is a deny-list layered *under* namespaces and Landlock: the process already has
//! no capabilities, so most of these calls would fail anyway. The filter exists so that a
//! kernel bug reachable through one of these (historically: user namespaces, io_uring, bpf,
//! userfaultfd, keyctl, perf) is not reachable at all, and so that interfaces namespaces do
//! not confine (AF_VSOCK above all) are closed.
//!
//! Stacked filters, because seccompiler gives one action per filter:
//! 1. `clone3` → `ENOSYS`: its flags live in a struct seccomp cannot inspect; libc falls back
//!    to `clone`, whose flags we can check.
//! 2. socket families not needed → `EAFNOSUPPORT`, so programs fall back gracefully.
//! 3. everything else listed → `EPERM`.
//! 4. (x86_64 only) every x32 system-call number → `EPERM` ([`X32`]): a small hand-written
//!    program, since seccompiler matches syscall numbers only for equality.

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
        "confined by the cell's network namespace: only its own lo",
    ),
    (
        "AF_INET6",
        libc::AF_INET6 as u64,
        "confined by the cell's network namespace: only its own lo",
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

/// The x32 ABI's marker bit in a system-call number (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why every number at or above [`X32_SYSCALL_BIT`] is refused on x86_64.
///
/// x32 system calls arrive with the *same* audit architecture as native x86_64 ones
/// (`AUDIT_ARCH_X86_64`) but with this bit set in the number, so a filter that only matches
/// native numbers lets `0x40000000 | SYS_mount` and friends through to the x32 entry points.
/// Whether those exist depends on the kernel's build (`CONFIG_X86_X32_ABI`); this filter makes
/// the answer the same everywhere: no x32 system call ever runs in a cell (nothing built for
/// x86_64 issues them).
pub const X32: (&str, &str) = (
    "nr >= 0x40000000 (x32 ABI)",
    "x32 numbers bypass rules written for native numbers when the kernel has CONFIG_X86_X32_ABI",
);

/// `struct seccomp_data` offsets (`<linux/seccomp.h>`): `nr` then `arch`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// Classic BPF opcodes used by [`x32_filter`] (`<linux/bpf_common.h>`).
mod bpf {
    pub const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
    pub const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    pub const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
    pub const RET_K: u16 = 0x06; // BPF_RET | BPF_K
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// The x32 filter ([`X32`]), six instructions:
///
/// ```text
/// 0: A = seccomp_data.arch
/// 1: if A != AUDIT_ARCH_X86_64 goto 5      (other architectures: the other filters decide)
/// 2: A = seccomp_data.nr
/// 3: if A >= 0x40000000 goto 4 else goto 5
/// 4: return ERRNO(EPERM)
/// 5: return ALLOW                          (for this filter; the others still apply)
/// ```
pub fn x32_filter() -> BpfProgram {
    let errno = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    vec![
        insn(bpf::LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(bpf::JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(bpf::LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        insn(bpf::JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(bpf::RET_K, 0, 0, errno),
        insn(bpf::RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Netlink is allowed only for `NETLINK_ROUTE` (getaddrinfo's address-config query); other
/// protocols (audit, uevent, …) are host-wide interfaces.
const NETLINK_ROUTE: u64 = 0;

/// How many rules the compiled policy holds (reported by the cell on start).
pub fn rule_count() -> usize {
    DENIED.len()
        + CLONE_NAMESPACE_FLAGS.len()
        + 2
        + ALLOWED_FAMILIES.len()
        + DENIED_IOCTLS.len()
        + usize::from(cfg!(target_arch = "x86_64"))
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

/// Compile the filters. Order of installation does not matter for correctness: each syscall
/// matches at most one filter, and an errno always beats the others' "allow".
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

    let mut programs: Vec<BpfProgram> = [clone3, families, denied]
        .into_iter()
        .map(BpfProgram::try_from)
        .collect::<Result<_, _>>()?;
    if cfg!(target_arch = "x86_64") {
        programs.push(x32_filter());
    }
    Ok(programs)
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

    /// Run `program` in the classic BPF semantics it uses, on one `seccomp_data`.
    fn eval(program: &[seccompiler::sock_filter], nr: u32, arch: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            match i.code {
                bpf::LD_W_ABS => {
                    a = match i.k {
                        SECCOMP_DATA_NR => nr,
                        SECCOMP_DATA_ARCH => arch,
                        k => panic!("load of offset {k}"),
                    };
                    pc += 1;
                }
                bpf::JEQ_K | bpf::JGE_K => {
                    let taken = if i.code == bpf::JEQ_K {
                        a == i.k
                    } else {
                        a >= i.k
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
                bpf::RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn x32_numbers_are_refused_native_ones_pass() {
        let p = x32_filter();
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let x86 = AUDIT_ARCH_X86_64;
        for nr in [
            0x4000_0000,
            0x4000_0000 | 39,
            0x4000_0000 | 165,
            0x4000_0200,
            u32::MAX,
        ] {
            assert_eq!(eval(&p, nr, x86), eperm, "{nr:#x}");
        }
        for nr in [0, 1, 39, 165, 435, 0x3fff_ffff] {
            assert_eq!(eval(&p, nr, x86), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
        // Another architecture's numbers are the other filters' business (they kill it).
        assert_eq!(eval(&p, 0x4000_0000, 0x4000_0003), libc::SECCOMP_RET_ALLOW);
        assert!(!X32.1.is_empty());
        assert_eq!(
            compile().map(|v| v.len()).ok(),
            Some(if cfg!(target_arch = "x86_64") { 4 } else { 3 })
        );
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
