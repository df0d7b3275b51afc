//! `warren`: the command-line front end. It parses arguments and prints; the work happens in
//! the library crates (`warren-cell`, `warren-jail`).
//!
//! The hidden `__jail` subcommand is the cell supervisor. It is dispatched before anything
//! else in `main` — before argument parsing, before any thread exists — so the code that
//! builds a cell starts from a fresh, single-threaded process image.

mod agents;
mod audit;
mod client;
mod daemon;
mod exec;
mod exec_policy;
mod exec_wasi;
mod mcp;
mod memory;
mod package;
mod run;
mod skills;
mod tasks;
mod term;
mod trust;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Warren: a secure operating environment for AI agents.
#[derive(Parser, Debug)]
#[command(name = "warren", version, about, long_about = None)]
struct Cli {
    /// Where Warren keeps state (copy-on-write layers). Default: $WARREN_STATE_DIR, else
    /// /var/lib/warren for root, else $XDG_STATE_HOME/warren or ~/.local/state/warren.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// The daemon to talk to over TCP (http://HOST:PORT; default: the unix socket in the
    /// state directory). Also $WARREN_URL; the token from $WARREN_TOKEN or the state directory.
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report what this host supports for isolation, and which cell tiers can run.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Give an agent a goal: it works in a cell on a copy-on-write view of the project; review
    /// the diff and apply it.
    Run(run::RunArgs),
    /// Run a command in a fresh cell.
    Exec(exec::ExecArgs),
    /// Show the changes a `--cow` cell kept, as a unified diff.
    Diff {
        /// Cell id printed by `warren exec --cow`.
        id: String,
        /// Only list changed paths.
        #[arg(long)]
        stat: bool,
    },
    /// Apply a cell's kept changes to its workspace, then discard the layer.
    Apply {
        /// Cell id.
        id: String,
    },
    /// Delete a cell's kept changes.
    Discard {
        /// Cell id.
        id: String,
    },
    /// Show the effective configuration and where each value came from (secrets redacted).
    Config {
        /// What to do.
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Create .warren/ with a commented config in the current directory, and index it.
    Init,
    /// Let this project's .warren/config.toml set endpoints and the provider (until the file
    /// changes); `--revoke` ends the trust, `--list` shows every trusted project.
    Trust(trust::TrustArgs),
    /// Agent manifests: deploy, list, show, remove.
    Agent {
        /// What to do.
        #[command(subcommand)]
        what: agents::AgentCommand,
    },
    /// Run the daemon in the foreground (`start|stop|status` manage a background one).
    Daemon {
        /// Manage a background daemon instead.
        #[command(subcommand)]
        action: Option<daemon::DaemonAction>,
        /// Settings (when running in the foreground).
        #[command(flatten)]
        args: Box<daemon::DaemonArgs>,
    },
    /// Tasks on the daemon: submit, list, status, logs, cancel, retry, result, diff.
    Task {
        /// What to do.
        #[command(subcommand)]
        what: tasks::TaskCommand,
    },
    /// Index a workspace for code search (incremental; .gitignore honoured).
    Index {
        /// The project (default: the current directory).
        dir: Option<PathBuf>,
        /// none (full-text only, the default), openai, local, hash; or $WARREN_EMBEDDER.
        #[arg(long)]
        embedder: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The code index and agents' memory: search.
    Memory {
        /// What to do.
        #[command(subcommand)]
        what: memory::MemoryCommand,
    },
    /// Past tasks: goals, outcomes, what they ran.
    History {
        /// At most this many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Plans (tasks submitted with `--plan`): show one as a graph of its steps.
    Plan {
        /// What to do.
        #[command(subcommand)]
        what: tasks::PlanCommand,
    },
    /// Write the model provider's key where the packaged service reads it (/etc/warren/env,
    /// root-only): asked for, or `--key-from-env VAR`.
    Configure(package::ConfigureArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions {
        /// The shell.
        shell: package::Shell,
    },
    /// Write man pages (warren.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Remembered approvals: list, remove.
    Approvals {
        /// What to do.
        #[command(subcommand)]
        what: tasks::ApprovalsCommand,
    },
    /// The tamper-evident audit log: tail, export, verify.
    Audit {
        /// The store holding the log: a `postgres://…` URL shared by several daemons, or a
        /// SQLite file (default: warren.db in the state directory).
        #[arg(
            long,
            value_name = "URL|FILE",
            env = "WARREN_STORE",
            hide_env_values = true,
            global = true
        )]
        store: Option<String>,
        /// What to do.
        #[command(subcommand)]
        what: audit::AuditCommand,
    },
    /// The daemon's health, running and queued counts, and the tiers this host supports.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Agent Skills (SKILL.md folders): list, show, validate.
    Skill {
        /// What to do.
        #[command(subcommand)]
        what: skills::SkillCommand,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: MCP clients submit goals to the
    /// daemon's agents, follow them and read their results and diffs.
    Mcp {
        /// Serve the MCP conformance suite's fixture instead (its fixed test tools, resources
        /// and prompts, nothing of Warren's) over Streamable HTTP at http://ADDR/mcp, with the
        /// daemon's transport configuration. For CI (.ci/mcp-conformance).
        #[arg(long, hide = true, requires = "listen")]
        conformance_fixture: bool,
        /// With --conformance-fixture: the address to listen on (port 0: any free port; the
        /// URL is printed on stderr).
        #[arg(
            long,
            hide = true,
            value_name = "ADDR",
            requires = "conformance_fixture"
        )]
        listen: Option<std::net::SocketAddr>,
        /// Play one of the MCP conformance suite's client scenarios against its mock server at
        /// URL instead, as Warren's MCP client (the scenario, its protocol revision and context
        /// from MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_PROTOCOL_VERSION and
        /// MCP_CONFORMANCE_CONTEXT, as the suite sets them). For CI (.ci/mcp-conformance).
        #[arg(
            long,
            hide = true,
            value_name = "URL",
            conflicts_with = "conformance_fixture"
        )]
        conformance_client: Option<String>,
    },
    /// List cells whose changes are kept.
    Changes {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the effective configuration.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Load the configuration for the current directory, printing the one warning about project
/// settings that were not applied (untrusted endpoints, keys in the project file).
pub fn load_config() -> Result<warren_config::Loaded, warren_config::ConfigError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let loaded = warren_config::load(&cwd, home.as_deref(), &vars)?;
    if let Some(w) = loaded.warning() {
        eprintln!("{w}");
    }
    Ok(loaded)
}

