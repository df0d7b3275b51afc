//! `/cap/http` served live to a WebAssembly module: the module writes a request and reads the
//! answer on the same handle, the host runs it under the egress policy against a real local
//! HTTP server, and audits it.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warren_egress::{Config, Decision, Policy, RecordingAudit};
use warren_ns::MountTable;
use warren_wasi::{Invocation, Runtime, RuntimeConfig, Status, probe};

/// A one-route HTTP server on 127.0.0.1:0 answering every request with `pong <path>`.
fn origin() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split(' ').nth(1).unwrap_or("?").to_string();
            let body = format!("pong {path}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn namespace(audit: Arc<RecordingAudit>) -> MountTable {
    let server = origin();
    let mut config = Config::new(Policy::parse(&["api.test:80".to_string()]).expect("policy"));
    let public: IpAddr = "203.0.113.20".parse().expect("ip");
    for name in ["api.test", "other.test"] {
        config.resolve_override.insert(name.into(), vec![public]);
    }
    config.dial_override.insert(public, server);
    let svc = warren_runtime::caphttp::service(Arc::new(config), audit).expect("service");
    let mut ns = MountTable::new();
    ns.mount("/cap/http", Arc::new(svc)).expect("mount");
    ns
}

fn exchange(rt: &Runtime, ns: MountTable, request: &str) -> (Status, Value) {
    let p = rt
        .load(probe::exchange("/cap/http/request", request).as_bytes())
        .expect("load");
    let o = rt.run(&p, Invocation::new(vec!["probe".into()], Arc::new(ns)));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status, v)
}

#[test]
fn a_module_reaches_an_allowed_server_through_cap_http_within_one_call() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let audit = Arc::new(RecordingAudit::new());
    let (status, v) = exchange(
        &rt,
        namespace(audit.clone()),
        r#"{"url": "http://api.test/ping"}"#,
    );
    assert_eq!(status, Status::Exited(0));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], "pong /ping");
    let seen = audit.attempts();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host, "api.test");
    assert_eq!(seen[0].decision, Decision::Allowed);
}

#[test]
fn attack_cap_http_refuses_what_the_policy_does_not_allow_and_audits_it() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let audit = Arc::new(RecordingAudit::new());
    // A name outside the allowlist (resolvable, so the refusal is the policy's).
    let (status, v) = exchange(
        &rt,
        namespace(audit.clone()),
        r#"{"url": "http://other.test/"}"#,
    );
    assert_eq!(status, Status::Exited(0));
    assert_eq!(v["status"], 0, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let seen = audit.attempts();
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0].decision, Decision::Allowed);
    // Garbage is answered, not run.
    let (_, v) = exchange(&rt, namespace(audit.clone()), "not json");
    assert_eq!(v["status"], 0);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid request")),
        "{v}"
    );
    assert_eq!(
        audit.attempts().len(),
        1,
        "nothing was attempted for garbage"
    );
    // Without the capability, the file is not there at all.
    let (status, _) = exchange(&rt, MountTable::new(), r#"{"url": "http://api.test/"}"#);
    assert_eq!(status, Status::Exited(44), "ENOENT");
}

/// A module that opens a WebSocket through `/cap/ws/ctl`, sends `hello` on `1/out`, reads the
/// echo from `1/in` and prints the control answer, the echo and the status.
fn ws_module(url: &str) -> String {
    use warren_wasi::probe::{module, s};
    let connect = format!("connect {url}");
    let d = [
        "cap/ws/ctl",
        connect.as_str(),
        "cap/ws/1/out",
        "hello over ws",
        "cap/ws/1/in",
        "cap/ws/1/status",
    ];
    let body = format!(
        "(call $check (call $open (i32.const 3) {ctl} (i32.const 0) (i64.const 66)))
         (call $check (call $write (i32.load (i32.const 16)) {connect}))
         (call $check (call $fd_seek (i32.load (i32.const 16)) (i64.const 0) (i32.const 0) (i32.const 32)))
         (call $check (call $read (i32.load (i32.const 16))))
         (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 8))))
         (call $check (call $open (i32.const 3) {out} (i32.const 0) (i64.const 64)))
         (call $check (call $write (i32.load (i32.const 16)) {hello}))
         (call $check (call $open (i32.const 3) {inn} (i32.const 0) (i64.const 2)))
         (call $check (call $read (i32.load (i32.const 16))))
         (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 8))))
         (call $check (call $open (i32.const 3) {status} (i32.const 0) (i64.const 2)))
         (call $check (call $read (i32.load (i32.const 16))))
         (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 8))))",
        ctl = s(0, &d),
        connect = s(1, &d),
        out = s(2, &d),
        hello = s(3, &d),
        inn = s(4, &d),
        status = s(5, &d),
    );
    module(&body, &d)
}

