//! The HTTP API (axum), served on the daemon's unix socket and, behind a bearer token, on TCP.
//!
//! | method and path | what | file |
//! |---|---|---|
//! | `GET /health` | liveness, version, running and queued counts, host tiers | [`health`] |
//! | `GET /metrics` | Prometheus text format | [`health`] |
//! | `GET /openapi.json` | this API as OpenAPI 3.1, generated from the handlers | here |
//! | `POST /v1/agents`, `GET /v1/agents`, `GET`/`DELETE /v1/agents/{name}` | manifests | [`agents`] |
//! | `POST /v1/tasks`, `GET /v1/tasks?state=&agent=&limit=`, `GET /v1/tasks/{id}` | tasks | [`tasks`] |
//! | `POST /v1/tasks/{id}/cancel`, `POST /v1/tasks/{id}/retry` | lifecycle | [`tasks`] |
//! | `GET /v1/tasks/{id}/result`, `GET /v1/tasks/{id}/diff` | artifacts | [`tasks`] |
//! | `GET /v1/tasks/{id}/approval`, `POST /v1/tasks/{id}/approve`, `POST /v1/tasks/{id}/deny` | a paused call | [`approvals`] |
//! | `GET /v1/approvals?agent=`, `DELETE /v1/approvals/{rule}` | remembered approvals | [`approvals`] |
//! | `GET /v1/tasks/{id}/events?after=N` | events as a JSON array | [`events`] |
//! | `GET /v1/tasks/{id}/events/stream`, `GET /v1/events/stream` | SSE, resumable (`Last-Event-ID` or `after`) | [`events`] |
//! | `GET /v1/tasks/{id}/events/ws` | the same over a WebSocket | [`events`] |
//! | `POST`/`GET`/`DELETE /mcp` | MCP over Streamable HTTP (not in the OpenAPI document: MCP describes itself) | [`warren_mcp`] |
//!
//! Handlers parse a request into a [`warren_runtime::action::Action`] or
//! [`warren_runtime::action::Query`] and hand it to [`Engine::handle`]; the event feeds and the
//! counts read through the engine's read methods. No handler touches the store.
//!
//! Every error is `{"code": "...", "message": "..."}` with a 4xx/5xx status (the statuses are
//! in the document, route by route). Bodies are at most 1 MiB (a larger declared
//! `Content-Length` is answered 413 before any of it is read) and must arrive within
//! [`BODY_TIMEOUT`]; JSON bodies reject unknown fields and report the line and column of a
//! syntax error (a number with a zero fraction, `1.0`, is the integer it equals, as in JSON
//! Schema). A method a path does not take is a 405 with `Allow`. Connection limits and
//! timeouts are the listener's ([`crate::conn`]).

pub mod agents;
pub mod approvals;
pub mod events;
pub mod health;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use utoipa::OpenApi;
use warren_protocol::api::{
    AgentView, ApprovalView, ApproveTask, CancelTask, DenyTask, DeployAgent, ErrorBody, ErrorCode,
    EventView, Health, PlanView, RetryTask, RuleView, StepView, SubmitTask, TASK_ID_PATTERN,
    TaskState, TaskView,
};
use warren_runtime::action::{ActionError, Answer, Caller, Op};
use warren_runtime::engine::Engine;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A request body must arrive within this (a client trickling one byte at a time does not
/// hold a handler for longer).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// An API error: an [`ErrorCode`] (which fixes the status) and a message.
#[derive(Debug)]
pub struct ApiError(pub ErrorCode, pub String);

impl ApiError {
    fn invalid(msg: impl Into<String>) -> Self {
        ApiError(ErrorCode::InvalidRequest, msg.into())
    }

    fn too_large() -> Self {
        ApiError(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
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

type ApiResult<T> = Result<T, ApiError>;
type Shared = State<Arc<Engine>>;

/// A path parameter; a malformed one is a JSON 400.
pub struct Param<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Param<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::from)?;
        Ok(Param(v))
    }
}

/// The `{id}` of a task route, checked against [`TASK_ID_PATTERN`] (a JSON 400 otherwise).
pub struct TaskId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Param(id) = Param::<String>::from_request_parts(parts, state).await?;
        if !warren_protocol::api::is_task_id(&id) {
            return Err(ApiError::invalid(format!(
                "{id:?} is not a task id (letters, digits and -, at most 64)"
            )));
        }
        Ok(TaskId(id))
    }
}

