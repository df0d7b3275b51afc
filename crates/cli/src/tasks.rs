//! `warren task …` and `warren status`: clients of the daemon's API.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use warren_protocol::api::{
    ApprovalView, ApproveTask, CancelTask, DenyTask, EventKind, EventView, Health, PlanView,
    RetryTask, RuleView, SubmitTask, TaskState, TaskView,
};

use crate::client::{self, CallError, NO_BODY, Target};

/// `warren task …`.
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Queue a task for a deployed agent.
    Submit {
        /// Agent name.
        agent: String,
        /// What the agent should achieve.
        goal: String,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// The project the agent works on, copy-on-write (default: the current directory).
        #[arg(long, value_name = "DIR", conflicts_with = "no_workspace")]
        workspace: Option<PathBuf>,
        /// Give the task no project (an empty scratch workspace).
        #[arg(long)]
        no_workspace: bool,
        /// Plan first: AGENT is the planner; its plan's steps run as child tasks (see
        /// `warren plan show ID`).
        #[arg(long)]
        plan: bool,
        /// Stream the task's events until it ends; exit 0 only if it succeeded.
        #[arg(long)]
        follow: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List tasks, newest first.
    List {
        /// Only this state (queued, running, succeeded, failed, cancelled, interrupted, …).
        #[arg(long)]
        state: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One task's state.
    Status {
        /// Task id.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A task's events (model text, tool calls and results, state changes).
    Logs {
        /// Task id.
        id: String,
        /// Keep streaming until the task ends.
        #[arg(short, long)]
        follow: bool,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running task (its cell is killed).
    Cancel {
        /// Task id.
        id: String,
        /// Recorded with the cancellation.
        #[arg(long)]
        reason: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed, cancelled or interrupted task again (resuming where it stopped).
    Retry {
        /// Task id.
        id: String,
        /// Start over instead of resuming.
        #[arg(long)]
        fresh: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A finished task's result.
    Result {
        /// Task id.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Approve the call a paused task waits for.
    Approve {
        /// Task id.
        id: String,
        /// Remember: this agent's calls of this tool with this exact argument run without
        /// asking again (`warren approvals list|remove`).
        #[arg(long)]
        remember: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Deny the call a paused task waits for (the model is told why).
    Deny {
        /// Task id.
        id: String,
        /// Told to the model.
        #[arg(long)]
        reason: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A task's changes to its workspace, as a unified diff.
    Diff {
        /// Task id.
        id: String,
        /// `{"id": …, "diff": …}` instead of the bare diff.
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn fail(json: bool, e: &CallError) -> i32 {
    if json {
        println!(
            "{}",
            json!({"error": {"code": e.code(), "message": e.message(), "status": e.status()}})
        );
    } else {
        eprintln!("warren: {e}");
    }
    e.exit_code()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn show_task(t: &TaskView) {
    println!("task     {}", t.id);
    println!("agent    {} v{}", t.agent, t.agent_version);
    println!("state    {}", t.state.as_str());
    if let Some(r) = &t.reason {
        println!("reason   {}", crate::term::printable(r));
    }
    println!("goal     {}", t.goal);
    println!("priority {} · attempts {}", t.priority, t.attempts);
    if let Some(w) = &t.workspace {
        println!("workspace {w}");
    }
    println!(
        "created  {} · updated {}",
        ago(t.created_ms),
        ago(t.updated_ms)
    );
}

/// The parts of event payloads that `warren task logs` shows. A payload is free-form JSON
/// (the agent loop's own event, or the store's state move); one that does not have the
/// expected shape shows as empty values.
mod payload {
    use serde::Deserialize;
    use warren_llm::Usage;

    /// `plan.created`, `plan.replanned`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Planned {
        pub revision: u32,
        pub steps: Vec<String>,
        pub kept: Vec<String>,
    }

    /// `plan.step`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Step {
        pub step: String,
        pub task: String,
        pub state: String,
        pub reason: Option<String>,
    }

    /// `delegate.started`, `delegate.ended`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Child {
        pub child: String,
        pub goal: String,
        pub state: String,
        pub reason: Option<String>,
    }

    /// `agent.validation`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Validation {
        pub iteration: u32,
        pub passed: bool,
        pub checks: Vec<Check>,
    }

    /// One check of `agent.validation`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Check {
        pub passed: bool,
        pub note: String,
    }

    /// `agent.text`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Text {
        pub text: String,
    }

    /// `agent.turn`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Turn {
        pub turn: u64,
    }

    /// `agent.tool_call`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct ToolCall {
        pub name: String,
        pub arguments: String,
    }

    /// `agent.tool_result`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct ToolResult {
        pub is_error: bool,
        pub summary: String,
        pub chars: u64,
    }

    /// `agent.usage`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct UsageSoFar {
        pub total: Usage,
    }

    /// `agent.restart`, `agent.stopped` and the reason of `task.state`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Reason {
        pub reason: String,
    }

    /// `agent.finished`: what the model reported.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Finished {
        pub result: Summary,
    }

    /// A summary, as `finish` reports and a task's result holds.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Summary {
        pub summary: String,
    }

    /// `task.state`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct StateMove {
        pub to: String,
        pub reason: Option<String>,
    }

    /// `task.resumed`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct Resumed {
        pub checkpoints: u64,
    }

    /// `GET /v1/tasks/{id}/result` (stored by the runtime; `--json` prints it whole).
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub struct TaskResult {
        pub success: bool,
        pub summary: String,
        pub turns: u64,
        pub usage: Usage,
    }

    /// `value` as `T`, or `T`'s empty values when it has another shape.
    pub fn of<T: Default + serde::de::DeserializeOwned>(value: &serde_json::Value) -> T {
        T::deserialize(value).unwrap_or_default()
    }
}

