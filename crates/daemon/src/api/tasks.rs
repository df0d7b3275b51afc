//! `/v1/tasks`: submit, list and show tasks; cancel and retry them; their result and diff.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use warren_protocol::api::{
    CancelTask, ErrorBody, PlanView, RetryTask, SubmitTask, TaskState, TaskView,
};
use warren_runtime::action::{Action, Answer, Query};

use super::{ApiError, ApiResult, JsonBody, OptionalBody, QueryOf, Shared, TaskId, TaskPath, ask};

pub(super) fn task(a: Answer) -> Option<TaskView> {
    match a {
        Answer::Task(t) => Some(t),
        _ => None,
    }
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

/// Queue a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = SubmitTask,
    responses((status = 201, body = TaskView, description = "queued"),
        (status = 400, body = ErrorBody, description = "malformed body, an empty goal or one over 64 KiB, a workspace that is not an absolute path of a directory"),
        (status = 404, body = ErrorBody, description = "the agent is not deployed"),
        (status = 429, body = ErrorBody, description = "the queue is full"),
        (status = 503, body = ErrorBody, description = "the daemon is shutting down, or too many connections")))]
pub(super) async fn submit_task(
    State(d): Shared,
    JsonBody(b): JsonBody<SubmitTask>,
) -> ApiResult<Response> {
    let t = ask(&d, Action::Submit(b), task).await?;
    Ok((StatusCode::CREATED, axum::Json(t)).into_response())
}

/// Tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, body = Vec<TaskView>),
        (status = 400, body = ErrorBody, description = "an unknown state or parameter, a limit outside 1 to 10000")))]
pub(super) async fn list_tasks(
    State(d): Shared,
    QueryOf(q): QueryOf<ListQuery>,
) -> ApiResult<axum::Json<Vec<TaskView>>> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "state: {s:?} is not one of queued, running, awaiting_approval, succeeded, failed, cancelled, interrupted"
            ))
        })?),
    };
    let op = Query::Tasks {
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

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(TaskPath),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody, description = "no such task")))]
pub(super) async fn get_task(
    State(d): Shared,
    TaskId(id): TaskId,
) -> ApiResult<axum::Json<TaskView>> {
    Ok(axum::Json(ask(&d, Query::Task { id }, task).await?))
}

/// A plan task's plan: each step, its dependencies and inputs, its state and its latest task.
#[utoipa::path(get, path = "/v1/plans/{id}", tag = "tasks", params(TaskPath),
    responses((status = 200, body = PlanView),
        (status = 404, body = ErrorBody, description = "no such task, or the task is not a plan")))]
pub(super) async fn get_plan(
    State(d): Shared,
    TaskId(id): TaskId,
) -> ApiResult<axum::Json<PlanView>> {
    let p = ask(&d, Query::Plan { id }, |a| match a {
        Answer::Plan(p) => Some(p),
        _ => None,
    })
    .await?;
    Ok(axum::Json(p))
}

/// Cancel a queued or running task (a running task's cell is killed).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(TaskPath),
    request_body(content = CancelTask, description = "optional: no body is `{}`"),
    responses((status = 200, body = TaskView, description = "cancelled (or, for another worker's task, being cancelled)"),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the task is over, or ended before the cancellation took effect")))]
pub(super) async fn cancel_task(
    State(d): Shared,
    TaskId(id): TaskId,
    OptionalBody(b): OptionalBody<CancelTask>,
) -> ApiResult<axum::Json<TaskView>> {
    let op = Action::Cancel {
        id,
        reason: b.reason,
    };
    Ok(axum::Json(ask(&d, op, task).await?))
}

/// Queue a failed, cancelled or interrupted task again.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", params(TaskPath),
    request_body(content = RetryTask, description = "optional: no body is `{}`"),
    responses((status = 200, body = TaskView, description = "queued again"),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the task is not failed, cancelled or interrupted, or was started by `warren run`")))]
pub(super) async fn retry_task(
    State(d): Shared,
    TaskId(id): TaskId,
    OptionalBody(b): OptionalBody<RetryTask>,
) -> ApiResult<axum::Json<TaskView>> {
    let op = Action::Retry { id, fresh: b.fresh };
    Ok(axum::Json(ask(&d, op, task).await?))
}

/// The task's result (what the agent reported with `finish`, turns, tokens).
#[utoipa::path(get, path = "/v1/tasks/{id}/result", tag = "tasks", params(TaskPath),
    responses((status = 200, description = "the result", body = Object),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "no result (yet)")))]
pub(super) async fn task_result(
    State(d): Shared,
    TaskId(id): TaskId,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let r = ask(&d, Query::Result { id }, |a| match a {
        Answer::Result(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(r))
}

/// The task's changes to its workspace as a unified diff (empty when none).
#[utoipa::path(get, path = "/v1/tasks/{id}/diff", tag = "tasks", params(TaskPath),
    responses((status = 200, description = "unified diff", content_type = "text/x-diff", body = String),
        (status = 404, body = ErrorBody, description = "no such task")))]
pub(super) async fn task_diff(State(d): Shared, TaskId(id): TaskId) -> ApiResult<Response> {
    let diff = ask(&d, Query::Diff { id }, |a| match a {
        Answer::Diff(t) => Some(t),
        _ => None,
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], diff).into_response())
}
