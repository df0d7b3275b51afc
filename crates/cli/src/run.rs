//! `warren run "GOAL"`: an agent works on a copy-on-write view of the project inside a cell;
//! the person watches, reviews the diff, and applies it (or not).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use warren_agent::{Agent, AgentConfig, AgentEvent, Outcome};
use warren_cell::{Cell, CellSpec, JailProgram, ProcessCell, Workspace, WorkspaceMode, cow};
use warren_llm::{Provider, ProviderConfig};
use warren_protocol::exit;
use warren_protocol::mount::{Mount, MountKind};

/// Arguments of `warren run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// What the agent should achieve.
    goal: String,
    /// The project (default: the current directory). The agent sees a copy-on-write view.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// `openai` (any OpenAI-compatible server) or `anthropic`. Default: anthropic when
    /// ANTHROPIC_API_KEY is set, else openai.
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    /// Model name, passed through as is.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// At most this many model turns (default 30, or `agent.max_turns`).
    #[arg(long, value_name = "N")]
    max_turns: Option<u32>,
    /// Stop once this many tokens were used.
    #[arg(long, value_name = "N")]
    budget_tokens: Option<u64>,
    /// Stop after this long (e.g. 10m; default 30m, or `agent.timeout`).
    #[arg(long, value_name = "DUR", value_parser = crate::policy::parse_duration)]
    timeout: Option<Duration>,
    /// Apply the changes without asking.
    #[arg(long, conflicts_with = "no_apply")]
    apply: bool,
    /// Keep the changes for later review without asking.
    #[arg(long)]
    no_apply: bool,
    /// Record every model exchange to this JSONL transcript.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// Play the model's side back from this transcript (no key, no network).
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// NDJSON events instead of the human view.
    #[arg(long)]
    json: bool,
}

/// A configured value, unless it is only the built-in default.
fn configured<'a>(loaded: &'a warren_config::Loaded, key: &str) -> Option<&'a toml::Value> {
    loaded
        .values
        .get(key)
        .filter(|(_, src)| *src != warren_config::Source::Default)
        .map(|(v, _)| v)
}

fn provider_for(
    a: &RunArgs,
    loaded: &warren_config::Loaded,
) -> Result<(Arc<dyn Provider>, String), String> {
    let cfg = &loaded.config;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(path) = &a.replay {
        let replay = warren_llm::record::Replay::open(path).map_err(|e| e.to_string())?;
        let model = a
            .model
            .clone()
            .unwrap_or_else(|| replay.first_model().unwrap_or_default());
        return Ok((Arc::new(replay), model));
    }
    let chosen = a.provider.clone().or_else(|| cfg.agent.provider.clone());
    let kind = match chosen.as_deref() {
        Some("openai") => "openai",
        Some("anthropic") => "anthropic",
        Some(other) => {
            return Err(format!(
                "unknown provider {other:?} (use openai or anthropic)"
            ));
        }
        None if env("ANTHROPIC_API_KEY").is_some()
            || configured(loaded, "providers.anthropic.api_key").is_some() =>
        {
            "anthropic"
        }
        None => "openai",
    };
    let (mut config, default_model) = match kind {
        "anthropic" => (
            ProviderConfig::anthropic_from_env(env),
            "claude-sonnet-4-20250514",
        ),
        _ => (ProviderConfig::openai_from_env(env), "gpt-4o"),
    };
    // A configured URL or key beats the provider's usual variable, which beats the default.
    if let Some(url) =
        configured(loaded, &format!("providers.{kind}.base_url")).and_then(|v| v.as_str())
    {
        config.base_url = url.trim_end_matches('/').to_owned();
    }
    if let Some(key) =
        configured(loaded, &format!("providers.{kind}.api_key")).and_then(|v| v.as_str())
    {
        config.api_key = Some(key.to_owned());
    }
    if let Some(n) = cfg.providers.get(kind).and_then(|p| p.max_concurrency) {
        config.max_concurrency = n.clamp(1, 1024) as usize;
    }
    tune(&mut config, &cfg.llm)?;
    if config.api_key.is_none() && chosen.is_none() {
        return Err("no model configured: set ANTHROPIC_API_KEY or OPENAI_API_KEY (with OPENAI_BASE_URL for another OpenAI-compatible server), configure providers in .warren/config.toml, or use --replay FILE".to_owned());
    }
    let model = a
        .model
        .clone()
        .or_else(|| cfg.agent.model.clone())
        .unwrap_or_else(|| default_model.into());
    let built: Arc<dyn Provider> = match &a.record {
        None => warren_llm::build(config).map_err(|e| e.to_string())?,
        Some(path) => {
            let inner = warren_llm::build(config).map_err(|e| e.to_string())?;
            Arc::new(warren_llm::record::Recorder::new(inner, path).map_err(|e| e.to_string())?)
        }
    };
    Ok((built, model))
}