fn config_show(json: bool) -> i32 {
    match load_config() {
        Ok(l) if json => {
            let mut v: serde_json::Map<String, serde_json::Value> = l
                .values
                .iter()
                .map(|(k, (v, src))| {
                    let value = if warren_config::is_secret(k) {
                        serde_json::json!("<redacted>")
                    } else {
                        serde_json::to_value(v).unwrap_or_default()
                    };
                    (
                        k.clone(),
                        serde_json::json!({"value": value, "source": src.to_string()}),
                    )
                })
                .collect();
            // Not a dotted key, so it cannot collide with a setting.
            if !l.ignored.is_empty() {
                let ignored: Vec<serde_json::Value> = l
                    .ignored
                    .iter()
                    .map(|i| {
                        let value = if warren_config::is_secret(&i.key) {
                            serde_json::json!("<redacted>")
                        } else {
                            serde_json::to_value(&i.value).unwrap_or_default()
                        };
                        serde_json::json!({
                            "key": i.key,
                            "value": value,
                            "source": i.file.display().to_string(),
                            "reason": match i.why {
                                warren_config::Why::Untrusted => "untrusted",
                                warren_config::Why::Secret => "secret",
                            },
                        })
                    })
                    .collect();
                v.insert("ignored".into(), serde_json::Value::Array(ignored));
            }
            println!("{}", serde_json::Value::Object(v));
            0
        }
        Ok(l) => {
            print!("{}", l.show());
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

fn init(state: &std::path::Path) -> i32 {
    let code = init_config();
    if code != 0 {
        return code;
    }
    // The code index for `code_search` and `warren memory search` (full text unless an
    // embedder is configured; incremental afterwards).
    memory::index(None, None, false, state)
}

fn init_config() -> i32 {
    let dir = PathBuf::from(".warren");
    let file = dir.join("config.toml");
    if file.exists() {
        eprintln!("warren: {} already exists; left as it is", file.display());
        return 0;
    }
    match std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, warren_config::TEMPLATE))
    {
        Ok(()) => {
            eprintln!(
                "warren: created {} (every setting commented out; `warren config show` prints the effective values)",
                file.display()
            );
            eprintln!(
                "warren: API keys do not go there: use ANTHROPIC_API_KEY / OPENAI_API_KEY or ~/.config/warren/config.toml; endpoints set there apply after `warren trust`"
            );
            0
        }
        Err(e) => {
            eprintln!("warren: {}: {e}", file.display());
            1
        }
    }
}

fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag.or_else(|| std::env::var_os("WARREN_STATE_DIR").map(PathBuf::from)) {
        return d;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/warren");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("warren");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/warren")
}