fn ws_namespace(audit: Arc<RecordingAudit>) -> MountTable {
    let server = warren_testkit::ws::echo_server();
    let mut config = Config::new(Policy::parse(&["echo.test:80".to_string()]).expect("policy"));
    let public: IpAddr = "203.0.113.21".parse().expect("ip");
    for name in ["echo.test", "other.test"] {
        config.resolve_override.insert(name.into(), vec![public]);
    }
    config.dial_override.insert(public, server);
    let svc = warren_runtime::capws::WsFs::new(Arc::new(config), audit).expect("service");
    let mut ns = MountTable::new();
    ns.mount("/cap/ws", Arc::new(svc)).expect("mount");
    ns
}

#[test]
fn a_module_talks_over_a_websocket_as_files() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let audit = Arc::new(RecordingAudit::new());
    let p = rt
        .load(ws_module("ws://echo.test/chat").as_bytes())
        .expect("load");
    let o = rt.run(
        &p,
        Invocation::new(vec![], Arc::new(ws_namespace(audit.clone()))),
    );
    assert_eq!(
        o.status,
        Status::Exited(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1\nhello over wsopen\n");
    let seen = audit.attempts();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "WEBSOCKET");
    assert_eq!(seen[0].host, "echo.test");
    assert_eq!(seen[0].decision, Decision::Allowed);
}

#[test]
fn attack_cap_ws_refuses_destinations_outside_the_policy() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let audit = Arc::new(RecordingAudit::new());
    let ns = ws_namespace(audit.clone());
    let p = rt
        .load(probe::exchange("/cap/ws/ctl", "connect ws://other.test/").as_bytes())
        .expect("load");
    let o = rt.run(&p, Invocation::new(vec![], Arc::new(ns.clone())));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("error: refused"), "{out}");
    assert_ne!(audit.attempts()[0].decision, Decision::Allowed);
    // Malformed control lines and URLs are answered, not attempted.
    for line in [
        "connect http://echo.test/",
        "connect ws://u@echo.test/",
        "open ws://echo.test/",
        "connect wss://echo.test/",
    ] {
        let p = rt
            .load(probe::exchange("/cap/ws/ctl", line).as_bytes())
            .expect("load");
        let o = rt.run(&p, Invocation::new(vec![], Arc::new(ns.clone())));
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with("error:"),
            "{line}"
        );
    }
    assert_eq!(audit.attempts().len(), 1);
    // No connection, no files for it.
    assert!(ns.stat("/cap/ws/1").is_err());
}

fn nostr_namespace(
    relay_allowed: bool,
) -> (
    MountTable,
    warren_testkit::relay::Events,
    Arc<RecordingAudit>,
    String,
) {
    let (relay, events) = warren_testkit::relay::start(|v| {
        serde_json::from_value::<warren_runtime::capnostr::Event>(v.clone())
            .is_ok_and(|e| warren_runtime::capnostr::verify(&e))
    });
    let allow = if relay_allowed {
        "relay.test:80"
    } else {
        "elsewhere.test:80"
    };
    let mut config = Config::new(Policy::parse(&[allow.to_string()]).expect("policy"));
    let public: IpAddr = "203.0.113.22".parse().expect("ip");
    config
        .resolve_override
        .insert("relay.test".into(), vec![public]);
    config.dial_override.insert(public, relay);
    let secret = [0x42u8; 32];
    let identity = Arc::new(warren_runtime::capnostr::Identity::from_secret(&secret).expect("key"));
    let audit = Arc::new(RecordingAudit::new());
    let svc = warren_runtime::capnostr::service(
        identity,
        warren_runtime::capnostr::NostrGrant {
            relays: vec!["ws://relay.test/".into()],
            kinds: vec![(1, 1), (5000, 5999)],
            ..Default::default()
        },
        Arc::new(config),
        audit.clone(),
    )
    .expect("service");
    let mut ns = MountTable::new();
    ns.mount("/cap/nostr", Arc::new(svc)).expect("mount");
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    (ns, events, audit, secret_hex)
}

