//! Approvals: what a paused task waits for, a person's decision on it, and the remembered
//! approvals (rules) such decisions leave.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use warren_protocol::api::{ApprovalView, ApproveTask, DenyTask, ErrorBody, ErrorCode, RuleView};
use warren_runtime::action::{Action, Answer, Query};

use super::{
    ApiError, ApiResult, OptionalBody, Param, QueryOf, Shared, TaskId, TaskPath, ask, done,
};

fn approval(a: Answer) -> Option<ApprovalView> {
    match a {
        Answer::Approval(v) => Some(v),
        _ => None,
    }
}

/// What a task waits for.
#[utoipa::path(get, path = "/v1/tasks/{id}/approval", tag = "approvals", params(TaskPath),
    responses((status = 200, body = ApprovalView),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the task is not waiting for approval")))]
pub(super) async fn task_approval(
    State(d): Shared,
    TaskId(id): TaskId,
) -> ApiResult<axum::Json<ApprovalView>> {
    match ask(&d, Query::Approval { id: id.clone() }, approval).await {
        Ok(v) => Ok(axum::Json(v)),
        // A task that exists but waits for nothing: a conflict with its state, as approving or
        // denying it is (not a missing resource).
        Err(ApiError(ErrorCode::NotFound, m)) => match d.task_state(&id) {
            Ok(state) => Err(ApiError(
                ErrorCode::Conflict,
                format!("task {id} is {}, not waiting for approval", state.as_str()),
            )),
            Err(_) => Err(ApiError(ErrorCode::NotFound, m)),
        },
        Err(e) => Err(e),
    }
}

/// Approve the call a task waits for (or more budget).
#[utoipa::path(post, path = "/v1/tasks/{id}/approve", tag = "approvals", params(TaskPath),
    request_body(content = ApproveTask, description = "optional: no body is `{}`"),
    responses((status = 200, body = ApprovalView, description = "what was approved"),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the task is not waiting for approval")))]
pub(super) async fn approve_task(
    State(d): Shared,
    TaskId(id): TaskId,
    OptionalBody(b): OptionalBody<ApproveTask>,
) -> ApiResult<axum::Json<ApprovalView>> {
    let op = Action::Decide {
        id,
        approve: true,
        remember: b.remember,
        reason: None,
    };
    Ok(axum::Json(ask(&d, op, approval).await?))
}

/// Deny the call a task waits for (the model is told why).
#[utoipa::path(post, path = "/v1/tasks/{id}/deny", tag = "approvals", params(TaskPath),
    request_body(content = DenyTask, description = "optional: no body is `{}`"),
    responses((status = 200, body = ApprovalView, description = "what was denied"),
        (status = 404, body = ErrorBody, description = "no such task"),
        (status = 409, body = ErrorBody, description = "the task is not waiting for approval")))]
pub(super) async fn deny_task(
    State(d): Shared,
    TaskId(id): TaskId,
    OptionalBody(b): OptionalBody<DenyTask>,
) -> ApiResult<axum::Json<ApprovalView>> {
    let op = Action::Decide {
        id,
        approve: false,
        remember: false,
        reason: b.reason,
    };
    Ok(axum::Json(ask(&d, op, approval).await?))
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
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(RulesQuery),
    responses((status = 200, body = Vec<RuleView>)))]
pub(super) async fn list_rules(
    State(d): Shared,
    QueryOf(q): QueryOf<RulesQuery>,
) -> ApiResult<axum::Json<Vec<RuleView>>> {
    let rules = ask(&d, Query::Rules { agent: q.agent }, |a| match a {
        Answer::Rules(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(rules))
}

/// Forget a remembered approval.
#[utoipa::path(delete, path = "/v1/approvals/{rule}", tag = "approvals",
    params(("rule" = i64, Path, description = "Rule id")),
    responses((status = 204, description = "forgotten"), (status = 404, body = ErrorBody, description = "no such rule")))]
pub(super) async fn delete_rule(
    State(d): Shared,
    Param(rule): Param<i64>,
) -> ApiResult<StatusCode> {
    ask(&d, Action::RemoveRule { id: rule }, done).await?;
    Ok(StatusCode::NO_CONTENT)
}
