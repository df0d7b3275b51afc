//! `warren run "GOAL"`: an agent works on a copy-on-write view of the project inside a cell;
//! the person watches, reviews the diff, and applies it (or not).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use warren_agent::{AgentEvent, Outcome};
use warren_cell::{JailProgram, cow};
use warren_llm::Provider;
use warren_protocol::exit;
use warren_runtime::capabilities::Layer;
use warren_runtime::cells::ProcessCells;
use warren_runtime::engine::{Engine, LocalTask, Options, Stop};
use warren_runtime::provider;
use warren_store::TaskState;

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
    #[arg(long, value_name = "DUR", value_parser = crate::exec_policy::parse_duration)]
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
    let chosen = a
        .provider
        .as_deref()
        .or(cfg.agent.provider.map(|p| p.as_str()));
    let kind = provider::kind(a.provider.as_deref(), loaded, &env).map_err(|e| e.to_string())?;
    let (config, default_model) = provider::config(kind, loaded, &env);
    if config.api_key.is_none() && chosen.is_none() {
        return Err("no model configured: set ANTHROPIC_API_KEY or OPENAI_API_KEY (with OPENAI_BASE_URL for another OpenAI-compatible server), configure providers in ~/.config/warren/config.toml, or use --replay FILE".to_owned());
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
        self.show_to(e, &mut std::io::stderr().lock());
    }

    /// Start a new line unless the last thing written (streamed text) ended one.
    fn new_line(&mut self, err: &mut dyn Write) {
        if !self.at_line_start {
            let _ = writeln!(err);
        }
        self.at_line_start = true;
    }

    fn show_to(&mut self, e: &AgentEvent, err: &mut dyn Write) {
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
                let _ = write!(err, "{}", crate::term::printable(delta));
                self.at_line_start = delta.ends_with('\n');
            }
            AgentEvent::Nudged { remaining, .. } => {
                self.new_line(err);
                let _ = writeln!(
                    err,
                    "    (no tool call: told to call one or finish; {remaining} more such answer(s) allowed)"
                );
            }
            AgentEvent::TextToolCalls { count, .. } => {
                self.new_line(err);
                let _ = writeln!(
                    err,
                    "    ({count} tool call(s) written as text, taken as calls)"
                );
            }
            AgentEvent::Restart { reason } => {
                let _ = writeln!(
                    err,
                    "\n   (retrying the model call: {})",
                    crate::term::printable(reason)
                );
                self.at_line_start = true;
            }
            AgentEvent::ToolCall {
                name, arguments, ..
            } => {
                if !self.at_line_start {
                    let _ = writeln!(err);
                }
                let args: String = arguments.chars().take(100).collect();
                let _ = writeln!(
                    err,
                    "  → {} {}",
                    crate::term::printable(name),
                    crate::term::printable(&args)
                );
                self.at_line_start = true;
            }
            AgentEvent::ToolResult {
                is_error,
                summary,
                chars,
                log,
                ..
            } => {
                self.new_line(err);
                let mark = if *is_error { "✗" } else { "✓" };
                let log = log
                    .as_ref()
                    .map_or(String::new(), |l| format!(" (full output: {l})"));
                let _ = writeln!(
                    err,
                    "    {mark} {} [{chars} chars]{log}",
                    crate::term::printable(summary)
                );
            }
            AgentEvent::Usage { total, .. } => {
                self.new_line(err);
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
                self.new_line(err);
                let _ = writeln!(
                    err,
                    "    (context: {replaced} older messages summarized, ~{tokens_before} → ~{tokens_after} tokens)"
                );
            }
            AgentEvent::Finished { .. } | AgentEvent::Stopped { .. } => {}
        }
    }
}

/// The manifest `warren run` runs: the agent's standard tools (no memory tools), a
/// copy-on-write workspace, the flags' limits. Everything else (provider, model, budgets,
/// prices) resolves exactly as for a deployed agent.
fn manifest(a: &RunArgs, model: &str) -> warren_config::manifest::Manifest {
    warren_config::manifest::Manifest {
        name: "warren-run".into(),
        description: "a task started by `warren run`".into(),
        provider: a.provider.clone(),
        model: Some(model.to_owned()),
        tools: warren_agent::tools::specs()
            .into_iter()
            .map(|s| s.name)
            .collect(),
        workspace: "cow".into(),
        tier: "process".into(),
        timeout: a.timeout,
        budget_tokens: a.budget_tokens,
        skills: vec!["*".into()],
        ..Default::default()
    }
}

