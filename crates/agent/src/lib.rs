//! Warren's agent loop: the host keeps the brain, the cell has the hands.
//!
//! [`Agent::run`] sends the goal, the system prompt and the tool schemas to a model; validates
//! every tool call's arguments against the tool's JSON Schema (telling the model exactly what
//! was wrong when they do not match); executes valid calls inside the task's cell through
//! [`tools::Tools`] — read-only tools of one turn in parallel — and appends the results, until
//! the model calls `finish` or a limit is reached (turns, wall time, token budget). A repeat
//! guard stops a task whose model keeps making the same failing call. Output too large for
//! the model is truncated for it, and the full text is written to the task's logs, which the
//! cell sees read-only at `/logs`.
//!
//! When a request would fill `summarize_at` (85%) of the model's context window, the model
//! condenses the older turns into a summary; the goal and the latest turns stay verbatim, and
//! a tool call is never separated from its results.

pub mod tools;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use warren_cell::Cell;
use warren_llm::{ChatRequest, LlmError, Message, Provider, StreamEvent, ToolCall, Usage};

use crate::tools::{ToolOutput, Tools};

/// Limits and model settings of one task.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Model name (passed through).
    pub model: String,
    /// System prompt.
    pub system_prompt: String,
    /// At most this many model turns.
    pub max_turns: u32,
    /// Wall-clock limit.
    pub max_wall: Duration,
    /// Stop once this many tokens (input + output) were used.
    pub budget_tokens: Option<u64>,
    /// `max_tokens` of each model call.
    pub max_tokens_per_turn: u32,
    /// Identical failing calls tolerated before the task is stopped.
    pub max_repeated_failures: u32,
    /// The model's context window in tokens (from the catalog).
    pub context_window: u32,
    /// Summarize older turns once a request would fill this fraction of the window.
    pub summarize_at: f64,
    /// Messages at the end of the conversation always kept verbatim.
    pub keep_recent: usize,
    /// Cost budget in USD, priced by `prices` (the model's catalog entry).
    pub budget_usd: Option<f64>,
    /// Prices of the model, for the cost budget.
    pub prices: Option<warren_llm::catalog::ModelInfo>,
    /// Only these tools are offered and accepted (a manifest's `tools`); `finish` always is.
    /// `None`: every tool.
    pub tools: Option<Vec<String>>,
    /// Destinations the task's cell may reach through its egress proxy (empty: no network).
    /// The shell tool's description says so; the default system prompt comes from
    /// [`system_prompt`] with the same list.
    pub network: Vec<String>,
}

/// The default system prompt. It contains nothing that varies between machines or runs, so a
/// recorded transcript replays anywhere.
pub const SYSTEM_PROMPT: &str = "You are Warren's coding agent. You work inside an isolated cell: \
the project is at /workspace (a copy-on-write view: your changes are reviewed by a person before \
they are applied), /tmp is scratch space, /task/spec.json describes the task, and there is no \
network. Use the tools to inspect and change files and to run commands. Keep changes minimal and \
focused on the goal. When the goal is reached, or you cannot make progress, call finish with a \
short summary.";

/// The default system prompt for a cell whose egress proxy allows `network`: exactly
/// [`SYSTEM_PROMPT`] without network (recorded transcripts of such tasks replay unchanged);
/// with network, it names the proxy, the destinations it allows and `/cap/http`.
pub fn system_prompt(network: &[String]) -> String {
    if network.is_empty() {
        return SYSTEM_PROMPT.into();
    }
    SYSTEM_PROMPT.replacen(
        "and there is no network.",
        &format!(
            "and the network is reachable only through an HTTP(S) proxy (HTTP_PROXY and \
HTTPS_PROXY are set; curl, pip, git and most tools use them) that allows these destinations and \
nothing else: {}. /cap/http offers the same requests as files (see /cap/http/README).",
            network.join(", ")
        ),
        1,
    )
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            model: String::new(),
            system_prompt: SYSTEM_PROMPT.into(),
            max_turns: 30,
            max_wall: Duration::from_secs(30 * 60),
            budget_tokens: None,
            max_tokens_per_turn: 4096,
            max_repeated_failures: 3,
            context_window: 128_000,
            summarize_at: 0.85,
            keep_recent: 6,
            tools: None,
            budget_usd: None,
            prices: None,
            network: Vec::new(),
        }
    }
}

