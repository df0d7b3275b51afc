//! `warren agent deploy|list|show|remove`: through a remote daemon's API, or, without one,
//! through the runtime's local action handler over the state directory's store (which a local
//! daemon shares). Both ways an operation is the same [`Action`] or [`Query`], audited alike
//! (`agent.deployed` names the caller: `api` or `cli`), and prints the same: the API's
//! [`AgentView`] JSON with `--json`.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;
use warren_protocol::api::{AgentView, DeployAgent};
use warren_runtime::action::{Action, Answer, Caller, Local, Query};

use crate::client::{self, NO_BODY};

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

impl AgentCommand {
    fn json(&self) -> bool {
        match self {
            AgentCommand::Deploy { json, .. }
            | AgentCommand::List { json }
            | AgentCommand::Show { json, .. }
            | AgentCommand::Remove { json, .. } => *json,
        }
    }
}

/// What an agent subcommand answered, from the daemon or the local handler alike.
enum Shown {
    /// `deploy`: the new version, with its manifest.
    Deployed(AgentView),
    /// `list`: latest versions, without manifests.
    Listed(Vec<AgentView>),
    /// `show`: one version, with its manifest.
    Agent(AgentView),
    /// `remove`: the agent's name.
    Removed(String),
}

/// Print an answer: the API's JSON shapes with `--json` (an [`AgentView`], an array of them,
/// `{"removed": name}`), the same whether a daemon or the local handler answered.
fn print(shown: &Shown, json: bool) {
    match (shown, json) {
        (Shown::Deployed(a) | Shown::Agent(a), true) => println!("{}", client::json_line(a)),
        (Shown::Listed(list), true) => println!("{}", client::json_line(list)),
        (Shown::Removed(name), true) => {
            println!("{}", serde_json::json!({ "removed": name }));
        }
        (Shown::Deployed(a), false) => {
            eprintln!("warren: deployed {} version {}", a.name, a.version);
        }
        (Shown::Listed(list), false) => {
            for a in list {
                println!("{}  v{}", a.name, a.version);
            }
        }
        (Shown::Agent(a), false) => print!("{}", a.manifest.as_deref().unwrap_or_default()),
        (Shown::Removed(name), false) => eprintln!("warren: removed {name}"),
    }
}

/// A manifest file's text.
fn read_manifest(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
}

/// Run an agent subcommand: through a remote daemon's API when `--url` (or `WARREN_URL`) is
/// given, else through the local action handler (on the store a local daemon shares).
pub fn run(cmd: AgentCommand, url: Option<&str>, state: &Path) -> i32 {
    let remote = url
        .map(str::to_owned)
        .or_else(|| std::env::var("WARREN_URL").ok().filter(|u| !u.is_empty()));
    let json = cmd.json();
    let shown = match remote {
        Some(u) => run_remote(cmd, &u, state),
        None => run_local(cmd, state),
    };
    match shown {
        Ok(s) => {
            print(&s, json);
            0
        }
        Err(code) => code,
    }
}

/// The failure's message on stderr; `code` to exit with.
fn failed(message: impl std::fmt::Display, code: i32) -> i32 {
    eprintln!("warren: {message}");
    code
}

fn run_remote(cmd: AgentCommand, url: &str, state: &Path) -> Result<Shown, i32> {
    let target = client::target(Some(url), state).map_err(|e| failed(e, 2))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e, 1))?;
    rt.block_on(async {
        match cmd {
            AgentCommand::Deploy { file, .. } => {
                let text = read_manifest(&file).map_err(|e| failed(e, 1))?;
                // Validate here first, so errors name the real file (the daemon knows the
                // text only as `manifest`).
                warren_runtime::engine::parse_manifest(&file, &text).map_err(|e| failed(e, 1))?;
                let body = DeployAgent { manifest: text };
                client::call_as(&target, Method::POST, "/v1/agents", Some(&body))
                    .await
                    .map(Shown::Deployed)
            }
            AgentCommand::List { .. } => {
                client::call_as(&target, Method::GET, "/v1/agents", NO_BODY)
                    .await
                    .map(Shown::Listed)
            }
            AgentCommand::Show { name, .. } => {
                let path = format!("/v1/agents/{name}");
                client::call_as(&target, Method::GET, &path, NO_BODY)
                    .await
                    .map(Shown::Agent)
            }
            AgentCommand::Remove { name, .. } => {
                let path = format!("/v1/agents/{name}");
                client::call(&target, Method::DELETE, &path, NO_BODY)
                    .await
                    .map(|_| Shown::Removed(name))
            }
        }
        .map_err(|e| failed(&e, e.exit_code()))
    })
}

fn run_local(cmd: AgentCommand, state: &Path) -> Result<Shown, i32> {
    let local = Local::open(state).map_err(|e| failed(e, 1))?;
    let caller = Caller::operator("cli");
    let unexpected = |a: Answer| failed(format!("unexpected answer: {a:?}"), 1);
    match cmd {
        AgentCommand::Deploy { file, .. } => {
            let text = read_manifest(&file).map_err(|e| failed(e, 1))?;
            // The action validates the manifest, naming this file in its errors.
            let op = Action::Deploy {
                origin: file.display().to_string(),
                manifest: text,
            };
            match local.handle(&caller, op.into()).map_err(|e| failed(e, 1))? {
                Answer::Agent(a) => Ok(Shown::Deployed(a)),
                a => Err(unexpected(a)),
            }
        }
        AgentCommand::List { .. } => {
            match local
                .handle(&caller, Query::Agents.into())
                .map_err(|e| failed(e, 1))?
            {
                Answer::Agents(list) => Ok(Shown::Listed(list)),
                a => Err(unexpected(a)),
            }
        }
        AgentCommand::Show { name, version, .. } => {
            let op = Query::Agent { name, version };
            match local.handle(&caller, op.into()).map_err(|e| failed(e, 1))? {
                Answer::Agent(a) => Ok(Shown::Agent(a)),
                a => Err(unexpected(a)),
            }
        }
        AgentCommand::Remove { name, .. } => {
            let op = Action::RemoveAgent { name: name.clone() };
            match local.handle(&caller, op.into()).map_err(|e| failed(e, 1))? {
                Answer::Done => Ok(Shown::Removed(name)),
                a => Err(unexpected(a)),
            }
        }
    }
}
