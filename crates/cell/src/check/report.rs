//! The report types: what `warren check` found ([`HostReport`]), one probed
//! mechanism ([`Feature`]), one tier's verdict ([`TierStatus`]), and the short
//! summary a long-lived process keeps ([`HostTiers`]).

use serde::Serialize;

/// Everything `warren check` found out about this host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Kernel release, as reported by `uname(2)` (`utsname.release`).
    pub kernel: String,
    /// Effective uid of the process that ran the probes.
    pub euid: u32,
    /// Every probed mechanism, in a stable order.
    pub features: Vec<Feature>,
    /// Which cell tiers can run, derived from `features`.
    pub tiers: Vec<TierStatus>,
}

/// One probed host mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `"user_namespace.unprivileged"`.
    pub name: String,
    /// Whether the mechanism is usable by this process.
    pub available: bool,
    /// What was found, e.g. `"ABI 7: fs, refer, truncate, ..."`.
    pub detail: String,
    /// How it was detected, e.g. `"fork + unshare(CLONE_NEWUSER)"`.
    pub how: String,
}

/// Whether one cell tier can run on this host.
#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    /// Tier name: `"process"`, `"microvm"`, `"wasi"` or `"oci"`.
    pub tier: String,
    /// Whether cells of this tier can run here.
    pub runnable: bool,
    /// Names of the required features that are not available.
    pub missing: Vec<String>,
    /// Free-form remarks (resource limit enforcement, build status, ...).
    pub note: String,
}

impl HostReport {
    /// `Ok(())` if the process tier can run; otherwise an error naming the
    /// missing mechanisms, e.g.
    /// `"process tier cannot run: missing user_namespace.current_user, landlock"`.
    pub fn process_tier_ready(&self) -> Result<(), String> {
        match self.tiers.iter().find(|t| t.tier == "process") {
            Some(t) if t.runnable => Ok(()),
            Some(t) if t.missing.is_empty() => {
                Err("process tier cannot run: missing (unknown)".to_string())
            }
            Some(t) => Err(format!(
                "process tier cannot run: missing {}",
                t.missing.join(", ")
            )),
            None => Err("process tier cannot run: not evaluated".to_string()),
        }
    }

    pub(super) fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.feature(name).is_some_and(|f| f.available)
    }
}

/// The cell tiers this host can run *and* this build implements, e.g. `["process"]`.
///
/// Computing it runs every probe of [`super::detect`] (a dozen forked children, tens of
/// milliseconds), and the answer does not change while a process runs: a long-lived process
/// (the daemon, for its `/health`) computes it once at start with [`HostTiers::detect`] and
/// reports the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostTiers {
    runnable: Vec<String>,
}

impl HostTiers {
    /// Probe the host ([`super::detect`]) and keep the runnable tiers.
    pub fn detect() -> Self {
        Self::from_report(&super::detect())
    }

    /// A fixed answer (tests of a process that reports tiers without probing the host).
    pub fn new(runnable: Vec<String>) -> Self {
        HostTiers { runnable }
    }

    /// The runnable tiers of an existing report: those whose verdict is runnable and that this
    /// version implements (KVM makes the microvm tier's verdict runnable, but it is not built).
    pub fn from_report(report: &HostReport) -> Self {
        HostTiers {
            runnable: report
                .tiers
                .iter()
                .filter(|t| t.runnable && super::tiers::BUILT.contains(&t.tier.as_str()))
                .map(|t| t.tier.clone())
                .collect(),
        }
    }

    /// Tier names, in the report's order (`"process"` first).
    pub fn runnable(&self) -> &[String] {
        &self.runnable
    }

    /// Whether cells of `tier` can run here.
    pub fn can_run(&self, tier: &str) -> bool {
        self.runnable.iter().any(|t| t == tier)
    }
}

/// A [`Feature`] from its parts.
pub(super) fn feature(
    name: &str,
    available: bool,
    detail: impl Into<String>,
    how: impl Into<String>,
) -> Feature {
    Feature {
        name: name.to_string(),
        available,
        detail: detail.into(),
        how: how.into(),
    }
}
