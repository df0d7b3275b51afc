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
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Run an agent subcommand: through a remote daemon's API when `--url` (or `WARREN_URL`) is
/// given, else on the local store (which a local daemon shares).
pub fn run(cmd: AgentCommand, url: Option<&str>, state: &Path) -> i32 {
    let remote = url
        .map(str::to_owned)
        .or_else(|| std::env::var("WARREN_URL").ok().filter(|u| !u.is_empty()));
    match remote {
        Some(u) => run_remote(cmd, &u, state),
        None => run_local(cmd, state),
    }
}

fn run_remote(cmd: AgentCommand, url: &str, state: &Path) -> i32 {
    use hyper::Method;
    let target = match crate::client::target(Some(url), state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warren: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: {e}");
            return 1;
        }
    };
    let (method, path, body, json) = match &cmd {
        AgentCommand::Deploy { file, json } => {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("warren: {}: {e}", file.display());
                    return 1;
                }
            };
            // Validate here first, so errors name the real file.
            if let Err(e) = warren_runtime::engine::parse_manifest(file, &text) {
                eprintln!("warren: {e}");
                return 1;
            }
            (
                Method::POST,
                "/v1/agents".to_owned(),
                Some(serde_json::json!({"manifest": text})),
                *json,
            )
        }
        AgentCommand::List { json } => (Method::GET, "/v1/agents".to_owned(), None, *json),
        AgentCommand::Show { name, json, .. } => {
            (Method::GET, format!("/v1/agents/{name}"), None, *json)
        }
        AgentCommand::Remove { name, json } => {
            (Method::DELETE, format!("/v1/agents/{name}"), None, *json)
        }
    };
    match rt.block_on(crate::client::call(&target, method, &path, body.as_ref())) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            match (&cmd, json) {
                (AgentCommand::Remove { name, .. }, true) => {
                    println!("{}", serde_json::json!({"removed": name}));
                }
                (AgentCommand::Remove { name, .. }, false) => eprintln!("warren: removed {name}"),
                (_, true) => println!("{v}"),
                (AgentCommand::Deploy { .. }, false) => {
                    eprintln!(
                        "warren: deployed {} version {}",
                        v["name"].as_str().unwrap_or_default(),
                        v["version"]
                    );
                }
                (AgentCommand::List { .. }, false) => {
                    for a in v.as_array().cloned().unwrap_or_default() {
                        println!(
                            "{}  v{}",
                            a["name"].as_str().unwrap_or_default(),
                            a["version"]
                        );
                    }
                }
                (AgentCommand::Show { .. }, false) => {
                    print!("{}", v["manifest"].as_str().unwrap_or_default());
                }
            }
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            if e.status.is_none() { 3 } else { 1 }
        }
    }
}

fn run_local(cmd: AgentCommand, state: &Path) -> i32 {
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
            let m = match warren_runtime::engine::parse_manifest(&file, &text) {
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
        AgentCommand::Remove { name, json } => match store.delete_agent(&name) {
            Ok(()) if json => {
                println!("{}", serde_json::json!({"removed": name}));
                0
            }
            Ok(()) => {
                eprintln!("warren: removed {name}");
                0
            }
            Err(e) => fail(e.to_string()),
        },
    }
}
