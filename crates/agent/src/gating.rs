//! Between the model asking and a tool acting: which tools exist for this task, whether a
//! call is well formed, whether policy allows it, whether a person must approve it, and how
//! the allowed calls of one turn run.
//!
//! For the tool calls of one model response, [`Agent::act`] does, in order:
//!
//! 1. **validate** every call: its arguments must be JSON and match the tool's JSON Schema,
//!    and the tool must be one this task offers ([`offered`]); a bad call gets an
//!    [`InvalidCall`] message telling the model exactly what was wrong;
//! 2. announce every call ([`AgentEvent::ToolCall`]);
//! 3. take the results the journal recorded for calls of a resumed turn (those do not run,
//!    and are neither gated nor audited again: see [`crate::journal`]);
//! 4. pass every remaining valid call through the [`Gate`], the one choke point of policy
//!    and audit: [`Gate::check`] may refuse it, and [`Gate::needs_approval`] may make it
//!    wait for a person ([`Gate::ask`]); a refused call runs nothing;
//! 5. run what is left: when every call to run only reads ([`tools::read_only`]), they run
//!    in parallel; otherwise one after the other, each call that changes things leaving a
//!    [`Step::ToolStarted`] mark in the journal first.
//!
//! As soon as a call of this life has its result, the result is truncated for the model
//! ([`crate::context`]), reported to the gate ([`Gate::tool_call`]) and recorded
//! ([`Step::Tool`]), before the next call of the turn starts: a crash in the middle of a turn
//! loses no result that was already known. The results come back in the model's order, as
//! [`Done`].
//!
//! A gate is mandatory. Code whose policy is enforced elsewhere, and tests, pass
//! [`Unrestricted`] explicitly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use warren_llm::{ChatRequest, ToolCall, ToolSpec, Usage};

use crate::config::AgentConfig;
use crate::events::{AgentEvent, Events};
use crate::journal::{Replayer, Step};
use crate::tools::{self, HostTools, ToolOutput};
use crate::{Agent, AgentError};

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

/// The gate that allows every call, asks nobody and audits nothing.
///
/// For tests, and for code paths whose policy is enforced elsewhere (the cell's own
/// confinement is then the only limit on what a call can do). It approves no budget
/// extension ([`Gate::over_budget`] is `false`): the configured budgets hold. A daemon task
/// never uses it: its gate checks the task's capabilities and writes the audit trail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unrestricted;

/// The capability [`Unrestricted`] reports for every call.
const UNRESTRICTED: &str = "unrestricted";

#[async_trait::async_trait]
impl Gate for Unrestricted {
    fn check(&self, _tool: &str, _args: &Value) -> Result<String, String> {
        Ok(UNRESTRICTED.into())
    }
    async fn ask(
        &self,
        _call_id: &str,
        _tool: &str,
        _args: &Value,
        _reason: &str,
    ) -> Result<(), String> {
        Ok(())
    }
    fn tool_call(&self, _call: &ToolCallRecord<'_>) {}
    fn model_call(&self, _call: &ModelCallRecord<'_>) {}
}

/// A tool call the model got wrong: the message tells it what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InvalidCall {
    /// The arguments do not parse as JSON.
    #[error(
        "the arguments are not valid JSON ({source}); send a JSON object matching the schema of {tool}"
    )]
    NotJson {
        /// The tool called.
        tool: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// No tool of that name is offered to this task.
    #[error("there is no tool named {tool:?}")]
    UnknownTool {
        /// The name the model used.
        tool: String,
    },
    /// The arguments do not match the tool's schema.
    #[error("invalid arguments for {tool}: {}", problems.join("; "))]
    Arguments {
        /// The tool called.
        tool: String,
        /// Each mismatch, prefixed by where it is (`/command: …`).
        problems: Vec<String>,
    },
}

