//! Cells never see Warren's own files: the project's `.warren/`, the state directory (database,
//! daemon socket, API token, layers), Warren's configuration (keys, trust) — masked when they
//! lie inside the workspace, refused when masking would not hold.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, MANIFEST, deploy, reply, tool_results};
use super::{WARREN, stderr, stdout};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Prints what the cell can read of Warren's files, then the directories' listings.
const LOOK: &str = "for f in /workspace/.warren/config.toml /workspace/state/token /workspace/state/warren.db; do \
    cat $f 2>/dev/null && echo READ:$f; done; \
    echo \"warren:[$(ls -A /workspace/.warren)] state:[$(ls -A /workspace/state)]\"";

fn project(t: &TempDir) -> PathBuf {
    let ws = t.path().join("project");
    std::fs::create_dir_all(ws.join(".warren")).unwrap();
    std::fs::write(
        ws.join(".warren/config.toml"),
        "# PROJECT-CONFIG-CONTENT\n[agent]\nmodel = \"m\"\n",
    )
    .unwrap();
    std::fs::write(ws.join("README"), "a project\n").unwrap();
    // An ordinary owner, so a root-run cell maps to it as it would for a developer's checkout.
    for p in ["", ".warren", ".warren/config.toml", "README"] {
        let _ = std::os::unix::fs::chown(ws.join(p), Some(4242), Some(4242));
    }
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o755)).unwrap();
    ws
}

fn plant_state(state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("token"), "PLANTED-API-TOKEN\n").unwrap();
    std::fs::write(state.join("warren.db"), "PLANTED-DATABASE\n").unwrap();
}

fn exec(state: &Path, ws: &Path, mode: &str, script: &str) -> Output {
    Command::new(WARREN)
        .arg("--state-dir")
        .arg(state)
        .args(["exec", "--workspace"])
        .arg(ws)
        .args([mode, "--", "sh", "-c", script])
        .output()
        .unwrap()
}

#[test]
fn the_project_warren_dir_and_a_state_dir_inside_the_workspace_are_invisible_in_ro_rw_and_cow_cells()
 {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("own-files");
    let ws = project(&t);
    let state = ws.join("state");
    plant_state(&state);
    for mode in ["--ro", "--rw", "--cow"] {
        let o = exec(&state, &ws, mode, LOOK);
        assert_eq!(code(&o), 0, "{mode}: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            "warren:[] state:[]\n",
            "{mode}: Warren's files are visible"
        );
        // Writing there fails too; in rw nothing reaches the host.
        let o = exec(
            &state,
            &ws,
            mode,
            "echo x > /workspace/.warren/config.toml || echo refused1; \
             echo x > /workspace/.warren/new.toml || echo refused2; \
             echo x > /workspace/state/token || echo refused3; \
             rmdir /workspace/.warren || echo refused4; \
             mv /workspace/.warren /workspace/moved || echo refused5",
        );
        assert_eq!(
            stdout(&o),
            "refused1\nrefused2\nrefused3\nrefused4\nrefused5\n",
            "{mode}: {}",
            stderr(&o)
        );
        assert_eq!(
            std::fs::read_to_string(ws.join(".warren/config.toml")).unwrap(),
            "# PROJECT-CONFIG-CONTENT\n[agent]\nmodel = \"m\"\n"
        );
        assert_eq!(
            std::fs::read_to_string(state.join("token")).unwrap(),
            "PLANTED-API-TOKEN\n"
        );
        assert!(!ws.join(".warren/new.toml").exists() && !ws.join("moved").exists());
    }
}

#[test]
fn a_cell_cannot_create_the_project_warren_dir() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("own-create");
    let state = t.path().join("state");
    let ws = t.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    let _ = std::os::unix::fs::chown(&ws, Some(4242), Some(4242));
    let plant = "mkdir -p /workspace/.warren; echo '[agent]' > /workspace/.warren/config.toml || echo refused; \
                 echo x > /workspace/other.txt";
    // Read-write: the host gets an empty .warren (the mask's mountpoint), never a config.
    let o = exec(&state, &ws, "--rw", plant);
    assert_eq!(stdout(&o), "refused\n", "{}", stderr(&o));
    assert!(
        ws.join("other.txt").exists(),
        "the rest of the workspace is writable"
    );
    assert!(!ws.join(".warren/config.toml").exists());
    assert_eq!(std::fs::read_dir(ws.join(".warren")).unwrap().count(), 0);
    // Copy-on-write, project without .warren: not in the layer either.
    std::fs::remove_dir(ws.join(".warren")).unwrap();
    let o = exec(&state, &ws, "--cow", plant);
    assert_eq!(stdout(&o), "refused\n", "{}", stderr(&o));
    let err = stderr(&o);
    let listed: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(
        listed.iter().any(|l| l.ends_with(" other.txt"))
            && !listed.iter().any(|l| l.contains(".warren")),
        "{err}"
    );
    let id = err
        .split("kept as cell ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(
        !state
            .join("changes")
            .join(id)
            .join("upper/.warren")
            .exists(),
        "the mountpoint is removed with the cell"
    );
    // Read-write over a .warren that is a link: refused (the cell could swap it for a dir).
    std::os::unix::fs::symlink("elsewhere", ws.join(".warren")).unwrap();
    let o = exec(&state, &ws, "--rw", "true");
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("is not a directory"), "{}", stderr(&o));
}

