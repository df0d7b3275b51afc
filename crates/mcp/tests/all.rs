//! Warren's MCP server driven by the official SDK's client (rmcp, the peer), over an in-memory
//! pipe, in front of a real engine: SQLite store, the scheduler, the runner, the recording
//! fake tier ([`FakeCells`]) and a scripted model. No root: what is tested is the protocol
//! mapping, progress, paging, refusals and the audit of what an MCP caller did.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use warren_mcp::{EngineBackend, WarrenMcp};
use warren_runtime::action::{Action, Caller, Op};
use warren_runtime::engine::{Engine, Options};
use warren_runtime::fake::{FakeCells, ScriptedModel, tool_call};
use warren_store::sqlite::SqliteStore;
use warren_store::{Store, TaskFilter};
use warren_testkit::TempDir;

struct World {
    _t: TempDir,
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
}

async fn world(name: &str) -> World {
    let t = TempDir::new(name);
    let state = t.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&state.join("warren.db")).unwrap());
    let model = ScriptedModel::new(vec![
        (
            "write",
            vec![vec![tool_call(
                "w",
                "write_file",
                json!({"path": "a.txt", "content": "hi\n"}),
            )]],
        ),
        (
            "hang",
            vec![vec![tool_call(
                "s",
                "shell",
                json!({"command": "sleep 1000"}),
            )]],
        ),
    ]);
    let opts = Options::for_tests(&state, FakeCells::new(), model as _).unwrap();
    let engine = Engine::new(Arc::clone(&store), opts).unwrap();
    tokio::spawn(Arc::clone(&engine).run());
    engine
        .handle(
            &Caller::operator("test"),
            Op::Act(Action::Deploy {
                origin: "test.yaml".into(),
                manifest: "name: coder\ndescription: writes\ntools: [shell, write_file, finish]\n"
                    .into(),
            }),
        )
        .await
        .unwrap();
    World {
        _t: t,
        store,
        engine,
    }
}