/// Why a tool call did not run (what the model is told, and what the audit records).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidCall),
    /// [`Gate::check`] refused it.
    #[error("refused by policy: {reason}")]
    Refused {
        /// The tool called.
        tool: String,
        /// The gate's reason.
        reason: String,
    },
    /// A person (or nobody, where nobody can approve) did not approve it ([`Gate::ask`]).
    #[error("not approved: {reason}")]
    NotApproved {
        /// The tool called.
        tool: String,
        /// The decision's reason.
        reason: String,
    },
}

/// The tools `config` allows, in their usual order (the host's after the cell's).
pub(crate) fn offered(config: &AgentConfig, host: Option<&Arc<dyn HostTools>>) -> Vec<ToolSpec> {
    tools::specs_for(&config.network)
        .into_iter()
        .chain(host.map(|h| h.specs()).unwrap_or_default())
        .filter(|s| s.name == "finish" || allowed(config, &s.name))
        .collect()
}

/// Whether `config`'s tool allowlist (a manifest's `tools`, none: every tool) covers `name`.
pub(crate) fn allowed(config: &AgentConfig, name: &str) -> bool {
    config
        .tools
        .as_ref()
        .is_none_or(|tools| warren_protocol::tools::tool_allowed(tools, name))
}

/// The compiled schemas of the tools a task accepts, by name.
#[derive(Default)]
pub(crate) struct Validators(HashMap<String, jsonschema::Validator>);

impl Validators {
    /// Accept `specs` too (a tool already accepted keeps its schema).
    pub(crate) fn add(&mut self, specs: Vec<ToolSpec>) {
        for s in specs {
            if let Ok(v) = jsonschema::validator_for(&s.parameters) {
                self.0.entry(s.name).or_insert(v);
            }
        }
    }

    /// Check a call's arguments: valid JSON (empty counts as `{}`), a tool that is accepted,
    /// and valid against its schema.
    pub(crate) fn validate(&self, call: &ToolCall) -> Result<Value, InvalidCall> {
        let raw = if call.arguments.trim().is_empty() {
            "{}"
        } else {
            &call.arguments
        };
        let args: Value = serde_json::from_str(raw).map_err(|source| InvalidCall::NotJson {
            tool: call.name.clone(),
            source,
        })?;
        let v = self
            .0
            .get(&call.name)
            .ok_or_else(|| InvalidCall::UnknownTool {
                tool: call.name.clone(),
            })?;
        let problems: Vec<String> = v
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
        if problems.is_empty() {
            Ok(args)
        } else {
            Err(InvalidCall::Arguments {
                tool: call.name.clone(),
                problems,
            })
        }
    }
}

/// Ask `gate` whether a valid call may run: `Ok(capability)`, or why not.
async fn admit(gate: &dyn Gate, call: &ToolCall, args: &Value) -> Result<String, CallError> {
    let capability = gate
        .check(&call.name, args)
        .map_err(|reason| CallError::Refused {
            tool: call.name.clone(),
            reason,
        })?;
    if let Some(why) = gate.needs_approval(&call.name, args) {
        gate.ask(&call.id, &call.name, args, &why)
            .await
            .map_err(|reason| CallError::NotApproved {
                tool: call.name.clone(),
                reason,
            })?;
    }
    Ok(capability)
}

/// One tool call of a turn, done.
pub(crate) struct Done {
    /// The call as the model made it.
    pub(crate) call: ToolCall,
    /// Its result, truncated for the model (the full text is in [`Done::log`]).
    pub(crate) output: ToolOutput,
    /// The capability the gate allowed it with; `None`: it never ran (invalid, refused, or
    /// replayed).
    pub(crate) capability: Option<String>,
    /// How long it ran.
    pub(crate) duration: Duration,
    /// Characters of the full result.
    pub(crate) chars: usize,
    /// Where the full result is, when it was truncated (`/logs/tool-T-N.log`).
    pub(crate) log: Option<String>,
}

