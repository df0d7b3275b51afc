//! The daemon's API vocabulary: what requests carry and answers hold, typed end to end.
//!
//! The HTTP API, the CLI (which deserializes answers into these types rather than indexing
//! JSON) and, next, MCP speak these. Nothing here does I/O. With the `openapi` feature the
//! types also describe themselves for the daemon's generated OpenAPI document.
//!
//! - [`TaskState`]: a task's lifecycle; [`TaskView`], [`SubmitTask`] and the lifecycle bodies;
//! - [`EventKind`] / [`EventView`]: what a task's event stream carries;
//! - [`AuditKind`]: what the audit log records;
//! - [`ErrorCode`] / [`ErrorBody`]: the one error shape, with its HTTP status.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The pattern every task id matches (`t` and 12 hex digits for new tasks; older and
/// imported ids are letters, digits and `-`, at most 64).
pub const TASK_ID_PATTERN: &str = "^[A-Za-z0-9-]{1,64}$";

/// The longest goal accepted (bytes).
pub const MAX_GOAL_BYTES: usize = 64 * 1024;

/// Whether `id` can be a task id ([`TASK_ID_PATTERN`]).
pub fn is_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A task's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker (under a lease).
    Running,
    /// Paused until a person approves or denies.
    AwaitingApproval,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully.
    Failed,
    /// Cancelled by a person or the scheduler.
    Cancelled,
    /// Could not be resumed after a crash; can be retried.
    Interrupted,
}

impl TaskState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::AwaitingApproval => "awaiting_approval",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Interrupted => "interrupted",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "awaiting_approval" => TaskState::AwaitingApproval,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            "interrupted" => TaskState::Interrupted,
            _ => return None,
        })
    }

    /// Whether the task is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::Interrupted
        )
    }

    /// The lifecycle's allowed moves. Retry (`interrupted|failed|cancelled → queued`) is a
    /// move like any other, recorded with its reason.
    pub fn can_move_to(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Running, AwaitingApproval)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, Interrupted)
                | (Running, Queued)
                | (AwaitingApproval, Running)
                | (AwaitingApproval, Cancelled)
                | (AwaitingApproval, Failed)
                | (AwaitingApproval, Queued)
                | (Interrupted, Queued)
                | (Failed, Queued)
                | (Cancelled, Queued)
        )
    }
}

/// Stable, machine-readable error codes; each has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is invalid (400).
    InvalidRequest,
    /// No or a wrong credential (401).
    Unauthorized,
    /// No such thing (404).
    NotFound,
    /// The endpoint does not take that method (405).
    MethodNotAllowed,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The body is too large (413).
    PayloadTooLarge,
    /// The queue is full (429).
    QueueFull,
    /// Something failed on the server (500).
    Internal,
    /// The daemon is shutting down (503).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::QueueFull => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What kind of failure (stable).
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

macro_rules! kinds {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A kind this version does not know (written by a newer version).
            Other(String),
        }

        impl $name {
            /// Every kind this version knows.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The kind as stored and sent.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(s) => s,
                }
            }

            /// Parse a stored kind (unknown ones become [`Self::Other`]).
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::parse(&s))
            }
        }
    };
}

kinds! {
    /// What a task's event says. Events stream to watchers (SSE, WebSocket, `warren task logs`);
    /// `agent.*` events carry the agent loop's own event as payload.
    EventKind {
        /// The task moved to another lifecycle state (written by the store with the move).
        TaskState = "task.state",
        /// A claimed task had checkpoints and resumes from them.
        TaskResumed = "task.resumed",
        /// A person cancelled the task while it ran.
        TaskCancelled = "task.cancelled",
        /// A result or diff artifact could not be stored.
        TaskArtifactFailed = "task.artifact_failed",
        /// A model turn begins.
        AgentTurn = "agent.turn",
        /// Text the model streamed (coalesced per stretch).
        AgentText = "agent.text",
        /// A provider attempt failed and is retried; its partial output is void.
        AgentRestart = "agent.restart",
        /// The model called a tool.
        AgentToolCall = "agent.tool_call",
        /// A tool call's result.
        AgentToolResult = "agent.tool_result",
        /// Tokens used so far.
        AgentUsage = "agent.usage",
        /// Older messages were summarized to fit the context window.
        AgentSummarized = "agent.summarized",
        /// The agent called `finish`.
        AgentFinished = "agent.finished",
        /// The agent stopped without finishing (a limit).
        AgentStopped = "agent.stopped",
        /// The model answered without a tool call and was told to call one (or finish).
        AgentNudged = "agent.nudged",
        /// The model wrote its tool calls as text; they are taken as calls.
        AgentTextToolCalls = "agent.text_tool_calls",
        /// A call waits for a person (the task is `awaiting_approval`).
        ApprovalRequested = "approval.requested",
        /// A person (or the timeout) decided.
        ApprovalDecided = "approval.decided",
        /// A plan task's planner made its plan (on the plan task).
        PlanCreated = "plan.created",
        /// A plan's step changed state (on the plan task; names the step and its task).
        PlanStep = "plan.step",
        /// A step failed past its retries and the planner replanned.
        PlanReplanned = "plan.replanned",
        /// The agent delegated a goal to a child task (`delegate`).
        DelegateStarted = "delegate.started",
        /// A delegated child did something (its turns and tool calls, on the parent).
        DelegateProgress = "delegate.progress",
        /// A delegated child ended.
        DelegateEnded = "delegate.ended",
        /// The manifest's validators judged the agent's `finish`.
        AgentValidation = "agent.validation",
    }
}