/// One event for people.
fn render(e: &EventView, at_line_start: &mut bool) {
    use payload::of;
    let p = &e.payload;
    let mut out = std::io::stdout().lock();
    let nl = |out: &mut std::io::StdoutLock<'_>, at: &mut bool| {
        if !*at {
            let _ = writeln!(out);
            *at = true;
        }
    };
    match &e.kind {
        EventKind::AgentText => {
            let t: payload::Text = of(p);
            let _ = write!(out, "{}", crate::term::printable(&t.text));
            *at_line_start = t.text.ends_with('\n');
        }
        EventKind::AgentTurn => {
            nl(&mut out, at_line_start);
            let t: payload::Turn = of(p);
            let _ = writeln!(out, "── turn {}", t.turn);
        }
        EventKind::AgentToolCall => {
            nl(&mut out, at_line_start);
            let c: payload::ToolCall = of(p);
            let args: String = c.arguments.chars().take(100).collect();
            let _ = writeln!(
                out,
                "  → {} {}",
                crate::term::printable(&c.name),
                crate::term::printable(&args)
            );
        }
        EventKind::AgentToolResult => {
            let r: payload::ToolResult = of(p);
            let mark = if r.is_error { "✗" } else { "✓" };
            let _ = writeln!(
                out,
                "    {mark} {} [{} chars]",
                crate::term::printable(&r.summary),
                r.chars
            );
        }
        EventKind::AgentUsage => {
            let t = of::<payload::UsageSoFar>(p).total;
            let _ = writeln!(
                out,
                "    tokens: {} in ({} cached), {} out",
                t.input_tokens, t.cached_input_tokens, t.output_tokens
            );
        }
        EventKind::AgentRestart => {
            nl(&mut out, at_line_start);
            let r: payload::Reason = of(p);
            let _ = writeln!(
                out,
                "   (retrying the model call: {})",
                crate::term::printable(&r.reason)
            );
        }
        EventKind::AgentFinished => {
            nl(&mut out, at_line_start);
            let f: payload::Finished = of(p);
            let _ = writeln!(out, "result: {}", crate::term::printable(&f.result.summary));
        }
        EventKind::AgentStopped => {
            nl(&mut out, at_line_start);
            let r: payload::Reason = of(p);
            let _ = writeln!(out, "stopped: {}", crate::term::printable(&r.reason));
        }
        EventKind::TaskState => {
            nl(&mut out, at_line_start);
            let m: payload::StateMove = of(p);
            let reason = m
                .reason
                .map(|r| format!(" ({})", crate::term::printable(&r)))
                .unwrap_or_default();
            let _ = writeln!(out, "[task {}]{reason}", m.to);
        }
        EventKind::TaskResumed => {
            nl(&mut out, at_line_start);
            let r: payload::Resumed = of(p);
            let _ = writeln!(out, "[task resumed from {} checkpoints]", r.checkpoints);
        }
        EventKind::PlanCreated | EventKind::PlanReplanned => {
            nl(&mut out, at_line_start);
            let pl: payload::Planned = of(p);
            let kept = if pl.kept.is_empty() {
                String::new()
            } else {
                format!(", kept {}", pl.kept.join(", "))
            };
            let _ = writeln!(
                out,
                "[plan revision {}: {}{kept}]",
                pl.revision,
                crate::term::printable(&pl.steps.join(", "))
            );
        }
        EventKind::PlanStep => {
            nl(&mut out, at_line_start);
            let st: payload::Step = of(p);
            let reason = st
                .reason
                .map(|r| format!(" ({})", crate::term::printable(&r)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "[step {} {} {}]{reason}",
                crate::term::printable(&st.step),
                st.state,
                st.task
            );
        }
        EventKind::DelegateStarted | EventKind::DelegateEnded => {
            nl(&mut out, at_line_start);
            let c: payload::Child = of(p);
            if c.state.is_empty() {
                let goal: String = c.goal.chars().take(100).collect();
                let _ = writeln!(
                    out,
                    "  ⇢ child {}: {}",
                    c.child,
                    crate::term::printable(&goal)
                );
            } else {
                let reason = c
                    .reason
                    .map(|r| format!(" ({})", crate::term::printable(&r)))
                    .unwrap_or_default();
                let _ = writeln!(out, "  ⇠ child {} {}{reason}", c.child, c.state);
            }
        }
        EventKind::AgentValidation => {
            nl(&mut out, at_line_start);
            let v: payload::Validation = of(p);
            let mark = if v.passed { "✓" } else { "✗" };
            let note = v
                .checks
                .iter()
                .find(|c| !c.passed)
                .or(v.checks.last())
                .map(|c| c.note.lines().next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {mark} validation {}: {}",
                v.iteration,
                crate::term::printable(&note)
            );
        }
        _ => {}
    }
}