/// The path of a task route, for the document (the document adds the id's pattern).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TaskPath {
    /// Task id (`t` and 12 hex digits for new tasks).
    id: String,
}

/// A query string; unknown or malformed parameters are a JSON 400.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::from)?;
        Ok(QueryOf(v))
    }
}

/// A JSON body: size-limited, unknown fields refused, syntax errors with line and column.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req).await?;
        json_body(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: empty means the type's default; otherwise like [`JsonBody`].
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req).await?;
        optional_body(&bytes).map(OptionalBody)
    }
}

/// The request body: at most [`MAX_BODY`] bytes (a JSON 413 past it), within
/// [`BODY_TIMEOUT`] (a JSON 400 after it).
async fn body_bytes(req: Request) -> ApiResult<Bytes> {
    use futures_util::StreamExt;
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the body: {e}")))?;
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Err(_) => Err(ApiError::invalid(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => {
            if e.0 == ErrorCode::PayloadTooLarge {
                tokio::spawn(drain(stream));
            }
            Err(e)
        }
        Ok(Ok(())) => Ok(buf.into()),
    }
}

/// Read and drop what a client still sends of a body that was refused, for a moment: closing
/// a connection with unread data resets it, and the client would see the reset instead of the
/// answer (a lingering close, bounded in time and bytes).
async fn drain(mut body: axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut n = 0;
        while let Some(Ok(chunk)) = body.next().await {
            n += chunk.len();
            if n > 16 * MAX_BODY {
                break;
            }
        }
    })
    .await;
}

/// Parse a JSON body into `T`. A number with a zero fraction (`1.0`) counts as the integer
/// it equals, as JSON Schema's `integer` has it.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let invalid = |e: serde_json::Error| ApiError::invalid(format!("invalid JSON body: {e}"));
    let mut v: Value = serde_json::from_slice(body).map_err(invalid)?;
    integral_floats_as_integers(&mut v);
    serde_json::from_value(v).map_err(invalid)
}

fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                // Exact: |f| < 2^53.
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body(body)
}

/// Every request through the API acts as this caller (the listener authenticated it).
fn caller() -> Caller {
    Caller::operator("api")
}

/// Handle `op` through the engine; the answer must be the variant `pick` takes.
async fn ask<T>(d: &Arc<Engine>, op: impl Into<Op>, pick: fn(Answer) -> Option<T>) -> ApiResult<T> {
    let a = d.handle(&caller(), op.into()).await?;
    pick(a).ok_or_else(|| ApiError(ErrorCode::Internal, "unexpected answer".into()))
}

fn done(a: Answer) -> Option<()> {
    matches!(a, Answer::Done).then_some(())
}

/// What every operation shares, and what the handlers' annotations cannot say: the bearer
/// scheme of the TCP listener (the unix socket needs none: its file mode is the check), the
/// task id pattern, and the error statuses of the listener and the extractors.
struct Common;

/// Error statuses any route can answer: from the TCP listener's check, the declared-size
/// check, the store, and the connection cap.
const EVERY_ROUTE: &[(&str, &str)] = &[
    (
        "401",
        "no or a wrong bearer token (TCP listener only; the unix socket needs none)",
    ),
    ("413", "the body is larger than 1 MiB"),
    ("500", "the server failed (the message says what)"),
    ("503", "too many connections to this daemon; try again"),
];