/// Run `warren ARGS` as an ordinary user whose home is `home` (uid 65534 when the tests run as
/// root, else the caller), with the default state directory: `~/.local/state/warren`.
fn as_user(bin: &Path, home: &Path, args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The copied binary may still be open for writing in a child another test forked in the
    // meantime (ETXTBSY until that child execs): try again.
    for _ in 0..50 {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        c.args(args)
            .env("HOME", home)
            .env_remove("WARREN_STATE_DIR")
            .env_remove("XDG_STATE_HOME");
        match c.output() {
            Ok(o) if !stderr(&o).contains("Text file busy") => return o,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {}
            Err(e) => panic!("{}: {e}", bin.display()),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} stayed busy", bin.display());
}

#[test]
fn an_ordinary_user_working_from_home_keeps_state_keys_and_trust_out_of_its_cells() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("own-home");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = t.path().join("warren");
    std::fs::copy(WARREN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = t.path().join("home");
    let state = home.join(".local/state/warren");
    plant_state(&state);
    let conf = home.join(".config/warren");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("config.toml"),
        "[providers.openai]\napi_key = \"sk-PLANTED-USER-KEY\"\n",
    )
    .unwrap();
    std::fs::write(conf.join("trusted.toml"), "").unwrap();
    std::fs::write(home.join("notes.txt"), "mine\n").unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let o = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&home)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let h = home.to_str().unwrap();
    let look = "for f in .local/state/warren/token .local/state/warren/warren.db .config/warren/config.toml; do \
                cat /workspace/$f 2>/dev/null && echo READ:$f; done; \
                echo \"[$(ls -A /workspace/.local/state/warren)][$(ls -A /workspace/.config/warren)]\"; cat /workspace/notes.txt";
    for mode in ["--ro", "--cow"] {
        let o = as_user(
            &bin,
            &home,
            &["exec", "--workspace", h, mode, "--", "sh", "-c", look],
        );
        assert_eq!(code(&o), 0, "{mode}: {}", stderr(&o));
        assert_eq!(stdout(&o), "[][]\nmine\n", "{mode}: {}", stderr(&o));
    }
    // Read-write: the cell could move ~/.local or ~/.config away and plant its own in their
    // place (a socket posing as the daemon, a trust file): refused, clearly.
    let o = as_user(
        &bin,
        &home,
        &["exec", "--workspace", h, "--rw", "--", "true"],
    );
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lies inside the read-write workspace"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_workspace_that_is_or_is_inside_warrens_own_directories_is_refused() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("own-refused");
    let state = t.path().join("state");
    std::fs::create_dir_all(state.join("sub")).unwrap();
    for ws in [state.clone(), state.join("sub")] {
        for mode in ["--ro", "--rw", "--cow"] {
            let o = exec(&state, &ws, mode, "true");
            assert_eq!(code(&o), 125, "{mode}");
            assert!(
                stderr(&o).contains("is the state directory")
                    && stderr(&o).contains("or inside it"),
                "{}",
                stderr(&o)
            );
        }
    }
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join(".config/warren")).unwrap();
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args(["exec", "--ro", "--workspace"])
        .arg(home.join(".config/warren"))
        .args(["--", "true"])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("Warren's configuration"),
        "{}",
        stderr(&o)
    );
}

/// A daemon whose state directory lies inside the project it works on: its tasks' cells see
/// neither the API token nor the database, and cannot connect to its socket.
#[test]
fn a_task_cannot_reach_the_daemon_socket_token_or_database_inside_its_workspace() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("own-daemon");
    let ws = t.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("README"), "a project\n").unwrap();
    let state = ws.join(".state");
    deploy(&state, MANIFEST);
    let probe = "ls -A /workspace/.state; cat /workspace/.state/token; \
                 python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('/workspace/.state/warren.sock'); print('CONNECTED')\"; \
                 echo END";
    let mock = MockLlm::start_responder(move |body: &Value| match tool_results(body) {
        0 => reply(vec![("s1", "shell", json!({ "command": probe }))]),
        _ => reply(vec![("f1", "finish", json!({"summary": "looked"}))]),
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &["--listen", "127.0.0.1:0"]);
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    assert!(state.join("warren.sock").exists() && !token.trim().is_empty());
    let o = Command::new(WARREN)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "task",
            "submit",
            "coder",
            "look around",
            "--follow",
            "--workspace",
        ])
        .arg(&ws)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        stdout(&o),
        stderr(&o),
        d.log.lock().unwrap()
    );
    let reqs = mock.requests();
    let last = reqs.last().unwrap();
    let result = last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(result.contains("END"), "{result}");
    assert!(
        !result.contains("CONNECTED"),
        "the cell reached the daemon: {result}"
    );
    assert!(
        result.contains("FileNotFoundError") || result.contains("No such file"),
        "{result}"
    );
    assert!(!result.contains(token.trim()), "the token leaked: {result}");
    assert!(
        !result.contains("warren.db") && !result.contains("warren.sock\n"),
        "{result}"
    );
}