/// What the loop reports as it runs (`warren run --json` prints these as NDJSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A model turn begins.
    Turn {
        /// 1-based.
        turn: u32,
    },
    /// Model text as it streams.
    Text {
        /// The fragment.
        delta: String,
    },
    /// The provider retried and the text of this turn so far is void.
    Restart {
        /// Why.
        reason: String,
    },
    /// A tool call is about to run.
    ToolCall {
        /// Turn.
        turn: u32,
        /// Tool name.
        name: String,
        /// Raw arguments.
        arguments: String,
    },
    /// A tool call finished.
    ToolResult {
        /// Turn.
        turn: u32,
        /// Tool name.
        name: String,
        /// Failed?
        is_error: bool,
        /// First line of the result.
        summary: String,
        /// Characters of the full result.
        chars: usize,
        /// Where the full result was written, when truncated for the model.
        log: Option<String>,
    },
    /// Tokens used so far.
    Usage {
        /// This turn's usage.
        turn: Usage,
        /// The task's total.
        total: Usage,
    },
    /// Older turns were replaced by a summary written by the model.
    Summarized {
        /// Messages replaced.
        replaced: usize,
        /// Estimated tokens of the request before.
        tokens_before: u64,
        /// Estimated tokens after.
        tokens_after: u64,
    },
    /// The model called `finish`.
    Finished {
        /// What it reported.
        result: Value,
    },
    /// The loop stopped without `finish`.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The model called `finish`.
    Finished(Value),
    /// A limit or guard stopped it.
    Stopped(String),
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Model turns taken.
    pub turns: u32,
    /// Tokens used.
    pub usage: Usage,
}

/// Errors that end a run abnormally (limits are not errors: see [`Outcome::Stopped`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model provider failed after its retries.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// Writing the task's logs failed.
    #[error("task logs: {0}")]
    Logs(String),
    /// The journal could not be read or written (the task cannot continue durably).
    #[error("task journal: {0}")]
    Journal(String),
}

/// One durable step of a task, written before it is acted on (see [`Journal`]).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A model response, recorded before its tool calls run.
    Model {
        /// The response.
        response: warren_llm::ChatResponse,
    },
    /// Older turns were replaced by this summary.
    Summary {
        /// Messages replaced (after the goal).
        replaced: usize,
        /// The summary text.
        text: String,
    },
    /// A tool that changes things is about to run (a crash now leaves its effect unknown).
    ToolStarted {
        /// The call.
        call_id: String,
    },
    /// A tool's result, recorded before the model sees it.
    Tool {
        /// The call.
        call_id: String,
        /// What the model is told.
        content: String,
        /// Failed?
        is_error: bool,
        /// Set by `finish`.
        finished: Option<Value>,
    },
}

/// Where a task's steps are made durable (the store's checkpoints, in the daemon). A task
/// resumed with its journal replays the recorded steps — recorded model turns are not paid
/// for again and completed tool calls are not run again — then continues live.
pub trait Journal: Send + Sync {
    /// The steps recorded so far, in order.
    fn load(&self) -> Result<Vec<Step>, String>;
    /// Record step number `seq` (0, 1, 2, …) durably before returning.
    fn record(&self, seq: u64, step: &Step) -> Result<(), String>;
}

