//! Which cell tiers the probed features allow.

use super::report::{HostReport, TierStatus};

/// Features the process tier cannot run without.
pub(super) const PROCESS_TIER_REQUIRES: [&str; 10] = [
    "user_namespace.current_user",
    "namespace.mount",
    "namespace.pid",
    "namespace.net",
    "namespace.ipc",
    "namespace.uts",
    "namespace.cgroup",
    "mount_api",
    "landlock",
    "seccomp",
];

/// Tiers this version implements; the others are reported, never offered.
pub(super) const BUILT: [&str; 1] = ["process"];

/// The verdict for every tier, in a stable order: process, microvm, wasi, oci.
pub(super) fn tiers(report: &HostReport) -> Vec<TierStatus> {
    let missing: Vec<String> = PROCESS_TIER_REQUIRES
        .iter()
        .filter(|name| !report.has(name))
        .map(|name| (*name).to_string())
        .collect();
    let abi = report
        .feature("landlock")
        .filter(|f| f.available)
        .and_then(|f| f.detail.strip_prefix("ABI "))
        .and_then(|d| d.split(':').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    let landlock_note = if abi == 0 {
        "no Landlock".to_string()
    } else {
        format!("Landlock ABI {abi}")
    };
    let process = TierStatus {
        tier: "process".to_string(),
        runnable: missing.is_empty(),
        missing,
        note: format!("{}; {}", cgroup_note(report), landlock_note),
    };

    let kvm = report.has("kvm");
    let microvm = TierStatus {
        tier: "microvm".to_string(),
        runnable: kvm,
        missing: if kvm {
            Vec::new()
        } else {
            vec!["kvm".to_string()]
        },
        note: if kvm {
            "KVM is usable, but the microvm tier is not built in this version".to_string()
        } else {
            "not built in this version".to_string()
        },
    };
    let unbuilt = |tier: &str| TierStatus {
        tier: tier.to_string(),
        runnable: false,
        missing: Vec::new(),
        note: "not built in this version".to_string(),
    };
    vec![process, microvm, unbuilt("wasi"), unbuilt("oci")]
}

/// Which cgroup version would enforce each of the memory/pids/cpu limits.
fn cgroup_note(report: &HostReport) -> String {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    let mut none = Vec::new();
    for ctrl in ["memory", "pids", "cpu"] {
        if report.has(&format!("cgroup.v2.{ctrl}")) {
            v2.push(ctrl);
        } else if report.has(&format!("cgroup.v1.{ctrl}")) {
            v1.push(ctrl);
        } else {
            none.push(ctrl);
        }
    }
    if none.len() == 3 {
        return "no writable cgroup: memory/pids/cpu limits will be refused".to_string();
    }
    let mut parts = Vec::new();
    if !v2.is_empty() {
        parts.push(format!("limits via cgroup v2 ({})", v2.join(", ")));
    }
    if !v1.is_empty() {
        parts.push(format!("limits via cgroup v1 ({})", v1.join(", ")));
    }
    if !none.is_empty() {
        let list = none.join("/");
        parts.push(format!(
            "no writable cgroup for {list}: {list} limits will be refused"
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::report::{Feature, HostTiers};
    use super::*;

    fn report_with(available: &[&str]) -> HostReport {
        let features = available
            .iter()
            .map(|name| Feature {
                name: (*name).to_string(),
                available: true,
                detail: if *name == "landlock" {
                    "ABI 6: fs".to_string()
                } else {
                    "found".to_string()
                },
                how: "test".to_string(),
            })
            .collect();
        let mut report = HostReport {
            kernel: "x".to_string(),
            euid: 1000,
            features,
            tiers: Vec::new(),
        };
        report.tiers = tiers(&report);
        report
    }

    #[test]
    fn check_process_tier_ready_message() {
        let report = report_with(&[]);
        let err = report.process_tier_ready().unwrap_err();
        assert!(err.starts_with(
            "process tier cannot run: missing user_namespace.current_user, namespace.mount"
        ));
        assert!(err.ends_with("landlock, seccomp"));
        assert!(report.tiers[0].note.contains("no writable cgroup"));
        // One mechanism short: exactly that one is named.
        let without_seccomp: Vec<&str> = PROCESS_TIER_REQUIRES
            .iter()
            .copied()
            .filter(|n| *n != "seccomp")
            .collect();
        assert_eq!(
            report_with(&without_seccomp).process_tier_ready(),
            Err("process tier cannot run: missing seccomp".to_string())
        );
    }

    #[test]
    fn check_host_tiers_offer_only_runnable_built_tiers() {
        let mut all: Vec<&str> = PROCESS_TIER_REQUIRES.to_vec();
        all.push("kvm");
        let report = report_with(&all);
        assert!(report.process_tier_ready().is_ok());
        assert_eq!(
            report.tiers[0].note,
            "no writable cgroup: memory/pids/cpu limits will be refused; Landlock ABI 6"
        );
        // KVM makes the microvm verdict runnable, but that tier is not built: not offered.
        assert!(
            report
                .tiers
                .iter()
                .any(|t| t.tier == "microvm" && t.runnable)
        );
        let tiers = HostTiers::from_report(&report);
        assert_eq!(tiers.runnable(), ["process"]);
        assert!(tiers.can_run("process") && !tiers.can_run("microvm"));
        // Without Landlock nothing is runnable.
        let no_landlock: Vec<&str> = all.iter().copied().filter(|n| *n != "landlock").collect();
        let tiers = HostTiers::from_report(&report_with(&no_landlock));
        assert!(tiers.runnable().is_empty(), "{tiers:?}");
    }
}
