//! Plans: a goal larger than one agent, split by a planner into steps that run as child tasks.
//!
//! A plan task (`warren task submit --plan AGENT GOAL`) is claimed like any task, but runs no
//! cell and holds no scheduler slot: its agent is the *planner*.
//!
//! 1. **Plan.** One model call with one tool, `submit_plan`, whose arguments are the plan
//!    ([`Plan`]): steps with an id, a goal, a role (a deployed agent), `depends_on`, `inputs`
//!    (earlier steps whose outputs it reads), `retries` and an optional capability narrowing.
//!    [`validate`] checks it before anything runs — ids, known roles, an acyclic graph, inputs
//!    among the step's dependencies, capabilities within the plan task's own — and its errors
//!    go back to the planner (three tries). The plan is stored ([`Store::put_plan`]) before a
//!    step starts, so a restarted daemon never plans again.
//! 2. **Execute.** [`Engine::drive_plan`] is deterministic over the store: each pass reads
//!    the plan and the plan task's children and computes each step's state ([`statuses`]); a
//!    step whose dependencies all succeeded is submitted as a child task at once (no batch
//!    barrier), its id derived from the plan, the step's *fingerprint* and the attempt — so
//!    submitting twice (two passes, two daemons, a restart) is one task. The pass runs
//!    whenever anything changes in this daemon (a child ending wakes it) and every 500 ms.
//! 3. **Fingerprints keep finished work.** A step's fingerprint hashes its id, goal, role,
//!    capabilities and the *task ids* whose outputs it takes. A replan that keeps a step
//!    unchanged, with unchanged inputs, finds the task that already succeeded under the same
//!    fingerprint: it is kept, never re-run.
//! 4. **Retry, then replan.** A step's failed attempts (failed, cancelled, interrupted) are
//!    retried up to its `retries`; past them the planner is asked again with the plan's states
//!    and the failure (at most `max_replans` times), and running steps the new plan does not
//!    keep are cancelled.
//! 5. **Capabilities only narrow.** A child's capabilities are its role's manifest ∩ the
//!    operator's policy ∩ every layer the plan task had (its planner's manifest and its own
//!    bounds) ∩ the step's narrowing — stored with the child ([`Bounds`]) and applied by the
//!    gate and, as Landlock scopes and egress rules, by the kernel.
//!
//! A step's outputs reach its dependents as files: `/task/inputs/<step>/result.json` (its
//! result) and `diff.patch` (its changes to the workspace; each step works on its own
//! copy-on-write layer of the plan's workspace).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warren_config::manifest::Manifest;
use warren_llm::{ChatRequest, Message, ToolSpec};
use warren_protocol::api::{AuditKind, EventKind, PlanView, StepView};
use warren_store::{
    Lineage, NewTask, Store, StoreError, TaskFilter, TaskKind, TaskRecord, TaskState,
};

use crate::capabilities::{Capabilities, Layer, LayerSpec, PlanSection};
use crate::engine::{Engine, Running, Stop, lock};
use crate::runner::End;

/// Bounds on plans and delegation (the operator's policy `[plans]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// How deep delegation may nest: a task at this depth may not delegate (a plan's steps
    /// are depth 1).
    pub max_depth: u32,
    /// Children one task may start.
    pub max_children: u32,
    /// Replans per plan.
    pub max_replans: u32,
    /// Steps per plan.
    pub max_steps: u32,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_depth: 2,
            max_children: 8,
            max_replans: 2,
            max_steps: 16,
        }
    }
}

impl PlanLimits {
    /// The defaults, with what a policy's `[plans]` sets.
    pub fn from_policy(p: &PlanSection) -> Self {
        let d = PlanLimits::default();
        PlanLimits {
            max_depth: p.max_depth.unwrap_or(d.max_depth),
            max_children: p.max_children.unwrap_or(d.max_children),
            max_replans: p.max_replans.unwrap_or(d.max_replans),
            max_steps: p.max_steps.unwrap_or(d.max_steps),
        }
    }
}

/// Retries one step may ask for.
pub const MAX_RETRIES: u32 = 3;

/// Planner calls per plan (or replan) before the plan task fails: a plan with errors goes back
/// to the planner with them.
const PLANNER_TRIES: usize = 3;

/// The planner's one tool.
pub const PLAN_TOOL: &str = "submit_plan";

/// A plan, as the planner writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The steps (any order; the graph is `depends_on`).
    pub steps: Vec<Step>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique in the plan: 1-32 of a-z, 0-9, `_`, `-`.
    pub id: String,
    /// What the step's agent must achieve (self-contained).
    pub goal: String,
    /// The deployed agent that runs it (default: the planner's agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Steps that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Steps (among its dependencies, direct or not) whose outputs it reads.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Attempts after the first (default 1, at most [`MAX_RETRIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Less than the plan may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Narrowing>,
}