/// Reliability settings of the `[llm]` section (also `WARREN__LLM__*`).
fn tune(config: &mut ProviderConfig, llm: &warren_config::LlmSection) -> Result<(), String> {
    let dur = |k: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
        v.as_deref()
            .map(|v| crate::policy::parse_duration(v).map_err(|e| format!("llm.{k}: {e}")))
            .transpose()
    };
    if let Some(d) = dur("idle_timeout", &llm.idle_timeout)? {
        config.idle_timeout = d;
    }
    if let Some(d) = dur("retry_base", &llm.retry_base)? {
        config.retry.base = d;
        config.retry.max_delay = config.retry.max_delay.max(d);
    }
    if let Some(n) = llm.max_attempts {
        config.retry.max_attempts = n.clamp(1, 100);
    }
    Ok(())
}

/// Host side of a task's namespace: `/task` (spec and status read-only, result writable) and
/// `/logs` (written by the host, read-only in the cell).
struct TaskDirs {
    task: PathBuf,
    logs: PathBuf,
}

impl TaskDirs {
    fn create(
        state: &Path,
        id: &str,
        spec: &serde_json::Value,
        owner: (u32, u32),
    ) -> std::io::Result<Self> {
        let root = state.join("tasks").join(id);
        let (task, logs) = (root.join("task"), root.join("logs"));
        std::fs::create_dir_all(&task)?;
        std::fs::create_dir_all(&logs)?;
        std::fs::write(
            task.join("spec.json"),
            serde_json::to_vec_pretty(spec).unwrap_or_default(),
        )?;
        std::fs::write(task.join("status"), "running\n")?;
        std::fs::write(task.join("result.json"), "")?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(task.join("result.json"), Some(owner.0), Some(owner.1))?;
        }
        Ok(TaskDirs { task, logs })
    }

    fn mounts(&self) -> Vec<Mount> {
        let bind = |target: &str, source: &Path, readonly: bool| Mount {
            target: target.into(),
            kind: MountKind::Bind {
                source: source.display().to_string(),
                readonly,
            },
        };
        vec![
            bind("/task", &self.task, true),
            bind("/task/result.json", &self.task.join("result.json"), false),
            bind("/logs", &self.logs, true),
        ]
    }

    fn set_status(&self, status: &str) {
        // Written in place: the cell's bind mount keeps pointing at this inode.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.task.join("status"))
        {
            let _ = writeln!(f, "{status}");
        }
    }
}

struct View {
    json: bool,
    started: Instant,
    at_line_start: bool,
}

