//! The HTTP API (axum), served on the daemon's unix socket and, behind a bearer token, on TCP.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /health` | liveness, version, running and queued counts |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /openapi.json` | this API as OpenAPI 3.1, generated from the handlers below |
//! | `POST /v1/agents`, `GET /v1/agents`, `GET`/`DELETE /v1/agents/{name}` | manifests |
//! | `POST /v1/tasks`, `GET /v1/tasks?state=&agent=&limit=`, `GET /v1/tasks/{id}` | tasks |
//! | `POST /v1/tasks/{id}/cancel`, `POST /v1/tasks/{id}/retry` | lifecycle |
//! | `GET /v1/tasks/{id}/result`, `GET /v1/tasks/{id}/diff` | artifacts |
//! | `GET /v1/tasks/{id}/events?after=N` | events as a JSON array |
//! | `GET /v1/tasks/{id}/events/stream`, `GET /v1/events/stream` | SSE, resumable (`Last-Event-ID` or `after`) |
//! | `GET /v1/tasks/{id}/events/ws` | the same over a WebSocket |
//!
//! Every error is `{"code": "...", "message": "..."}` with a 4xx/5xx status. Bodies are at
//! most 1 MiB; JSON bodies reject unknown fields and report the line and column of a syntax
//! error.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use utoipa::OpenApi;
use warren_protocol::api::{
    AgentView, ApprovalView, ApproveTask, CancelTask, DenyTask, DeployAgent, ErrorBody, ErrorCode,
    EventView, Health, RetryTask, RuleView, SubmitTask, TaskState, TaskView,
};
use warren_runtime::action::{Action, ActionError, Answer, Caller, Op, Query as Q};
use warren_runtime::engine::Engine;
use warren_store::EventRecord;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// An API error: an [`ErrorCode`] (which fixes the status) and a message.
#[derive(Debug)]
pub struct ApiError(ErrorCode, String);

impl ApiError {
    fn invalid(msg: impl Into<String>) -> Self {
        ApiError(ErrorCode::InvalidRequest, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: self.0,
            message: self.1,
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        ApiError(e.code, e.message)
    }
}

impl From<warren_store::StoreError> for ApiError {
    fn from(e: warren_store::StoreError) -> Self {
        ActionError::from(e).into()
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

/// A JSON body: size-limited, unknown fields refused, syntax errors with line and column.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Shared = State<Arc<Engine>>;

/// Every request through the API acts as this caller (the listener authenticated it).
fn caller() -> Caller {
    Caller::operator("api")
}

/// Handle `op` through the engine; the answer must be the variant `pick` takes.
async fn ask<T>(d: &Arc<Engine>, op: impl Into<Op>, pick: fn(Answer) -> Option<T>) -> ApiResult<T> {
    let a = d.handle(&caller(), op.into()).await?;
    pick(a).ok_or_else(|| ApiError(ErrorCode::Internal, "unexpected answer".into()))
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>)]
    pub state: Option<String>,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// Query of event endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this id (default 0: from the start).
    pub after: Option<i64>,
}

/// Adds what every route shares: the bearer scheme of the TCP listener (the unix socket
/// needs none: its file mode is the check) with its 401, and the 400 of a malformed request.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                r.entry("401".into())
                    .or_insert_with(|| error("no or a wrong bearer token (TCP listener only)"));
                r.entry("400".into())
                    .or_insert_with(|| error("malformed request: id, query or body"));
                r.entry("405".into())
                    .or_insert_with(|| error("the path does not take this method"));
                if op.request_body.is_some() {
                    r.entry("413".into())
                        .or_insert_with(|| error("the body is larger than 1 MiB"));
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&Common),
    info(
        title = "Warren daemon API",
        description = "Agents, tasks, events of a Warren daemon."
    ),
    paths(
        health,
        deploy_agent,
        list_agents,
        get_agent,
        delete_agent,
        submit_task,
        list_tasks,
        get_task,
        cancel_task,
        retry_task,
        task_result,
        task_diff,
        task_events,
        task_event_stream,
        all_event_stream,
        task_event_ws,
        metrics,
        approve_task,
        deny_task,
        task_approval,
        list_rules,
        delete_rule
    ),
    components(schemas(
        ErrorBody,
        TaskView,
        SubmitTask,
        DeployAgent,
        RetryTask,
        CancelTask,
        AgentView,
        EventView,
        Health,
        ApproveTask,
        DenyTask,
        ApprovalView,
        RuleView
    ))
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string())
}

