//! The WASI tier's suites: what a module can reach (escape probes), what stops it (limits),
//! what it may not use (ambient authority), the live namespace, and the module cache.
//!
//! Modules are written in WebAssembly text here, so the tests need no wasm toolchain: each
//! probe's exit code is the errno (or value) it observed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren_ns::dir::DirFs;
use warren_ns::func::FuncFs;
use warren_ns::map::MapFs;
use warren_ns::mem::MemFs;
use warren_ns::{FileService, MountTable};
use warren_wasi::probe::{exchange, module, s};
use warren_wasi::{Invocation, Outcome, Policy, Runtime, RuntimeConfig, Status, WasiError};

const ENOENT: i32 = 44;
const ENOTCAPABLE: i32 = 76;
const ENOTSUP: i32 = 58;
const EFAULT: i32 = 21;
const EMFILE: i32 = 33;
const EACCES: i32 = 2;

const READ: i64 = 2;
const WRITE: i64 = 64;

fn rt() -> Runtime {
    Runtime::new(RuntimeConfig {
        slots: 8,
        max_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "warren-wasi-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

/// A namespace like a task's: a host workspace (read-only, or copy-on-write into `upper`),
/// `/task`, `/tmp` in memory.
fn ns_with(workspace: &std::path::Path, upper: Option<&std::path::Path>) -> MountTable {
    let mut ns = MountTable::new();
    let lower: Arc<dyn FileService> = Arc::new(DirFs::new(
        warren_fsx::Dir::open(workspace).expect("ws"),
        false,
        1 << 20,
    ));
    let ws: Arc<dyn FileService> = match upper {
        Some(u) => Arc::new(warren_ns::cow::CowFs::new(
            lower,
            Arc::new(DirFs::new(
                warren_fsx::Dir::open(u).expect("upper"),
                true,
                1 << 20,
            )),
            1 << 20,
        )),
        None => lower,
    };
    ns.mount("/workspace", ws).expect("mount");
    ns.mount(
        "/task",
        Arc::new(MapFs::new().with("/goal", "probe").expect("map")),
    )
    .expect("mount");
    ns.mount("/tmp", Arc::new(MemFs::new(1 << 20)))
        .expect("mount");
    ns
}

fn run(rt: &Runtime, wat: &str, ns: MountTable, f: impl FnOnce(&mut Invocation)) -> Outcome {
    let p = rt.load(wat.as_bytes()).expect("load");
    let mut inv = Invocation::new(vec!["probe".into()], Arc::new(ns));
    inv.limits.timeout = Duration::from_secs(20);
    f(&mut inv);
    rt.run(&p, inv)
}

fn exit_of(o: &Outcome) -> i32 {
    match &o.status {
        Status::Exited(c) => *c,
        s => panic!(
            "expected an exit, got {s:?} (stderr {:?})",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// The errno of opening `path` (relative to the `/` preopen) with `rights`.
fn open_errno(rt: &Runtime, ns: MountTable, path: &str, oflags: i32, rights: i64) -> i32 {
    let d = [path];
    let body = format!(
        "(call $proc_exit (call $open (i32.const 3) {} (i32.const {oflags}) (i64.const {rights})))",
        s(0, &d)
    );
    exit_of(&run(rt, &module(&body, &d), ns, |_| {}))
}

#[test]
fn hello_world_reaches_stdout() {
    let rt = rt();
    let d = ["hello from wasm\n"];
    let body = format!("(call $check (call $write (i32.const 1) {}))", s(0, &d));
    let o = run(&rt, &module(&body, &d), MountTable::new(), |_| {});
    assert_eq!(o.status, Status::Exited(0));
    assert_eq!(o.stdout, b"hello from wasm\n");
}

#[test]
fn attack_paths_cannot_leave_the_namespace() {
    let rt = rt();
    let ws = tmpdir("escape");
    std::fs::write(ws.join("inside"), "in").expect("w");
    std::os::unix::fs::symlink("/etc/passwd", ws.join("link")).expect("link");
    std::os::unix::fs::symlink("..", ws.join("up")).expect("link");
    let fifo = std::ffi::CString::new(ws.join("fifo").to_str().expect("utf8")).expect("c");
    // SAFETY: mkfifo reads a NUL-terminated path that lives through the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let ns = || ns_with(&ws, None);
    // `..` above the preopen, and absolute paths: refused as WASI does (not clamped).
    assert_eq!(open_errno(&rt, ns(), "../etc/passwd", 0, READ), ENOTCAPABLE);
    assert_eq!(
        open_errno(&rt, ns(), "workspace/../../etc/passwd", 0, READ),
        ENOTCAPABLE
    );
    assert_eq!(open_errno(&rt, ns(), "/etc/passwd", 0, READ), ENOTCAPABLE);
    // Inside the namespace but not mounted: nothing is there.
    assert_eq!(open_errno(&rt, ns(), "etc/passwd", 0, READ), ENOENT);
    // Whole components: /workspace2 is not under /workspace.
    assert_eq!(open_errno(&rt, ns(), "workspace2/inside", 0, READ), ENOENT);
    assert_eq!(open_errno(&rt, ns(), "workspace/inside", 0, READ), 0);
    // A host symlink inside the workspace is never followed, to a file or to `..`.
    assert_eq!(open_errno(&rt, ns(), "workspace/link", 0, READ), EACCES);
    assert_eq!(
        open_errno(&rt, ns(), "workspace/up/etc/passwd", 0, READ),
        EACCES
    );
    // A FIFO is refused by kind, without blocking on it.
    assert_eq!(open_errno(&rt, ns(), "workspace/fifo", 0, READ), EACCES);
    // A read-only workspace refuses writes and creation.
    assert_eq!(open_errno(&rt, ns(), "workspace/inside", 0, WRITE), EACCES);
    assert_eq!(open_errno(&rt, ns(), "workspace/new", 1, WRITE), EACCES);
    assert!(!ws.join("new").exists());
    let _ = std::fs::remove_dir_all(&ws);
}

#[test]
fn attack_a_directory_descriptor_confines_relative_paths_to_itself() {
    let rt = rt();
    let ws = tmpdir("dirfd");
    std::fs::create_dir(ws.join("sub")).expect("mkdir");
    std::fs::write(ws.join("top"), "t").expect("w");
    let d = ["workspace/sub", "../top", "."];
    // Open the subdirectory, then `../top` from it: above the descriptor, so refused even
    // though the target is inside the namespace.
    let body = format!(
        "(call $check (call $open (i32.const 3) {} (i32.const 2) (i64.const 2)))
         (call $proc_exit (call $open (i32.load (i32.const 16)) {} (i32.const 0) (i64.const 2)))",
        s(0, &d),
        s(1, &d)
    );
    assert_eq!(
        exit_of(&run(&rt, &module(&body, &d), ns_with(&ws, None), |_| {})),
        ENOTCAPABLE
    );
    let _ = std::fs::remove_dir_all(&ws);
}

#[test]
fn attack_links_cannot_be_made() {
    let rt = rt();
    let d = ["/etc/passwd", "tmp/l"];
    let body = format!(
        "(call $proc_exit (call $path_symlink {} (i32.const 3) {}))",
        s(0, &d),
        s(1, &d)
    );
    let ws = tmpdir("ln");
    assert_eq!(
        exit_of(&run(&rt, &module(&body, &d), ns_with(&ws, None), |_| {})),
        ENOTSUP
    );
    let _ = std::fs::remove_dir_all(&ws);
}

#[test]
fn attack_pointers_outside_memory_are_efault_not_a_crash() {
    let rt = rt();
    // An iovec that points past the 64 KiB memory, and one whose length wraps.
    for (ptr, len) in [(65_000, 1000), (16, -1)] {
        let body = format!(
            "(call $proc_exit (call $write (i32.const 1) (i32.const {ptr}) (i32.const {len})))"
        );
        let o = run(&rt, &module(&body, &[]), MountTable::new(), |_| {});
        assert_eq!(exit_of(&o), EFAULT, "ptr {ptr} len {len}");
    }
    // A path whose pointer is out of range.
    let body = "(call $proc_exit (call $open (i32.const 3) (i32.const 70000) (i32.const 4) (i32.const 0) (i64.const 2)))";
    assert_eq!(
        exit_of(&run(&rt, &module(body, &[]), MountTable::new(), |_| {})),
        EFAULT
    );
}

#[test]
fn descriptors_are_bounded() {
    let rt = rt();
    let ws = tmpdir("fds");
    std::fs::write(ws.join("f"), "x").expect("w");
    let d = ["workspace/f"];
    let body = format!(
        "(loop $l (call $check (call $open (i32.const 3) {} (i32.const 0) (i64.const 2))) (br $l))",
        s(0, &d)
    );
    let o = run(&rt, &module(&body, &d), ns_with(&ws, None), |i| {
        i.limits.fds = 16
    });
    assert_eq!(exit_of(&o), EMFILE);
    let _ = std::fs::remove_dir_all(&ws);
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline() {
    let rt = rt();
    let body = "(loop $l (br $l))";
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.timeout = Duration::from_millis(200)
    });
    assert_eq!(o.status, Status::TimedOut);
    assert_eq!(o.status.code(), 124);
    assert!(o.elapsed >= Duration::from_millis(200), "{:?}", o.elapsed);
}

#[test]
fn a_sleep_past_the_deadline_is_stopped_at_it() {
    let rt = rt();
    // poll_oneoff with one relative clock subscription of 60 s.
    let body = "
      (i64.store (i32.const 256) (i64.const 7))
      (i32.store8 (i32.const 264) (i32.const 0))
      (i32.store (i32.const 272) (i32.const 1))
      (i64.store (i32.const 280) (i64.const 60000000000))
      (call $check (call $poll_oneoff (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 8)))";
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.timeout = Duration::from_millis(300)
    });
    assert_eq!(o.status, Status::TimedOut);
    // A short sleep is a sleep.
    let short = body.replace("60000000000", "1000000");
    assert_eq!(
        run(&rt, &module(&short, &[]), MountTable::new(), |_| {}).status,
        Status::Exited(0)
    );
}

#[test]
fn memory_growth_past_the_limit_is_reported_like_an_oom() {
    let rt = rt();
    // Grow by 64 pages (4 MiB) with a 1 MiB limit; a module that ignores -1 would go on.
    let body = "(drop (memory.grow (i32.const 64))) (call $proc_exit (i32.const 0))";
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.memory = 1 << 20
    });
    match &o.status {
        Status::MemoryLimit(m) => assert!(m.contains("memory limit"), "{m}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(o.status.code(), 123);
    // Within the limit it grows.
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.memory = 8 << 20
    });
    assert_eq!(o.status, Status::Exited(0));
    // A module whose initial memory is already past the limit does not start.
    let big = module("", &[]).replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 100)",
    );
    let o = run(&rt, &big, MountTable::new(), |i| i.limits.memory = 1 << 20);
    assert!(matches!(o.status, Status::MemoryLimit(_)), "{:?}", o.status);
}