/// Operations whose body may be left out (an [`OptionalBody`]).
const OPTIONAL_BODY: &[&str] = &["cancel_task", "retry_task", "approve_task", "deny_task"];

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{Parameter, ParameterIn};
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{Ref, RefOr, ResponseBuilder, content::ContentBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The TCP listener's token (file `token` in the daemon's state directory); the unix socket needs none.",
                    ))
                    .build(),
            ),
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
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
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
                if OPTIONAL_BODY.contains(&op.operation_id.as_deref().unwrap_or_default())
                    && let Some(b) = op.request_body.as_mut()
                {
                    b.required = Some(utoipa::openapi::Required::False);
                }
                let params: &mut [Parameter] = op.parameters.as_deref_mut().unwrap_or_default();
                let mut takes_input = op.request_body.is_some();
                for p in params.iter_mut() {
                    takes_input = true;
                    if matches!(p.parameter_in, ParameterIn::Path) && p.name == "id" {
                        p.schema = Some(RefOr::T(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::schema::Type::String)
                                .pattern(Some(TASK_ID_PATTERN))
                                .into(),
                        ));
                    }
                }
                let r = &mut op.responses.responses;
                // Server-sent events: the schema is one event's (OpenAPI 3.1 has no itemSchema).
                for resp in r.values_mut() {
                    if let RefOr::T(resp) = resp
                        && let Some(c) = resp.content.get_mut("text/event-stream")
                    {
                        c.schema = Some(RefOr::T(sse_event_schema()));
                    }
                }
                if takes_input {
                    r.entry("400".into()).or_insert_with(|| {
                        error("malformed request: a path parameter, the query or the body")
                    });
                }
                for (status, what) in EVERY_ROUTE {
                    // The document is built in, not read from the store.
                    if *status == "500" && op.operation_id.as_deref() == Some("openapi") {
                        continue;
                    }
                    r.entry((*status).into()).or_insert_with(|| error(what));
                }
            }
        }
        // A method a path does not take is no operation of the document; its answer is here.
        components.responses.insert(
            "MethodNotAllowed".into(),
            error(
                "405: the path does not take this method (the `Allow` header lists those it takes)",
            ),
        );
        // The server refuses what these schemas cannot otherwise say: a goal of white space
        // only, a workspace that is not an absolute path.
        if let Some(RefOr::T(utoipa::openapi::Schema::Object(o))) =
            components.schemas.get_mut("SubmitTask")
        {
            for (field, pattern) in [("goal", "\\S"), ("workspace", "^/")] {
                if let Some(RefOr::T(utoipa::openapi::Schema::Object(f))) =
                    o.properties.get_mut(field)
                {
                    f.pattern = Some(pattern.into());
                }
            }
        }
    }
}

/// One server-sent event of the event streams: its id, its kind, an [`EventView`] as JSON.
fn sse_event_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::ObjectBuilder;
    use utoipa::openapi::schema::Type;
    let string = |what: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(what))
    };
    let mut data = string("the event (an EventView), as JSON")
        .content_media_type("application/json")
        .build();
    data.extensions = Some(utoipa::openapi::extensions::Extensions::from_iter([(
        "contentSchema",
        json!({"$ref": "#/components/schemas/EventView"}),
    )]));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("one server-sent event"))
        .property(
            "id",
            string("the event id (resume after it with Last-Event-ID)").pattern(Some("^[0-9]+$")),
        )
        .property("event", string("the event's kind"))
        .property("data", data)
        .required("id")
        .required("event")
        .required("data")
        .into()
}

/// The OpenAPI document itself.
#[utoipa::path(get, path = "/openapi.json",
    responses((status = 200, description = "this document (OpenAPI 3.1)", body = Object)))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&Common),
    info(
        title = "Warren daemon API",
        description = "Agents, tasks, approvals and events of a Warren daemon. Every error is an ErrorBody; a method a path does not take is answered 405 (components/responses/MethodNotAllowed)."
    ),
    paths(
        health::health,
        health::metrics,
        openapi,
        agents::deploy_agent,
        agents::list_agents,
        agents::get_agent,
        agents::delete_agent,
        tasks::submit_task,
        tasks::list_tasks,
        tasks::get_task,
        tasks::cancel_task,
        tasks::retry_task,
        tasks::task_result,
        tasks::task_diff,
        tasks::get_plan,
        approvals::task_approval,
        approvals::approve_task,
        approvals::deny_task,
        approvals::list_rules,
        approvals::delete_rule,
        events::task_events,
        events::task_event_stream,
        events::all_event_stream,
        events::task_event_ws,
    ),
    components(schemas(
        ErrorBody,
        ErrorCode,
        TaskState,
        TaskView,
        PlanView,
        StepView,
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
    router_with_mcp(
        daemon,
        token,
        LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect(),
    )
}

/// The `Host` names `/mcp` answers by default: loopback, and `warren` (what the CLI sends over
/// the unix socket).
pub const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "warren"];

