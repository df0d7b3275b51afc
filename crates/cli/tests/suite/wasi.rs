//! `warren exec --tier wasi` with a real C program: `fixtures/wasm/probe.c`, compiled by
//! `zig cc --target=wasm32-wasi` (zig from PyPI's `ziglang`; `.ci/run` installs it and sets
//! `WARREN_TEST_ZIG`), so every call goes through wasi-libc as real programs' do. The same
//! probes as the process tier's: paths, `..`, symlinks, special files, time, memory, output,
//! no network without the capability.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;
use warren_testkit::{TempDir, skip};

use super::{stderr, stdout, warren};

/// The probe module, compiled once per test process (None, after a skip, without zig).
fn probe() -> Option<PathBuf> {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = PROBE.get_or_init(|| {
        let zig = std::env::var_os("WARREN_TEST_ZIG")
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .ok_or_else(|| {
                "WARREN_TEST_ZIG (zig, from PyPI's ziglang) is not set; .ci/run installs it"
                    .to_string()
            })?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wasm/probe.c");
        let out = std::env::temp_dir().join(format!("warren-probe-{}.wasm", std::process::id()));
        let o = std::process::Command::new(&zig)
            .args(["cc", "--target=wasm32-wasi", "-Os", "-s", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(|e| format!("{}: {e}", zig.display()))?;
        assert!(
            o.status.success(),
            "zig cc failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(out)
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            skip(why);
            None
        }
    }
}

fn wasi(t: &TempDir, flags: &[&str], args: &[&str]) -> Output {
    let p = probe().expect("probe");
    let mut a: Vec<&str> = vec!["exec", "--tier", "wasi"];
    a.extend_from_slice(flags);
    a.push("--");
    let ps = p.to_str().expect("utf8");
    a.push(ps);
    a.extend_from_slice(args);
    warren(&t.path().join("state"), &a)
}

fn project(t: &TempDir) -> PathBuf {
    let ws = t.path().join("project");
    std::fs::create_dir_all(ws.join("src")).expect("mkdir");
    std::fs::write(ws.join("README"), "a project\n").expect("write");
    std::fs::write(ws.join("src/old.txt"), "old\n").expect("write");
    ws
}

#[test]
fn a_c_program_sees_a_live_namespace_and_nothing_else() {
    if probe().is_none() {
        return;
    }
    let t = TempDir::new("wasi-ns");
    let ws = project(&t);
    let w = ws.to_str().expect("utf8");
    let o = wasi(&t, &["--workspace", w], &["ls", "/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "tmp\nworkspace\n");
    let o = wasi(&t, &["--workspace", w], &["cat", "/workspace/README"]);
    assert_eq!(stdout(&o), "a project\n");
    let o = wasi(&t, &[], &["roundtrip", "/tmp/x", "live"]);
    assert_eq!(stdout(&o), "read back: live\n", "{}", stderr(&o));
    // Exactly the environment given.
    let o = wasi(&t, &["--env", "ONLY=this"], &["env"]);
    assert_eq!(stdout(&o), "ONLY=this\n");
    // Exit codes pass through.
    assert_eq!(wasi(&t, &[], &["exit", "7"]).status.code(), Some(7));
}

#[test]
fn attack_wasi_paths_links_and_special_files_stay_inside() {
    if probe().is_none() {
        return;
    }
    let t = TempDir::new("wasi-escape");
    let ws = project(&t);
    std::os::unix::fs::symlink("/etc/passwd", ws.join("passwd")).expect("link");
    std::os::unix::fs::symlink("/", ws.join("root")).expect("link");
    let fifo = std::ffi::CString::new(ws.join("fifo").to_str().expect("utf8")).expect("c");
    // SAFETY: mkfifo reads a NUL-terminated path that lives through the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let w = ws.to_str().expect("utf8");
    let cat = |path: &str| stdout(&wasi(&t, &["--workspace", w, "--ro"], &["cat", path]));
    // wasi-libc resolves `..` against the preopen: the host refuses to climb above it.
    assert!(
        cat("/workspace/../../../etc/passwd").starts_with("errno 76"),
        "ENOTCAPABLE"
    );
    // Host paths are not in the namespace at all.
    for p in ["/etc/passwd", "/proc/self/environ", "/workspace2/README"] {
        assert!(cat(p).starts_with("errno 44"), "{p}: ENOENT");
    }
    // Links planted in the workspace are not followed; a FIFO is refused without blocking.
    for p in [
        "/workspace/passwd",
        "/workspace/root/etc/passwd",
        "/workspace/fifo",
    ] {
        assert!(
            cat(p).starts_with("errno 2 "),
            "{p}: EACCES, got {}",
            cat(p)
        );
    }
    // No links can be made, and a read-only workspace takes no writes.
    let o = wasi(
        &t,
        &["--workspace", w, "--ro"],
        &["symlink", "/etc/passwd", "/workspace/l"],
    );
    assert!(
        stdout(&o).starts_with("errno 58"),
        "ENOTSUP: {}",
        stdout(&o)
    );
    let o = wasi(
        &t,
        &["--workspace", w, "--ro"],
        &["write", "/workspace/new", "x"],
    );
    assert!(stdout(&o).starts_with("errno 2 "), "{}", stdout(&o));
    assert!(!ws.join("new").exists() && !ws.join("l").exists());
}

#[test]
fn a_cow_workspace_keeps_changes_for_diff_and_apply() {
    if probe().is_none() {
        return;
    }
    let t = TempDir::new("wasi-cow");
    let ws = project(&t);
    let w = ws.to_str().expect("utf8");
    let state = t.path().join("state");
    let o = wasi(
        &t,
        &["--workspace", w, "--json"],
        &["write", "/workspace/src/new.txt", "new\n"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["changes_kept"], true);
    let id = v["cell"].as_str().expect("id").to_owned();
    assert!(
        !ws.join("src/new.txt").exists(),
        "the project is untouched until apply"
    );
    let o = warren(&state, &["diff", &id]);
    assert!(stdout(&o).contains("+new"), "{}", stdout(&o));
    let o = warren(&state, &["apply", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ws.join("src/new.txt")).expect("applied"),
        "new\n"
    );
    // A removal is kept as a whiteout (root: mknod) and applied as a deletion.
    if warren_testkit::require_root("a whiteout is a 0/0 device") {
        let o = wasi(
            &t,
            &["--workspace", w, "--json"],
            &["rm", "/workspace/src/old.txt"],
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["changes"][0]["change"], "deleted", "{v}");
        let id = v["cell"].as_str().expect("id").to_owned();
        assert!(ws.join("src/old.txt").exists());
        assert_eq!(warren(&state, &["apply", &id]).status.code(), Some(0));
        assert!(!ws.join("src/old.txt").exists());
    }
}

#[test]
fn wasi_limits_stop_time_memory_and_output() {
    if probe().is_none() {
        return;
    }
    let t = TempDir::new("wasi-limits");
    let o = wasi(&t, &["--timeout", "300ms"], &["spin"]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("timeout"));
    let o = wasi(&t, &["--memory", "16M"], &["alloc", "100"]);
    assert_eq!(o.status.code(), Some(123), "{}", stderr(&o));
    assert!(stderr(&o).contains("memory limit"));
    let o = wasi(&t, &["--memory", "64M"], &["alloc", "10"]);
    assert_eq!(stdout(&o), "allocated 10 MiB\n");
    let o = wasi(&t, &["--output-limit", "1K", "--json"], &["spew", "1000"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["stdout"].as_str().expect("out").len(), 1024);
    assert_eq!(v["stdout_truncated"], true);
}

#[test]
fn attack_no_network_without_the_capability() {
    if probe().is_none() {
        return;
    }
    let t = TempDir::new("wasi-net");
    // No --net: there is no /cap/http at all.
    let o = wasi(&t, &[], &["http", "http://example.com/"]);
    assert!(stdout(&o).starts_with("errno 44"), "{}", stdout(&o));
    // With --net, a destination outside it is refused by the policy and reported.
    let o = wasi(
        &t,
        &["--net", "api.example.com"],
        &["http", "http://other.example.com/"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("a JSON answer");
    assert_eq!(v["status"], 0, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(
        stderr(&o).contains("/cap/http: GET other.example.com:80 refused"),
        "{}",
        stderr(&o)
    );
    // The same grant mounts /cap/ws beside it, and nothing else.
    let o = wasi(&t, &["--net", "api.example.com"], &["ls", "/cap"]);
    assert_eq!(stdout(&o), "http\nws\n");
    // --nostr mounts the signing identity; its key stays in the state directory.
    let o = wasi(&t, &["--nostr"], &["ls", "/cap/nostr"]);
    assert_eq!(
        stdout(&o),
        "README\npubkey\npublish\nsign\n",
        "{}",
        stderr(&o)
    );
    let key = std::fs::read_to_string(t.path().join("state/nostr/identity.key")).expect("key");
    let o = wasi(&t, &["--nostr"], &["cat", "/cap/nostr/pubkey"]);
    assert_eq!(stdout(&o).trim().len(), 64);
    assert!(!stdout(&o).contains(key.trim()));
}

#[test]
fn wasi_refuses_what_it_cannot_honour_and_names_bad_modules() {
    let t = TempDir::new("wasi-refuse");
    let state = t.path().join("state");
    let o = warren(
        &state,
        &["exec", "--tier", "wasi", "--pids", "4", "--", "x.wasm"],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("--pids has no meaning in the wasi tier"),
        "{}",
        stderr(&o)
    );
    let o = warren(&state, &["exec", "--net", "example.com", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let o = warren(&state, &["exec", "--tier", "wasi", "--", "missing.wasm"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    let junk = t.path().join("junk.wasm");
    std::fs::write(&junk, "not a module").expect("write");
    let o = warren(
        &state,
        &["exec", "--tier", "wasi", "--", junk.to_str().expect("utf8")],
    );
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    // A module in the text format runs as it is.
    let wat = t.path().join("seven.wat");
    std::fs::write(
        &wat,
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
           (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 7))))"#,
    )
    .expect("write");
    let o = warren(
        &state,
        &["exec", "--tier", "wasi", "--", wat.to_str().expect("utf8")],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
}

#[test]
fn a_wasi_agent_of_the_daemon_runs_its_c_program_over_the_tasks_namespace() {
    use super::daemon::{DaemonProc, deploy, reply, tool_output, tool_results, warren_at};
    use serde_json::json;
    use warren_testkit::mockllm::MockLlm;
    let Some(module) = probe() else {
        return;
    };
    let t = TempDir::new("wasi-agent");
    let state = t.path().join("state");
    let ws = project(&t);
    let manifest = format!(
        "name: wasm-agent
description: works with a C program compiled to WebAssembly
provider: openai
model: mock-model
tier: wasi
tools: [probe, read_file, finish]
modules:
  probe: {{path: {}, description: 'ls, cat, write FILE TEXT, exit N'}}
",
        module.display()
    );
    deploy(&state, &manifest);
    let calls: Vec<(&str, serde_json::Value)> = vec![
        ("probe", json!({"args": ["ls", "/"]})),
        (
            "probe",
            json!({"args": ["write", "/workspace/hello.txt", "from C"]}),
        ),
        ("read_file", json!({"path": "hello.txt"})),
        ("probe", json!({"args": ["cat", "/etc/passwd"]})),
    ];
    let n_calls = calls.len();
    let mock = MockLlm::start_responder(move |b| {
        let n = tool_results(b);
        match calls.get(n) {
            Some((tool, args)) => reply(vec![(&format!("c{n}"), tool, args.clone())]),
            None => reply(vec![("f", "finish", json!({"summary": "done"}))]),
        }
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "wasm-agent", "goal": "write hello", "workspace": ws})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, std::time::Duration::from_secs(90));
    assert_eq!(done["state"], "succeeded", "{done}");
    let reqs = mock.requests();
    let out = |n: usize| tool_output(&reqs, &format!("c{n}"));
    assert!(n_calls == 4);
    // Its world is the task's namespace: nothing of the host's.
    let ls = out(0);
    for want in ["logs", "task", "tmp", "workspace"] {
        assert!(ls.contains(want), "{ls}");
    }
    assert!(!ls.contains("etc") && !ls.contains("usr"), "{ls}");
    assert!(out(2).contains("from C"), "{}", out(2));
    assert!(!out(3).contains("root:"), "{}", out(3));
    // The change is the task's, reviewed like the process tier's; the project is untouched.
    assert!(!ws.join("hello.txt").exists());
    let diff = stdout(&warren_at(&state, &["task", "diff", &id]));
    assert!(
        diff.contains("hello.txt") && diff.contains("+from C"),
        "{diff}"
    );
}