/// The router. `token`: when given, every request must carry `Authorization: Bearer TOKEN`
/// (the TCP listener); the unix socket's router has none (its file mode is the access check).
pub fn router(daemon: Arc<Engine>, token: Option<Arc<str>>) -> Router {
    let r = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .route("/v1/agents", post(deploy_agent).get(list_agents))
        .route("/v1/agents/{name}", get(get_agent).delete(delete_agent))
        .route("/v1/tasks", post(submit_task).get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/tasks/{id}/retry", post(retry_task))
        .route("/v1/tasks/{id}/approve", post(approve_task))
        .route("/v1/tasks/{id}/deny", post(deny_task))
        .route("/v1/tasks/{id}/approval", get(task_approval))
        .route("/v1/approvals", get(list_rules))
        .route("/v1/approvals/{rule}", axum::routing::delete(delete_rule))
        .route("/v1/tasks/{id}/result", get(task_result))
        .route("/v1/tasks/{id}/diff", get(task_diff))
        .route("/v1/tasks/{id}/events", get(task_events))
        .route("/v1/tasks/{id}/events/stream", get(task_event_stream))
        .route("/v1/tasks/{id}/events/ws", get(task_event_ws))
        .route("/v1/events/stream", get(all_event_stream))
        .fallback(|| async {
            ApiError(
                ErrorCode::NotFound,
                "no such endpoint (see /openapi.json)".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method (see /openapi.json)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(daemon);
    match token {
        Some(t) => r.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let t = Arc::clone(&t);
                async move { authorize(&t, req, next).await }
            },
        )),
        None => r,
    }
}

/// Constant-time comparison (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
    match given {
        Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError(
                ErrorCode::Unauthorized,
                "this listener requires `Authorization: Bearer <token>` (the token is in the daemon's state directory, file `token`)".into(),
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

fn tiers() -> Vec<String> {
    static TIERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TIERS
        .get_or_init(|| {
            let report = warren_cell::check::detect();
            let mut t = Vec::new();
            if report.process_tier_ready().is_ok() {
                t.push("process".to_owned());
            }
            t
        })
        .clone()
}

/// Liveness and counts.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health(State(d): Shared) -> ApiResult<axum::Json<Health>> {
    let queued = d.store().count(TaskState::Queued)?;
    let tiers = tokio::task::spawn_blocking(tiers).await.unwrap_or_default();
    Ok(axum::Json(Health {
        status: if d.is_stopping() { "stopping" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: d.uptime().as_secs(),
        worker: d.worker().into(),
        running: d.running_count() as u64,
        queued,
        max_running: d.limits().global as u64,
        tiers,
    }))
}

/// Counters and gauges in Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
async fn metrics(State(d): Shared) -> ApiResult<Response> {
    let m = &d.metrics;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, lines: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    let counters = [
        (
            "warren_tasks_submitted_total",
            "Tasks accepted.",
            &m.submitted,
        ),
        (
            "warren_tasks_rejected_total",
            "Submissions refused because the queue was full.",
            &m.rejected,
        ),
        (
            "warren_tasks_resumed_total",
            "Tasks resumed from checkpoints.",
            &m.resumed,
        ),
        (
            "warren_cells_started_total",
            "Cells started.",
            &m.cells_started,
        ),
        (
            "warren_model_turns_total",
            "Model turns taken.",
            &m.model_turns,
        ),
        ("warren_tool_calls_total", "Tool calls made.", &m.tool_calls),
    ];
    for (name, help, c) in counters {
        put(name, "counter", help, one(c.load(Ordering::Relaxed)));
    }
    let finished: Vec<(String, u64)> = {
        let f = m.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = f
            .iter()
            .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
            .collect();
        v.sort();
        v
    };
    put(
        "warren_tasks_finished_total",
        "counter",
        "Tasks that ended, by final state.",
        finished,
    );
    let gauges = [
        (
            "warren_tasks_running",
            "Tasks running in this daemon.",
            d.running_count() as u64,
        ),
        (
            "warren_tasks_queued",
            "Tasks queued.",
            d.store().count(TaskState::Queued)?,
        ),
        (
            "warren_uptime_seconds",
            "Seconds since the daemon started.",
            d.uptime().as_secs(),
        ),
        (
            "warren_resident_memory_bytes",
            "Resident memory of the daemon process.",
            rss_bytes(),
        ),
    ];
    for (name, help, v) in gauges {
        put(name, "gauge", help, one(v));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Resident set size of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// Validate a manifest and deploy it as the agent's next version.
#[utoipa::path(post, path = "/v1/agents", request_body = DeployAgent,
    responses((status = 201, body = AgentView), (status = 400, body = ErrorBody, description = "invalid manifest; the message names line and column")))]
async fn deploy_agent(State(d): Shared, JsonBody(b): JsonBody<DeployAgent>) -> ApiResult<Response> {
    let op = Action::Deploy {
        origin: "manifest".into(),
        manifest: b.manifest,
    };
    let a = ask(&d, op, |a| match a {
        Answer::Agent(a) => Some(a),
        _ => None,
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(a)).into_response())
}

/// Deployed agents (latest versions).
#[utoipa::path(get, path = "/v1/agents", responses((status = 200, body = Vec<AgentView>)))]
async fn list_agents(State(d): Shared) -> ApiResult<axum::Json<Vec<AgentView>>> {
    let list = ask(&d, Q::Agents, |a| match a {
        Answer::Agents(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(list))
}

/// One agent (latest version) with its manifest.
#[utoipa::path(get, path = "/v1/agents/{name}", params(("name" = String, Path, description = "Agent name")),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(d): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<axum::Json<AgentView>> {
    let UrlPath(name) = name?;
    let op = Q::Agent {
        name,
        version: None,
    };
    let a = ask(&d, op, |a| match a {
        Answer::Agent(a) => Some(a),
        _ => None,
    })
    .await?;
    Ok(axum::Json(a))
}

/// Remove every version of an agent.
#[utoipa::path(delete, path = "/v1/agents/{name}", params(("name" = String, Path, description = "Agent name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_agent(
    State(d): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let UrlPath(name) = name?;
    ask(&d, Action::RemoveAgent { name }, done).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn done(a: Answer) -> Option<()> {
    matches!(a, Answer::Done).then_some(())
}

fn task(a: Answer) -> Option<TaskView> {
    match a {
        Answer::Task(t) => Some(t),
        _ => None,
    }
}

fn approval(a: Answer) -> Option<ApprovalView> {
    match a {
        Answer::Approval(v) => Some(v),
        _ => None,
    }
}

/// Queue a task.
#[utoipa::path(post, path = "/v1/tasks", request_body = SubmitTask,
    responses((status = 201, body = TaskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "unknown agent"),
        (status = 429, body = ErrorBody, description = "the queue is full")))]
async fn submit_task(State(d): Shared, JsonBody(b): JsonBody<SubmitTask>) -> ApiResult<Response> {
    let t = ask(&d, Action::Submit(b), task).await?;
    Ok((StatusCode::CREATED, axum::Json(t)).into_response())
}

/// Tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", params(ListQuery), responses((status = 200, body = Vec<TaskView>), (status = 400, body = ErrorBody)))]
async fn list_tasks(
    State(d): Shared,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Vec<TaskView>>> {
    let Query(q) = q?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "state: {s:?} is not one of queued, running, awaiting_approval, succeeded, failed, cancelled, interrupted"
            ))
        })?),
    };
    let op = Q::Tasks {
        state,
        agent: q.agent,
        limit: q.limit,
    };
    let list = ask(&d, op, |a| match a {
        Answer::Tasks(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(list))
}

fn task_id(id: Result<UrlPath<String>, PathRejection>) -> ApiResult<String> {
    let UrlPath(id) = id?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::invalid(format!("{id:?} is not a task id")));
    }
    Ok(id)
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
async fn get_task(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<axum::Json<TaskView>> {
    let UrlPath(id) = id?;
    Ok(axum::Json(ask(&d, Q::Task { id }, task).await?))
}

/// Cancel a queued or running task (a running task's cell is killed).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")), request_body(content = CancelTask, description = "optional"),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "already finished")))]
async fn cancel_task(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    OptionalBody(b): OptionalBody<CancelTask>,
) -> ApiResult<axum::Json<TaskView>> {
    let UrlPath(id) = id?;
    let op = Action::Cancel {
        id,
        reason: b.reason,
    };
    Ok(axum::Json(ask(&d, op, task).await?))
}

/// An optional JSON body: empty means the type's default; otherwise like [`JsonBody`]
/// (size-limited with a JSON 413, unknown fields refused).
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        optional_body(&bytes).map(OptionalBody)
    }
}

