//! `/v1/agents`: deploy, list, show and remove agent manifests.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use warren_protocol::api::{AgentView, DeployAgent, ErrorBody};
use warren_runtime::action::{Action, Answer, Query};

use super::{ApiResult, JsonBody, Param, Shared, ask, done};

fn agent(a: Answer) -> Option<AgentView> {
    match a {
        Answer::Agent(a) => Some(a),
        _ => None,
    }
}

/// Validate a manifest and deploy it as the agent's next version.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = DeployAgent,
    responses((status = 201, body = AgentView, description = "deployed; `version` is the new version"),
        (status = 400, body = ErrorBody, description = "malformed body, or an invalid manifest (the message names line and column)")))]
pub(super) async fn deploy_agent(
    State(d): Shared,
    JsonBody(b): JsonBody<DeployAgent>,
) -> ApiResult<Response> {
    let op = Action::Deploy {
        origin: "manifest".into(),
        manifest: b.manifest,
    };
    let a = ask(&d, op, agent).await?;
    Ok((StatusCode::CREATED, axum::Json(a)).into_response())
}

/// Deployed agents (latest versions, without manifests).
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<AgentView>)))]
pub(super) async fn list_agents(State(d): Shared) -> ApiResult<axum::Json<Vec<AgentView>>> {
    let list = ask(&d, Query::Agents, |a| match a {
        Answer::Agents(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(list))
}

/// One agent (latest version) with its manifest.
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody, description = "no such agent")))]
pub(super) async fn get_agent(
    State(d): Shared,
    Param(name): Param<String>,
) -> ApiResult<axum::Json<AgentView>> {
    let op = Query::Agent {
        name,
        version: None,
    };
    Ok(axum::Json(ask(&d, op, agent).await?))
}

/// Remove every version of an agent.
#[utoipa::path(delete, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody, description = "no such agent")))]
pub(super) async fn delete_agent(
    State(d): Shared,
    Param(name): Param<String>,
) -> ApiResult<StatusCode> {
    ask(&d, Action::RemoveAgent { name }, done).await?;
    Ok(StatusCode::NO_CONTENT)
}
