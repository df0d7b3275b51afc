//! Daemon benchmarks (a real `warren daemon` process, its API on the unix socket, real cells,
//! the model played by the local mock server):
//!
//! 1. **Submissions per second** through `POST /v1/tasks` (HTTP/1.1 keep-alive, 1 and 4
//!    clients), with a trivial agent running the submitted tasks meanwhile; the peer is the
//!    store's own `submit` in-process (the same SQLite work without HTTP, scheduling or JSON).
//! 2. **Many concurrent tasks**: N tasks (default 1000) against a mock with 200 ms per turn, each
//!    holding a live cell (its first tool call sleeps in the cell); prints the peak of running
//!    tasks, the daemon's resident memory per running task beyond idle, and, once all are done,
//!    whether any cell process, cgroup, mount or temp dir was left behind.
//!
//! `cargo bench -p warren-cli --bench daemon [-- --tasks N --submissions N]`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_store::{NewTask, Store};
use warren_testkit::bench::arg;
use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

const MANIFEST: &str = "name: bench
description: trivial agent
provider: openai
model: mock-model
tools: [shell, finish]
limits: {memory: 256M, pids: 64, timeout: 10m}
";

fn tool_results(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count())
}

fn call(id: &str, name: &str, args: Value) -> Turn {
    Turn::Reply(Reply {
        tool_calls: vec![ToolCall::new(id, name, args.to_string())],
        input_tokens: 100,
        output_tokens: 10,
        ..Default::default()
    })
}