/// The one choke point every tool call passes, and where model calls are reported: policy
/// and audit live behind it, in the host. A refused call runs nothing; the model is told why.
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// A validated call is about to run: `Ok(capability)` lets it run (the handle of the
    /// capability that allowed it is recorded with it), `Err(reason)` refuses it.
    fn check(&self, tool: &str, args: &Value) -> Result<String, String>;
    /// Whether an allowed call must wait for a person first: the reason to show them.
    fn needs_approval(&self, _tool: &str, _args: &Value) -> Option<String> {
        None
    }
    /// Wait for a person's decision on a call: `Ok` runs it, `Err(reason)` refuses it.
    async fn ask(
        &self,
        _call_id: &str,
        _tool: &str,
        _args: &Value,
        reason: &str,
    ) -> Result<(), String> {
        Err(format!(
            "needs approval ({reason}), and nobody can approve here"
        ))
    }
    /// The task reached a budget (`what` says which, and how far): `true` continues (a
    /// person approved as much again), `false` stops the task.
    async fn over_budget(&self, _what: &str) -> bool {
        false
    }
    /// A tool call ended (ran, failed or was refused). Not called for results replayed from
    /// the journal (they were reported in the life that produced them).
    fn tool_call(&self, call: &ToolCallRecord<'_>);
    /// A model call ended (not called for replayed turns).
    fn model_call(&self, call: &ModelCallRecord<'_>);
}

/// What [`Gate::tool_call`] is told.
#[derive(Debug, Serialize)]
pub struct ToolCallRecord<'a> {
    /// Turn (1-based).
    pub turn: u32,
    /// The call's id.
    pub call_id: &'a str,
    /// Tool name.
    pub tool: &'a str,
    /// Raw arguments as the model sent them.
    pub arguments: &'a str,
    /// `Ok(capability)` or `Err(reason)` from [`Gate::check`]; `Err` also for invalid calls.
    pub decision: Result<&'a str, &'a str>,
    /// Time it ran.
    pub duration: Duration,
    /// Failed (or refused)?
    pub is_error: bool,
    /// Characters of the result.
    pub bytes: usize,
    /// The cell it ran in.
    pub cell: &'a str,
}

/// What [`Gate::model_call`] is told.
#[derive(Debug, Serialize)]
pub struct ModelCallRecord<'a> {
    /// Turn (1-based).
    pub turn: u32,
    /// Model name.
    pub model: &'a str,
    /// Tokens.
    pub usage: Usage,
    /// Time to the full response.
    pub latency: Duration,
    /// Tool calls requested.
    pub tool_calls: usize,
    /// The provider's error, when the call failed after its retries.
    pub error: Option<&'a str>,
    /// The request (system prompt, messages, tools), for audits configured to keep prompts.
    #[serde(skip)]
    pub request: &'a ChatRequest,
}

/// Replays recorded steps, then records new ones.
struct Replayer {
    recorded: std::collections::VecDeque<Step>,
    journal: Option<Arc<dyn Journal>>,
    seq: u64,
}

impl Replayer {
    fn peek(&self) -> Option<&Step> {
        self.recorded.front()
    }
    fn pop(&mut self) -> Option<Step> {
        let s = self.recorded.pop_front();
        if s.is_some() {
            self.seq += 1;
        }
        s
    }
    fn live(&self) -> bool {
        self.recorded.is_empty()
    }
    fn record(&mut self, step: Step) -> Result<(), AgentError> {
        if let Some(j) = &self.journal {
            j.record(self.seq, &step).map_err(AgentError::Journal)?;
        }
        self.seq += 1;
        Ok(())
    }
    /// The recorded result of `call_id`, if this call was recorded (consuming it). A call that
    /// was started but has no result was interrupted: its effect is unknown.
    fn tool(&mut self, call_id: &str) -> Result<Option<ToolOutput>, AgentError> {
        match self.peek() {
            Some(Step::ToolStarted { call_id: c }) if c == call_id => {
                self.pop();
                if let Some(Step::Tool { call_id: c, .. }) = self.peek()
                    && c == call_id
                {
                    return Ok(self.pop().and_then(step_output));
                }
                let out = ToolOutput {
                    content: "this tool call was interrupted by a restart of Warren while it ran; its effect is unknown. Check the current state before repeating it.".into(),
                    is_error: true,
                    full: None,
                    finished: None,
                };
                self.record(Step::Tool {
                    call_id: call_id.into(),
                    content: out.content.clone(),
                    is_error: true,
                    finished: None,
                })?;
                Ok(Some(out))
            }
            Some(Step::Tool { call_id: c, .. }) if c == call_id => {
                Ok(self.pop().and_then(step_output))
            }
            _ => Ok(None),
        }
    }
}

fn step_output(s: Step) -> Option<ToolOutput> {
    match s {
        Step::Tool {
            content,
            is_error,
            finished,
            ..
        } => Some(ToolOutput {
            content,
            is_error,
            full: None,
            finished,
        }),
        _ => None,
    }
}

fn apply_summary(messages: &mut Vec<Message>, replaced: usize, text: &str) {
    let goal = match messages.first() {
        Some(Message::User { content }) => content.clone(),
        _ => String::new(),
    };
    let head = Message::User {
        content: format!(
            "{goal}\n\nSummary of the work so far (older turns were condensed):\n{text}"
        ),
    };
    let end = (replaced + 1).min(messages.len());
    messages.splice(0..end, [head]);
}

