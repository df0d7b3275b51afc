//! What the Debian package takes from the binary: man pages and completions generated from the
//! CLI definition, and `warren configure` writing the key root-only (the package itself is
//! built, installed and removed by `.ci/package`).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use warren_testkit::TempDir;

use super::WARREN;

#[test]
fn man_pages_and_completions_come_from_the_cli_definition() {
    let t = TempDir::new("manpages");
    let out = Command::new(WARREN)
        .args(["manpages"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "warren.1",
        "warren-task-submit.1",
        "warren-plan-show.1",
        "warren-configure.1",
    ] {
        let text = std::fs::read_to_string(t.path().join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text:.80}"
        );
    }
    let submit = std::fs::read_to_string(t.path().join("warren-task-submit.1")).unwrap();
    assert!(submit.contains("plan"), "the page lists --plan");
    assert!(
        !t.path().join("warren-manpages.1").exists(),
        "hidden commands have no page"
    );
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef warren"),
        ("fish", "complete -c warren"),
    ] {
        let out = Command::new(WARREN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(needle),
            "{shell}: {text:.200}"
        );
        assert!(text.contains("submit"), "{shell} completes subcommands");
    }
}

#[test]
fn configure_writes_the_key_root_only_and_refuses_bad_input() {
    let t = TempDir::new("configure");
    let env = t.path().join("etc/env");
    let run = |args: &[&str], key: &str| {
        Command::new(WARREN)
            .arg("configure")
            .args(args)
            .arg("--env-file")
            .arg(&env)
            .env("THE_KEY", key)
            .output()
            .unwrap()
    };
    let out = run(
        &["--key-from-env", "THE_KEY", "--provider", "anthropic"],
        "sk-ant-1",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "ANTHROPIC_API_KEY=sk-ant-1\n"
    );
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = run(
        &[
            "--key-from-env",
            "THE_KEY",
            "--base-url",
            "http://127.0.0.1:8080/v1",
        ],
        "sk-2",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "ANTHROPIC_API_KEY=sk-ant-1\nOPENAI_API_KEY=sk-2\nOPENAI_BASE_URL=http://127.0.0.1:8080/v1\n"
    );
    // A key with a newline could smuggle another variable into the service's environment.
    let out = run(&["--key-from-env", "THE_KEY"], "sk-3\nLD_PRELOAD=/tmp/x.so");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !std::fs::read_to_string(&env)
            .unwrap()
            .contains("LD_PRELOAD")
    );
    // The shared store's URL (it may hold a password) goes to the same root-only file.
    let url = "postgres://warren:pw@db.internal/warren";
    let out = run(&["--key-from-env", "THE_KEY", "--store", url], "sk-2");
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read_to_string(&env)
            .unwrap()
            .ends_with(&format!("WARREN_STORE={url}\n"))
    );
    let out = run(
        &["--key-from-env", "THE_KEY", "--store", "/var/lib/x.db"],
        "sk-2",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(&["--key-from-env", "NOT_SET_ANYWHERE"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_SET_ANYWHERE is not set"));
}