#[test]
fn table_growth_past_the_limit_is_stopped() {
    let rt = rt();
    let body =
        "(drop (table.grow (ref.null func) (i32.const 5000))) (call $proc_exit (i32.const 0))";
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.table_elements = 1000
    });
    assert!(
        matches!(o.status, Status::MemoryLimit(ref m) if m.contains("table")),
        "{:?}",
        o.status
    );
}

#[test]
fn output_past_the_cap_is_dropped_and_counted() {
    let rt = rt();
    // 64 writes of 4 KiB (256 KiB) with a 100 000-byte cap.
    let body = "(local $i i32)
      (loop $l
        (call $check (call $write (i32.const 1) (i32.const 8192) (i32.const 4096)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 64))))";
    let o = run(&rt, &module(body, &[]), MountTable::new(), |i| {
        i.limits.output = 100_000
    });
    assert_eq!(o.status, Status::Exited(0));
    assert_eq!(o.stdout.len(), 100_000);
    assert_eq!(o.stdout_dropped, 64 * 4096 - 100_000);
}

#[test]
fn no_ambient_authority_unless_the_policy_allows_it() {
    let rt = rt();
    let clock =
        "(call $proc_exit (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 64)))";
    let random = "(call $proc_exit (call $random_get (i32.const 64) (i32.const 32)))";
    let sock = "(call $proc_exit (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 64)))";
    let env = "(call $check (call $environ_sizes_get (i32.const 64) (i32.const 68)))
               (call $proc_exit (i32.load (i32.const 64)))";
    let code = |body: &str, policy: Policy| {
        exit_of(&run(&rt, &module(body, &[]), MountTable::new(), |i| {
            i.policy = policy;
            i.env = vec![("ONLY".into(), "this".into())];
        }))
    };
    let none = Policy::default();
    let all = Policy {
        clock: true,
        random: true,
    };
    assert_eq!(code(clock, none), ENOTCAPABLE);
    assert_eq!(code(clock, all), 0);
    assert_eq!(code(random, none), ENOTCAPABLE);
    assert_eq!(code(random, all), 0);
    assert_eq!(code(sock, all), ENOTCAPABLE);
    // Exactly the environment given: the host's (PATH, HOME, …) is not there.
    assert_eq!(code(env, all), 1);
}

