//! Warren as an MCP client: the tools of the MCP servers an agent's manifest lists become agent
//! tools named `mcp__<server>__<tool>`, behind the same gate as every other tool (the tool
//! allowlist, `approval_required`, the audit, the capabilities).
//!
//! **A stdio server runs inside a cell of its own** ([`stdio::spawn`]), never on the host:
//! the runtime starts it with the task's namespace rules (the workspace read-only, the
//! manifest's mounts, no network unless the task's egress policy grants some, and then only
//! through the task's proxy), and this crate speaks MCP to it over the cell's exec channel —
//! the command's stdin and stdout, streamed as frames. The protocol is the official SDK's
//! ([`rmcp`]); nothing here parses JSON-RPC.
//!
//! Everything a server says is hostile input to the host ([`convert`]): tool names outside
//! `[A-Za-z0-9_-]` or too long for a model's function names are dropped, descriptions capped,
//! schemas that are not a bounded JSON object dropped, results rendered to bounded text (an
//! image is described, never decoded), a line longer than rmcp's limit is discarded.
//!
//! Failures surface: a server that exits before answering is reported within a second with the
//! last lines of its stderr ([`McpError::Exited`]); a call waits at most the server's
//! `call_timeout` without a progress notification (each one starts the wait again).
//!
//! **Tool-context budget** ([`McpTools`]): when the servers' tool definitions would take more
//! than a tenth of the model's context window, the model is offered one tool, `mcp_search`,
//! that finds definitions by words; the tools themselves stay callable by name (validated
//! against their schemas, gated and audited as usual), they are just not all in every request.
//!
//! **Approval by annotation**: a tool whose annotations say `destructiveHint: true`, or that
//! has no annotations saying it is read-only or not destructive, waits for a person unless the
//! operator's policy turns that off ([`Offered::approval`]). Annotations are the
//! server's own word: they can only spare a call the wait when the operator lets them.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod conformance;
pub mod convert;
pub mod http;
pub mod stdio;

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest, ServerResult};
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use warren_agent::tools::HostTools;
use warren_config::manifest::McpServer;
use warren_llm::ToolSpec;

pub use convert::Offered;

/// The tool that finds MCP tool definitions when they are too many to offer all.
pub const SEARCH_TOOL: &str = "mcp_search";
/// The share of the context window MCP tool definitions may take before search replaces them.
pub const CONTEXT_SHARE: f64 = 0.10;
/// How long a server that exited is given to finish reporting (its stderr, its status).
const EXIT_GRACE: Duration = Duration::from_millis(300);

/// Why a server could not be used, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The server's command could not be started in its cell.
    #[error("MCP server {server}: cannot start {command:?}: {reason}")]
    Spawn {
        /// The server.
        server: String,
        /// Its command.
        command: String,
        /// Why.
        reason: String,
    },
    /// The server's process ended (before answering, or during a call).
    #[error("MCP server {server} {status}{}", stderr_suffix(stderr))]
    Exited {
        /// The server.
        server: String,
        /// How it ended (`exited with status 1`, `was killed by signal 9`).
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// No answer in time.
    #[error(
        "MCP server {server}: no answer to {what} within {after:?}{}",
        stderr_suffix(stderr)
    )]
    Timeout {
        /// The server.
        server: String,
        /// What was asked.
        what: String,
        /// The limit.
        after: Duration,
        /// The end of its stderr, if it wrote any.
        stderr: String,
    },
    /// The protocol failed (initialize refused, a malformed answer, the connection closed).
    #[error("MCP server {server}: {what}: {reason}{}", stderr_suffix(stderr))]
    Protocol {
        /// The server.
        server: String,
        /// What was asked.
        what: String,
        /// The SDK's error.
        reason: String,
        /// The end of its stderr, if it wrote any.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", stderr.trim_end())
    }
}

/// A connected MCP server and the tools it offers.
pub struct Session {
    name: String,
    call_timeout: Duration,
    client: RunningService<RoleClient, rmcp::model::ClientConfig>,
    tools: Vec<Offered>,
    /// A stdio server's command (none for an HTTP server).
    process: Option<stdio::Process>,
}

