//! `warren init`, `warren config show`, and the configuration reaching `warren run`.

use warren_testkit::mockllm::{MockLlm, Reply, ToolCall, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::{WARREN, stderr, stdout};

fn warren_in(
    dir: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = std::process::Command::new(WARREN);
    c.args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("WARREN_STATE_DIR", dir.join("state"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WARREN__") || k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn init_then_show_with_provenance_and_redaction() {
    let dir = TempDir::new("proj");
    let home = TempDir::new("home");
    let o = warren_in(dir.path(), home.path(), &["init"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warren: indexed"),
        "init indexes the project: {}",
        stderr(&o)
    );
    let file = dir.path().join(".warren/config.toml");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("# model =")
    );
    std::fs::write(
        &file,
        "[agent]\nmodel = \"project-model\"\n[providers.openai]\napi_key = \"sk-in-file\"\n",
    )
    .unwrap();
    let o = warren_in(
        dir.path(),
        home.path(),
        &["config", "show"],
        &[("WARREN__AGENT__MAX_TURNS", "9")],
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "agent.model = \"project-model\"  # {}",
            file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("agent.max_turns = 9  # env WARREN__AGENT__MAX_TURNS"),
        "{out}"
    );
    assert!(out.contains("agent.timeout = \"30m\"  # default"), "{out}");
    assert!(
        out.contains("providers.openai.api_key = \"<redacted>\"") && !out.contains("sk-in-file"),
        "{out}"
    );
    let o = warren_in(dir.path(), home.path(), &["config", "show", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["agent.model"]["value"], "project-model");
}

#[test]
fn a_bad_config_names_file_line_and_column_everywhere() {
    let dir = TempDir::new("proj");
    let home = TempDir::new("home");
    std::fs::create_dir_all(dir.path().join(".warren")).unwrap();
    let file = dir.path().join(".warren/config.toml");
    std::fs::write(&file, "[agent]\nmax_turns = \"lots\"\n").unwrap();
    let o = warren_in(dir.path(), home.path(), &["config", "show"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{}:2:13:", file.display())),
        "{}",
        stderr(&o)
    );
    let o = warren_in(
        dir.path(),
        home.path(),
        &["run", "--replay", "/nonexistent", "goal"],
        &[],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!("{}:2:13:", file.display())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_takes_provider_url_and_model_from_the_project_config() {
    if !require_process_tier() {
        return;
    }
    let dir = TempDir::new("proj");
    let home = TempDir::new("home");
    let mock = MockLlm::start(vec![Turn::Reply(Reply {
        tool_calls: vec![ToolCall {
            id: "f".into(),
            name: "finish".into(),
            arguments: r#"{"summary":"ok"}"#.into(),
        }],
        ..Default::default()
    })])
    .unwrap();
    std::fs::create_dir_all(dir.path().join(".warren")).unwrap();
    std::fs::write(
        dir.path().join(".warren/config.toml"),
        format!("[agent]\nprovider = \"openai\"\nmodel = \"model-from-config\"\n[providers.openai]\nbase_url = \"{}/v1\"\napi_key = \"sk-from-config\"\n", mock.base_url()),
    )
    .unwrap();
    let o = warren_in(
        dir.path(),
        home.path(),
        &["run", "--no-apply", "do nothing"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let req = &mock.requests()[0];
    assert_eq!(req.body["model"], "model-from-config");
    assert_eq!(req.header("authorization"), Some("Bearer sk-from-config"));
}