/// One call whose answer (a `warren_protocol::api` type) is printed as JSON with `--json`,
/// or by `human`.
async fn show<T: DeserializeOwned + Serialize, B: Serialize + ?Sized>(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&B>,
    json: bool,
    human: impl FnOnce(&T),
) -> i32 {
    match client::call_as::<T, B>(t, method, path, body).await {
        Ok(v) if json => {
            println!("{}", client::json_line(&v));
            0
        }
        Ok(v) => {
            human(&v);
            0
        }
        Err(e) => fail(json, &e),
    }
}

async fn logs(t: &Target, id: &str, follow: bool, json: bool) -> Result<(), CallError> {
    let mut at = true;
    let mut each = |e: &EventView| {
        if json {
            println!("{}", client::json_line(e));
        } else {
            render(e, &mut at);
        }
    };
    if follow {
        client::follow(
            t,
            &format!("/v1/tasks/{}/events/stream", enc(id)),
            0,
            &mut each,
        )
        .await
    } else {
        let mut after = 0;
        loop {
            let list: Vec<EventView> = client::call_as(
                t,
                Method::GET,
                &format!("/v1/tasks/{}/events?after={after}", enc(id)),
                NO_BODY,
            )
            .await?;
            for e in &list {
                each(e);
                after = e.id;
            }
            if list.len() < 1000 {
                return Ok(());
            }
        }
    }
}