/// A step's (or a `delegate` call's) capability request: omitted parts inherit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    /// Tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Workspace paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<PathRequest>>,
    /// Network destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<String>>,
    /// Tokens the child may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
}

/// `{glob, access}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRequest {
    /// Relative to the workspace.
    pub glob: String,
    /// `read` or `write`.
    pub access: String,
}

impl Narrowing {
    /// As a capability layer (`origin` names it in refusals).
    pub fn layer(&self, origin: &str) -> Result<Layer, String> {
        let paths = match &self.paths {
            None => None,
            Some(ps) => Some(
                ps.iter()
                    .map(|p| match p.access.as_str() {
                        "read" => Ok((p.glob.clone(), false)),
                        "write" => Ok((p.glob.clone(), true)),
                        other => Err(format!("access must be read or write, not {other:?}")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Layer::request(origin, self.tools.clone(), paths, self.network.clone())
    }
}

/// What a child task inherited, stored with it ([`Lineage::bounds`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Capability layers of its ancestors and its own request, all of which must allow.
    pub layers: Vec<LayerSpec>,
    /// 1 for a plan's step or a delegated child, one more per level.
    pub depth: u32,
    /// Tokens it may spend (its parent's bound, or less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Step id → the task whose outputs it reads (`/task/inputs/<step>/`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

impl Bounds {
    /// A task's bounds (none for a top-level task; unreadable ones as none, which the caller
    /// refuses where it matters).
    pub fn of(t: &TaskRecord) -> Option<Bounds> {
        t.lineage
            .bounds
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }
}

/// The planner's tool: its arguments are the plan.
pub fn plan_tool() -> ToolSpec {
    let caps = json!({"type": "object", "additionalProperties": false, "properties": {
        "tools": {"type": "array", "items": {"type": "string"}},
        "paths": {"type": "array", "items": {"type": "object", "additionalProperties": false,
            "required": ["glob", "access"], "properties": {
                "glob": {"type": "string"}, "access": {"enum": ["read", "write"]}}}},
        "network": {"type": "array", "items": {"type": "string"}},
        "budget_tokens": {"type": "integer", "minimum": 1}}});
    ToolSpec {
        name: PLAN_TOOL.into(),
        description: "Submit the plan: steps that agents run, as a directed acyclic graph.".into(),
        parameters: json!({"type": "object", "additionalProperties": false, "required": ["steps"],
            "properties": {"steps": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": false, "required": ["id", "goal"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"},
                    "goal": {"type": "string", "minLength": 1},
                    "role": {"type": "string"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    "inputs": {"type": "array", "items": {"type": "string"}},
                    "retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
                    "capabilities": caps}}}}}),
    }
}

/// What [`validate`] checks a plan against.
pub struct Context<'a> {
    /// Agents a step may name as its role (deployed), with their manifests.
    pub roles: &'a HashMap<String, Manifest>,
    /// The role of a step that names none.
    pub default_role: &'a str,
    /// The plan task's capabilities: no step may ask for more.
    pub caps: &'a Capabilities,
    /// Limits.
    pub limits: &'a PlanLimits,
}

/// Whether `id` can be a step id (1-32 of a-z, 0-9, `_`, `-`): never a path of its own.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Check a plan before anything runs; every problem is named (for the planner to fix).
pub fn validate(plan: &Plan, cx: &Context<'_>) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if plan.steps.is_empty() {
        errors.push("the plan has no steps".to_owned());
    }
    if plan.steps.len() > cx.limits.max_steps as usize {
        errors.push(format!(
            "the plan has {} steps; at most {} are allowed",
            plan.steps.len(),
            cx.limits.max_steps
        ));
    }
    let mut ids = HashSet::new();
    for s in &plan.steps {
        if !valid_id(&s.id) {
            errors.push(format!(
                "step id {:?}: use 1-32 characters of a-z, 0-9, _ and -",
                s.id
            ));
        }
        if !ids.insert(s.id.as_str()) {
            errors.push(format!("step id {:?} is used twice", s.id));
        }
    }
    for s in &plan.steps {
        let at = |m: String| format!("step {:?}: {m}", s.id);
        if s.goal.trim().is_empty() || s.goal.len() > warren_protocol::api::MAX_GOAL_BYTES / 4 {
            errors.push(at("its goal must be 1 byte to 16 KiB".into()));
        }
        let role = s.role.as_deref().unwrap_or(cx.default_role);
        if !cx.roles.contains_key(role) {
            let mut known: Vec<&str> = cx.roles.keys().map(String::as_str).collect();
            known.sort_unstable();
            errors.push(at(format!(
                "role {role:?} is not a deployed agent (known: {})",
                known.join(", ")
            )));
        }
        for d in &s.depends_on {
            if d == &s.id {
                errors.push(at("it depends on itself".into()));
            } else if !ids.contains(d.as_str()) {
                errors.push(at(format!("depends on {d:?}, which is not a step")));
            }
        }
        if s.retries.is_some_and(|r| r > MAX_RETRIES) {
            errors.push(at(format!("retries must be at most {MAX_RETRIES}")));
        }
        if let Some(n) = &s.capabilities {
            match n.layer(&format!("step {}", s.id)) {
                Err(e) => errors.push(at(e)),
                Ok(l) => {
                    if let Err(e) = cx.caps.covers(&l) {
                        errors.push(at(e));
                    }
                }
            }
        }
    }
    match order(plan) {
        Err(cycle) => errors.push(format!(
            "the steps {} depend on each other in a cycle",
            cycle.join(", ")
        )),
        Ok(_) => {
            for s in &plan.steps {
                let before = ancestors(plan, &s.id);
                for i in &s.inputs {
                    if !before.contains(i.as_str()) {
                        errors.push(format!(
                            "step {:?}: input {i:?} is not among its dependencies (direct or not)",
                            s.id
                        ));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The steps in an order where each comes after its dependencies (stable: the plan's own
/// order where the graph allows), or the steps caught in a cycle.
pub fn order(plan: &Plan) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut done = vec![false; plan.steps.len()];
    let mut out = Vec::with_capacity(plan.steps.len());
    loop {
        let before = out.len();
        for (i, s) in plan.steps.iter().enumerate() {
            if done[i] {
                continue;
            }
            let ready = s
                .depends_on
                .iter()
                .all(|d| index.get(d.as_str()).is_none_or(|&j| done[j]));
            if ready {
                done[i] = true;
                out.push(i);
            }
        }
        if out.len() == plan.steps.len() {
            return Ok(out);
        }
        if out.len() == before {
            return Err(plan
                .steps
                .iter()
                .enumerate()
                .filter(|(i, _)| !done[*i])
                .map(|(_, s)| s.id.clone())
                .collect());
        }
    }
}

/// Every step `id` depends on, directly or not.
fn ancestors<'a>(plan: &'a Plan, id: &str) -> HashSet<&'a str> {
    let by_id: HashMap<&str, &Step> = plan.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut seen = HashSet::new();
    let mut todo: Vec<&str> = by_id
        .get(id)
        .map(|s| s.depends_on.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(d) = todo.pop() {
        if let Some(s) = by_id.get(d)
            && seen.insert(s.id.as_str())
        {
            todo.extend(s.depends_on.iter().map(String::as_str));
        }
    }
    seen
}

/// A step's fingerprint: the work it is (id, goal, role, capabilities) and the exact tasks
/// whose outputs it reads.
pub fn fingerprint(step: &Step, role: &str, inputs: &BTreeMap<String, String>) -> String {
    let v = json!([step.id, step.goal, role, step.capabilities, inputs]);
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The id of a step's attempt: the same for every pass, daemon and restart.
pub fn attempt_id(plan_task: &str, key: &str, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{plan_task}/{key}/{attempt}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("t{hex}")
}

/// Where a step is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepState {
    /// Its dependencies have not all succeeded.
    Waiting,
    /// A dependency failed past its retries.
    Blocked,
    /// Ready: attempt `attempt` is to be submitted, with these inputs.
    Ready {
        /// 1, 2, …
        attempt: u32,
        /// Its fingerprint.
        key: String,
        /// Step → producing task.
        inputs: BTreeMap<String, String>,
    },
    /// Its latest attempt is queued, running or waiting for approval.
    Active(TaskRecord),
    /// An attempt succeeded.
    Succeeded(TaskRecord),
    /// Every attempt failed.
    Failed(TaskRecord),
}

/// Each step's state (in the plan's order), from the plan and the plan task's children.
pub fn statuses(plan: &Plan, default_role: &str, children: &[TaskRecord]) -> Vec<StepState> {
    let mut states: Vec<StepState> = vec![StepState::Waiting; plan.steps.len()];
    let index: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let Ok(order) = order(plan) else {
        return states;
    };
    for i in order {
        let s = &plan.steps[i];
        let deps: Vec<&StepState> = s
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).map(|&j| &states[j]))
            .collect();
        if deps
            .iter()
            .any(|d| matches!(d, StepState::Failed(_) | StepState::Blocked))
        {
            states[i] = StepState::Blocked;
            continue;
        }
        if !deps.iter().all(|d| matches!(d, StepState::Succeeded(_))) {
            continue;
        }
        let mut inputs = BTreeMap::new();
        for name in &s.inputs {
            if let Some(StepState::Succeeded(t)) = index.get(name.as_str()).map(|&j| &states[j]) {
                inputs.insert(name.clone(), t.id.clone());
            }
        }
        let role = s.role.as_deref().unwrap_or(default_role);
        let key = fingerprint(s, role, &inputs);
        let tries: Vec<&TaskRecord> = children
            .iter()
            .filter(|c| c.lineage.step_key.as_deref() == Some(key.as_str()))
            .collect();
        states[i] = if let Some(t) = tries.iter().find(|t| t.state == TaskState::Succeeded) {
            StepState::Succeeded((*t).clone())
        } else if let Some(t) = tries.iter().find(|t| !t.state.is_terminal()) {
            StepState::Active((*t).clone())
        } else if tries.len() as u32 > s.retries.unwrap_or(1) {
            StepState::Failed((*tries[tries.len() - 1]).clone())
        } else {
            StepState::Ready {
                attempt: tries.len() as u32 + 1,
                key,
                inputs,
            }
        };
    }
    states
}

fn state_name(s: &StepState) -> String {
    match s {
        StepState::Waiting => "waiting".into(),
        StepState::Blocked => "blocked".into(),
        StepState::Ready { .. } => "queued".into(),
        StepState::Active(t) => t.state.as_str().into(),
        StepState::Succeeded(_) => "succeeded".into(),
        StepState::Failed(t) if t.state == TaskState::Cancelled => "cancelled".into(),
        StepState::Failed(_) => "failed".into(),
    }
}

/// A plan task's plan with each step's state (`GET /v1/plans/{id}`, `warren plan show`).
pub fn view(store: &dyn Store, id: &str) -> Result<PlanView, StoreError> {
    let task = store.get_task(id)?;
    if task.lineage.kind != TaskKind::Plan {
        return Err(StoreError::NotFound {
            what: "plan",
            id: id.to_owned(),
        });
    }
    let mut steps = Vec::new();
    let mut revision = None;
    if let Some(rec) = store.get_plan(id)? {
        revision = Some(rec.revision);
        let plan: Plan =
            serde_json::from_str(&rec.spec).map_err(|e| StoreError::Db(e.to_string()))?;
        let children = children(store, id)?;
        let states = statuses(&plan, &task.agent, &children);
        for (s, st) in plan.steps.iter().zip(states) {
            let key_tries = |t: &TaskRecord| {
                children
                    .iter()
                    .filter(|c| c.lineage.step_key == t.lineage.step_key)
                    .count() as u32
            };
            let (latest, attempts, reason) = match &st {
                StepState::Active(t) | StepState::Succeeded(t) | StepState::Failed(t) => {
                    (Some(t.id.clone()), key_tries(t), t.reason.clone())
                }
                StepState::Ready { attempt, .. } => (None, attempt - 1, None),
                _ => (None, 0, None),
            };
            steps.push(StepView {
                id: s.id.clone(),
                goal: s.goal.clone(),
                role: s.role.clone().unwrap_or_else(|| task.agent.clone()),
                depends_on: s.depends_on.clone(),
                inputs: s.inputs.clone(),
                state: state_name(&st),
                task: latest,
                attempts,
                reason,
            });
        }
    }
    Ok(PlanView {
        task: task.id,
        goal: task.goal,
        state: task.state,
        revision,
        steps,
    })
}

/// A task's children, oldest first.
pub fn children(store: &dyn Store, id: &str) -> Result<Vec<TaskRecord>, StoreError> {
    store.list_tasks(&TaskFilter {
        parent: Some(id.to_owned()),
        ..TaskFilter::default()
    })
}

/// The planner's system prompt: the format, the agents it may use, the plan's capabilities.
fn planner_prompt(
    roles: &HashMap<String, Manifest>,
    caps: &Capabilities,
    limits: &PlanLimits,
) -> String {
    let mut agents: Vec<&Manifest> = roles.values().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let mut p = format!(
        "You are Warren's planner. Split the user's goal into steps that agents carry out, each \
         in its own isolated cell, as a directed acyclic graph, and call {PLAN_TOOL} exactly once \
         with the plan.\n\
         Each step has: id (1-32 of a-z, 0-9, _ and -), goal (what its agent must achieve, \
         self-contained: the agent sees nothing else), role (one of the agents below), \
         depends_on (steps that must succeed first), inputs (steps among its dependencies whose \
         outputs it reads: /task/inputs/<id>/result.json and /task/inputs/<id>/diff.patch), \
         retries (0-{MAX_RETRIES}, default 1) and optionally capabilities (tools, paths as \
         {{glob, access}}, network, budget_tokens) to give the step less than the plan has, \
         never more.\n\
         Steps that do not depend on each other run in parallel. At most {} steps; fewer is \
         better.\n\nAgents:\n",
        limits.max_steps
    );
    for a in agents {
        p.push_str(&format!(
            "- {}: {} (tools: {})\n",
            a.name,
            if a.description.is_empty() {
                "no description"
            } else {
                &a.description
            },
            a.tools.join(", ")
        ));
    }
    let net = caps.network();
    p.push_str(&format!(
        "\nThe plan may reach the network only at: {}.\n",
        if net.is_empty() {
            "nowhere".to_owned()
        } else {
            net.join(", ")
        }
    ));
    p
}

/// What the planner was told and answered, for a later try.
fn plan_from(r: &warren_llm::ChatResponse) -> Result<Plan, String> {
    let args = match r.tool_calls.iter().find(|c| c.name == PLAN_TOOL) {
        Some(c) => c.arguments.clone(),
        None => {
            // A model that wrote the plan as text: its first JSON object.
            let t = r.text.trim();
            match (t.find('{'), t.rfind('}')) {
                (Some(a), Some(b)) if a < b => t[a..=b].to_owned(),
                _ => {
                    return Err(format!(
                        "no plan: call {PLAN_TOOL} with the plan as its arguments"
                    ));
                }
            }
        }
    };
    serde_json::from_str::<Plan>(&args).map_err(|e| format!("the plan does not parse: {e}"))
}

/// What one planner exchange produced.
struct Planned {
    plan: Plan,
    usage: warren_llm::Usage,
    tries: usize,
}

impl Engine {
    /// Deployed agents a step may run as (the latest version of each).
    fn roles(&self) -> HashMap<String, Manifest> {
        let mut out = HashMap::new();
        for a in self.store.list_agents().unwrap_or_default() {
            if let Ok(m) = crate::engine::parse_manifest(
                std::path::Path::new(&format!("agent {} v{}", a.name, a.version)),
                &a.manifest,
            ) {
                out.insert(a.name, m);
            }
        }
        out
    }

    /// Ask the planner (up to [`PLANNER_TRIES`] times, errors fed back) for a valid plan.
    async fn make_plan(
        &self,
        task: &TaskRecord,
        manifest: &Manifest,
        caps: &Capabilities,
        situation: Option<String>,
    ) -> Result<Planned, String> {
        let (provider, model) = self
            .provider(manifest)
            .map_err(|e| format!("model provider: {e}"))?;
        let roles = self.roles();
        let cx = Context {
            roles: &roles,
            default_role: &task.agent,
            caps,
            limits: &self.opts.plans,
        };
        let mut goal = task.goal.clone();
        if let Some(s) = situation {
            goal.push_str("\n\n");
            goal.push_str(&s);
        }
        let mut messages = vec![Message::User { content: goal }];
        let mut usage = warren_llm::Usage::default();
        let mut last = String::new();
        for tries in 1..=PLANNER_TRIES {
            let request = ChatRequest {
                model: model.clone(),
                system: planner_prompt(&roles, caps, &self.opts.plans),
                messages: messages.clone(),
                tools: vec![plan_tool()],
                max_tokens: 4096,
                temperature: None,
                stream: false,
            };
            let mut ignore = |_e: warren_llm::StreamEvent| {};
            let r = provider
                .chat(&request, &mut ignore)
                .await
                .map_err(|e| format!("the planner's model failed: {e}"))?;
            usage = usage.plus(r.usage);
            let verdict = plan_from(&r).and_then(|p| match validate(&p, &cx) {
                Ok(()) => Ok(p),
                Err(errors) => Err(format!("the plan is invalid:\n- {}", errors.join("\n- "))),
            });
            match verdict {
                Ok(plan) => return Ok(Planned { plan, usage, tries }),
                Err(e) => {
                    last = e.clone();
                    let id = r
                        .tool_calls
                        .first()
                        .map_or_else(|| "plan".to_owned(), |c| c.id.clone());
                    let had_call = !r.tool_calls.is_empty();
                    messages.push(Message::Assistant {
                        text: r.text,
                        tool_calls: r.tool_calls,
                    });
                    let fix = format!("{e}\nFix these and call {PLAN_TOOL} again.");
                    messages.push(if had_call {
                        Message::Tool {
                            call_id: id,
                            content: fix,
                            is_error: true,
                        }
                    } else {
                        Message::User { content: fix }
                    });
                }
            }
        }
        Err(format!(
            "the planner gave no valid plan in {PLANNER_TRIES} tries; last: {last}"
        ))
    }

    /// Run a plan task: plan (unless a plan is stored), then keep submitting ready steps until
    /// every step succeeded, or one failed past its retries and replans, or a stop.
    pub(crate) async fn drive_plan(
        &self,
        task: &TaskRecord,
        manifest: &Manifest,
        _run: &Running,
        mut stop: tokio::sync::watch::Receiver<Option<Stop>>,
    ) -> End {
        let id = &task.id;
        // A plan waits on its steps: it holds no slot they need.
        lock(&self.sched).finished(id);
        let caps = self.task_caps(task, manifest);
        let mut changes = self.changes();
        let mut current = match self.store.get_plan(id) {
            Ok(Some(rec)) => match serde_json::from_str::<Plan>(&rec.spec) {
                Ok(p) => (p, rec.revision),
                Err(e) => {
                    return End::Final(
                        TaskState::Interrupted,
                        format!("its stored plan is unreadable: {e}"),
                    );
                }
            },
            Ok(None) => {
                let planned = tokio::select! {
                    biased;
                    s = crate::runner::wait_stop(&mut stop) => return self.plan_stopped(id, s),
                    p = self.make_plan(task, manifest, &caps, None) => p,
                };
                match planned {
                    Ok(p) => match self.store_plan(task, &p, 0, &[]) {
                        Ok(()) => (p.plan, 0),
                        Err(e) => return End::Final(TaskState::Failed, e),
                    },
                    Err(e) => {
                        self.audit.record(
                            Some(id),
                            AuditKind::PlanCreated.as_str(),
                            &json!({"error": e}),
                        );
                        return End::Final(TaskState::Failed, e);
                    }
                }
            }
            Err(e) => return End::Final(TaskState::Interrupted, format!("its plan: {e}")),
        };
        let mut announced: HashSet<(String, String)> = HashSet::new();
        loop {
            if let Some(s) = stop.borrow().clone() {
                return self.plan_stopped(id, s);
            }
            match self.advance(task, &current.0, &caps, &mut announced) {
                Err(e) => tracing::warn!("plan {id}: {e}"),
                Ok(Progress::Working) => {}
                Ok(Progress::Done(result)) => {
                    let summary = format!("all {} steps succeeded", current.0.steps.len());
                    let doc = json!({"outcome": "finished", "success": true, "summary": summary,
                        "steps": result, "revision": current.1});
                    // The plan's diff: each step's, in the plan's order, under a comment line
                    // naming the step (each step changed its own layer of the workspace).
                    let mut diff = String::new();
                    for s in &current.0.steps {
                        let Some(t) = result[&s.id]["task"].as_str() else {
                            continue;
                        };
                        let d = self.store.get_artifact(t, "diff").unwrap_or_default();
                        if !d.is_empty() {
                            diff.push_str(&format!("# step {} (task {t})\n", s.id));
                            diff.push_str(&String::from_utf8_lossy(&d));
                        }
                    }
                    for (name, bytes) in [("result", doc.to_string()), ("diff", diff)] {
                        if let Err(e) = self.store.put_artifact(id, name, bytes.as_bytes()) {
                            self.event(
                                id,
                                EventKind::TaskArtifactFailed,
                                json!({"artifact": name, "error": e.to_string()}),
                            );
                        }
                    }
                    return End::Final(TaskState::Succeeded, summary);
                }
                Ok(Progress::Failed { step, reason }) => {
                    let why = format!("step {step} failed: {reason}");
                    if current.1 >= self.opts.plans.max_replans {
                        self.cancel_children(id, "its plan failed").await;
                        return End::Final(
                            TaskState::Failed,
                            format!("{why} (after {} replans)", current.1),
                        );
                    }
                    let situation = self.situation(task, &current.0, &why);
                    let planned = tokio::select! {
                        biased;
                        s = crate::runner::wait_stop(&mut stop) => return self.plan_stopped(id, s),
                        p = self.make_plan(task, manifest, &caps, Some(situation)) => p,
                    };
                    let planned = match planned {
                        Ok(p) => p,
                        Err(e) => {
                            self.cancel_children(id, "its plan failed").await;
                            return End::Final(
                                TaskState::Failed,
                                format!("{why}; replanning: {e}"),
                            );
                        }
                    };
                    let revision = current.1 + 1;
                    let old = children(&*self.store, id).unwrap_or_default();
                    let kept: Vec<String> = statuses(&planned.plan, &task.agent, &old)
                        .iter()
                        .zip(&planned.plan.steps)
                        .filter(|(st, _)| {
                            matches!(st, StepState::Succeeded(_) | StepState::Active(_))
                        })
                        .map(|(_, s)| s.id.clone())
                        .collect();
                    if let Err(e) = self.store_plan(task, &planned, revision, &kept) {
                        return End::Final(TaskState::Failed, e);
                    }
                    // Running steps the new plan does not keep are stopped.
                    let live: HashSet<String> = statuses(&planned.plan, &task.agent, &old)
                        .into_iter()
                        .filter_map(|st| match st {
                            StepState::Active(t) => Some(t.id),
                            _ => None,
                        })
                        .collect();
                    for c in old
                        .iter()
                        .filter(|c| !c.state.is_terminal() && !live.contains(&c.id))
                    {
                        let _ =
                            Box::pin(self.cancel(&c.id, "its plan was replanned", "warren")).await;
                    }
                    current = (planned.plan, revision);
                    continue;
                }
            }
            tokio::select! {
                biased;
                s = crate::runner::wait_stop(&mut stop) => return self.plan_stopped(id, s),
                _ = changes.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }

    /// Store a (re)plan and say so: audit and event on the plan task.
    fn store_plan(
        &self,
        task: &TaskRecord,
        p: &Planned,
        revision: u32,
        kept: &[String],
    ) -> Result<(), String> {
        let spec = serde_json::to_string(&p.plan).map_err(|e| e.to_string())?;
        self.store
            .put_plan(&task.id, revision, &spec)
            .map_err(|e| format!("storing its plan: {e}"))?;
        let steps: Vec<&str> = p.plan.steps.iter().map(|s| s.id.as_str()).collect();
        let (kind, ekind) = if revision == 0 {
            (AuditKind::PlanCreated, EventKind::PlanCreated)
        } else {
            (AuditKind::PlanReplanned, EventKind::PlanReplanned)
        };
        let data = json!({"revision": revision, "steps": steps, "kept": kept,
            "planner_tries": p.tries, "usage": p.usage, "plan": p.plan});
        self.audit.record(Some(&task.id), kind.as_str(), &data);
        self.event(
            &task.id,
            ekind,
            json!({"revision": revision, "steps": steps, "kept": kept}),
        );
        Ok(())
    }

    /// What the planner is told when a step failed past its retries.
    fn situation(&self, task: &TaskRecord, plan: &Plan, why: &str) -> String {
        let kids = children(&*self.store, &task.id).unwrap_or_default();
        let states = statuses(plan, &task.agent, &kids);
        let mut s = format!(
            "The plan so far, with each step's state:\n{}\n\n{why}.\nMake a new plan for what \
             remains. Keep every step that succeeded exactly as it is (same id, goal, role, \
             inputs and capabilities): its result is reused, not redone.\n",
            serde_json::to_string_pretty(plan).unwrap_or_default()
        );
        for (st, step) in states.iter().zip(&plan.steps) {
            s.push_str(&format!("- {}: {}", step.id, state_name(st)));
            if let StepState::Failed(t) = st
                && let Some(r) = &t.reason
            {
                s.push_str(&format!(" ({r})"));
            }
            s.push('\n');
        }
        s
    }

    /// One pass: submit every ready step; report the plan's end if it has one.
    fn advance(
        &self,
        task: &TaskRecord,
        plan: &Plan,
        caps: &Capabilities,
        announced: &mut HashSet<(String, String)>,
    ) -> Result<Progress, String> {
        let kids = children(&*self.store, &task.id).map_err(|e| e.to_string())?;
        let states = statuses(plan, &task.agent, &kids);
        let depth = Bounds::of(task).map_or(0, |b| b.depth);
        let mut failed = None;
        let mut done = serde_json::Map::new();
        for (st, step) in states.iter().zip(&plan.steps) {
            let note = |t: &TaskRecord, announced: &mut HashSet<(String, String)>| {
                if announced.insert((t.id.clone(), t.state.as_str().into())) {
                    self.event(
                        &task.id,
                        EventKind::PlanStep,
                        json!({"step": step.id,
                        "task": t.id, "state": t.state.as_str(), "reason": t.reason}),
                    );
                }
            };
            match st {
                StepState::Ready {
                    attempt,
                    key,
                    inputs,
                } => {
                    self.submit_step(task, step, *attempt, key, inputs, caps, depth)?;
                }
                StepState::Active(t) => note(t, announced),
                StepState::Succeeded(t) => {
                    note(t, announced);
                    let result = self
                        .store
                        .get_artifact(&t.id, "result")
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                    done.insert(
                        step.id.clone(),
                        json!({"task": t.id,
                        "summary": result.as_ref().map(|r| r["summary"].clone())}),
                    );
                }
                StepState::Failed(t) => {
                    note(t, announced);
                    if failed.is_none() {
                        failed = Some((step.id.clone(), t.reason.clone().unwrap_or_default()));
                    }
                }
                StepState::Waiting | StepState::Blocked => {}
            }
        }
        if let Some((step, reason)) = failed {
            return Ok(Progress::Failed { step, reason });
        }
        if done.len() == plan.steps.len() {
            return Ok(Progress::Done(Value::Object(done)));
        }
        Ok(Progress::Working)
    }

    /// Queue a step's attempt as a child task (idempotent: its id is derived).
    #[allow(clippy::too_many_arguments)]
    fn submit_step(
        &self,
        task: &TaskRecord,
        step: &Step,
        attempt: u32,
        key: &str,
        inputs: &BTreeMap<String, String>,
        caps: &Capabilities,
        depth: u32,
    ) -> Result<(), String> {
        let role = step.role.clone().unwrap_or_else(|| task.agent.clone());
        let agent = self
            .store
            .get_agent(&role, None)
            .map_err(|e| format!("step {}: its role: {e}", step.id))?;
        let mut layers: Vec<LayerSpec> = caps
            .inherited()
            .into_iter()
            .map(|mut l| {
                l.origin = format!("plan {}: {}", task.id, l.origin);
                l
            })
            .collect();
        let mut budget = None;
        if let Some(n) = &step.capabilities {
            let l = n
                .layer(&format!("plan step {}", step.id))
                .map_err(|e| format!("step {}: {e}", step.id))?;
            // Checked at validation; checked again here, where it is enforced.
            caps.covers(&l)
                .map_err(|e| format!("step {}: {e}", step.id))?;
            layers.push(l.spec());
            budget = n.budget_tokens;
        }
        let bounds = Bounds {
            layers,
            depth: depth + 1,
            budget_tokens: budget,
            inputs: inputs.clone(),
        };
        let mut goal = step.goal.clone();
        if !inputs.is_empty() {
            goal.push_str(&format!(
                "\n\nOutputs of earlier steps are in /task/inputs/<step>/ (result.json: its \
                 result; diff.patch: its changes to the workspace): {}.",
                inputs.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let id = attempt_id(&task.id, key, attempt);
        let new = NewTask {
            id: id.clone(),
            agent: agent.name,
            agent_version: agent.version,
            goal,
            priority: task.priority,
            workspace: task.workspace.clone(),
            lineage: Lineage {
                kind: TaskKind::Agent,
                parent: Some(task.id.clone()),
                step: Some(step.id.clone()),
                step_key: Some(key.to_owned()),
                bounds: Some(serde_json::to_string(&bounds).map_err(|e| e.to_string())?),
            },
        };
        let submitted = lock(&self.sched).submit(new);
        match submitted {
            Ok(rec) => {
                self.audit.record(
                    Some(&task.id),
                    AuditKind::PlanStep.as_str(),
                    &json!({"step": step.id, "task": rec.id, "attempt": attempt, "key": key,
                        "role": rec.agent, "inputs": inputs, "capabilities": bounds.layers.last()}),
                );
                self.audit_submitted(&rec, &format!("plan {}", task.id));
                self.event(
                    &task.id,
                    EventKind::PlanStep,
                    json!({"step": step.id, "task": rec.id,
                    "state": "queued", "attempt": attempt}),
                );
                self.wake.notify_one();
                Ok(())
            }
            // Submitted by an earlier pass (or another daemon): nothing to do.
            Err(crate::scheduler::SchedError::Store(StoreError::Exists { .. })) => Ok(()),
            // The queue is full: the next pass tries again.
            Err(e @ crate::scheduler::SchedError::QueueFull { .. }) => {
                tracing::info!("plan {}: step {}: {e}", task.id, step.id);
                Ok(())
            }
            Err(e) => Err(format!("step {}: {e}", step.id)),
        }
    }

    fn plan_stopped(&self, id: &str, s: Stop) -> End {
        match s {
            Stop::Cancel(reason) => {
                self.audit.record(
                    Some(id),
                    AuditKind::TaskCancelled.as_str(),
                    &json!({"reason": reason}),
                );
                self.event(id, EventKind::TaskCancelled, json!({"reason": reason}));
                End::Final(TaskState::Cancelled, reason)
            }
            Stop::Signal(sig) => End::Final(
                TaskState::Interrupted,
                format!("interrupted by signal {sig}"),
            ),
            Stop::Shutdown => {
                End::Requeue("the daemon shut down; the plan resumes where it was".into())
            }
            Stop::LeaseLost => End::Abandon,
        }
    }
}

/// Where a plan is after a pass.
enum Progress {
    /// Steps are queued, running or waiting.
    Working,
    /// Every step succeeded: each step's task and summary.
    Done(Value),
    /// A step failed past its retries.
    Failed {
        /// The step.
        step: String,
        /// Its last attempt's reason.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn step(id: &str, deps: &[&str]) -> Step {
        Step {
            id: id.into(),
            goal: format!("do {id}"),
            role: None,
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            inputs: Vec::new(),
            retries: None,
            capabilities: None,
        }
    }

    #[test]
    fn order_follows_dependencies_and_finds_cycles() {
        let p = Plan {
            steps: vec![step("c", &["a", "b"]), step("a", &[]), step("b", &["a"])],
        };
        let o: Vec<&str> = order(&p)
            .unwrap()
            .into_iter()
            .map(|i| p.steps[i].id.as_str())
            .collect();
        assert_eq!(o, ["a", "b", "c"]);
        let cyclic = Plan {
            steps: vec![step("a", &["b"]), step("b", &["a"]), step("c", &[])],
        };
        assert_eq!(order(&cyclic).unwrap_err(), ["a", "b"]);
    }

    #[test]
    fn fingerprints_change_with_the_inputs_tasks() {
        let s = step("a", &[]);
        let mut i = BTreeMap::new();
        let k1 = fingerprint(&s, "coder", &i);
        assert_eq!(k1, fingerprint(&s, "coder", &i));
        i.insert("x".to_owned(), "t1".to_owned());
        assert_ne!(k1, fingerprint(&s, "coder", &i));
        assert_ne!(k1, fingerprint(&s, "other", &BTreeMap::new()));
        assert_eq!(attempt_id("tp", &k1, 1), attempt_id("tp", &k1, 1));
        assert_ne!(attempt_id("tp", &k1, 1), attempt_id("tp", &k1, 2));
        assert!(warren_protocol::api::is_task_id(&attempt_id("tp", &k1, 1)));
    }
}