/// A keep-alive HTTP/1.1 connection to the daemon's unix socket.
struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(sock: &Path) -> Conn {
        let s = UnixStream::connect(sock).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        let b = body.unwrap_or("");
        write!(
            self.w,
            "{method} {path} HTTP/1.1\r\nHost: warren\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
        .unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let code: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (code, body)
    }

    fn json(&mut self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, b) = self.request(method, path, body.map(|v| v.to_string()).as_deref());
        assert!(code < 300, "{code} {}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }
}

struct Daemon {
    child: Child,
    state: PathBuf,
}

impl Daemon {
    fn start(state: &Path, mock: &MockLlm, extra: &[&str]) -> Daemon {
        let mut child = Command::new(WARREN)
            .arg("--state-dir")
            .arg(state)
            .args(["daemon", "--worker", "bench"])
            .args(extra)
            .env("OPENAI_BASE_URL", format!("{}/v1", mock.base_url()))
            .env("OPENAI_API_KEY", "sk-bench")
            .env("WARREN__PROVIDERS__OPENAI__MAX_CONCURRENCY", "1024")
            .env_remove("ANTHROPIC_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains(" ready on ") {
                    let _ = tx.send(());
                } else if !line.contains("resuming") {
                    eprintln!("  daemon: {line}");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("daemon start");
        Daemon {
            child,
            state: state.to_owned(),
        }
    }

    fn conn(&self) -> Conn {
        Conn::open(&self.state.join("warren.sock"))
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id())).map_or(0, Iterator::count)
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn deploy(state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    let f = state.join("bench.yaml");
    std::fs::write(&f, MANIFEST).unwrap();
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(state)
        .args(["agent", "deploy"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warren-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn submissions(n: usize) {
    println!("## task submissions (n = {n} per run)");
    // Peer: the store's submit, in process.
    let dir = fresh_dir("store");
    let store = warren_store::sqlite::SqliteStore::open(&dir.join("w.db")).unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        store
            .submit(NewTask {
                id: format!("t{i:012x}"),
                agent: "bench".into(),
                agent_version: 1,
                goal: "trivial".into(),
                ..NewTask::default()
            })
            .unwrap();
    }
    let direct = n as f64 / t0.elapsed().as_secs_f64();
    println!("store.submit in process (peer):        {direct:>8.0} /s");
    let _ = std::fs::remove_dir_all(&dir);

    let mut results = Vec::new();
    for (label, running) in [
        ("queue only (one slot, held by a slow task)", "1"),
        ("while the trivial agent runs them (8 at once)", "8"),
    ] {
        println!("{label}:");
        api_submissions(n, direct, running, &mut results);
    }
    let best = results.iter().copied().fold(0.0, f64::max);
    println!(
        "target >= 2000 submissions/s: {}",
        if best >= 2000.0 { "met" } else { "NOT met" }
    );
}

fn api_submissions(n: usize, direct: f64, running: &str, results: &mut Vec<f64>) {
    let state = fresh_dir("submit");
    deploy(&state);
    let slow = running == "1";
    let mock = MockLlm::start_responder(move |_| {
        let finish = call("f", "finish", json!({"summary": "nothing to do"}));
        if slow {
            Turn::Slow {
                delay: Duration::from_secs(600),
                then: Box::new(finish),
            }
        } else {
            finish
        }
    })
    .unwrap();
    let d = Daemon::start(
        &state,
        &mock,
        &["--max-queued", "1000000", "--max-running", running],
    );
    let body = r#"{"agent": "bench", "goal": "trivial"}"#;
    for clients in [1usize, 4] {
        let per = n / clients;
        let t0 = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let mut c = d.conn();
                std::thread::spawn(move || {
                    for _ in 0..per {
                        let (code, b) = c.request("POST", "/v1/tasks", Some(body));
                        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&b));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rate = (per * clients) as f64 / t0.elapsed().as_secs_f64();
        results.push(rate);
        println!(
            "  POST /v1/tasks, {clients} client(s):          {rate:>8.0} /s   (ratio to store.submit {:.2})",
            rate / direct
        );
    }
    let h = d.conn().json("GET", "/health", None);
    println!(
        "  (daemon now: {} running, {} queued)",
        h["running"], h["queued"]
    );
    d.stop();
    let _ = std::fs::remove_dir_all(&state);
}

fn count_lines(cmd: &str, args: &[&str], needle: &str) -> usize {
    let o = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn tmp_entries() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/tmp")
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("warren-bench-"))
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup_dirs() -> usize {
    ["/sys/fs/cgroup/memory/warren", "/sys/fs/cgroup/pids/warren"]
        .iter()
        .map(|d| {
            std::fs::read_dir(d).map_or(0, |r| {
                r.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with('t'))
                    .count()
            })
        })
        .sum()
}

fn concurrent(n: usize) {
    println!("\n## {n} concurrent tasks, 200 ms per model turn, each holding a live cell");
    let state = fresh_dir("concurrent");
    deploy(&state);
    let tmp_before = tmp_entries();
    let cg_before = cgroup_dirs();
    // Turn 1: a command that keeps the cell busy for 8 s; turn 2: a quick one; then finish.
    let mock = MockLlm::start_responder(|b| {
        let then = match tool_results(b) {
            0 => call("s1", "shell", json!({"command": "sleep 8"})),
            1 => call("s2", "shell", json!({"command": "echo done > out.txt"})),
            _ => call("f", "finish", json!({"summary": "done"})),
        };
        Turn::Slow {
            delay: Duration::from_millis(200),
            then: Box::new(then),
        }
    })
    .unwrap();
    let cap = n.to_string();
    let d = Daemon::start(
        &state,
        &mock,
        &[
            "--max-running",
            &cap,
            "--max-per-agent",
            &cap,
            "--max-queued",
            "1000000",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let idle = d.rss();
    let mut c = d.conn();
    let mut after_waves = Vec::new();
    for wave in 1..=arg("--waves", 3) {
        let r = wave_of(&d, &mut c, n, idle);
        if wave == 1 {
            println!("{r}");
        }
        std::thread::sleep(Duration::from_millis(500));
        after_waves.push(d.rss());
    }
    let mib: Vec<String> = after_waves
        .iter()
        .map(|r| format!("{:.1}", *r as f64 / 1048576.0))
        .collect();
    println!(
        "daemon RSS after each of {} identical waves: {} MiB (steady growth per wave would be a leak; the first wave's rise is allocator retention)",
        after_waves.len(),
        mib.join(", ")
    );
    // Idle blocking threads (one per tool call in flight at the peak) exit after 10 s; the
    // daemon returns freed memory after 12 s idle.
    std::thread::sleep(Duration::from_secs(14));
    println!(
        "daemon idle 14 s later: RSS {:.1} MiB, {} threads",
        d.rss() as f64 / 1048576.0,
        d.threads()
    );
    print_leaks(&state, &tmp_before, cg_before);
    d.stop();
    let _ = std::fs::remove_dir_all(&state);
}

/// Submit `n` tasks, wait for all; report completion, peak concurrency and memory.
fn wave_of(d: &Daemon, c: &mut Conn, n: usize, idle: u64) -> String {
    let t0 = Instant::now();
    for _ in 0..n {
        c.json(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": "bench", "goal": "hold a cell"})),
        );
    }
    let mut peak_running = 0u64;
    let mut rss_at_peak = idle;
    let mut peak_rss = idle;
    let mut peak_cells = 0usize;
    loop {
        let h = c.json("GET", "/health", None);
        let running = h["running"].as_u64().unwrap();
        let rss = d.rss();
        peak_rss = peak_rss.max(rss);
        if running >= peak_running {
            peak_running = running;
            rss_at_peak = rss;
            peak_cells = count_lines("pgrep", &["-f", "sleep 8"], "");
        }
        if running == 0 && h["queued"].as_u64() == Some(0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "tasks did not finish"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let wall = t0.elapsed();
    let done = c.json("GET", "/v1/tasks?state=succeeded&limit=10000", None);
    let succeeded = done.as_array().unwrap().len();
    let per_task = rss_at_peak.saturating_sub(idle) as f64 / peak_running.max(1) as f64;
    format!(
        "completed: {succeeded} succeeded in all, this wave of {n} in {:.1}s\n\
         peak: {peak_running} tasks running at once ({peak_cells} sleep processes alive in cells)\n\
         daemon RSS: idle {:.1} MiB, at peak {:.1} MiB (max {:.1} MiB) -> {:.0} KiB per running task (target <= 1024 KiB): {}",
        wall.as_secs_f64(),
        idle as f64 / 1048576.0,
        rss_at_peak as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0,
        per_task / 1024.0,
        if per_task <= 1048576.0 {
            "met"
        } else {
            "NOT met"
        }
    )
}

fn print_leaks(state: &Path, tmp_before: &std::collections::BTreeSet<String>, cg_before: usize) {
    // Leaks: with the daemon still up, nothing of the finished tasks' cells may remain.
    let supervisors = count_lines("pgrep", &["-af", "__jail"], "__jail")
        .saturating_sub(count_lines("pgrep", &["-af", "fork-server"], "fork-server"));
    let sleeps = count_lines("pgrep", &["-f", "sleep 8"], "");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&*state.to_string_lossy()))
        .count();
    let cgroups = cgroup_dirs().saturating_sub(cg_before);
    let tmp_new: Vec<String> = tmp_entries().difference(tmp_before).cloned().collect();
    println!(
        "left behind: {supervisors} cell supervisors, {sleeps} cell commands, {cgroups} cgroups, {mounts} mounts, {} new temp entries {:?}",
        tmp_new.len(),
        tmp_new.iter().take(5).collect::<Vec<_>>()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (subs, tasks) = (arg("--submissions", 5000), arg("--tasks", 1000));
    if subs > 0 {
        submissions(subs);
    }
    if tasks > 0 {
        concurrent(tasks);
    }
}
