use std::os::unix::fs::PermissionsExt;

use warren_testkit::{TempDir, require_cgroup_limits, require_process_tier};

use super::{WARREN, stderr, stdout, warren};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn exit_codes_are_passed_through_and_documented() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    assert_eq!(
        code(&warren(s.path(), &["exec", "--", "sh", "-c", "exit 7"])),
        7
    );
    assert_eq!(
        code(&warren(
            s.path(),
            &["exec", "--", "sh", "-c", "kill -TERM $$"]
        )),
        128 + 15
    );
    assert_eq!(
        code(&warren(s.path(), &["exec", "--", "no-such-command"])),
        127
    );
    assert_eq!(
        code(&warren(
            s.path(),
            &["exec", "--timeout", "300ms", "--", "sleep", "30"]
        )),
        124
    );
    let o = warren(
        s.path(),
        &["exec", "--workspace", "/nonexistent/dir", "--", "true"],
    );
    assert_eq!(code(&o), 125, "{}", stderr(&o));
}

#[test]
fn out_of_memory_has_its_own_exit_code() {
    if !require_process_tier() || !require_cgroup_limits() {
        return;
    }
    let s = TempDir::new("state");
    let o = warren(
        s.path(),
        &[
            "exec",
            "--memory",
            "32M",
            "--",
            "sh",
            "-c",
            "head -c 256m /dev/zero | tail > /dev/null",
        ],
    );
    assert_eq!(code(&o), 123, "{}", stderr(&o));
    assert!(stderr(&o).contains("out-of-memory"));
}

#[test]
fn output_streams_and_json_reports() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let o = warren(
        s.path(),
        &["exec", "--", "sh", "-c", "echo out; echo err >&2"],
    );
    assert_eq!((stdout(&o).as_str(), code(&o)), ("out\n", 0));
    assert!(stderr(&o).contains("err\n"));
    let o = warren(
        s.path(),
        &[
            "exec",
            "--json",
            "--output-limit",
            "5",
            "--",
            "sh",
            "-c",
            "echo 0123456789",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stdout"], "01234");
    assert_eq!(v["stdout_bytes"], 11);
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["exit_code"], 0);
    assert!(v["landlock_abi"].as_u64().unwrap() >= 1);
}

#[test]
fn environment_is_an_allowlist() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let o = std::process::Command::new(WARREN)
        .args(["exec", "--env", "GIVEN=yes", "--", "sh", "-c", "env"])
        .env("WARREN_STATE_DIR", s.path())
        .env("OPENAI_API_KEY", "sk-host-secret-123")
        .output()
        .unwrap();
    let env = stdout(&o);
    assert!(env.contains("GIVEN=yes"), "{env}");
    assert!(
        !env.contains("sk-host-secret") && !env.contains("OPENAI_API_KEY"),
        "host env leaked: {env}"
    );
    assert!(!env.contains("WARREN_STATE_DIR"), "{env}");
}

#[test]
fn stdin_is_forwarded_with_interactive() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let mut child = std::process::Command::new(WARREN)
        .args(["exec", "-i", "--", "tr", "a-z", "A-Z"])
        .env("WARREN_STATE_DIR", s.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "SHOUT\n");
}

fn workspace() -> TempDir {
    let ws = TempDir::new("ws");
    std::fs::write(ws.path().join("keep.txt"), "same\n").unwrap();
    std::fs::write(ws.path().join("edit.txt"), "old\n").unwrap();
    std::fs::write(ws.path().join("gone.txt"), "bye\n").unwrap();
    // Give the workspace to an ordinary uid so a root-run cell maps to it, as it would for a
    // developer's checkout.
    for p in ["", "keep.txt", "edit.txt", "gone.txt"] {
        let _ = std::os::unix::fs::chown(ws.path().join(p), Some(4242), Some(4242));
    }
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ws
}

fn kept_id(stderr: &str) -> String {
    let i = stderr.find("kept as cell ").expect(stderr) + "kept as cell ".len();
    stderr[i..].split(':').next().unwrap().to_owned()
}

#[test]
fn cow_changes_are_listed_diffed_applied_or_discarded() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = workspace();
    let w = ws.path().to_str().unwrap();
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--cow",
            "--",
            "sh",
            "-c",
            "echo new > edit.txt; rm gone.txt; mkdir d; echo hi > d/new.txt",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("M edit.txt") && err.contains("D gone.txt") && err.contains("A d/new.txt"),
        "{err}"
    );
    // Nothing reached the host yet.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("edit.txt")).unwrap(),
        "old\n"
    );
    assert!(ws.path().join("gone.txt").exists());
    let id = kept_id(&err);

    let d = warren(s.path(), &["diff", &id]);
    assert!(
        stdout(&d).contains("-old\n+new\n") && stdout(&d).contains("+hi\n"),
        "{}",
        stdout(&d)
    );
    let list = warren(s.path(), &["changes", "--json"]);
    assert!(stdout(&list).contains(&id));

    let a = warren(s.path(), &["apply", &id]);
    assert_eq!(code(&a), 0, "{}", stderr(&a));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("edit.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("d/new.txt")).unwrap(),
        "hi\n"
    );
    assert!(!ws.path().join("gone.txt").exists());
    assert_eq!(
        code(&warren(s.path(), &["diff", &id])),
        1,
        "an applied layer is gone"
    );

    // Discard path.
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--",
            "sh",
            "-c",
            "echo x > other.txt",
        ],
    );
    let id = kept_id(&stderr(&o));
    assert_eq!(code(&warren(s.path(), &["discard", &id])), 0);
    assert!(!ws.path().join("other.txt").exists());
    assert_eq!(code(&warren(s.path(), &["apply", &id])), 1);
}