#[test]
fn files_are_live_in_tmp_and_a_cow_workspace_keeps_the_lower_layer() {
    let rt = rt();
    let ws = tmpdir("cow-ws");
    let upper = tmpdir("cow-up");
    std::fs::write(ws.join("file"), "original").expect("w");
    let d = ["workspace/file", "changed", "tmp/scratch"];
    // Write the workspace file (copied up), write /tmp/scratch, read it back to stdout.
    let body = format!(
        "(call $check (call $open (i32.const 3) {ws_file} (i32.const 8) (i64.const 66)))
         (call $check (call $write (i32.load (i32.const 16)) {changed}))
         (call $check (call $open (i32.const 3) {scratch} (i32.const 1) (i64.const 66)))
         (call $check (call $write (i32.load (i32.const 16)) {changed}))
         (call $check (call $fd_seek (i32.load (i32.const 16)) (i64.const 0) (i32.const 0) (i32.const 32)))
         (call $check (call $read (i32.load (i32.const 16))))
         (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 8))))",
        ws_file = s(0, &d),
        changed = s(1, &d),
        scratch = s(2, &d)
    );
    let ns = Arc::new(ns_with(&ws, Some(&upper)));
    let p = rt.load(module(&body, &d).as_bytes()).expect("load");
    let mut inv = Invocation::new(vec!["probe".into()], ns.clone());
    inv.limits.timeout = Duration::from_secs(20);
    let o = rt.run(&p, inv);
    assert_eq!(
        o.status,
        Status::Exited(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout, b"changed");
    // The change is in the upper layer; the project is untouched.
    assert_eq!(
        std::fs::read_to_string(upper.join("file")).expect("upper"),
        "changed"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("file")).expect("lower"),
        "original"
    );
    // The same namespace is live for the host after the run (nothing to copy out).
    assert_eq!(ns.read("/tmp/scratch", 100).expect("read"), b"changed");
    let _ = std::fs::remove_dir_all(&ws);
    let _ = std::fs::remove_dir_all(&upper);
}

