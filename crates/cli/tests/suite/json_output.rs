//! The `--json` outputs of `warren task …` and `warren status`, as snapshots
//! (`snapshots/`; `cargo insta review` after an intended change). Under CI=true insta writes
//! nothing and a changed or missing snapshot fails. Ids, times and what depends on the host
//! are redacted. The agent commands' snapshots are taken in `agents.rs`, local and remote.

use std::time::Duration;

use serde_json::{Value, json};
use warren_testkit::mockllm::MockLlm;
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, MANIFEST, deploy, reply, warren_at};
use super::{stderr, stdout};

/// What a command printed on stdout, as JSON, and its exit status.
fn json_of(o: &std::process::Output) -> (Value, Option<i32>) {
    let v = serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("{e}: {:?} {}", stdout(o), stderr(o)));
    (v, o.status.code())
}

#[test]
fn task_commands_print_the_apis_json() {
    if !require_process_tier() {
        return;
    }
    let t = TempDir::new("json-task");
    let state = t.path().join("state");
    deploy(&state, MANIFEST);
    let mock = MockLlm::start_responder(|_| {
        reply(vec![("f1", "finish", json!({"summary": "nothing to do"}))])
    })
    .unwrap();
    let d = DaemonProc::start(&state, &mock, &[]);
    let args = [
        "task",
        "submit",
        "coder",
        "do nothing",
        "--no-workspace",
        "--priority",
        "3",
        "--json",
    ];
    let (submitted, code) = json_of(&warren_at(&state, &args));
    assert_eq!(code, Some(0));
    let id = submitted["id"].as_str().unwrap().to_owned();
    d.wait_done(&id, Duration::from_secs(60));
    insta::assert_json_snapshot!("task_submit_json", submitted, {
        ".id" => "[id]", ".created_ms" => "[ms]", ".updated_ms" => "[ms]",
    });

    let (status, code) = json_of(&warren_at(&state, &["task", "status", &id, "--json"]));
    assert_eq!(code, Some(0));
    insta::assert_json_snapshot!("task_status_json", status, {
        ".id" => "[id]", ".created_ms" => "[ms]", ".updated_ms" => "[ms]",
    });

    let (list, code) = json_of(&warren_at(&state, &["task", "list", "--json"]));
    assert_eq!(code, Some(0));
    assert_eq!(list[0]["id"], id.as_str());
    insta::assert_json_snapshot!("task_list_json", list, {
        "[].id" => "[id]", "[].created_ms" => "[ms]", "[].updated_ms" => "[ms]",
    });

    let (result, code) = json_of(&warren_at(&state, &["task", "result", &id, "--json"]));
    assert_eq!(code, Some(0));
    insta::assert_json_snapshot!("task_result_json", result);

    // A refusal: the daemon's ErrorBody, with its status.
    let (missing, code) = json_of(&warren_at(
        &state,
        &["task", "status", "t000000000000", "--json"],
    ));
    assert_eq!(code, Some(1));
    insta::assert_json_snapshot!("task_status_not_found_json", missing);

    let (health, code) = json_of(&warren_at(&state, &["status", "--json"]));
    assert_eq!(code, Some(0));
    insta::assert_json_snapshot!("status_json", health, {
        ".uptime_s" => "[s]", ".version" => "[version]", ".tiers" => "[tiers]",
    });
}

#[test]
fn without_a_daemon_the_json_says_so() {
    let t = TempDir::new("json-none");
    let state = t.path().join("state");
    // The message names the socket's path: redacted.
    let (list, code) = json_of(&warren_at(&state, &["task", "list", "--json"]));
    assert_eq!(code, Some(3));
    assert!(
        list["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warren daemon start"),
        "{list}"
    );
    insta::assert_json_snapshot!("task_list_unreachable_json", list, {
        ".error.message" => "[message]",
    });
    let (status, code) = json_of(&warren_at(&state, &["status", "--json"]));
    assert_eq!(code, Some(3));
    insta::assert_json_snapshot!("status_not_running_json", status, {
        ".error" => "[message]",
    });
}
