//! Plans in a real daemon with real cells: the branches of a plan run at the same time, a
//! dependent starts as soon as its own dependency ends (no batch barrier), and a plan whose
//! daemon is SIGKILLed again and again completes with no step started twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_store::Store;
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, MANIFEST, deploy, goal_of, reply, tool_results, workspace};
use super::resume::Lcg;

const LEAD: &str = "name: lead
description: plans
provider: openai
model: mock-model
tools: [shell, read_file, write_file, finish]
";

/// A plan of six steps: `a`, then two branches (`l1 → l2`, `r1 → r2`), joined by `j`. Each
/// step sleeps `sleep(step)` seconds in its cell, then finishes.
fn mock(sleep: fn(&str) -> f64) -> MockLlm {
    MockLlm::start_responder(move |b| {
        let goal = goal_of(b);
        if goal.starts_with("Plan:") {
            return reply(vec![(
                "p",
                "submit_plan",
                json!({"steps": [
                    {"id": "a", "goal": "sa", "role": "coder"},
                    {"id": "l1", "goal": "sl1", "role": "coder", "depends_on": ["a"]},
                    {"id": "l2", "goal": "sl2", "role": "coder", "depends_on": ["l1"]},
                    {"id": "r1", "goal": "sr1", "role": "coder", "depends_on": ["a"]},
                    {"id": "r2", "goal": "sr2", "role": "coder", "depends_on": ["r1"]},
                    {"id": "j", "goal": "sj", "role": "coder", "depends_on": ["l2", "r2"], "inputs": ["l2", "r2"]}
                ]}),
            )]);
        }
        let step = goal.split_whitespace().next().unwrap_or_default().to_owned();
        if tool_results(b) == 0 {
            reply(vec![(
                "c0",
                "shell",
                json!({"command": format!("echo {step} >> /workspace/ran.txt; sleep {}", sleep(&step))}),
            )])
        } else {
            reply(vec![("fin", "finish", json!({"summary": format!("{step} done")}))])
        }
    })
    .unwrap()
}

/// Each step's task and the times (Unix ms) it started running and succeeded, from the
/// store's events.
fn timeline(state: &std::path::Path, plan: &str) -> HashMap<String, (String, i64, i64)> {
    let store = warren_store::sqlite::SqliteStore::open(&state.join("warren.db")).unwrap();
    let kids = warren_runtime::plan::children(&store, plan).unwrap();
    let events = store.events_since(None, 0, 100_000).unwrap();
    let at = |task: &str, to: &str| {
        events
            .iter()
            .filter(|e| {
                e.task.as_deref() == Some(task) && e.kind == "task.state" && e.payload["to"] == to
            })
            .map(|e| e.at_ms)
            .max()
            .unwrap_or(0)
    };
    kids.iter()
        .filter(|k| k.state == warren_store::TaskState::Succeeded)
        .map(|k| {
            (
                k.lineage.step.clone().unwrap(),
                (k.id.clone(), at(&k.id, "running"), at(&k.id, "succeeded")),
            )
        })
        .collect()
}

#[test]
fn a_plans_branches_overlap_and_a_dependent_starts_when_its_own_dependency_ends() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("plan-graph");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    deploy(&state, LEAD);
    // The right branch is slow: the left one's second step must not wait for it.
    let m = mock(|s| if s == "sr1" { 2.0 } else { 0.3 });
    let d = DaemonProc::start(&state, &m, &[]);
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "lead", "goal": "Plan: build it", "workspace": ws.display().to_string(), "plan": true})),
    );
    assert_eq!(code, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, Duration::from_secs(120));
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}",
        d.log.lock().unwrap()
    );
    let (_, plan) = d.call("GET", &format!("/v1/plans/{id}"), None);
    assert_eq!(plan["steps"].as_array().unwrap().len(), 6, "{plan}");
    let out = super::warren(&state, &["plan", "show", &id]);
    let drawn = super::stdout(&out);
    assert!(drawn.contains("✓ j [coder] succeeded"), "{drawn}");
    drop(d);

    let tl = timeline(&state, &id);
    let (l1, r1, l2, r2) = (&tl["l1"], &tl["r1"], &tl["l2"], &tl["r2"]);
    // The branches ran at the same time.
    assert!(
        l1.1 < r1.2 && r1.1 < l1.2,
        "branches did not overlap: l1 {l1:?} r1 {r1:?}"
    );
    // No barrier: l2 started (after l1) while r1 still ran.
    assert!(
        l2.1 >= l1.2 && l2.1 < r1.2,
        "l2 {l2:?} waited for r1 {r1:?}"
    );
    assert!(tl["j"].1 >= l2.2.max(r2.2));
    let lag = |dep: &(String, i64, i64), step: &(String, i64, i64)| step.1 - dep.2;
    eprintln!(
        "dependency end → dependent start: l1→l2 {} ms, r1→r2 {} ms, join {} ms",
        lag(l1, l2),
        lag(r1, r2),
        tl["j"].1 - l2.2.max(r2.2)
    );
}

