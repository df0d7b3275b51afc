//! Every operation on Warren, as a value: [`Action`]s change something, [`Query`]s read.
//!
//! Firecracker's `VmmAction` is the model. The HTTP API, the CLI's local mode and (next) MCP
//! *parse* a request into an `Action` or a `Query` and hand it to one handler
//! ([`crate::engine::Engine::handle`], or [`Local::handle`] where no daemon runs). That handler
//! is the one place where an operation is authorized (the [`Caller`]'s [`Role`]), audited
//! (with the caller named) and mapped to one [`ErrorCode`]. No front end touches the store.
//!
//! ```text
//! POST /v1/tasks {agent, goal}  ─► Action::Submit(SubmitTask) ─┐
//! warren agent deploy FILE      ─► Action::Deploy { .. }      ─┼─► handle(caller, op) ─► Answer
//! (MCP) submit_goal             ─► Action::Submit(..)         ─┘      authorize · audit · ErrorCode
//! ```

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use warren_protocol::api::{
    AgentView, ApprovalView, AuditKind, ErrorBody, ErrorCode, EventView, RuleView, SubmitTask,
    TaskState, TaskView,
};
use warren_store::{AgentRecord, EventRecord, Store, StoreError, TaskFilter, TaskRecord};

use crate::gate::{Auditor, Redactor};

/// Who asks. Named in every audit record an action writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `api`, `cli`, `mcp:<client>`, …
    pub name: String,
    /// What the caller may do.
    pub role: Role,
}

impl Caller {
    /// An operator (may do everything) named `name`.
    pub fn operator(name: impl Into<String>) -> Self {
        Caller {
            name: name.into(),
            role: Role::Operator,
        }
    }

    /// A caller that may only read, named `name`.
    pub fn viewer(name: impl Into<String>) -> Self {
        Caller {
            name: name.into(),
            role: Role::Viewer,
        }
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Operator,
    /// Queries only.
    Viewer,
}

/// An operation that changes something.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Validate a manifest and deploy it as the agent's next version. `origin` names the
    /// manifest in errors (a file name, or `manifest` for an API body).
    Deploy {
        /// Where the manifest came from.
        origin: String,
        /// Its text (YAML).
        manifest: String,
    },
    /// Remove every version of an agent.
    RemoveAgent {
        /// The agent.
        name: String,
    },
    /// Queue a task.
    Submit(SubmitTask),
    /// Cancel a queued or running task.
    Cancel {
        /// The task.
        id: String,
        /// Recorded with the cancellation.
        reason: Option<String>,
    },
    /// Queue a failed, cancelled or interrupted task again.
    Retry {
        /// The task.
        id: String,
        /// Start over instead of resuming from checkpoints.
        fresh: bool,
    },
    /// Approve or deny the call a task waits for.
    Decide {
        /// The task.
        id: String,
        /// Run it.
        approve: bool,
        /// Remember the approval as a rule.
        remember: bool,
        /// Why (told to the model on a denial).
        reason: Option<String>,
    },
    /// Forget a remembered approval.
    RemoveRule {
        /// The rule.
        id: i64,
    },
}

impl Action {
    /// The audit kind of this action's record, if it writes one itself (task actions are
    /// audited by the engine as they take effect).
    fn name(&self) -> &'static str {
        match self {
            Action::Deploy { .. } => "deploy",
            Action::RemoveAgent { .. } => "remove_agent",
            Action::Submit(_) => "submit",
            Action::Cancel { .. } => "cancel",
            Action::Retry { .. } => "retry",
            Action::Decide { .. } => "decide",
            Action::RemoveRule { .. } => "remove_rule",
        }
    }
}

/// An operation that only reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Deployed agents (latest versions).
    Agents,
    /// One agent, latest or a given version, with its manifest.
    Agent {
        /// The agent.
        name: String,
        /// A version (default: latest).
        version: Option<u32>,
    },
    /// Tasks, newest first.
    Tasks {
        /// Only this state.
        state: Option<TaskState>,
        /// Only this agent.
        agent: Option<String>,
        /// At most this many (1 to 10 000; default 100).
        limit: Option<u32>,
    },
    /// One task.
    Task {
        /// The task.
        id: String,
    },
    /// A task's result artifact.
    Result {
        /// The task.
        id: String,
    },
    /// A task's changes as a unified diff.
    Diff {
        /// The task.
        id: String,
    },
    /// A task's events after an id (at most 1000).
    Events {
        /// The task.
        id: String,
        /// After this event id.
        after: i64,
    },
    /// What a task waits for.
    Approval {
        /// The task.
        id: String,
    },
    /// A plan task's plan, with each step's state.
    Plan {
        /// The plan task.
        id: String,
    },
    /// Remembered approvals.
    Rules {
        /// Only this agent's.
        agent: Option<String>,
    },
}

