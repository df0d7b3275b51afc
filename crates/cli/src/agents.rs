//! `warren agent deploy|list|show|remove`: manifests in the store (the local store until the
//! daemon fronts it with its API).

use std::path::Path;

use clap::Subcommand;
use warren_store::Store;
use warren_store::sqlite::SqliteStore;

/// `warren agent …`.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Validate a manifest (YAML) and deploy it as the agent's next version.
    Deploy {
        /// Manifest file.
        file: std::path::PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Deployed agents (latest versions).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One agent's manifest (latest or a given version).
    Show {
        /// Agent name.
        name: String,
        /// Version (default: latest).
        #[arg(long)]
        version: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove every version of an agent.
    Remove {
        /// Agent name.
        name: String,
    },
}

fn tool_names() -> Vec<String> {
    warren_agent::tools::specs()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// Run an agent subcommand.
pub fn run(cmd: AgentCommand, state: &Path) -> i32 {
    let fail = |msg: String| {
        eprintln!("warren: {msg}");
        1
    };
    if let Err(e) = std::fs::create_dir_all(state) {
        return fail(format!("{}: {e}", state.display()));
    }
    let store = match SqliteStore::open(&state.join("warren.db")) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match cmd {
        AgentCommand::Deploy { file, json } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return fail(format!("{}: {e}", file.display())),
            };
            let names = tool_names();
            let known: Vec<&str> = names.iter().map(String::as_str).collect();
            let m = match warren_config::manifest::parse(&file, &text, &known) {
                Ok(m) => m,
                Err(e) => return fail(e.to_string()),
            };
            match store.put_agent(&m.name, &text) {
                Ok(a) if json => {
                    println!(
                        "{}",
                        serde_json::json!({"name": a.name, "version": a.version, "manifest": m})
                    );
                    0
                }
                Ok(a) => {
                    eprintln!("warren: deployed {} version {}", a.name, a.version);
                    0
                }
                Err(e) => fail(e.to_string()),
            }
        }
        AgentCommand::List { json } => match store.list_agents() {
            Ok(list) if json => {
                let v: Vec<_> = list.iter().map(|a| serde_json::json!({"name": a.name, "version": a.version, "created_ms": a.created_ms})).collect();
                println!("{}", serde_json::Value::Array(v));
                0
            }
            Ok(list) => {
                for a in list {
                    println!("{}  v{}", a.name, a.version);
                }
                0
            }
            Err(e) => fail(e.to_string()),
        },
        AgentCommand::Show {
            name,
            version,
            json,
        } => match store.get_agent(&name, version) {
            Ok(a) if json => {
                println!(
                    "{}",
                    serde_json::json!({"name": a.name, "version": a.version, "manifest": a.manifest})
                );
                0
            }
            Ok(a) => {
                print!("{}", a.manifest);
                0
            }
            Err(e) => fail(e.to_string()),
        },
        AgentCommand::Remove { name } => match store.delete_agent(&name) {
            Ok(()) => {
                eprintln!("warren: removed {name}");
                0
            }
            Err(e) => fail(e.to_string()),
        },
    }
}