#[test]
fn a_plan_whose_daemon_is_killed_ten_times_completes_with_no_step_repeated() {
    if !require_process_tier() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("plan kill seed {seed}");
    let mut rng = Lcg(seed);
    let t = TempDir::new("plan-kill");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    deploy(&state, LEAD);
    let m = mock(|_| 0.4);
    let mut id = None;
    for kill in 0..10 {
        let mut d = DaemonProc::start(&state, &m, &[]);
        if id.is_none() {
            let (code, task) = d.call(
                "POST",
                "/v1/tasks",
                Some(&json!({"agent": "lead", "goal": "Plan: build it", "workspace": ws.display().to_string(), "plan": true})),
            );
            assert_eq!(code, 201, "{task}");
            id = task["id"].as_str().map(str::to_owned);
        }
        std::thread::sleep(Duration::from_millis(150 + rng.below(700)));
        d.kill();
        eprintln!("kill {}: daemon SIGKILLed", kill + 1);
    }
    let id = id.unwrap();
    let d = DaemonProc::start(&state, &m, &[]);
    let deadline = Instant::now() + Duration::from_secs(240);
    let done = d.wait_done(&id, deadline.saturating_duration_since(Instant::now()));
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}",
        d.log.lock().unwrap()
    );
    drop(d);

    let store = warren_store::sqlite::SqliteStore::open(&state.join("warren.db")).unwrap();
    // The plan was made once, and each step's child task was started once.
    let audit: Vec<(String, Value)> = store
        .audit_records(0, Some(&id), 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, serde_json::from_str(&r.data).unwrap()))
        .collect();
    let made = audit.iter().filter(|(k, _)| k == "plan.created").count();
    assert_eq!(made, 1, "planned once");
    let mut started: HashMap<String, usize> = HashMap::new();
    for (_, d) in audit.iter().filter(|(k, _)| k == "plan.step") {
        *started
            .entry(d["step"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(started.len(), 6, "{started:?}");
    assert!(
        started.values().all(|n| *n == 1),
        "a step was started twice: {started:?}"
    );
    let kids = warren_runtime::plan::children(&store, &id).unwrap();
    assert_eq!(kids.len(), 6, "one task per step");
    // No step's command ran twice in its cell (a command a kill interrupted may not have run).
    for k in &kids {
        assert_eq!(k.state, warren_store::TaskState::Succeeded, "{k:?}");
        let ran = std::fs::read_to_string(
            state
                .join("changes")
                .join(&k.id)
                .join("upper")
                .join("ran.txt"),
        )
        .unwrap_or_default();
        assert!(
            ran.lines().count() <= 1,
            "step {:?} ran twice: {ran:?}",
            k.lineage.step
        );
    }
}

#[test]
fn a_plan_that_asks_for_more_than_its_planner_has_never_starts() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("plan-refused");
    let state = t.path().join("state");
    deploy(&state, MANIFEST);
    deploy(
        &state,
        "name: reader\ndescription: reads\nprovider: openai\nmodel: mock-model\ntools: [read_file, finish]\n",
    );
    let m = MockLlm::start_responder(|_| {
        reply(vec![(
            "p",
            "submit_plan",
            json!({"steps": [{"id": "w", "goal": "sw", "role": "coder", "capabilities": {"tools": ["shell"]}}]}),
        )])
    })
    .unwrap();
    let d = DaemonProc::start(&state, &m, &[]);
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "reader", "goal": "Plan: escalate", "plan": true})),
    );
    assert_eq!(code, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    let done = d.wait_done(id, Duration::from_secs(60));
    assert_eq!(done["state"], "failed");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("asks for more than its parent has: the tool \"shell\""),
        "{reason}"
    );
    let (_, plan) = d.call("GET", &format!("/v1/plans/{id}"), None);
    assert_eq!(plan["revision"], Value::Null, "no plan was stored: {plan}");
}
