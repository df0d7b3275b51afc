//! `warren skill`: which skills a task would get (a project's only once trusted), and
//! validation with the reference validator's verdicts.

use std::process::Command;

use serde_json::Value;
use warren_testkit::TempDir;

use super::{WARREN, stdout};

fn skill(dir: &std::path::Path, name: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("SKILL.md"),
        format!("---\nname: {name}\ndescription: The {name} skill.\n---\nDo it.\n"),
    )
    .unwrap();
}

#[test]
fn a_project_s_skills_are_listed_but_unused_until_the_project_is_trusted() {
    let t = TempDir::new("skills-list");
    let home = t.path().join("home");
    let project = t.path().join("project");
    skill(&home.join(".config/warren/skills"), "mine");
    skill(&project.join(".warren/skills"), "theirs");
    std::fs::create_dir_all(project.join(".warren/skills/Broken")).unwrap();
    std::fs::write(
        project.join(".warren/skills/Broken/SKILL.md"),
        "---\nname: Broken\ndescription: x\n---\n",
    )
    .unwrap();
    let o = Command::new(WARREN)
        .args(["skill", "list", "--json"])
        .current_dir(&project)
        .env("HOME", &home)
        .env_remove("WARREN_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success());
    let listed: Vec<Value> = serde_json::from_str(stdout(&o).trim()).unwrap();
    let by = |name: &str| {
        listed
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed: {listed:?}"))
    };
    assert_eq!(by("mine")["used"], true);
    assert_eq!(by("mine")["origin"], "user");
    assert_eq!(by("theirs")["used"], false, "an untrusted project's skill");
    assert_eq!(by("theirs")["origin"], "project");
    let broken = listed.iter().find(|s| s["valid"] == false).unwrap();
    assert!(
        broken["problems"][0]
            .as_str()
            .unwrap()
            .contains("must be lowercase")
    );

    let o = Command::new(WARREN)
        .args(["skill", "validate"])
        .arg(home.join(".config/warren/skills/mine"))
        .arg(project.join(".warren/skills/Broken"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "one invalid folder fails the command"
    );
    assert!(stdout(&o).contains("valid skill mine"));
    assert!(stdout(&o).contains("- Skill name 'Broken' must be lowercase"));
}

/// A daemon task whose manifest names a skill: the catalog is in the system prompt, the skill
/// is at /skills read-only, its script runs confined in the task's cell, and a link planted
/// in the skill folder is copied as a link (it resolves inside the cell, never on the host).
#[test]
fn a_task_s_skill_is_catalogued_mounted_read_only_and_its_script_runs_in_the_cell() {
    use serde_json::json;
    use warren_testkit::mockllm::MockLlm;

    use super::daemon::{DaemonProc, deploy, reply, tool_results, workspace};
    if !warren_testkit::require_process_tier() {
        return;
    }
    let t = TempDir::new("skills-task");
    let home = t.path().join("home");
    let skills = home.join(".config/warren/skills");
    skill(&skills, "greeter");
    let dir = skills.join("greeter");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/greet.sh"),
        "#!/bin/sh\necho \"hello from $(basename $(dirname $(dirname $0)))\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("scripts/greet.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let secret = t.path().join("host-secret");
    std::fs::write(&secret, "host only\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("secret-link")).unwrap();
    skill(&skills, "unused");
    let state = t.path().join("state");
    deploy(
        &state,
        "name: skilled
description: has a skill
provider: openai
model: mock-model
tools: [shell, finish]
skills: [greeter]
",
    );
    let mock = MockLlm::start_responder(|b| match tool_results(b) {
        0 => reply(vec![(
            "s1",
            "shell",
            json!({"command": "/skills/greeter/scripts/greet.sh"}),
        )]),
        1 => reply(vec![(
            "s2",
            "shell",
            json!({"command": "touch /skills/greeter/x; echo status=$?; cat /skills/greeter/secret-link; ls /skills"}),
        )]),
        _ => reply(vec![("f", "finish", json!({"summary": "greeted"}))]),
    })
    .unwrap();
    let d = DaemonProc::start_env(&state, &mock, &[], &[("HOME", home.to_str().unwrap())]);
    let ws = workspace(&t);
    let (_, task) = d.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"agent": "skilled", "goal": "greet", "workspace": ws.display().to_string()})),
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let done = d.wait_done(&id, std::time::Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let reqs = mock.requests();
    let system = reqs[0].body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        system.contains("<name>greeter</name>")
            && system.contains("<location>/skills/greeter/SKILL.md</location>")
            && !system.contains("unused"),
        "{system}"
    );
    let result_of = |call: &str| -> String {
        reqs.iter()
            .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == call)
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert!(
        result_of("s1").contains("hello from greeter"),
        "{}",
        result_of("s1")
    );
    let s2 = result_of("s2");
    assert!(
        s2.contains("Read-only file system") && !s2.contains("status=0"),
        "{s2}"
    );
    assert!(
        !s2.contains("host only"),
        "the link resolved in the cell: {s2}"
    );
    assert!(s2.contains("greeter") && !s2.contains("unused"), "{s2}");
}
