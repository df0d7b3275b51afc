//! The engine's logic in-process, without root: scheduling, cancel, timeout, approval, resume,
//! authorization and the action handler, over the recording fake tier
//! ([`warren_runtime::fake::FakeCells`]) and a scripted model. The kernel's side is tested
//! by the root end-to-end suites (crates/cli/tests, crates/testkit/tests).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_cell::Cell;
use warren_llm::{Provider, ToolCall};
use warren_protocol::api::{ErrorCode, SubmitTask, TaskState};
use warren_runtime::action::{Action, Answer, Caller, Local, Op, Query};
use warren_runtime::engine::{Engine, Options};
use warren_runtime::fake::{FakeCells, ScriptedModel, tool_call as call};
use warren_store::Store;
use warren_store::sqlite::SqliteStore;
use warren_testkit::TempDir;

fn finish() -> Vec<ToolCall> {
    vec![call("f", "finish", json!({"summary": "done"}))]
}

/// The model's scripts: the goal picks one (by prefix), the number of earlier turns its turn.
fn scripts() -> Vec<(&'static str, Vec<Vec<ToolCall>>)> {
    let mut s = Vec::new();
    s.push((
        "write",
        vec![
            vec![call(
                "w",
                "write_file",
                json!({"path": "a.txt", "content": "hi\n"}),
            )],
            finish(),
        ],
    ));
    s.push((
        "hang",
        vec![vec![call("s", "shell", json!({"command": "sleep 1000"}))]],
    ));
    s.push((
        "ask",
        vec![
            vec![call("s", "shell", json!({"command": "echo approved"}))],
            finish(),
        ],
    ));
    s
}

#[path = "suite/plans.rs"]
mod plans;
#[path = "suite/wasi.rs"]
mod wasi;

const MANIFEST: &str =
    "name: coder\ndescription: t\ntools: [shell, read_file, write_file, finish]\n";

struct World {
    _t: TempDir,
    state: std::path::PathBuf,
    store: Arc<dyn Store>,
    cells: Arc<FakeCells>,
    model: Arc<ScriptedModel>,
}

impl World {
    fn new(name: &str) -> World {
        let t = TempDir::new(name);
        let state = t.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&state.join("warren.db")).unwrap());
        World {
            _t: t,
            state,
            store,
            cells: FakeCells::new(),
            model: ScriptedModel::new(scripts()),
        }
    }

    fn opts(&self) -> Options {
        Options::for_tests(
            &self.state,
            Arc::clone(&self.cells) as _,
            Arc::clone(&self.model) as Arc<dyn Provider>,
        )
        .unwrap()
    }

    fn engine(&self) -> Arc<Engine> {
        let e = Engine::new(Arc::clone(&self.store), self.opts()).unwrap();
        tokio::spawn(Arc::clone(&e).run());
        e
    }

    fn audit_kinds(&self, task: &str) -> Vec<String> {
        self.store
            .audit_records(0, Some(task), 10_000)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }
}

fn op() -> Caller {
    Caller::operator("test")
}

async fn deploy(e: &Arc<Engine>, manifest: &str) {
    let a = e
        .handle(
            &op(),
            Op::Act(Action::Deploy {
                origin: "test.yaml".into(),
                manifest: manifest.into(),
            }),
        )
        .await
        .unwrap();
    assert!(matches!(a, Answer::Agent(_)));
}

async fn submit(e: &Arc<Engine>, goal: &str, ws: Option<&Path>) -> String {
    let a = e
        .handle(
            &op(),
            Action::Submit(SubmitTask {
                agent: "coder".into(),
                goal: goal.into(),
                priority: 0,
                workspace: ws.map(|w| w.display().to_string()),
                plan: false,
            })
            .into(),
        )
        .await
        .unwrap();
    match a {
        Answer::Task(t) => t.id,
        other => panic!("{other:?}"),
    }
}

