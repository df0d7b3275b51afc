//! `warren exec` and the commands that act on kept changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use warren_cell::cgroup::CgroupLimits;
use warren_cell::{
    Cell, CellSpec, ExecSpec, FailureCode, JailProgram, OutputSink, ProcessCell, Workspace,
    WorkspaceMode, cow,
};
use warren_protocol::exit;

use crate::exec_policy::{self as policy, Mode, Policy};

/// Arguments of `warren exec`.
#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Host directory mounted at /workspace (default: none; the command starts in /tmp).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Mount the workspace read-write: changes land on the host directly.
    #[arg(long, conflicts_with_all = ["ro", "cow"])]
    rw: bool,
    /// Mount the workspace read-only.
    #[arg(long, conflicts_with_all = ["rw", "cow"])]
    ro: bool,
    /// Mount the workspace copy-on-write (the default): changes are kept for review.
    #[arg(long, conflicts_with_all = ["rw", "ro"])]
    cow: bool,
    /// Memory limit, no swap (e.g. 512M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = policy::parse_size)]
    memory: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pids: Option<u64>,
    /// CPU quota in cores (e.g. 0.5, 2).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Kill the command after this long (e.g. 30s, 500ms, 2m).
    #[arg(long, value_name = "DUR", value_parser = policy::parse_duration)]
    timeout: Option<Duration>,
    /// Size of the cell's /tmp (default 256M).
    #[arg(long, value_name = "SIZE", value_parser = policy::parse_size)]
    tmp_size: Option<u64>,
    /// Disk bound of a copy-on-write workspace's changes (default 4G): past it, the cell's
    /// commands are killed (exit 122).
    #[arg(long, value_name = "SIZE", value_parser = policy::parse_size)]
    disk: Option<u64>,
    /// Bytes of stdout and of stderr passed through (default 1M each); the rest is dropped
    /// and the truncation reported.
    #[arg(long, value_name = "SIZE", value_parser = policy::parse_size)]
    output_limit: Option<u64>,
    /// Extra environment variable for the command (repeatable). Nothing else is inherited.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Read these settings from a TOML file (flags override it).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Forward this process's stdin to the command (default: /dev/null).
    #[arg(long, short = 'i')]
    pub(crate) interactive: bool,
    /// Print one JSON object with the outcome and captured output instead of streaming.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where the command runs: `process` (a jailed process, the default) or `wasi` (CMD is a
    /// WebAssembly module, `.wasm` or `.wat`, run on wasmtime in a namespace the host serves).
    #[arg(long, value_enum, default_value_t = Tier::Process)]
    pub(crate) tier: Tier,
    /// wasi tier: let the module read the clocks (default: ENOTCAPABLE).
    #[arg(long)]
    pub(crate) allow_clock: bool,
    /// wasi tier: let the module draw random bytes (default: ENOTCAPABLE).
    #[arg(long)]
    pub(crate) allow_random: bool,
    /// wasi tier: a destination `/cap/http` and `/cap/ws` may reach, as in an agent's
    /// `network:` list (`api.example.com`, `*.example.com:8443`; repeatable). Without one,
    /// neither exists.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) net: Vec<String>,
    /// wasi tier: mount `/cap/nostr`, the host's Nostr identity (its key stays in the state
    /// directory; the module can only ask for signatures).
    #[arg(long)]
    pub(crate) nostr: bool,
    /// wasi tier: a relay `/cap/nostr/publish` sends to (`ws://…`, repeatable; implies
    /// `--nostr`; the relay must also be allowed by `--net`).
    #[arg(long, value_name = "URL")]
    pub(crate) nostr_relay: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// Cell tiers `warren exec` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// A process in namespaces, Landlock, seccomp and a cgroup.
    Process,
    /// A WebAssembly module on wasmtime.
    Wasi,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.into(), v.into()))
        }
        _ => Err(format!("{s:?} is not K=V")),
    }
}

/// Output passed through to this process's stdout and stderr as it comes.
pub(crate) struct Streaming;

impl warren_wasi::Sink for Streaming {
    fn stdout(&mut self, b: &[u8]) {
        OutputSink::stdout(self, b);
    }
    fn stderr(&mut self, b: &[u8]) {
        OutputSink::stderr(self, b);
    }
}

impl OutputSink for Streaming {
    fn stdout(&mut self, b: &[u8]) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(b);
        let _ = o.flush();
    }
    fn stderr(&mut self, b: &[u8]) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(b);
        let _ = e.flush();
    }
}