/// Resolves when a server's process ends; never for a server without one (HTTP).
async fn exited(process: Option<&stdio::Process>) {
    match process {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

/// The end of a server's stderr (none for an HTTP server).
fn stderr(process: Option<&stdio::Process>) -> String {
    process.map(stdio::Process::stderr).unwrap_or_default()
}

/// The error for a server whose process ended ([`exited`] resolved).
async fn ended(process: Option<&stdio::Process>, server: &str) -> McpError {
    match process {
        Some(p) => p.ended(server).await,
        None => McpError::Protocol {
            server: server.to_owned(),
            what: "the session".into(),
            reason: "ended".into(),
            stderr: String::new(),
        },
    }
}

/// The error for a failed request: a process's end if it ended meanwhile, else the
/// protocol's.
async fn failure(
    process: Option<&stdio::Process>,
    server: &str,
    what: &str,
    reason: String,
) -> McpError {
    match process {
        Some(p) => p.failure(server, what, reason).await,
        None => McpError::Protocol {
            server: server.to_owned(),
            what: what.to_owned(),
            reason,
            stderr: String::new(),
        },
    }
}

/// What Warren tells servers about itself.
pub(crate) fn client_info() -> rmcp::model::ClientConfig {
    let mut info = rmcp::model::ClientConfig::default();
    info.client_info = rmcp::model::Implementation::new("warren", env!("CARGO_PKG_VERSION"));
    info
}

impl Session {
    /// Start `decl`'s stdio server in `cell` (a cell started for it alone), initialize it and
    /// list its tools, all within its `startup_timeout`.
    pub async fn start_stdio(
        decl: &McpServer,
        cell: Arc<dyn warren_cell::Cell>,
    ) -> Result<Session, McpError> {
        let (process, read, write) = stdio::spawn(decl, cell)?;
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new_client(read, write)
            .with_max_line_length(convert::MAX_MESSAGE);
        Self::connect(decl, transport, Some(process)).await
    }

    /// Connect to `decl`'s Streamable HTTP server at `url` through the task's egress proxy
    /// (see [`http`]), initialize it and list its tools within its `startup_timeout`.
    pub async fn start_http(
        decl: &McpServer,
        url: &str,
        proxy: Option<&str>,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Session, McpError> {
        let transport = http::transport(decl, url, proxy, env)?;
        Self::connect(decl, transport, None).await
    }

    async fn connect<T, E, A>(
        decl: &McpServer,
        transport: T,
        process: Option<stdio::Process>,
    ) -> Result<Session, McpError>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let limit = decl.startup_timeout;
        let name = decl.name.clone();
        let started = async {
            let client = client_info()
                .serve(transport)
                .await
                .map_err(|e| ("initialize", e.to_string()))?;
            let tools = client
                .peer()
                .list_all_tools()
                .await
                .map_err(|e| ("tools/list", e.to_string()))?;
            Ok::<_, (&str, String)>((client, tools))
        };
        let outcome = tokio::select! {
            r = started => Some(r),
            () = exited(process.as_ref()) => None,
            () = tokio::time::sleep(limit) => {
                return Err(McpError::Timeout {
                    server: name,
                    what: "initialize and tools/list".into(),
                    after: limit,
                    stderr: stderr(process.as_ref()),
                });
            }
        };
        match outcome {
            Some(Ok((client, tools))) => {
                let tools = convert::offered(&name, &tools);
                Ok(Session {
                    name,
                    call_timeout: decl.call_timeout,
                    client,
                    tools,
                    process,
                })
            }
            Some(Err((what, reason))) => Err(failure(process.as_ref(), &name, what, reason).await),
            None => Err(ended(process.as_ref(), &name).await),
        }
    }

    /// The tools it offers, as agent tools.
    pub fn tools(&self) -> &[Offered] {
        &self.tools
    }

    /// Call the server's tool `remote` with `args`: its result as text, or why it failed (a
    /// tool error is `Err` with the tool's own text).
    pub async fn call(&self, remote: &str, args: &Value) -> Result<String, String> {
        let mut params = CallToolRequestParams::new(remote.to_owned());
        params.arguments = match args {
            Value::Object(m) => Some(m.clone()),
            Value::Null => None,
            _ => return Err("arguments must be a JSON object".into()),
        };
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let options =
            PeerRequestOptions::with_timeout(self.call_timeout).reset_timeout_on_progress();
        let call = async {
            let handle = self
                .client
                .peer()
                .send_request_with_option(request, options)
                .await?;
            handle.await_response().await
        };
        let process = self.process.as_ref();
        let answer = tokio::select! {
            r = call => r,
            () = exited(process) => return Err(ended(process, &self.name).await.to_string()),
        };
        match answer {
            Ok(ServerResult::CallToolResult(r)) => {
                let text = convert::render(&r);
                if r.is_error == Some(true) {
                    Err(text)
                } else {
                    Ok(text)
                }
            }
            Ok(_) => Err(format!(
                "MCP server {}: tools/call: an answer that is not a tool result",
                self.name
            )),
            Err(rmcp::ServiceError::Timeout { timeout }) => Err(McpError::Timeout {
                server: self.name.clone(),
                what: format!("tools/call {remote}"),
                after: timeout,
                stderr: stderr(process),
            }
            .to_string()),
            Err(e) => Err(failure(process, &self.name, "tools/call", e.to_string())
                .await
                .to_string()),
        }
    }

    /// Stop the server (its cell goes with the last reference to it).
    pub async fn close(self) {
        let _ = self.client.cancel().await;
        if let Some(p) = &self.process {
            p.stop();
        }
    }
}

/// The tools of a task's MCP servers, offered to its agent next to the cell's tools.
pub struct McpTools {
    sessions: Vec<Arc<Session>>,
    search: bool,
    runtime: tokio::runtime::Handle,
}

impl McpTools {
    /// The tools of `sessions` for a model whose context window is `context_window` tokens:
    /// all of them, or [`SEARCH_TOOL`] when their definitions exceed [`CONTEXT_SHARE`] of it.
    /// Call from within the runtime the sessions run on.
    pub fn new(sessions: Vec<Arc<Session>>, context_window: u32) -> McpTools {
        let tokens: usize = sessions
            .iter()
            .flat_map(|s| s.tools())
            .map(|t| convert::tokens(&t.spec))
            .sum();
        McpTools {
            search: tokens as f64 > f64::from(context_window) * CONTEXT_SHARE,
            sessions,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Whether the model gets [`SEARCH_TOOL`] instead of every definition.
    pub fn searching(&self) -> bool {
        self.search
    }

    /// Every agent tool of every server.
    pub fn all(&self) -> impl Iterator<Item = &Offered> {
        self.sessions.iter().flat_map(|s| s.tools())
    }

    fn search_spec() -> ToolSpec {
        ToolSpec {
            name: SEARCH_TOOL.into(),
            description: "Find tools of the connected MCP servers by words (their names and \
                          descriptions). Answers each match's name, description and input \
                          schema; then call a match by its name like any other tool."
                .into(),
            parameters: json!({"type": "object", "additionalProperties": false,
                "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20}}}),
        }
    }

    fn find(&self, args: &Value) -> String {
        let query = args["query"].as_str().unwrap_or_default().to_lowercase();
        let limit = args["limit"].as_u64().unwrap_or(5).clamp(1, 20) as usize;
        let words: Vec<&str> = query.split_whitespace().collect();
        let mut scored: Vec<(usize, &Offered)> = self
            .all()
            .filter_map(|t| {
                let hay = format!("{} {}", t.spec.name, t.spec.description).to_lowercase();
                let score = words.iter().filter(|w| hay.contains(*w)).count();
                (score > 0).then_some((score, t))
            })
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.spec.name.cmp(&b.1.spec.name)));
        let hits: Vec<Value> = scored
            .into_iter()
            .take(limit)
            .map(|(_, t)| {
                json!({"name": t.spec.name, "description": t.spec.description,
                       "input_schema": t.spec.parameters})
            })
            .collect();
        json!({"matches": hits, "tools_in_all": self.all().count()}).to_string()
    }
}

impl HostTools for McpTools {
    fn specs(&self) -> Vec<ToolSpec> {
        if self.search {
            vec![Self::search_spec()]
        } else {
            self.all().map(|t| t.spec.clone()).collect()
        }
    }

    fn hidden_specs(&self) -> Vec<ToolSpec> {
        if self.search {
            self.all().map(|t| t.spec.clone()).collect()
        } else {
            Vec::new()
        }
    }

    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>> {
        if name == SEARCH_TOOL && self.search {
            return Some(Ok(self.find(args)));
        }
        let (session, tool) = self.sessions.iter().find_map(|s| {
            s.tools()
                .iter()
                .find(|t| t.spec.name == name)
                .map(|t| (Arc::clone(s), t.remote.clone()))
        })?;
        // Called on a blocking thread (the agent runs tools off the async threads).
        let args = args.clone();
        Some(
            self.runtime
                .block_on(async move { session.call(&tool, &args).await }),
        )
    }
}
