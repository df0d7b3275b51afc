//! `warren mcp`: Warren's MCP server on stdin/stdout, for MCP clients that launch a command
//! (Claude Code, Cursor, Codex). Its tools ([`warren_mcp::WarrenMcp`]) act on the daemon
//! through its HTTP API ([`Remote`]), so a task submitted over MCP is scheduled, confined,
//! audited and answered exactly like one from `warren task submit`. stdout carries only the
//! protocol; diagnostics go to stderr.
//!
//! `warren mcp --conformance-fixture --listen ADDR` (hidden) serves the MCP conformance suite's
//! fixture instead ([`warren_mcp::conformance`]), over Streamable HTTP as the daemon serves
//! `/mcp`; `warren mcp --conformance-client URL` (hidden) plays one of the suite's client
//! scenarios against its mock server at URL as Warren's MCP client
//! ([`warren_mcp_client::conformance`]): both for CI (`.ci/mcp-conformance`), not for use.

use std::path::Path;

use hyper::Method;
use rmcp::ServiceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use warren_protocol::api::{
    AgentView, ApprovalView, ApproveTask, CancelTask, DenyTask, ErrorCode, EventView, RetryTask,
    RuleView, TaskView,
};
use warren_runtime::action::{Action, ActionError, Answer, Op, Query};

use crate::client::{self, CallError, Target};

/// The daemon's API as a [`warren_mcp::Backend`]: each operation is the request the API
/// documents for it.
pub struct Remote {
    target: Target,
}

fn action_error(e: CallError) -> ActionError {
    match e {
        CallError::Api { body, .. } => ActionError::new(body.code, body.message),
        CallError::Unreachable(m) => ActionError::new(
            ErrorCode::Unavailable,
            format!("the Warren daemon does not answer ({m}); start it with `warren daemon start`"),
        ),
        CallError::Unrecognized { message, .. } => ActionError::new(ErrorCode::Internal, message),
    }
}

const NO_BODY: Option<&()> = None;

impl Remote {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ActionError> {
        client::call_as(&self.target, Method::GET, path, NO_BODY)
            .await
            .map_err(action_error)
    }

    async fn post<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ActionError> {
        client::call_as(&self.target, Method::POST, path, Some(body))
            .await
            .map_err(action_error)
    }

    async fn delete(&self, path: &str) -> Result<Answer, ActionError> {
        client::call(&self.target, Method::DELETE, path, NO_BODY)
            .await
            .map_err(action_error)?;
        Ok(Answer::Done)
    }

    async fn query(&self, q: Query) -> Result<Answer, ActionError> {
        Ok(match q {
            Query::Agents => Answer::Agents(self.get::<Vec<AgentView>>("/v1/agents").await?),
            Query::Agent { name, version } => {
                let v = version.map_or(String::new(), |v| format!("?version={v}"));
                Answer::Agent(self.get(&format!("/v1/agents/{name}{v}")).await?)
            }
            Query::Tasks {
                state,
                agent,
                limit,
            } => {
                let mut q = Vec::new();
                if let Some(s) = state {
                    q.push(format!("state={}", s.as_str()));
                }
                if let Some(a) = agent {
                    q.push(format!("agent={a}"));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                let path = format!("/v1/tasks?{}", q.join("&"));
                Answer::Tasks(self.get::<Vec<TaskView>>(&path).await?)
            }
            Query::Task { id } => Answer::Task(self.get(&format!("/v1/tasks/{id}")).await?),
            Query::Result { id } => {
                Answer::Result(self.get::<Value>(&format!("/v1/tasks/{id}/result")).await?)
            }
            Query::Diff { id } => {
                let path = format!("/v1/tasks/{id}/diff");
                let bytes = client::call(&self.target, Method::GET, &path, NO_BODY)
                    .await
                    .map_err(action_error)?;
                Answer::Diff(String::from_utf8_lossy(&bytes).into_owned())
            }
            Query::Events { id, after } => Answer::Events(
                self.get::<Vec<EventView>>(&format!("/v1/tasks/{id}/events?after={after}"))
                    .await?,
            ),
            Query::Plan { id } => Answer::Plan(self.get(&format!("/v1/plans/{id}")).await?),
            Query::Approval { id } => Answer::Approval(
                self.get::<ApprovalView>(&format!("/v1/tasks/{id}/approval"))
                    .await?,
            ),
            Query::Rules { agent } => {
                let q = agent.map_or(String::new(), |a| format!("?agent={a}"));
                Answer::Rules(
                    self.get::<Vec<RuleView>>(&format!("/v1/approvals{q}"))
                        .await?,
                )
            }
        })
    }

    async fn act(&self, a: Action) -> Result<Answer, ActionError> {
        Ok(match a {
            Action::Deploy { manifest, .. } => Answer::Agent(
                self.post(
                    "/v1/agents",
                    &warren_protocol::api::DeployAgent { manifest },
                )
                .await?,
            ),
            Action::RemoveAgent { name } => {
                return self.delete(&format!("/v1/agents/{name}")).await;
            }
            Action::Submit(s) => Answer::Task(self.post("/v1/tasks", &s).await?),
            Action::Cancel { id, reason } => Answer::Task(
                self.post(&format!("/v1/tasks/{id}/cancel"), &CancelTask { reason })
                    .await?,
            ),
            Action::Retry { id, fresh } => Answer::Task(
                self.post(&format!("/v1/tasks/{id}/retry"), &RetryTask { fresh })
                    .await?,
            ),
            Action::Decide {
                id,
                approve: true,
                remember,
                ..
            } => Answer::Approval(
                self.post(
                    &format!("/v1/tasks/{id}/approve"),
                    &ApproveTask { remember },
                )
                .await?,
            ),
            Action::Decide {
                id,
                approve: false,
                reason,
                ..
            } => Answer::Approval(
                self.post(&format!("/v1/tasks/{id}/deny"), &DenyTask { reason })
                    .await?,
            ),
            Action::RemoveRule { id } => return self.delete(&format!("/v1/approvals/{id}")).await,
        })
    }
}

#[async_trait::async_trait]
impl warren_mcp::Backend for Remote {
    async fn handle(&self, op: Op) -> Result<Answer, ActionError> {
        match op {
            Op::Ask(q) => self.query(q).await,
            Op::Act(a) => self.act(a).await,
        }
    }
}

/// The async runtime `warren mcp`'s modes run on (the error said when it cannot be built).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| eprintln!("warren mcp: {e}"))
        .ok()
}

