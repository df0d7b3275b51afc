//! `warren trust [DIR]`, `--revoke`, `--list`: which projects' `.warren/config.toml` may set
//! endpoints, the provider and the other settings that decide where requests and credentials
//! go (`warren_config::trust`).

use std::path::{Path, PathBuf};

use clap::Args;

/// Arguments of `warren trust`.
#[derive(Args, Debug)]
pub struct TrustArgs {
    /// The project (default: the current directory).
    #[arg(value_name = "DIR", conflicts_with = "list")]
    dir: Option<PathBuf>,
    /// Stop trusting the project.
    #[arg(long, conflicts_with = "list")]
    revoke: bool,
    /// List trusted projects and whether each trust still holds.
    #[arg(long)]
    list: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `warren trust`.
pub fn run(a: TrustArgs) -> i32 {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        eprintln!("warren: HOME is not set: there is no ~/.config/warren to keep trust in");
        return 1;
    };
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if a.list {
        return list(&home, a.json);
    }
    if a.revoke {
        return match warren_config::trust::revoke(&home, &dir) {
            Ok(was) => {
                if a.json {
                    println!("{}", serde_json::json!({"revoked": was}));
                } else if was {
                    eprintln!(
                        "warren: {} is no longer trusted: its endpoints and provider are ignored again",
                        dir.display()
                    );
                } else {
                    eprintln!("warren: {} was not trusted", dir.display());
                }
                0
            }
            Err(e) => {
                eprintln!("warren: {e}");
                1
            }
        };
    }
    trust(&home, &dir, a.json)
}

fn trust(home: &Path, dir: &Path, json: bool) -> i32 {
    match warren_config::trust::trust(home, dir) {
        Ok(t) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "dir": t.dir,
                        "sha256": t.sha256,
                        "now_applied": t.now_applied,
                        "never_applied": t.never,
                    })
                );
                return 0;
            }
            eprintln!(
                "warren: trusted {}/{} (sha256 {})",
                t.dir,
                warren_config::trust::PROJECT_FILE,
                t.sha256
            );
            if t.now_applied.is_empty() {
                eprintln!("  it sets nothing that needed trust");
            } else {
                eprintln!("  these settings now apply:");
                for s in &t.now_applied {
                    eprintln!("    {s}");
                }
            }
            if !t.never.is_empty() {
                eprintln!(
                    "  never applied from a project file, trusted or not: {} (use the provider's variable or ~/.config/warren/config.toml)",
                    t.never.join(", ")
                );
            }
            eprintln!(
                "  the trust ends when the file changes; `warren trust --revoke` ends it now"
            );
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

fn list(home: &Path, json: bool) -> i32 {
    match warren_config::trust::list(home) {
        Ok(entries) => {
            if json {
                let v: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|(e, s)| {
                        serde_json::json!({"dir": e.path, "sha256": e.sha256, "status": s.name()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if entries.is_empty() {
                eprintln!("warren: no trusted projects");
            } else {
                for (e, s) in &entries {
                    let note = match s {
                        warren_config::trust::Status::Holds => "",
                        warren_config::trust::Status::Changed => {
                            "  (changed since it was trusted: not trusted now)"
                        }
                        warren_config::trust::Status::Missing => {
                            "  (no readable .warren/config.toml)"
                        }
                    };
                    println!("{}  {}{note}", s.name(), e.path);
                }
            }
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}
