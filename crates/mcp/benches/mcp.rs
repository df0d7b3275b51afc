//! What MCP costs in front of the engine, and how soon an MCP caller hears of its task.
//!
//! `cargo bench -p warren-mcp --bench mcp [-- --calls N --tasks N]`: a real engine (SQLite,
//! scheduler, runner; the fake tier and a scripted model, so the cell and the model cost
//! nothing) and rmcp's own client over an in-memory pipe. Prints, with p50/p99:
//!
//! - `task_status` through MCP (JSON-RPC framing, the tool router, argument parsing, the
//!   structured answer) beside the peer measured in the same run: the same query straight to
//!   `Engine::handle`; and their ratio;
//! - from `submit_task` over MCP to the first progress notification of `wait_task` (the time
//!   an MCP client waits to see its task move).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ClientRequest, ProgressNotificationParam, Request};
use rmcp::service::{NotificationContext, PeerRequestOptions};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use warren_mcp::{EngineBackend, WarrenMcp};
use warren_runtime::action::{Action, Caller, Op, Query};
use warren_runtime::engine::{Engine, Options};
use warren_runtime::fake::{FakeCells, ScriptedModel};
use warren_store::sqlite::SqliteStore;
use warren_testkit::bench::arg;

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// Notes when the first progress notification arrives.
#[derive(Default)]
struct Client {
    first: Mutex<Option<Instant>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        _p: ProgressNotificationParam,
        _c: NotificationContext<RoleClient>,
    ) {
        let mut f = self.first.lock().unwrap();
        if f.is_none() {
            *f = Some(Instant::now());
        }
    }
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn main() {
    let (calls, tasks) = (arg("--calls", 2000), arg("--tasks", 50));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("warren-mcp-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(SqliteStore::open(&dir.join("warren.db")).unwrap());
        let mut opts =
            Options::for_tests(&dir, FakeCells::new(), ScriptedModel::new(vec![]) as _).unwrap();
        opts.worker = "bench".into();
        opts.lease = Duration::from_secs(30);
        let engine = Engine::new(store, opts).unwrap();
        tokio::spawn(Arc::clone(&engine).run());
        let op = Caller::operator("bench");
        engine
            .handle(
                &op,
                Op::Act(Action::Deploy {
                    origin: "bench.yaml".into(),
                    manifest: "name: coder\ndescription: b\ntools: [shell, finish]\n".into(),
                }),
            )
            .await
            .unwrap();
        let (server_end, client_end) = tokio::io::duplex(1 << 20);
        let server = WarrenMcp::new(Arc::new(EngineBackend::new(
            Arc::clone(&engine),
            op.clone(),
        )));
        tokio::spawn(async move {
            if let Ok(s) = server.serve(server_end).await {
                let _ = s.waiting().await;
            }
        });
        let client = Client::default().serve(client_end).await.unwrap();

        // One finished task to ask about.
        let sub = client
            .call_tool(
                CallToolRequestParams::new("submit_task")
                    .with_arguments(args(json!({"agent": "coder", "goal": "x"}))),
            )
            .await
            .unwrap();
        let id = sub.structured_content.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let mut direct = Vec::with_capacity(calls);
        let mut mcp = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            engine
                .handle(&op, Query::Task { id: id.clone() }.into())
                .await
                .unwrap();
            direct.push(t.elapsed());
            let t = Instant::now();
            client
                .call_tool(
                    CallToolRequestParams::new("task_status")
                        .with_arguments(args(json!({"id": id}))),
                )
                .await
                .unwrap();
            mcp.push(t.elapsed());
        }
        let (d50, d99) = pct(direct);
        let (m50, m99) = pct(mcp);
        println!("## a query over MCP (n = {calls}, alternating)");
        println!("peer: Engine::handle(Query::Task):        p50 {d50:8.1} µs  p99 {d99:8.1} µs");
        println!("task_status over MCP (rmcp, in-memory):   p50 {m50:8.1} µs  p99 {m99:8.1} µs");
        println!(
            "MCP's own cost per call: p50 {:.1} µs; ratio {:.2}",
            m50 - d50,
            m50 / d50
        );

        let mut first = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            *client.service().first.lock().unwrap() = None;
            let t = Instant::now();
            let sub = client
                .call_tool(
                    CallToolRequestParams::new("submit_task")
                        .with_arguments(args(json!({"agent": "coder", "goal": "y"}))),
                )
                .await
                .unwrap();
            let id = sub.structured_content.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let h = client
                .send_cancellable_request(
                    ClientRequest::CallToolRequest(Request::new(
                        CallToolRequestParams::new("wait_task")
                            .with_arguments(args(json!({"id": id, "timeout_seconds": 30}))),
                    )),
                    PeerRequestOptions::no_options(),
                )
                .await
                .unwrap();
            h.await_response().await.unwrap();
            let at = client
                .service()
                .first
                .lock()
                .unwrap()
                .expect("a progress notification");
            first.push(at - t);
        }
        let (f50, f99) = pct(first);
        println!();
        println!("## submit_task over MCP -> first progress notification (n = {tasks})");
        println!("p50 {:.2} ms  p99 {:.2} ms", f50 / 1000.0, f99 / 1000.0);
        let _ = client.cancel().await;
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