/// The SDK's client, keeping every progress notification it receives.
#[derive(Default)]
struct Client {
    progress: std::sync::Mutex<Vec<ProgressNotificationParam>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// An MCP session with Warren's server acting as `caller`.
async fn connect(w: &World, caller: Caller) -> RunningService<RoleClient, Client> {
    let (server_end, client_end) = tokio::io::duplex(1 << 16);
    let server = WarrenMcp::new(Arc::new(EngineBackend::new(Arc::clone(&w.engine), caller)));
    tokio::spawn(async move {
        if let Ok(s) = server.serve(server_end).await {
            let _ = s.waiting().await;
        }
    });
    Client::default().serve(client_end).await.unwrap()
}

async fn call(c: &RunningService<RoleClient, Client>, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn structured(r: &CallToolResult) -> &Value {
    r.structured_content.as_ref().expect("structured content")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lists_submits_follows_with_progress_and_reads_a_task() {
    let w = world("mcp-flow").await;
    let c = connect(&w, Caller::operator("mcp")).await;

    let mut names: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cancel_task",
            "decide_approval",
            "list_agents",
            "submit_task",
            "task_diff",
            "task_events",
            "task_result",
            "task_status",
            "wait_task"
        ]
    );

    let agents = call(&c, "list_agents", json!({})).await;
    assert_eq!(structured(&agents)["agents"][0]["name"], "coder");

    let submitted = call(
        &c,
        "submit_task",
        json!({"agent": "coder", "goal": "write a file"}),
    )
    .await;
    assert_ne!(submitted.is_error, Some(true), "{submitted:?}");
    let id = structured(&submitted)["id"].as_str().unwrap().to_owned();

    // wait_task with a progress token: a notification per event, then the final state.
    let handle = c
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("wait_task").with_arguments(
                    json!({"id": id, "timeout_seconds": 60})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let handle_token = handle.progress_token.clone();
    let answer = handle.await_response().await.unwrap();
    let rmcp::model::ServerResult::CallToolResult(done) = answer else {
        panic!("not a tool result: {answer:?}")
    };
    let view = structured(&done);
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["ended"], true);
    let notes: Vec<ProgressNotificationParam> = c.service().progress.lock().unwrap().clone();
    assert!(
        notes.iter().all(|p| p.progress_token == handle_token),
        "every notification carries the request's token"
    );
    let messages: Vec<String> = notes.iter().filter_map(|p| p.message.clone()).collect();
    let seen = view["events_seen"].as_u64().unwrap();
    assert!(seen >= 3, "{view}");
    assert_eq!(
        messages.len() as u64,
        seen,
        "one notification per event: {messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "agent.tool_call"),
        "a progress notification names each event's kind: {messages:?}"
    );

    let result = call(&c, "task_result", json!({"id": id})).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(
        structured(&result)["summary"],
        "done",
        "{}",
        structured(&result)
    );

    let events = call(&c, "task_events", json!({"id": id})).await;
    let events = structured(&events);
    assert!(events["events"].as_array().unwrap().len() >= 3, "{events}");
    assert_eq!(events["more"], false);

    let diff = call(&c, "task_diff", json!({"id": id})).await;
    assert_eq!(structured(&diff)["offset"], 0, "{:?}", diff);

    // The same task as resources.
    let templates: Vec<String> = c
        .list_all_resource_templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.uri_template.clone())
        .collect();
    assert_eq!(
        templates,
        [
            "warren://tasks/{id}/result",
            "warren://tasks/{id}/diff",
            "warren://tasks/{id}/events",
            "warren://tasks/{id}/plan"
        ]
    );
    let read = |kind: &str| {
        let uri = format!("warren://tasks/{id}/{kind}");
        let c = &c;
        async move {
            c.read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
                .await
        }
    };
    let text = |r: rmcp::model::ReadResourceResult| match &r.contents[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
        other => panic!("not text: {other:?}"),
    };
    let result: Value = serde_json::from_str(&text(read("result").await.unwrap())).unwrap();
    assert_eq!(result["summary"], "done");
    let events: Value = serde_json::from_str(&text(read("events").await.unwrap())).unwrap();
    assert!(events.as_array().unwrap().len() >= 3);
    let nothing = c
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "warren://tasks/t000000000000/diff",
        ))
        .await
        .unwrap_err();
    assert!(
        nothing.to_string().contains("not found") || nothing.to_string().contains("-32002"),
        "{nothing}"
    );

    // The store names the MCP caller as the one who submitted.
    let audit = w.store.audit_records(0, Some(&id), 1000).unwrap();
    let submitted = audit
        .iter()
        .find(|r| r.kind == "task.submitted")
        .expect("task.submitted audited");
    let data: Value = serde_json::from_str(&submitted.data).unwrap();
    assert_eq!(data["by"], "mcp", "{data}");
    c.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_bad_arguments_are_tool_errors_naming_the_code_or_the_problem() {
    let w = world("mcp-refusals").await;
    let c = connect(&w, Caller::operator("mcp")).await;

    let missing = call(&c, "task_status", json!({"id": "t000000000000"})).await;
    assert_eq!(missing.is_error, Some(true));
    assert_eq!(structured(&missing)["code"], "not_found", "{missing:?}");

    let unknown_agent = call(&c, "submit_task", json!({"agent": "nobody", "goal": "x"})).await;
    assert_eq!(unknown_agent.is_error, Some(true));
    assert_eq!(structured(&unknown_agent)["code"], "not_found");

    // A goal missing, or a field the tool does not take: a tool error naming the problem (the
    // model can correct its call), and nothing is queued.
    for (tool, args, problem) in [
        (
            "submit_task",
            json!({"agent": "coder"}),
            "missing field `goal`",
        ),
        (
            "task_status",
            json!({"id": "t000000000000", "x": 1}),
            "unknown field `x`",
        ),
    ] {
        let r = call(&c, tool, args).await;
        assert_eq!(r.is_error, Some(true), "{r:?}");
        let text = serde_json::to_string(&r.content).unwrap();
        assert!(text.contains(problem), "{text}");
    }
    assert!(
        w.store
            .list_tasks(&TaskFilter::default())
            .unwrap()
            .is_empty()
    );

    // A viewer may read but not act.
    let viewer = connect(&w, Caller::viewer("dashboard")).await;
    let listed = call(&viewer, "list_agents", json!({})).await;
    assert_ne!(listed.is_error, Some(true));
    let refused = call(
        &viewer,
        "submit_task",
        json!({"agent": "coder", "goal": "write"}),
    )
    .await;
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(structured(&refused)["code"], "unauthorized");
    assert!(
        w.store
            .list_tasks(&TaskFilter::default())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_over_mcp_and_its_wait_ends() {
    let w = world("mcp-cancel").await;
    let c = connect(&w, Caller::operator("mcp")).await;
    let submitted = call(&c, "submit_task", json!({"agent": "coder", "goal": "hang"})).await;
    let id = structured(&submitted)["id"].as_str().unwrap().to_owned();
    // Running (the command in flight) before the cancel.
    for _ in 0..200 {
        let s = call(&c, "task_status", json!({"id": id})).await;
        if structured(&s)["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cancelled = call(&c, "cancel_task", json!({"id": id, "reason": "enough"})).await;
    if cancelled.is_error == Some(true) {
        let s = call(&c, "task_status", json!({"id": id})).await;
        let events = call(&c, "task_events", json!({"id": id})).await;
        panic!("{cancelled:?}\nthe task: {s:?}\nits events: {events:?}");
    }
    let done = call(&c, "wait_task", json!({"id": id, "timeout_seconds": 30})).await;
    assert_eq!(structured(&done)["state"], "cancelled", "{done:?}");
    // Cancelling again: the task is over, a conflict.
    let again = call(&c, "cancel_task", json!({"id": id})).await;
    assert_eq!(again.is_error, Some(true));
    assert_eq!(structured(&again)["code"], "conflict");
}

/// The skills extension (SEP-2640): the skills of the server's folders, each with a digest of
/// every file; a file read by its `skill://` URI; a URI naming no listed file is not found
/// (nothing is opened from a path in it).
#[tokio::test]
async fn skills_are_served_with_their_files_and_digests() {
    let w = world("mcp-skills").await;
    let root = w._t.path().join("skills");
    let dir = root.join("greeter");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        "---\nname: greeter\ndescription: Greets people.\n---\nRun scripts/greet.sh.\n",
    )
    .unwrap();
    std::fs::write(dir.join("scripts/greet.sh"), "echo hello\n").unwrap();
    std::fs::write(w._t.path().join("secret"), "host only\n").unwrap();
    let (server_end, client_end) = tokio::io::duplex(1 << 16);
    let server = WarrenMcp::new(Arc::new(EngineBackend::new(
        Arc::clone(&w.engine),
        Caller::operator("test"),
    )))
    .with_skills(vec![root.clone()]);
    tokio::spawn(async move {
        if let Ok(s) = server.serve(server_end).await {
            let _ = s.waiting().await;
        }
    });
    let c = Client::default().serve(client_end).await.unwrap();
    let listed = c.peer().list_skills(None).await.unwrap();
    assert_eq!(listed.skills.len(), 1);
    let skill = &listed.skills[0];
    assert_eq!(skill.uri, "skill://greeter/SKILL.md");
    assert_eq!(skill.frontmatter.description, "Greets people.");
    let rmcp::model::SkillResources::Files(files) = &skill.resources else {
        panic!("a manifest of files")
    };
    let uris: Vec<&str> = files.iter().map(|f| f.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "skill://greeter/SKILL.md",
            "skill://greeter/scripts/greet.sh"
        ]
    );
    assert!(
        files[1].verify(b"echo hello\n").is_ok(),
        "the digest is the file's"
    );
    let got = c
        .peer()
        .get_skill(rmcp::model::GetSkillRequestParams::new(
            "skill://greeter/SKILL.md",
        ))
        .await
        .unwrap();
    assert_eq!(got.skill, *skill);
    let read = c
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "skill://greeter/scripts/greet.sh",
        ))
        .await
        .unwrap();
    assert!(format!("{read:?}").contains("echo hello"), "{read:?}");
    for uri in [
        "skill://greeter/../../secret",
        "skill://greeter/nope",
        "skill://nobody/SKILL.md",
    ] {
        let e = c
            .peer()
            .read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
            .await;
        assert!(e.is_err(), "{uri}: {e:?}");
    }
}
