use std::collections::BTreeSet;
use std::process::{Command, Output};

use warren_testkit::TempDir;
use warren_testkit::fault::Fault;

use super::{WARREN, stderr, stdout};

#[test]
fn check_json_reports_every_mechanism_and_the_tiers() {
    let o = std::process::Command::new(WARREN)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for want in [
        "user_namespace.current_user",
        "user_namespace.unprivileged",
        "namespace.mount",
        "namespace.pid",
        "namespace.net",
        "namespace.ipc",
        "namespace.uts",
        "namespace.cgroup",
        "mount_api",
        "overlayfs",
        "overlayfs.user_namespace",
        "landlock",
        "seccomp",
        "cgroup.v2",
        "cgroup.v1",
        "fuse",
        "kvm",
        "vsock",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    for f in v["features"].as_array().unwrap() {
        assert!(!f["how"].as_str().unwrap().is_empty(), "{f}");
    }
    if warren_testkit::in_ci() {
        let (runnable, _) = process_verdict(&o);
        assert!(runnable, "the process tier must run in CI: {v}");
    }
}

/// `warren check --json`, under `fault` if given.
fn check(fault: Option<Fault>) -> Output {
    let mut cmd = Command::new(WARREN);
    cmd.args(["check", "--json"]);
    if let Some(f) = fault {
        f.apply_to(&mut cmd);
    }
    cmd.output().unwrap()
}

/// `warren exec -- true` with a private state dir, under `fault` if given.
fn exec_true(fault: Option<Fault>) -> Output {
    let state = TempDir::new("state");
    let mut cmd = Command::new(WARREN);
    cmd.args(["exec", "--", "true"])
        .env("WARREN_STATE_DIR", state.path());
    if let Some(f) = fault {
        f.apply_to(&mut cmd);
    }
    cmd.output().unwrap()
}

/// The process tier's verdict in a `check --json` output: (runnable, missing).
fn process_verdict(o: &Output) -> (bool, BTreeSet<String>) {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {}", stdout(o)));
    let process = v["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "process")
        .unwrap();
    let missing = process["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    (process["runnable"].as_bool().unwrap(), missing)
}

/// What `check` says about the process tier is what happens: it is runnable exactly when a real
/// `warren exec -- true` starts a cell here, and `check` exits 0 exactly then.
#[test]
fn check_verdict_matches_whether_a_cell_really_starts() {
    let o = check(None);
    let (runnable, missing) = process_verdict(&o);
    let e = exec_true(None);
    assert_eq!(
        runnable,
        e.status.success(),
        "check says runnable={runnable} (missing {missing:?}), but exec -- true exited {:?}: {}",
        e.status,
        stderr(&e)
    );
    assert_eq!(o.status.success(), e.status.success(), "{}", stderr(&o));
}

/// Each mechanism taken away at the kernel seam (a seccomp filter on `warren` itself, see
/// `warren_testkit::fault`): `check` names exactly the features that need it, and a real
/// `warren exec -- true` under the same fault is refused, naming it too.
#[test]
fn check_names_exactly_the_mechanism_taken_away() {
    let (_, baseline) = process_verdict(&check(None));
    // The control filter takes nothing a cell needs: nothing more is missing.
    let (_, missing) = process_verdict(&check(Some(Fault::Control)));
    assert_eq!(
        missing, baseline,
        "the control fault changed check's verdict"
    );
    for fault in Fault::MECHANISMS {
        let (needs, names): (&[&str], &[&str]) = match fault {
            Fault::Landlock => (&["landlock"], &["landlock"]),
            Fault::Seccomp => (&["seccomp"], &["seccomp"]),
            Fault::MountApi => (&["mount_api"], &["mount api", "mount_api"]),
            // Every namespace, and the mount API, is probed inside a user namespace (as the
            // jail uses them): all of them go with it, nothing else does.
            Fault::Userns => (
                &[
                    "user_namespace.current_user",
                    "namespace.mount",
                    "namespace.pid",
                    "namespace.net",
                    "namespace.ipc",
                    "namespace.uts",
                    "namespace.cgroup",
                    "mount_api",
                ],
                &["user namespace", "user_namespace"],
            ),
            Fault::Control => unreachable!(),
        };
        let o = check(Some(fault));
        let (runnable, missing) = process_verdict(&o);
        let mut want = baseline.clone();
        want.extend(needs.iter().map(|n| n.to_string()));
        assert_eq!(missing, want, "without {}", fault.name());
        assert!(!runnable && !o.status.success(), "without {}", fault.name());
        let e = exec_true(Some(fault));
        let err = stderr(&e).to_lowercase();
        eprintln!(
            "without {}: check misses {missing:?}; exec: {}",
            fault.name(),
            err.trim()
        );
        assert!(
            !e.status.success() && names.iter().any(|n| err.contains(n)),
            "exec -- true without {}: {:?}: {err}",
            fault.name(),
            e.status
        );
    }
}

#[test]
fn check_human_output_lists_tiers() {
    let o = std::process::Command::new(WARREN)
        .arg("check")
        .output()
        .unwrap();
    let text = stdout(&o);
    assert!(
        text.contains("Tiers") && text.contains("process") && text.contains("landlock"),
        "{text}"
    );
}

/// Fault injection lives in the test jail only: the production jail (`warren __jail`) given
/// the test-only flag ignores it and starts a fully confined cell.
#[test]
fn the_production_jail_ignores_the_test_fault_flag() {
    if !warren_testkit::require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let spec = warren_cell::CellSpec::new(state.path());
    for fault in Fault::MECHANISMS {
        let jail = warren_cell::JailProgram {
            program: WARREN.into(),
            args: vec!["__jail".into(), fault.flag()],
            fork_server: false,
        };
        let cell = warren_cell::ProcessCell::start(&spec, &jail)
            .unwrap_or_else(|e| panic!("warren __jail {}: {e}", fault.flag()));
        let info = cell.info();
        assert!(
            info.landlock.filesystem && info.seccomp_rules > 0,
            "{}: {info:?}",
            fault.flag()
        );
        let spec = warren_cell::ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo ran".into()],
            max_output_bytes: 1 << 10,
            ..Default::default()
        };
        let mut out = warren_cell::Collect::default();
        let o = warren_cell::Cell::exec(&cell, &spec, None, &mut out).unwrap();
        assert_eq!(
            (o.exit.code, out.stdout.as_slice()),
            (Some(0), &b"ran\n"[..])
        );
    }
}