fn settings(a: &ExecArgs, state: &Path) -> Result<Policy, String> {
    let mut p = match &a.policy {
        Some(f) => policy::load(f, state).map_err(|e| e.to_string())?,
        None => Policy::default(),
    };
    if a.workspace.is_some() {
        p.workspace = a.workspace.clone();
    } else if p.workspace.is_none() && p.mode.is_some() {
        // A policy that sets how the workspace is mounted but not which one means the project
        // the command is run from (`warren exec --policy examples/policy.toml -- ./build.sh`
        // in a checkout). The flags stay explicit: `--rw` alone is refused below.
        p.workspace = Some(PathBuf::from("."));
    }
    if a.rw {
        p.mode = Some(Mode::Rw);
    } else if a.ro {
        p.mode = Some(Mode::Ro);
    } else if a.cow {
        p.mode = Some(Mode::Cow);
    }
    p.memory = a.memory.or(p.memory);
    p.pids = a.pids.or(p.pids);
    if let Some(c) = a.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(format!("--cpus must be a positive number, not {c}"));
        }
        p.cpus = Some(c);
    }
    p.timeout = a.timeout.or(p.timeout);
    p.tmp_size = a.tmp_size.or(p.tmp_size);
    p.disk = a.disk.or(p.disk);
    p.output_limit = a.output_limit.or(p.output_limit);
    p.env.extend(a.env.iter().cloned());
    Ok(p)
}

fn cell_spec(p: &Policy, state: &Path) -> Result<CellSpec, String> {
    let mut spec = CellSpec::new(state);
    if let Some(ws) = &p.workspace {
        let host =
            std::fs::canonicalize(ws).map_err(|e| format!("workspace {}: {e}", ws.display()))?;
        let mode = match p.mode.unwrap_or(Mode::Cow) {
            Mode::Ro => WorkspaceMode::ReadOnly,
            Mode::Rw => WorkspaceMode::ReadWrite,
            Mode::Cow => WorkspaceMode::Cow,
        };
        spec.workspace = Some(Workspace { host, mode });
    } else if p.mode.is_some() {
        return Err("--rw/--ro/--cow need --workspace DIR".into());
    }
    spec.limits.cgroup = CgroupLimits {
        memory_bytes: p.memory,
        pids: p.pids,
        cpus: p.cpus,
    };
    if let Some(t) = p.tmp_size {
        spec.limits.tmp_bytes = t;
    }
    if let Some(o) = p.output_limit {
        spec.limits.max_output_bytes = o;
    }
    if let Some(d) = p.disk {
        spec.limits.disk_bytes = Some(d);
    }
    spec.env = p.env.clone();
    spec.extra_mounts.extend(
        p.read_only_paths
            .iter()
            .map(|path| warren_cell::hostpaths::read_only_bind(path)),
    );
    Ok(spec)
}

/// Map an outcome to `warren exec`'s documented exit code.
pub fn exit_code(o: &warren_cell::ExecOutcome) -> i32 {
    if let Some((code, _)) = &o.failure {
        return match code {
            FailureCode::NotFound => exit::NOT_FOUND,
            FailureCode::NotExecutable | FailureCode::SpawnFailed => exit::NOT_EXECUTABLE,
            _ => exit::REFUSED,
        };
    }
    if o.exit.timed_out {
        exit::TIMEOUT
    } else if o.oom_killed {
        exit::OUT_OF_MEMORY
    } else if o.disk_exceeded {
        exit::DISK_LIMIT
    } else if let Some(sig) = o.exit.signal {
        exit::for_signal(sig)
    } else {
        o.exit.code.unwrap_or(exit::REFUSED)
    }
}

