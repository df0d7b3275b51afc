//! Seccomp: an allow-all filter installed in a child, and whether user
//! notification is available.

use super::harness::{ck, describe, run_in_child};
use super::report::{Feature, feature};

pub(super) fn probe_seccomp() -> Vec<Feature> {
    // One instruction: BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
    let mut filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: filter.as_mut_ptr(),
    };
    let outcome = run_in_child(|| {
        // SAFETY: prctl with integer arguments.
        ck(0, unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        })?;
        // SAFETY: prog points to a valid one-instruction filter that outlives
        // the call (the kernel copies it).
        ck(1, unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        })?;
        // A syscall under the filter must still work.
        // SAFETY: getpid has no preconditions.
        ck(2, unsafe { libc::getpid() })
    });
    let (ok, why) = describe(
        &outcome,
        &[
            "prctl(PR_SET_NO_NEW_PRIVS)",
            "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)",
            "getpid under the filter",
        ],
    );
    let detail = if ok {
        "an allow-all BPF filter installs after PR_SET_NO_NEW_PRIVS".to_string()
    } else {
        why
    };
    let seccomp = feature(
        "seccomp",
        ok,
        detail,
        "fork + prctl(PR_SET_NO_NEW_PRIVS, 1) + prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, 1-insn allow-all)",
    );
    let actions_path = "/proc/sys/kernel/seccomp/actions_avail";
    let (notif, detail) = match std::fs::read_to_string(actions_path) {
        Ok(s) => {
            let actions = s.trim().to_string();
            let has = actions.split_whitespace().any(|a| a == "user_notif");
            (has, format!("actions_avail: {actions}"))
        }
        Err(e) => (false, format!("cannot read {actions_path}: {e}")),
    };
    vec![
        seccomp,
        feature(
            "seccomp.user_notif",
            notif,
            detail,
            format!("\"user_notif\" in {actions_path}"),
        ),
    ]
}