/// The tools `config` allows, in their usual order (the host's after the cell's).
fn offered(
    config: &AgentConfig,
    host: Option<&Arc<dyn tools::HostTools>>,
) -> Vec<warren_llm::ToolSpec> {
    tools::specs_for(&config.network)
        .into_iter()
        .chain(host.map(|h| h.specs()).unwrap_or_default())
        .filter(|s| {
            s.name == "finish"
                || config
                    .tools
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&s.name))
        })
        .collect()
}

/// One agent working on one task in one cell.
pub struct Agent {
    journal: Option<Arc<dyn Journal>>,
    gate: Option<Arc<dyn Gate>>,
    provider: Arc<dyn Provider>,
    tools: Arc<Tools>,
    config: AgentConfig,
    validators: HashMap<String, jsonschema::Validator>,
    logs: Option<PathBuf>,
}

/// The first two meaningful lines of a result, for progress views ("exit code 0 · Hello").
fn first_line(s: &str) -> String {
    let l = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--- std"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" · ");
    if l.chars().count() > 120 {
        l.chars().take(120).collect::<String>() + "…"
    } else {
        l
    }
}

/// A rough token count (4 characters a token): what is sent, not what is billed; the
/// provider's own usage figures are what budgets count.
pub fn estimate_tokens(system: &str, tools: &[warren_llm::ToolSpec], messages: &[Message]) -> u64 {
    let chars = system.len()
        + serde_json::to_string(tools).map_or(0, |s| s.len())
        + serde_json::to_string(messages).map_or(0, |s| s.len());
    (chars / 4) as u64
}

/// Where older turns end: keep the goal (message 0) and at least `keep` recent messages, and
/// never separate tool results from the assistant message that called them (the split lands
/// just before an assistant message).
pub fn summary_split(messages: &[Message], keep: usize) -> Option<usize> {
    let mut split = messages.len().checked_sub(keep)?;
    while split > 1 && !matches!(messages[split], Message::Assistant { .. }) {
        split -= 1;
    }
    (split > 1).then_some(split)
}

fn render(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::User { content } => out.push_str(&format!("USER: {content}\n")),
            Message::Assistant { text, tool_calls } => {
                if !text.is_empty() {
                    out.push_str(&format!("ASSISTANT: {text}\n"));
                }
                for c in tool_calls {
                    out.push_str(&format!("CALL {}: {}\n", c.name, c.arguments));
                }
            }
            Message::Tool {
                content, is_error, ..
            } => {
                let c: String = content.chars().take(2000).collect();
                out.push_str(&format!(
                    "RESULT{}: {c}\n",
                    if *is_error { " (error)" } else { "" }
                ));
            }
        }
    }
    out
}

const SUMMARY_PROMPT: &str = "You compress an agent's work log. Write a concise summary of what was done, what was \
learned (file names, commands, errors and their fixes) and what remains, so the agent can continue \
without the full log. Plain text, no preamble.";

impl Agent {
    /// Replace older turns by a summary when the next request would fill the context window.
    async fn maybe_summarize(
        &self,
        messages: &mut Vec<Message>,
        specs: &[warren_llm::ToolSpec],
        total: &mut Usage,
        emit: &mut (dyn FnMut(AgentEvent) + Send),
    ) -> Result<Option<(usize, String)>, AgentError> {
        let before = estimate_tokens(&self.config.system_prompt, specs, messages);
        if (before as f64) < self.config.summarize_at * f64::from(self.config.context_window) {
            return Ok(None);
        }
        let Some(split) = summary_split(messages, self.config.keep_recent) else {
            return Ok(None);
        };
        let request = ChatRequest {
            model: self.config.model.clone(),
            system: SUMMARY_PROMPT.into(),
            messages: vec![Message::User {
                content: render(&messages[1..split]),
            }],
            tools: vec![],
            max_tokens: self.config.max_tokens_per_turn,
            temperature: None,
            stream: true,
        };
        let mut ignore = |_e: StreamEvent| {};
        let response = self.provider.chat(&request, &mut ignore).await?;
        *total = total.plus(response.usage);
        let replaced = split - 1;
        apply_summary(messages, replaced, &response.text);
        let after = estimate_tokens(&self.config.system_prompt, specs, messages);
        emit(AgentEvent::Summarized {
            replaced,
            tokens_before: before,
            tokens_after: after,
        });
        Ok(Some((replaced, response.text)))
    }

