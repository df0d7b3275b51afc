//! Test support for Warren. Never shipped in release builds.
//!
//! - `warren-probe` (a binary): runs *inside* a cell, attempts one escape, prints one JSON line
//!   saying whether it was blocked;
//! - `warren-test-jail` (a binary): the jail entry point, so tests can start real cells, with
//!   one mechanism taken away on request ([`fault`]);
//! - this library: the host-side harness — starting cells with the probe mounted, parsing its
//!   reports, and the rule that security tests never skip silently in CI.

pub mod fault;
pub mod mockllm;
pub mod pg;
pub mod relay;
pub mod ws;

use std::path::{Path, PathBuf};

use warren_cell::{Cell, CellSpec, Collect, ExecOutcome, ExecSpec, JailProgram, ProcessCell};
use warren_protocol::mount::{Mount, MountKind};

/// Where the probe appears inside a cell.
pub const PROBE_IN_CELL: &str = "/probe/warren-probe";

/// Whether we run in CI (`CI=true`), where nothing may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Call when a test cannot run here. In CI this fails the test; elsewhere it prints the reason
/// and returns, so the caller returns early.
pub fn skip(reason: &str) {
    assert!(
        !in_ci(),
        "required for this security test but missing in CI: {reason}"
    );
    eprintln!("SKIPPED (not in CI): {reason}");
}

/// Whether we run as root; otherwise [`skip`]s with `reason` (failing in CI, which runs as
/// root), so a test that needs root never passes silently as an ordinary user.
pub fn require_root(reason: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(&format!("needs root: {reason}"));
    false
}

/// Whether the process tier can run on this host; otherwise [`skip`]s (failing in CI).
pub fn require_process_tier() -> bool {
    match warren_cell::check::detect().process_tier_ready() {
        Ok(()) => true,
        Err(e) => {
            skip(&e);
            false
        }
    }
}

/// Whether cgroup limits can be enforced (root, or a delegated v2 subtree).
pub fn require_cgroup_limits() -> bool {
    let probe = warren_cell::cgroup::Hierarchy::detect().and_then(|h| {
        let dir = match &h {
            warren_cell::cgroup::Hierarchy::V2 { parent } => parent.clone(),
            warren_cell::cgroup::Hierarchy::V1 { mounts } => mounts.get("pids")?.clone(),
        };
        let c = std::ffi::CString::new(dir.into_os_string().into_encoded_bytes()).ok()?;
        // SAFETY: access(2) with a valid C string.
        let r = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
        (r == 0).then_some(())
    });
    if probe.is_none() {
        skip("no writable cgroup hierarchy with memory, pids and cpu (run as root)");
        return false;
    }
    true
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create `warren-test-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "warren-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        if let Err(e) = std::fs::create_dir_all(&p) {
            panic!("create {}: {e}", p.display());
        }
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(
            self.0.join("changes"),
            std::fs::Permissions::from_mode(0o755),
        );
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// As root, give `dir` to `nobody` (65534), as an ordinary checkout is someone's: a root-owned
/// read-write workspace is refused (the cell could leave root-owned files behind). Does nothing
/// for an ordinary user, who owns it already.
pub fn give_to_nobody(dir: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0
        && let Err(e) = std::os::unix::fs::chown(dir, Some(65534), Some(65534))
    {
        panic!("chown {}: {e}", dir.display());
    }
}

/// A spec with the probe binary mounted read-only at [`PROBE_IN_CELL`].
pub fn spec_with_probe(state: &Path, probe: &str) -> CellSpec {
    let mut spec = CellSpec::new(state);
    spec.extra_mounts.push(Mount {
        target: PROBE_IN_CELL.into(),
        kind: MountKind::Bind {
            source: probe.into(),
            readonly: true,
        },
    });
    spec
}

/// Start a cell or panic with the reason.
pub fn start(spec: &CellSpec, jail: &str) -> ProcessCell {
    let program = JailProgram {
        program: jail.into(),
        args: vec![],
        fork_server: false,
    };
    match ProcessCell::start(spec, &program) {
        Ok(c) => c,
        Err(e) => panic!("cell failed to start: {e}"),
    }
}

/// Run a command in a cell and collect its output.
pub fn run(cell: &ProcessCell, argv: &[&str], timeout_ms: Option<u64>) -> (ExecOutcome, Collect) {
    let spec = ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_ms,
        max_output_bytes: 1 << 20,
        ..Default::default()
    };
    let mut out = Collect::default();
    match cell.exec(&spec, None, &mut out) {
        Ok(o) => (o, out),
        Err(e) => panic!("exec {argv:?}: {e}"),
    }
}

/// One probe report.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// `blocked`, `escaped`, `info` or `error`.
    pub outcome: String,
    /// The whole JSON line.
    pub json: serde_json::Value,
}

/// Run `warren-probe CASE ARGS…` in the cell and parse its report.
pub fn probe(cell: &ProcessCell, args: &[&str]) -> ProbeReport {
    let mut argv = vec![PROBE_IN_CELL];
    argv.extend_from_slice(args);
    let (o, out) = run(cell, &argv, Some(60_000));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "probe {args:?} printed no report ({e}); exit {:?}; stdout {text:?}; stderr {:?}",
            o.exit,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    ProbeReport {
        outcome: json["outcome"].as_str().unwrap_or_default().to_owned(),
        json,
    }
}

/// Assert a probe case was blocked, printing its detail either way.
pub fn assert_blocked(cell: &ProcessCell, args: &[&str]) -> ProbeReport {
    let r = probe(cell, args);
    eprintln!("{args:?}: {}", r.json);
    assert_eq!(
        r.outcome, "blocked",
        "ESCAPE: {args:?} was not blocked: {}",
        r.json
    );
    r
}

/// Benchmarks' shared helpers: options after `--` and percentiles.
pub mod bench {
    use std::time::Duration;

    /// The number after `name` among the program's arguments (`-- --calls 500`), or `default`.
    pub fn arg(name: &str, default: usize) -> usize {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The p50 and p99 of `v`, in microseconds (nearest rank at or below).
    pub fn pct(mut v: Vec<Duration>) -> (f64, f64) {
        v.sort();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
        (at(0.5), at(0.99))
    }
}
