//! `warren agent …`: locally (the runtime's action handler over the state directory's store)
//! and through a daemon, which answer, print and audit alike.

use serde_json::Value;
use warren_testkit::TempDir;
use warren_testkit::mockllm::MockLlm;

use super::daemon::{DaemonProc, MANIFEST, warren_at};
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
    // The API's AgentView: the manifest as deployed (its text), as the daemon answers.
    assert_eq!(
        v["manifest"].as_str(),
        Some(std::fs::read_to_string(&coder).unwrap().as_str())
    );
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

/// The audit records of `kind`, from `warren audit export`.
fn audited(state: &std::path::Path, kind: &str) -> Vec<Value> {
    let o = warren_at(state, &["audit", "export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// An answer printed with `--json`.
fn json_of(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {:?}", stdout(o)))
}

/// `v` without its creation times (which differ between two stores).
fn timeless(mut v: Value) -> Value {
    let mut strip = |a: &mut Value| {
        if let Some(a) = a.as_object_mut() {
            a.remove("created_ms");
        }
    };
    match &mut v {
        Value::Array(list) => list.iter_mut().for_each(&mut strip),
        one => strip(one),
    }
    v
}

#[test]
fn a_local_deploy_and_remove_are_audited_like_the_daemons() {
    let t = TempDir::new("agents-audit");
    let state = t.path().join("state");
    let f = t.path().join("coder.yaml");
    std::fs::write(&f, MANIFEST).unwrap();
    let o = warren_at(&state, &["agent", "deploy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "warren: deployed coder version 1\n");
    let o = warren_at(&state, &["agent", "remove", "coder"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let deployed = audited(&state, "agent.deployed");
    assert_eq!(deployed.len(), 1, "{deployed:?}");
    assert_eq!(
        deployed[0]["data"],
        serde_json::json!({"name": "coder", "version": 1, "by": "cli"})
    );
    let removed = audited(&state, "agent.removed");
    assert_eq!(
        removed.iter().map(|r| &r["data"]).collect::<Vec<_>>(),
        [&serde_json::json!({"name": "coder", "by": "cli"})]
    );
    // Part of the hash chain like every record the daemon writes.
    let o = warren_at(&state, &["audit", "verify"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // A refused manifest is not deployed, so not audited.
    let bad = t.path().join("bad.yaml");
    std::fs::write(&bad, "name: coder\ntools: [teleport]\n").unwrap();
    let o = warren_at(&state, &["agent", "deploy", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.yaml:2:"), "{}", stderr(&o));
    assert_eq!(audited(&state, "agent.deployed").len(), 1);
}

#[test]
fn local_and_remote_agent_commands_print_the_same_json() {
    let t = TempDir::new("agents-shapes");
    let (local, served) = (t.path().join("local"), t.path().join("served"));
    let f = t.path().join("coder.yaml");
    std::fs::write(&f, MANIFEST).unwrap();
    let mock = MockLlm::start(Vec::new()).unwrap();
    let d = DaemonProc::start(&served, &mock, &["--listen", "127.0.0.1:0"]);
    let url = format!("http://{}", d.tcp.clone().expect("a TCP address"));
    let file = f.to_str().unwrap();
    let steps: [&[&str]; 5] = [
        &["agent", "deploy", file, "--json"],
        &["agent", "deploy", file, "--json"],
        &["agent", "list", "--json"],
        &["agent", "show", "coder", "--json"],
        &["agent", "remove", "coder", "--json"],
    ];
    let mut answers = Vec::new();
    for args in steps {
        let here = json_of(&warren_at(&local, args));
        let mut remote_args = vec!["--url", url.as_str()];
        remote_args.extend_from_slice(args);
        let there = json_of(&warren_at(&served, &remote_args));
        assert_eq!(
            timeless(here.clone()),
            timeless(there),
            "warren {}",
            args.join(" ")
        );
        answers.push(here);
    }
    // Both ways audit the deploys, naming who asked.
    let keys = |state: &std::path::Path| -> Vec<(Value, Value)> {
        audited(state, "agent.deployed")
            .into_iter()
            .map(|r| (r["data"]["version"].clone(), r["data"]["by"].clone()))
            .collect()
    };
    assert_eq!(
        keys(&local),
        [(1.into(), "cli".into()), (2.into(), "cli".into())]
    );
    assert_eq!(
        keys(&served),
        [(1.into(), "api".into()), (2.into(), "api".into())]
    );

    // The shapes themselves (`cargo insta review` after an intended change).
    let [deploy, _, list, show, remove] = <[Value; 5]>::try_from(answers).unwrap();
    insta::assert_json_snapshot!("agent_deploy_json", deploy, {".created_ms" => "[ms]"});
    insta::assert_json_snapshot!("agent_list_json", list, {"[].created_ms" => "[ms]"});
    insta::assert_json_snapshot!("agent_show_json", show, {".created_ms" => "[ms]"});
    insta::assert_json_snapshot!("agent_remove_json", remove);
}