#[test]
fn read_only_and_read_write_workspaces() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = workspace();
    let w = ws.path().to_str().unwrap();
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--ro",
            "--",
            "sh",
            "-c",
            "echo x > edit.txt",
        ],
    );
    assert_ne!(code(&o), 0);
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--rw",
            "--",
            "sh",
            "-c",
            "echo direct > edit.txt",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("edit.txt")).unwrap(),
        "direct\n"
    );
}

#[test]
fn policy_file_is_applied_and_errors_name_file_line_column() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let p = s.path().join("policy.toml");
    std::fs::write(&p, "timeout = \"200ms\"\n[env]\nFROM_POLICY = \"1\"\n").unwrap();
    let pol = p.to_str().unwrap();
    let o = warren(
        s.path(),
        &[
            "exec",
            "--policy",
            pol,
            "--",
            "sh",
            "-c",
            "echo $FROM_POLICY; sleep 30",
        ],
    );
    assert_eq!((code(&o), stdout(&o).as_str()), (124, "1\n"));

    std::fs::write(&p, "pids = 10\nmemory = \"12Q\"\n").unwrap();
    let o = warren(s.path(), &["exec", "--policy", pol, "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains(&format!("{pol}:2:10: unknown size unit")),
        "{}",
        stderr(&o)
    );

    std::fs::write(&p, "pids = 10\nnetwork = true\n").unwrap();
    let o = warren(s.path(), &["exec", "--policy", pol, "--", "true"]);
    assert!(
        stderr(&o).contains(&format!("{pol}:2:1:")) && stderr(&o).contains("unknown field"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn runs_as_an_ordinary_user() {
    if !require_process_tier() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already an ordinary user: every other test here covers it.
        return;
    }
    // Copy the binary somewhere uid 65534 can execute it, then run it as that user.
    let dir = TempDir::new("unpriv");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("warren");
    std::fs::copy(WARREN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env("WARREN_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap()
    };
    let o = run(&[
        "exec",
        "--",
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000\nCapEff:\t0000000000000000\n");
    let o = run(&["exec", "--", "cat", "/etc/shadow"]);
    assert_ne!(code(&o), 0);
    // Limits an ordinary user cannot enforce are refused, never silently dropped — unless
    // this host delegates a cgroup subtree to that user.
    let o = run(&["exec", "--pids", "10", "--", "true"]);
    assert!(
        code(&o) == 0 || (code(&o) == 125 && stderr(&o).contains("cgroup")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn root_owned_workspace_is_editable_through_an_idmapped_mount() {
    if !require_process_tier() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // only root creates idmapped mounts; an ordinary user owns its workspace
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("rootws");
    std::fs::write(ws.path().join("edit.txt"), "old\n").unwrap();
    std::fs::create_dir(ws.path().join("d")).unwrap();
    std::fs::write(ws.path().join("d/gone.txt"), "x\n").unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let w = ws.path().to_str().unwrap();
    // The cell is not host root, yet edits root-owned files as their owner would.
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--",
            "sh",
            "-c",
            "echo new > edit.txt; rm -r d; echo hi > added.txt; id -u",
        ],
    );
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "1000\n"),
        "{}",
        stderr(&o)
    );
    let id = kept_id(&stderr(&o));
    assert_eq!(code(&warren(s.path(), &["apply", &id])), 0);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("edit.txt")).unwrap(),
        "new\n"
    );
    assert!(!ws.path().join("d").exists());
    use std::os::unix::fs::MetadataExt;
    for f in ["edit.txt", "added.txt"] {
        assert_eq!(
            std::fs::metadata(ws.path().join(f)).unwrap().uid(),
            0,
            "{f} changed owner"
        );
    }
    // Read-write on a root-owned tree is refused: whatever the cell made there (a setuid
    // binary) would be root's on the host. Nothing runs, nothing changes.
    let o = warren(
        s.path(),
        &[
            "exec",
            "--workspace",
            w,
            "--rw",
            "--",
            "sh",
            "-c",
            "echo direct >> edit.txt; echo n > rw.txt",
        ],
    );
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("owned by root"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("edit.txt")).unwrap(),
        "new\n"
    );
    assert!(!ws.path().join("rw.txt").exists());
}

/// Whether `prog` is on the host's PATH (the cell sees the same /usr).
fn have(prog: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_local_http_server_and_client_talk_inside_one_cell() {
    if !require_process_tier() {
        return;
    }
    if !have("python3") {
        warren_testkit::skip("python3 is not installed (the server under test)");
        return;
    }
    let s = TempDir::new("state");
    // A real server on the cell's loopback, then real clients in the same cell. The port is
    // the cell's own: nothing on the host's loopback is involved.
    let script = r#"
        cd /tmp && echo hello-from-inside-the-cell > index.html
        python3 -m http.server 8765 --bind 127.0.0.1 >/tmp/server.log 2>&1 & server=$!
        for i in $(seq 100); do
          python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8765/index.html', timeout=2).read().decode(), end='')" 2>/dev/null && break
          sleep 0.05
        done
        if command -v curl >/dev/null; then curl -sS -m 5 http://localhost:8765/index.html; else echo no-curl; fi
        kill $server
    "#;
    let o = warren(s.path(), &["exec", "--", "sh", "-c", script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("hello-from-inside-the-cell\n"),
        "python client: {out:?} {}",
        stderr(&o)
    );
    assert!(
        out.ends_with("hello-from-inside-the-cell\n") && out.lines().count() == 2
            || out.ends_with("no-curl\n"),
        "curl client: {out:?} {}",
        stderr(&o)
    );
}
