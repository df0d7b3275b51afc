//! Cell benchmarks: `cargo bench -p warren-cli --bench cell`.
//!
//! Prints, from one run on this machine:
//! 1. cold start of a cell running `/bin/true` end to end (namespaces, mounts, Landlock,
//!    seccomp, cgroup, exec, teardown) beside `bwrap --unshare-all --die-with-parent` with
//!    read-only binds of the same system directories, and the ratio of medians — both with
//!    the fork server a long-lived host (the daemon) uses; with the supervisor forked in
//!    process as `warren exec` does (`ProcessCell::start_in_process`: no second program); with
//!    one `execve` of the small `warren-jail` binary per cell (a threaded host), and of the
//!    whole CLI (`warren __jail`, as before `warren-jail` existed); and the one-shot command
//!    itself, `warren exec -- /bin/true`, process to process like `bwrap`. bwrap is measured
//!    before and after the warren rows; ratios use the mean of its two medians;
//! 2. exec into a warm cell: latency p50/p99 and throughput, sequential and concurrent;
//! 3. resident memory of an idle cell (supervisor + init) and the host-side bookkeeping per
//!    cell.
//!
//! Figures, not assertions: these machines are shared and noisy. Iteration counts can be
//! scaled with `WARREN_BENCH_SCALE` (e.g. 0.2 for a quick look).

#![allow(clippy::expect_used)] // a benchmark aborts loudly on failure

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_cell::cgroup::CgroupLimits;
use warren_cell::{Cell, CellSpec, Collect, ExecSpec, JailProgram, ProcessCell};

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("WARREN_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(5)
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Stats { samples }
    }
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i.min(self.samples.len() - 1)]
    }
    fn p50(&self) -> Duration {
        self.pct(0.5)
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<44} n={:<5} p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms",
            self.samples.len(),
            ms(self.p50()),
            ms(self.pct(0.9)),
            ms(self.pct(0.99))
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The supervisor `warren exec` executes: the dedicated `warren-jail` binary.
fn jail() -> JailProgram {
    JailProgram {
        program: env!("CARGO_BIN_EXE_warren-jail").into(),
        args: vec![],
        fork_server: false,
    }
}

/// The same through the whole CLI (`warren __jail`), as before the dedicated binary.
fn jail_in_cli() -> JailProgram {
    JailProgram {
        program: env!("CARGO_BIN_EXE_warren").into(),
        args: vec!["__jail".into()],
        fork_server: false,
    }
}

/// `warren exec -- /bin/true` as a user runs it: a process, end to end.
fn cold_cli(state: &std::path::Path, n: usize) -> Stats {
    let run = || {
        let s = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["exec", "--", "/bin/true"])
            .env("WARREN_STATE_DIR", state)
            .stdin(Stdio::null())
            .status()
            .expect("warren exec");
        assert!(s.success());
    };
    for _ in 0..5 {
        run();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        run();
        samples.push(t.elapsed());
    }
    Stats::new(samples)
}

fn true_spec() -> ExecSpec {
    ExecSpec {
        argv: vec!["/bin/true".into()],
        max_output_bytes: 1 << 16,
        ..Default::default()
    }
}

fn run_true(cell: &ProcessCell) {
    let o = cell
        .exec(&true_spec(), None, &mut Collect::default())
        .expect("exec");
    assert_eq!(o.exit.code, Some(0), "{o:?}");
}

/// Whole-cycle samples, plus per-phase samples (start-to-ready, first exec, teardown).
/// `in_process`: fork the supervisor here (`warren exec`'s path) instead of executing `jail`.
fn cold_warren(
    spec: &CellSpec,
    jail: &JailProgram,
    in_process: bool,
    n: usize,
) -> (Stats, [Stats; 3]) {
    let mut samples = Vec::with_capacity(n);
    let mut phases: [Vec<Duration>; 3] = Default::default();
    if in_process && !warren_cell::process::single_threaded() {
        println!("  (this process has threads: the in-process rows fall back to exec)");
    }
    for _ in 0..n {
        let t = Instant::now();
        let mut cell = if in_process {
            ProcessCell::start_in_process(spec, jail, warren_jail::main_in_process)
        } else {
            ProcessCell::start(spec, jail)
        }
        .expect("cell start");
        let t1 = Instant::now();
        run_true(&cell);
        let t2 = Instant::now();
        cell.kill();
        let t3 = Instant::now();
        samples.push(t3 - t);
        phases[0].push(t1 - t);
        phases[1].push(t2 - t1);
        phases[2].push(t3 - t2);
    }
    (Stats::new(samples), phases.map(Stats::new))
}

fn bwrap_args() -> Vec<String> {
    let mut a: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for dir in warren_cell::spec::SYSTEM_DIRS {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = std::fs::read_link(dir).expect("readlink");
                a.extend(["--symlink".into(), t.display().to_string(), dir.to_string()]);
            }
            Ok(m) if m.is_dir() => a.extend(["--ro-bind".into(), dir.to_string(), dir.to_string()]),
            _ => {}
        }
    }
    a.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "/bin/true",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

fn cold_bwrap(n: usize) -> Option<Stats> {
    let args = bwrap_args();
    let ok = Command::new("bwrap")
        .args(&args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new("bwrap")
            .args(&args)
            .stdin(Stdio::null())
            .status()
            .expect("bwrap");
        assert!(s.success());
        samples.push(t.elapsed());
    }
    Some(Stats::new(samples))
}