    /// Make every step durable in `journal` before acting on it, and resume from what it holds.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Offer tools that run on the host (memory, code search) next to the cell's.
    pub fn with_host_tools(mut self, host: Arc<dyn tools::HostTools>) -> Self {
        for s in offered(&self.config, Some(&host)) {
            if let Ok(v) = jsonschema::validator_for(&s.parameters) {
                self.validators.entry(s.name).or_insert(v);
            }
        }
        if let Some(t) = Arc::get_mut(&mut self.tools) {
            t.host = Some(host);
        }
        self
    }

    /// Pass every tool call through `gate` (policy), and report calls to it (audit).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// An agent using `provider`, acting in `cell`; full tool outputs go to `logs` (the host
    /// directory the cell sees as `/logs`), when given.
    pub fn new(
        provider: Arc<dyn Provider>,
        cell: Arc<dyn Cell>,
        config: AgentConfig,
        logs: Option<PathBuf>,
    ) -> Self {
        let validators = offered(&config, None)
            .into_iter()
            .filter_map(|s| {
                jsonschema::validator_for(&s.parameters)
                    .ok()
                    .map(|v| (s.name, v))
            })
            .collect();
        let mut tools = Tools::new(cell);
        tools.logs = logs.clone();
        Agent {
            journal: None,
            gate: None,
            provider,
            tools: Arc::new(tools),
            config,
            validators,
            logs,
        }
    }

    /// Check a call's arguments: valid JSON, and valid against the tool's schema.
    pub fn validate(&self, call: &ToolCall) -> Result<Value, String> {
        let args: Value = serde_json::from_str(if call.arguments.trim().is_empty() { "{}" } else { &call.arguments })
            .map_err(|e| format!("the arguments are not valid JSON ({e}); send a JSON object matching the schema of {}", call.name))?;
        let v = self
            .validators
            .get(&call.name)
            .ok_or_else(|| format!("there is no tool named {:?}", call.name))?;
        let errors: Vec<String> = v
            .iter_errors(&args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(args)
        } else {
            Err(format!(
                "invalid arguments for {}: {}",
                call.name,
                errors.join("; ")
            ))
        }
    }

    fn log_full(&self, turn: u32, index: usize, full: &str) -> Result<Option<String>, AgentError> {
        let Some(dir) = &self.logs else {
            return Ok(None);
        };
        let name = format!("tool-{turn}-{index}.log");
        std::fs::write(dir.join(&name), full).map_err(|e| AgentError::Logs(e.to_string()))?;
        Ok(Some(format!("/logs/{name}")))
    }

