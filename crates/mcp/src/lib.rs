//! Warren as a Model Context Protocol server, for the agents and editors that speak MCP
//! (Claude Code, Cursor, Codex, any MCP client).
//!
//! The protocol is the official SDK's ([`rmcp`]); this crate only maps. Each MCP tool parses
//! its arguments into one of the runtime's operations ([`warren_runtime::action::Op`]) and
//! hands it to a [`Backend`]; nothing here touches the store, so an operation over MCP is
//! authorized, audited and mapped to an error code exactly as over the HTTP API:
//!
//! | tool | operation |
//! | --- | --- |
//! | `list_agents` | `Query::Agents` |
//! | `submit_task` | `Action::Submit` |
//! | `task_status` | `Query::Task` (and `Query::Approval` when it waits for one) |
//! | `wait_task` | `Query::Events` + `Query::Task`, polled; a progress notification per event |
//! | `task_result` | `Query::Result` |
//! | `task_diff` | `Query::Diff`, paged ([`PAGE_CHARS`] characters a page) |
//! | `task_events` | `Query::Events`, at most [`MAX_EVENTS`] and [`PAGE_CHARS`] a call |
//! | `cancel_task` | `Action::Cancel` |
//! | `decide_approval` | `Action::Decide` (never remembered as a rule over MCP) |
//!
//! Resources: `warren://tasks/{id}/result`, `…/diff` (the whole diff, for clients that keep
//! it as a file rather than in a model's context) and `…/events`, listed as resource
//! templates.
//!
//! Answers are bounded: no tool returns more than about [`PAGE_CHARS`] characters, so a large
//! diff is read page by page instead of arriving as one wall of text in the caller's context.
//! A refusal (unknown task, a viewer acting, a full queue) is a tool result with `isError`
//! and `{code, message}` as structured content, the error code the HTTP API uses
//! ([`warren_protocol::api::ErrorCode`]); malformed arguments (a missing field, one the tool
//! does not take) are a tool error naming the problem, so a model can correct its call.
//!
//! Two backends: [`EngineBackend`] calls an in-process [`Engine`] (the daemon serves it as
//! Streamable HTTP at `/mcp`, [`streamable_http`], behind the API's own authentication), and
//! the CLI's `warren mcp` implements [`Backend`] over the daemon's HTTP API (stdio, for MCP
//! clients that launch a command).
//!
//! [`conformance`] is the fixture the official MCP conformance suite is run against (in CI):
//! the suite's fixed test tools, resources and prompts, served with [`streamable_http`]'s
//! transport configuration.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::schemars::{self, JsonSchema};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use warren_protocol::api::{SubmitTask, TaskState, TaskView};
use warren_runtime::action::{Action, ActionError, Answer, Caller, Op, Query};
use warren_runtime::engine::Engine;

/// Characters a page of a diff, or a call of `task_events`, holds at most.
pub const PAGE_CHARS: usize = 20_000;
/// Events one `task_events` call returns at most.
pub const MAX_EVENTS: usize = 100;
/// How long `wait_task` waits when the caller does not say (and at most).
pub const WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// The longest wait `wait_task` accepts.
pub const WAIT_MAX: Duration = Duration::from_secs(3600);
/// How often `wait_task` looks for new events.
const POLL: Duration = Duration::from_millis(200);

/// Where operations go: the one handler that authorizes, audits and answers them.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Carry out `op` for this server's caller.
    async fn handle(&self, op: Op) -> Result<Answer, ActionError>;
}

/// The in-process engine (the daemon's), acting for one caller (named in the audit).
pub struct EngineBackend {
    engine: Arc<Engine>,
    caller: Caller,
}

impl EngineBackend {
    /// Operations on `engine` as `caller`.
    pub fn new(engine: Arc<Engine>, caller: Caller) -> Self {
        EngineBackend { engine, caller }
    }
}

#[async_trait::async_trait]
impl Backend for EngineBackend {
    async fn handle(&self, op: Op) -> Result<Answer, ActionError> {
        self.engine.handle(&self.caller, op).await
    }
}

/// `{"id": …}`: the task a tool is about.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskId {
    /// The task's id (`t` and 12 hexadecimal digits), as `submit_task` answered.
    pub id: String,
}

