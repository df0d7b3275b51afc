//! A stdio MCP server for Warren's MCP client tests (rmcp, the official SDK): tools whose
//! behaviour the tests choose, run inside a cell the way any server would.
//!
//! - `echo {text}` (read-only): the text back.
//! - `probe` (read-only): where it runs — its pid, whether `/task`, `/logs` and `/skills`
//!   exist, whether `/workspace` can be written, its uid.
//! - `delete {path}` (destructive): pretends to delete; answers what it would have deleted.
//! - `slow {seconds, progress}` (no annotations): answers after `seconds`, sending a progress
//!   notification every 200 ms when `progress` is true.
//! - `fail` (read-only): a tool error.
//!
//! `WARREN_TEST_MCP_TOOLS=N` adds N more read-only tools `tool_0` … with long descriptions
//! (a server whose definitions overflow a model's tool budget). `WARREN_TEST_MCP_EXIT=TEXT`
//! makes it write TEXT to stderr and exit 3 before answering anything.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock as Content,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

struct Server {
    extra: usize,
}

fn schema(v: Value) -> Arc<serde_json::Map<String, Value>> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(serde_json::Map::new()),
    }
}

fn read_only() -> Option<ToolAnnotations> {
    Some(ToolAnnotations::new().read_only(true))
}

impl Server {
    fn tools(&self) -> Vec<Tool> {
        let text = json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]});
        let empty = json!({"type": "object", "properties": {}});
        let mut t = vec![
            Tool::new("echo", "Answers its text.", schema(text)),
            Tool::new("probe", "Says where it runs.", schema(empty.clone())),
            Tool::new(
                "delete",
                "Deletes a file (pretends to).",
                schema(
                    json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
                ),
            ),
            Tool::new(
                "slow",
                "Answers after a while.",
                schema(json!({"type": "object", "properties": {
                    "seconds": {"type": "number"}, "progress": {"type": "boolean"}}})),
            ),
            Tool::new("fail", "Always fails.", schema(empty.clone())),
        ];
        t[0].annotations = read_only();
        t[1].annotations = read_only();
        t[2].annotations = Some(ToolAnnotations::new().destructive(true));
        t[4].annotations = read_only();
        for i in 0..self.extra {
            let mut x = Tool::new(
                format!("tool_{i}"),
                format!(
                    "Extra tool number {i}. {}",
                    "It does something rather specific. ".repeat(20)
                ),
                schema(empty.clone()),
            );
            x.annotations = read_only();
            t.push(x);
        }
        t
    }
}

fn probe() -> Value {
    let writable = std::fs::write("/workspace/.probe", b"x").is_ok();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    json!({
        "pid": std::process::id(),
        "task": std::path::Path::new("/task").exists(),
        "logs": std::path::Path::new("/logs").exists(),
        "skills": std::path::Path::new("/skills").exists(),
        "workspace_writable": writable,
        "workspace": std::path::Path::new("/workspace").exists(),
        "uid": uid,
    })
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("warren-test-mcp-server", "0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let result = match request.name.as_ref() {
            "echo" => CallToolResult::success(vec![Content::text(
                args["text"].as_str().unwrap_or_default().to_owned(),
            )]),
            "probe" => CallToolResult::success(vec![Content::text(probe().to_string())]),
            "delete" => CallToolResult::success(vec![Content::text(format!(
                "would delete {}",
                args["path"].as_str().unwrap_or_default()
            ))]),
            "slow" => {
                let total = Duration::from_secs_f64(args["seconds"].as_f64().unwrap_or(1.0));
                let progress = args["progress"].as_bool().unwrap_or(false);
                let token = context.meta.get_progress_token();
                let start = tokio::time::Instant::now();
                let mut n = 0.0;
                while start.elapsed() < total {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if progress && let Some(t) = &token {
                        n += 1.0;
                        let _ = context
                            .peer
                            .notify_progress(ProgressNotificationParam::new(t.clone(), n))
                            .await;
                    }
                }
                CallToolResult::success(vec![Content::text("done")])
            }
            "fail" => CallToolResult::error(vec![Content::text("it failed, as asked")]),
            name if name.starts_with("tool_") => {
                CallToolResult::success(vec![Content::text(format!("{name} ran"))])
            }
            other => {
                return Err(ErrorData::invalid_params(format!("no tool {other}"), None));
            }
        };
        Ok(result.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Ok(text) = std::env::var("WARREN_TEST_MCP_EXIT") {
        eprintln!("{text}");
        std::process::exit(3);
    }
    let extra = std::env::var("WARREN_TEST_MCP_TOOLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let service = match (Server { extra })
        .serve((tokio::io::stdin(), tokio::io::stdout()))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren-test-mcp-server: {e}");
            std::process::exit(1);
        }
    };
    let _ = service.waiting().await;
}