/// An operation, for [`crate::engine::Engine::handle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Change something.
    Act(Action),
    /// Read something.
    Ask(Query),
}

impl From<Action> for Op {
    fn from(a: Action) -> Self {
        Op::Act(a)
    }
}

impl From<Query> for Op {
    fn from(q: Query) -> Self {
        Op::Ask(q)
    }
}

/// What an operation answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// An agent.
    Agent(AgentView),
    /// Agents.
    Agents(Vec<AgentView>),
    /// A task.
    Task(TaskView),
    /// Tasks.
    Tasks(Vec<TaskView>),
    /// A task's result (JSON).
    Result(Value),
    /// A unified diff.
    Diff(String),
    /// Events.
    Events(Vec<EventView>),
    /// What a task waits for (or what was decided).
    Approval(ApprovalView),
    /// Remembered approvals.
    Rules(Vec<RuleView>),
    /// A plan.
    Plan(warren_protocol::api::PlanView),
    /// Done; nothing to show.
    Done,
}

/// Why an operation failed: one [`ErrorCode`] and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened, naming the thing.
    pub message: String,
}

impl ActionError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ActionError {
            code,
            message: message.into(),
        }
    }

    /// Invalid input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// No such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// The server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The wire form.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::InvalidTransition { .. } | StoreError::Exists { .. } => ErrorCode::Conflict,
            _ => ErrorCode::Internal,
        };
        ActionError::new(code, e.to_string())
    }
}

/// Largest `limit` of a task listing.
pub const MAX_LIST: u32 = 10_000;

/// The view of a stored task.
pub fn task_view(t: TaskRecord) -> TaskView {
    TaskView {
        id: t.id,
        agent: t.agent,
        agent_version: t.agent_version,
        goal: t.goal,
        priority: t.priority,
        state: t.state,
        attempts: t.attempts,
        reason: t.reason,
        workspace: t.workspace,
        worker: t.lease_owner,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        kind: t.lineage.kind.as_str().into(),
        parent: t.lineage.parent,
        step: t.lineage.step,
    }
}

/// The view of a stored event.
pub fn event_view(e: EventRecord) -> EventView {
    EventView {
        id: e.id,
        task: e.task,
        kind: warren_protocol::api::EventKind::parse(&e.kind),
        payload: e.payload,
        at_ms: e.at_ms,
    }
}

fn agent_view(a: AgentRecord, with_manifest: bool) -> AgentView {
    AgentView {
        name: a.name,
        version: a.version,
        created_ms: a.created_ms,
        manifest: with_manifest.then_some(a.manifest),
    }
}

fn check_id(id: &str) -> Result<(), ActionError> {
    if warren_protocol::api::is_task_id(id) {
        Ok(())
    } else {
        Err(ActionError::invalid(format!("{id:?} is not a task id")))
    }
}

/// Refuse what `caller` may not do.
pub fn authorize(caller: &Caller, op: &Op) -> Result<(), ActionError> {
    match (caller.role, op) {
        (Role::Operator, _) | (Role::Viewer, Op::Ask(_)) => Ok(()),
        (Role::Viewer, Op::Act(a)) => Err(ActionError::new(
            ErrorCode::Unauthorized,
            format!(
                "{} may only read; {} needs an operator",
                caller.name,
                a.name()
            ),
        )),
    }
}

/// What every handler shares: the store and the audit log.
#[derive(Clone)]
pub struct Control {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The audit log writer.
    pub audit: Auditor,
}

impl Control {
    /// The operations that need no running engine: agents, rules, and every query but a
    /// running task's approval. `None` for the rest.
    pub(crate) fn handle(
        &self,
        caller: &Caller,
        op: &Op,
        diff: &dyn Fn(&str) -> Result<String, ActionError>,
    ) -> Option<Result<Answer, ActionError>> {
        Some(match op {
            Op::Act(Action::Deploy { origin, manifest }) => self.deploy(caller, origin, manifest),
            Op::Act(Action::RemoveAgent { name }) => self.remove_agent(caller, name),
            Op::Act(Action::RemoveRule { id }) => self.remove_rule(caller, *id),
            Op::Act(_) | Op::Ask(Query::Approval { .. }) => return None,
            Op::Ask(q) => self.query(q, diff),
        })
    }

    fn deploy(&self, caller: &Caller, origin: &str, text: &str) -> Result<Answer, ActionError> {
        let m = crate::engine::parse_manifest(Path::new(origin), text)
            .map_err(|e| ActionError::invalid(e.to_string()))?;
        let rec = self.store.put_agent(&m.name, text)?;
        self.audit.record(
            None,
            AuditKind::AgentDeployed.as_str(),
            &json!({"name": rec.name, "version": rec.version, "by": caller.name}),
        );
        Ok(Answer::Agent(agent_view(rec, true)))
    }

