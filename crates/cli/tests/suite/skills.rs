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