    /// Work on `goal` until `finish` or a limit. `observe` sees every event.
    pub async fn run(
        &self,
        goal: &str,
        observe: &mut (dyn FnMut(&AgentEvent) + Send),
    ) -> Result<Report, AgentError> {
        let mut events_log = match &self.logs {
            Some(d) => Some(
                // Appended: a resumed task continues its log.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("events.jsonl"))
                    .map_err(|e| AgentError::Logs(e.to_string()))?,
            ),
            None => None,
        };
        let mut emit = |e: AgentEvent| {
            if let Some(f) = events_log.as_mut() {
                let _ = writeln!(f, "{}", serde_json::to_string(&e).unwrap_or_default());
            }
            observe(&e);
        };
        let started = Instant::now();
        let specs = offered(&self.config, self.tools.host.as_ref());
        let recorded = match &self.journal {
            Some(j) => j.load().map_err(AgentError::Journal)?,
            None => Vec::new(),
        };
        let mut rep = Replayer {
            recorded: recorded.into(),
            journal: self.journal.clone(),
            seq: 0,
        };
        let mut messages = vec![Message::User {
            content: goal.to_owned(),
        }];
        let mut total = Usage::default();
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut idle_turns = 0;
        let stop = |reason: String, turns: u32, usage: Usage, emit: &mut dyn FnMut(AgentEvent)| {
            emit(AgentEvent::Stopped {
                reason: reason.clone(),
            });
            Ok(Report {
                outcome: Outcome::Stopped(reason),
                turns,
                usage,
            })
        };
        let mut budget = self.config.budget_tokens;
        let mut budget_usd = self.config.budget_usd;
        for turn in 1..=self.config.max_turns {
            if started.elapsed() > self.config.max_wall {
                return stop(
                    format!("wall-clock limit of {:?} reached", self.config.max_wall),
                    turn - 1,
                    total,
                    &mut emit,
                );
            }
            let used = total.input_tokens + total.output_tokens;
            if let Some(b) = budget
                && used >= b
                && rep.live()
                && let Some(g) = &self.gate
                && g.over_budget(&format!("the token budget of {b} is reached ({used} used)"))
                    .await
            {
                // A person approved going on: as much again.
                budget = Some(used + self.config.budget_tokens.unwrap_or(b));
            }
            if let (Some(limit), Some(p)) = (budget_usd, &self.config.prices) {
                let fresh = total.input_tokens.saturating_sub(total.cached_input_tokens) as f64;
                let cost = (fresh * p.input_per_mtok
                    + total.cached_input_tokens as f64 * p.cached_input_per_mtok
                    + total.output_tokens as f64 * p.output_per_mtok)
                    / 1e6;
                if cost >= limit {
                    if rep.live()
                        && let Some(g) = &self.gate
                        && g.over_budget(&format!(
                            "the cost budget of ${limit:.2} is reached (${cost:.4} spent)"
                        ))
                        .await
                    {
                        budget_usd = Some(cost + self.config.budget_usd.unwrap_or(limit));
                    } else {
                        return stop(
                            format!("cost budget of ${limit:.2} reached (${cost:.4} spent)"),
                            turn - 1,
                            total,
                            &mut emit,
                        );
                    }
                }
            }
            if let Some(b) = budget
                && used >= b
            {
                return stop(
                    format!("token budget of {b} reached"),
                    turn - 1,
                    total,
                    &mut emit,
                );
            }
            if let Some(Step::Summary { replaced, text }) = rep.peek().cloned() {
                rep.pop();
                apply_summary(&mut messages, replaced, &text);
            } else if rep.live()
                && let Some((replaced, text)) = self
                    .maybe_summarize(&mut messages, &specs, &mut total, &mut emit)
                    .await?
            {
                rep.record(Step::Summary { replaced, text })?;
            }
            emit(AgentEvent::Turn { turn });
            let request = ChatRequest {
                model: self.config.model.clone(),
                system: self.config.system_prompt.clone(),
                messages: messages.clone(),
                tools: specs.clone(),
                max_tokens: self.config.max_tokens_per_turn,
                temperature: None,
                stream: true,
            };
            let mut sink = |e: StreamEvent| match e {
                StreamEvent::TextDelta(delta) => emit(AgentEvent::Text { delta }),
                StreamEvent::Restart { reason, .. } => emit(AgentEvent::Restart { reason }),
                StreamEvent::ToolCallStarted { .. } => {}
            };
            // A recorded turn is not paid for again; a new one is durable before it is acted on.
            let response = match rep.peek() {
                Some(Step::Model { .. }) => match rep.pop() {
                    Some(Step::Model { response }) => response,
                    _ => {
                        return Err(AgentError::Journal(
                            "journal changed while replaying".into(),
                        ));
                    }
                },
                Some(other) => {
                    return Err(AgentError::Journal(format!(
                        "journal out of step: expected a model turn, found {other:?}"
                    )));
                }
                None => {
                    let asked = Instant::now();
                    let r = self.provider.chat(&request, &mut sink).await;
                    if let Some(g) = &self.gate {
                        let error = r.as_ref().err().map(ToString::to_string);
                        g.model_call(&ModelCallRecord {
                            turn,
                            model: &self.config.model,
                            usage: r.as_ref().map(|r| r.usage).unwrap_or_default(),
                            latency: asked.elapsed(),
                            tool_calls: r.as_ref().map_or(0, |r| r.tool_calls.len()),
                            error: error.as_deref(),
                            request: &request,
                        });
                    }
                    let r = r?;
                    rep.record(Step::Model {
                        response: r.clone(),
                    })?;
                    r
                }
            };
            total = total.plus(response.usage);
            emit(AgentEvent::Usage {
                turn: response.usage,
                total,
            });
            messages.push(Message::Assistant {
                text: response.text.clone(),
                tool_calls: response.tool_calls.clone(),
            });
            if response.tool_calls.is_empty() {
                idle_turns += 1;
                if idle_turns >= 2 {
                    return stop(
                        "the model stopped calling tools without calling finish".into(),
                        turn,
                        total,
                        &mut emit,
                    );
                }
                messages.push(Message::User {
                    content: "Continue with the tools; call finish when the goal is reached."
                        .into(),
                });
                continue;
            }
            idle_turns = 0;

            // Validate everything first, then run: read-only calls of a turn run in parallel.
            let checked: Vec<(ToolCall, Result<Value, String>)> = response
                .tool_calls
                .iter()
                .map(|c| (c.clone(), self.validate(c)))
                .collect();
            for (c, _) in &checked {
                emit(AgentEvent::ToolCall {
                    turn,
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                });
            }
            // Results recorded before a restart are reused; only the rest run now.
            let mut outputs: Vec<Option<ToolOutput>> = Vec::with_capacity(checked.len());
            for (c, _) in &checked {
                outputs.push(rep.tool(&c.id)?);
            }
            let live: Vec<bool> = outputs.iter().map(Option::is_none).collect();
            // The choke point: every call about to run is checked; a refusal runs nothing.
            let mut checked = checked;
            let mut capability: Vec<Option<String>> = vec![None; checked.len()];
            if let Some(g) = &self.gate {
                for (i, (c, a)) in checked.iter_mut().enumerate() {
                    if !live[i] {
                        continue;
                    }
                    if let Ok(args) = a {
                        match g.check(&c.name, args) {
                            Ok(cap) => match g.needs_approval(&c.name, args) {
                                None => capability[i] = Some(cap),
                                Some(why) => match g.ask(&c.id, &c.name, args, &why).await {
                                    Ok(()) => capability[i] = Some(cap),
                                    Err(no) => *a = Err(format!("not approved: {no}")),
                                },
                            },
                            Err(reason) => *a = Err(format!("refused by policy: {reason}")),
                        }
                    }
                }
            }
            let mut durations = vec![Duration::ZERO; checked.len()];
            let pending: Vec<usize> = (0..checked.len()).filter(|&i| live[i]).collect();
            let panicked = |e: tokio::task::JoinError| ToolOutput {
                content: format!("tool panicked: {e}"),
                is_error: true,
                full: None,
                finished: None,
            };
            let all_read_only = pending
                .iter()
                .all(|&i| checked[i].1.is_ok() && tools::read_only(&checked[i].0.name));
            if all_read_only && pending.len() > 1 {
                let handles: Vec<_> = pending
                    .iter()
                    .map(|&i| {
                        let (c, a) = &checked[i];
                        let (tools, name, args) = (
                            Arc::clone(&self.tools),
                            c.name.clone(),
                            a.clone().unwrap_or_default(),
                        );
                        (
                            i,
                            tokio::task::spawn_blocking(move || {
                                let t = Instant::now();
                                let out = tools.call(&name, &args);
                                (out, t.elapsed())
                            }),
                        )
                    })
                    .collect();
                for (i, h) in handles {
                    outputs[i] = Some(match h.await {
                        Ok((out, took)) => {
                            durations[i] = took;
                            out
                        }
                        Err(e) => panicked(e),
                    });
                }
            } else {
                for &i in &pending {
                    let (c, a) = &checked[i];
                    outputs[i] = Some(match a {
                        Err(msg) => ToolOutput {
                            content: msg.clone(),
                            is_error: true,
                            full: None,
                            finished: None,
                        },
                        Ok(args) => {
                            // A tool that changes things leaves a mark first: after a crash, its
                            // effect is reported as unknown instead of being repeated.
                            if !tools::read_only(&c.name) {
                                rep.record(Step::ToolStarted {
                                    call_id: c.id.clone(),
                                })?;
                            }
                            let (tools, name, args) =
                                (Arc::clone(&self.tools), c.name.clone(), args.clone());
                            let t = Instant::now();
                            let out = tokio::task::spawn_blocking(move || tools.call(&name, &args))
                                .await
                                .unwrap_or_else(panicked);
                            durations[i] = t.elapsed();
                            out
                        }
                    });
                }
            }
            let outputs: Vec<ToolOutput> = outputs
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| ToolOutput {
                        content: "internal error: no result".into(),
                        is_error: true,
                        full: None,
                        finished: None,
                    })
                })
                .collect();

            let mut finished = None;
            for (i, (((call, _), mut out), is_live)) in
                checked.into_iter().zip(outputs).zip(live).enumerate()
            {
                let chars = out
                    .full
                    .as_ref()
                    .map_or(out.content.chars().count(), |f| f.chars().count());
                let mut log = None;
                if let Some(full) = out.full.take() {
                    log = self.log_full(turn, i + 1, &full)?;
                    out.content.push_str(&format!(
                        "\n[output truncated at {} characters of {chars}{}]",
                        self.tools.max_output_chars,
                        log.as_ref()
                            .map_or(String::new(), |l| format!("; full output in {l}"))
                    ));
                }
                emit(AgentEvent::ToolResult {
                    turn,
                    name: call.name.clone(),
                    is_error: out.is_error,
                    summary: first_line(&out.content),
                    chars,
                    log,
                });
                if out.is_error {
                    let key = format!("{}\u{0}{}", call.name, call.arguments);
                    let n = failures.entry(key).or_insert(0);
                    *n += 1;
                    if *n >= self.config.max_repeated_failures {
                        return stop(
                            format!(
                                "the same failing {} call was repeated {} times",
                                call.name, n
                            ),
                            turn,
                            total,
                            &mut emit,
                        );
                    }
                }
                if out.finished.is_some() {
                    finished = out.finished.clone();
                }
                if let (true, Some(g)) = (is_live, &self.gate) {
                    // No capability: the call never ran (invalid, or refused by the gate).
                    g.tool_call(&ToolCallRecord {
                        turn,
                        call_id: &call.id,
                        tool: &call.name,
                        arguments: &call.arguments,
                        decision: capability[i].as_deref().ok_or(out.content.as_str()),
                        duration: durations[i],
                        is_error: out.is_error,
                        bytes: chars,
                        cell: self.tools.cell_id(),
                    });
                }
                if is_live {
                    // Durable before the model sees it.
                    rep.record(Step::Tool {
                        call_id: call.id.clone(),
                        content: out.content.clone(),
                        is_error: out.is_error,
                        finished: out.finished.clone(),
                    })?;
                }
                messages.push(Message::Tool {
                    call_id: call.id.clone(),
                    content: out.content,
                    is_error: out.is_error,
                });
            }
            if let Some(result) = finished {
                emit(AgentEvent::Finished {
                    result: result.clone(),
                });
                return Ok(Report {
                    outcome: Outcome::Finished(result),
                    turns: turn,
                    usage: total,
                });
            }
        }
        stop(
            format!("turn limit of {} reached", self.config.max_turns),
            self.config.max_turns,
            total,
            &mut emit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assistant(id: &str) -> Message {
        Message::Assistant {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: id.into(),
                name: "shell".into(),
                arguments: "{}".into(),
            }],
        }
    }
    fn result(id: &str) -> Message {
        Message::Tool {
            call_id: id.into(),
            content: "ok".into(),
            is_error: false,
        }
    }

    #[test]
    fn split_keeps_goal_recent_turns_and_tool_pairs_together() {
        let goal = Message::User {
            content: "goal".into(),
        };
        let mut m = vec![goal];
        for i in 0..5 {
            m.push(assistant(&i.to_string()));
            m.push(result(&i.to_string()));
        }
        // 11 messages, keep 4: the split lands on an assistant message.
        let s = summary_split(&m, 4).unwrap_or(0);
        assert!(matches!(m[s], Message::Assistant { .. }), "split at {s}");
        assert!(m.len() - s >= 4);
        // Keeping 3 would cut a pair: the split moves back to the assistant message.
        let s = summary_split(&m, 3).unwrap_or(0);
        assert!(matches!(m[s], Message::Assistant { .. }), "split at {s}");
        // Too short a conversation: nothing to summarize.
        assert_eq!(summary_split(&m[..3], 4), None);
    }

    #[test]
    fn estimate_grows_with_content() {
        let small = estimate_tokens(
            "s",
            &[],
            &[Message::User {
                content: "x".into(),
            }],
        );
        let big = estimate_tokens(
            "s",
            &[],
            &[Message::User {
                content: "x".repeat(4000),
            }],
        );
        assert!(big >= small + 999);
    }
}