    fn remove_agent(&self, caller: &Caller, name: &str) -> Result<Answer, ActionError> {
        self.store.delete_agent(name)?;
        self.audit.record(
            None,
            AuditKind::AgentRemoved.as_str(),
            &json!({"name": name, "by": caller.name}),
        );
        Ok(Answer::Done)
    }

    fn remove_rule(&self, caller: &Caller, id: i64) -> Result<Answer, ActionError> {
        self.store.remove_approval_rule(id)?;
        self.audit.record(
            None,
            AuditKind::ApprovalRuleRemoved.as_str(),
            &json!({"rule": id, "by": caller.name}),
        );
        Ok(Answer::Done)
    }

    fn query(
        &self,
        q: &Query,
        diff: &dyn Fn(&str) -> Result<String, ActionError>,
    ) -> Result<Answer, ActionError> {
        let s = &self.store;
        Ok(match q {
            Query::Agents => Answer::Agents(
                s.list_agents()?
                    .into_iter()
                    .map(|a| agent_view(a, false))
                    .collect(),
            ),
            Query::Agent { name, version } => {
                Answer::Agent(agent_view(s.get_agent(name, *version)?, true))
            }
            Query::Tasks {
                state,
                agent,
                limit,
            } => {
                let limit = limit.unwrap_or(100);
                if limit == 0 || limit > MAX_LIST {
                    return Err(ActionError::invalid(format!(
                        "limit: must be 1 to {MAX_LIST}"
                    )));
                }
                let list = s.list_tasks(&TaskFilter {
                    state: *state,
                    agent: agent.clone(),
                    limit: Some(limit),
                    parent: None,
                })?;
                Answer::Tasks(list.into_iter().map(task_view).collect())
            }
            Query::Task { id } => {
                check_id(id)?;
                Answer::Task(task_view(s.get_task(id)?))
            }
            Query::Result { id } => {
                check_id(id)?;
                let t = s.get_task(id)?;
                match s.get_artifact(id, "result") {
                    Ok(data) => Answer::Result(serde_json::from_slice(&data).map_err(|e| {
                        ActionError::internal(format!("task {id}: its stored result: {e}"))
                    })?),
                    Err(StoreError::NotFound { .. }) => {
                        return Err(ActionError::conflict(format!(
                            "task {id} is {} and has no result{}",
                            t.state.as_str(),
                            t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Query::Diff { id } => {
                check_id(id)?;
                Answer::Diff(diff(id)?)
            }
            Query::Plan { id } => {
                check_id(id)?;
                Answer::Plan(crate::plan::view(&**s, id)?)
            }
            Query::Events { id, after } => {
                check_id(id)?;
                s.get_task(id)?;
                let ev = s.events_since(Some(id), *after, 1000)?;
                Answer::Events(ev.into_iter().map(event_view).collect())
            }
            Query::Rules { agent } => Answer::Rules(
                s.approval_rules(agent.as_deref())?
                    .into_iter()
                    .map(|r| RuleView {
                        id: r.id,
                        agent: r.agent,
                        tool: r.tool,
                        pattern: r.pattern,
                        created_ms: r.created_ms,
                    })
                    .collect(),
            ),
            Query::Approval { .. } => {
                return Err(ActionError::internal("approvals are the engine's"));
            }
        })
    }
}

/// The handler where no daemon runs (the CLI's local mode over the state directory's store):
/// agents, rules and queries, audited like the daemon's. Task actions need the daemon and are
/// refused with `unavailable`.
pub struct Local {
    control: Control,
    state_dir: std::path::PathBuf,
}

impl Local {
    /// A handler over the store in `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Self, ActionError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ActionError::internal(format!("{}: {e}", state_dir.display())))?;
        let store = warren_store::sqlite::SqliteStore::open(&state_dir.join("warren.db"))?;
        let store: Arc<dyn Store> = Arc::new(store);
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let audit = Auditor::new(Arc::clone(&store), Arc::new(Redactor::from_env(&env)));
        Ok(Local {
            control: Control { store, audit },
            state_dir: state_dir.to_owned(),
        })
    }

    /// Handle `op` for `caller`.
    pub fn handle(&self, caller: &Caller, op: Op) -> Result<Answer, ActionError> {
        authorize(caller, &op)?;
        let state = self.state_dir.clone();
        let store = Arc::clone(&self.control.store);
        let diff = move |id: &str| crate::engine::stored_diff(&*store, &state, id);
        match self.control.handle(caller, &op, &diff) {
            Some(r) => r,
            None => Err(ActionError::new(
                ErrorCode::Unavailable,
                "this needs a running daemon (`warren daemon start`)",
            )),
        }
    }
}
