//! Durable execution of the agent loop: a task resumed from its journal repeats nothing.
//!
//! The cell is a recording fake (the OS seam), the model a scripted in-process provider that
//! can "crash" at a chosen call, and the journal the real SQLite store's checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use warren_agent::{Agent, AgentConfig, Journal, Outcome, Step, Unrestricted};
use warren_cell::{Cell, CellError, ExecOutcome, ExecSpec, OutputSink, Tier};
use warren_llm::{
    ChatRequest, ChatResponse, EventSink, LlmError, Provider, StopReason, ToolCall, Usage,
};
use warren_runtime::journal::StoreJournal;
use warren_store::sqlite::SqliteStore;
use warren_store::{NewTask, Store};

/// Records every command; emulates `sh -c`, `cat` and the write helper over an in-memory map.
#[derive(Default)]
struct FakeCell {
    ran: Mutex<Vec<String>>,
    files: Mutex<HashMap<String, String>>,
}

impl FakeCell {
    fn count(&self, needle: &str) -> usize {
        self.ran
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.contains(needle))
            .count()
    }
}

impl Cell for FakeCell {
    fn id(&self) -> &str {
        "fake"
    }
    fn terminate(&self) {}
    fn tier(&self) -> Tier {
        Tier::Process
    }
    fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, CellError> {
        let argv = spec.argv.join(" ");
        self.ran.lock().unwrap().push(argv.clone());
        let mut code = 0;
        match spec.argv.as_slice() {
            [sh, c, script, _, path]
                if sh == "/bin/sh" && c == "-c" && script.contains("cat >") =>
            {
                let mut data = String::new();
                if let Some(mut s) = stdin {
                    s.read_to_string(&mut data).unwrap();
                }
                self.files.lock().unwrap().insert(path.clone(), data);
            }
            [sh, c, cmd] if sh == "/bin/sh" && c == "-c" => {
                sink.stdout(format!("ran {cmd}\n").as_bytes())
            }
            [cat, _, path] if cat == "/bin/cat" => match self.files.lock().unwrap().get(path) {
                Some(t) => sink.stdout(t.as_bytes()),
                None => code = 1,
            },
            _ => code = 127,
        }
        Ok(ExecOutcome {
            exit: warren_cell::ExitInfo {
                code: Some(code),
                ..Default::default()
            },
            ..Default::default()
        })
    }
    fn set_env(&self, _vars: Vec<(String, Option<String>)>) -> Result<(), CellError> {
        Ok(())
    }
    fn chdir(&self, _path: &str) -> Result<(), CellError> {
        Ok(())
    }
    fn max_output_bytes(&self) -> u64 {
        1 << 20
    }
    fn kill(&mut self) {}
}

/// Answers from a script; fails ("the daemon died") at call `crash_at`.
struct Scripted {
    turns: Vec<Vec<ToolCall>>,
    crash_at: Option<usize>,
    requests: Mutex<Vec<ChatRequest>>,
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn chat(&self, r: &ChatRequest, _e: EventSink<'_>) -> Result<ChatResponse, LlmError> {
        let n = {
            let mut reqs = self.requests.lock().unwrap();
            reqs.push(r.clone());
            reqs.len() - 1
        };
        if self.crash_at == Some(n) {
            return Err(LlmError::Transport {
                provider: "scripted".into(),
                message: "crash".into(),
            });
        }
        let calls = self.turns.get(n).cloned().unwrap_or_default();
        Ok(ChatResponse {
            text: String::new(),
            tool_calls: calls,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 1,
                cached_input_tokens: 0,
            },
            stop_reason: StopReason::ToolUse,
        })
    }
}

fn call(id: &str, name: &str, args: serde_json::Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.to_string(),
    }
}

fn store(name: &str) -> (Arc<SqliteStore>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("warren-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = Arc::new(SqliteStore::open(&dir.join("w.db")).unwrap());
    s.submit(NewTask {
        id: "t".into(),
        agent: "a".into(),
        agent_version: 1,
        goal: "g".into(),
        priority: 0,
        ..NewTask::default()
    })
    .unwrap();
    (s, dir)
}

fn run(agent: &Agent) -> Result<warren_agent::Report, warren_agent::AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(agent.run("do three things", &mut |_e| {}))
}

fn config() -> AgentConfig {
    AgentConfig {
        model: "m".into(),
        max_wall: Duration::from_secs(60),
        ..AgentConfig::default()
    }
}