kinds! {
    /// What an audit record says. The audit log is hash-chained; see `warren audit`.
    AuditKind {
        /// A daemon started (worker, pid, the tasks it resumes).
        DaemonStart = "daemon.start",
        /// A daemon is stopping.
        DaemonStop = "daemon.stop",
        /// A manifest was deployed as an agent's next version.
        AgentDeployed = "agent.deployed",
        /// Every version of an agent was removed.
        AgentRemoved = "agent.removed",
        /// A task was queued.
        TaskSubmitted = "task.submitted",
        /// A task (an attempt of it) started, with its effective capabilities.
        TaskStarted = "task.started",
        /// A task ended an attempt in a state.
        TaskState = "task.state",
        /// A task was cancelled.
        TaskCancelled = "task.cancelled",
        /// A task was queued again.
        TaskRetried = "task.retried",
        /// A model call (model, tokens, latency; prompts when configured).
        ModelCall = "model.call",
        /// A tool call, its decision and the capability handle that allowed it.
        ToolCall = "tool.call",
        /// A call waits for a person.
        ApprovalRequested = "approval.requested",
        /// A person (or the timeout) decided.
        ApprovalDecided = "approval.decided",
        /// An approval was remembered as a rule.
        ApprovalRemembered = "approval.remembered",
        /// A remembered approval was removed.
        ApprovalRuleRemoved = "approval.rule_removed",
        /// A reflection was stored in memory.
        MemoryReflection = "memory.reflection",
        /// A connection through the task's egress proxy or `/cap/http`.
        Egress = "egress",
        /// A planner made a plan (its steps) or refused to.
        PlanCreated = "plan.created",
        /// A plan step was started as a child task (with its attempt and fingerprint).
        PlanStep = "plan.step",
        /// A plan was replanned after a step failed; the steps kept are named.
        PlanReplanned = "plan.replanned",
        /// An agent delegated a goal to a child task, with the child's capabilities.
        DelegateStarted = "delegate.started",
        /// A delegated child ended (state, spend).
        DelegateEnded = "delegate.ended",
        /// The manifest's validators judged an agent's `finish` (iteration, verdicts).
        Validation = "validation",
    }
}

/// A task as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    /// Id (`t` + 12 hex digits).
    pub id: String,
    /// Agent name.
    pub agent: String,
    /// Agent manifest version it runs.
    pub agent_version: u32,
    /// The goal.
    pub goal: String,
    /// Higher runs first.
    pub priority: i32,
    /// Lifecycle state.
    pub state: TaskState,
    /// Times it was claimed by a worker (this run; reset by a retry).
    pub attempts: u32,
    /// Why it last changed state.
    pub reason: Option<String>,
    /// Host project directory.
    pub workspace: Option<String>,
    /// Worker running it.
    pub worker: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
    /// `agent` (an agent in a cell) or `plan` (a planner's steps, each a child task).
    #[serde(default = "agent_kind")]
    pub kind: String,
    /// The plan or delegating task that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The plan step it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

fn agent_kind() -> String {
    "agent".into()
}

/// `POST /v1/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// A deployed agent.
    pub agent: String,
    /// What to achieve (1 byte to 64 KiB).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 65536))]
    pub goal: String,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Absolute host path of the project; the agent sees it copy-on-write.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Plan first: the agent is the planner; its plan's steps run as child tasks.
    #[serde(default)]
    pub plan: bool,
}

/// `POST /v1/agents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployAgent {
    /// The manifest (YAML).
    pub manifest: String,
}

