//! Several nodes, one PostgreSQL store: three real daemons (`--store postgres://…`, their own
//! worker names and state directories, one shared work directory) run tasks in real cells.
//! Two nodes are SIGKILLed while tasks run; the survivor resumes those tasks once the dead nodes'
//! lease expires. At the end no task is lost, none ended other than succeeded, no command ran
//! twice and no model turn was recorded twice (the checks of the single-node kill test).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use warren_store::Store;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, MANIFEST};
use super::resume::{check_task, steps_model};

const NODES: usize = 3;
const TASKS: usize = 9;
const LEASE: &str = "2s";

#[test]
fn three_nodes_share_a_postgres_store_and_resume_a_killed_node_s_tasks() {
    if !require_process_tier() {
        return;
    }
    let Some(url) = warren_testkit::pg::fresh_database("cluster") else {
        return;
    };
    let t = TempDir::new("cluster");
    let work = t.path().join("work");
    let ws = t.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("README"), "a project\n").unwrap();
    let mock = steps_model();
    let work_arg = work.display().to_string();
    let start = |i: usize| {
        let state = t.path().join(format!("node{i}"));
        DaemonProc::start_worker(
            &state,
            &mock,
            &format!("node{i}"),
            // Two slots each: the nine tasks spread over the nodes (one node alone would take
            // eight), so each victim holds running tasks when it is killed.
            &[
                "--work-dir",
                &work_arg,
                "--lease",
                LEASE,
                "--max-running",
                "2",
            ],
            &[("WARREN_STORE", url.as_str())],
        )
    };
    let mut nodes: Vec<Option<DaemonProc>> = (0..NODES).map(|i| Some(start(i))).collect();

    // An agent deployed on one node is known to all.
    let (code, a) =
        node(&nodes, 0).call("POST", "/v1/agents", Some(&json!({"manifest": MANIFEST})));
    assert_eq!(code, 201, "{a}");
    let (_, list) = node(&nodes, 2).call("GET", "/v1/agents", None);
    assert_eq!(list[0]["name"], "coder", "{list}");

    // Tasks submitted round-robin; any node may run any of them.
    let store = warren_store::postgres::PgStore::connect(&url).unwrap();
    let mut ids = Vec::new();
    for k in 0..TASKS {
        let goal = format!("job{k}");
        let (code, task) = node(&nodes, k % NODES).call(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": "coder", "goal": goal, "workspace": ws.display().to_string()})),
        );
        assert_eq!(code, 201, "{task}");
        ids.push((task["id"].as_str().unwrap().to_owned(), goal));
    }

    // Kill node0 and node1 together, once each holds running tasks (right after the
    // submissions, while there is work left: killing one, then waiting for the other to hold
    // a task, raced with the tasks' end on a loaded machine). Time how long until node2 holds
    // each of their tasks.
    let holding = |name: &str| -> Vec<String> {
        ids.iter()
            .filter(|(id, _)| {
                let r = store.get_task(id).unwrap();
                r.lease_owner.as_deref() == Some(name) && !r.state.is_terminal()
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let (a, b) = (holding("node0"), holding("node1"));
        if !a.is_empty() && !b.is_empty() {
            break [a, b].concat();
        }
        assert!(
            Instant::now() < deadline,
            "node0 and node1 never both ran a task: {a:?} {b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for victim in [0usize, 1] {
        nodes[victim].take().unwrap().kill();
    }
    let killed = Instant::now();
    eprintln!("node0 and node1 SIGKILLed holding {held:?}");
    let mut reclaims = Vec::new();
    let mut waiting: HashSet<String> = held.into_iter().collect();
    let deadline = killed + Duration::from_secs(60);
    while !waiting.is_empty() {
        waiting.retain(|id| {
            let r = store.get_task(id).unwrap();
            let moved = r.state.is_terminal() || r.lease_owner.as_deref() == Some("node2");
            if moved {
                reclaims.push(killed.elapsed());
            }
            !moved
        });
        assert!(
            Instant::now() < deadline,
            "tasks of the killed nodes not resumed: {waiting:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The last node finishes everything.
    let last = node(&nodes, 2);
    let deadline = Instant::now() + Duration::from_secs(240);
    for (id, _) in &ids {
        let done = last.wait_done(id, deadline.saturating_duration_since(Instant::now()));
        assert_eq!(
            done["state"],
            "succeeded",
            "task {id}: {done}\n{}",
            last.log.lock().unwrap()
        );
    }
    let (_, all) = last.call("GET", "/v1/tasks?limit=10000", None);
    assert_eq!(
        all.as_array().unwrap().len(),
        TASKS,
        "no task lost or invented"
    );
    let mut resumed = 0;
    let mut ran_on = HashSet::new();
    for (id, goal) in &ids {
        let (_, again) = check_task(&store, &work, id, goal);
        resumed += usize::from(again);
        for e in store.events_since(Some(id), 0, 10_000).unwrap() {
            if let Some(w) = e.payload["worker"].as_str() {
                ran_on.insert(w.to_owned());
            }
        }
    }
    assert!(resumed > 0, "the kills interrupted running tasks");
    assert_eq!(ran_on.len(), NODES, "every node ran tasks: {ran_on:?}");
    let r = store.audit_verify().unwrap();
    assert!(r.problems.is_empty(), "one audit chain: {r:?}");
    // The operator's check of the shared chain, from any machine that reaches the database.
    let o = std::process::Command::new(super::WARREN)
        .args(["audit", "verify", "--json", "--store", &url])
        .env("WARREN_STATE_DIR", t.path().join("operator"))
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", super::stderr(&o)));
    assert!(o.status.success(), "{report}");
    assert_eq!(report["records"], r.records, "{report}");
    let max = reclaims.iter().max().unwrap();
    eprintln!(
        "{TASKS} tasks on {NODES} nodes, 2 nodes killed, {resumed} tasks resumed elsewhere; \
         re-claimed after {:?} (lease {LEASE})",
        reclaims
    );
    // Lease + the recovery pass (every half lease) + a scheduling pass, with room for a busy
    // machine: a lost task would never arrive at all.
    assert!(*max < Duration::from_secs(20), "re-claim took {max:?}");
}

fn node(nodes: &[Option<DaemonProc>], i: usize) -> &DaemonProc {
    nodes[i].as_ref().unwrap()
}

#[test]
fn with_a_work_directory_the_node_s_own_state_directory_stays_out_of_cells() {
    if !require_process_tier() {
        return;
    }
    let Some(url) = warren_testkit::pg::fresh_database("ownstate") else {
        return;
    };
    // The node's state directory (its token, socket, pid) inside the project a task works on,
    // the work directory (layers, task directories) elsewhere.
    let t = TempDir::new("cluster-own");
    let ws = t.path().join("project");
    let state = ws.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("token"), "PLANTED-API-TOKEN\n").unwrap();
    let work = t.path().join("work");
    let look =
        "cat /workspace/state/token 2>&1 || true; echo \"state:[$(ls -A /workspace/state)]\"";
    let mock = warren_testkit::mockllm::MockLlm::start_responder(move |b| {
        if super::daemon::tool_results(b) == 0 {
            super::daemon::reply(vec![("c0", "shell", json!({"command": look}))])
        } else {
            super::daemon::reply(vec![("f", "finish", json!({"summary": "looked"}))])
        }
    })
    .unwrap();
    let work_arg = work.display().to_string();
    let d = DaemonProc::start_worker(
        &state,
        &mock,
        "node0",
        &["--work-dir", &work_arg],
        &[("WARREN_STORE", url.as_str())],
    );
    let (code, a) = d.call("POST", "/v1/agents", Some(&json!({"manifest": MANIFEST})));
    assert_eq!(code, 201, "{a}");
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "coder", "goal": "look", "workspace": ws.display().to_string()})),
    );
    assert_eq!(code, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let store = warren_store::postgres::PgStore::connect(&url).unwrap();
    let seen: Vec<String> = store
        .checkpoints(&id)
        .unwrap()
        .iter()
        .filter(|c| c.payload["step"] == "tool")
        .map(|c| c.payload["content"].to_string())
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].contains("state:[]"), "{seen:?}");
    assert!(!seen[0].contains("PLANTED"), "{seen:?}");
    // The layer went to the work directory, not the state directory.
    assert!(work.join("changes").join(&id).is_dir());
    assert!(!state.join("changes").exists());
}
