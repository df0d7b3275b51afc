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

const SCOPED: &str = "name: scoped-searcher
description: may read src/ only
provider: openai
model: mock-model
tools: [code_search, finish]
capabilities:
  paths:
    - {glob: \"src/**\", access: read}
";

/// The index is built by the daemon over the whole workspace; a task's `code_search` answers
/// only from files its manifest lets it read and its cell's identity could read on the host.
#[test]
fn code_search_answers_only_from_what_the_task_and_its_cell_may_read() {
    use std::os::unix::fs::PermissionsExt;
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("memory-scope-e2e");
    let state = t.path().join("state");
    let ws = t.path().join("project");
    for (rel, text) in [
        ("src/units.rs", "pub fn tokenizer_units() {}\n"),
        ("src/private.rs", "pub fn tokenizer_private_key() {}\n"),
        ("secrets/key.rs", "pub fn tokenizer_secret_key() {}\n"),
    ] {
        std::fs::create_dir_all(ws.join(rel).parent().unwrap()).unwrap();
        std::fs::write(ws.join(rel), text).unwrap();
    }
    // As root: the project belongs to nobody (so the cell runs as nobody, no idmap) except
    // one root-owned 0600 file the cell cannot read.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        for rel in ["", "src", "secrets", "src/units.rs", "secrets/key.rs"] {
            std::os::unix::fs::chown(ws.join(rel), Some(65534), Some(65534)).unwrap();
        }
        std::fs::set_permissions(
            ws.join("src/private.rs"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    } else {
        warren_testkit::skip("owning a file as another user needs root (the 0600 case)");
    }
    deploy(&state, SCOPED);
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "c1",
            "code_search",
            json!({"query": "tokenizer key", "k": 20}),
        )]),
        _ => reply(vec![("f", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--embedder", "hash"]);
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "scoped-searcher", "goal": "find", "workspace": ws.display().to_string()})),
    );
    assert_eq!(code, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    assert_eq!(
        d.wait_done(id, Duration::from_secs(60))["state"],
        "succeeded"
    );
    let found = mock
        .requests()
        .iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == "c1")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(found.contains("src/units.rs:"), "{found}");
    assert!(
        !found.contains("secrets/"),
        "outside the read grant: {found}"
    );
    if root {
        assert!(
            !found.contains("private"),
            "unreadable by the cell: {found}"
        );
    }
    // The index itself has all of it (people searching it directly see everything).
    let o = warren_at(
        &state,
        &[
            "memory",
            "search",
            "tokenizer secret key",
            "--workspace",
            ws.to_str().unwrap(),
            "--embedder",
            "hash",
            "--json",
        ],
    );
    assert!(stdout(&o).contains("secrets/key.rs"), "{}", stdout(&o));
}