/// `warren run`: one task, run in this process by the same runner as the daemon's tasks
/// (recorded in the state directory's store, journalled, audited, with the same events).
pub fn run(a: RunArgs, state: &Path) -> i32 {
    let refuse = |msg: String| {
        eprintln!("warren: {msg}");
        exit::REFUSED
    };
    // Before any thread exists: a signal stops the task (its cell killed, changes kept).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let stopper = stop_tx.clone();
    let interrupted = crate::exec::on_signal(move |sig| {
        let _ = stopper.send(Some(Stop::Signal(sig)));
    });
    let ws = a.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let host = match std::fs::canonicalize(&ws) {
        Ok(h) => h,
        Err(e) => return refuse(format!("workspace {}: {e}", ws.display())),
    };
    let loaded = match crate::load_config() {
        Ok(l) => l,
        Err(e) => return refuse(e.to_string()),
    };
    let (provider, model) = match provider_for(&a, &loaded) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let jail = match JailProgram::current_exe() {
        Ok(j) => j,
        Err(e) => return refuse(e.to_string()),
    };
    if let Err(e) = std::fs::create_dir_all(state) {
        return refuse(format!("{}: {e}", state.display()));
    }
    let store = match warren_store::sqlite::SqliteStore::open(&state.join("warren.db")) {
        Ok(s) => Arc::new(s) as Arc<dyn warren_store::Store>,
        Err(e) => return refuse(format!("the task store: {e}")),
    };
    let m = manifest(&a, &model);
    // Every skill the person has: theirs, the operator's, and the project's once trusted.
    let trusted = loaded.project.as_ref().is_some_and(|p| p.trusted);
    let skills = crate::skills::used_roots(Some(&host), trusted);
    let opts = Options {
        state_dir: state.to_owned(),
        work_dir: None,
        worker: format!("warren-run:{}", std::process::id()),
        limits: warren_runtime::scheduler::Limits::default(),
        lease: Duration::from_secs(30),
        cells: Arc::new(warren_runtime::wasicell::TieredCells {
            process: Arc::new(ProcessCells { jail }),
            wasi: Arc::new(warren_runtime::wasicell::WasiCells::new(Some(
                state.join("wasm-cache"),
            ))),
        }),
        provider: Some((provider, model.clone())),
        loaded,
        env: std::env::vars().collect(),
        max_attempts: 1,
        // The person at the terminal is the operator: every capability, but audited like
        // the daemon's tasks.
        policy: Layer::unrestricted("the person running warren"),
        max_turns: a.max_turns,
        approval_timeout: Duration::from_secs(3600),
        memory: None,
        audit_prompts: false,
        egress_resolve: Default::default(),
        egress_dial: Default::default(),
        skills,
        mcp_annotation_approval: true,
        plans: Default::default(),
    };
    let engine = Engine::local(store, opts);
    let id = warren_runtime::engine::new_task_id();
    if !a.json {
        eprintln!(
            "warren: task {id} · model {model} · workspace {}",
            host.display()
        );
    }
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
    let task = LocalTask {
        id: id.clone(),
        goal: a.goal.clone(),
        workspace: Some(host.display().to_string()),
        manifest: m,
        by: "warren run".into(),
    };
    let ended = rt.block_on(engine.run_local(task, (stop_tx, stop_rx), &mut |e| view.show(e)));
    let (task, report) = match ended {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    let signal = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let reason = task.reason.clone().unwrap_or_default();
    let code = match (&task.state, report.as_ref().map(|r| &r.outcome)) {
        (_, Some(Outcome::Finished(result))) => {
            if !a.json {
                eprintln!(
                    "\nresult: {}",
                    crate::term::printable(result["summary"].as_str().unwrap_or_default())
                );
            }
            if task.state == TaskState::Succeeded {
                0
            } else {
                1
            }
        }
        (_, Some(Outcome::Stopped(why))) => {
            eprintln!("\nwarren: stopped: {}", crate::term::printable(why));
            1
        }
        (TaskState::Failed, None) if reason.starts_with(warren_runtime::runner::TIMED_OUT) => {
            eprintln!("\nwarren: {}", crate::term::printable(&reason));
            exit::TIMEOUT
        }
        (TaskState::Interrupted, None) if signal != 0 => {
            eprintln!("\nwarren: interrupted by signal {signal}; the cell was stopped");
            exit::for_signal(signal)
        }
        (_, None) => {
            eprintln!("\nwarren: {}", crate::term::printable(&reason));
            1
        }
    };
    if let (Some(r), false) = (&report, a.json) {
        eprintln!(
            "turns: {} · tokens: {} in ({} cached), {} out · {:.1}s",
            r.turns,
            r.usage.input_tokens,
            r.usage.cached_input_tokens,
            r.usage.output_tokens,
            view.started.elapsed().as_secs_f64()
        );
    }
    let layer = warren_cell::spec::CowLayer::at(state, &id);
    review(
        &a,
        &id,
        layer.upper.exists().then_some(&layer),
        &host,
        signal != 0,
    );
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
    // Summarized: a task that touched 20 000 files prints a count and the first few.
    eprint!("{}", crate::exec::change_summary(&changes, id));
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
        match crate::exec::apply_layer(layer, host) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_line_starts_a_line_after_streamed_text_without_one() {
        let mut v = View {
            json: false,
            started: Instant::now(),
            at_line_start: true,
        };
        let mut out = Vec::new();
        v.show_to(
            &AgentEvent::Text {
                delta: "no newline at the end".into(),
            },
            &mut out,
        );
        v.show_to(
            &AgentEvent::Usage {
                turn: Default::default(),
                total: Default::default(),
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "no newline at the end\n    tokens: 0 in (0 cached), 0 out\n"
        );
    }
}
