//! `warren skill list|show|validate`: the Agent Skills a task would get, and checking a
//! skill folder the way the reference validator does (`warren_skills`).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use crate::term::printable as safe;

/// `warren skill …`.
#[derive(Subcommand, Debug)]
pub enum SkillCommand {
    /// Every skill found (project, user, operator folders), valid or not, and whether used.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One skill's properties and where it is.
    Show {
        /// Its name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check skill folders (each holding a SKILL.md); exit 1 naming every problem.
    Validate {
        /// The folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// The skill folders a task gets, in precedence order: the project's (when `trusted`), the
/// user's, the operator's.
pub fn used_roots(project: Option<&Path>, trusted: bool) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    warren_skills::roots(home.as_deref(), project, trusted)
        .into_iter()
        .filter(|r| r.used)
        .map(|r| r.path)
        .collect()
}

fn found() -> Vec<(
    warren_skills::Root,
    Result<warren_skills::Skill, warren_skills::Invalid>,
)> {
    let cwd = std::env::current_dir().ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let trusted = crate::load_config()
        .ok()
        .and_then(|l| l.project)
        .is_some_and(|p| p.trusted);
    let mut out = Vec::new();
    for root in warren_skills::roots(home.as_deref(), cwd.as_deref(), trusted) {
        match warren_skills::discover(&root.path) {
            Ok(skills) => out.extend(skills.into_iter().map(|s| (root.clone(), s))),
            Err(e) => out.push((root.clone(), Err(e))),
        }
    }
    out
}

fn problems(e: &warren_skills::Invalid) -> String {
    e.problems.join("; ")
}

/// Run `warren skill …`.
pub fn run(what: SkillCommand) -> i32 {
    match what {
        SkillCommand::List { json } => {
            let all = found();
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(root, s)| match s {
                        Ok(s) => json!({"name": s.name, "description": s.description,
                            "dir": s.dir, "origin": root.origin, "used": root.used, "valid": true}),
                        Err(e) => json!({"dir": e.dir, "origin": root.origin, "used": false,
                            "valid": false, "problems": e.problems}),
                    })
                    .collect();
                println!("{}", crate::client::json_line(&v));
                return 0;
            }
            if all.is_empty() {
                println!(
                    "no skills (folders: .warren/skills or .agents/skills in a trusted project, ~/.config/warren/skills, ~/.agents/skills, /etc/warren/skills)"
                );
            }
            for (root, s) in &all {
                let origin = serde_json::to_value(root.origin).unwrap_or_default();
                let origin = origin.as_str().unwrap_or_default();
                match s {
                    Ok(s) => println!(
                        "{:<24} {:<8} {}{}",
                        safe(&s.name),
                        origin,
                        safe(&s.description),
                        if root.used {
                            ""
                        } else {
                            "  (not used: the project is not trusted)"
                        }
                    ),
                    Err(e) => println!(
                        "{:<24} {:<8} invalid: {}",
                        safe(&e.dir.display().to_string()),
                        origin,
                        safe(&problems(e))
                    ),
                }
            }
            0
        }
        SkillCommand::Show { name, json } => {
            let hit = found()
                .into_iter()
                .find_map(|(root, s)| s.ok().filter(|s| s.name == name).map(|s| (root, s)));
            match hit {
                None => {
                    eprintln!("warren: no valid skill named {name:?} (see `warren skill list`)");
                    1
                }
                Some((root, s)) if json => {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["origin"] = serde_json::to_value(root.origin).unwrap_or_default();
                    v["used"] = json!(root.used);
                    println!("{}", crate::client::json_line(&v));
                    0
                }
                Some((root, s)) => {
                    println!("name:        {}", safe(&s.name));
                    println!("description: {}", safe(&s.description));
                    println!("folder:      {}", safe(&s.dir.display().to_string()));
                    println!("used:        {}", root.used);
                    for (k, v) in [
                        ("license", &s.license),
                        ("compatibility", &s.compatibility),
                        ("allowed-tools", &s.allowed_tools),
                    ] {
                        if let Some(v) = v {
                            println!("{k:<12} {}", safe(v));
                        }
                    }
                    0
                }
            }
        }
        SkillCommand::Validate { dirs, json } => validate(&dirs, json),
    }
}

fn validate(dirs: &[PathBuf], json: bool) -> i32 {
    let results: Vec<(&Path, Result<warren_skills::Skill, warren_skills::Invalid>)> = dirs
        .iter()
        .map(|d| (d.as_path(), warren_skills::validate(d)))
        .collect();
    let bad = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let v: Vec<_> = results
            .iter()
            .map(|(d, r)| match r {
                Ok(s) => json!({"dir": d, "valid": true, "name": s.name}),
                Err(e) => json!({"dir": d, "valid": false, "problems": e.problems}),
            })
            .collect();
        println!("{}", crate::client::json_line(&v));
    } else {
        for (d, r) in &results {
            let shown = d.display().to_string();
            let d = safe(&shown);
            match r {
                Ok(s) => println!("{d}: valid skill {}", safe(&s.name)),
                Err(e) => {
                    println!("{d}: invalid");
                    for p in &e.problems {
                        println!("  - {}", safe(p));
                    }
                }
            }
        }
    }
    i32::from(bad > 0)
}