fn module_exchange(rt: &Runtime, ns: &MountTable, path: &str, body: &str) -> Value {
    let p = rt
        .load(probe::exchange(path, body).as_bytes())
        .expect("load");
    let o = rt.run(&p, Invocation::new(vec![], Arc::new(ns.clone())));
    assert_eq!(o.status, Status::Exited(0));
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

#[test]
fn a_module_signs_and_publishes_nostr_events_without_seeing_the_key() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let (ns, events, audit, secret) = nostr_namespace(true);
    // NIP-01: a text note, signed by the host; the signature verifies independently.
    let e = module_exchange(
        &rt,
        &ns,
        "/cap/nostr/sign",
        r#"{"kind": 1, "content": "hello nostr", "tags": [["t", "warren"]]}"#,
    );
    let ev: warren_runtime::capnostr::Event = serde_json::from_value(e.clone()).expect("an event");
    assert!(warren_runtime::capnostr::verify(&ev), "{e}");
    assert_eq!(
        format!("{}\n", ev.pubkey).as_bytes(),
        ns.read("/cap/nostr/pubkey", 100).expect("pubkey")
    );
    // NIP-90: a job request (kind 5050, input and param tags), published to the relay.
    let r = module_exchange(
        &rt,
        &ns,
        "/cap/nostr/publish",
        r#"{"kind": 5050, "content": "", "tags": [["i", "What is 2+2?", "text"], ["param", "model", "small"]]}"#,
    );
    assert_eq!(r["relays"][0]["accepted"], true, "{r}");
    let stored = events.lock().expect("lock").clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["kind"], 5050);
    assert_eq!(stored[0]["id"], r["event"]["id"]);
    assert_eq!(audit.attempts()[0].method, "WEBSOCKET");
    // The secret key is nowhere in the namespace.
    for f in ["README", "pubkey"] {
        let text =
            String::from_utf8_lossy(&ns.read(&format!("/cap/nostr/{f}"), 1 << 20).expect("read"))
                .to_string();
        assert!(!text.contains(&secret), "{f}");
    }
    assert!(!e.to_string().contains(&secret) && !r.to_string().contains(&secret));
}

#[test]
fn attack_nostr_refuses_forged_fields_other_kinds_and_unlisted_relays() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("rt");
    let (ns, events, audit, _) = nostr_namespace(false);
    // A template may not bring its own id, pubkey or signature.
    let v = module_exchange(
        &rt,
        &ns,
        "/cap/nostr/sign",
        r#"{"kind": 1, "content": "x", "pubkey": "00"}"#,
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field")),
        "{v}"
    );
    // Only the granted kinds.
    let v = module_exchange(
        &rt,
        &ns,
        "/cap/nostr/sign",
        r#"{"kind": 4, "content": "dm"}"#,
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not allowed")),
        "{v}"
    );
    // A relay the egress policy does not allow is refused and audited; nothing arrives.
    let v = module_exchange(
        &rt,
        &ns,
        "/cap/nostr/publish",
        r#"{"kind": 1, "content": "x"}"#,
    );
    assert_eq!(v["relays"][0]["accepted"], false, "{v}");
    assert!(
        v["relays"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("refused")),
        "{v}"
    );
    assert!(events.lock().expect("lock").is_empty());
    assert_ne!(audit.attempts()[0].decision, Decision::Allowed);
}

// ---- Agents of the wasi tier: a manifest's modules as tools, over the task's namespace ----

mod tier {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use warren_llm::Provider;
    use warren_protocol::api::TaskState;
    use warren_runtime::action::{Action, Answer, Query};
    use warren_runtime::cells::Cells;
    use warren_runtime::engine::{Engine, Options};
    use warren_runtime::fake::{FakeCells, ScriptedModel, tool_call as call};
    use warren_runtime::wasicell::{TieredCells, WasiCells};
    use warren_store::Store;
    use warren_store::sqlite::SqliteStore;
    use warren_testkit::TempDir;
    use warren_wasi::probe;

    use crate::{deploy, op, submit, wait_state};

