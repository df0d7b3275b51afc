//! `delegate`: a running agent hands a sub-goal to a child task with less than it has.
//!
//! The child is a task like any other — its own cell, journal, audit and events — whose
//! capabilities are every layer its parent had plus the call's request (tools, paths,
//! network), so it can only narrow: a request for anything the parent lacks is refused before
//! the child exists, and the gate and the kernel (Landlock scopes, the egress proxy) enforce
//! the layers again while it runs. Its token budget is at most what the parent's manifest
//! allows, and what it spends is charged to the parent's budget when it returns. Depth and
//! fan-out are bounded by the policy's `[plans]`.
//!
//! The call blocks until the child ends and returns its result — or, when the child stopped
//! at a limit or failed, its state, reason and whatever result it wrote: never silently
//! nothing. Meanwhile the child's turns and tool calls appear on the parent's event stream
//! (`delegate.progress`).
//!
//! The child's id is derived from the parent's id and the call's id, and the tool is
//! *resumable*: a parent resumed after a crash re-runs an interrupted `delegate` call, which
//! finds its child by that id and waits for it (the scheduler resumes the child from its own
//! checkpoints) instead of starting the work again.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warren_agent::AgentEvent;
use warren_agent::tools::{HostOutput, HostTools};
use warren_llm::{ToolSpec, Usage};
use warren_protocol::api::{AuditKind, EventKind};
use warren_store::{Lineage, NewTask, TaskKind, TaskRecord, TaskState};

use crate::capabilities::Capabilities;
use crate::engine::Engine;
use crate::plan::{Bounds, Narrowing, PathRequest, children};

/// Bytes of a child's diff returned with its result.
const MAX_DIFF: usize = 16 * 1024;

/// The tool's name (a manifest lists it to grant it).
pub const DELEGATE: &str = "delegate";

/// The `delegate` tool of one task.
pub(crate) struct Delegate {
    pub(crate) engine: std::sync::Weak<Engine>,
    pub(crate) task: TaskRecord,
    pub(crate) caps: Capabilities,
    /// The parent's token bound (a child gets at most this).
    pub(crate) budget_tokens: Option<u64>,
    pub(crate) runtime: tokio::runtime::Handle,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    goal: String,
    role: Option<String>,
    tools: Option<Vec<String>>,
    paths: Option<Vec<PathRequest>>,
    network: Option<Vec<String>>,
    budget_tokens: Option<u64>,
}

/// The specification the model sees.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: DELEGATE.into(),
        description:
            "Hand a self-contained sub-goal to a child agent in its own cell, with at most \
                      your capabilities (narrow them with tools, paths and network). Waits for \
                      it and returns its result, or its state and reason if it did not finish."
                .into(),
        parameters: json!({"type": "object", "additionalProperties": false, "required": ["goal"],
            "properties": {
                "goal": {"type": "string", "minLength": 1, "description": "What the child must achieve; it sees nothing else"},
                "role": {"type": "string", "description": "A deployed agent to run it (default: your own agent)"},
                "tools": {"type": "array", "items": {"type": "string"}},
                "paths": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                    "required": ["glob", "access"], "properties": {
                        "glob": {"type": "string"}, "access": {"enum": ["read", "write"]}}}},
                "network": {"type": "array", "items": {"type": "string"}},
                "budget_tokens": {"type": "integer", "minimum": 1}}}),
    }
}

