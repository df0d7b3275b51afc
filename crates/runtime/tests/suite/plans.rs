//! Plans, delegation and validators over the fake tier, with a model whose answers the test
//! computes from each request (the planner's plan, each step's behaviour by its goal and
//! attempt).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use warren_llm::{ChatRequest, ChatResponse, Message, Provider, ToolCall};
use warren_protocol::api::{PlanView, SubmitTask, TaskState};
use warren_runtime::action::{Action, Answer, Op, Query};
use warren_runtime::engine::Engine;
use warren_runtime::fake::tool_call as call;

use super::{World, deploy, op, wait_state};

type Answerer = dyn Fn(&ChatRequest, u32) -> (String, Vec<ToolCall>) + Send + Sync;

/// A model whose answer is computed: `f(request, attempt)` where `attempt` counts the
/// conversations with the same first message seen so far (1 for the first).
struct FnModel {
    f: Box<Answerer>,
    seen: Mutex<HashMap<String, u32>>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl FnModel {
    fn new(
        f: impl Fn(&ChatRequest, u32) -> (String, Vec<ToolCall>) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(FnModel {
            f: Box::new(f),
            seen: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
        })
    }
}

fn first_user(r: &ChatRequest) -> String {
    r.messages
        .iter()
        .find_map(|m| match m {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn turn(r: &ChatRequest) -> usize {
    r.messages
        .iter()
        .filter(|m| matches!(m, Message::Assistant { .. }))
        .count()
}

#[async_trait::async_trait]
impl Provider for FnModel {
    fn name(&self) -> &str {
        "fn"
    }

    async fn chat(
        &self,
        r: &ChatRequest,
        _events: warren_llm::EventSink<'_>,
    ) -> Result<ChatResponse, warren_llm::LlmError> {
        self.requests.lock().unwrap().push(r.clone());
        let key = first_user(r);
        let attempt = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(key).or_insert(0);
            if turn(r) == 0 {
                *n += 1;
            }
            *n
        };
        let (text, tool_calls) = (self.f)(r, attempt);
        Ok(ChatResponse {
            text,
            tool_calls,
            usage: warren_llm::Usage {
                input_tokens: 100,
                output_tokens: 10,
                cached_input_tokens: 0,
            },
            stop_reason: warren_llm::StopReason::ToolUse,
        })
    }
}

fn engine(w: &World, model: &Arc<FnModel>) -> Arc<Engine> {
    let mut o = w.opts();
    o.provider = Some((Arc::clone(model) as Arc<dyn Provider>, "m".into()));
    let e = Engine::new(Arc::clone(&w.store), o).unwrap();
    tokio::spawn(Arc::clone(&e).run());
    e
}

async fn submit_as(e: &Arc<Engine>, agent: &str, goal: &str, plan: bool) -> String {
    match e
        .handle(
            &op(),
            Action::Submit(SubmitTask {
                agent: agent.into(),
                goal: goal.into(),
                plan,
                ..SubmitTask::default()
            })
            .into(),
        )
        .await
        .unwrap()
    {
        Answer::Task(t) => t.id,
        other => panic!("{other:?}"),
    }
}

async fn plan_of(e: &Arc<Engine>, id: &str) -> PlanView {
    match e
        .handle(&op(), Op::Ask(Query::Plan { id: id.into() }))
        .await
        .unwrap()
    {
        Answer::Plan(p) => p,
        other => panic!("{other:?}"),
    }
}

fn finish(summary: &str, ok: bool) -> Vec<ToolCall> {
    vec![call(
        "f",
        "finish",
        json!({"summary": summary, "success": ok}),
    )]
}

fn plan_call(steps: Value) -> Vec<ToolCall> {
    vec![call("p", "submit_plan", json!({ "steps": steps }))]
}

const LEAD: &str = "name: lead\ndescription: plans\ntools: [shell, read_file, finish]\n";
const CODER: &str =
    "name: coder\ndescription: writes code\ntools: [shell, read_file, write_file, finish]\n";

fn audit(w: &World, task: &str) -> Vec<(String, Value)> {
    w.store
        .audit_records(0, Some(task), 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, serde_json::from_str(&r.data).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_step_plan_runs_as_a_graph_retries_a_step_and_passes_outputs_on() {
    let w = World::new("rt-plan6");
    let flaky = Arc::new(AtomicU32::new(0));
    let f2 = Arc::clone(&flaky);
    let model = FnModel::new(move |r, attempt| {
        let goal = first_user(r);
        if goal.starts_with("Build it") {
            return (
                String::new(),
                plan_call(json!([
                    {"id": "a", "goal": "step a: lay out", "role": "coder"},
                    {"id": "b1", "goal": "step b1: left", "role": "coder", "depends_on": ["a"]},
                    {"id": "b2", "goal": "step b2: right (flaky)", "role": "coder", "depends_on": ["a"], "retries": 1},
                    {"id": "c1", "goal": "step c1: left more", "role": "coder", "depends_on": ["b1"]},
                    {"id": "c2", "goal": "step c2: right more", "role": "coder", "depends_on": ["b2"]},
                    {"id": "d", "goal": "step d: join", "role": "coder", "depends_on": ["c1", "c2"], "inputs": ["c1", "c2", "a"]}
                ])),
            );
        }
        if goal.starts_with("step b2") && attempt == 1 {
            f2.fetch_add(1, Ordering::SeqCst);
            return (String::new(), finish("flaked", false));
        }
        let id = goal.split(':').next().unwrap_or_default().to_owned();
        (String::new(), finish(&format!("did {id}"), true))
    });
    let e = engine(&w, &model);
    deploy(&e, LEAD).await;
    deploy(&e, CODER).await;
    let id = submit_as(&e, "lead", "Build it in six steps", true).await;
    let t = wait_state(&e, &id, TaskState::Succeeded).await;
    assert_eq!(t.kind, "plan");
    let p = plan_of(&e, &id).await;
    assert_eq!(p.revision, Some(0));
    assert_eq!(p.steps.len(), 6);
    assert!(p.steps.iter().all(|s| s.state == "succeeded"), "{p:?}");
    let b2 = p.steps.iter().find(|s| s.id == "b2").unwrap();
    assert_eq!(b2.attempts, 2, "b2 failed once and passed on retry");
    assert_eq!(flaky.load(Ordering::SeqCst), 1);

    // Each step started once (twice for b2), after its dependencies ended: the plan's audit
    // names every submission; a child's first record comes after its dependencies' ends.
    let records = w.store.audit_records(0, None, 100_000).unwrap();
    let submitted: Vec<(String, String, u64)> = records
        .iter()
        .filter(|r| r.task.as_deref() == Some(id.as_str()) && r.kind == "plan.step")
        .map(|r| {
            let d: Value = serde_json::from_str(&r.data).unwrap();
            (
                d["step"].as_str().unwrap().to_owned(),
                d["task"].as_str().unwrap().to_owned(),
                r.seq,
            )
        })
        .collect();
    let mut per_step: HashMap<&str, usize> = HashMap::new();
    for (s, _, _) in &submitted {
        *per_step.entry(s.as_str()).or_default() += 1;
    }
    assert_eq!(per_step["b2"], 2);
    assert!(
        per_step
            .iter()
            .filter(|(k, _)| **k != "b2")
            .all(|(_, n)| *n == 1),
        "{per_step:?}"
    );
    // Ordering from the store's events (global ids, each written with its state change): a
    // dependent's task was created after each dependency's task reached `succeeded`.
    let events = w.store.events_since(None, 0, 100_000).unwrap();
    let ev = |task: &str, to: &str| {
        events
            .iter()
            .filter(|e| {
                e.task.as_deref() == Some(task) && e.kind == "task.state" && e.payload["to"] == to
            })
            .map(|e| e.id)
            .min()
            .unwrap()
    };
    let task_of = |step: &str| {
        p.steps
            .iter()
            .find(|s| s.id == step)
            .unwrap()
            .task
            .clone()
            .unwrap()
    };
    for s in &p.steps {
        let first = submitted
            .iter()
            .filter(|(st, _, _)| st == &s.id)
            .map(|x| x.1.clone())
            .next()
            .unwrap();
        for d in &s.depends_on {
            assert!(
                ev(&task_of(d), "succeeded") < ev(&first, "queued"),
                "{} started before {d} ended",
                s.id
            );
        }
    }
    // The join read its inputs as files: each producer's result.
    let d_task = task_of("d");
    let inputs = w
        .state
        .join("tasks")
        .join(&d_task)
        .join("task")
        .join("inputs");
    for (step, summary) in [
        ("c1", "did step c1"),
        ("c2", "did step c2"),
        ("a", "did step a"),
    ] {
        let r: Value =
            serde_json::from_slice(&std::fs::read(inputs.join(step).join("result.json")).unwrap())
                .unwrap();
        assert_eq!(r["summary"], summary);
        assert!(inputs.join(step).join("diff.patch").is_file());
    }
    let d = w.store.get_task(&d_task).unwrap();
    assert_eq!(d.lineage.parent.as_deref(), Some(id.as_str()));
    assert_eq!(d.lineage.step.as_deref(), Some("d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_keeps_the_steps_that_succeeded() {
    let w = World::new("rt-replan");
    let model = FnModel::new(move |r, _| {
        let goal = first_user(r);
        if goal.starts_with("Ship it") {
            return if goal.contains("The plan so far") {
                (
                    String::new(),
                    plan_call(json!([
                        {"id": "a", "goal": "step a: prepare", "role": "coder"},
                        {"id": "b2", "goal": "step b2: the other way", "role": "coder", "depends_on": ["a"], "inputs": ["a"]}
                    ])),
                )
            } else {
                (
                    String::new(),
                    plan_call(json!([
                        {"id": "a", "goal": "step a: prepare", "role": "coder"},
                        {"id": "b", "goal": "step b: doomed", "role": "coder", "depends_on": ["a"], "retries": 0}
                    ])),
                )
            };
        }
        if goal.starts_with("step b:") {
            return (String::new(), finish("cannot", false));
        }
        (String::new(), finish("ok", true))
    });
    let e = engine(&w, &model);
    deploy(&e, LEAD).await;
    deploy(&e, CODER).await;
    let id = submit_as(&e, "lead", "Ship it", true).await;
    wait_state(&e, &id, TaskState::Succeeded).await;
    let p = plan_of(&e, &id).await;
    assert_eq!(p.revision, Some(1));
    let steps: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(steps, ["a", "b2"]);
    let a = audit(&w, &id);
    let started_a = a
        .iter()
        .filter(|(k, d)| k == "plan.step" && d["step"] == "a")
        .count();
    assert_eq!(started_a, 1, "a was kept, not re-run");
    let replanned: Vec<&Value> = a
        .iter()
        .filter(|(k, _)| k == "plan.replanned")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(replanned.len(), 1);
    assert_eq!(replanned[0]["kept"], json!(["a"]));
    // The planner saw the failure.
    let asked = model
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| first_user(r).contains("step b failed"));
    assert!(asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_asking_more_than_its_plan_is_refused_and_the_gate_refuses_it_too() {
    let w = World::new("rt-plan-caps");
    let model = FnModel::new(move |r, _| {
        let goal = first_user(r);
        if goal.starts_with("Edit it") {
            // First try: a step asking for write_file, which the planner (lead) lacks.
            let errors = r.messages.iter().any(|m| matches!(m, Message::Tool { content, .. } if content.contains("asks for more than its parent has")));
            return if errors {
                (
                    String::new(),
                    plan_call(json!([{"id": "w", "goal": "step w: write", "role": "coder"}])),
                )
            } else {
                (
                    String::new(),
                    plan_call(json!([{"id": "w", "goal": "step w: write", "role": "coder",
                    "capabilities": {"tools": ["write_file", "finish"]}}])),
                )
            };
        }
        // The step's model tries write_file anyway: coder has it, the plan does not.
        if turn(r) == 0 {
            return (
                String::new(),
                vec![call(
                    "w",
                    "write_file",
                    json!({"path": "x", "content": "y"}),
                )],
            );
        }
        (String::new(), finish("tried", true))
    });
    let e = engine(&w, &model);
    deploy(&e, LEAD).await;
    deploy(&e, CODER).await;
    let id = submit_as(&e, "lead", "Edit it", true).await;
    wait_state(&e, &id, TaskState::Succeeded).await;
    let reqs = model.requests.lock().unwrap().clone();
    let planner: Vec<&ChatRequest> = reqs
        .iter()
        .filter(|r| first_user(r).starts_with("Edit it"))
        .collect();
    assert_eq!(planner.len(), 2, "the first plan went back with its error");
    let p = plan_of(&e, &id).await;
    let child = p.steps[0].task.clone().unwrap();
    let refused = audit(&w, &child)
        .into_iter()
        .find(|(k, d)| k == "tool.call" && d["tool"] == "write_file")
        .expect("the call was audited");
    assert_eq!(refused.1["decision"], "refused");
    assert!(
        refused.1["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not grant the tool"),
        "{:?}",
        refused.1
    );
    assert!(
        w.cells
            .started()
            .iter()
            .all(|c| c.file("/workspace/x").is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_starts_a_narrower_child_and_charges_its_spend() {
    let w = World::new("rt-delegate");
    let model = FnModel::new(move |r, _| {
        let goal = first_user(r);
        if goal.starts_with("Boss") {
            return match turn(r) {
                0 => (
                    String::new(),
                    vec![call(
                        "d1",
                        "delegate",
                        json!({"goal": "child: widen", "tools": ["write_file"]}),
                    )],
                ),
                1 => (
                    String::new(),
                    vec![call(
                        "d2",
                        "delegate",
                        json!({"goal": "child: look", "tools": ["shell", "finish"]}),
                    )],
                ),
                _ => (String::new(), finish("boss done", true)),
            };
        }
        match turn(r) {
            0 => (
                String::new(),
                vec![call("s", "shell", json!({"command": "echo hi"}))],
            ),
            _ => (String::new(), finish("child done", true)),
        }
    });
    let e = engine(&w, &model);
    deploy(
        &e,
        "name: boss\ndescription: b\ntools: [delegate, shell, finish]\nbudget:\n  tokens: 100000\n",
    )
    .await;
    let id = submit_as(&e, "boss", "Boss: get it done", false).await;
    wait_state(&e, &id, TaskState::Succeeded).await;
    let a = audit(&w, &id);
    let started: Vec<&Value> = a
        .iter()
        .filter(|(k, _)| k == "delegate.started")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(started.len(), 2);
    assert!(
        started[0]["refused"]
            .as_str()
            .unwrap()
            .contains("write_file"),
        "{:?}",
        started[0]
    );
    let child = started[1]["child"].as_str().unwrap();
    let c = w.store.get_task(child).unwrap();
    assert_eq!(c.state, TaskState::Succeeded);
    assert_eq!(c.lineage.parent.as_deref(), Some(id.as_str()));
    // The child's tool calls were checked against the parent's layers too.
    let tools: Vec<String> = audit(&w, child)
        .into_iter()
        .filter(|(k, _)| k == "tool.call")
        .map(|(_, d)| d["tool"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tools, ["shell", "finish"]);
    // Its spend is the parent's: 2 child turns + 3 own turns, 110 tokens each.
    let result: Value =
        serde_json::from_slice(&w.store.get_artifact(&id, "result").unwrap()).unwrap();
    let used = result["usage"]["input_tokens"].as_u64().unwrap()
        + result["usage"]["output_tokens"].as_u64().unwrap();
    assert_eq!(used, 5 * 110, "{result}");
    // The parent saw the child's progress.
    let events = w.store.events_since(Some(&id), 0, 10_000).unwrap();
    assert!(events.iter().any(|e| e.kind == "delegate.progress"));
    assert!(events.iter().any(|e| e.kind == "delegate.ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_send_the_agent_back_until_its_result_passes() {
    let w = World::new("rt-validate");
    let model = FnModel::new(move |r, _| match turn(r) {
        0 | 1 => (String::new(), finish("done, trust me", true)),
        2 => (
            String::new(),
            vec![call(
                "w",
                "write_file",
                json!({"path": "/task/result.json", "content": "{\"tests_passed\": true}"}),
            )],
        ),
        _ => (String::new(), finish("tests pass", true)),
    });
    let e = engine(&w, &model);
    deploy(&e, "name: careful\ndescription: c\ntools: [write_file, finish]\nvalidate:\n  - regex: '\"summary\"'\n  - schema: {type: object, required: [tests_passed], properties: {tests_passed: {const: true}}}\nlimits:\n  validations: 3\n").await;
    let id = submit_as(&e, "careful", "make the tests pass", false).await;
    wait_state(&e, &id, TaskState::Succeeded).await;
    let v: Vec<Value> = audit(&w, &id)
        .into_iter()
        .filter(|(k, _)| k == "validation")
        .map(|(_, d)| d)
        .collect();
    let passed: Vec<bool> = v.iter().map(|d| d["passed"].as_bool().unwrap()).collect();
    assert_eq!(passed, [false, false, true]);
    assert_eq!(v[2]["iteration"], 3);
    let result: Value =
        serde_json::from_slice(&w.store.get_artifact(&id, "result").unwrap()).unwrap();
    assert_eq!(result["result"]["tests_passed"], true);
    // Every judgment is a checkpointed result of its finish call.
    let failed = w
        .store
        .checkpoints(&id)
        .unwrap()
        .iter()
        .filter(|c| {
            c.payload["content"]
                .as_str()
                .is_some_and(|t| t.starts_with("validation failed"))
        })
        .count();
    assert_eq!(failed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_that_never_passes_ends_the_task_as_failed() {
    let w = World::new("rt-validate-fail");
    let model = FnModel::new(move |_, _| (String::new(), finish("done", true)));
    let e = engine(&w, &model);
    deploy(&e, "name: strict\ndescription: s\ntools: [finish]\nvalidate:\n  - command: exit 3\nlimits:\n  validations: 2\n").await;
    let id = submit_as(&e, "strict", "do it", false).await;
    let t = wait_state(&e, &id, TaskState::Failed).await;
    assert!(t.reason.unwrap().contains("validation failed 2 times"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_below_its_minimum_score_sends_the_agent_back() {
    let w = World::new("rt-judge");
    let judged = Arc::new(AtomicU32::new(0));
    let j2 = Arc::clone(&judged);
    let model = FnModel::new(move |r, _| {
        if first_user(r).starts_with("Judge this result") {
            // The first result is judged weak, the second good.
            let n = j2.fetch_add(1, Ordering::SeqCst);
            let score = if n == 0 { 0.3 } else { 0.9 };
            return (
                format!("{{\"score\": {score}, \"reason\": \"judged {n}\"}}"),
                Vec::new(),
            );
        }
        (
            String::new(),
            finish(if turn(r) == 0 { "meh" } else { "thorough" }, true),
        )
    });
    let e = engine(&w, &model);
    deploy(&e, "name: judged\ndescription: j\ntools: [finish]\nvalidate:\n  - judge: {rubric: 'explains every change', min_score: 0.7}\n").await;
    let id = submit_as(&e, "judged", "explain the change", false).await;
    wait_state(&e, &id, TaskState::Succeeded).await;
    assert_eq!(judged.load(Ordering::SeqCst), 2);
    let v: Vec<Value> = audit(&w, &id)
        .into_iter()
        .filter(|(k, _)| k == "validation")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(v.len(), 2);
    assert!(
        v[0]["checks"][0]["note"]
            .as_str()
            .unwrap()
            .contains("below 0.7"),
        "{:?}",
        v[0]
    );
    assert_eq!(v[1]["passed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_plan_cancels_its_running_steps() {
    let w = World::new("rt-plan-cancel");
    let model = FnModel::new(move |r, _| {
        if first_user(r).starts_with("Long") {
            return (
                String::new(),
                plan_call(json!([{"id": "s", "goal": "step s: wait", "role": "coder"}])),
            );
        }
        (
            String::new(),
            vec![call("z", "shell", json!({"command": "sleep 100"}))],
        )
    });
    let e = engine(&w, &model);
    deploy(&e, LEAD).await;
    deploy(&e, CODER).await;
    let id = submit_as(&e, "lead", "Long plan", true).await;
    let child = loop {
        let p = plan_of(&e, &id).await;
        if let Some(t) = p.steps.first().and_then(|s| s.task.clone())
            && w.store.get_task(&t).unwrap().state == TaskState::Running
        {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    e.handle(
        &op(),
        Action::Cancel {
            id: id.clone(),
            reason: Some("enough".into()),
        }
        .into(),
    )
    .await
    .unwrap();
    wait_state(&e, &id, TaskState::Cancelled).await;
    let c = wait_state(&e, &child, TaskState::Cancelled).await;
    assert!(c.reason.unwrap().contains("was cancelled"));
}