/// The request body, at most [`MAX_BODY`] bytes (a JSON 413 past it).
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> ApiResult<Bytes> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::invalid(e.body_text())
        }
    })
}

fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Queue a failed, cancelled or interrupted task again.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")), request_body(content = RetryTask, description = "optional"),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_task(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    OptionalBody(b): OptionalBody<RetryTask>,
) -> ApiResult<axum::Json<TaskView>> {
    let UrlPath(id) = id?;
    let op = Action::Retry { id, fresh: b.fresh };
    Ok(axum::Json(ask(&d, op, task).await?))
}

/// The task's result (what the agent reported with `finish`, turns, tokens).
#[utoipa::path(get, path = "/v1/tasks/{id}/result", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, description = "the result", content_type = "application/json"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "no result yet")))]
async fn task_result(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let UrlPath(id) = id?;
    let r = ask(&d, Q::Result { id }, |a| match a {
        Answer::Result(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(r))
}

/// The task's changes to its workspace as a unified diff (empty when none).
#[utoipa::path(get, path = "/v1/tasks/{id}/diff", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, description = "unified diff", content_type = "text/x-diff"), (status = 404, body = ErrorBody)))]
async fn task_diff(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<Response> {
    let UrlPath(id) = id?;
    let diff = ask(&d, Q::Diff { id }, |a| match a {
        Answer::Diff(t) => Some(t),
        _ => None,
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], diff).into_response())
}

/// A task's events after an id, as a JSON array (at most 1000).
#[utoipa::path(get, path = "/v1/tasks/{id}/events", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$"), EventsQuery),
    responses((status = 200, body = Vec<EventView>), (status = 404, body = ErrorBody)))]
