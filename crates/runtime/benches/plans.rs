//! What a plan costs beyond its agents' own work: the scheduling latency from a dependency's
//! end to its dependent's start, and the overhead per step.
//!
//! `cargo bench -p warren-runtime --bench plans [-- --steps N --rounds N]`
//!
//! The engine runs over the fake tier with a scripted model (each step's agent finishes in
//! one turn), so what is measured is Warren's part: the executor noticing the end, deriving
//! and queueing the dependent, the scheduler claiming it, the runner starting it. The peer,
//! in the same run and on the same engine: the same chain of tasks driven by hand — a client
//! that submits each task as soon as it sees the previous one succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warren_llm::Provider;
use warren_protocol::api::{SubmitTask, TaskState};
use warren_runtime::action::{Action, Answer, Caller, Op};
use warren_runtime::engine::{Engine, Options};
use warren_runtime::fake::{FakeCells, ScriptedModel, tool_call};
use warren_store::Store;
use warren_store::sqlite::SqliteStore;
use warren_testkit::bench::arg;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let steps = arg("--steps", 20);
    let rounds = arg("--rounds", 5);
    let dir = std::env::temp_dir().join(format!("warren-bench-plans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let chain: Vec<serde_json::Value> = (0..steps)
        .map(|i| {
            let mut s =
                json!({"id": format!("s{i}"), "goal": format!("step {i}"), "role": "coder"});
            if i > 0 {
                s["depends_on"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let model = ScriptedModel::new(vec![(
        "Plan",
        vec![vec![tool_call(
            "p",
            "submit_plan",
            json!({ "steps": chain }),
        )]],
    )]);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("warren.db")).unwrap());
    let mut opts = Options::for_tests(
        &dir,
        FakeCells::new(),
        Arc::clone(&model) as Arc<dyn Provider>,
    )
    .unwrap();
    opts.worker = "bench".into();
    opts.lease = Duration::from_secs(30);
    opts.plans = warren_runtime::plan::PlanLimits {
        max_steps: steps as u32,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Engine::new(Arc::clone(&store), opts).unwrap();
        tokio::spawn(Arc::clone(&e).run());
        let op = Caller::operator("bench");
        for m in [
            "name: lead\ndescription: plans\ntools: [shell, finish]\n",
            "name: coder\ndescription: codes\ntools: [shell, finish]\n",
        ] {
            e.handle(&op, Op::Act(Action::Deploy { origin: "bench".into(), manifest: m.into() }))
                .await
                .unwrap();
        }
        let submit = |agent: &str, goal: String, plan: bool| {
            let (e, op, agent) = (Arc::clone(&e), op.clone(), agent.to_owned());
            async move {
                match e
                    .handle(&op, Action::Submit(SubmitTask { agent, goal, plan, ..Default::default() }).into())
                    .await
                    .unwrap()
                {
                    Answer::Task(t) => t.id,
                    other => panic!("{other:?}"),
                }
            }
        };
        let wait = |id: String| {
            let e = Arc::clone(&e);
            async move {
                let mut changes = e.changes();
                loop {
                    let s = e.task_state(&id).unwrap();
                    if s.is_terminal() {
                        assert_eq!(s, TaskState::Succeeded, "{id}");
                        return;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
                }
            }
        };
        let mut plan_per_step = Vec::new();
        let mut hand_per_step = Vec::new();
        let mut lags: Vec<i64> = Vec::new();
        for round in 0..rounds {
            // The plan: planned once, then a chain of `steps` child tasks.
            let t = Instant::now();
            let id = submit("lead", format!("Plan round {round}"), true).await;
            wait(id.clone()).await;
            plan_per_step.push(t.elapsed() / steps as u32);
            let kids = warren_runtime::plan::children(&*store, &id).unwrap();
            let events = store.events_since(None, 0, u32::MAX).unwrap();
            let at = |task: &str, to: &str| {
                events
                    .iter()
                    .find(|e| e.task.as_deref() == Some(task) && e.kind == "task.state" && e.payload["to"] == to)
                    .map(|e| e.at_ms)
                    .unwrap()
            };
            for w in kids.windows(2) {
                lags.push(at(&w[1].id, "running") - at(&w[0].id, "succeeded"));
            }
            // The peer: the same chain by hand.
            let t = Instant::now();
            for i in 0..steps {
                let id = submit("coder", format!("step {i} by hand {round}"), false).await;
                wait(id).await;
            }
            hand_per_step.push(t.elapsed() / steps as u32);
        }
        lags.sort_unstable();
        let q = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
        let med = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        let (plan, hand) = (med(plan_per_step), med(hand_per_step));
        println!("plans: {rounds} rounds of a {steps}-step chain (fake tier, scripted model, 2 threads)");
        println!(
            "  dependency end → dependent start: p50 {} ms, p99 {} ms ({} transitions; event clock in ms)",
            q(0.5),
            q(0.99),
            lags.len()
        );
        println!("  plan:    {plan:.2} ms per step (median round; includes the planner call)");
        println!("  by hand: {hand:.2} ms per step (a client submitting each task when the last succeeds)");
        println!("  plan overhead per step: {:.2} ms; ratio plan/by-hand {:.2}", plan - hand, plan / hand);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
