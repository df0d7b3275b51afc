//! `warren task …` and `warren status`: clients of the daemon's API.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use crate::client::{self, CallError, Target};

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
            json!({"error": {"code": e.code, "message": e.message, "status": e.status}})
        );
    } else {
        eprintln!("warren: {e}");
    }
    match e.status {
        None => 3,
        Some(_) => 1,
    }
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

fn show_task(t: &Value) {
    println!("task     {}", t["id"].as_str().unwrap_or_default());
    println!(
        "agent    {} v{}",
        t["agent"].as_str().unwrap_or_default(),
        t["agent_version"]
    );
    println!("state    {}", t["state"].as_str().unwrap_or_default());
    if let Some(r) = t["reason"].as_str() {
        println!("reason   {}", crate::term::printable(r));
    }
    println!("goal     {}", t["goal"].as_str().unwrap_or_default());
    println!("priority {} · attempts {}", t["priority"], t["attempts"]);
    if let Some(w) = t["workspace"].as_str() {
        println!("workspace {w}");
    }
    println!(
        "created  {} · updated {}",
        ago(t["created_ms"].as_i64().unwrap_or(0)),
        ago(t["updated_ms"].as_i64().unwrap_or(0))
    );
}

/// One event for people.
fn render(e: &Value, at_line_start: &mut bool) {
    let p = &e["payload"];
    let mut out = std::io::stdout().lock();
    let nl = |out: &mut std::io::StdoutLock<'_>, at: &mut bool| {
        if !*at {
            let _ = writeln!(out);
            *at = true;
        }
    };
    match e["kind"].as_str().unwrap_or_default() {
        "agent.text" => {
            let t = p["text"].as_str().unwrap_or_default();
            let _ = write!(out, "{}", crate::term::printable(t));
            *at_line_start = t.ends_with('\n');
        }
        "agent.turn" => {
            nl(&mut out, at_line_start);
            let _ = writeln!(out, "── turn {}", p["turn"]);
        }
        "agent.tool_call" => {
            nl(&mut out, at_line_start);
            let args: String = p["arguments"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect();
            let _ = writeln!(
                out,
                "  → {} {}",
                crate::term::printable(p["name"].as_str().unwrap_or_default()),
                crate::term::printable(&args)
            );
        }
        "agent.tool_result" => {
            let mark = if p["is_error"].as_bool() == Some(true) {
                "✗"
            } else {
                "✓"
            };
            let _ = writeln!(
                out,
                "    {mark} {} [{} chars]",
                crate::term::printable(p["summary"].as_str().unwrap_or_default()),
                p["chars"]
            );
        }
        "agent.usage" => {
            let t = &p["total"];
            let _ = writeln!(
                out,
                "    tokens: {} in ({} cached), {} out",
                t["input_tokens"], t["cached_input_tokens"], t["output_tokens"]
            );
        }
        "agent.restart" => {
            nl(&mut out, at_line_start);
            let _ = writeln!(
                out,
                "   (retrying the model call: {})",
                crate::term::printable(p["reason"].as_str().unwrap_or_default())
            );
        }
        "agent.finished" => {
            nl(&mut out, at_line_start);
            let _ = writeln!(
                out,
                "result: {}",
                crate::term::printable(p["result"]["summary"].as_str().unwrap_or_default())
            );
        }
        "agent.stopped" => {
            nl(&mut out, at_line_start);
            let _ = writeln!(
                out,
                "stopped: {}",
                crate::term::printable(p["reason"].as_str().unwrap_or_default())
            );
        }
        "task.state" => {
            nl(&mut out, at_line_start);
            let reason = p["reason"]
                .as_str()
                .map(|r| format!(" ({})", crate::term::printable(r)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "[task {}]{reason}",
                p["to"].as_str().unwrap_or_default()
            );
        }
        "task.resumed" => {
            nl(&mut out, at_line_start);
            let _ = writeln!(out, "[task resumed from {} checkpoints]", p["checkpoints"]);
        }
        _ => {}
    }
}

/// One call whose JSON answer is printed as is with `--json`, or by `human`.
async fn show(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<&Value>,
    json: bool,
    human: impl FnOnce(&Value),
) -> i32 {
    match client::call_json(t, method, path, body).await {
        Ok(v) if json => {
            println!("{v}");
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
    let mut each = |e: &Value| {
        if json {
            println!("{e}");
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
            let v = client::call_json(
                t,
                Method::GET,
                &format!("/v1/tasks/{}/events?after={after}", enc(id)),
                None,
            )
            .await?;
            let list = v.as_array().cloned().unwrap_or_default();
            for e in &list {
                each(e);
                after = e["id"].as_i64().unwrap_or(after);
            }
            if list.len() < 1000 {
                return Ok(());
            }
        }
    }
}

/// Run a task subcommand.
pub fn run(cmd: TaskCommand, url: Option<&str>, state: &Path) -> i32 {
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
    rt.block_on(run_async(cmd, &target))
}

async fn run_async(cmd: TaskCommand, t: &Target) -> i32 {
    match cmd {
        TaskCommand::Submit {
            agent,
            goal,
            priority,
            workspace,
            no_workspace,
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
            let body = json!({"agent": agent, "goal": goal, "priority": priority, "workspace": ws});
            let task = match client::call_json(t, Method::POST, "/v1/tasks", Some(&body)).await {
                Ok(v) => v,
                Err(e) => return fail(json, &e),
            };
            let id = task["id"].as_str().unwrap_or_default().to_owned();
            if json {
                println!("{task}");
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
            match client::call_json(t, Method::GET, &format!("/v1/tasks/{}", enc(&id)), None).await
            {
                Ok(v) => {
                    let state = v["state"].as_str().unwrap_or_default();
                    if !json {
                        eprintln!(
                            "warren: task {id} {state}; `warren task diff {id}` shows its changes"
                        );
                    }
                    i32::from(state != "succeeded")
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
            show(t, Method::GET, &q, None, json, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    eprintln!("warren: no tasks");
                }
                for t in list {
                    let goal: String = t["goal"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(60)
                        .collect();
                    println!(
                        "{}  {:<18} {:<12} {:>9}  {goal}",
                        t["id"].as_str().unwrap_or_default(),
                        t["state"].as_str().unwrap_or_default(),
                        t["agent"].as_str().unwrap_or_default(),
                        ago(t["created_ms"].as_i64().unwrap_or(0)),
                    );
                }
            })
            .await
        }
        TaskCommand::Status { id, json } => {
            let path = format!("/v1/tasks/{}", enc(&id));
            show(t, Method::GET, &path, None, json, show_task).await
        }
        TaskCommand::Logs { id, follow, json } => match logs(t, &id, follow, json).await {
            Ok(()) => 0,
            Err(e) => fail(json, &e),
        },
        TaskCommand::Cancel { id, reason, json } => {
            let path = format!("/v1/tasks/{}/cancel", enc(&id));
            let body = json!({"reason": reason});
            show(t, Method::POST, &path, Some(&body), json, |v| {
                eprintln!(
                    "warren: task {id} {}",
                    v["state"].as_str().unwrap_or_default()
                );
            })
            .await
        }
        TaskCommand::Retry { id, fresh, json } => {
            let path = format!("/v1/tasks/{}/retry", enc(&id));
            let body = json!({"fresh": fresh});
            show(t, Method::POST, &path, Some(&body), json, |v| {
                eprintln!(
                    "warren: task {id} {} ({})",
                    v["state"].as_str().unwrap_or_default(),
                    crate::term::printable(v["reason"].as_str().unwrap_or_default())
                );
            })
            .await
        }
        TaskCommand::Result { id, json } => {
            let path = format!("/v1/tasks/{}/result", enc(&id));
            show(t, Method::GET, &path, None, json, |v| {
                let ok = v["success"].as_bool() == Some(true);
                println!(
                    "{}: {}",
                    if ok { "succeeded" } else { "failed" },
                    crate::term::printable(v["summary"].as_str().unwrap_or_default())
                );
                println!(
                    "turns {} · tokens {} in, {} out",
                    v["turns"], v["usage"]["input_tokens"], v["usage"]["output_tokens"]
                );
            })
            .await
        }
        TaskCommand::Approve { id, remember, json } => {
            let path = format!("/v1/tasks/{}/approve", enc(&id));
            let body = json!({"remember": remember});
            show(t, Method::POST, &path, Some(&body), json, |v| {
                eprintln!(
                    "warren: approved {} {}{}",
                    v["tool"].as_str().unwrap_or_default(),
                    v["argument"].as_str().unwrap_or_default(),
                    if remember { " (remembered)" } else { "" }
                );
            })
            .await
        }
        TaskCommand::Deny { id, reason, json } => {
            let path = format!("/v1/tasks/{}/deny", enc(&id));
            let body = json!({"reason": reason});
            show(t, Method::POST, &path, Some(&body), json, |v| {
                eprintln!(
                    "warren: denied {} {}",
                    v["tool"].as_str().unwrap_or_default(),
                    v["argument"].as_str().unwrap_or_default()
                );
            })
            .await
        }
        TaskCommand::Diff { id, json } => {
            match client::call(
                t,
                Method::GET,
                &format!("/v1/tasks/{}/diff", enc(&id)),
                None,
            )
            .await
            {
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
    match rt.block_on(client::call_json(&target, Method::GET, "/health", None)) {
        Ok(v) if json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            println!(
                "daemon   {} · version {} · worker {} · up {}s",
                v["status"].as_str().unwrap_or_default(),
                v["version"].as_str().unwrap_or_default(),
                v["worker"].as_str().unwrap_or_default(),
                v["uptime_s"]
            );
            println!(
                "tasks    {} running (at most {}), {} queued",
                v["running"], v["max_running"], v["queued"]
            );
            let tiers: Vec<&str> = v["tiers"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "tiers    {}",
                if tiers.is_empty() {
                    "none (see `warren check`)".to_owned()
                } else {
                    tiers.join(", ")
                }
            );
            0
        }
        Err(e) => {
            if json {
                println!("{}", json!({"status": "not_running", "error": e.message}));
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
    rt.block_on(async {
        match cmd {
            ApprovalsCommand::List { agent, json } => {
                let path = match agent {
                    Some(a) => format!("/v1/approvals?agent={}", enc(&a)),
                    None => "/v1/approvals".into(),
                };
                show(&target, Method::GET, &path, None, json, |v| {
                    let list = v.as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        eprintln!("warren: no remembered approvals");
                    }
                    for r in list {
                        println!(
                            "{:>4}  {:<12} {:<10} {}",
                            r["id"],
                            r["agent"].as_str().unwrap_or_default(),
                            r["tool"].as_str().unwrap_or_default(),
                            r["pattern"].as_str().unwrap_or_default()
                        );
                    }
                })
                .await
            }
            ApprovalsCommand::Remove { id, json } => {
                match client::call(
                    &target,
                    Method::DELETE,
                    &format!("/v1/approvals/{id}"),
                    None,
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
