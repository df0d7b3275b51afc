//! Warren's agent loop: the host keeps the brain, the cell has the hands.
//!
//! An [`Agent`] works on one goal in one cell. It asks a model what to do, lets the task's
//! [`Gate`] decide whether each tool call may run, runs the allowed calls inside the cell
//! through [`tools::Tools`] and tells the model what happened, until the model calls `finish`
//! or a limit stops it. [`Agent::run`] is that loop, and each step of a turn lives in its own
//! module (read them in this order):
//!
//! | step of one turn | module |
//! |---|---|
//! | 1. check the limits: wall clock, tokens, cost (the gate may approve more) | `budget.rs` |
//! | 2. summarize older turns if the request would fill the context window | `context.rs` |
//! | 3. ask the model, streaming its text (or replay the recorded response) | `turn.rs` |
//! | 4. validate every tool call against its schema, pass it through the gate (policy, approvals), run it; read-only calls of a turn in parallel | `gating.rs` |
//! | 5. cut long results for the model, the full text going to `/logs` | `context.rs` |
//! | 6. report each result (event, audit), record it durably, show it to the model | `lib.rs`, `journal.rs` |
//!
//! A response without tool calls gets a nudge (`max_nudges` in a row, then one more stops the
//! task); for OpenAI-compatible servers, calls a model wrote as text are taken as calls first
//! (`textcalls.rs`). `finish` in a turn where another call failed is refused, so the model sees
//! the failures before it claims success. The repeat guard
//! (`budget.rs`) stops a task whose model keeps making the same failing call. `finish` ends
//! the run with its result ([`Outcome::Finished`]); a limit or a guard ends it with a reason
//! ([`Outcome::Stopped`]). Only the provider, the task's logs or its journal failing end a
//! run with an [`AgentError`]; a call that is invalid or refused is a result the model is
//! told about ([`CallError`]).
//!
//! With a [`Journal`], every step is durable before it is acted on, and a task resumed after
//! a crash replays its recorded steps (no model turn paid twice, no tool call run twice)
//! before it continues live (`journal.rs`). Everything that happens is reported as an
//! [`AgentEvent`] (`events.rs`); the limits come from the task's [`AgentConfig`]
//! (`config.rs`).
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod budget;
mod config;
mod context;
mod error;
mod events;
mod gating;
mod journal;
pub mod textcalls;
pub mod tools;
mod turn;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use warren_cell::Cell;
use warren_llm::{Provider, ToolCall};

pub use crate::config::{AgentConfig, SYSTEM_PROMPT, system_prompt};
pub use crate::context::{estimate_tokens, summary_split};
pub use crate::error::{AgentError, LogsError};
pub use crate::events::{AgentEvent, Outcome, Report};
pub use crate::gating::{
    CallError, Gate, InvalidCall, ModelCallRecord, ToolCallRecord, Unrestricted,
};
pub use crate::journal::{Journal, JournalError, Step};

use crate::budget::{Budget, RepeatGuard};
use crate::context::Context;
use crate::events::{Events, first_line};
use crate::gating::{Validators, offered};
use crate::journal::Replayer;
use crate::tools::Tools;

/// One agent working on one task in one cell.
pub struct Agent {
    provider: Arc<dyn Provider>,
    tools: Arc<Tools>,
    config: AgentConfig,
    gate: Arc<dyn Gate>,
    journal: Option<Arc<dyn Journal>>,
    validators: Validators,
    logs: Option<PathBuf>,
}

impl Agent {
    /// An agent using `provider`, acting in `cell` within the limits of `config`, every tool
    /// call passing `gate` (policy and audit; [`Unrestricted`] where policy is enforced
    /// elsewhere). Full tool outputs go to `logs` (the host directory the cell sees as
    /// `/logs`), when given.
    pub fn new(
        provider: Arc<dyn Provider>,
        cell: Arc<dyn Cell>,
        config: AgentConfig,
        gate: Arc<dyn Gate>,
        logs: Option<PathBuf>,
    ) -> Self {
        let mut validators = Validators::default();
        validators.add(offered(&config, None));
        let mut tools = Tools::new(cell);
        tools.logs = logs.clone();
        Agent {
            provider,
            tools: Arc::new(tools),
            config,
            gate,
            journal: None,
            validators,
            logs,
        }
    }

    /// Make every step durable in `journal` before acting on it, and resume from what it holds.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Judge `finish` with `check` before it ends the task (the manifest's validators).
    pub fn with_finish_check(mut self, check: Arc<dyn tools::FinishCheck>) -> Self {
        if let Some(t) = Arc::get_mut(&mut self.tools) {
            t.finish_check = Some(check);
        }
        self
    }

