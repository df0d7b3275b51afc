//! Memory end to end: a real daemon whose agent searches code, stores and queries notes,
//! recalls earlier tasks, and finds the reflection an earlier task left.

use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::mockllm::{MockLlm, Reply, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, deploy, goal_of, reply, tool_results, warren_at};
use super::stdout;

const MANIFEST: &str = "name: rememberer
description: uses memory
provider: openai
model: mock-model
tools: [shell, code_search, memory_store, memory_query, recall, finish]
";

#[test]
fn agents_search_code_remember_recall_and_reflect() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("memory-e2e");
    let state = t.path().join("state");
    let ws = t.path().join("project");
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::write(
        ws.join("src/units.rs"),
        "/// Parse a duration like 10m.\npub fn parse_duration(s: &str) -> Option<u64> {\n    s.parse().ok()\n}\n",
    )
    .unwrap();
    std::fs::write(ws.join("src/net.rs"), "pub fn open_socket() {}\n").unwrap();
    deploy(&state, MANIFEST);
    let mock = MockLlm::start_responder(|b| {
        if b["messages"]
            .to_string()
            .contains("what to remember next time")
        {
            return Turn::Reply(Reply::text(
                "Searching the code first found parse_duration in src/units.rs quickly.",
            ));
        }
        let first = goal_of(b).starts_with("find");
        match (first, tool_results(b)) {
            (true, 0) => reply(vec![(
                "c1",
                "code_search",
                json!({"query": "parse duration"}),
            )]),
            (true, 1) => reply(vec![(
                "m1",
                "memory_store",
                json!({"text": "durations are parsed in src/units.rs"}),
            )]),
            (false, 0) => reply(vec![(
                "q1",
                "memory_query",
                json!({"query": "durations parsed"}),
            )]),
            (false, 1) => reply(vec![("r1", "recall", json!({"query": "duration parser"}))]),
            _ => reply(vec![("f", "finish", json!({"summary": "done"}))]),
        }
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--embedder", "hash"]);
    let submit = |goal: &str| {
        let (code, task) = d.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": "rememberer", "goal": goal, "workspace": ws.display().to_string()})),
        );
        assert_eq!(code, 201, "{task}");
        let id = task["id"].as_str().unwrap().to_owned();
        assert_eq!(
            d.wait_done(&id, Duration::from_secs(60))["state"],
            "succeeded"
        );
        id
    };
    submit("find the duration parser");
    submit("where are durations parsed again?");
    let reqs = mock.requests();
    let result_of = |call: &str| -> String {
        reqs.iter()
            .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == call)
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let found = result_of("c1");
    assert!(
        found.contains("hybrid") && found.contains("src/units.rs:1-"),
        "{found}"
    );
    assert!(
        result_of("q1").contains("durations are parsed in src/units.rs"),
        "{}",
        result_of("q1")
    );
    let recalled = result_of("r1");
    assert!(
        recalled.contains("[episode") && recalled.contains("find the duration parser"),
        "{recalled}"
    );
    assert!(recalled.contains("[reflection"), "{recalled}");
    // The second task was offered the first one's reflection.
    let offered = reqs.iter().any(|r| {
        goal_of(&r.body).contains("Reflections from earlier tasks")
            && goal_of(&r.body).contains("Searching the code first")
    });
    assert!(offered, "reflection offered to the next task");
    // People see the same: history and the index.
    let h: Value =
        serde_json::from_str(&stdout(&warren_at(&state, &["history", "--json"]))).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert!(h.to_string().contains("code_search"), "{h}");
    let o = warren_at(
        &state,
        &[
            "memory",
            "search",
            "parse duration",
            "--workspace",
            ws.to_str().unwrap(),
            "--embedder",
            "hash",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(r["hits"][0]["path"], "src/units.rs");
}