/// Process hardening before any work: no core dumps (they could hold secrets later).
fn harden() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(OsStr::new("__jail")) {
        let code = warren_jail::main_from_args(args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    harden();
    let cli = Cli::parse();
    // Printing commands end quietly when their reader goes away (`warren audit export | head`).
    // Not for those that hold sockets: a peer closing one must be an error, not a signal.
    if matches!(
        cli.command,
        Command::Audit { .. }
            | Command::History { .. }
            | Command::Memory { .. }
            | Command::Index { .. }
            | Command::Diff { .. }
            | Command::Changes { .. }
            | Command::Config { .. }
            | Command::Trust(_)
            | Command::Check { .. }
            | Command::Completions { .. }
    ) {
        // SAFETY: restoring the default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The others (they hold sockets to the daemon, where SIGPIPE must stay ignored) end the
    // same way when `println!` meets a closed pipe (`warren task list | head -1`): quietly,
    // with the status a SIGPIPE death would give (128 + 13), not a panic (an abort, 134).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let state = state_dir(cli.state_dir);
    let code = match cli.command {
        Command::Check { json } => check(json),
        Command::Run(a) => run::run(a, &state),
        Command::Exec(a) => exec::run(a, &state),
        Command::Diff { id, stat } => exec::diff(&state, &id, stat),
        Command::Apply { id } => exec::apply(&state, &id),
        Command::Discard { id } => exec::discard(&state, &id),
        Command::Changes { json } => exec::list_changes(&state, json),
        Command::Config {
            what: ConfigCommand::Show { json },
        } => config_show(json),
        Command::Init => init(&state),
        Command::Trust(a) => trust::run(a),
        Command::Agent { what } => agents::run(what, cli.url.as_deref(), &state),
        Command::Daemon { action: None, args } => daemon::foreground(*args, &state),
        Command::Daemon {
            action: Some(action),
            ..
        } => daemon::manage(action, &state),
        Command::Audit { what, store } => audit::run(what, &state, store.as_deref()),
        Command::Index {
            dir,
            embedder,
            json,
        } => memory::index(dir, embedder.as_deref(), json, &state),
        Command::Memory { what } => memory::run(what, &state),
        Command::History { limit, json } => memory::history(&state, limit, json),
        Command::Approvals { what } => tasks::approvals(what, cli.url.as_deref(), &state),
        Command::Task { what } => tasks::run(what, cli.url.as_deref(), &state),
        Command::Plan { what } => tasks::plan(what, cli.url.as_deref(), &state),
        Command::Configure(a) => package::configure(a),
        Command::Completions { shell } => package::completions::<Cli>(shell),
        Command::Manpages { dir } => package::manpages::<Cli>(&dir),
        Command::Status { json } => tasks::status(cli.url.as_deref(), &state, json),
        Command::Mcp {
            listen: Some(addr), ..
        } => mcp::serve_fixture(addr),
        Command::Mcp {
            conformance_client: Some(url),
            ..
        } => mcp::conformance_client(&url),
        Command::Mcp { .. } => mcp::serve(cli.url.as_deref(), &state),
        Command::Skill { what } => skills::run(what),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn check(json: bool) -> i32 {
    let report = warren_cell::check::detect();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("warren: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", warren_cell::check::render(&report));
    }
    match report.process_tier_ready() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}