#[test]
fn a_task_resumed_after_a_crash_repeats_no_step() {
    let (s, dir) = store("resume");
    let journal = Arc::new(StoreJournal::new(s.clone(), "t"));
    let cell = Arc::new(FakeCell::default());
    let turns = vec![
        vec![call("c1", "shell", json!({"command": "echo one"}))],
        vec![call(
            "c2",
            "write_file",
            json!({"path": "a.txt", "content": "two"}),
        )],
        vec![call("c3", "finish", json!({"summary": "done"}))],
    ];
    // First life: the model call of turn 2 "crashes the daemon".
    let p1 = Arc::new(Scripted {
        turns: turns.clone(),
        crash_at: Some(1),
        requests: Mutex::default(),
    });
    let a1 = Agent::new(
        p1.clone(),
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    )
    .with_journal(journal.clone());
    assert!(run(&a1).is_err());
    assert_eq!(cell.count("echo one"), 1);
    // Second life: the model is only asked what was not recorded.
    let p2 = Arc::new(Scripted {
        turns: turns[1..].to_vec(),
        crash_at: None,
        requests: Mutex::default(),
    });
    let a2 = Agent::new(
        p2.clone(),
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    )
    .with_journal(journal.clone());
    let report = run(&a2).unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(
        p2.requests.lock().unwrap().len(),
        2,
        "the recorded turn was not paid for again"
    );
    assert_eq!(
        cell.count("echo one"),
        1,
        "a completed tool call was not run again"
    );
    assert_eq!(
        cell.files.lock().unwrap().get("a.txt").map(String::as_str),
        Some("two")
    );
    // The resumed conversation carried the recorded result to the model.
    let first = &p2.requests.lock().unwrap()[0];
    assert!(
        serde_json::to_string(&first.messages)
            .unwrap()
            .contains("ran echo one")
    );
    // Usage of the recorded turn still counts.
    assert_eq!(report.usage.input_tokens, 30);
    // The journal is gapless: model, intent, result per turn.
    assert_eq!(
        kinds(&*journal),
        [
            "model",
            "tool_started",
            "tool",
            "model",
            "tool_started",
            "tool",
            "model",
            "tool_started",
            "tool"
        ]
    );
    // A third life replays everything and calls nothing.
    let p3 = Arc::new(Scripted {
        turns: vec![],
        crash_at: None,
        requests: Mutex::default(),
    });
    let report = run(&Agent::new(
        p3.clone(),
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    )
    .with_journal(journal))
    .unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(
        (p3.requests.lock().unwrap().len(), cell.count("echo one")),
        (0, 1)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tool_interrupted_mid_run_is_reported_not_repeated() {
    let (s, dir) = store("interrupted");
    let journal = Arc::new(StoreJournal::new(s, "t"));
    // The daemon died after recording the intent to run `rm -rf build`, before its result.
    journal
        .record(
            0,
            &Step::Model {
                response: ChatResponse {
                    text: String::new(),
                    tool_calls: vec![call("c1", "shell", json!({"command": "rm -rf build"}))],
                    usage: Usage::default(),
                    stop_reason: StopReason::ToolUse,
                },
            },
        )
        .unwrap();
    journal
        .record(
            1,
            &Step::ToolStarted {
                call_id: "c1".into(),
            },
        )
        .unwrap();
    let cell = Arc::new(FakeCell::default());
    let p = Arc::new(Scripted {
        turns: vec![vec![call("c2", "finish", json!({"summary": "checked"}))]],
        crash_at: None,
        requests: Mutex::default(),
    });
    let report = run(&Agent::new(
        p.clone(),
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    )
    .with_journal(journal.clone()))
    .unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(
        cell.count("rm -rf build"),
        0,
        "an interrupted command is never re-run blindly"
    );
    let told = serde_json::to_string(&p.requests.lock().unwrap()[0].messages).unwrap();
    assert!(
        told.contains("interrupted by a restart") && told.contains("effect is unknown"),
        "{told}"
    );
    assert!(matches!(
        &journal.load().unwrap()[2],
        Step::Tool { is_error: true, .. }
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_manifest_tool_list_limits_what_is_offered_and_accepted() {
    let cell = Arc::new(FakeCell::default());
    let p = Arc::new(Scripted {
        turns: vec![
            vec![call("c1", "shell", json!({"command": "echo sneaky"}))],
            vec![call("c2", "finish", json!({"summary": "done"}))],
        ],
        crash_at: None,
        requests: Mutex::default(),
    });
    let cfg = AgentConfig {
        tools: Some(vec!["read_file".into()]),
        ..config()
    };
    let a = Agent::new(p.clone(), cell.clone(), cfg, Arc::new(Unrestricted), None);
    let report = run(&a).unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(
        cell.count("echo sneaky"),
        0,
        "a tool not offered never runs"
    );
    let first = &p.requests.lock().unwrap()[0];
    let offered: Vec<&str> = first.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["read_file", "finish"]);
}

#[test]
fn a_cost_budget_stops_the_task_when_no_gate_approves_more() {
    let cell = Arc::new(FakeCell::default());
    let p = Arc::new(Scripted {
        turns: vec![
            vec![call("c1", "shell", json!({"command": "echo one"}))],
            vec![call("c2", "shell", json!({"command": "echo two"}))],
        ],
        crash_at: None,
        requests: Mutex::default(),
    });
    let cfg = AgentConfig {
        budget_usd: Some(0.005),
        prices: Some(warren_llm::catalog::ModelInfo {
            context_window: 100_000,
            input_per_mtok: 1000.0,
            cached_input_per_mtok: 100.0,
            output_per_mtok: 1000.0,
        }),
        ..config()
    };
    // Each turn costs (10 + 1) tokens at $1000/Mtok = $0.011.
    let report = run(&Agent::new(
        p.clone(),
        cell.clone(),
        cfg,
        Arc::new(Unrestricted),
        None,
    ))
    .unwrap();
    match report.outcome {
        Outcome::Stopped(r) => assert!(r.contains("cost budget of $0.01"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.requests.lock().unwrap().len(), 1);
    assert_eq!(cell.count("echo two"), 0);
}

#[test]
fn the_prompt_and_the_shell_tool_say_which_network_the_task_has() {
    let first_request = |cfg: AgentConfig| {
        let p = Arc::new(Scripted {
            turns: vec![vec![call("f", "finish", json!({"summary": "done"}))]],
            crash_at: None,
            requests: Mutex::default(),
        });
        let a = Agent::new(
            p.clone(),
            Arc::new(FakeCell::default()),
            cfg,
            Arc::new(Unrestricted),
            None,
        );
        run(&a).unwrap();
        let r = p.requests.lock().unwrap()[0].clone();
        let shell = r
            .tools
            .iter()
            .find(|t| t.name == "shell")
            .map(|t| t.description.clone())
            .unwrap();
        (r.system, shell)
    };
    // Without network: the prompt recorded transcripts (the README's quick start) replay.
    let (system, shell) = first_request(config());
    assert_eq!(system, warren_agent::SYSTEM_PROMPT);
    assert_eq!(
        warren_agent::system_prompt(&[]),
        warren_agent::SYSTEM_PROMPT
    );
    assert!(system.contains("there is no network") && shell.contains("no network"));
    // With network: the proxy, its destinations and /cap/http; never "no network".
    let network = vec!["api.github.com:443".to_owned(), "*.pypi.org".to_owned()];
    let (system, shell) = first_request(AgentConfig {
        system_prompt: warren_agent::system_prompt(&network),
        network: network.clone(),
        ..config()
    });
    for text in [&system, &shell] {
        assert!(!text.contains("no network"), "{text}");
        assert!(
            text.contains("HTTP(S) proxy")
                && text.contains("api.github.com:443, *.pypi.org")
                && text.contains("/cap/http"),
            "{text}"
        );
    }
    assert!(system.starts_with("You are Warren's coding agent.") && system.ends_with("summary."));
}

/// Refuses `write_file`, asks a person (who says no) before `shell`, and records what it is
/// told.
#[derive(Default)]
struct StrictGate {
    audit: Mutex<Vec<(String, Result<String, String>)>>,
    models: Mutex<u32>,
}

#[async_trait::async_trait]
impl warren_agent::Gate for StrictGate {
    fn check(&self, tool: &str, _args: &serde_json::Value) -> Result<String, String> {
        if tool == "write_file" {
            Err("no writes here".into())
        } else {
            Ok(format!("cap:{tool}"))
        }
    }
    fn needs_approval(&self, tool: &str, _args: &serde_json::Value) -> Option<String> {
        (tool == "shell").then(|| "runs a command".into())
    }
    async fn ask(
        &self,
        _call_id: &str,
        _tool: &str,
        _args: &serde_json::Value,
        _reason: &str,
    ) -> Result<(), String> {
        Err("not today".into())
    }
    fn tool_call(&self, call: &warren_agent::ToolCallRecord<'_>) {
        self.audit.lock().unwrap().push((
            call.call_id.to_owned(),
            call.decision.map(str::to_owned).map_err(str::to_owned),
        ));
    }
    fn model_call(&self, _call: &warren_agent::ModelCallRecord<'_>) {
        *self.models.lock().unwrap() += 1;
    }
}

#[test]
fn every_call_passes_the_gate_and_a_refused_call_runs_nothing() {
    let cell = Arc::new(FakeCell::default());
    let p = Arc::new(Scripted {
        turns: vec![
            vec![
                call("w", "write_file", json!({"path": "a.txt", "content": "x"})),
                call("s", "shell", json!({"command": "echo hi"})),
                call("r", "read_file", json!({"path": "a.txt"})),
                call("bad", "shell", json!({"command": 1})),
            ],
            vec![call("f", "finish", json!({"summary": "done"}))],
        ],
        crash_at: None,
        requests: Mutex::default(),
    });
    let gate = Arc::new(StrictGate::default());
    let report = run(&Agent::new(
        p.clone(),
        cell.clone(),
        config(),
        gate.clone(),
        None,
    ))
    .unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(cell.count("echo hi"), 0, "a call not approved never runs");
    assert!(
        !cell.files.lock().unwrap().contains_key("a.txt"),
        "a refused call never runs"
    );
    let told = serde_json::to_string(&p.requests.lock().unwrap()[1].messages).unwrap();
    for said in [
        "refused by policy: no writes here",
        "not approved: not today",
        "cannot read a.txt",
        "invalid arguments for shell: /command",
    ] {
        assert!(told.contains(said), "{said:?} in {told}");
    }
    // Every call is audited, with the capability that allowed it or why it did not run.
    let audit = gate.audit.lock().unwrap().clone();
    let ids: Vec<&str> = audit.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["w", "s", "r", "bad", "f"]);
    assert_eq!(audit[0].1, Err("refused by policy: no writes here".into()));
    assert_eq!(audit[1].1, Err("not approved: not today".into()));
    assert_eq!(audit[2].1, Ok("cap:read_file".into()));
    assert!(
        audit[3]
            .1
            .as_ref()
            .is_err_and(|e| e.starts_with("invalid arguments"))
    );
    assert_eq!(
        *gate.models.lock().unwrap(),
        2,
        "every model call is reported"
    );
}

#[test]
fn a_long_result_reaches_the_model_cut_and_the_logs_whole() {
    let logs = std::env::temp_dir().join(format!("warren-agent-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let long = "y".repeat(20_000);
    let p = Arc::new(Scripted {
        turns: vec![
            vec![call("l", "shell", json!({ "command": long }))],
            vec![call("f", "finish", json!({"summary": "done"}))],
        ],
        crash_at: None,
        requests: Mutex::default(),
    });
    let cell = Arc::new(FakeCell::default());
    let mut results = Vec::new();
    let agent = Agent::new(
        p.clone(),
        cell,
        config(),
        Arc::new(Unrestricted),
        Some(logs.clone()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(agent.run("long output", &mut |e| {
        if let warren_agent::AgentEvent::ToolResult { chars, log, .. } = e {
            results.push((*chars, log.clone()));
        }
    }))
    .unwrap();
    assert_eq!(results[0].1.as_deref(), Some("/logs/tool-1-1.log"));
    let full = std::fs::read_to_string(logs.join("tool-1-1.log")).unwrap();
    assert_eq!(full.chars().count(), results[0].0);
    assert!(full.ends_with(&format!("ran {long}\n")));
    let told = serde_json::to_string(&p.requests.lock().unwrap()[1].messages).unwrap();
    assert!(
        told.contains("[output truncated at 16000 characters of")
            && told.contains("full output in /logs/tool-1-1.log"),
    );
    let result = p.requests.lock().unwrap()[1]
        .messages
        .iter()
        .find_map(|m| match m {
            warren_llm::Message::Tool { content, .. } => Some(content.chars().count()),
            _ => None,
        });
    assert!(
        result.is_some_and(|n| n < 16_200),
        "the model got the cut result: {result:?}"
    );
    assert!(
        std::fs::read_to_string(logs.join("events.jsonl"))
            .unwrap()
            .contains(r#""event":"finished""#)
    );
    let _ = std::fs::remove_dir_all(logs);
}

#[test]
fn the_same_failing_call_is_tolerated_only_so_often() {
    let again = || vec![call("x", "read_file", json!({"path": "nowhere"}))];
    let p = Arc::new(Scripted {
        turns: vec![again(), again(), again(), again()],
        crash_at: None,
        requests: Mutex::default(),
    });
    let report = run(&Agent::new(
        p.clone(),
        Arc::new(FakeCell::default()),
        config(),
        Arc::new(Unrestricted),
        None,
    ))
    .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Stopped("the same failing read_file call was repeated 3 times".into())
    );
    assert_eq!(report.turns, 3);
}

/// Loads nothing, and fails to record.
struct FullDisk;

impl Journal for FullDisk {
    fn load(&self) -> Result<Vec<Step>, String> {
        Ok(Vec::new())
    }
    fn record(&self, _seq: u64, _step: &Step) -> Result<(), String> {
        Err("disk full".into())
    }
}

#[test]
fn errors_name_the_operation_that_failed() {
    let finish = || Scripted {
        turns: vec![vec![call("f", "finish", json!({"summary": "done"}))]],
        crash_at: None,
        requests: Mutex::default(),
    };
    let agent = |logs| {
        Agent::new(
            Arc::new(finish()),
            Arc::new(FakeCell::default()),
            config(),
            Arc::new(Unrestricted),
            logs,
        )
    };
    let e = run(&agent(None).with_journal(Arc::new(FullDisk))).unwrap_err();
    assert!(matches!(
        e,
        warren_agent::AgentError::Journal(warren_agent::JournalError::Record { seq: 0, .. })
    ));
    assert_eq!(
        e.to_string(),
        "task journal: cannot record step 0 (model): disk full"
    );
    let missing = std::env::temp_dir().join(format!("warren-agent-none-{}", std::process::id()));
    let e = run(&agent(Some(missing.clone()))).unwrap_err();
    assert!(matches!(
        &e,
        warren_agent::AgentError::Logs(warren_agent::LogsError::Open { path, .. })
            if *path == missing.join("events.jsonl")
    ));
    assert!(e.to_string().starts_with("task logs: cannot open "), "{e}");
}

/// The store's journal, except that recording step `at` fails: the daemon died there.
struct CrashAt {
    inner: Arc<StoreJournal>,
    at: u64,
}

impl Journal for CrashAt {
    fn load(&self) -> Result<Vec<Step>, String> {
        self.inner.load()
    }
    fn record(&self, seq: u64, step: &Step) -> Result<(), String> {
        if seq == self.at {
            return Err("killed".into());
        }
        self.inner.record(seq, step)
    }
}

fn scripted(turns: Vec<Vec<ToolCall>>) -> Arc<Scripted> {
    Arc::new(Scripted {
        turns,
        crash_at: None,
        requests: Mutex::default(),
    })
}

/// An agent over `p` and `cell` that records in (and resumes from) `journal`.
fn journalled(p: &Arc<Scripted>, cell: &Arc<FakeCell>, journal: Arc<dyn Journal>) -> Agent {
    Agent::new(
        p.clone(),
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    )
    .with_journal(journal)
}

fn kinds(journal: &dyn Journal) -> Vec<String> {
    journal
        .load()
        .unwrap()
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["step"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_crash_at_any_step_of_a_turn_of_two_changes_repeats_nothing_and_keeps_every_known_result() {
    let turns = vec![
        vec![
            call("c1", "shell", json!({"command": "echo one"})),
            call("c2", "shell", json!({"command": "echo two"})),
        ],
        vec![call("c3", "finish", json!({"summary": "done"}))],
    ];
    // Steps of turn 1: model (0), tool_started c1 (1), tool c1 (2), tool_started c2 (3),
    // tool c2 (4). Each is where the first life dies, in turn.
    for at in 1..=4u64 {
        let (s, dir) = store(&format!("crash-{at}"));
        let journal = Arc::new(StoreJournal::new(s, "t"));
        let cell = Arc::new(FakeCell::default());
        let crashing = Arc::new(CrashAt {
            inner: journal.clone(),
            at,
        });
        let first = journalled(&scripted(turns.clone()), &cell, crashing);
        assert!(run(&first).is_err(), "crash at step {at}");
        let p = scripted(turns[1..].to_vec());
        let report = run(&journalled(&p, &cell, journal.clone()))
            .unwrap_or_else(|e| panic!("resume after a crash at step {at}: {e}"));
        assert!(matches!(report.outcome, Outcome::Finished(_)), "at {at}");
        assert_eq!(
            (cell.count("echo one"), cell.count("echo two")),
            (1, 1),
            "crash at step {at}: every call ran exactly once"
        );
        let told = serde_json::to_string(&p.requests.lock().unwrap()[0].messages).unwrap();
        // c1's result reaches the model unless Warren died while c1 ran (at 2): from step 3
        // on it was durable, and at 1 c1 had not started yet (it runs in the second life).
        assert_eq!(told.contains("ran echo one"), at != 2, "at {at}: {told}");
        assert_eq!(
            told.matches("interrupted by a restart").count(),
            usize::from(at == 2 || at == 4),
            "at {at}: only the call that was running when Warren died has an unknown effect"
        );
        assert_eq!(
            kinds(&*journal)[..5],
            ["model", "tool_started", "tool", "tool_started", "tool"],
            "at {at}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_journal_with_a_turns_marks_before_its_results_still_resumes() {
    // The order an earlier Warren wrote: both marks, then the results; it died before c2's.
    let (s, dir) = store("legacy-order");
    let journal = Arc::new(StoreJournal::new(s, "t"));
    let steps = [
        Step::Model {
            response: ChatResponse {
                text: String::new(),
                tool_calls: vec![
                    call("c1", "shell", json!({"command": "echo one"})),
                    call("c2", "shell", json!({"command": "echo two"})),
                ],
                usage: Usage::default(),
                stop_reason: StopReason::ToolUse,
            },
        },
        Step::ToolStarted {
            call_id: "c1".into(),
        },
        Step::ToolStarted {
            call_id: "c2".into(),
        },
        Step::Tool {
            call_id: "c1".into(),
            content: "ran echo one".into(),
            is_error: false,
            finished: None,
            spent: Default::default(),
        },
    ];
    for (seq, step) in steps.iter().enumerate() {
        journal.record(seq as u64, step).unwrap();
    }
    let cell = Arc::new(FakeCell::default());
    let p = scripted(vec![vec![call("c3", "finish", json!({"summary": "done"}))]]);
    let report = run(&journalled(&p, &cell, journal.clone())).unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!((cell.count("echo one"), cell.count("echo two")), (0, 0));
    let told = serde_json::to_string(&p.requests.lock().unwrap()[0].messages).unwrap();
    assert!(told.contains("ran echo one"), "{told}");
    assert_eq!(
        told.matches("interrupted by a restart").count(),
        1,
        "{told}"
    );
    // c2's unknown effect took the next free number.
    assert_eq!(
        kinds(&*journal)[..5],
        ["model", "tool_started", "tool_started", "tool", "tool"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A host tool that finds its own earlier work by the call's id (as `delegate` re-attaches
/// to its child), so a restart runs it again instead of reporting its effect unknown.
#[derive(Default)]
struct Resumer {
    ids: Mutex<Vec<String>>,
}

impl warren_agent::tools::HostTools for Resumer {
    fn specs(&self) -> Vec<warren_llm::ToolSpec> {
        vec![warren_llm::ToolSpec {
            name: "resumer".into(),
            description: "r".into(),
            parameters: json!({"type": "object"}),
        }]
    }

    fn call(&self, _name: &str, _args: &serde_json::Value) -> Option<Result<String, String>> {
        None
    }

    fn call_as(
        &self,
        call_id: &str,
        name: &str,
        _args: &serde_json::Value,
    ) -> Option<warren_agent::tools::HostOutput> {
        (name == "resumer").then(|| {
            self.ids.lock().unwrap().push(call_id.to_owned());
            warren_agent::tools::HostOutput {
                result: Ok(format!("attached as {call_id}")),
                spent: Usage {
                    input_tokens: 7,
                    output_tokens: 3,
                    cached_input_tokens: 0,
                },
            }
        })
    }

    fn resumable(&self, name: &str) -> bool {
        name == "resumer"
    }
}

#[test]
fn a_resumable_call_interrupted_twice_runs_again_under_its_id_and_then_replays() {
    let (s, dir) = store("resumable");
    let journal = Arc::new(StoreJournal::new(s, "t"));
    // Two lives died while the call ran: two marks, no result.
    let steps = [
        Step::Model {
            response: ChatResponse {
                text: String::new(),
                tool_calls: vec![call("r1", "resumer", json!({}))],
                usage: Usage::default(),
                stop_reason: StopReason::ToolUse,
            },
        },
        Step::ToolStarted {
            call_id: "r1".into(),
        },
        Step::ToolStarted {
            call_id: "r1".into(),
        },
    ];
    for (seq, step) in steps.iter().enumerate() {
        journal.record(seq as u64, step).unwrap();
    }
    let cell = Arc::new(FakeCell::default());
    let tool = Arc::new(Resumer::default());
    let finish = vec![vec![call("f", "finish", json!({"summary": "done"}))]];
    let p = scripted(finish.clone());
    let agent = journalled(&p, &cell, journal.clone()).with_host_tools(tool.clone());
    let report = run(&agent).unwrap();
    assert!(matches!(report.outcome, Outcome::Finished(_)));
    assert_eq!(
        *tool.ids.lock().unwrap(),
        ["r1"],
        "ran again, under its own id"
    );
    let told = serde_json::to_string(&p.requests.lock().unwrap()[0].messages).unwrap();
    assert!(
        told.contains("attached as r1") && !told.contains("interrupted"),
        "{told}"
    );
    // What it spent is the task's: recorded with its result, and counted again on replay.
    assert_eq!(p.requests.lock().unwrap().len(), 1);
    assert_eq!(report.usage.input_tokens, 7 + 10);
    // The whole journal replays: nothing runs, the same end.
    let again = Arc::new(Resumer::default());
    let p2 = scripted(finish);
    let agent = journalled(&p2, &cell, journal.clone()).with_host_tools(again.clone());
    let replayed = run(&agent).unwrap();
    assert!(matches!(replayed.outcome, Outcome::Finished(_)));
    assert!(again.ids.lock().unwrap().is_empty());
    assert_eq!(replayed.usage.input_tokens, report.usage.input_tokens);
    let _ = std::fs::remove_dir_all(dir);
}

/// Answers with text (and calls) from a script, as a small local model does.
struct Texted {
    turns: Vec<(String, Vec<ToolCall>)>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl Texted {
    fn new(turns: Vec<(&str, Vec<ToolCall>)>) -> Arc<Texted> {
        Arc::new(Texted {
            turns: turns.into_iter().map(|(t, c)| (t.to_owned(), c)).collect(),
            requests: Mutex::default(),
        })
    }

    /// What the model was told in answer to call `id`.
    fn result_of(&self, id: &str) -> String {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.messages.clone())
            .find_map(|m| match m {
                warren_llm::Message::Tool {
                    call_id, content, ..
                } if call_id == id => Some(content),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no result for {id}"))
    }
}

#[async_trait::async_trait]
impl Provider for Texted {
    fn name(&self) -> &str {
        "openai"
    }
    async fn chat(&self, r: &ChatRequest, _e: EventSink<'_>) -> Result<ChatResponse, LlmError> {
        let n = {
            let mut reqs = self.requests.lock().unwrap();
            reqs.push(r.clone());
            reqs.len() - 1
        };
        let (text, calls) = self.turns.get(n).cloned().unwrap_or_default();
        Ok(ChatResponse {
            text,
            tool_calls: calls,
            usage: Usage::default(),
            stop_reason: StopReason::EndTurn,
        })
    }
}

/// An agent on `p`, as for an OpenAI-compatible provider (calls written as text are taken).
fn local_model(p: &Arc<Texted>, cell: &Arc<FakeCell>) -> Agent {
    let mut c = config();
    c.text_tool_calls = true;
    Agent::new(p.clone(), cell.clone(), c, Arc::new(Unrestricted), None)
}

fn run_events(agent: &Agent) -> (warren_agent::Report, Vec<warren_agent::AgentEvent>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Vec::new();
    let r = rt
        .block_on(agent.run("write a.py", &mut |e| seen.push(e.clone())))
        .unwrap();
    (r, seen)
}

#[test]
fn calls_a_local_model_writes_as_text_are_run_like_any_call() {
    let p = Texted::new(vec![
        (
            "I will create the file.\n<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"print(1)\\n\"}}\n</tool_call>\n<tool_response>\nThe file was written.\n</tool_response>",
            vec![],
        ),
        (
            "```json\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"wrote a.py\"}}\n```",
            vec![],
        ),
    ]);
    let cell = Arc::new(FakeCell::default());
    let (report, events) = run_events(&local_model(&p, &cell));
    assert_eq!(
        report.outcome,
        Outcome::Finished(json!({"summary": "wrote a.py", "success": true}))
    );
    let files = cell.files.lock().unwrap().clone();
    assert_eq!(
        files
            .iter()
            .find(|(k, _)| k.ends_with("a.py"))
            .map(|(_, v)| v.as_str()),
        Some("print(1)\n"),
        "{files:?}"
    );
    assert!(
        p.result_of("text-1-1").contains("wrote"),
        "the result goes to the call's id"
    );
    let taken = events
        .iter()
        .filter(|e| matches!(e, warren_agent::AgentEvent::TextToolCalls { .. }))
        .count();
    assert_eq!(taken, 2);

    // The same text from a provider that is not OpenAI-compatible (text calls off): nothing
    // runs; a nudge, then the task stops.
    let p = Texted::new(vec![
        (
            "<tool_call>{\"name\": \"write_file\", \"arguments\": {\"path\": \"b.py\", \"content\": \"x\"}}</tool_call>",
            vec![],
        ),
        (
            "<tool_call>{\"name\": \"write_file\", \"arguments\": {\"path\": \"b.py\", \"content\": \"x\"}}</tool_call>",
            vec![],
        ),
    ]);
    let cell = Arc::new(FakeCell::default());
    let (report, _) = run_events(&Agent::new(
        p,
        cell.clone(),
        config(),
        Arc::new(Unrestricted),
        None,
    ));
    assert!(matches!(report.outcome, Outcome::Stopped(_)));
    assert!(cell.files.lock().unwrap().is_empty());
}

#[test]
fn prose_that_quotes_a_call_runs_nothing_and_is_nudged_once() {
    let prose = "To write the file you would call ```json\n{\"name\": \"shell\", \"arguments\": {\"command\": \"rm -rf /workspace\"}}\n``` — but I have not done it yet.";
    let p = Texted::new(vec![(prose, vec![]), (prose, vec![])]);
    let cell = Arc::new(FakeCell::default());
    let (report, events) = run_events(&local_model(&p, &cell));
    assert_eq!(
        report.outcome,
        Outcome::Stopped("the model stopped calling tools without calling finish".into())
    );
    assert!(cell.ran.lock().unwrap().is_empty(), "nothing ran");
    let nudges: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, warren_agent::AgentEvent::Nudged { .. }))
        .collect();
    assert_eq!(nudges.len(), 1);
    let second = &p.requests.lock().unwrap()[1];
    assert!(
        matches!(second.messages.last(), Some(warren_llm::Message::User { content }) if content.contains("Call a tool")),
        "the nudge is the last message the model sees"
    );

    // Nudges are configurable: none, or several.
    for (nudges, turns) in [(0, 1), (3, 4)] {
        let p = Texted::new(vec![("thinking…", vec![]); 5]);
        let mut c = config();
        c.max_nudges = nudges;
        let (report, _) = run_events(&Agent::new(
            p,
            Arc::new(FakeCell::default()),
            c,
            Arc::new(Unrestricted),
            None,
        ));
        assert_eq!(report.turns, turns, "{nudges} nudges");
    }
}

#[test]
fn finish_in_a_turn_whose_other_calls_failed_is_refused_with_the_reason() {
    let p = Texted::new(vec![
        (
            "",
            vec![
                call("e1", "read_file", json!({"path": "missing.py"})),
                call("r1", "run", json!({"command": "python a.py"})),
                call("f1", "finish", json!({"summary": "Fixed bug"})),
            ],
        ),
        (
            "",
            vec![call(
                "f2",
                "finish",
                json!({"summary": "could not fix it", "success": false}),
            )],
        ),
    ]);
    let (report, _) = run_events(&Agent::new(
        p.clone(),
        Arc::new(FakeCell::default()),
        config(),
        Arc::new(Unrestricted),
        None,
    ));
    let refused = p.result_of("f1");
    assert!(
        refused.starts_with("finish refused: 2 other call(s) of this turn failed (read_file, run)"),
        "{refused}"
    );
    assert_eq!(
        report.outcome,
        Outcome::Finished(json!({"summary": "could not fix it", "success": false}))
    );
    assert_eq!(report.turns, 2);
}
