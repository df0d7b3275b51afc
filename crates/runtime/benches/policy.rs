//! The price of the choke point: the capability check plus the audit append that every tool
//! call pays, and how fast the audit chain verifies.
//!
//! `cargo bench -p warren-runtime --bench policy [-- --calls N --records N]`
//!
//! The peer, measured in the same run: the store's plain (unchained) event append, the write
//! a tool call paid before the audit log existed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warren_agent::{Gate, ToolCallRecord};
use warren_runtime::capabilities::{Capabilities, Layer, PolicyFile};
use warren_runtime::gate::{Auditor, Redactor, TaskGate};
use warren_store::sqlite::SqliteStore;
use warren_store::{NewTask, Store};
use warren_testkit::bench::{arg, pct};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let calls = arg("--calls", 5000);
    let records = arg("--records", 100_000);
    let dir = std::env::temp_dir().join(format!("warren-bench-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
    let manifest = warren_config::manifest::parse(
        std::path::Path::new("bench.yaml"),
        "name: bench\ntools: [shell, read_file, write_file, finish]\ncapabilities:\n  paths:\n    - {glob: \"src/**\", access: write}\n    - {glob: \"tests/**\", access: write}\n    - {glob: \"**\", access: read}\n  network: [api.github.com]\n",
        &["shell", "read_file", "write_file", "finish"],
    )
    .unwrap();
    let policy = PolicyFile::parse(
        std::path::Path::new("policy.toml"),
        "[capabilities]\ntools = [\"shell\", \"read_file\", \"write_file\", \"finish\"]\npaths = [{ glob = \"**\", access = \"write\" }]\nnetwork = [\"*.github.com\"]\n",
    )
    .unwrap();
    let caps = Capabilities::new(Layer::from_manifest(&manifest), policy.layer());
    let env: std::collections::HashMap<String, String> = [(
        "OPENAI_API_KEY".to_owned(),
        "sk-bench-secret-0123456789".to_owned(),
    )]
    .into();
    let auditor = Auditor::new(Arc::clone(&store), Arc::new(Redactor::from_env(&env)));
    let gate = TaskGate::new("t1", caps, auditor);
    let args = json!({"path": "src/lib.rs", "content": "fn main() {}\n"});
    let raw = args.to_string();

    let (mut check, mut append, mut both, mut peer) = (vec![], vec![], vec![], vec![]);
    for i in 0..calls {
        let t0 = Instant::now();
        let decision = gate.check("write_file", &args);
        let t1 = Instant::now();
        let cap = decision.as_deref().unwrap_or("");
        gate.tool_call(&ToolCallRecord {
            turn: 1,
            call_id: &format!("c{i}"),
            tool: "write_file",
            arguments: &raw,
            decision: Ok(cap),
            duration: Duration::from_micros(800),
            is_error: false,
            bytes: 12,
            cell: "t1",
        });
        let t2 = Instant::now();
        check.push(t1 - t0);
        append.push(t2 - t1);
        both.push(t2 - t0);
        let t3 = Instant::now();
        store
            .append_event(
                Some("t1"),
                "agent.tool_result",
                &json!({"call_id": format!("c{i}"), "arguments": raw}),
            )
            .unwrap();
        peer.push(t3.elapsed());
    }
    let (c50, c99) = pct(check);
    let (a50, a99) = pct(append);
    let (b50, b99) = pct(both);
    let (p50, p99) = pct(peer);
    println!("## per tool call (n = {calls})");
    println!("capability check (3 path globs, 2 layers):   p50 {c50:>7.1} µs  p99 {c99:>7.1} µs");
    println!("audit append (redact + SHA-256 chain + txn): p50 {a50:>7.1} µs  p99 {a99:>7.1} µs");
    println!("check + audit, the whole choke point:        p50 {b50:>7.1} µs  p99 {b99:>7.1} µs");
    println!("peer: plain event append (no chain):         p50 {p50:>7.1} µs  p99 {p99:>7.1} µs");
    println!(
        "ratio choke point / plain append: {:.2}; target <= 100 µs p50: {}",
        b50 / p50,
        if b50 <= 100.0 { "met" } else { "NOT met" }
    );

    // Verify throughput over a long chain.
    let have = store.audit_verify().unwrap().records as usize;
    let t0 = Instant::now();
    for i in have..records {
        store
            .audit_append(
                Some("t1"),
                "tool.call",
                &json!({"i": i, "tool": "shell", "arguments": "make test"}),
            )
            .unwrap();
    }
    let fill = t0.elapsed();
    let t0 = Instant::now();
    let report = store.audit_verify().unwrap();
    let took = t0.elapsed();
    assert!(report.problems.is_empty());
    println!("\n## audit verify");
    println!(
        "{} records appended in {:.1} s ({:.0}/s); verified in {:.2} s: {:.0} records/s ({:.1} MB/s of database file)",
        records - have,
        fill.as_secs_f64(),
        (records - have) as f64 / fill.as_secs_f64(),
        took.as_secs_f64(),
        report.records as f64 / took.as_secs_f64(),
        std::fs::metadata(dir.join("w.db")).map_or(0.0, |m| m.len() as f64)
            / 1e6
            / took.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
