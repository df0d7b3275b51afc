//! Warren's durable store: what must survive a crash of the daemon.
//!
//! - **Agents**: manifests, versioned per name (deploying again adds a version).
//! - **Tasks**: `queued → running → awaiting_approval → succeeded | failed | cancelled |
//!   interrupted`, with priority and attempts. Workers *claim* the next task under a lease;
//!   a task whose lease expired (its daemon died) is recovered for resumption.
//! - **Checkpoints**: every model turn and tool result, written *before* it is acted on, with
//!   a per-task sequence number that makes writing the same step twice an error, not a
//!   duplicate — so a resumed task can neither repeat nor lose a step.
//! - **Events**: typed, append-only, with a global monotonic id (streams resume from an id).
//! - **Artifacts**: named blobs of a task (result, diff).
//!
//! Everything is behind [`Store`]; [`sqlite::SqliteStore`] is the embedded default (WAL mode,
//! versioned migrations); [`postgres::PgStore`] is one database shared by several nodes
//! (`SKIP LOCKED` claims, LISTEN/NOTIFY wake-ups, one audit chain). [`open`] picks one from a
//! `--store` argument. The same test suite runs against both.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod audit;
mod pgwire;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use warren_protocol::api::TaskState;

/// A deployed agent manifest version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Agent name.
    pub name: String,
    /// 1, 2, … per name.
    pub version: u32,
    /// The manifest as deployed (YAML or JSON text).
    pub manifest: String,
    /// Unix milliseconds.
    pub created_ms: i64,
}

/// A task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: String,
    /// Agent name.
    pub agent: String,
    /// Agent version it runs.
    pub agent_version: u32,
    /// The goal.
    pub goal: String,
    /// Higher runs first.
    pub priority: i32,
    /// State.
    pub state: TaskState,
    /// Times it was claimed.
    pub attempts: u32,
    /// Worker holding the lease, while running.
    pub lease_owner: Option<String>,
    /// Lease expiry (Unix ms), while running.
    pub lease_until_ms: Option<i64>,
    /// Why it last changed state, when given.
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// The project directory on the host the task works on (copy-on-write), if any.
    pub workspace: Option<String>,
    /// Where it comes from: a plan or a delegating task, and the bounds it inherited.
    pub lineage: Lineage,
}

/// What a task is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// An agent works on the goal in a cell.
    #[default]
    Agent,
    /// A planner splits the goal into steps, each a child task (no cell of its own).
    Plan,
}

impl TaskKind {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Agent => "agent",
            TaskKind::Plan => "plan",
        }
    }

    /// Parse a stored name (anything else is an agent task).
    pub fn parse(s: &str) -> Self {
        if s == "plan" {
            TaskKind::Plan
        } else {
            TaskKind::Agent
        }
    }
}

/// A task's place in a tree of tasks: a plan's step, or a delegating agent's child.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Agent task or plan.
    pub kind: TaskKind,
    /// The task that started it (a plan, or an agent calling `delegate`).
    pub parent: Option<String>,
    /// The plan step it runs (its id in the plan).
    pub step: Option<String>,
    /// The step's fingerprint: goal, role, capabilities and the tasks whose outputs it takes.
    /// A step with the same fingerprint after a replan is the same work: its result is kept.
    pub step_key: Option<String>,
    /// What it inherited (JSON, written by the runtime): the capability layers of its
    /// ancestors, its budget, its depth, its inputs. Capabilities only narrow down a tree.
    pub bounds: Option<String>,
}

/// A plan as stored: the root task's current, validated plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The plan's root task.
    pub task: String,
    /// 0 for the first plan, then one more per replan.
    pub revision: u32,
    /// The plan (JSON, written by the runtime).
    pub spec: String,
    /// Unix milliseconds.
    pub updated_ms: i64,
}

/// A new task.
#[derive(Clone, Debug, Default)]
pub struct NewTask {
    /// Id (the caller chooses it, so it can name the task's cell too).
    pub id: String,
    /// Agent name.
    pub agent: String,
    /// Agent version.
    pub agent_version: u32,
    /// Goal.
    pub goal: String,
    /// Priority (higher first).
    pub priority: i32,
    /// Host project directory (copy-on-write in the task's cell), if any.
    pub workspace: Option<String>,
    /// Plan or delegation it belongs to (default: none, an agent task).
    pub lineage: Lineage,
}

/// What a checkpoint records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A model response, before its tool calls run.
    ModelTurn,
    /// A tool result, before it is given to the model.
    ToolResult,
}

impl CheckpointKind {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::ModelTurn => "model_turn",
            CheckpointKind::ToolResult => "tool_result",
        }
    }

    /// Parse a stored name (anything else is a tool result).
    pub fn parse(s: &str) -> Self {
        if s == "model_turn" {
            CheckpointKind::ModelTurn
        } else {
            CheckpointKind::ToolResult
        }
    }
}