impl View {
    fn show(&mut self, e: &AgentEvent) {
        if self.json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
            return;
        }
        let mut err = std::io::stderr().lock();
        match e {
            AgentEvent::Turn { turn } => {
                if !self.at_line_start {
                    let _ = writeln!(err);
                }
                let _ = writeln!(
                    err,
                    "── turn {turn} · {:.1}s",
                    self.started.elapsed().as_secs_f64()
                );
                self.at_line_start = true;
            }
            AgentEvent::Text { delta } => {
                let _ = write!(err, "{delta}");
                self.at_line_start = delta.ends_with('\n');
            }
            AgentEvent::Restart { reason } => {
                let _ = writeln!(err, "\n   (retrying the model call: {reason})");
                self.at_line_start = true;
            }
            AgentEvent::ToolCall {
                name, arguments, ..
            } => {
                if !self.at_line_start {
                    let _ = writeln!(err);
                }
                let args: String = arguments.chars().take(100).collect();
                let _ = writeln!(err, "  → {name} {args}");
                self.at_line_start = true;
            }
            AgentEvent::ToolResult {
                is_error,
                summary,
                chars,
                log,
                ..
            } => {
                let mark = if *is_error { "✗" } else { "✓" };
                let log = log
                    .as_ref()
                    .map_or(String::new(), |l| format!(" (full output: {l})"));
                let _ = writeln!(err, "    {mark} {summary} [{chars} chars]{log}");
            }
            AgentEvent::Usage { total, .. } => {
                let _ = writeln!(
                    err,
                    "    tokens: {} in ({} cached), {} out",
                    total.input_tokens, total.cached_input_tokens, total.output_tokens
                );
            }
            AgentEvent::Summarized {
                replaced,
                tokens_before,
                tokens_after,
            } => {
                let _ = writeln!(
                    err,
                    "    (context: {replaced} older messages summarized, ~{tokens_before} → ~{tokens_after} tokens)"
                );
            }
            AgentEvent::Finished { .. } | AgentEvent::Stopped { .. } => {}
        }
    }
}

