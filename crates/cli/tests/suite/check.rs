use super::{WARREN, stdout};

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
    let process = v["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "process")
        .unwrap();
    // The exit status agrees with the process tier's verdict.
    assert_eq!(
        o.status.success(),
        process["runnable"].as_bool().unwrap(),
        "{process}"
    );
    if warren_testkit::in_ci() {
        assert!(
            o.status.success(),
            "the process tier must run in CI: {process}"
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