/// One step of a task, durable before it is acted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Task.
    pub task: String,
    /// 0, 1, 2, … per task, no gaps.
    pub seq: u64,
    /// Kind.
    pub kind: CheckpointKind,
    /// The step's content.
    pub payload: serde_json::Value,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Global, monotonic.
    pub id: i64,
    /// The task it concerns, if any.
    pub task: Option<String>,
    /// Event type, e.g. `task.state`.
    pub kind: String,
    /// Data.
    pub payload: serde_json::Value,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// A remembered approval: calls of `tool` by `agent` whose argument matches `pattern` (a glob)
/// run without asking again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// Id (to remove it).
    pub id: i64,
    /// Agent it applies to.
    pub agent: String,
    /// Tool.
    pub tool: String,
    /// Glob over the call's main argument (the command, the path).
    pub pattern: String,
    /// Unix milliseconds.
    pub created_ms: i64,
}

/// Filter for listing tasks.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this agent.
    pub agent: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<u32>,
    /// Only children of this task (oldest first).
    pub parent: Option<String>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// No such record.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of record.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The lifecycle does not allow this move (or the task moved meanwhile).
    #[error("task {id}: cannot move from {from:?} to {to:?}")]
    InvalidTransition {
        /// Task.
        id: String,
        /// Its state.
        from: TaskState,
        /// Requested state.
        to: TaskState,
    },
    /// A checkpoint with this sequence number exists already (the step was recorded).
    #[error("task {task}: checkpoint {seq} exists already")]
    DuplicateCheckpoint {
        /// Task.
        task: String,
        /// Sequence number.
        seq: u64,
    },
    /// Sequence numbers must have no gaps.
    #[error("task {task}: checkpoint {seq} out of order (next is {expected})")]
    CheckpointGap {
        /// Task.
        task: String,
        /// Given.
        seq: u64,
        /// Expected.
        expected: u64,
    },
    /// Ids must be unique.
    #[error("{what} {id} exists already")]
    Exists {
        /// Kind of record.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The worker does not hold the task's lease.
    #[error("task {id}: lease not held by {worker}")]
    LeaseLost {
        /// Task.
        id: String,
        /// Worker.
        worker: String,
    },
}

/// Unix milliseconds now (what both backends stamp records with).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why recovery moved a task back to the queue (both backends record the same words).
pub(crate) const REASON_LEASE_EXPIRED: &str =
    "lease expired: its worker stopped; resuming from checkpoints";
/// Why a restarted worker's own tasks went back to the queue.
pub(crate) const REASON_WORKER_RESTARTED: &str = "its worker restarted; resuming from checkpoints";

/// The gapless rule for checkpoints: `cp` must be number `expected` (the task's next).
pub(crate) fn check_checkpoint_seq(cp: &Checkpoint, expected: u64) -> Result<(), StoreError> {
    if cp.seq < expected {
        return Err(StoreError::DuplicateCheckpoint {
            task: cp.task.clone(),
            seq: cp.seq,
        });
    }
    if cp.seq > expected {
        return Err(StoreError::CheckpointGap {
            task: cp.task.clone(),
            seq: cp.seq,
            expected,
        });
    }
    Ok(())
}

/// What another process changed (see [`Store::on_change`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChange {
    /// A task was queued: the scheduler should look.
    Queue,
    /// Events were recorded: streams should read.
    Events,
}

/// Where a daemon keeps its state: `--store` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (the default: the state directory's `warren.db`).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database shared with other nodes (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

impl Location {
    /// `postgres://…`/`postgresql://…` is a database; anything else a SQLite file path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_owned())
        } else {
            Location::Sqlite(s.into())
        }
    }

    /// How to name it in messages: a PostgreSQL URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => redact_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Open (creating or migrating) the store at `loc`.
pub fn open(loc: &Location) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match loc {
        Location::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path)?),
        Location::Postgres(url) => Arc::new(postgres::PgStore::connect(url)?),
    })
}

/// Persistence for agents, tasks, checkpoints, events and artifacts.
pub trait Store: Send + Sync {
    /// Deploy a manifest: a new version of `name`.
    fn put_agent(&self, name: &str, manifest: &str) -> Result<AgentRecord, StoreError>;
    /// The latest (or a given) version.
    fn get_agent(&self, name: &str, version: Option<u32>) -> Result<AgentRecord, StoreError>;
    /// Latest version of every agent.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Remove every version of `name`.
    fn delete_agent(&self, name: &str) -> Result<(), StoreError>;