/// `warren exec`.
pub fn run(a: ExecArgs, state: &Path) -> i32 {
    let refuse = |msg: String| {
        eprintln!("warren: {msg}");
        exit::REFUSED
    };
    let p = match settings(&a, state) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    if a.tier == Tier::Wasi {
        return crate::exec_wasi::run(&a, &p, state);
    }
    if a.allow_clock || a.allow_random || !a.net.is_empty() || a.nostr || !a.nostr_relay.is_empty()
    {
        return refuse(
            "--allow-clock, --allow-random, --net and --nostr are for --tier wasi (a process cell has the \
             clock and randomness, and no network in `warren exec`)"
                .into(),
        );
    }
    let spec = match cell_spec(&p, state) {
        Ok(s) => s,
        Err(e) => return refuse(e),
    };
    let jail = match JailProgram::current_exe() {
        Ok(j) => j,
        Err(e) => return refuse(e.to_string()),
    };
    // One cell, from a single-threaded process: fork the supervisor here rather than execute
    // a second program (see `ProcessCell::start_in_process`).
    let cell = match ProcessCell::start_in_process(&spec, &jail, warren_jail::main_in_process) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    let exec = ExecSpec {
        argv: a.command.clone(),
        timeout_ms: p.timeout.map(|t| t.as_millis() as u64),
        max_output_bytes: spec.limits.max_output_bytes,
        ..Default::default()
    };
    let interrupted = stop_cell_on_signal(cell.info().supervisor_pid);
    let stdin: Option<Box<dyn std::io::Read + Send>> =
        a.interactive.then(|| Box::new(std::io::stdin()) as _);
    let mut collected = warren_cell::Collect::default();
    let result = if a.json {
        cell.exec(&exec, stdin, &mut collected)
    } else {
        cell.exec(&exec, stdin, &mut Streaming)
    };
    let signal = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let (outcome, code) = match result {
        Ok(o) => {
            let code = exit_code(&o);
            (o, code)
        }
        // Interrupted: the cell was stopped; report what it kept, exit as the signal would.
        Err(_) if signal != 0 => {
            eprintln!("warren: interrupted by signal {signal}; the cell was stopped");
            (
                warren_cell::ExecOutcome::default(),
                exit::for_signal(signal),
            )
        }
        Err(e) => return refuse(e.to_string()),
    };
    let id = cell.id().to_owned();
    let layer = cell.cow_layer().cloned();
    let info = cell.info().clone();
    drop(cell); // kill the cell before inspecting its layer
    let workspace = spec.workspace.as_ref().map(|w| w.host.clone());
    let changes = match (&layer, &workspace) {
        (Some(l), Some(ws)) => cow::changes(l, ws).unwrap_or_default(),
        _ => Vec::new(),
    };
    if let (Some(l), true) = (&layer, changes.is_empty()) {
        let _ = cow::discard(l);
    }
    let kept = layer.is_some() && !changes.is_empty();
    if a.json {
        let v = serde_json::json!({
            "cell": id,
            "exit_code": code,
            "code": outcome.exit.code,
            "signal": outcome.exit.signal,
            "timed_out": outcome.exit.timed_out,
            "oom_killed": outcome.oom_killed,
            "disk_exceeded": outcome.disk_exceeded,
            "failure": outcome.failure.as_ref().map(|(c, m)| serde_json::json!({"code": c, "message": m})),
            "duration_us": outcome.exit.duration_us,
            "stdout": String::from_utf8_lossy(&collected.stdout),
            "stderr": String::from_utf8_lossy(&collected.stderr),
            "stdout_bytes": outcome.exit.stdout_bytes,
            "stderr_bytes": outcome.exit.stderr_bytes,
            "stdout_truncated": outcome.stdout_truncated,
            "stderr_truncated": outcome.stderr_truncated,
            "changes": changes,
            "changes_kept": kept,
            "landlock_abi": info.landlock.applied_abi,
            "cgroup": info.cgroup,
        });
        println!("{v}");
        return code;
    }
    if let Some((_, msg)) = &outcome.failure {
        eprintln!("warren: {msg}");
    }
    if outcome.stdout_truncated || outcome.stderr_truncated {
        eprintln!(
            "warren: output truncated at {} bytes per stream (stdout {} bytes, stderr {} bytes in total)",
            exec.max_output_bytes, outcome.exit.stdout_bytes, outcome.exit.stderr_bytes
        );
    }
    if outcome.exit.timed_out {
        eprintln!(
            "warren: killed after the {:?} timeout",
            p.timeout.unwrap_or_default()
        );
    }
    if outcome.disk_exceeded {
        eprintln!(
            "warren: killed at the workspace's disk limit ({} bytes of changes)",
            spec.limits.disk_bytes.unwrap_or(0)
        );
    }
    if outcome.oom_killed {
        eprintln!(
            "warren: killed by the out-of-memory killer (memory limit {} bytes)",
            p.memory.unwrap_or(0)
        );
    }
    if layer.is_some() {
        report_changes(&changes, &id);
    }
    code
}

/// What `warren exec` says after a copy-on-write run: nothing changed, or the kept changes and
/// how to review them.
pub(crate) fn report_changes(changes: &[cow::Change], id: &str) {
    if changes.is_empty() {
        eprintln!("warren: no changes to the workspace");
    } else {
        eprint!("{}", change_summary(changes, id));
        eprintln!(
            "warren: review with `warren diff {id}`, then `warren apply {id}` or `warren discard {id}`"
        );
    }
}

/// How many changed paths `warren exec` lists before it only counts (`--json` lists all).
pub const LISTED_CHANGES: usize = 20;

/// The kept changes as `warren exec` prints them: a count line by kind, then at most
/// [`LISTED_CHANGES`] paths and how many more `warren diff --stat ID` lists.
pub fn change_summary(changes: &[cow::Change], id: &str) -> String {
    let count = |m: char| changes.iter().filter(|c| c.marker() == m).count();
    let (added, modified, deleted) = (count('A'), count('M'), count('D'));
    let other = changes.len() - added - modified - deleted;
    let mut kinds = format!("{added} added, {modified} modified, {deleted} deleted");
    if other > 0 {
        kinds.push_str(&format!(", {other} other"));
    }
    let mut out = format!(
        "warren: {} change(s) kept as cell {id}: {kinds}\n",
        changes.len()
    );
    for c in changes.iter().take(LISTED_CHANGES) {
        out.push_str(&format!(
            "  {} {}\n",
            c.marker(),
            cow::display_path(c.path())
        ));
    }
    if changes.len() > LISTED_CHANGES {
        out.push_str(&format!(
            "  … and {} more (`warren diff --stat {id}` lists them all)\n",
            changes.len() - LISTED_CHANGES
        ));
    }
    out
}