async fn task_events(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Vec<EventView>>> {
    let UrlPath(id) = id?;
    let Query(q) = q?;
    let op = Q::Events {
        id,
        after: q.after.unwrap_or(0),
    };
    let ev = ask(&d, op, |a| match a {
        Answer::Events(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(ev))
}

/// Where a stream starts: `Last-Event-ID` (a reconnecting SSE client) beats `after`.
fn start_after(headers: &HeaderMap, q: &EventsQuery) -> ApiResult<i64> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID: not an event id")),
        None => Ok(q.after.unwrap_or(0)),
    }
}

/// Events in order from `after`; for a task, ends once the task is over and every event was
/// sent; for all tasks, never ends.
fn event_feed(
    d: Arc<Engine>,
    task: Option<String>,
    after: i64,
) -> impl Stream<Item = EventRecord> + Send {
    struct Feed {
        d: Arc<Engine>,
        task: Option<String>,
        after: i64,
        buf: VecDeque<EventRecord>,
        changes: tokio::sync::watch::Receiver<u64>,
        last_look: bool,
    }
    let changes = d.changes();
    let feed = Feed {
        d,
        task,
        after,
        buf: VecDeque::new(),
        changes,
        last_look: false,
    };
    futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                f.after = e.id;
                return Some((e, f));
            }
            if f.last_look {
                return None;
            }
            f.changes.borrow_and_update();
            let batch =
                f.d.store()
                    .events_since(f.task.as_deref(), f.after, 256)
                    .unwrap_or_default();
            if !batch.is_empty() {
                f.buf.extend(batch);
                continue;
            }
            if let Some(t) = &f.task {
                match f.d.store().get_task(t) {
                    Ok(t) if t.state.is_terminal() => {
                        // One more look: events written with the final state.
                        f.last_look = true;
                        let batch =
                            f.d.store()
                                .events_since(f.task.as_deref(), f.after, 256)
                                .unwrap_or_default();
                        f.buf.extend(batch);
                        continue;
                    }
                    Err(_) => return None,
                    Ok(_) => {}
                }
            }
            // Woken by this daemon's writes; polled for writers in other processes.
            let _ = tokio::time::timeout(Duration::from_millis(500), f.changes.changed()).await;
        }
    })
}

fn sse(
    feed: impl Stream<Item = EventRecord> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    use futures_util::StreamExt;
    let events = feed.map(|e| {
        let id = e.id;
        let kind = e.kind.clone();
        let data =
            serde_json::to_string(&warren_runtime::action::event_view(e)).unwrap_or_default();
        Ok(Event::default().id(id.to_string()).event(kind).data(data))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A task's events as server-sent events, from `after` or `Last-Event-ID`; the stream ends when
/// the task is over.
#[utoipa::path(get, path = "/v1/tasks/{id}/events/stream", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$"), EventsQuery),
    responses((status = 200, description = "SSE: `id` is the event id, `event` its kind, `data` an EventView", content_type = "text/event-stream"), (status = 404, body = ErrorBody)))]
async fn task_event_stream(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = task_id(id)?;
    let Query(q) = q?;
    d.store().get_task(&id)?;
    let after = start_after(&headers, &q)?;
    Ok(sse(event_feed(d, Some(id), after)).into_response())
}

/// Every task's events as server-sent events (never ends).
#[utoipa::path(get, path = "/v1/events/stream", params(EventsQuery),
    responses((status = 200, description = "SSE of EventView", content_type = "text/event-stream")))]
