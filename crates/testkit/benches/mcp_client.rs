//! What Warren adds to an MCP tool call: the same server (testkit's `warren-test-mcp-server`,
//! on rmcp) called through Warren — the task's gate (capability check, audit append), the
//! agent's host-tool path, rmcp over the cell's exec channel into a cell of its own — beside
//! the same server run as a plain child process and called by rmcp directly, in the same run.
//! Also the start of a server: initialize and tools/list, in a cell and directly.
//!
//! `cargo bench -p warren-testkit --bench mcp_client [-- --calls N]` (the process tier must
//! be usable; as root or an ordinary user).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::json;
use warren_agent::tools::HostTools;
use warren_agent::{Gate, ToolCallRecord};
use warren_cell::{Cell, CellSpec, JailProgram, ProcessCell};
use warren_protocol::mount::{Mount, MountKind};
use warren_runtime::capabilities::{Capabilities, Layer};
use warren_runtime::gate::{Auditor, Redactor, TaskGate};
use warren_store::sqlite::SqliteStore;
use warren_store::{NewTask, Store};
use warren_testkit::bench::{arg, pct};

const SERVER: &str = env!("CARGO_BIN_EXE_warren-test-mcp-server");

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = warren_cell::check::detect().process_tier_ready() {
        eprintln!("the process tier cannot run here: {e}");
        return;
    }
    let calls = arg("--calls", 2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("warren-bench-mcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let manifest = warren_config::manifest::parse(
        std::path::Path::new("bench.yaml"),
        "name: bench\ntools: [mcp__t__*, finish]\nmcp_servers:\n  - name: t\n    command: [/opt/mcp/server]\n",
        &["finish"],
    )
    .unwrap();
    let decl = manifest.mcp_servers[0].clone();

    // Through Warren.
    let mut spec = CellSpec::new(&dir);
    spec.extra_mounts.push(Mount {
        target: "/opt/mcp/server".into(),
        kind: MountKind::Bind {
            source: SERVER.into(),
            readonly: true,
        },
    });
    let jail = JailProgram {
        program: env!("CARGO_BIN_EXE_warren-test-jail").into(),
        args: vec![],
        fork_server: false,
    };
    let t0 = Instant::now();
    let cell: Arc<dyn Cell> = Arc::new(ProcessCell::start(&spec, &jail).unwrap());
    let cell_start = t0.elapsed();
    let t0 = Instant::now();
    let session = rt
        .block_on(warren_mcp_client::Session::start_stdio(
            &decl,
            Arc::clone(&cell),
        ))
        .unwrap();
    let warren_init = t0.elapsed();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("w.db")).unwrap());
    store
        .submit(NewTask {
            id: "t1".into(),
            agent: "bench".into(),
            agent_version: 1,
            goal: "g".into(),
            ..NewTask::default()
        })
        .unwrap();
    let caps = Capabilities::new(
        Layer::from_manifest(&manifest),
        Layer::unrestricted("bench"),
    );
    let gate = TaskGate::new(
        "t1",
        caps,
        Auditor::new(store, Arc::new(Redactor::default())),
    );
    let tools = {
        let _e = rt.enter();
        warren_mcp_client::McpTools::new(vec![Arc::new(session)], 128_000)
    };
    let args = json!({"text": "hello"});
    let raw = args.to_string();
    let mut through = Vec::with_capacity(calls);
    // The agent runs host tools on blocking threads: so does this loop.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _e = rt.enter();
            for i in 0..calls + 50 {
                let t = Instant::now();
                let cap = gate.check("mcp__t__echo", &args).unwrap();
                let out = tools.call("mcp__t__echo", &args).unwrap().unwrap();
                gate.tool_call(&ToolCallRecord {
                    turn: 1,
                    call_id: &format!("c{i}"),
                    tool: "mcp__t__echo",
                    arguments: &raw,
                    decision: Ok(&cap),
                    duration: t.elapsed(),
                    is_error: false,
                    bytes: out.len(),
                    cell: "t1",
                });
                assert_eq!(out, "hello");
                if i >= 50 {
                    through.push(t.elapsed());
                }
            }
        });
    });

    // Directly: the same binary as a child process, the same SDK over its pipes.
    let (direct, direct_init) = rt.block_on(async {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(SERVER)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (r, w) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = ().serve((r, w)).await.unwrap();
        client.peer().list_all_tools().await.unwrap();
        let init = t0.elapsed();
        let mut v = Vec::with_capacity(calls);
        for i in 0..calls + 50 {
            let mut p = CallToolRequestParams::new("echo");
            p.arguments = args.as_object().cloned();
            let t = Instant::now();
            client.peer().call_tool(p).await.unwrap();
            if i >= 50 {
                v.push(t.elapsed());
            }
        }
        (v, init)
    });
    let (w50, w99) = pct(through);
    let (d50, d99) = pct(direct);
    println!("## one MCP tool call (echo), n = {calls}");
    println!(
        "through Warren (gate check + audit + cell exec channel): p50 {w50:>8.1} µs  p99 {w99:>8.1} µs"
    );
    println!(
        "direct (rmcp over a child's pipes, no Warren):          p50 {d50:>8.1} µs  p99 {d99:>8.1} µs"
    );
    println!(
        "ratio p50: {:.2}; Warren adds {:.1} µs per call",
        w50 / d50,
        w50 - d50
    );
    println!("\n## starting the server (initialize + tools/list)");
    println!(
        "in a cell of its own: cell {:.1} ms + MCP {:.1} ms; directly: {:.1} ms",
        cell_start.as_secs_f64() * 1e3,
        warren_init.as_secs_f64() * 1e3,
        direct_init.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