/// Arguments of `submit_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// A deployed agent (see `list_agents`).
    pub agent: String,
    /// What the agent should achieve.
    pub goal: String,
    /// Absolute path of the project on the host; the agent works on a copy-on-write view of it
    /// and its changes are a diff to review (`task_diff`).
    #[serde(default)]
    pub workspace: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Plan first: `agent` is the planner, whose plan's steps run as child tasks (default
    /// false). Read the plan with the `warren://tasks/{id}/plan` resource.
    #[serde(default)]
    pub plan: Option<bool>,
}

/// Arguments of `wait_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// The task.
    pub id: String,
    /// Give up after this many seconds (default 300, at most 3600); the task goes on.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// Arguments of `task_diff`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffPage {
    /// The task.
    pub id: String,
    /// The character to start at (0 for the first page; a page's `next_offset` for the next).
    #[serde(default)]
    pub offset: Option<usize>,
}

/// Arguments of `task_events`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSince {
    /// The task.
    pub id: String,
    /// Only events after this id (0, or the last id seen).
    #[serde(default)]
    pub after: Option<i64>,
}

/// Arguments of `cancel_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The task.
    pub id: String,
    /// Recorded with the cancellation.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Arguments of `decide_approval`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// The task that waits.
    pub id: String,
    /// `true` runs the call the task waits for; `false` refuses it.
    pub approve: bool,
    /// Why (the agent is told on a refusal).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The MCP server: the tools above over a [`Backend`].
#[derive(Clone)]
pub struct WarrenMcp {
    backend: Arc<dyn Backend>,
    tool_router: ToolRouter<Self>,
    skills: Arc<Vec<std::path::PathBuf>>,
}

/// A structured answer (MCP wants an object as structured content).
fn ok(value: Value) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::structured(value))
}

/// A refusal the caller should see and can act on: `{code, message}`, `isError`.
fn refused(e: &ActionError) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::structured_error(
        json!({"code": e.code.as_str(), "message": e.message}),
    ))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// The answer the backend gave is not the kind the operation answers: a bug, not the
/// caller's fault.
fn unexpected(what: &str) -> ErrorData {
    ErrorData::internal_error(format!("unexpected answer to {what}"), None)
}

/// `text[offset..]` up to [`PAGE_CHARS`] characters, as a page.
fn page(text: &str, offset: usize) -> Value {
    let total = text.chars().count();
    let body: String = text.chars().skip(offset).take(PAGE_CHARS).collect();
    let end = offset.saturating_add(body.chars().count());
    json!({
        "text": body,
        "offset": offset.min(total),
        "total_chars": total,
        "next_offset": (end < total).then_some(end),
    })
}

impl WarrenMcp {
    /// A server whose tools act through `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        WarrenMcp {
            backend,
            tool_router: Self::tool_router(),
            skills: Arc::default(),
        }
    }

    /// Also serve the Agent Skills in `roots` (folders of skill folders, in precedence
    /// order), by the skills extension (SEP-2640): `skills/list`, `skills/get`, and each
    /// skill's files as `skill://NAME/PATH` resources.
    pub fn with_skills(mut self, roots: Vec<std::path::PathBuf>) -> Self {
        self.skills = Arc::new(roots);
        self
    }

    /// The valid skills served, with their files (read off the async threads).
    async fn served_skills(
        &self,
        only: Option<String>,
    ) -> Result<Vec<(warren_skills::Skill, Vec<(String, Vec<u8>)>)>, ErrorData> {
        let roots = Arc::clone(&self.skills);
        tokio::task::spawn_blocking(move || {
            let wanted = vec![only.unwrap_or_else(|| "*".into())];
            let skills = match warren_skills::select(&roots, &wanted) {
                Ok(s) => s,
                Err(warren_skills::SkillError::NotFound { name, .. }) => {
                    return Err(ErrorData::resource_not_found(
                        format!("no skill {name:?}"),
                        None,
                    ));
                }
                Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
            };
            skills
                .into_iter()
                .map(|s| {
                    warren_skills::files(&s)
                        .map(|f| (s, f))
                        .map_err(|e| ErrorData::internal_error(e.to_string(), None))
                })
                .collect()
        })
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
    }

    async fn task(&self, id: &str) -> Result<TaskView, Result<CallToolResult, ErrorData>> {
        match self
            .backend
            .handle(Query::Task { id: id.into() }.into())
            .await
        {
            Ok(Answer::Task(t)) => Ok(t),
            Ok(_) => Err(Err(unexpected("task_status"))),
            Err(e) => Err(refused(&e)),
        }
    }
}