/// `warren mcp`: serve MCP on stdin/stdout until the client closes it.
pub fn serve(url: Option<&str>, state: &Path) -> i32 {
    let target = match client::target(url, state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warren mcp: {e}");
            return 2;
        }
    };
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async move {
        // The skills of whoever launched it, where it was launched (a project's once trusted).
        let cwd = std::env::current_dir().ok();
        let trusted = crate::load_config()
            .ok()
            .and_then(|l| l.project)
            .is_some_and(|p| p.trusted);
        let server = warren_mcp::WarrenMcp::new(std::sync::Arc::new(Remote { target }))
            .with_skills(crate::skills::used_roots(cwd.as_deref(), trusted));
        match server.serve(rmcp::transport::stdio()).await {
            Ok(running) => match running.waiting().await {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("warren mcp: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("warren mcp: the client's initialization failed: {e}");
                1
            }
        }
    })
}

/// `warren mcp --conformance-fixture --listen ADDR`: serve the conformance fixture at
/// `http://ADDR/mcp` until killed, with the daemon's `/mcp` configuration (its `Host` names
/// for a TCP listener, its `Origin` rule) and connection limits. One line on stderr once
/// bound: `listening on http://ADDR/mcp`.
pub fn serve_fixture(addr: std::net::SocketAddr) -> i32 {
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("warren mcp: cannot listen on {addr}: {e}");
                return 1;
            }
        };
        let bound = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("warren mcp: {e}");
                return 1;
            }
        };
        let mcp =
            warren_mcp::conformance::streamable_http(warren_daemon::api::tcp_mcp_hosts(bound));
        let app = axum::Router::new().nest_service("/mcp", mcp);
        eprintln!("listening on http://{bound}/mcp");
        // Never told to stop: the fixture runs until it is killed.
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        warren_daemon::conn::serve(
            listener,
            app,
            warren_daemon::conn::ConnLimits::default(),
            stop_rx,
        )
        .await;
        0
    })
}

/// `warren mcp --conformance-client URL`: play the client scenario the suite names in
/// `MCP_CONFORMANCE_SCENARIO` against its mock server at `URL`, for the revision in
/// `MCP_CONFORMANCE_PROTOCOL_VERSION`, with the context in `MCP_CONFORMANCE_CONTEXT` (JSON).
/// 0 when the scenario ran through; 1, with why on stderr, when it did not.
pub fn conformance_client(url: &str) -> i32 {
    // The SDK's and the driver's diagnostics: the suite keeps each scenario's stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let Ok(scenario) = std::env::var("MCP_CONFORMANCE_SCENARIO") else {
        eprintln!("warren mcp: MCP_CONFORMANCE_SCENARIO is not set");
        return 1;
    };
    let protocol = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION").ok();
    let context = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("warren mcp: MCP_CONFORMANCE_CONTEXT is not JSON: {e}");
                return 1;
            }
        },
        Err(_) => None,
    };
    let Some(rt) = runtime() else { return 1 };
    let outcome = rt.block_on(warren_mcp_client::conformance::run(
        url,
        &scenario,
        protocol.as_deref(),
        context,
    ));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warren mcp: conformance scenario {scenario}: {e}");
            1
        }
    }
}