#[test]
fn tmp_is_capped() {
    let rt = rt();
    let d = ["tmp/big"];
    let body = format!(
        "(local $i i32)
         (call $check (call $open (i32.const 3) {} (i32.const 1) (i64.const 64)))
         (loop $l
           (call $check (call $write (i32.load (i32.const 16)) (i32.const 8192) (i32.const 4096)))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))",
        s(0, &d)
    );
    let mut ns = MountTable::new();
    ns.mount("/tmp", Arc::new(MemFs::new(64 << 10)))
        .expect("mount");
    assert_eq!(
        exit_of(&run(&rt, &module(&body, &d), ns, |_| {})),
        51,
        "ENOSPC"
    );
}

#[test]
fn a_capability_file_is_answered_within_the_call() {
    let rt = rt();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (calls.clone(), seen.clone());
    let svc = FuncFs::new()
        .request("request", 4096, move |req| {
            c2.fetch_add(1, Ordering::SeqCst);
            s2.lock().expect("lock").push(req.to_vec());
            Ok([b"answer to ".as_slice(), req].concat())
        })
        .expect("func");
    let mut ns = MountTable::new();
    ns.mount("/cap/http", Arc::new(svc)).expect("mount");
    let wat = exchange("/cap/http/request", "{\"url\":\"http://x/\"}");
    let o = run(&rt, &wat, ns, |_| {});
    assert_eq!(o.status, Status::Exited(0));
    assert_eq!(o.stdout, b"answer to {\"url\":\"http://x/\"}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.lock().expect("lock")[0], b"{\"url\":\"http://x/\"}");
}

#[test]
fn the_root_lists_only_the_mount_points() {
    let ns = ns_with(&tmpdir("list"), None);
    let names: Vec<String> = ns
        .list("/")
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["task", "tmp", "workspace"]);
    assert!(ns.stat("/etc").is_err());
}