/// `warren run`.
pub fn run(a: RunArgs, state: &Path) -> i32 {
    let refuse = |msg: String| {
        eprintln!("warren: {msg}");
        exit::REFUSED
    };
    let ws = a.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let host = match std::fs::canonicalize(&ws) {
        Ok(h) => h,
        Err(e) => return refuse(format!("workspace {}: {e}", ws.display())),
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match warren_config::load(&cwd, home.as_deref(), &vars) {
        Ok(l) => l,
        Err(e) => return refuse(e.to_string()),
    };
    let (provider, model) = match provider_for(&a, &loaded) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let id = warren_cell::process::new_cell_id();
    let mut spec = CellSpec::new(state);
    spec.id = Some(id.clone());
    spec.workspace = Some(Workspace {
        host: host.clone(),
        mode: WorkspaceMode::Cow,
    });
    let identity = warren_cell::spec::resolve_identity(&spec);
    let task_spec = serde_json::json!({"id": id, "goal": a.goal, "model": model});
    let dirs = match TaskDirs::create(state, &id, &task_spec, identity) {
        Ok(d) => d,
        Err(e) => return refuse(format!("task directory: {e}")),
    };
    spec.extra_mounts = dirs.mounts();
    let jail = match JailProgram::current_exe() {
        Ok(j) => j,
        Err(e) => return refuse(e.to_string()),
    };
    let cell = match ProcessCell::start(&spec, &jail) {
        Ok(c) => Arc::new(c),
        Err(e) => return refuse(e.to_string()),
    };
    let interrupted = crate::exec::stop_cell_on_signal(cell.info().supervisor_pid);
    if !a.json {
        eprintln!(
            "warren: task {id} · model {model} · workspace {}",
            host.display()
        );
    }
    let cfg = &loaded.config;
    let overrides = cfg
        .models
        .iter()
        .map(|(name, m)| {
            let base = warren_llm::catalog::Catalog::default().lookup(name);
            let info = warren_llm::catalog::ModelInfo {
                context_window: m.context_window.unwrap_or(base.context_window),
                input_per_mtok: m.input_per_mtok.unwrap_or(base.input_per_mtok),
                cached_input_per_mtok: m
                    .cached_input_per_mtok
                    .unwrap_or(base.cached_input_per_mtok),
                output_per_mtok: m.output_per_mtok.unwrap_or(base.output_per_mtok),
            };
            (name.clone(), info)
        })
        .collect();
    let catalog = warren_llm::catalog::Catalog::with_overrides(overrides);
    let context_window = cfg
        .llm
        .context_window
        .filter(|n| *n > 0)
        .unwrap_or_else(|| catalog.lookup(&model).context_window);
    let max_turns = a.max_turns.or(cfg.agent.max_turns).unwrap_or(30);
    let timeout = match (a.timeout, cfg.agent.timeout.as_deref()) {
        (Some(t), _) => t,
        (None, Some(t)) => match crate::policy::parse_duration(t) {
            Ok(t) => t,
            Err(e) => return refuse(format!("agent.timeout: {e}")),
        },
        (None, None) => Duration::from_secs(30 * 60),
    };
    let config = AgentConfig {
        model,
        context_window,
        max_turns,
        max_wall: timeout,
        budget_tokens: a.budget_tokens.or(cfg.agent.budget_tokens),
        ..AgentConfig::default()
    };
    let agent = Agent::new(
        provider,
        Arc::clone(&cell) as Arc<dyn Cell>,
        config,
        Some(dirs.logs.clone()),
    );
    let mut view = View {
        json: a.json,
        started: Instant::now(),
        at_line_start: true,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return refuse(e.to_string()),
    };
    let report = rt.block_on(agent.run(&a.goal, &mut |e| view.show(e)));
    drop(agent);
    let layer = cell.cow_layer().cloned();
    drop(cell); // kills the cell (last reference)
    let signal = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let (code, status) = match &report {
        Ok(r) => match &r.outcome {
            Outcome::Finished(result) => {
                let ok = result["success"].as_bool().unwrap_or(true);
                if !a.json {
                    eprintln!(
                        "\nresult: {}",
                        result["summary"].as_str().unwrap_or_default()
                    );
                }
                (
                    if ok { 0 } else { 1 },
                    if ok { "succeeded" } else { "failed" },
                )
            }
            Outcome::Stopped(reason) => {
                eprintln!("\nwarren: stopped: {reason}");
                (1, "stopped")
            }
        },
        Err(_) if signal != 0 => {
            eprintln!("\nwarren: interrupted by signal {signal}; the cell was stopped");
            (exit::for_signal(signal), "interrupted")
        }
        Err(e) => {
            eprintln!("\nwarren: {e}");
            (1, "failed")
        }
    };
    dirs.set_status(status);
    if let (Ok(r), false) = (&report, a.json) {
        {
            eprintln!(
                "turns: {} · tokens: {} in ({} cached), {} out · {:.1}s",
                r.turns,
                r.usage.input_tokens,
                r.usage.cached_input_tokens,
                r.usage.output_tokens,
                view.started.elapsed().as_secs_f64()
            );
        }
    }
    review(&a, &id, layer.as_ref(), &host, signal != 0);
    code
}

/// Show the diff stat and apply, keep or discard the changes.
fn review(
    a: &RunArgs,
    id: &str,
    layer: Option<&warren_cell::spec::CowLayer>,
    host: &Path,
    interrupted: bool,
) {
    let Some(layer) = layer else { return };
    let changes = cow::changes(layer, host).unwrap_or_default();
    if changes.is_empty() {
        let _ = cow::discard(layer);
        eprintln!("warren: no changes to the workspace");
        return;
    }
    eprintln!("changes ({}):", changes.len());
    for c in &changes {
        eprintln!("  {} {}", c.marker(), c.path().display());
    }
    let apply = if a.apply {
        true
    } else if a.no_apply || a.json || interrupted || !std::io::stdin().is_terminal() {
        false
    } else {
        eprint!("apply these changes to {}? [y/N] ", host.display());
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        matches!(line.trim(), "y" | "Y" | "yes")
    };
    if apply {
        match cow::apply(layer, host) {
            Ok(r) => {
                let _ = cow::discard(layer);
                eprintln!(
                    "warren: applied: {} written, {} removed",
                    r.written.len(),
                    r.removed.len()
                );
            }
            Err(e) => eprintln!("warren: apply failed, nothing was discarded: {e}"),
        }
    } else {
        eprintln!(
            "warren: changes kept as {id}: `warren diff {id}`, then `warren apply {id}` or `warren discard {id}`"
        );
    }
}
