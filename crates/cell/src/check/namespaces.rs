//! Namespaces: a user namespace as the current user and as an unprivileged
//! one, then each namespace a cell uses, unshared together with a user
//! namespace as the jail does.

use super::harness::{DROP_STEPS, NOBODY, ck, describe, drop_to_nobody, run_in_child};
use super::report::{Feature, feature};

pub(super) fn probe_userns_current(euid: u32) -> Feature {
    let outcome = run_in_child(|| {
        // SAFETY: unshare only affects the (forked) calling process.
        ck(0, unsafe { libc::unshare(libc::CLONE_NEWUSER) })
    });
    let (ok, why) = describe(&outcome, &["unshare(CLONE_NEWUSER)"]);
    let detail = if ok {
        format!("unshare(CLONE_NEWUSER) works as euid {euid}")
    } else {
        why
    };
    feature(
        "user_namespace.current_user",
        ok,
        detail,
        "fork + unshare(CLONE_NEWUSER) in the child",
    )
}

pub(super) fn probe_userns_unprivileged(euid: u32) -> Feature {
    let root = euid == 0;
    let outcome = run_in_child(|| {
        if root {
            drop_to_nobody()?;
        }
        // SAFETY: unshare only affects the (forked) calling process.
        ck(4, unsafe { libc::unshare(libc::CLONE_NEWUSER) })
    });
    let steps = [
        DROP_STEPS[0],
        DROP_STEPS[1],
        DROP_STEPS[2],
        DROP_STEPS[3],
        "unshare(CLONE_NEWUSER)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let uid = if root { NOBODY } else { euid };
    let mut detail = if ok {
        format!("unshare(CLONE_NEWUSER) works as uid {uid}")
    } else {
        format!("as uid {uid}: {why}")
    };
    let sysctls: Vec<String> = [
        (
            "kernel.unprivileged_userns_clone",
            "/proc/sys/kernel/unprivileged_userns_clone",
        ),
        (
            "user.max_user_namespaces",
            "/proc/sys/user/max_user_namespaces",
        ),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ]
    .iter()
    .filter_map(|(name, path)| {
        std::fs::read_to_string(path)
            .ok()
            .map(|v| format!("{name}={}", v.trim()))
    })
    .collect();
    if !sysctls.is_empty() {
        detail.push_str(&format!("; {}", sysctls.join(", ")));
    }
    let how = if root {
        "fork + setgroups(0, NULL) + setresgid(65534) + setresuid(65534) + prctl(PR_SET_DUMPABLE, 1) + unshare(CLONE_NEWUSER); \
         sysctls read from /proc/sys"
            .to_string()
    } else {
        format!(
            "fork + unshare(CLONE_NEWUSER) as euid {euid} (already unprivileged); sysctls read from /proc/sys"
        )
    };
    feature("user_namespace.unprivileged", ok, detail, how)
}

pub(super) fn probe_namespaces() -> Vec<Feature> {
    [
        ("namespace.mount", libc::CLONE_NEWNS, "CLONE_NEWNS"),
        ("namespace.pid", libc::CLONE_NEWPID, "CLONE_NEWPID"),
        ("namespace.net", libc::CLONE_NEWNET, "CLONE_NEWNET"),
        ("namespace.ipc", libc::CLONE_NEWIPC, "CLONE_NEWIPC"),
        ("namespace.uts", libc::CLONE_NEWUTS, "CLONE_NEWUTS"),
        ("namespace.cgroup", libc::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    ]
    .iter()
    .map(|&(name, flag, flag_name)| {
        let outcome = run_in_child(|| {
            // SAFETY: unshare only affects the (forked) calling process.
            ck(0, unsafe { libc::unshare(libc::CLONE_NEWUSER | flag) })
        });
        let call = format!("unshare(CLONE_NEWUSER | {flag_name})");
        let (ok, why) = describe(&outcome, &[call.as_str()]);
        let detail = if ok { format!("{call} works") } else { why };
        feature(name, ok, detail, format!("fork + {call} in the child"))
    })
    .collect()
}