/// `POST /v1/tasks/{id}/retry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryTask {
    /// Start over (drop checkpoints and changes) instead of resuming.
    #[serde(default)]
    pub fresh: bool,
}

/// `POST /v1/tasks/{id}/cancel`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelTask {
    /// Recorded with the cancellation.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/tasks/{id}/approve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApproveTask {
    /// Remember as a rule: this agent's calls of this tool with this exact argument run
    /// without asking again.
    #[serde(default)]
    pub remember: bool,
}

/// `POST /v1/tasks/{id}/deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DenyTask {
    /// Told to the model.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a paused task waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalView {
    /// The tool call (empty for a budget).
    pub call_id: String,
    /// Tool, or `budget`.
    pub tool: String,
    /// The call's main argument (command, path).
    pub argument: String,
    /// Why it needs a person.
    pub reason: String,
}

/// A remembered approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleView {
    /// Id (to remove it).
    pub id: i64,
    /// Agent.
    pub agent: String,
    /// Tool.
    pub tool: String,
    /// Glob over the call's main argument.
    pub pattern: String,
    /// Unix ms.
    pub created_ms: i64,
}

/// A deployed agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentView {
    /// Name.
    pub name: String,
    /// Latest (or requested) version.
    pub version: u32,
    /// Unix ms.
    pub created_ms: i64,
    /// The manifest text (on `GET /v1/agents/{name}` and deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    /// Global, increasing: resume a stream after it.
    pub id: i64,
    /// Task it concerns.
    pub task: Option<String>,
    /// What happened ([`EventKind`]).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent.tool_call"))]
    pub kind: EventKind,
    /// Data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    /// Unix ms.
    pub at_ms: i64,
}

/// A plan: its steps and where each is (`GET /v1/plans/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanView {
    /// The plan task's id.
    pub task: String,
    /// The goal.
    pub goal: String,
    /// The plan task's state.
    pub state: TaskState,
    /// 0, then one more per replan; none while the planner works.
    pub revision: Option<u32>,
    /// The steps of the current revision, in the plan's order.
    pub steps: Vec<StepView>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    /// Its id in the plan.
    pub id: String,
    /// What it achieves.
    pub goal: String,
    /// The agent that runs it.
    pub role: String,
    /// Steps it waits for.
    pub depends_on: Vec<String>,
    /// Steps whose outputs it reads (`/task/inputs/<step>/`).
    pub inputs: Vec<String>,
    /// `waiting` (for its dependencies), `queued`, `running`, `awaiting_approval`,
    /// `succeeded`, `failed` (past its retries), `blocked` (a dependency failed), `cancelled`.
    pub state: String,
    /// The task of its latest attempt.
    pub task: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Why its latest attempt ended, if it did.
    pub reason: Option<String>,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`, or `stopping` during shutdown.
    pub status: String,
    /// Warren's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// This daemon's lease name.
    pub worker: String,
    /// Tasks running in this daemon.
    pub running: u64,
    /// Tasks queued (all workers).
    pub queued: u64,
    /// Tasks allowed to run at once.
    pub max_running: u64,
    /// Cell tiers this host can run.
    pub tiers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_kinds_survive() {
        for k in EventKind::ALL {
            assert_eq!(&EventKind::parse(k.as_str()), k);
            let json = serde_json::to_string(k).unwrap_or_default();
            assert_eq!(
                serde_json::from_str::<EventKind>(&json).ok().as_ref(),
                Some(k)
            );
        }
        for k in AuditKind::ALL {
            assert_eq!(&AuditKind::parse(k.as_str()), k);
        }
        assert_eq!(
            EventKind::parse("future.kind"),
            EventKind::Other("future.kind".into())
        );
        assert_eq!(EventKind::parse("future.kind").as_str(), "future.kind");
    }

    #[test]
    fn error_codes_have_their_status() {
        assert_eq!(ErrorCode::QueueFull.status(), 429);
        assert_eq!(
            serde_json::to_string(&ErrorCode::PayloadTooLarge).unwrap_or_default(),
            "\"payload_too_large\""
        );
        for s in [
            "queued",
            "running",
            "awaiting_approval",
            "succeeded",
            "failed",
            "cancelled",
            "interrupted",
        ] {
            assert_eq!(TaskState::parse(s).map(TaskState::as_str), Some(s));
        }
    }

    #[test]
    fn task_ids() {
        assert!(is_task_id("t0123456789ab"));
        assert!(!is_task_id(""));
        assert!(!is_task_id("../etc"));
        assert!(!is_task_id(&"a".repeat(65)));
    }
}