    /// Offer tools that run on the host (memory, code search) next to the cell's.
    pub fn with_host_tools(mut self, host: Arc<dyn tools::HostTools>) -> Self {
        self.validators.add(offered(&self.config, Some(&host)));
        let hidden: Vec<_> = host
            .hidden_specs()
            .into_iter()
            .filter(|s| gating::allowed(&self.config, &s.name))
            .collect();
        self.validators.add(hidden);
        if let Some(t) = Arc::get_mut(&mut self.tools) {
            t.host = Some(host);
        }
        self
    }

    /// Check a call's arguments: valid JSON, and valid against the tool's schema.
    pub fn validate(&self, call: &ToolCall) -> Result<Value, InvalidCall> {
        self.validators.validate(call)
    }

    /// Work on `goal` until `finish` or a limit. `observe` sees every event.
    pub async fn run(
        &self,
        goal: &str,
        observe: &mut (dyn FnMut(&AgentEvent) + Send),
    ) -> Result<Report, AgentError> {
        let mut events = Events::open(self.logs.as_deref(), observe)?;
        let mut budget = Budget::start(&self.config);
        let specs = offered(&self.config, self.tools.host.as_ref());
        let mut journal = Replayer::load(self.journal.clone())?;
        let mut context = Context::new(goal);
        let mut repeats = RepeatGuard::new(self.config.max_repeated_failures);
        let mut idle_turns = 0;
        for turn in 1..=self.config.max_turns {
            if let Some(reason) = budget.check(journal.live(), &*self.gate).await {
                return Ok(events.stop(reason, turn - 1, budget.total()));
            }
            self.keep_within_window(&mut context, &specs, &mut budget, &mut journal, &mut events)
                .await?;
            events.emit(AgentEvent::Turn { turn });
            let mut response = self
                .model_turn(turn, &context, &specs, &mut journal, &mut events)
                .await?;
            if response.tool_calls.is_empty() && self.config.text_tool_calls {
                // Deterministic over the recorded text: a resumed turn finds the same calls.
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                response.tool_calls = textcalls::parse(&response.text, &names, turn);
                if !response.tool_calls.is_empty() {
                    events.emit(AgentEvent::TextToolCalls {
                        turn,
                        count: response.tool_calls.len(),
                    });
                }
            }
            budget.charge(response.usage);
            events.emit(AgentEvent::Usage {
                turn: response.usage,
                total: budget.total(),
            });
            context.push_response(&response);
            if response.tool_calls.is_empty() {
                idle_turns += 1;
                if idle_turns > self.config.max_nudges {
                    let reason = "the model stopped calling tools without calling finish";
                    return Ok(events.stop(reason.into(), turn, budget.total()));
                }
                events.emit(AgentEvent::Nudged {
                    turn,
                    remaining: self.config.max_nudges - idle_turns,
                });
                context.nudge();
                continue;
            }
            idle_turns = 0;

            let done = self
                .act(turn, &response.tool_calls, &mut journal, &mut events)
                .await?;
            let mut finished = None;
            // Each result is already audited and durable (see `act`).
            for d in done {
                // A delegated child's spend is the task's own (replayed calls' too).
                budget.charge(d.output.spent);
                events.emit(AgentEvent::ToolResult {
                    turn,
                    name: d.call.name.clone(),
                    is_error: d.output.is_error,
                    summary: first_line(&d.output.content),
                    chars: d.chars,
                    log: d.log.clone(),
                });
                if d.output.is_error
                    && let Some(reason) = repeats.failed(&d.call)
                {
                    return Ok(events.stop(reason, turn, budget.total()));
                }
                if d.output.finished.is_some() {
                    finished = d.output.finished.clone();
                }
                context.push_result(d.call.id, d.output);
            }
            if let Some(result) = finished {
                return Ok(events.finish(result, turn, budget.total()));
            }
        }
        let reason = format!("turn limit of {} reached", self.config.max_turns);
        Ok(events.stop(reason, self.config.max_turns, budget.total()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers spawn runs on a multi-threaded runtime: the future must stay `Send`.
    #[test]
    fn a_run_is_send() {
        fn send<T: Send>(_: T) {}
        fn check(agent: &Agent, observe: &mut (dyn FnMut(&AgentEvent) + Send)) {
            send(agent.run("goal", observe));
        }
        let _ = check;
    }
}
