//! The WASI tier's speed: instantiation, the epoch deadline's lateness, a live `/cap/http`
//! exchange, and a whole `warren exec --tier wasi` command — each beside a peer measured in the
//! same run.
//!
//! `cargo bench -p warren-runtime --bench wasi [-- --runs N --module FILE.wasm
//!  --py PYTHON --wasmtime WASMTIME_CLI --warren WARREN]`
//!
//! Peers: wasmtime's own Python embedding (PyPI `wasmtime`, its C API with the default
//! on-demand allocator) instantiating the same module in a fresh store, when `--py` names a
//! Python that has it; the wasmtime CLI running the same module, when `--wasmtime` names it;
//! the host calling `warren_egress::fetch` directly for the `/cap/http` round trip.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_egress::{Config, FetchRequest, Policy, RecordingAudit};
use warren_ns::MountTable;
use warren_testkit::bench::{arg, pct};
use warren_wasi::{Invocation, Runtime, RuntimeConfig, Status, probe};

fn sarg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn origin() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
                );
            });
        }
    });
    addr
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = arg("--runs", 2000);
    let (bytes, label, argv): (Vec<u8>, String, Vec<String>) = match sarg("--module") {
        Some(f) => (
            std::fs::read(&f).unwrap(),
            f.clone(),
            vec![f, "exit".into(), "0".into()],
        ),
        None => (
            probe::module("(call $proc_exit (i32.const 0))", &[]).into_bytes(),
            "a WAT probe that exits 0".into(),
            vec!["probe".into()],
        ),
    };
    println!(
        "WASI tier benchmark, module: {label} ({} bytes)",
        bytes.len()
    );

    // Compile, and the cached path a second process takes.
    let cache = std::env::temp_dir().join(format!("warren-bench-wasi-{}", std::process::id()));
    let cfg = RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(cfg.clone()).unwrap();
    let t = Instant::now();
    let p = rt.load(&bytes).unwrap();
    let compile = t.elapsed();
    let rt2 = Runtime::new(cfg).unwrap();
    let t = Instant::now();
    let _p2 = rt2.load(&bytes).unwrap();
    let from_cache = t.elapsed();
    drop(rt2);
    let _ = std::fs::remove_dir_all(&cache);
    println!(
        "load: compile {:.1} ms; from the on-disk cache (a new process) {:.2} ms",
        compile.as_secs_f64() * 1e3,
        from_cache.as_secs_f64() * 1e3
    );

    // Instantiate and whole runs, in process.
    let ns = Arc::new(MountTable::new());
    let mut inst = Vec::with_capacity(runs);
    let mut whole = Vec::with_capacity(runs);
    for _ in 0..runs {
        let o = rt.run(&p, Invocation::new(argv.clone(), ns.clone()));
        assert_eq!(
            o.status,
            Status::Exited(0),
            "{:?}",
            String::from_utf8_lossy(&o.stderr)
        );
        inst.push(o.instantiate);
        whole.push(o.elapsed);
    }
    let (i50, i99) = pct(inst);
    let (w50, w99) = pct(whole);
    println!(
        "warren, in process ({runs} runs): instantiate p50 {} p99 {}; instantiate+_start+teardown p50 {} p99 {}",
        ms(i50),
        ms(i99),
        ms(w50),
        ms(w99)
    );

    // The same module in wasmtime's Python embedding (default configuration).
    let module_path =
        std::env::temp_dir().join(format!("warren-bench-{}.wasm", std::process::id()));
    let binary = wat_or_wasm(&bytes);
    std::fs::write(&module_path, &binary).unwrap();
    if let Some(py) = sarg("--py") {
        let script = format!(
            r#"
import time, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, {path:?})
linker = wasmtime.Linker(engine)
linker.define_wasi()
inst, whole = [], []
for _ in range({runs}):
    t0 = time.perf_counter()
    store = wasmtime.Store(engine)
    cfg = wasmtime.WasiConfig()
    cfg.argv = {argv:?}
    store.set_wasi(cfg)
    t1 = time.perf_counter()
    i = linker.instantiate(store, module)
    t2 = time.perf_counter()
    try:
        i.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        assert e.code == 0
    del i, store
    t3 = time.perf_counter()
    inst.append((t2 - t1) * 1e6); whole.append((t3 - t0) * 1e6)
inst.sort(); whole.sort()
p = lambda v, q: v[min(int(len(v) * q), len(v) - 1)]
print(p(inst, .5), p(inst, .99), p(whole, .5), p(whole, .99))
"#,
            path = module_path.display().to_string(),
        );
        match Command::new(&py).arg("-c").arg(&script).output() {
            Ok(o) if o.status.success() => {
                let v: Vec<f64> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if v.len() == 4 {
                    println!(
                        "peer: wasmtime-py (C API, default allocator) ({runs} runs): instantiate p50 {} p99 {}; whole p50 {} p99 {}",
                        ms(v[0]),
                        ms(v[1]),
                        ms(v[2]),
                        ms(v[3])
                    );
                    println!(
                        "ratio instantiate p50, warren / wasmtime-py: {:.2}",
                        i50 / v[0]
                    );
                }
            }
            Ok(o) => println!(
                "peer wasmtime-py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => println!("peer wasmtime-py: {py}: {e}"),
        }
    } else {
        println!("peer wasmtime-py: not measured (pass --py PYTHON with PyPI's wasmtime)");
    }

    // The epoch deadline: how late a `loop {}` stops after its timeout.
    let spin = rt
        .load(probe::module("(loop $l (br $l))", &[]).as_bytes())
        .unwrap();
    let mut late = Vec::new();
    for _ in 0..40 {
        let mut inv = Invocation::new(vec![], ns.clone());
        inv.limits.timeout = Duration::from_millis(50);
        let o = rt.run(&spin, inv);
        assert_eq!(o.status, Status::TimedOut);
        late.push(o.elapsed.saturating_sub(Duration::from_millis(50)));
    }
    let max = late.iter().max().copied().unwrap_or_default();
    let (l50, l99) = pct(late);
    println!(
        "epoch kill: a loop {{}} with a 50 ms timeout stops p50 {} p99 {} max {} after it (tick {:?})",
        ms(l50),
        ms(l99),
        ms(max.as_secs_f64() * 1e6),
        warren_wasi::TICK
    );

    // /cap/http: one exchange from a module vs the host's own fetch of the same URL.
    let server = origin();
    let mut config = Config::new(Policy::parse(&["api.test:80".to_string()]).unwrap());
    let public: IpAddr = "203.0.113.20".parse().unwrap();
    config
        .resolve_override
        .insert("api.test".into(), vec![public]);
    config.dial_override.insert(public, server);
    let config = Arc::new(config);
    let audit = Arc::new(RecordingAudit::new());
    let svc = warren_runtime::caphttp::service(config.clone(), audit.clone()).unwrap();
    let mut capns = MountTable::new();
    capns.mount("/cap/http", Arc::new(svc)).unwrap();
    let capns = Arc::new(capns);
    let ex = rt
        .load(probe::exchange("/cap/http/request", r#"{"url": "http://api.test/"}"#).as_bytes())
        .unwrap();
    let n = 300;
    let mut via = Vec::new();
    for _ in 0..n {
        let o = rt.run(&ex, Invocation::new(vec![], capns.clone()));
        assert!(String::from_utf8_lossy(&o.stdout).contains("pong"));
        via.push(o.elapsed);
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut direct = Vec::new();
    let req = FetchRequest::get("http://api.test/");
    for _ in 0..n {
        let t = Instant::now();
        let r = tokio.block_on(warren_egress::fetch(&config, audit.as_ref(), &req));
        assert_eq!(r.status, 200);
        direct.push(t.elapsed());
    }
    let (v50, v99) = pct(via);
    let (d50, d99) = pct(direct);
    println!(
        "/cap/http round trip ({n}): from a module (whole run) p50 {} p99 {}; the host's fetch alone p50 {} p99 {}; ratio p50 {:.2}",
        ms(v50),
        ms(v99),
        ms(d50),
        ms(d99),
        v50 / d50
    );

    // Whole commands: `warren exec --tier wasi` vs the wasmtime CLI, same module.
    let cmd_runs = arg("--cmd-runs", 50);
    let time_cmd = |c: &mut dyn FnMut() -> Command| -> Option<(f64, f64)> {
        let mut v = Vec::new();
        for _ in 0..cmd_runs {
            let t = Instant::now();
            let o = c().output().ok()?;
            if !o.status.success() {
                println!("  failed: {}", String::from_utf8_lossy(&o.stderr));
                return None;
            }
            v.push(t.elapsed());
        }
        Some(pct(v))
    };
    let state =
        std::env::temp_dir().join(format!("warren-bench-wasi-state-{}", std::process::id()));
    let warren = sarg("--warren").map(PathBuf::from).filter(|p| p.exists());
    let ours = warren.as_ref().and_then(|w| {
        let mut args = vec![
            "exec".to_string(),
            "--tier".into(),
            "wasi".into(),
            "--".into(),
        ];
        args.push(module_path.display().to_string());
        args.extend(argv.iter().skip(1).cloned());
        time_cmd(&mut || {
            let mut c = Command::new(w);
            c.args(&args).env("WARREN_STATE_DIR", &state);
            c
        })
    });
    let peer = sarg("--wasmtime").and_then(|wt| {
        let mut args = vec!["run".to_string(), module_path.display().to_string()];
        args.extend(argv.iter().skip(1).cloned());
        time_cmd(&mut || {
            let mut c = Command::new(&wt);
            c.args(&args);
            c
        })
    });
    match (ours, peer) {
        (Some((o50, o99)), Some((p50, p99))) => println!(
            "whole command ({cmd_runs} each): warren exec --tier wasi p50 {} p99 {}; wasmtime run p50 {} p99 {}; ratio p50 {:.2}",
            ms(o50),
            ms(o99),
            ms(p50),
            ms(p99),
            o50 / p50
        ),
        (o, p) => println!(
            "whole command: warren {:?}, wasmtime CLI {:?} (pass --warren and --wasmtime to compare)",
            o, p
        ),
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&module_path);
}

/// The module as a binary (a peer may not take the text format).
fn wat_or_wasm(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(b"\0asm") {
        bytes.to_vec()
    } else {
        wat_to_wasm(bytes)
    }
}

fn wat_to_wasm(bytes: &[u8]) -> Vec<u8> {
    wat::parse_bytes(bytes).unwrap().into_owned()
}