async fn wait_state(e: &Arc<Engine>, id: &str, want: TaskState) -> warren_protocol::api::TaskView {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = match e
            .handle(&op(), Query::Task { id: id.into() }.into())
            .await
            .unwrap()
        {
            Answer::Task(t) => t,
            other => panic!("{other:?}"),
        };
        if t.state == want {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} is {:?} ({:?}), not {want:?}",
            t.state,
            t.reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_in_a_fake_cell_and_leaves_its_records() {
    let w = World::new("rt-run");
    let e = w.engine();
    deploy(&e, MANIFEST).await;
    let id = submit(&e, "write a file", None).await;
    let t = wait_state(&e, &id, TaskState::Succeeded).await;
    assert_eq!(t.attempts, 1);
    let cells = w.cells.started();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].spec().id.as_deref(), Some(id.as_str()));
    assert_eq!(cells[0].file("a.txt").as_deref(), Some(&b"hi\n"[..]));
    let audit = w.audit_kinds(&id);
    assert_eq!(
        audit,
        [
            "task.submitted",
            "task.started",
            "model.call",
            "tool.call",
            "model.call",
            "tool.call",
            "task.state"
        ]
    );
    let events = match e
        .handle(
            &op(),
            Query::Events {
                id: id.clone(),
                after: 0,
            }
            .into(),
        )
        .await
        .unwrap()
    {
        Answer::Events(v) => v,
        other => panic!("{other:?}"),
    };
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"task.state"));
    assert!(kinds.contains(&"agent.tool_call") && kinds.contains(&"agent.finished"));
    match e
        .handle(&op(), Query::Result { id: id.clone() }.into())
        .await
        .unwrap()
    {
        Answer::Result(r) => assert_eq!(r["summary"], "done"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_terminates_the_command_in_flight_and_is_recorded() {
    let w = World::new("rt-cancel");
    let e = w.engine();
    deploy(&e, MANIFEST).await;
    let id = submit(&e, "hang", None).await;
    wait_state(&e, &id, TaskState::Running).await;
    // Wait for the command to be in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.cells.started().first().is_none_or(|c| c.running() == 0) {
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = e
        .handle(
            &op(),
            Action::Cancel {
                id: id.clone(),
                reason: Some("enough".into()),
            }
            .into(),
        )
        .await
        .unwrap();
    match a {
        Answer::Task(t) => assert_eq!(t.state, TaskState::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(w.cells.started()[0].terminated());
    assert!(w.audit_kinds(&id).contains(&"task.cancelled".to_owned()));
    // Cancelling again conflicts.
    let again = e
        .handle(&op(), Action::Cancel { id, reason: None }.into())
        .await
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_timeout_fails_the_task_and_stops_its_cell() {
    let w = World::new("rt-timeout");
    let e = w.engine();
    deploy(&e, &format!("{MANIFEST}limits: {{timeout: 1s}}\n")).await;
    let id = submit(&e, "hang", None).await;
    let t = wait_state(&e, &id, TaskState::Failed).await;
    assert!(t.reason.unwrap_or_default().contains("timed out"));
    assert!(w.cells.started()[0].terminated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_needing_approval_waits_and_runs_once_approved() {
    let w = World::new("rt-approve");
    let e = w.engine();
    deploy(&e, &format!("{MANIFEST}approval_required: [shell]\n")).await;
    let id = submit(&e, "ask", None).await;
    wait_state(&e, &id, TaskState::AwaitingApproval).await;
    let pending = match e
        .handle(&op(), Query::Approval { id: id.clone() }.into())
        .await
        .unwrap()
    {
        Answer::Approval(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(pending.tool, "shell");
    assert_eq!(pending.argument, "echo approved");
    // Nothing ran before the decision.
    assert!(w.cells.started()[0].ran().is_empty());
    // A viewer may look but not decide.
    let refused = e
        .handle(
            &Caller::viewer("watcher"),
            Action::Decide {
                id: id.clone(),
                approve: true,
                remember: false,
                reason: None,
            }
            .into(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unauthorized);
    e.handle(
        &op(),
        Action::Decide {
            id: id.clone(),
            approve: true,
            remember: false,
            reason: None,
        }
        .into(),
    )
    .await
    .unwrap();
    wait_state(&e, &id, TaskState::Succeeded).await;
    let shells: Vec<_> = w.cells.started()[0]
        .ran()
        .into_iter()
        .filter(|argv| argv.join(" ").contains("echo approved"))
        .collect();
    assert_eq!(shells.len(), 1);
    let audit = w.audit_kinds(&id);
    assert!(
        audit.contains(&"approval.requested".to_owned()),
        "{audit:?}"
    );
    assert!(audit.contains(&"approval.decided".to_owned()), "{audit:?}");
}

#[test]
fn a_killed_engine_s_task_resumes_without_repeating_a_step() {
    let w = World::new("rt-resume");
    // The first engine runs "resume" up to its hanging command, then dies with its runtime.
    let mut scripts = scripts();
    scripts.push((
        "resume",
        vec![
            vec![call(
                "w",
                "write_file",
                json!({"path": "a.txt", "content": "1\n"}),
            )],
            vec![call("s", "shell", json!({"command": "sleep 1000"}))],
            finish(),
        ],
    ));
    let model = ScriptedModel::new(scripts);
    let world = World { model, ..w };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let e = world.engine();
        deploy(&e, MANIFEST).await;
        let id = submit(&e, "resume", None).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while world
            .cells
            .started()
            .first()
            .is_none_or(|c| c.running() == 0)
        {
            assert!(Instant::now() < deadline, "the command never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        id
    });
    // "Crash": the engine's tasks are dropped mid-command, then the cell goes away.
    rt.shutdown_background();
    world.cells.started()[0].terminate();
    let calls_before = world.model.requests();
    assert_eq!(calls_before, 2);

    // A new engine with the same worker name requeues and resumes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let e = world.engine();
        let t = wait_state(&e, &id, TaskState::Succeeded).await;
        assert_eq!(t.attempts, 2);
    });
    let cells = world.cells.started();
    assert_eq!(cells.len(), 2, "one cell per attempt");
    // The write was not repeated; the command of unknown effect was not rerun either (the
    // model was told), and the recorded turns were not asked again.
    assert!(
        cells[1]
            .ran()
            .iter()
            .all(|argv| argv.last().map(String::as_str) != Some("a.txt"))
    );
    assert!(
        cells[1]
            .ran()
            .iter()
            .all(|argv| !argv.join(" ").contains("sleep"))
    );
    assert_eq!(world.model.requests(), calls_before + 1);
    let events: Vec<String> = world
        .store
        .events_since(Some(&id), 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(events.contains(&"task.resumed".to_owned()), "{events:?}");
}

#[test]
fn local_actions_are_audited_like_the_daemon_s_and_refuse_task_actions() {
    let w = World::new("rt-local");
    let local = Local::open(&w.state).unwrap();
    let a = local
        .handle(
            &Caller::operator("cli"),
            Op::Act(Action::Deploy {
                origin: "coder.yaml".into(),
                manifest: MANIFEST.into(),
            }),
        )
        .unwrap();
    match a {
        Answer::Agent(a) => assert_eq!((a.name.as_str(), a.version), ("coder", 1)),
        other => panic!("{other:?}"),
    }
    let bad = local
        .handle(
            &Caller::operator("cli"),
            Op::Act(Action::Deploy {
                origin: "bad.yaml".into(),
                manifest: "name: coder\ntools: [teleport]\n".into(),
            }),
        )
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::InvalidRequest);
    assert!(bad.message.contains("bad.yaml:2"), "{}", bad.message);
    let audit = w.store.audit_records(0, None, 100).unwrap();
    let deployed = audit.iter().find(|r| r.kind == "agent.deployed").unwrap();
    let data: Value = serde_json::from_str(&deployed.data).unwrap();
    assert_eq!(data["by"], "cli");
    let refused = local
        .handle(
            &Caller::operator("cli"),
            Action::Retry {
                id: "t000000000000".into(),
                fresh: false,
            }
            .into(),
        )
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable);
    // Removing an agent and deploying again continues its versions.
    local
        .handle(
            &Caller::operator("cli"),
            Action::RemoveAgent {
                name: "coder".into(),
            }
            .into(),
        )
        .unwrap();
    assert!(
        w.store
            .audit_records(0, None, 100)
            .unwrap()
            .iter()
            .any(|r| r.kind == "agent.removed")
    );
}