    /// Compile a probe to `dir/name.wasm`.
    fn module(dir: &Path, name: &str, body: &str, data: &[&str]) -> PathBuf {
        let bytes = wat::parse_str(probe::module(body, data)).expect("wat");
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).expect("write module");
        path
    }

    /// A module that makes one call (`PATH` stands for `path`'s pointer and length) and exits
    /// with its errno.
    fn one_call(dir: &Path, name: &str, call: &str, path: &str) -> PathBuf {
        let d = [path];
        let body = format!(
            "(call $check (call {}))",
            call.replace("PATH", &probe::s(0, &d))
        );
        module(dir, name, &body, &d)
    }

    struct Tier {
        _t: TempDir,
        state: PathBuf,
        ws: PathBuf,
        store: Arc<dyn Store>,
        engine: Arc<Engine>,
        manifest: String,
        wasi: Arc<WasiCells>,
    }

    fn tier(name: &str, script: Vec<Vec<warren_llm::ToolCall>>) -> Tier {
        let t = TempDir::new(name);
        let state = t.path().join("state");
        let ws = t.path().join("ws");
        let mods = t.path().join("modules");
        for d in [&state, &ws, &mods] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(ws.join("gone.txt"), "remove me\n").expect("seed");
        std::fs::write(ws.join("keep.txt"), "kept\n").expect("seed");
        // copier: notes.md -> copy.md, and to stdout.
        let d = ["workspace/notes.md", "workspace/copy.md"];
        let copier = module(
            &mods,
            "copier",
            &format!(
                "(call $check (call $open (i32.const 3) {} (i32.const 0) (i64.const 2)))
                 (call $check (call $read (i32.load (i32.const 16))))
                 (i32.store (i32.const 24) (i32.load (i32.const 8)))
                 (call $check (call $open (i32.const 3) {} (i32.const 9) (i64.const 64)))
                 (call $check (call $write (i32.load (i32.const 16)) (i32.const 8192) (i32.load (i32.const 24))))
                 (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 24))))",
                probe::s(0, &d),
                probe::s(1, &d)
            ),
            &d,
        );
        // escaper: `..` out of the namespace; exits with the errno (ENOTCAPABLE is 76).
        let escaper = one_call(
            &mods,
            "escaper",
            "$open (i32.const 3) PATH (i32.const 0) (i64.const 2)",
            "workspace/../../etc/passwd",
        );
        // remover: unlinks a file of the project (a whiteout in the layer).
        let remover = one_call(
            &mods,
            "remover",
            "$path_unlink_file (i32.const 3) PATH",
            "workspace/gone.txt",
        );
        let spinner = module(&mods, "spinner", "(loop $l (br $l))", &[]);
        let manifest = format!(
            "name: coder\ndescription: t\ntier: wasi\n\
             tools: [copier, escaper, remover, spinner, read_file, write_file, finish]\n\
             modules:\n\
             \x20 copier: {{path: {}, description: copy notes.md to copy.md}}\n\
             \x20 escaper: {{path: {}}}\n\
             \x20 remover: {{path: {}}}\n\
             \x20 spinner: {{path: {}}}\n",
            copier.display(),
            escaper.display(),
            remover.display(),
            spinner.display()
        );
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&state.join("warren.db")).expect("store"));
        let model = ScriptedModel::new(vec![("go", script)]);
        let wasi = Arc::new(WasiCells::new(Some(state.join("wasm-cache"))));
        let cells = Arc::new(TieredCells {
            process: FakeCells::new(),
            wasi: Arc::clone(&wasi),
        });
        let opts = Options::for_tests(&state, cells, model as Arc<dyn Provider>).expect("opts");
        let engine = Engine::new(Arc::clone(&store), opts).expect("engine");
        tokio::spawn(Arc::clone(&engine).run());
        Tier {
            _t: t,
            state,
            ws,
            store,
            engine,
            manifest,
            wasi,
        }
    }

    fn tool_calls(store: &Arc<dyn Store>, task: &str) -> Vec<Value> {
        store
            .audit_records(0, Some(task), 10_000)
            .expect("audit")
            .into_iter()
            .filter(|r| r.kind == "tool.call")
            .map(|r| serde_json::from_str(&r.data).unwrap_or(Value::Null))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wasi_tier_agent_runs_its_modules_over_the_tasks_live_namespace() {
        let w = tier(
            "rt-wasi-tier",
            vec![
                vec![call(
                    "w",
                    "write_file",
                    json!({"path": "notes.md", "content": "from the model\n"}),
                )],
                vec![call("c", "copier", json!({}))],
                vec![call("r", "read_file", json!({"path": "copy.md"}))],
                vec![call("x", "escaper", json!({"args": ["--all"]}))],
                vec![call("g", "remover", json!({}))],
                vec![call("f", "finish", json!({"summary": "done"}))],
            ],
        );
        deploy(&w.engine, &w.manifest).await;
        let id = submit(&w.engine, "go", Some(&w.ws)).await;
        let t = wait_state(&w.engine, &id, TaskState::Succeeded).await;
        assert_eq!(t.attempts, 1);
        let calls = tool_calls(&w.store, &id);
        let outcome: Vec<(String, bool)> = calls
            .iter()
            .map(|c| {
                (
                    c["tool"].as_str().unwrap_or("").to_owned(),
                    c["is_error"].as_bool().unwrap_or(true),
                )
            })
            .collect();
        assert_eq!(
            outcome,
            [
                ("write_file".to_owned(), false),
                ("copier".to_owned(), false),
                ("read_file".to_owned(), false),
                // `..` out of the namespace is refused: the module exits with the errno.
                ("escaper".to_owned(), true),
                ("remover".to_owned(), false),
                ("finish".to_owned(), false),
            ],
            "{calls:#?}"
        );
        // The project itself is untouched; the changes are the task's layer, as the process
        // tier's are: what the model wrote, what the module copied, what it removed.
        assert_eq!(
            std::fs::read_to_string(w.ws.join("gone.txt")).expect("lower"),
            "remove me\n"
        );
        assert!(!w.ws.join("copy.md").exists());
        let diff = match w
            .engine
            .handle(&op(), Query::Diff { id: id.clone() }.into())
            .await
            .expect("diff")
        {
            Answer::Diff(d) => d,
            other => panic!("{other:?}"),
        };
        for want in [
            "notes.md",
            "copy.md",
            "+from the model",
            "gone.txt",
            "-remove me",
        ] {
            assert!(diff.contains(want), "{want:?} not in the diff:\n{diff}");
        }
        assert!(!diff.contains("keep.txt"), "{diff}");
        // finish wrote its result through the namespace, into the task's directory.
        let result: Value = serde_json::from_str(
            &std::fs::read_to_string(w.state.join("tasks").join(&id).join("task/result.json"))
                .expect("result.json"),
        )
        .expect("json");
        assert_eq!(result["summary"], "done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_a_wasi_task_stops_a_module_in_an_endless_loop() {
        let w = tier(
            "rt-wasi-cancel",
            vec![vec![call("s", "spinner", json!({}))]],
        );
        deploy(&w.engine, &w.manifest).await;
        let id = submit(&w.engine, "go", Some(&w.ws)).await;
        wait_state(&w.engine, &id, TaskState::Running).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.wasi.running() == 0 {
            assert!(Instant::now() < deadline, "the module never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let asked = Instant::now();
        let a = w
            .engine
            .handle(
                &op(),
                Action::Cancel {
                    id: id.clone(),
                    reason: None,
                }
                .into(),
            )
            .await
            .expect("cancel");
        assert!(matches!(a, Answer::Task(ref t) if t.state == TaskState::Cancelled));
        // The spinning module stops (its cell was terminated), long before its 120 s limit.
        while w.wasi.running() > 0 {
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "the module still runs {:?} after the cancel",
                asked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("the module stopped {:?} after the cancel", asked.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attack_a_wasi_cell_runs_nothing_but_its_manifests_modules() {
        let w = tier("rt-wasi-only", vec![]);
        deploy(&w.engine, &w.manifest).await;
        let mut spec = warren_cell::CellSpec::new(&w.state);
        spec.tier = warren_cell::Tier::Wasi;
        spec.wasm_modules = vec![w.ws.join("nothing.wasm")];
        std::fs::write(w.ws.join("nothing.wasm"), "not WebAssembly").expect("junk module");
        let cell = WasiCells::new(None).start(&spec).expect("start");
        let mut out = warren_cell::Collect::default();
        let mut exec = |argv: Vec<String>| {
            let spec = warren_cell::ExecSpec {
                argv,
                env: vec![],
                cwd: None,
                timeout_ms: Some(5_000),
                max_output_bytes: 1 << 16,
                stdin: false,
            };
            cell.exec(&spec, None, &mut out).expect("exec").failure
        };
        for argv in [
            vec!["/bin/sh".to_owned(), "-c".into(), "id".into()],
            vec![w.state.join("warren.db").display().to_string()],
        ] {
            let (code, why) = exec(argv.clone()).expect("refused");
            assert_eq!(code, warren_cell::FailureCode::NotFound, "{argv:?}: {why}");
        }
        // A listed module that is not WebAssembly is refused as not executable.
        let (code, why) =
            exec(vec![w.ws.join("nothing.wasm").display().to_string()]).expect("refused");
        assert_eq!(code, warren_cell::FailureCode::NotExecutable, "{why}");
        assert!(out.stdout.is_empty());
    }
}