impl Done {
    /// What the gate's audit is told about this call, once its result is final.
    pub(crate) fn record<'a>(&'a self, turn: u32, cell: &'a str) -> ToolCallRecord<'a> {
        ToolCallRecord {
            turn,
            call_id: &self.call.id,
            tool: &self.call.name,
            arguments: &self.call.arguments,
            // No capability: the call never ran (invalid, or refused by the gate).
            decision: self
                .capability
                .as_deref()
                .ok_or(self.output.content.as_str()),
            duration: self.duration,
            is_error: self.output.is_error,
            bytes: self.chars,
            cell,
        }
    }
}

fn panicked(e: tokio::task::JoinError) -> ToolOutput {
    ToolOutput::err(format!("tool panicked: {e}"))
}

impl Agent {
    /// Validate, gate and run the tool calls of one model response (see the module docs).
    pub(crate) async fn act(
        &self,
        turn: u32,
        calls: &[ToolCall],
        journal: &mut Replayer,
        events: &mut Events<'_>,
    ) -> Result<Vec<Done>, AgentError> {
        // Validate everything first, then run: read-only calls of a turn run in parallel.
        let mut checked: Vec<Result<Value, CallError>> = calls
            .iter()
            .map(|c| self.validators.validate(c).map_err(CallError::from))
            .collect();
        for c in calls {
            events.emit(AgentEvent::ToolCall {
                turn,
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
        }
        // Results recorded before a restart are reused; only the rest run now.
        let mut replayed: Vec<Option<ToolOutput>> = Vec::with_capacity(calls.len());
        for c in calls {
            replayed.push(journal.tool(&c.id, self.tools.resumable(&c.name))?);
        }
        // The choke point: every call about to run is checked; a refusal runs nothing.
        let mut capability: Vec<Option<String>> = vec![None; calls.len()];
        for (i, c) in calls.iter().enumerate() {
            if replayed[i].is_some() {
                continue;
            }
            let verdict = match &checked[i] {
                Ok(args) => admit(&*self.gate, c, args).await,
                Err(_) => continue,
            };
            match verdict {
                Ok(cap) => capability[i] = Some(cap),
                Err(e) => checked[i] = Err(e),
            }
        }
        // Each call's result, in the model's order. Replayed ones were audited and recorded
        // in the life that produced them.
        let mut done: Vec<Option<Done>> = Vec::with_capacity(calls.len());
        for (i, (call, output)) in calls.iter().zip(replayed).enumerate() {
            done.push(match output {
                Some(mut output) => {
                    let (chars, log) = self.fit_output(turn, i + 1, &mut output)?;
                    Some(Done {
                        call: call.clone(),
                        output,
                        capability: None,
                        duration: Duration::ZERO,
                        chars,
                        log,
                    })
                }
                None => None,
            });
        }
        let pending: Vec<usize> = (0..calls.len()).filter(|&i| done[i].is_none()).collect();
        let all_read_only = pending
            .iter()
            .all(|&i| checked[i].is_ok() && tools::read_only(&calls[i].name));
        if all_read_only && pending.len() > 1 {
            // Reads change nothing: a crash before their results are recorded only means
            // they run again.
            let handles: Vec<_> = pending
                .iter()
                .map(|&i| {
                    let (tools, id, name, args) = (
                        Arc::clone(&self.tools),
                        calls[i].id.clone(),
                        calls[i].name.clone(),
                        checked[i].as_ref().cloned().unwrap_or_default(),
                    );
                    (
                        i,
                        tokio::task::spawn_blocking(move || {
                            let t = Instant::now();
                            let out = tools.call_as(&id, &name, &args);
                            (out, t.elapsed())
                        }),
                    )
                })
                .collect();
            for (i, h) in handles {
                let (output, took) = h.await.unwrap_or_else(|e| (panicked(e), Duration::ZERO));
                done[i] = Some(self.settle(
                    turn,
                    i,
                    &calls[i],
                    output,
                    capability[i].take(),
                    took,
                    journal,
                )?);
            }
        } else {
            // `finish` runs after the turn's other calls, and only if none of them failed: a
            // model must see its failures before it claims success.
            let mut order = pending.clone();
            order.sort_by_key(|&i| calls[i].name == "finish");
            for &i in &order {
                let c = &calls[i];
                let failed: Vec<&str> = if c.name == "finish" {
                    (0..calls.len())
                        .filter(|&j| j != i && calls[j].name != "finish")
                        .filter(|&j| {
                            done[j].as_ref().is_some_and(|d| d.output.is_error)
                                || checked[j].is_err()
                        })
                        .map(|j| calls[j].name.as_str())
                        .collect()
                } else {
                    Vec::new()
                };
                let (output, took) = match &checked[i] {
                    Err(e) => (ToolOutput::err(e.to_string()), Duration::ZERO),
                    Ok(_) if !failed.is_empty() => {
                        capability[i] = None;
                        (
                            ToolOutput::err(format!(
                                "finish refused: {} other call(s) of this turn failed ({}); read \
                                 their results, then fix what failed or call finish saying it \
                                 could not be done",
                                failed.len(),
                                failed.join(", ")
                            )),
                            Duration::ZERO,
                        )
                    }
                    Ok(args) => {
                        // A tool that changes things leaves a mark first: after a crash, its
                        // effect is reported as unknown instead of being repeated.
                        if !tools::read_only(&c.name) {
                            journal.record(Step::ToolStarted {
                                call_id: c.id.clone(),
                            })?;
                        }
                        let (tools, id, name, args) = (
                            Arc::clone(&self.tools),
                            c.id.clone(),
                            c.name.clone(),
                            args.clone(),
                        );
                        let t = Instant::now();
                        let out =
                            tokio::task::spawn_blocking(move || tools.call_as(&id, &name, &args))
                                .await
                                .unwrap_or_else(panicked);
                        (out, t.elapsed())
                    }
                };
                // Durable as soon as it is known, before the next call starts: a crash
                // during a later call of this turn must not lose this result, nor leave its
                // mark looking interrupted.
                done[i] =
                    Some(self.settle(turn, i, c, output, capability[i].take(), took, journal)?);
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// A call of this life has its final result: truncate it for the model (the full text
    /// goes to `/logs`), report it to the gate's audit, and make it durable in the journal,
    /// all before the model sees it (and before the next call of the turn starts).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        turn: u32,
        i: usize,
        call: &ToolCall,
        mut output: ToolOutput,
        capability: Option<String>,
        duration: Duration,
        journal: &mut Replayer,
    ) -> Result<Done, AgentError> {
        let (chars, log) = self.fit_output(turn, i + 1, &mut output)?;
        let done = Done {
            call: call.clone(),
            output,
            capability,
            duration,
            chars,
            log,
        };
        self.gate
            .tool_call(&done.record(turn, self.tools.cell_id()));
        journal.record(Step::Tool {
            call_id: call.id.clone(),
            content: done.output.content.clone(),
            is_error: done.output.is_error,
            finished: done.output.finished.clone(),
            spent: done.output.spent,
        })?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[tokio::test]
    async fn unrestricted_allows_every_call_and_no_more_budget() {
        let args = json!({"command": "rm -rf /"});
        assert!(
            admit(&Unrestricted, &call("shell", ""), &args)
                .await
                .is_ok()
        );
        assert!(Unrestricted.ask("c", "shell", &args, "why").await.is_ok());
        assert!(!Unrestricted.over_budget("the token budget").await);
    }

    #[test]
    fn an_invalid_call_is_told_what_is_wrong() {
        let mut v = Validators::default();
        v.add(offered(&AgentConfig::default(), None));
        let said = |name: &str, args: &str| match v.validate(&call(name, args)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert!(said("shell", "{nope").starts_with("the arguments are not valid JSON ("));
        assert!(said("shell", "{nope").ends_with("matching the schema of shell"));
        assert_eq!(said("launch", "{}"), "there is no tool named \"launch\"");
        assert_eq!(
            said("shell", ""),
            "invalid arguments for shell: \"command\" is a required property"
        );
        assert!(
            said("list_files", "").is_empty(),
            "empty arguments are {{}}"
        );
    }
}
