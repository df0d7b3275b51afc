//! The disk bound of a copy-on-write workspace: what a cell may add to its upper layer.
//!
//! The upper layer lives in the host's state directory, on whatever file system holds it, so
//! no mount option bounds it (a size-limited tmpfs would not survive the daemon, and project
//! quotas are rarely enabled). Two mechanisms bound it instead:
//!
//! - `RLIMIT_FSIZE` in the cell is at most the disk limit, so no single file grows past it
//!   (the kernel refuses the write with `EFBIG`);
//! - a watcher thread on the host measures the upper layer ([`crate::cow::usage`]: file sizes,
//!   links never followed, through [`warren_fsx`]) every 50 ms or so — more seldom for large layers, at most
//!   a quarter of the time spent measuring — and when the layer is over the limit and has grown
//!   since the last time, kills every command in the cell (never the init, which keeps the cell
//!   alive for `rm` and review, as with the memory limit's OOM kills). A command that ran while
//!   that happened reports [`crate::ExecOutcome::disk_exceeded`]; `warren exec` exits 122.
//!
//! The bound is therefore the limit plus what the cell can write between two measurements:
//! the overshoot is bounded by write speed × interval, and the test checks it stays far below
//! what an unbounded writer reaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::spec::CowLayer;

/// A running watcher; stopped when dropped.
#[derive(Debug)]
pub struct DiskWatch {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    limit: u64,
    thread: Option<JoinHandle<()>>,
}

impl DiskWatch {
    /// Watch `layer` of the cell whose init is `init_pid` (host pid) against `limit` bytes.
    pub fn start(layer: CowLayer, limit: u64, init_pid: i32) -> DiskWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, k, p) = (Arc::clone(&stop), Arc::clone(&kills), Arc::clone(&peak));
        let thread = std::thread::Builder::new()
            .name("warren-disk".into())
            // One per cell (a daemon runs a thousand): a small stack is plenty.
            .stack_size(128 << 10)
            .spawn(move || {
                block_signals();
                let mut killed_at: Option<u64> = None;
                while !s.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let used = crate::cow::usage(&layer).unwrap_or(0);
                    p.fetch_max(used, Ordering::Relaxed);
                    if used > limit {
                        if killed_at.is_none_or(|at| used > at) {
                            // Counted first: a command that dies of the kill must see it.
                            k.fetch_add(1, Ordering::SeqCst);
                            kill_commands(init_pid);
                            // What the killed writers had written when they died is the new
                            // baseline: only growth past it kills again.
                            let after = crate::cow::usage(&layer).unwrap_or(used);
                            p.fetch_max(after, Ordering::Relaxed);
                            killed_at = Some(after.max(used));
                        }
                    } else {
                        killed_at = None;
                    }
                    let pause =
                        (t.elapsed() * 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
                    std::thread::park_timeout(pause);
                }
            })
            .ok();
        DiskWatch {
            stop,
            kills,
            peak,
            limit,
            thread,
        }
    }

    /// How many times commands were killed for the limit so far.
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::SeqCst)
    }

    /// The largest size measured.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Stop watching (and wait for the thread).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Signals are for the threads that handle them (`warren exec` and `warren run` wait for
/// SIGINT/SIGTERM with `sigwait`): a thread started before they blocked them would take the
/// signal's default action and kill the process.
fn block_signals() {
    // SAFETY: a zeroed sigset filled by sigfillset; pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Every descendant of `init` (host pids), read from `/proc/PID/task/TID/children`.
fn descendants(init: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![init];
    while let Some(pid) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for c in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if !out.contains(&c) && out.len() < 100_000 {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// SIGKILL every process of the cell but its init: each command's whole process group, a few
/// times over, so a command forking while it is being killed leaves no child behind. Only the
/// groups that existed when the limit was hit are killed again: a command started after the
/// first round (the `rm` that frees space) is not touched.
fn kill_commands(init: i32) {
    let mut groups: Vec<i32> = Vec::new();
    for pid in descendants(init) {
        // SAFETY: getpgid/kill with a pid read from /proc; at worst the process is gone.
        unsafe {
            let g = libc::getpgid(pid);
            if g > 0 && g != init && !groups.contains(&g) {
                groups.push(g);
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for _ in 0..3 {
        for g in &groups {
            // SAFETY: signalling a process group of the cell's commands.
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