fn rss_kib(pid: i32) -> (u64, u64) {
    let field = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

fn self_rss_kib() -> u64 {
    rss_kib(std::process::id() as i32).0
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let state = std::env::temp_dir().join(format!("warren-bench-{}", std::process::id()));
    let mut spec = CellSpec::new(&state);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut with_cgroup = spec.clone();
    if root {
        with_cgroup.limits.cgroup = CgroupLimits {
            memory_bytes: Some(256 << 20),
            pids: Some(256),
            cpus: None,
        };
    }
    spec.limits.cgroup = CgroupLimits::default();

    println!(
        "warren cell benchmarks (kernel {}, {} CPUs)",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("== cold start: start a cell, run /bin/true in it, tear it down ==");
    let n = scale(200);
    // Warm up caches (page cache of the binary, dentries) for both.
    let direct = jail();
    let server = JailProgram {
        fork_server: true,
        ..jail()
    };
    // Each row warms up on its own; the in-process rows come first, while this process is
    // still single-threaded (the fork server's client starts a thread).
    let _ = cold_bwrap(5);
    let b = cold_bwrap(n);
    let cg = if root {
        "+cgroup"
    } else {
        "no cgroup: not root"
    };
    let in_cli = jail_in_cli();
    let mut rows = Vec::new();
    for (label, jail, in_process, spec) in [
        (
            format!("warren, one-shot: supervisor forked in process ({cg})"),
            &direct,
            true,
            &with_cgroup,
        ),
        (
            "warren, one-shot: supervisor forked in process (no cgroup)".to_owned(),
            &direct,
            true,
            &spec,
        ),
        (
            "warren, exec of warren-jail per cell (no cgroup)".to_owned(),
            &direct,
            false,
            &spec,
        ),
        (
            "warren, exec of `warren __jail` per cell (no cgroup)".to_owned(),
            &in_cli,
            false,
            &spec,
        ),
        (
            format!("warren, fork server ({cg})"),
            &server,
            false,
            &with_cgroup,
        ),
        (
            "warren, fork server (no cgroup limits)".to_owned(),
            &server,
            false,
            &spec,
        ),
    ] {
        let _ = cold_warren(spec, jail, in_process, 5);
        let (total, phases) = cold_warren(spec, jail, in_process, n);
        println!("{}", total.line(&label));
        println!("{}", phases[0].line("  of which: start to ready"));
        println!("{}", phases[1].line("  of which: first exec of /bin/true"));
        println!(
            "{}",
            phases[2].line("  of which: teardown (kill, reap, rmdir cgroups)")
        );
        rows.push((label, total));
    }
    // The one-shot path as a user runs it, measured like bwrap: process start to exit.
    let cli = cold_cli(&state, n);
    let cli_label = "`warren exec -- /bin/true` (the CLI, end to end)".to_owned();
    println!("{}", cli.line(&cli_label));
    rows.push((cli_label, cli));
    let after = cold_bwrap(n);
    match (&b, &after) {
        (Some(b), Some(after)) => {
            println!("{}", b.line("bwrap --unshare-all --die-with-parent"));
            println!("{}", after.line("bwrap, again after the warren rows"));
            let peer = (ms(b.p50()) + ms(after.p50())) / 2.0;
            for (label, total) in &rows {
                println!(
                    "ratio {label} / bwrap (p50): {:.2} (target <= 1.0)",
                    ms(total.p50()) / peer
                );
            }
        }
        _ => println!("bwrap: not available (install bubblewrap) — no ratio"),
    }

    println!();
    println!("== exec into a warm cell (/bin/true) ==");
    let cell = ProcessCell::start(&with_cgroup, &server).expect("cell");
    for _ in 0..50 {
        run_true(&cell);
    }
    let n = scale(3000);
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        run_true(&cell);
        lat.push(t.elapsed());
    }
    let seq_rate = n as f64 / t0.elapsed().as_secs_f64();
    println!("{}", Stats::new(lat).line("sequential exec latency"));
    println!("sequential throughput: {seq_rate:.0} execs/s (target >= 1000)");
    for threads in [2usize, 4] {
        let per = n / threads;
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per {
                        run_true(&cell);
                    }
                });
            }
        });
        println!(
            "concurrent throughput ({threads} clients): {:.0} execs/s",
            (per * threads) as f64 / t0.elapsed().as_secs_f64()
        );
    }
    drop(cell);

    println!();
    println!("== resident memory of idle cells ==");
    let before = self_rss_kib();
    let cells: Vec<ProcessCell> = (0..scale(50))
        .map(|_| ProcessCell::start(&with_cgroup, &server).expect("cell"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = self_rss_kib();
    let (mut rss, mut pss) = (0u64, 0u64);
    for c in &cells {
        for pid in [c.info().supervisor_pid, c.info().init_pid] {
            let (r, p) = rss_kib(pid);
            rss += r;
            pss += p;
        }
    }
    let k = cells.len() as u64;
    println!("cells measured: {k}");
    println!(
        "per cell, supervisor + init: RSS {:.0} KiB, PSS {:.0} KiB",
        rss as f64 / k as f64,
        pss as f64 / k as f64
    );
    println!(
        "per cell, host-side bookkeeping (RSS growth of this process): {:.1} KiB",
        after.saturating_sub(before) as f64 / k as f64
    );
    println!(
        "per cell, total (PSS + bookkeeping): {:.2} MiB (target <= 2 MiB)",
        (pss as f64 / k as f64 + after.saturating_sub(before) as f64 / k as f64) / 1024.0
    );
    drop(cells);
    let _ = std::fs::remove_dir_all(&state);
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
