//! `warren agent …` over the local store.

use warren_testkit::TempDir;

use super::{stderr, stdout, warren};

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn example_manifests_deploy_and_versions_accumulate() {
    let s = TempDir::new("state");
    for f in ["coder.yaml", "reviewer.yaml"] {
        let path = repo().join("examples/agents").join(f);
        let o = warren(s.path(), &["agent", "deploy", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stderr(&o));
    }
    let coder = repo().join("examples/agents/coder.yaml");
    let o = warren(
        s.path(),
        &["agent", "deploy", "--json", coder.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["version"].as_u64()),
        (Some("coder"), Some(2))
    );
    assert_eq!(v["manifest"]["memory"], 2u64 << 30);
    let list = stdout(&warren(s.path(), &["agent", "list"]));
    assert_eq!(list, "coder  v2\nreviewer  v1\n");
    assert!(
        stdout(&warren(s.path(), &["agent", "show", "reviewer"]))
            .contains("approval_required: [shell]")
    );
    assert_eq!(
        warren(s.path(), &["agent", "remove", "reviewer"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        warren(s.path(), &["agent", "show", "reviewer"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn an_invalid_manifest_is_refused_with_its_location() {
    let s = TempDir::new("state");
    let f = s.path().join("bad.yaml");
    std::fs::write(&f, "name: coder\ntools: [shell, fnish]\n").unwrap();
    let o = warren(s.path(), &["agent", "deploy", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{}:2:16: unknown tool \"fnish\"", f.display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout(&warren(s.path(), &["agent", "list"])),
        "",
        "nothing was deployed"
    );
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly_not_with_a_panic() {
    let t = warren_testkit::TempDir::new("agents-epipe");
    let state = t.path().join("state");
    let f = t.path().join("a.yaml");
    std::fs::write(&f, "name: coder\ndescription: d\ntools: [finish]\n").unwrap();
    let o = super::warren(&state, &["agent", "deploy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", super::stderr(&o));
    let mut child = std::process::Command::new(super::WARREN)
        .args(["agent", "list"])
        .env("WARREN_STATE_DIR", &state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is written.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = super::stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        matches!(o.status.code(), Some(0) | Some(141)),
        "{:?} {err}",
        o.status
    );
}
