//! Host capability detection (`warren check`).
//!
//! [`detect`] runs a set of small probes and returns a [`HostReport`]: every
//! sandboxing mechanism Warren may use, whether it works, what was found and
//! *how* it was found, followed by which cell tiers can run on this host.
//! [`render`] turns the report into aligned human-readable text; the report
//! itself is the `--json` output ([`render_json`]; field names are stable,
//! snake_case). [`HostTiers`] is the short answer a long-lived process keeps:
//! which tiers this host runs, computed once.
//!
//! Layout:
//!
//! * `report`: the report types and [`HostTiers`];
//! * `tiers`: which tiers the features allow;
//! * `render`: text and JSON output;
//! * `harness`: the forked-child harness probes that change the calling
//!   process run in (see there for the child → parent protocol);
//! * one file per probe family: `namespaces` (user and other namespaces),
//!   `mount_api` (the fd-based mount API cells are built with), `overlay`, `landlock`, `seccomp`, `cgroup`, `devices` (fuse, kvm, vsock)
//!   and `host` (bubblewrap, kernel release).
//!
//! Parsing `/proc/self/mountinfo` is not here: production code needs it too
//! (cgroup set-up), so it lives in [`crate::mountinfo`]; [`CgroupLayout`] and
//! [`cgroup_layout`] are re-exported from there.
//!
//! `fork` is only sound here because the probes' children never allocate or
//! take locks; the `warren` CLI is single-threaded when it calls [`detect`],
//! and other threads (a test harness's, a daemon's) cannot hold anything the
//! children use.

mod cgroup;
mod devices;
mod harness;
mod host;
mod landlock;
mod mount_api;
mod namespaces;
mod overlay;
mod render;
mod report;
mod seccomp;
mod tiers;

pub use crate::mountinfo::{CgroupLayout, cgroup_layout};
pub use landlock::landlock_abi;
pub use render::{render, render_json};
pub use report::{Feature, HostReport, HostTiers, TierStatus};

/// Runs every probe and derives the tier statuses. Never panics; a probe that
/// cannot run is reported as unavailable with the reason in `detail`.
///
/// This forks a dozen children and takes tens of milliseconds: a long-lived
/// process that only needs the runnable tiers computes [`HostTiers`] once.
pub fn detect() -> HostReport {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mut features = vec![
        namespaces::probe_userns_current(euid),
        namespaces::probe_userns_unprivileged(euid),
    ];
    features.extend(namespaces::probe_namespaces());
    features.push(mount_api::probe_mount_api());
    features.push(overlay::probe_overlayfs(euid));
    features.push(overlay::probe_overlayfs_userns(euid));
    features.extend(landlock::probe_landlock());
    features.extend(seccomp::probe_seccomp());
    features.extend(cgroup::probe_cgroups());
    features.push(devices::probe_fuse());
    features.push(devices::probe_kvm());
    features.push(devices::probe_vsock());
    features.push(host::probe_bubblewrap());

    let mut report = HostReport {
        kernel: host::kernel_release(),
        euid,
        features,
        tiers: Vec::new(),
    };
    report.tiers = tiers::tiers(&report);
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn check_detect_reports_everything() {
        let report = detect();
        assert!(!report.kernel.is_empty());
        assert!(report.tiers.iter().any(|t| t.tier == "process"));
        for tier in ["microvm", "wasi", "oci"] {
            assert!(report.tiers.iter().any(|t| t.tier == tier), "{tier}");
        }
        for f in &report.features {
            assert!(!f.how.is_empty(), "{} has no how", f.name);
            assert!(!f.detail.is_empty(), "{} has no detail", f.name);
        }
        let mut names: Vec<&str> = report.features.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), report.features.len(), "duplicate feature ids");
        for required in tiers::PROCESS_TIER_REQUIRES {
            assert!(names.contains(&required), "{required} not probed");
        }
        match report.process_tier_ready() {
            Ok(()) => assert!(report.tiers[0].runnable),
            Err(e) => assert!(e.starts_with("process tier cannot run: missing "), "{e}"),
        }
        let json: serde_json::Value = serde_json::from_str(&render_json(&report).unwrap()).unwrap();
        assert!(json["features"].is_array());
        let text = render(&report);
        assert!(text.contains("process"));
        // No scratch directories left behind.
        let tmp = std::env::temp_dir();
        let prefix = format!("warren-check-{}-", std::process::id());
        let leftovers = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        assert_eq!(leftovers, 0);
    }
}