fn open_layer(state: &Path, id: &str) -> Result<cow::StoredLayer, i32> {
    cow::open(state, id).map_err(|e| {
        eprintln!("warren: {e}");
        1
    })
}

/// `warren diff`.
pub fn diff(state: &Path, id: &str, stat: bool) -> i32 {
    let l = match open_layer(state, id) {
        Ok(l) => l,
        Err(c) => return c,
    };
    let r = if stat {
        cow::changes(&l.layer, &l.meta.workspace).map(|cs| {
            cs.iter()
                .map(|c| format!("{} {}\n", c.marker(), cow::display_path(c.path())))
                .collect()
        })
    } else {
        cow::diff(&l.layer, &l.meta.workspace)
    };
    match r {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

/// `warren apply`.
pub fn apply(state: &Path, id: &str) -> i32 {
    let l = match open_layer(state, id) {
        Ok(l) => l,
        Err(c) => return c,
    };
    match apply_layer(&l.layer, &l.meta.workspace) {
        Ok(r) => {
            let _ = cow::discard(&l.layer);
            eprintln!(
                "warren: applied cell {id} to {}: {} written, {} removed",
                l.meta.workspace.display(),
                r.written.len(),
                r.removed.len()
            );
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

/// Apply a layer, showing progress on a terminal and naming what was refused.
pub fn apply_layer(
    layer: &warren_cell::spec::CowLayer,
    workspace: &Path,
) -> Result<cow::ApplyReport, warren_cell::CellError> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let r = cow::apply_with(layer, workspace, &mut |p| {
        if tty && (p.done == p.total || last.elapsed().as_millis() >= 100) {
            last = std::time::Instant::now();
            let _ = write!(
                std::io::stderr(),
                "\rwarren: applying {}/{}",
                p.done,
                p.total
            );
            if p.done == p.total {
                let _ = writeln!(std::io::stderr());
            }
        }
    });
    if let Ok(r) = &r {
        for (p, why) in &r.refused {
            eprintln!("warren: not applied: {}: {why}", p.display());
        }
    }
    r
}

/// `warren discard`.
pub fn discard(state: &Path, id: &str) -> i32 {
    let l = match open_layer(state, id) {
        Ok(l) => l,
        Err(c) => return c,
    };
    match cow::discard(&l.layer) {
        Ok(()) => {
            eprintln!("warren: discarded the changes of cell {id}");
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

/// `warren changes`.
pub fn list_changes(state: &Path, json: bool) -> i32 {
    let layers = cow::list(state);
    if json {
        let v: Vec<_> = layers
            .iter()
            .map(|l| {
                let n = cow::changes(&l.layer, &l.meta.workspace).map(|c| c.len()).unwrap_or(0);
                serde_json::json!({"cell": l.id, "workspace": l.meta.workspace, "created": l.meta.created, "changes": n})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else if layers.is_empty() {
        eprintln!("warren: no kept changes");
    } else {
        for l in layers {
            let n = cow::changes(&l.layer, &l.meta.workspace)
                .map(|c| c.len())
                .unwrap_or(0);
            println!("{}  {} change(s)  {}", l.id, n, l.meta.workspace.display());
        }
    }
    0
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread (call it before any other thread
/// exists, so every later thread inherits the mask) and call `on` from a dedicated thread
/// with the first one that arrives. Returns the signal's number once one came (0 before).
pub fn on_signal(
    on: impl FnOnce(i32) + Send + 'static,
) -> std::sync::Arc<std::sync::atomic::AtomicI32> {
    let got = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let flag = std::sync::Arc::clone(&got);
    // SAFETY: building a signal set and blocking it in this thread before any other thread
    // exists, so the waiting thread below is the only one that receives these signals.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: sigwait on the set blocked above.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                flag.store(sig, std::sync::atomic::Ordering::SeqCst);
                on(sig);
            }
        });
    got
}

/// Stop the cell whose supervisor is `supervisor` when a signal arrives ([`on_signal`]).
pub fn stop_cell_on_signal(supervisor: i32) -> std::sync::Arc<std::sync::atomic::AtomicI32> {
    on_signal(move |_| {
        // SAFETY: signalling the cell's supervisor, our child.
        unsafe { libc::kill(supervisor, libc::SIGTERM) };
    })
}