#[tool_router]
impl WarrenMcp {
    #[tool(
        description = "List the deployed agents (name, version, description, tools). Submit a goal to one with submit_task.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_agents(&self) -> Result<CallToolResult, ErrorData> {
        match self.backend.handle(Query::Agents.into()).await {
            Ok(Answer::Agents(a)) => ok(json!({ "agents": to_value(&a) })),
            Ok(_) => Err(unexpected("list_agents")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "Give a goal to an agent. Warren runs it in an isolated cell; the answer is the queued task (its id, its state). Follow it with wait_task, then read task_result and task_diff.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = true
        )
    )]
    async fn submit_task(
        &self,
        Parameters(s): Parameters<Submit>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = Action::Submit(SubmitTask {
            agent: s.agent,
            goal: s.goal,
            priority: s.priority.unwrap_or(0),
            workspace: s.workspace,
            plan: s.plan.unwrap_or(false),
        });
        match self.backend.handle(op.into()).await {
            Ok(Answer::Task(t)) => ok(to_value(&t)),
            Ok(_) => Err(unexpected("submit_task")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "A task's state (queued, running, awaiting_approval, succeeded, failed, cancelled, interrupted), attempts and reason; when it awaits approval, the call it waits for.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn task_status(
        &self,
        Parameters(TaskId { id }): Parameters<TaskId>,
    ) -> Result<CallToolResult, ErrorData> {
        let task = match self.task(&id).await {
            Ok(t) => t,
            Err(answer) => return answer,
        };
        let mut view = to_value(&task);
        if task.state == TaskState::AwaitingApproval
            && let Ok(Answer::Approval(a)) = self
                .backend
                .handle(Query::Approval { id: id.clone() }.into())
                .await
        {
            view["approval"] = to_value(&a);
        }
        ok(view)
    }

    #[tool(
        description = "Wait until a task ends (or timeout_seconds pass), sending a progress notification for each of its events when the request carries a progress token. Answers the task as it is then.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn wait_task(
        &self,
        Parameters(w): Parameters<Wait>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = w
            .timeout_seconds
            .map_or(WAIT_DEFAULT, Duration::from_secs)
            .min(WAIT_MAX);
        let token = ctx.meta.get_progress_token();
        let deadline = tokio::time::Instant::now() + limit;
        let (mut after, mut seen) = (0i64, 0u64);
        loop {
            // Events first, so that the last ones are reported before the final state.
            match self
                .backend
                .handle(
                    Query::Events {
                        id: w.id.clone(),
                        after,
                    }
                    .into(),
                )
                .await
            {
                Ok(Answer::Events(events)) => {
                    for e in events {
                        after = after.max(e.id);
                        seen += 1;
                        if let Some(token) = &token {
                            let note = ProgressNotificationParam::new(token.clone(), seen as f64)
                                .with_message(e.kind.to_string());
                            if let Err(err) = ctx.peer.notify_progress(note).await {
                                tracing::debug!("progress notification not sent: {err}");
                            }
                        }
                    }
                }
                Ok(_) => return Err(unexpected("wait_task")),
                Err(e) => return refused(&e),
            }
            let task = match self.task(&w.id).await {
                Ok(t) => t,
                Err(answer) => return answer,
            };
            let over = task.state.is_terminal();
            if over || tokio::time::Instant::now() >= deadline || ctx.ct.is_cancelled() {
                let mut view = to_value(&task);
                view["ended"] = json!(over);
                view["events_seen"] = json!(seen);
                return ok(view);
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = ctx.ct.cancelled() => {}
            }
        }
    }

    #[tool(
        description = "The result a finished task recorded (its summary, its outcome).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn task_result(
        &self,
        Parameters(TaskId { id }): Parameters<TaskId>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.backend.handle(Query::Result { id }.into()).await {
            Ok(Answer::Result(v)) if v.is_object() => ok(v),
            Ok(Answer::Result(v)) => ok(json!({ "result": v })),
            Ok(_) => Err(unexpected("task_result")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "The changes a task made to its workspace, as a unified diff, one page (at most 20 000 characters) at a time: pass the page's next_offset as offset for the next.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn task_diff(
        &self,
        Parameters(d): Parameters<DiffPage>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.backend.handle(Query::Diff { id: d.id }.into()).await {
            Ok(Answer::Diff(text)) => ok(page(&text, d.offset.unwrap_or(0))),
            Ok(_) => Err(unexpected("task_diff")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "A task's events after an id (at most 100 and about 20 000 characters a call; pass the last id seen as after for the next).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn task_events(
        &self,
        Parameters(e): Parameters<EventsSince>,
    ) -> Result<CallToolResult, ErrorData> {
        let after = e.after.unwrap_or(0);
        match self
            .backend
            .handle(Query::Events { id: e.id, after }.into())
            .await
        {
            Ok(Answer::Events(events)) => {
                let (mut kept, mut chars) = (Vec::new(), 0usize);
                let total = events.len();
                for ev in events.into_iter().take(MAX_EVENTS) {
                    let v = to_value(&ev);
                    chars += v.to_string().chars().count();
                    if chars > PAGE_CHARS && !kept.is_empty() {
                        break;
                    }
                    kept.push(v);
                }
                let more = kept.len() < total;
                ok(json!({ "events": kept, "more": more }))
            }
            Ok(_) => Err(unexpected("task_events")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "Cancel a queued or running task; its cell and the command running in it are stopped.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cancel_task(
        &self,
        Parameters(c): Parameters<Cancel>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = Action::Cancel {
            id: c.id,
            reason: c.reason,
        };
        match self.backend.handle(op.into()).await {
            Ok(Answer::Task(t)) => ok(to_value(&t)),
            Ok(Answer::Done) => ok(json!({ "cancelled": true })),
            Ok(_) => Err(unexpected("cancel_task")),
            Err(e) => refused(&e),
        }
    }

    #[tool(
        description = "Approve or refuse the tool call a task waits for (see task_status). A refusal tells the agent your reason.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn decide_approval(
        &self,
        Parameters(d): Parameters<Decide>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = Action::Decide {
            id: d.id,
            approve: d.approve,
            remember: false,
            reason: d.reason,
        };
        match self.backend.handle(op.into()).await {
            Ok(Answer::Approval(a)) => ok(to_value(&a)),
            Ok(Answer::Done) => ok(json!({ "decided": true })),
            Ok(_) => Err(unexpected("decide_approval")),
            Err(e) => refused(&e),
        }
    }
}

/// A task's resources: `warren://tasks/{id}/KIND`, with the MIME type and what it holds.
const RESOURCES: [(&str, &str, &str); 4] = [
    (
        "result",
        "application/json",
        "The result a finished task recorded (summary, outcome).",
    ),
    (
        "diff",
        "text/x-diff",
        "The task's changes to its workspace as one unified diff (task_diff pages the same text).",
    ),
    (
        "events",
        "application/json",
        "The task's first 1000 events, as a JSON array (task_events pages them).",
    ),
    (
        "plan",
        "application/json",
        "A plan task's plan: its steps, their dependencies and inputs, each step's state and task.",
    ),
];

/// `warren://tasks/{id}/{kind}` → the query that reads it.
fn resource_query(uri: &str) -> Option<(Query, &'static str)> {
    let rest = uri.strip_prefix("warren://tasks/")?;
    let (id, kind) = rest.split_once('/')?;
    if !warren_protocol::api::is_task_id(id) {
        return None;
    }
    let id = id.to_owned();
    let &(_, mime, _) = RESOURCES.iter().find(|(k, _, _)| *k == kind)?;
    let q = match kind {
        "result" => Query::Result { id },
        "diff" => Query::Diff { id },
        "plan" => Query::Plan { id },
        _ => Query::Events { id, after: 0 },
    };
    Some((q, mime))
}

/// A skill as the skills extension describes it: its `SKILL.md` URI, front matter, and every
/// file with its SHA-256 digest.
fn skill_entry(s: &warren_skills::Skill, files: &[(String, Vec<u8>)]) -> rmcp::model::Skill {
    let resources = files
        .iter()
        .map(|(rel, bytes)| {
            rmcp::model::SkillResource::from_bytes(format!("skill://{}/{rel}", s.name), bytes)
        })
        .collect();
    rmcp::model::Skill::new(
        format!("skill://{}/SKILL.md", s.name),
        rmcp::model::SkillFrontmatter::new(s.name.clone(), s.description.clone()),
        rmcp::model::SkillResources::Files(resources),
    )
}

/// `skill://NAME/PATH` as (name, path).
fn skill_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix("skill://")?.split_once('/')
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WarrenMcp {
    async fn list_skills(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListSkillsResult, ErrorData> {
        let served = self.served_skills(None).await?;
        Ok(rmcp::model::ListSkillsResult::with_all_items(
            served.iter().map(|(s, f)| skill_entry(s, f)).collect(),
        ))
    }

    async fn get_skill(
        &self,
        request: rmcp::model::GetSkillRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetSkillResult, ErrorData> {
        let name = match skill_uri(&request.uri) {
            Some((name, "SKILL.md")) => name.to_owned(),
            _ => {
                return Err(ErrorData::invalid_params(
                    format!("{:?} is not skill://NAME/SKILL.md", request.uri),
                    None,
                ));
            }
        };
        let served = self.served_skills(Some(name)).await?;
        let (s, f) = served
            .first()
            .ok_or_else(|| ErrorData::resource_not_found("no such skill", None))?;
        Ok(rmcp::model::GetSkillResult::new(skill_entry(s, f)))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        Ok(rmcp::model::ListResourceTemplatesResult::with_all_items(
            RESOURCES
                .iter()
                .map(|(kind, mime, what)| {
                    rmcp::model::ResourceTemplate::new(
                        format!("warren://tasks/{{id}}/{kind}"),
                        format!("task-{kind}"),
                    )
                    .with_description(*what)
                    .with_mime_type(*mime)
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        if let Some((name, rel)) = skill_uri(&uri).map(|(n, r)| (n.to_owned(), r.to_owned())) {
            let served = self.served_skills(Some(name)).await?;
            // Only a file the skill's listing names: no path is ever opened from the URI.
            let bytes = served
                .first()
                .and_then(|(_, files)| files.iter().find(|(r, _)| *r == rel))
                .map(|(_, b)| b.clone())
                .ok_or_else(|| {
                    ErrorData::resource_not_found(format!("no resource {uri:?}"), None)
                })?;
            let contents = match String::from_utf8(bytes) {
                Ok(text) => rmcp::model::ResourceContents::TextResourceContents {
                    uri,
                    mime_type: Some(
                        if rel.ends_with(".md") {
                            "text/markdown"
                        } else {
                            "text/plain"
                        }
                        .into(),
                    ),
                    text,
                    meta: None,
                },
                Err(e) => rmcp::model::ResourceContents::BlobResourceContents {
                    uri,
                    mime_type: Some("application/octet-stream".into()),
                    blob: base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        e.into_bytes(),
                    ),
                    meta: None,
                },
            };
            return Ok(rmcp::model::ReadResourceResult::new(vec![contents]).into());
        }
        let Some((query, mime)) = resource_query(&uri) else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri:?} (warren://tasks/ID/result|diff|events|plan)"),
                None,
            ));
        };
        let text = match self.backend.handle(query.into()).await {
            Ok(Answer::Result(v)) => v.to_string(),
            Ok(Answer::Diff(d)) => d,
            Ok(Answer::Events(e)) => to_value(&e).to_string(),
            Ok(Answer::Plan(p)) => to_value(&p).to_string(),
            Ok(_) => return Err(unexpected("resources/read")),
            Err(e) if e.code == warren_protocol::api::ErrorCode::NotFound => {
                return Err(ErrorData::resource_not_found(e.message, None));
            }
            Err(e) => return Err(ErrorData::internal_error(e.message, None)),
        };
        let contents = rmcp::model::ResourceContents::TextResourceContents {
            uri,
            mime_type: Some(mime.to_owned()),
            text,
            meta: None,
        };
        Ok(rmcp::model::ReadResourceResult::new(vec![contents]).into())
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_skills()
                .build(),
        )
        .with_server_info(Implementation::new("warren", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Warren runs coding agents in isolated cells. list_agents, then submit_task \
                 with a goal (and the project's absolute path as workspace); wait_task follows \
                 it; task_result and task_diff show what it did. A task may wait for approval \
                 of a risky call: task_status shows it, decide_approval answers.",
        )
    }
}

/// The service the daemon mounts at `/mcp`: MCP over Streamable HTTP, one [`WarrenMcp`] per
/// session over `backend`.
///
/// Requests must name one of `hosts` in `Host` (loopback names and the listener's own address:
/// a DNS-rebinding page cannot reach it), and a request carrying an `Origin` is refused unless
/// it is the listener's own (`http://IP:PORT` of a loopback listener, which serves no page): a
/// browser page cannot drive it; MCP clients send none. Authentication is the API's: the daemon
/// puts this behind the same bearer check as `/v1`.
pub fn streamable_http(
    backend: Arc<dyn Backend>,
    hosts: Vec<String>,
    skills: Vec<std::path::PathBuf>,
) -> StreamableHttpService<WarrenMcp, LocalSessionManager> {
    http_service(
        move || Ok(WarrenMcp::new(Arc::clone(&backend)).with_skills(skills.clone())),
        hosts,
    )
}

/// MCP over Streamable HTTP with Warren's transport configuration, serving what `server`
/// makes: [`WarrenMcp`] for the daemon, the [`conformance::Fixture`] for the conformance
/// suite, so that the suite checks the daemon's own Host and Origin rules, sessions and
/// stateless handling.
fn http_service<S: ServerHandler>(
    server: impl Fn() -> Result<S, std::io::Error> + Send + Sync + 'static,
    hosts: Vec<String>,
) -> StreamableHttpService<S, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_origins(same_origins(&hosts))
        .with_allowed_hosts(hosts)
        .enforce_origin_validation();
    StreamableHttpService::new(server, Arc::default(), config)
}

/// The `Origin`s accepted besides none: the listener's own, `http://IP:PORT` for each loopback
/// socket address in `hosts` (the daemon names the address its TCP listener is bound to),
/// and no other.
///
/// A browser sends `Origin` with every cross-origin request, and with a same-origin `POST`;
/// the only page whose origin is the listener's own is one the listener served itself, and it
/// serves none (JSON, plain text, diffs, MCP; and, on the daemon's TCP listener, nothing
/// without the bearer token). Any other origin stays refused: a page of another local server
/// (another port), of a DNS-rebinding name, of the web. Entries without a port give no origin
/// (rmcp would match it on every port, another local server's pages included).
///
/// Refusing every `Origin` would be stricter, but it refuses what the MCP conformance suite
/// sends as the legitimate request (`dns-rebinding-protection`: `Host: 127.0.0.1:PORT` with
/// `Origin: http://127.0.0.1:PORT`, the URL's own, must be served with a 2xx; `Host:
/// evil.example.com` with `Origin: http://evil.example.com` must get a 4xx), and the
/// listener's own origin is not one a cross-origin or rebinding attack can have.
fn same_origins(hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| {
            let addr: std::net::SocketAddr = h.parse().ok()?;
            addr.ip().is_loopback().then(|| format!("http://{addr}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_read_page_by_page_without_splitting_a_character() {
        let text: String = "é".repeat(PAGE_CHARS * 2 + 5);
        let first = page(&text, 0);
        assert_eq!(first["total_chars"], PAGE_CHARS * 2 + 5);
        assert_eq!(
            first["text"].as_str().map(|t| t.chars().count()),
            Some(PAGE_CHARS)
        );
        assert_eq!(first["next_offset"], PAGE_CHARS);
        let last = page(&text, PAGE_CHARS * 2);
        assert_eq!(last["text"].as_str().map(|t| t.chars().count()), Some(5));
        assert_eq!(last["next_offset"], Value::Null);
        // Past the end: an empty page, not an error.
        let past = page(&text, usize::MAX);
        assert_eq!(past["text"], "");
        assert_eq!(past["next_offset"], Value::Null);
        assert_eq!(page("", 0)["total_chars"], 0);
    }

    #[test]
    fn only_the_listener_s_own_loopback_address_is_an_accepted_origin() {
        let hosts: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "::1",
            "warren",
            "127.0.0.1:4000",
            "[::1]:4001",
            "localhost:4002",
            "192.168.1.5:4003",
            "0.0.0.0:4004",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            same_origins(&hosts),
            ["http://127.0.0.1:4000", "http://[::1]:4001"]
        );
    }

    #[test]
    fn only_a_task_id_and_a_known_kind_name_a_resource() {
        assert!(matches!(
            resource_query("warren://tasks/t0123456789ab/diff"),
            Some((Query::Diff { .. }, "text/x-diff"))
        ));
        for uri in [
            "warren://tasks/../diff",
            "warren://tasks/t0123456789ab/../../etc/passwd",
            "warren://tasks/t0123456789ab/logs",
            "warren://tasks/t0123456789ab",
            "file:///etc/passwd",
            "warren://tasks/t01%2F..%2Fx/result",
        ] {
            assert!(resource_query(uri).is_none(), "{uri}");
        }
    }
}