/// The child task's id for call `call_id` of task `parent`.
pub fn child_id(parent: &str, call_id: &str) -> String {
    let digest = Sha256::digest(format!("delegate/{parent}/{call_id}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("t{hex}")
}

impl HostTools for Delegate {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![spec()]
    }

    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>> {
        self.call_as("", name, args).map(|o| o.result)
    }

    fn call_as(&self, call_id: &str, name: &str, args: &Value) -> Option<HostOutput> {
        if name != DELEGATE {
            return None;
        }
        Some(match self.delegate(call_id, args) {
            Ok(o) => o,
            Err(e) => HostOutput {
                result: Err(e),
                spent: Usage::default(),
            },
        })
    }

    fn resumable(&self, name: &str) -> bool {
        name == DELEGATE
    }
}

impl Delegate {
    fn delegate(&self, call_id: &str, args: &Value) -> Result<HostOutput, String> {
        let engine = self.engine.upgrade().ok_or("the daemon is stopping")?;
        let a: Args =
            serde_json::from_value(args.clone()).map_err(|e| format!("invalid arguments: {e}"))?;
        let id = child_id(&self.task.id, call_id);
        // Resumed: the child exists already (started before a restart): wait for it.
        if let Ok(existing) = engine.store.get_task(&id) {
            let ended = self.wait(&engine, &existing)?;
            return Ok(self.answer(&engine, &ended, None));
        }
        let depth = Bounds::of(&self.task).map_or(0, |b| b.depth);
        let limits = &engine.opts.plans;
        if depth >= limits.max_depth {
            return Err(format!(
                "refused: delegation may nest {} deep, and this task is at depth {depth}",
                limits.max_depth
            ));
        }
        let started = children(&*engine.store, &self.task.id)
            .map_err(|e| e.to_string())?
            .len() as u32;
        if started >= limits.max_children {
            return Err(format!(
                "refused: this task has started {started} children, the most allowed"
            ));
        }
        let request = Narrowing {
            tools: a.tools,
            paths: a.paths,
            network: a.network,
            budget_tokens: a.budget_tokens,
        };
        let layer = request.layer("the delegate call")?;
        if let Err(e) = self.caps.covers(&layer) {
            engine.audit.record(
                Some(&self.task.id),
                AuditKind::DelegateStarted.as_str(),
                &json!({"refused": e, "goal": a.goal}),
            );
            return Err(format!("refused: the child {e}"));
        }
        let (agent, version) = match a.role {
            Some(r) => {
                let rec = engine
                    .store
                    .get_agent(&r, None)
                    .map_err(|_| format!("role {r:?} is not a deployed agent"))?;
                (rec.name, rec.version)
            }
            None if self.task.agent_version > 0 => {
                (self.task.agent.clone(), self.task.agent_version)
            }
            None => {
                return Err(
                    "name a deployed agent as role (this task's own agent is not deployed)".into(),
                );
            }
        };
        let mut layers: Vec<_> = self
            .caps
            .inherited()
            .into_iter()
            .map(|mut l| {
                l.origin = format!("parent task {}: {}", self.task.id, l.origin);
                l
            })
            .collect();
        layers.push(layer.spec());
        let budget_tokens = match (a.budget_tokens, self.budget_tokens) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let bounds = Bounds {
            layers,
            depth: depth + 1,
            budget_tokens,
            inputs: Default::default(),
        };
        let goal = a.goal;
        if goal.trim().is_empty() || goal.len() > warren_protocol::api::MAX_GOAL_BYTES {
            return Err("goal: must be 1 byte to 64 KiB".into());
        }
        let new = NewTask {
            id: id.clone(),
            agent,
            agent_version: version,
            goal: goal.clone(),
            priority: self.task.priority,
            workspace: self.task.workspace.clone(),
            lineage: Lineage {
                kind: TaskKind::Agent,
                parent: Some(self.task.id.clone()),
                step: None,
                step_key: None,
                bounds: Some(serde_json::to_string(&bounds).map_err(|e| e.to_string())?),
            },
        };
        let child = engine
            .store
            .submit_claimed(new, &engine.opts.worker, engine.opts.lease)
            .map_err(|e| format!("starting the child: {e}"))?;
        engine.audit_submitted(&child, &format!("task {}", self.task.id));
        let started = json!({"child": id, "agent": child.agent, "goal": goal,
            "capabilities": bounds.layers.last(), "budget_tokens": budget_tokens, "depth": depth + 1});
        engine.audit.record(
            Some(&self.task.id),
            AuditKind::DelegateStarted.as_str(),
            &started,
        );
        engine.event(&self.task.id, EventKind::DelegateStarted, started);
        // Run it here, in this worker (a claimed task): the parent waits on this thread.
        let parent = self.task.id.clone();
        let e2 = Arc::clone(&engine);
        let mut forward = move |ev: &AgentEvent| {
            let what = match ev {
                AgentEvent::Turn { turn } => json!({"turn": turn}),
                AgentEvent::ToolCall { name, .. } => json!({"tool": name}),
                AgentEvent::Finished { .. } => json!({"finished": true}),
                AgentEvent::Stopped { reason, .. } => json!({"stopped": reason}),
                _ => return,
            };
            e2.event(
                &parent,
                EventKind::DelegateProgress,
                json!({"child": id, "event": what}),
            );
        };
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (ended, report) =
            self.runtime
                .block_on(engine.run_claimed(child, None, tx, rx, Some(&mut forward)));
        let spent = report.map(|r| r.usage);
        Ok(self.answer(&engine, &ended, spent))
    }

    /// Wait (re-attached after a restart) until the child ends.
    fn wait(&self, engine: &Arc<Engine>, child: &TaskRecord) -> Result<TaskRecord, String> {
        let mut t = child.clone();
        while !t.state.is_terminal() {
            std::thread::sleep(Duration::from_millis(200));
            t = engine.store.get_task(&t.id).map_err(|e| e.to_string())?;
        }
        Ok(t)
    }

    /// The call's result: the child's result, or its state, reason and partial result.
    fn answer(&self, engine: &Engine, child: &TaskRecord, spent: Option<Usage>) -> HostOutput {
        let result = engine
            .store
            .get_artifact(&child.id, "result")
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let spent = spent
            .or_else(|| {
                result
                    .as_ref()
                    .and_then(|r| serde_json::from_value::<Usage>(r["usage"].clone()).ok())
            })
            .unwrap_or_default();
        let diff = engine
            .store
            .get_artifact(&child.id, "diff")
            .unwrap_or_default();
        let files = String::from_utf8_lossy(&diff)
            .lines()
            .filter(|l| l.starts_with("+++ b/"))
            .count();
        let ended = json!({"child": child.id, "state": child.state.as_str(),
            "reason": child.reason, "usage": spent});
        engine.audit.record(
            Some(&self.task.id),
            AuditKind::DelegateEnded.as_str(),
            &ended,
        );
        engine.event(&self.task.id, EventKind::DelegateEnded, ended);
        // Its changes are in its own layer: the diff comes back (bounded) for the parent to
        // apply or read.
        let mut patch = String::from_utf8_lossy(&diff).into_owned();
        if patch.len() > MAX_DIFF {
            let mut cut = MAX_DIFF;
            while !patch.is_char_boundary(cut) {
                cut -= 1;
            }
            patch.truncate(cut);
            patch.push_str(&format!(
                "\n[diff cut at {MAX_DIFF} bytes: `warren diff {}`]\n",
                child.id
            ));
        }
        let body = json!({"task": child.id, "state": child.state.as_str(),
            "reason": child.reason, "result": result.as_ref().map(|r| r["result"].clone()),
            "files_changed": files, "diff": patch,
            "tokens": spent.input_tokens + spent.output_tokens});
        let text = serde_json::to_string_pretty(&body).unwrap_or_default();
        HostOutput {
            result: if child.state == TaskState::Succeeded {
                Ok(text)
            } else {
                Err(format!(
                    "the child task did not succeed ({}): {}\n{text}",
                    child.state.as_str(),
                    child.reason.as_deref().unwrap_or("no reason given")
                ))
            },
            spent,
        }
    }
}