#[test]
fn modules_are_compiled_once_and_cached_across_runtimes() {
    let dir = tmpdir("cache");
    let cfg = RuntimeConfig {
        cache_dir: Some(dir.clone()),
        slots: 2,
        max_memory: 16 << 20,
    };
    let wat = module("(call $proc_exit (i32.const 7))", &[]);
    {
        let rt = Runtime::new(cfg.clone()).expect("rt");
        let a = rt.load(wat.as_bytes()).expect("a");
        let b = rt.load(wat.as_bytes()).expect("b");
        assert!(Arc::ptr_eq(&a, &b), "one compile per content hash");
    }
    let files: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
    assert_eq!(files.len(), 1, "one precompiled module on disk");
    // A new runtime (another process, as far as the cache knows) runs it from disk.
    let rt = Runtime::new(cfg.clone()).expect("rt");
    let p = rt.load(wat.as_bytes()).expect("cached");
    let o = rt.run(&p, Invocation::new(vec![], Arc::new(MountTable::new())));
    assert_eq!(o.status, Status::Exited(7));
    // A corrupted cache file is detected and recompiled, never run.
    let path = files[0].path();
    let mut bytes = std::fs::read(&path).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt");
    let rt = Runtime::new(cfg).expect("rt");
    let p = rt.load(wat.as_bytes()).expect("recompiled");
    let o = rt.run(&p, Invocation::new(vec![], Arc::new(MountTable::new())));
    assert_eq!(o.status, Status::Exited(7));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_module_importing_what_the_host_lacks_is_refused_with_the_name() {
    let rt = rt();
    let wat = r#"(module (import "wasi_snapshot_preview1" "thread_spawn" (func (param i32) (result i32)))
                 (memory (export "memory") 1) (func (export "_start")))"#;
    match rt.load(wat.as_bytes()) {
        Err(WasiError::Module(m)) => assert!(m.contains("thread_spawn"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("linked a missing import"),
    }
    assert!(matches!(rt.load(b"not wasm"), Err(WasiError::Module(_))));
}

#[test]
fn many_runs_reuse_pool_slots() {
    let rt = rt();
    let p = rt
        .load(module("(call $proc_exit (i32.const 3))", &[]).as_bytes())
        .expect("load");
    for _ in 0..50 {
        let o = rt.run(&p, Invocation::new(vec![], Arc::new(MountTable::new())));
        assert_eq!(o.status, Status::Exited(3));
    }
}

#[test]
fn concurrent_runs_past_the_pool_fail_cleanly() {
    let rt = Arc::new(
        Runtime::new(RuntimeConfig {
            slots: 1,
            max_memory: 16 << 20,
            ..RuntimeConfig::default()
        })
        .expect("rt"),
    );
    let p = rt
        .load(module("(loop $l (br $l))", &[]).as_bytes())
        .expect("load");
    let r2 = rt.clone();
    let p2 = p.clone();
    let busy = std::thread::spawn(move || {
        let mut inv = Invocation::new(vec![], Arc::new(MountTable::new()));
        inv.limits.timeout = Duration::from_millis(800);
        r2.run(&p2, inv)
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut inv = Invocation::new(vec![], Arc::new(MountTable::new()));
    inv.limits.timeout = Duration::from_millis(100);
    let o = rt.run(&p, inv);
    assert!(
        matches!(o.status, Status::Trapped(ref m) if m.contains("limit") || m.contains("pool")),
        "{:?}",
        o.status
    );
    assert_eq!(busy.join().expect("join").status, Status::TimedOut);
}