    /// Queue a task.
    fn submit(&self, task: NewTask) -> Result<TaskRecord, StoreError>;
    /// Queue a task and claim it for `worker` at once (one transaction: no other worker can
    /// take it in between). `warren run` runs its task this way.
    fn submit_claimed(
        &self,
        task: NewTask,
        worker: &str,
        lease: Duration,
    ) -> Result<TaskRecord, StoreError>;
    /// One task.
    fn get_task(&self, id: &str) -> Result<TaskRecord, StoreError>;
    /// Tasks, newest first.
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError>;
    /// How many tasks are in `state`.
    fn count(&self, state: TaskState) -> Result<u64, StoreError>;
    /// Atomically take the next queued task (highest priority, then oldest) for `worker`.
    fn claim(&self, worker: &str, lease: Duration) -> Result<Option<TaskRecord>, StoreError>;
    /// Like [`Store::claim`], restricted to one agent's tasks.
    fn claim_agent(
        &self,
        agent: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Agents with queued tasks: (agent, highest queued priority, oldest queued creation ms).
    fn queued_agents(&self) -> Result<Vec<(String, i32, i64)>, StoreError>;
    /// Extend a lease; fails if the worker lost it.
    fn renew(&self, id: &str, worker: &str, lease: Duration) -> Result<(), StoreError>;
    /// Move a task if the lifecycle allows it from its current state.
    fn transition(
        &self,
        id: &str,
        to: TaskState,
        reason: Option<&str>,
    ) -> Result<TaskRecord, StoreError>;
    /// Running tasks whose lease has expired (their worker died): back to `queued` so they
    /// resume from their checkpoints. Returns their ids.
    fn recover_expired(&self) -> Result<Vec<String>, StoreError>;
    /// Running tasks leased by `worker` back to `queued`: a restarted daemon (same worker
    /// name) resumes its own tasks at once instead of waiting for their leases to expire.
    fn release_worker(&self, worker: &str) -> Result<Vec<String>, StoreError>;

    /// Record a step before acting on it. `seq` must be the next number for the task.
    fn checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError>;
    /// A task's steps in order.
    fn checkpoints(&self, task: &str) -> Result<Vec<Checkpoint>, StoreError>;
    /// Remember an approval as a rule (idempotent).
    fn add_approval_rule(
        &self,
        agent: &str,
        tool: &str,
        pattern: &str,
    ) -> Result<ApprovalRule, StoreError>;
    /// Remembered approvals (of one agent, or all).
    fn approval_rules(&self, agent: Option<&str>) -> Result<Vec<ApprovalRule>, StoreError>;
    /// Forget a remembered approval.
    fn remove_approval_rule(&self, id: i64) -> Result<(), StoreError>;
    /// Forget a task's checkpoints and artifacts (a retry that starts over).
    fn clear_progress(&self, task: &str) -> Result<(), StoreError>;

    /// Append an event; returns its id.
    fn append_event(
        &self,
        task: Option<&str>,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError>;
    /// Events after `after` (optionally of one task), oldest first.
    fn events_since(
        &self,
        task: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Append a record to the hash-chained audit log (see [`audit`]); returns it as stored.
    fn audit_append(
        &self,
        task: Option<&str>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<audit::AuditRecord, StoreError>;
    /// Audit records after `after` (optionally of one task), in sequence order.
    fn audit_records(
        &self,
        after: u64,
        task: Option<&str>,
        limit: u32,
    ) -> Result<Vec<audit::AuditRecord>, StoreError>;
    /// Verify the whole audit chain (see [`audit::verify`]).
    fn audit_verify(&self) -> Result<audit::Report, StoreError> {
        let mut v = audit::Verifier::default();
        let mut after = 0;
        loop {
            let batch = self.audit_records(after, None, 10_000)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for r in &batch {
                v.push(r);
            }
        }
        Ok(v.finish())
    }

    /// Call `wake` when another process (another node) may have changed the store: a task
    /// queued, an event recorded. Stores that cannot tell do nothing; the engine polls them.
    fn on_change(&self, wake: Arc<dyn Fn(StoreChange) + Send + Sync>) {
        let _ = wake;
    }

    /// Store a plan as revision `revision`: the first (0) when none exists, else only over
    /// revision `revision - 1` (a replan that lost a race to another writer fails with
    /// [`StoreError::Exists`]).
    fn put_plan(&self, task: &str, revision: u32, spec: &str) -> Result<PlanRecord, StoreError>;
    /// A plan task's current plan, if it was made.
    fn get_plan(&self, task: &str) -> Result<Option<PlanRecord>, StoreError>;

    /// Store a named blob of a task (replacing an older one).
    fn put_artifact(&self, task: &str, name: &str, data: &[u8]) -> Result<(), StoreError>;
    /// A named blob.
    fn get_artifact(&self, task: &str, name: &str) -> Result<Vec<u8>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_roundtrip_and_terminal_states_only_leave_by_retry() {
        use TaskState::*;
        for s in [
            Queued,
            Running,
            AwaitingApproval,
            Succeeded,
            Failed,
            Cancelled,
            Interrupted,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert!(!Succeeded.can_move_to(Queued), "success is final");
        for t in [Failed, Cancelled, Interrupted] {
            assert!(t.can_move_to(Queued));
            assert!(!t.can_move_to(Running));
        }
        assert!(!Queued.can_move_to(Succeeded));
    }
}