/// The `Host` names `/mcp` answers on a TCP listener bound to `bound`: [`LOOPBACK_HOSTS`] and
/// the listener's own address (clients name it in `Host`), with and without its port.
pub fn tcp_mcp_hosts(bound: std::net::SocketAddr) -> Vec<String> {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
    hosts.push(bound.ip().to_string());
    hosts.push(bound.to_string());
    hosts
}

/// [`router`], with `/mcp` (MCP over Streamable HTTP, [`warren_mcp::streamable_http`]) answering
/// requests whose `Host` is one of `mcp_hosts`. MCP callers are audited as `mcp`.
pub fn router_with_mcp(
    daemon: Arc<Engine>,
    token: Option<Arc<str>>,
    mcp_hosts: Vec<String>,
) -> Router {
    let mcp = warren_mcp::streamable_http(
        Arc::new(warren_mcp::EngineBackend::new(
            Arc::clone(&daemon),
            warren_runtime::action::Caller::operator("mcp"),
        )),
        mcp_hosts,
        daemon.skill_roots().to_vec(),
    );
    let r = Router::new()
        .nest_service("/mcp", mcp)
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/agents",
            post(agents::deploy_agent).get(agents::list_agents),
        )
        .route(
            "/v1/agents/{name}",
            get(agents::get_agent).delete(agents::delete_agent),
        )
        .route("/v1/tasks", post(tasks::submit_task).get(tasks::list_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel_task))
        .route("/v1/tasks/{id}/retry", post(tasks::retry_task))
        .route("/v1/tasks/{id}/result", get(tasks::task_result))
        .route("/v1/tasks/{id}/diff", get(tasks::task_diff))
        .route("/v1/plans/{id}", get(tasks::get_plan))
        .route("/v1/tasks/{id}/approval", get(approvals::task_approval))
        .route("/v1/tasks/{id}/approve", post(approvals::approve_task))
        .route("/v1/tasks/{id}/deny", post(approvals::deny_task))
        .route("/v1/approvals", get(approvals::list_rules))
        .route("/v1/approvals/{rule}", delete(approvals::delete_rule))
        .route("/v1/tasks/{id}/events", get(events::task_events))
        .route(
            "/v1/tasks/{id}/events/stream",
            get(events::task_event_stream),
        )
        .route("/v1/tasks/{id}/events/ws", get(events::task_event_ws))
        .route("/v1/events/stream", get(events::all_event_stream))
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
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
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

/// A body declared larger than [`MAX_BODY`] is answered at once (413), before any of it is
/// read, and the connection closes (a 10 GB `Content-Length` gets its answer, not a wait).
async fn refuse_declared_oversize(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // A client that waits for `100 Continue` sends nothing; any other may be sending.
        let waits = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits {
            tokio::spawn(drain(req.into_body().into_data_stream()));
        }
        let mut r = ApiError::too_large().into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    next.run(req).await
}

/// Constant-time comparison (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization` header value: the scheme is case-insensitive (RFC 9110
/// §11.1), white space around the token is not part of it.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

async fn authorize(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError(
                ErrorCode::Unauthorized,
                "this listener requires `Authorization: Bearer <token>` (the token is in the daemon's state directory, file `token`)".into(),
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_compare_exact() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn integral_numbers_are_integers_and_bodies_stay_strict() {
        let t: SubmitTask = json_body(br#"{"agent": "a", "goal": "g", "priority": 2.0}"#)
            .unwrap_or_else(|e| panic!("{}", e.1));
        assert_eq!(t.priority, 2);
        assert!(
            json_body::<SubmitTask>(br#"{"agent": "a", "goal": "g", "priority": 2.5}"#).is_err()
        );
        let e = json_body::<SubmitTask>(br#"{"agent": "a", "goal": "g", "colour": 1}"#)
            .err()
            .map(|e| e.1)
            .unwrap_or_default();
        assert!(e.contains("colour"), "{e}");
        let e = json_body::<SubmitTask>(b"{\"agent\": \"a\",\n \"goal\": }")
            .err()
            .map(|e| e.1)
            .unwrap_or_default();
        assert!(e.contains("line 2"), "{e}");
        assert_eq!(
            optional_body::<CancelTask>(b"  \n").map(|c| c.reason).ok(),
            Some(None)
        );
    }
}