/// Run a task subcommand.
pub fn run(cmd: TaskCommand, url: Option<&str>, state: &Path) -> i32 {
    match connect(url, state) {
        Ok((target, rt)) => rt.block_on(run_async(cmd, &target)),
        Err(code) => code,
    }
}

/// The daemon target and a runtime to call it on, or the exit code of why not.
fn connect(url: Option<&str>, state: &Path) -> Result<(Target, tokio::runtime::Runtime), i32> {
    let target = client::target(url, state).map_err(|e| {
        eprintln!("warren: {e}");
        2
    })?;
    let rt = runtime().map_err(|e| {
        eprintln!("warren: {e}");
        1
    })?;
    Ok((target, rt))
}

async fn run_async(cmd: TaskCommand, t: &Target) -> i32 {
    match cmd {
        TaskCommand::Submit {
            agent,
            goal,
            priority,
            workspace,
            no_workspace,
            plan,
            follow,
            json,
        } => {
            let ws = if no_workspace {
                None
            } else {
                let dir = workspace.unwrap_or_else(|| PathBuf::from("."));
                match std::fs::canonicalize(&dir) {
                    Ok(p) => Some(p.display().to_string()),
                    Err(e) => {
                        eprintln!("warren: workspace {}: {e}", dir.display());
                        return 2;
                    }
                }
            };
            let body = SubmitTask {
                agent,
                goal,
                priority,
                workspace: ws,
                plan,
            };
            let task: TaskView =
                match client::call_as(t, Method::POST, "/v1/tasks", Some(&body)).await {
                    Ok(v) => v,
                    Err(e) => return fail(json, &e),
                };
            let id = task.id.clone();
            if json {
                println!("{}", client::json_line(&task));
            } else if follow {
                eprintln!("warren: task {id} queued");
            } else {
                println!("{id}");
            }
            if !follow {
                return 0;
            }
            if let Err(e) = logs(t, &id, true, json).await {
                return fail(json, &e);
            }
            let path = format!("/v1/tasks/{}", enc(&id));
            match client::call_as::<TaskView, _>(t, Method::GET, &path, NO_BODY).await {
                Ok(v) => {
                    if !json {
                        eprintln!(
                            "warren: task {id} {}; `warren task diff {id}` shows its changes",
                            v.state.as_str()
                        );
                    }
                    i32::from(v.state != TaskState::Succeeded)
                }
                Err(e) => fail(json, &e),
            }
        }
        TaskCommand::List {
            state,
            agent,
            limit,
            json,
        } => {
            let mut q = format!("/v1/tasks?limit={limit}");
            if let Some(s) = state {
                q.push_str(&format!("&state={}", enc(&s)));
            }
            if let Some(a) = agent {
                q.push_str(&format!("&agent={}", enc(&a)));
            }
            show(t, Method::GET, &q, NO_BODY, json, |list: &Vec<TaskView>| {
                if list.is_empty() {
                    eprintln!("warren: no tasks");
                }
                for t in list {
                    let goal: String = t.goal.chars().take(60).collect();
                    println!(
                        "{}  {:<18} {:<12} {:>9}  {goal}",
                        t.id,
                        t.state.as_str(),
                        t.agent,
                        ago(t.created_ms),
                    );
                }
            })
            .await
        }
        TaskCommand::Status { id, json } => {
            let path = format!("/v1/tasks/{}", enc(&id));
            show(t, Method::GET, &path, NO_BODY, json, show_task).await
        }
        TaskCommand::Logs { id, follow, json } => match logs(t, &id, follow, json).await {
            Ok(()) => 0,
            Err(e) => fail(json, &e),
        },
        TaskCommand::Cancel { id, reason, json } => {
            let path = format!("/v1/tasks/{}/cancel", enc(&id));
            let body = CancelTask { reason };
            show(t, Method::POST, &path, Some(&body), json, |v: &TaskView| {
                eprintln!("warren: task {id} {}", v.state.as_str());
            })
            .await
        }
        TaskCommand::Retry { id, fresh, json } => {
            let path = format!("/v1/tasks/{}/retry", enc(&id));
            let body = RetryTask { fresh };
            show(t, Method::POST, &path, Some(&body), json, |v: &TaskView| {
                eprintln!(
                    "warren: task {id} {} ({})",
                    v.state.as_str(),
                    crate::term::printable(v.reason.as_deref().unwrap_or_default())
                );
            })
            .await
        }
        TaskCommand::Result { id, json } => {
            let path = format!("/v1/tasks/{}/result", enc(&id));
            // Free-form JSON (the runtime's outcome with the model's own report): printed
            // whole with `--json`.
            show(t, Method::GET, &path, NO_BODY, json, |v: &Value| {
                let r: payload::TaskResult = payload::of(v);
                println!(
                    "{}: {}",
                    if r.success { "succeeded" } else { "failed" },
                    crate::term::printable(&r.summary)
                );
                println!(
                    "turns {} · tokens {} in, {} out",
                    r.turns, r.usage.input_tokens, r.usage.output_tokens
                );
            })
            .await
        }
        TaskCommand::Approve { id, remember, json } => {
            let path = format!("/v1/tasks/{}/approve", enc(&id));
            let body = ApproveTask { remember };
            show(
                t,
                Method::POST,
                &path,
                Some(&body),
                json,
                |v: &ApprovalView| {
                    eprintln!(
                        "warren: approved {} {}{}",
                        v.tool,
                        v.argument,
                        if remember { " (remembered)" } else { "" }
                    );
                },
            )
            .await
        }
        TaskCommand::Deny { id, reason, json } => {
            let path = format!("/v1/tasks/{}/deny", enc(&id));
            let body = DenyTask { reason };
            show(
                t,
                Method::POST,
                &path,
                Some(&body),
                json,
                |v: &ApprovalView| {
                    eprintln!("warren: denied {} {}", v.tool, v.argument);
                },
            )
            .await
        }
        TaskCommand::Diff { id, json } => {
            let path = format!("/v1/tasks/{}/diff", enc(&id));
            match client::call(t, Method::GET, &path, NO_BODY).await {
                Ok(b) if json => {
                    println!("{}", json!({"id": id, "diff": String::from_utf8_lossy(&b)}));
                    0
                }
                Ok(b) => {
                    let _ = std::io::stdout().write_all(&b);
                    0
                }
                Err(e) => fail(json, &e),
            }
        }
    }
}