async fn all_event_stream(
    State(d): Shared,
    q: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let after = start_after(&headers, &q)?;
    Ok(sse(event_feed(d, None, after)).into_response())
}

/// A task's events over a WebSocket: one text message (an EventView) per event; the server
/// closes when the task is over.
#[utoipa::path(get, path = "/v1/tasks/{id}/events/ws", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$"), EventsQuery),
    responses((status = 101, description = "WebSocket upgrade"), (status = 404, body = ErrorBody)))]
async fn task_event_ws(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let id = task_id(id)?;
    let Query(q) = q?;
    d.store().get_task(&id)?;
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!(
            "this endpoint is a WebSocket: send an upgrade request ({})",
            e.body_text()
        ))
    })?;
    let after = q.after.unwrap_or(0);
    Ok(ws.on_upgrade(move |socket| pump_ws(socket, event_feed(d, Some(id), after))))
}

/// Send the feed; stop as soon as the client goes away (EOF, an error, or its close frame,
/// which is answered) instead of polling for a reader that is gone.
async fn pump_ws(socket: WebSocket, feed: impl Stream<Item = EventRecord> + Send) {
    use futures_util::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let mut feed = std::pin::pin!(feed);
    loop {
        tokio::select! {
            e = feed.next() => {
                let Some(e) = e else { break };
                let text = serde_json::to_string(&warren_runtime::action::event_view(e))
                    .unwrap_or_default();
                if tx.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            m = rx.next() => match m {
                // The client closes: answer its close frame, and stop.
                Some(Ok(Message::Close(frame))) => {
                    let _ = tx.send(Message::Close(frame)).await;
                    return;
                }
                None | Some(Err(_)) => return,
                // Pings are answered by the library; other messages are ignored.
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

/// Approve the call a task waits for (or more budget).
#[utoipa::path(post, path = "/v1/tasks/{id}/approve", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")), request_body(content = ApproveTask, description = "optional"),
    responses((status = 200, body = ApprovalView, description = "what was approved"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not waiting for approval")))]
async fn approve_task(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    OptionalBody(b): OptionalBody<ApproveTask>,
) -> ApiResult<axum::Json<ApprovalView>> {
    let UrlPath(id) = id?;
    let op = Action::Decide {
        id,
        approve: true,
        remember: b.remember,
        reason: None,
    };
    Ok(axum::Json(ask(&d, op, approval).await?))
}

/// Deny the call a task waits for (the model is told why).
#[utoipa::path(post, path = "/v1/tasks/{id}/deny", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")), request_body(content = DenyTask, description = "optional"),
    responses((status = 200, body = ApprovalView, description = "what was denied"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not waiting for approval")))]
async fn deny_task(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
    OptionalBody(b): OptionalBody<DenyTask>,
) -> ApiResult<axum::Json<ApprovalView>> {
    let UrlPath(id) = id?;
    let op = Action::Decide {
        id,
        approve: false,
        remember: false,
        reason: b.reason,
    };
    Ok(axum::Json(ask(&d, op, approval).await?))
}

/// What a task waits for.
#[utoipa::path(get, path = "/v1/tasks/{id}/approval", params(("id" = String, Path, description = "Task id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, body = ApprovalView), (status = 404, body = ErrorBody, description = "no such task, or not waiting")))]
async fn task_approval(
    State(d): Shared,
    id: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<axum::Json<ApprovalView>> {
    let UrlPath(id) = id?;
    Ok(axum::Json(ask(&d, Q::Approval { id }, approval).await?))
}

/// Query of `GET /v1/approvals`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RulesQuery {
    /// Only this agent's rules.
    pub agent: Option<String>,
}

/// Remembered approvals.
#[utoipa::path(get, path = "/v1/approvals", params(RulesQuery), responses((status = 200, body = Vec<RuleView>)))]
async fn list_rules(
    State(d): Shared,
    q: Result<Query<RulesQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Vec<RuleView>>> {
    let Query(q) = q?;
    let rules = ask(&d, Q::Rules { agent: q.agent }, |a| match a {
        Answer::Rules(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(rules))
}

/// Forget a remembered approval.
#[utoipa::path(delete, path = "/v1/approvals/{rule}", params(("rule" = i64, Path, description = "Rule id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_rule(
    State(d): Shared,
    rule: Result<UrlPath<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let UrlPath(rule) = rule?;
    ask(&d, Action::RemoveRule { id: rule }, done).await?;
    Ok(StatusCode::NO_CONTENT)
}
