//! `warren exec --tier wasi MODULE.wasm ARGS…`: a WebAssembly module in the WASI tier.
//!
//! The module's world is a namespace served live by the host (see `warren-wasi`): `/tmp` in
//! memory with the `--tmp-size` cap, `/workspace` when one is given — read-only, read-write, or
//! copy-on-write into a layer that `warren diff`, `apply` and `discard` treat like the process
//! tier's — `/cap/http` and `/cap/ws` when `--net` allows destinations, and `/cap/nostr`
//! (the host's signing identity) with `--nostr`. Limits are the engine's: a
//! deadline (`--timeout`), a memory limit (`--memory`), output caps; `--pids`, `--cpus` and
//! `--disk` have no meaning for one module and are refused rather than ignored.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use warren_cell::cow;
use warren_cell::spec::{CowLayer, WorkspaceMode};
use warren_ns::MountTable;
use warren_ns::cow::CowFs;
use warren_ns::mem::MemFs;
use warren_protocol::exit;
use warren_wasi::{Invocation, Limits, Runtime, RuntimeConfig, Status};

use crate::exec::{ExecArgs, Streaming, report_changes};
use crate::exec_policy::{Mode, Policy};

/// The most stdin `-i` forwards to a module (it is read before the run starts).
const MAX_STDIN: u64 = 64 << 20;

/// What the namespace's workspace is, for the report after the run.
enum Ws {
    None,
    Direct,
    Cow {
        layer: CowLayer,
        host: std::path::PathBuf,
        view: Arc<CowFs>,
    },
}

fn refuse(msg: impl std::fmt::Display) -> i32 {
    eprintln!("warren: {msg}");
    exit::REFUSED
}

/// Run `a` (whose `--tier` is `wasi`) with the merged settings `p`.
pub fn run(a: &ExecArgs, p: &Policy, state: &Path) -> i32 {
    for (set, flag) in [
        (p.pids.is_some(), "--pids"),
        (p.cpus.is_some(), "--cpus"),
        (p.disk.is_some(), "--disk"),
        (!p.read_only_paths.is_empty(), "read_only_paths"),
    ] {
        if set {
            return refuse(format!(
                "{flag} has no meaning in the wasi tier (one module, no processes, no host paths)"
            ));
        }
    }
    let id = warren_cell::process::new_cell_id();
    let (ns, ws, net) = match namespace(a, p, state, &id) {
        Ok(x) => x,
        Err(e) => return refuse(e),
    };
    let rt = match Runtime::new(RuntimeConfig {
        cache_dir: Some(state.join("wasm-cache")),
        slots: 1,
        ..RuntimeConfig::default()
    }) {
        Ok(r) => r,
        Err(e) => {
            discard_empty(&ws);
            return refuse(e);
        }
    };
    let module = Path::new(&a.command[0]);
    let program = match rt.load_file(module) {
        Ok(p) => p,
        Err(e) => {
            discard_empty(&ws);
            return match e {
                warren_wasi::WasiError::Io(_, ref io)
                    if io.kind() == std::io::ErrorKind::NotFound =>
                {
                    eprintln!("warren: {e}");
                    exit::NOT_FOUND
                }
                e => {
                    eprintln!("warren: {e}");
                    exit::NOT_EXECUTABLE
                }
            };
        }
    };
    let mut stdin = Vec::new();
    if a.interactive
        && let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin)
    {
        discard_empty(&ws);
        return refuse(format!("stdin: {e}"));
    }
    let defaults = Limits::default();
    let limits = Limits {
        memory: p.memory.unwrap_or(defaults.memory),
        timeout: p.timeout.unwrap_or(Duration::from_secs(24 * 3600)),
        output: p.output_limit.unwrap_or(defaults.output),
        ..defaults
    };
    let mut inv = Invocation::new(a.command.clone(), Arc::new(ns));
    inv.env = p.env.clone();
    inv.stdin = stdin;
    inv.limits = limits;
    inv.policy = warren_wasi::Policy {
        clock: a.allow_clock,
        random: a.allow_random,
    };
    if !a.json {
        inv.sink = Box::new(Streaming);
    }
    let outcome = rt.run(&program, inv);
    let code = outcome.status.code();
    let (changes, kept, removal_errors) = finish_workspace(&ws);
    let attempts = net.map(|a| a.attempts()).unwrap_or_default();
    if a.json {
        let v = serde_json::json!({
            "cell": id,
            "tier": "wasi",
            "module": program.hash,
            "exit_code": code,
            "code": match outcome.status { Status::Exited(c) => Some(c), _ => None },
            "timed_out": outcome.status == Status::TimedOut,
            "oom_killed": matches!(outcome.status, Status::MemoryLimit(_)),
            "trap": match &outcome.status {
                Status::Trapped(m) | Status::MemoryLimit(m) => Some(m.clone()),
                _ => None,
            },
            "duration_us": outcome.elapsed.as_micros() as u64,
            "instantiate_us": outcome.instantiate.as_micros() as u64,
            "stdout": String::from_utf8_lossy(&outcome.stdout),
            "stderr": String::from_utf8_lossy(&outcome.stderr),
            "stdout_truncated": outcome.stdout_dropped > 0,
            "stderr_truncated": outcome.stderr_dropped > 0,
            "changes": changes,
            "changes_kept": kept,
            "errors": removal_errors,
            "net": attempts,
        });
        println!("{v}");
        return code;
    }
    for e in &removal_errors {
        eprintln!("warren: {e}");
    }
    for t in &attempts {
        eprintln!(
            "warren: /cap/http: {} {}:{} {}",
            t.method,
            t.host,
            t.port,
            match &t.decision {
                warren_egress::Decision::Allowed => "allowed".to_string(),
                warren_egress::Decision::Denied(why) => format!("refused: {why}"),
                warren_egress::Decision::Failed(why) => format!("failed: {why}"),
            }
        );
    }
    match &outcome.status {
        Status::TimedOut => eprintln!(
            "warren: stopped after the {:?} timeout",
            p.timeout.unwrap_or_default()
        ),
        Status::MemoryLimit(m) => eprintln!("warren: stopped at the memory limit: {m}"),
        Status::Trapped(m) => eprintln!("warren: the module trapped: {m}"),
        Status::Terminated => eprintln!("warren: terminated"),
        Status::Exited(_) => {}
    }
    if outcome.stdout_dropped > 0 || outcome.stderr_dropped > 0 {
        eprintln!(
            "warren: output truncated at {} bytes per stream ({} stdout and {} stderr bytes dropped)",
            limits.output, outcome.stdout_dropped, outcome.stderr_dropped
        );
    }
    if let Ws::Cow { .. } = ws {
        report_changes(&changes, &id);
    }
    code
}