/// `warren status`: the daemon's health and counts, and this host's tiers.
pub fn status(url: Option<&str>, state: &Path, json: bool) -> i32 {
    let target = match client::target(url, state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warren: {e}");
            return 2;
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: {e}");
            return 1;
        }
    };
    match rt.block_on(client::call_as::<Health, _>(
        &target,
        Method::GET,
        "/health",
        NO_BODY,
    )) {
        Ok(v) if json => {
            println!("{}", client::json_line(&v));
            0
        }
        Ok(v) => {
            println!(
                "daemon   {} · version {} · worker {} · up {}s",
                v.status, v.version, v.worker, v.uptime_s
            );
            println!(
                "tasks    {} running (at most {}), {} queued",
                v.running, v.max_running, v.queued
            );
            println!(
                "tiers    {}",
                if v.tiers.is_empty() {
                    "none (see `warren check`)".to_owned()
                } else {
                    v.tiers.join(", ")
                }
            );
            0
        }
        Err(e) => {
            if json {
                println!("{}", json!({"status": "not_running", "error": e.message()}));
            } else {
                eprintln!("warren: daemon not running: {e}");
            }
            3
        }
    }
}

/// `warren approvals …`: remembered approvals.
#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Remembered approvals (narrow rules: agent, tool, argument pattern).
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Forget one.
    Remove {
        /// Rule id (from `list`).
        id: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Run an approvals subcommand.
pub fn approvals(cmd: ApprovalsCommand, url: Option<&str>, state: &Path) -> i32 {
    let (target, rt) = match connect(url, state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    rt.block_on(async {
        match cmd {
            ApprovalsCommand::List { agent, json } => {
                let path = match agent {
                    Some(a) => format!("/v1/approvals?agent={}", enc(&a)),
                    None => "/v1/approvals".into(),
                };
                show(
                    &target,
                    Method::GET,
                    &path,
                    NO_BODY,
                    json,
                    |list: &Vec<RuleView>| {
                        if list.is_empty() {
                            eprintln!("warren: no remembered approvals");
                        }
                        for r in list {
                            // The id unpadded, as earlier versions printed it.
                            println!("{}  {:<12} {:<10} {}", r.id, r.agent, r.tool, r.pattern);
                        }
                    },
                )
                .await
            }
            ApprovalsCommand::Remove { id, json } => {
                match client::call(
                    &target,
                    Method::DELETE,
                    &format!("/v1/approvals/{id}"),
                    NO_BODY,
                )
                .await
                {
                    Ok(_) if json => {
                        println!("{}", json!({"removed": id}));
                        0
                    }
                    Ok(_) => {
                        eprintln!("warren: removed approval rule {id}");
                        0
                    }
                    Err(e) => fail(json, &e),
                }
            }
        }
    })
}

/// `warren plan …`.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Draw a plan task's steps as a graph, with each step's state and task.
    Show {
        /// The plan task.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `warren plan …` against the daemon.
pub fn plan(cmd: PlanCommand, url: Option<&str>, state: &Path) -> i32 {
    let (target, rt) = match connect(url, state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let PlanCommand::Show { id, json } = cmd;
    rt.block_on(show(
        &target,
        Method::GET,
        &format!("/v1/plans/{}", enc(&id)),
        NO_BODY,
        json,
        |p: &PlanView| print!("{}", draw_plan(p)),
    ))
}

/// A plan as text: one line per step, indented by its level in the graph (the longest chain
/// of dependencies before it), with its state, task and what it waits for.
pub fn draw_plan(p: &PlanView) -> String {
    let mut out = format!(
        "plan {} ({}{}): {}\n",
        p.task,
        p.state.as_str(),
        p.revision
            .map(|r| format!(", revision {r}"))
            .unwrap_or_else(|| ", planning".into()),
        p.goal.lines().next().unwrap_or_default()
    );
    let mut level: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    // Steps arrive in the plan's order; levels settle in at most as many rounds as steps.
    for _ in 0..p.steps.len() {
        for s in &p.steps {
            let l = s
                .depends_on
                .iter()
                .map(|d| level.get(d.as_str()).map_or(1, |x| x + 1))
                .max()
                .unwrap_or(0);
            level.insert(&s.id, l);
        }
    }
    let mut steps: Vec<_> = p.steps.iter().collect();
    steps.sort_by_key(|s| level.get(s.id.as_str()).copied().unwrap_or(0));
    for s in steps {
        let l = level.get(s.id.as_str()).copied().unwrap_or(0);
        let mark = match s.state.as_str() {
            "succeeded" => "✓",
            "failed" | "blocked" | "cancelled" => "✗",
            "running" | "awaiting_approval" => "▶",
            _ => "·",
        };
        out.push_str(&format!(
            "{}{mark} {} [{}] {}{}",
            "  ".repeat(l + 1),
            s.id,
            s.role,
            s.state,
            s.task.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
        ));
        if s.attempts > 1 {
            out.push_str(&format!(" (attempt {})", s.attempts));
        }
        if !s.depends_on.is_empty() {
            out.push_str(&format!(" ← {}", s.depends_on.join(", ")));
        }
        out.push('\n');
        if matches!(s.state.as_str(), "failed" | "cancelled")
            && let Some(r) = &s.reason
        {
            out.push_str(&format!("{}  {r}\n", "  ".repeat(l + 1)));
        }
    }
    out
}
