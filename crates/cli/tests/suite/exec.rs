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
    if !warren_testkit::require_root(
        "switches to uid 65534 (as an ordinary user every other test here covers this)",
    ) {
        return;
    }
    // Copy the binary somewhere uid 65534 can execute it, then run it as that user.
    let dir = TempDir::new("unpriv");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("warren");
    std::fs::copy(WARREN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        // The copy was just written by this process: a fork by another test's thread can hold
        // its write descriptor until that child's exec, so executing it can fail with ETXTBSY
        // for a moment (a Linux race, not Warren's). Try again briefly.
        for _ in 0..50 {
            let o = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin)
                .args(args)
                .env("WARREN_STATE_DIR", dir.path().join("state"))
                .output()
                .unwrap();
            if !(code(&o) == 126 && stderr(&o).contains("Text file busy")) {
                return o;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{} stayed busy", bin.display());
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
    if !warren_testkit::require_root(
        "only root creates idmapped mounts; an ordinary user owns its workspace",
    ) {
        return;
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

#[test]
fn the_readme_policy_line_runs_the_projects_own_script() {
    if !require_process_tier() {
        return;
    }
    // `warren exec --policy examples/policy.toml -- ./build.sh`, as the README shows it, in
    // a project: the example sets a mode and no workspace, so the project is the directory
    // warren runs in, mounted copy-on-write, and the command starts there.
    let s = TempDir::new("state");
    let ws = workspace();
    let script = ws.path().join("build.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho building in \"$(pwd)\"\necho built > out.txt\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::os::unix::fs::chown(&script, Some(4242), Some(4242));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let o = std::process::Command::new(WARREN)
        .args(["exec", "--policy", example, "--", "./build.sh"])
        .env("WARREN_STATE_DIR", s.path())
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "building in /workspace\n");
    let err = stderr(&o);
    assert!(err.contains("A out.txt"), "{err}");
    assert!(
        !ws.path().join("out.txt").exists(),
        "copy-on-write: kept for review"
    );
    // The flags stay explicit: a mode flag without --workspace is still refused.
    let o = warren(s.path(), &["exec", "--rw", "--", "true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("need --workspace"), "{}", stderr(&o));
}

#[test]
fn policy_read_only_paths_are_mounted_read_only_and_checked() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let tool = TempDir::new("toolchain");
    std::fs::write(tool.path().join("tool.txt"), "the toolchain\n").unwrap();
    std::fs::set_permissions(tool.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        tool.path().join("tool.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let t = tool.path().to_str().unwrap();
    let p = s.path().join("policy.toml");
    std::fs::write(&p, format!("read_only_paths = [\"{t}\"]\n")).unwrap();
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
            &format!(
                "cat {t}/tool.txt; echo x >> {t}/tool.txt || echo refused; touch {t}/new || echo refused"
            ),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "the toolchain\nrefused\nrefused\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(tool.path().join("tool.txt")).unwrap(),
        "the toolchain\n"
    );
    assert!(!tool.path().join("new").exists());
    // Checked, with the file, line and column of the offending entry.
    for (bad, why) in [
        ("/proc/self".to_owned(), "at or below /proc"),
        ("relative/path".to_owned(), "not an absolute path"),
        (format!("{t}/missing"), "No such file"),
        (s.path().display().to_string(), "state directory"),
    ] {
        std::fs::write(&p, format!("pids = 8\nread_only_paths = [\"{bad}\"]\n")).unwrap();
        let o = warren(s.path(), &["exec", "--policy", pol, "--", "true"]);
        assert_eq!(code(&o), 125, "{bad}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("{pol}:2:20: read_only_paths: "))
                && stderr(&o).contains(why),
            "{bad}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn java_compiles_and_runs_inside_a_cell() {
    if !require_process_tier() {
        return;
    }
    // A compatibility test, not a security one: CI does not install a JDK, so it skips with
    // its reason wherever java is missing (even in CI).
    if !have("java") || !have("javac") {
        eprintln!("SKIPPED: no java/javac on this host (compatibility test)");
        return;
    }
    let s = TempDir::new("state");
    let script = r#"
        java -version 2>&1 | head -1
        cd /tmp && cat > Hello.java <<'JAVA'
public class Hello {
    public static void main(String[] args) { System.out.println("hello from java in a cell"); }
}
JAVA
        javac Hello.java && java Hello
    "#;
    let o = warren(
        s.path(),
        &["exec", "--timeout", "120s", "--", "sh", "-c", script],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("version"), "{out}");
    assert!(out.ends_with("hello from java in a cell\n"), "{out}");
}

#[test]
fn a_long_change_list_is_summarized_and_json_keeps_it_all() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = workspace();
    let w = ws.path().to_str().unwrap();
    let make =
        "for i in $(seq 1 45); do echo $i > new-$i.txt; done; echo new > edit.txt; rm gone.txt";
    let o = warren(
        s.path(),
        &["exec", "--workspace", w, "--", "sh", "-c", make],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let id = kept_id(&err);
    assert!(
        err.contains(&format!(
            "warren: 47 change(s) kept as cell {id}: 45 added, 1 modified, 1 deleted\n"
        )),
        "{err}"
    );
    let listed = err.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(listed, 20 + 1, "20 paths and the remainder line: {err}");
    assert!(
        err.contains(&format!(
            "  … and 27 more (`warren diff --stat {id}` lists them all)\n"
        )),
        "{err}"
    );
    let stat = warren(s.path(), &["diff", "--stat", &id]);
    assert_eq!(stdout(&stat).lines().count(), 47, "{}", stdout(&stat));
    // --json stays complete.
    let o = warren(
        s.path(),
        &["exec", "--json", "--workspace", w, "--", "sh", "-c", make],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 47, "{v}");
    assert_eq!(v["changes_kept"], true);
}

#[test]
fn a_one_shot_cell_is_forked_from_warren_and_inherits_nothing_of_it() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    // An open descriptor warren inherits without close-on-exec, a secret in its environment
    // and one on its command line: none may reach the supervisor, the cell's init or a command.
    let marker = s.path().join("inherited-marker");
    std::fs::write(&marker, "x").unwrap();
    let file = std::fs::File::open(&marker).unwrap();
    let fd = file.as_raw_fd();
    let mut cmd = std::process::Command::new(WARREN);
    cmd.args([
        "exec",
        "--env",
        "GIVEN=sk-on-the-command-line",
        "--",
        "sh",
        "-c",
        "tr '\\0' '\\n' </proc/1/cmdline | grep -c sk-; cat /proc/1/comm; ls -l /proc/self/fd; sleep 3",
    ])
    .env("WARREN_STATE_DIR", s.path())
    .env("HOST_SECRET", "sk-in-the-environment")
    .stdout(std::process::Stdio::piped());
    // SAFETY: dup2 between fork and exec, onto a descriptor number the child does not use.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    // The supervisor: warren's child, forked (its executable is warren itself, no second
    // program was loaded), holding nothing of warren's.
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let supervisor = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            break pid.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no supervisor appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let exe = std::fs::read_link(format!("/proc/{supervisor}/exe")).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(WARREN).unwrap(),
        "forked, not executed"
    );
    for f in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{supervisor}/{f}")).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("sk-"),
            "the supervisor's {f} holds warren's: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    for e in std::fs::read_dir(format!("/proc/{supervisor}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        assert_ne!(target, marker, "the supervisor holds warren's descriptor");
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "secrets on the init's command line: {out}"
    );
    assert_eq!(lines.next(), Some("warren-jail"), "{out}");
    assert!(!out.contains("inherited-marker"), "{out}");
    drop(file);
}