type Net = Option<Arc<warren_egress::RecordingAudit>>;

fn namespace(
    a: &ExecArgs,
    p: &Policy,
    state: &Path,
    id: &str,
) -> Result<(MountTable, Ws, Net), String> {
    let mut ns = MountTable::new();
    let ns_err = |e: warren_ns::NsError| e.to_string();
    ns.mount(
        "/tmp",
        Arc::new(MemFs::new(p.tmp_size.unwrap_or(256 << 20))),
    )
    .map_err(ns_err)?;
    let mut ws = Ws::None;
    if let Some(dir) = &p.workspace {
        let host =
            std::fs::canonicalize(dir).map_err(|e| format!("workspace {}: {e}", dir.display()))?;
        let mode = match p.mode.unwrap_or(Mode::Cow) {
            Mode::Ro => WorkspaceMode::ReadOnly,
            Mode::Rw => WorkspaceMode::ReadWrite,
            Mode::Cow => WorkspaceMode::Cow,
        };
        let (svc, cow) = warren_runtime::wasicell::workspace(&host, mode, state, id)?;
        ws = match cow {
            Some((layer, view)) => Ws::Cow {
                layer,
                host: host.clone(),
                view,
            },
            None => Ws::Direct,
        };
        ns.mount("/workspace", svc).map_err(ns_err)?;
    } else if p.mode.is_some() {
        return Err("--rw/--ro/--cow need --workspace DIR".into());
    }
    let nostr = a.nostr || !a.nostr_relay.is_empty();
    let mut net = None;
    if !a.net.is_empty() || nostr {
        // One policy and one audit for every capability that leaves the host.
        let policy = warren_egress::Policy::parse(&a.net).map_err(|e| format!("--net: {e}"))?;
        let audit = Arc::new(warren_egress::RecordingAudit::new());
        let config = Arc::new(warren_egress::Config::new(policy));
        if !a.net.is_empty() {
            let http =
                warren_runtime::caphttp::service(config.clone(), audit.clone()).map_err(ns_err)?;
            ns.mount("/cap/http", Arc::new(http)).map_err(ns_err)?;
            let ws =
                warren_runtime::capws::WsFs::new(config.clone(), audit.clone()).map_err(ns_err)?;
            ns.mount("/cap/ws", Arc::new(ws)).map_err(ns_err)?;
        }
        if nostr {
            let identity = warren_runtime::capnostr::Identity::load_or_create(
                &state.join("nostr").join("identity.key"),
            )?;
            let svc = warren_runtime::capnostr::service(
                Arc::new(identity),
                warren_runtime::capnostr::NostrGrant {
                    relays: a.nostr_relay.clone(),
                    kinds: Vec::new(),
                    ..Default::default()
                },
                config,
                audit.clone(),
            )
            .map_err(ns_err)?;
            ns.mount("/cap/nostr", Arc::new(svc)).map_err(ns_err)?;
        }
        net = Some(audit);
    }
    Ok((ns, ws, net))
}

/// Record a copy-on-write view's removals in its layer, list the changes, and drop an empty
/// layer. Returns the changes, whether they were kept, and removals that could not be kept.
fn finish_workspace(ws: &Ws) -> (Vec<cow::Change>, bool, Vec<String>) {
    let Ws::Cow { layer, host, view } = ws else {
        return (Vec::new(), false, Vec::new());
    };
    let errors = warren_runtime::wasicell::record_removals(layer, view);
    let changes = cow::changes(layer, host).unwrap_or_default();
    if changes.is_empty() {
        let _ = cow::discard(layer);
    }
    let kept = !changes.is_empty();
    (changes, kept, errors)
}

fn discard_empty(ws: &Ws) {
    if let Ws::Cow { layer, .. } = ws {
        let _ = cow::discard(layer);
    }
}
