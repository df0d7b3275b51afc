//! Agent manifests (YAML): what an agent is and what it may use.
//!
//! ```yaml
//! name: coder
//! description: Makes failing tests pass
//! provider: anthropic
//! model: claude-sonnet-4-20250514
//! system_prompt: |
//!   You fix failing tests with minimal changes.
//! tools: [shell, read_file, write_file, edit_file, list_files, grep, finish]
//! namespace:
//!   workspace: cow              # cow | ro | rw
//!   mounts:
//!     - {target: /data, source: /srv/datasets, mode: ro}
//! tier: process                 # process | wasi (tools are WebAssembly modules, below)
//! limits: {memory: 2G, disk: 4G, pids: 256, cpus: 1.5, timeout: 30m}
//! budget: {tokens: 500000, usd: 5.0}
//! approval_required: [shell]
//! skills: [pdf-forms]           # Agent Skills mounted read-only at /skills ("*": every one found)
//! mcp_servers:                  # MCP servers; their tools are mcp__<server>__<tool>
//!   - name: time
//!     command: [python3, -m, mcp_server_time]   # stdio: runs in a cell of its own
//!     env: {TZ: UTC}
//!     startup_timeout: 30s
//!     call_timeout: 60s
//!   - name: docs
//!     url: https://docs.example.com/mcp         # Streamable HTTP, through the task's egress
//!     headers_from_env: {Authorization: DOCS_AUTH}   # header value from a host variable
//! # tools also lists MCP tools: mcp__time__get_current_time, or every one of a server's:
//! # mcp__time__*
//! capabilities:                 # what the agent asks for; the operator's policy bounds it
//!   paths:                      # default: the whole workspace
//!     - {glob: "src/**", access: write}
//!     - {glob: "**", access: read}
//!   network: [api.github.com:443, "*.pypi.org"]   # default: none
//!   nostr:                      # /cap/nostr: sign with the agent's host-held key, publish
//!     relays: ["ws://relay.example.com:7777"]      # each host must also be in network
//!     kinds: ["1", "5000-5999"]                    # default: any kind
//! ```
//!
//!
//! In the wasi tier an agent's commands are WebAssembly modules (WASI preview 1) the operator
//! names, each offered as a tool of its own; the file tools, `finish` and the host tools work
//! as in the process tier, `shell`, `list_files` and `grep` (which run host programs) do not:
//!
//! ```yaml
//! tier: wasi
//! tools: [wc, read_file, write_file, finish]
//! modules:
//!   wc: {path: /opt/warren/tools/wc.wasm, description: Count lines of files under /workspace}
//! ```
//!
//! Every error — YAML syntax, a wrong type, an unknown key, or a value that makes no sense
//! (an unknown tool, a relative mount target, `memory: 12Q`) — names the file, line and column
//! of the offending text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::{UnitError, parse_duration, parse_size};

/// A validated manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Manifest {
    /// `[a-z0-9-]`, 1–64 characters.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// `openai` or `anthropic` (default: from configuration).
    pub provider: Option<String>,
    /// Model (default: from configuration).
    pub model: Option<String>,
    /// Replaces Warren's default system prompt when given.
    pub system_prompt: Option<String>,
    /// Tools the agent may call.
    pub tools: Vec<String>,
    /// How the project is mounted.
    pub workspace: String,
    /// Extra mounts.
    pub mounts: Vec<MountDecl>,
    /// Isolation tier: `process` or `wasi`.
    pub tier: String,
    /// The wasi tier's WebAssembly modules, each offered as a tool of its name.
    pub modules: Vec<WasmModule>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Disk bound of a copy-on-write workspace's changes, in bytes (`limits.disk`).
    pub disk: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Wall-clock limit per task.
    pub timeout: Option<Duration>,
    /// Token budget per task.
    pub budget_tokens: Option<u64>,
    /// Cost budget per task (USD).
    pub budget_usd: Option<f64>,
    /// At the budget: pause for a person's approval (`true`, the default) or stop.
    pub pause_on_budget: bool,
    /// Calls that wait for a person's approval: `tool`, or `tool:GLOB` over the call's main
    /// argument (the shell command, the path): `shell:git push*`.
    pub approval_required: Vec<String>,
    /// Workspace paths the agent asks for (`None`: the whole workspace, as mounted).
    pub paths: Option<Vec<PathGrant>>,
    /// Network destinations the agent asks for (`host`, `*.domain`, with `:port[,port]`).
    pub network: Vec<String>,
    /// Agent Skills the agent gets, by name (`*`: every valid skill found).
    pub skills: Vec<String>,
    /// MCP servers whose tools (`mcp__<server>__<tool>`, listed in `tools`) the agent may use.
    pub mcp_servers: Vec<McpServer>,
    /// `/cap/nostr`: the agent may sign (and publish) Nostr events (`capabilities.nostr`).
    pub nostr: Option<NostrDecl>,
    /// Checks run when the agent calls `finish`; a failure is fed back for another try.
    pub validate: Vec<Validator>,
    /// Times `finish` may be judged before a failing result ends the task (default 3).
    pub validations: u32,
}

/// One check of a `finish` (a manifest's `validate:` list), run in order; the first failure
/// is what the agent is told.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// A command in the task's cell must exit 0 (`sh -c`, in `/workspace`).
    Command {
        /// The command line.
        command: String,
        /// Killed after this long (default 5 minutes).
        timeout: Duration,
    },
    /// `/task/result.json` must be valid against this JSON Schema.
    Schema(serde_json::Value),
    /// The result's text (`/task/result.json` as written) must match this regular expression.
    Regex(String),
    /// A model scores the result against a rubric, 0 to 1; below `min_score` fails.
    Judge {
        /// What a good result is.
        rubric: String,
        /// The lowest passing score.
        min_score: f64,
        /// The judging model (default: the agent's).
        model: Option<String>,
    },
}

/// The default bound on judged `finish` calls.
pub const DEFAULT_VALIDATIONS: u32 = 3;

pub use warren_protocol::tools::{MCP_PREFIX, mcp_server_of, tool_allowed};

/// An MCP server an agent uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct McpServer {
    /// `[a-z0-9-]`, 1–24 characters, unique in the manifest.
    pub name: String,
    /// How it is reached.
    pub transport: McpTransport,
    /// Environment of a stdio server's command (literal values).
    pub env: std::collections::BTreeMap<String, String>,
    /// HTTP headers whose values come from the host's environment: header → variable name.
    pub headers_from_env: std::collections::BTreeMap<String, String>,
    /// Longest wait for the server to answer `initialize` and list its tools (default 30 s).
    pub startup_timeout: Duration,
    /// Longest wait for one tool call without progress (default 60 s; a progress
    /// notification starts the wait again).
    pub call_timeout: Duration,
}

/// How an MCP server is reached.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// A command speaking MCP on stdin/stdout, run in a cell of its own.
    Stdio {
        /// Program and arguments (looked up in the cell's `PATH`).
        command: Vec<String>,
    },
    /// Streamable HTTP at this URL, reached only through the task's egress policy.
    Http {
        /// `http://` or `https://` URL.
        url: String,
    },
}

/// A requested workspace path capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathGrant {
    /// Glob relative to the workspace (`src/**`, `README.md`, `**`).
    pub glob: String,
    /// Write as well as read.
    pub write: bool,
}

/// A WebAssembly module an agent of the wasi tier may run, offered as the tool `name`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WasmModule {
    /// The tool's name (`[a-z0-9_-]`, 1–64), listed in `tools`.
    pub name: String,
    /// Absolute host path of the `.wasm` file (compiled once, cached by its hash).
    pub path: String,
    /// What the model is told the tool does.
    pub description: String,
}

/// What `/cap/nostr` may do for an agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NostrDecl {
    /// `ws://` relays `publish` sends to (each host must also be a network destination).
    pub relays: Vec<String>,
    /// Kinds that may be signed, as inclusive ranges (empty: any).
    pub kinds: Vec<(u16, u16)>,
}

/// Tools that run host programs in the cell, which the wasi tier has none of.
pub const PROCESS_ONLY_TOOLS: [&str; 3] = ["shell", "list_files", "grep"];

/// An extra mount.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MountDecl {
    /// Absolute path in the cell.
    pub target: String,
    /// Absolute host path.
    pub source: String,
    /// `ro` or `rw`.
    pub mode: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    provider: Option<Spanned<String>>,
    model: Option<String>,
    system_prompt: Option<String>,
    tools: Vec<Spanned<String>>,
    #[serde(default)]
    namespace: RawNamespace,
    tier: Option<Spanned<String>>,
    #[serde(default)]
    modules: std::collections::BTreeMap<String, Spanned<RawModule>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    approval_required: Vec<Spanned<String>>,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    skills: Vec<Spanned<String>>,
    #[serde(default)]
    mcp_servers: Vec<RawMcpServer>,
    #[serde(default)]
    validate: Vec<Spanned<RawValidator>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    path: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidator {
    command: Option<String>,
    timeout: Option<Spanned<String>>,
    schema: Option<serde_json::Value>,
    regex: Option<String>,
    judge: Option<RawJudge>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJudge {
    rubric: String,
    min_score: f64,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcpServer {
    name: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    headers_from_env: std::collections::BTreeMap<String, String>,
    startup_timeout: Option<Spanned<String>>,
    call_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    paths: Option<Vec<RawPath>>,
    #[serde(default)]
    network: Vec<Spanned<String>>,
    nostr: Option<RawNostr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNostr {
    #[serde(default)]
    relays: Vec<Spanned<String>>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    glob: Spanned<String>,
    access: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    workspace: Option<Spanned<String>>,
    #[serde(default)]
    mounts: Vec<RawMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    target: Spanned<String>,
    source: Spanned<String>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    pids: Option<Spanned<u64>>,
    cpus: Option<Spanned<f64>>,
    timeout: Option<Spanned<String>>,
    validations: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    tokens: Option<u64>,
    usd: Option<Spanned<f64>>,
    on_exceed: Option<Spanned<String>>,
}

/// A manifest error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {problem}", file.display())]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a manifest, at the location its [`ManifestError`] names.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not YAML, a wrong type, an unknown or missing key (the parser's message).
    #[error("{0}")]
    Syntax(String),
    /// `name` is not 1-64 characters of a-z, 0-9 and -.
    #[error("name {0:?} must be 1-64 characters of a-z, 0-9 and -")]
    Name(String),
    /// `provider` is not openai or anthropic.
    #[error(transparent)]
    Provider(#[from] crate::UnknownProvider),
    /// `tools` is empty.
    #[error("an agent needs at least one tool (finish, at least)")]
    NoTools,
    /// `tool:GLOB` with a bad glob.
    #[error("{entry:?}: {source}")]
    ToolGlob {
        /// The entry as written.
        entry: String,
        /// Why the glob is bad.
        #[source]
        source: globset::Error,
    },
    /// A tool the agent does not offer.
    #[error("unknown tool {tool:?} (known: {known})")]
    UnknownTool {
        /// The tool.
        tool: String,
        /// The tools offered, comma-separated.
        known: String,
    },
    /// `approval_required` names a tool that is not in `tools`.
    #[error("{0:?} requires approval but is not in tools")]
    ApprovalNotInTools(String),
    /// `budget.on_exceed` is not pause or stop.
    #[error("on_exceed must be pause or stop, not {0:?}")]
    OnExceed(String),
    /// A path capability's glob is absolute, climbs or does not parse.
    #[error(transparent)]
    PathGlob(#[from] GlobError),
    /// A path capability's access is not read or write.
    #[error("access must be read or write, not {0:?}")]
    Access(String),
    /// A network capability that is not `host` or `*.domain` with optional ports.
    #[error(transparent)]
    Network(#[from] DestinationError),
    /// `namespace.workspace` is not cow, ro or rw.
    #[error("workspace must be cow, ro or rw, not {0:?}")]
    Workspace(String),
    /// A mount's target or source is not an absolute normalized path.
    #[error("{0:?} must be an absolute path without '.', '..' or '//'")]
    NotAbsolute(String),
    /// A mount over a directory Warren manages.
    #[error("{0} is managed by Warren and cannot be mounted over")]
    Managed(String),
    /// A mount's mode is not ro or rw.
    #[error("mode must be ro or rw, not {0:?}")]
    MountMode(String),
    /// A tier this version does not have.
    #[error("tier {0:?} is not available in this version (process or wasi)")]
    Tier(String),
    /// Something only the process tier has, asked of another.
    #[error("{0} needs tier: process (the wasi tier runs only WebAssembly modules)")]
    NeedsProcess(String),
    /// A `modules:` entry that is not usable.
    #[error("module {name:?}: {problem}")]
    Module {
        /// The module's tool name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A size (`limits.memory`, `limits.disk`) or duration (`limits.timeout`).
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// `limits.pids: 0`.
    #[error("pids must be at least 1")]
    Pids,
    /// `limits.cpus` is not a positive number.
    #[error("cpus must be a positive number")]
    Cpus,
    /// `budget.usd` is not a positive number.
    #[error("budget.usd must be a positive number")]
    BudgetUsd,
    /// A skill name that no skill can have.
    #[error("skill {0:?}: a name is 1-64 characters of a-z, 0-9 and - (or \"*\" for all)")]
    SkillName(String),
    /// An MCP server's name.
    #[error("MCP server name {0:?} must be 1-24 characters of a-z, 0-9 and -")]
    McpName(String),
    /// Two MCP servers of one name.
    #[error("MCP server {0:?} is declared twice")]
    McpDuplicate(String),
    /// Neither or both of `command` and `url`.
    #[error("MCP server {0:?} needs exactly one of command (stdio) and url (HTTP)")]
    McpTransport(String),
    /// An empty command, or a URL that is not http(s).
    #[error("MCP server {server:?}: {problem}")]
    McpBad {
        /// The server.
        server: String,
        /// What is wrong.
        problem: String,
    },
    /// A declared server none of whose tools the agent may call.
    #[error(
        "MCP server {0:?} is declared but tools lists none of its tools (add mcp__{0}__* or mcp__{0}__<tool>)"
    )]
    McpUnused(String),
    /// An `mcp__…` tool of a server that is not declared.
    #[error("{0:?} names an MCP server that mcp_servers does not declare")]
    McpUndeclared(String),
    /// A `capabilities.nostr` relay or kind that is not usable.
    #[error("nostr: {0}")]
    Nostr(String),
    /// A `validate:` entry that is not exactly one usable check.
    #[error("validator: {0}")]
    Validator(String),
}

/// A path capability's glob that is not a relative workspace glob.
#[derive(Debug, thiserror::Error)]
pub enum GlobError {
    /// Empty, absolute, with `..` or an empty component.
    #[error("path glob {0:?} must be relative to the workspace, without '..' or empty components")]
    NotRelative(String),
    /// Not a glob.
    #[error("path glob {glob:?}: {source}")]
    Invalid {
        /// The glob as written.
        glob: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
}

/// A network capability that is not `host` or `*.domain` with optional `:port[,port]`.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Not a host name (an IP literal, an empty or bad label).
    #[error(
        "network entry {0:?} must be a host name or *.domain (no IP literals), with optional :port[,port]"
    )]
    Host(String),
    /// A port that is not 1-65535.
    #[error("network entry {entry:?}: bad port list {ports:?}")]
    Ports {
        /// The entry as written.
        entry: String,
        /// Its port list.
        ports: String,
    },
}

fn absolute_normal(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parse and validate a manifest. `known_tools` are the tool names the agent offers.
pub fn parse(file: &Path, text: &str, known_tools: &[&str]) -> Result<Manifest, ManifestError> {
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        // The crate renders a multi-line snippet; the first line is the message.
        let message = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid manifest")
            .to_owned();
        ManifestError {
            file: file.into(),
            line,
            column,
            problem: Problem::Syntax(message),
        }
    })?;
    let at = |loc: serde_saphyr::Location, problem: Problem| ManifestError {
        file: file.into(),
        line: loc.line(),
        column: loc.column(),
        problem,
    };
    let name = &raw.name;
    if name.value.is_empty()
        || name.value.len() > 64
        || !name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(at(name.defined, Problem::Name(name.value.clone())));
    }
    if let Some(p) = &raw.provider {
        p.value
            .parse::<crate::ProviderName>()
            .map_err(|e| at(p.defined, e.into()))?;
    }
    if raw.tools.is_empty() {
        return Err(at(name.defined, Problem::NoTools));
    }
    let tool_of = |entry: &str| entry.split_once(':').map_or(entry, |(t, _)| t).to_owned();
    let mcp_servers = mcp_servers(&raw.mcp_servers, &at)?;
    for t in raw.tools.iter().chain(&raw.approval_required) {
        let name = tool_of(&t.value);
        if name.starts_with(MCP_PREFIX) {
            let declared = mcp_server_of(&name)
                .is_some_and(|s| mcp_servers.iter().any(|m| m.name == s))
                || name == "mcp__*";
            if !declared {
                return Err(at(t.defined, Problem::McpUndeclared(t.value.clone())));
            }
            continue;
        }
        if let Some((_, pattern)) = t.value.split_once(':') {
            globset::Glob::new(pattern).map_err(|source| {
                at(
                    t.defined,
                    Problem::ToolGlob {
                        entry: t.value.clone(),
                        source,
                    },
                )
            })?;
        }
        if !known_tools.contains(&name.as_str()) && !raw.modules.contains_key(&name) {
            return Err(at(
                t.defined,
                Problem::UnknownTool {
                    tool: name,
                    known: known_tools.join(", "),
                },
            ));
        }
    }
    for m in &mcp_servers {
        let prefix = format!("{MCP_PREFIX}{}__", m.name);
        if !raw
            .tools
            .iter()
            .any(|t| t.value.starts_with(&prefix) || t.value == "mcp__*")
        {
            return Err(at(name.defined, Problem::McpUnused(m.name.clone())));
        }
    }
    for s in &raw.skills {
        let v = &s.value;
        let ok = v == "*"
            || (!v.is_empty()
                && v.chars().count() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !v.starts_with('-')
                && !v.ends_with('-')
                && !v.contains("--"));
        if !ok {
            return Err(at(s.defined, Problem::SkillName(v.clone())));
        }
    }
    for t in &raw.approval_required {
        let tools: Vec<String> = raw.tools.iter().map(|x| x.value.clone()).collect();
        if !tool_allowed(&tools, &tool_of(&t.value)) {
            return Err(at(t.defined, Problem::ApprovalNotInTools(t.value.clone())));
        }
    }
    let pause_on_budget = match &raw.budget.on_exceed {
        None => true,
        Some(v) if v.value == "pause" => true,
        Some(v) if v.value == "stop" => false,
        Some(v) => return Err(at(v.defined, Problem::OnExceed(v.value.clone()))),
    };
    let paths = match &raw.capabilities.paths {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for p in list {
                valid_glob(&p.glob.value).map_err(|e| at(p.glob.defined, e.into()))?;
                let write = match p.access.value.as_str() {
                    "read" => false,
                    "write" => true,
                    other => {
                        return Err(at(p.access.defined, Problem::Access(other.to_owned())));
                    }
                };
                out.push(PathGrant {
                    glob: p.glob.value.clone(),
                    write,
                });
            }
            Some(out)
        }
    };
    for n in &raw.capabilities.network {
        valid_destination(&n.value).map_err(|e| at(n.defined, e.into()))?;
    }
    let workspace = match &raw.namespace.workspace {
        None => "cow".to_owned(),
        Some(w) if ["cow", "ro", "rw"].contains(&w.value.as_str()) => w.value.clone(),
        Some(w) => return Err(at(w.defined, Problem::Workspace(w.value.clone()))),
    };
    let mut mounts = Vec::new();
    for m in &raw.namespace.mounts {
        for p in [&m.target, &m.source] {
            if !absolute_normal(&p.value) {
                return Err(at(p.defined, Problem::NotAbsolute(p.value.clone())));
            }
        }
        if [
            "/",
            "/proc",
            "/workspace",
            "/task",
            "/logs",
            "/tmp",
            "/dev",
            "/skills",
        ]
        .contains(&m.target.value.as_str())
        {
            return Err(at(
                m.target.defined,
                Problem::Managed(m.target.value.clone()),
            ));
        }
        let mode = match &m.mode {
            None => "ro".to_owned(),
            Some(x) if x.value == "ro" || x.value == "rw" => x.value.clone(),
            Some(x) => return Err(at(x.defined, Problem::MountMode(x.value.clone()))),
        };
        mounts.push(MountDecl {
            target: m.target.value.clone(),
            source: m.source.value.clone(),
            mode,
        });
    }
    let tier = match &raw.tier {
        None => "process".to_owned(),
        Some(t) if t.value == "process" || t.value == "wasi" => t.value.clone(),
        Some(t) => return Err(at(t.defined, Problem::Tier(t.value.clone()))),
    };
    let modules = modules(&raw, &tier, known_tools, &at)?;
    let nostr = nostr(raw.capabilities.nostr.as_ref(), &at)?;
    let memory = raw
        .limits
        .memory
        .as_ref()
        .map(|m| parse_size(&m.value).map_err(|e| at(m.defined, e.into())))
        .transpose()?;
    let disk = raw
        .limits
        .disk
        .as_ref()
        .map(|m| parse_size(&m.value).map_err(|e| at(m.defined, e.into())))
        .transpose()?;
    let timeout = raw
        .limits
        .timeout
        .as_ref()
        .map(|t| parse_duration(&t.value).map_err(|e| at(t.defined, e.into())))
        .transpose()?;
    if let Some(p) = &raw.limits.pids
        && p.value == 0
    {
        return Err(at(p.defined, Problem::Pids));
    }
    if let Some(c) = &raw.limits.cpus
        && !(c.value.is_finite() && c.value > 0.0)
    {
        return Err(at(c.defined, Problem::Cpus));
    }
    if let Some(u) = &raw.budget.usd
        && !(u.value.is_finite() && u.value > 0.0)
    {
        return Err(at(u.defined, Problem::BudgetUsd));
    }
    let validate = validators(&raw.validate, &at)?;
    let validations = match &raw.limits.validations {
        Some(v) if v.value == 0 => {
            return Err(at(
                v.defined,
                Problem::Validator("limits.validations must be at least 1".into()),
            ));
        }
        Some(v) => v.value,
        None => DEFAULT_VALIDATIONS,
    };
    Ok(Manifest {
        name: raw.name.value,
        description: raw.description,
        provider: raw.provider.map(|p| p.value),
        model: raw.model,
        system_prompt: raw.system_prompt,
        tools: raw.tools.into_iter().map(|t| t.value).collect(),
        workspace,
        mounts,
        tier,
        modules,
        memory,
        disk,
        pids: raw.limits.pids.map(|p| p.value),
        cpus: raw.limits.cpus.map(|c| c.value),
        timeout,
        budget_tokens: raw.budget.tokens,
        budget_usd: raw.budget.usd.map(|u| u.value),
        pause_on_budget,
        approval_required: raw.approval_required.into_iter().map(|t| t.value).collect(),
        paths,
        network: raw
            .capabilities
            .network
            .into_iter()
            .map(|n| n.value)
            .collect(),
        skills: raw.skills.into_iter().map(|s| s.value).collect(),
        mcp_servers,
        nostr,
        validate,
        validations,
    })
}

/// `capabilities.nostr`: `ws://host[:port][/path]` relays and `N` or `A-B` kind ranges.
fn nostr(
    raw: Option<&RawNostr>,
    at: &dyn Fn(serde_saphyr::Location, Problem) -> ManifestError,
) -> Result<Option<NostrDecl>, ManifestError> {
    let Some(raw) = raw else { return Ok(None) };
    let mut out = NostrDecl::default();
    for r in &raw.relays {
        let host = r.value.strip_prefix("ws://").map(|rest| {
            let authority = rest.split('/').next().unwrap_or("");
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        });
        match host {
            Some(h)
                if !h.is_empty()
                    && !r.value.contains('@')
                    && !r.value.contains(char::is_whitespace) =>
            {
                out.relays.push(r.value.clone());
            }
            _ => {
                return Err(at(
                    r.defined,
                    Problem::Nostr(format!(
                        "relay {:?} must be ws://host[:port][/path]",
                        r.value
                    )),
                ));
            }
        }
    }
    for k in &raw.kinds {
        let v = k.value.trim();
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) if a <= b => out.kinds.push((a, b)),
            _ => {
                return Err(at(
                    k.defined,
                    Problem::Nostr(format!(
                        "kind {:?} must be N or A-B (0-65535, A <= B)",
                        k.value
                    )),
                ));
            }
        }
    }
    Ok(Some(out))
}

/// The `modules:` of a manifest, checked against its tier and tools (tools that need host
/// programs are refused in the wasi tier, where they could never run).
fn modules(
    raw: &Raw,
    tier: &str,
    known_tools: &[&str],
    at: &dyn Fn(serde_saphyr::Location, Problem) -> ManifestError,
) -> Result<Vec<WasmModule>, ManifestError> {
    if tier != "wasi" {
        if let Some((name, m)) = raw.modules.iter().next() {
            return Err(at(
                m.defined,
                Problem::Module {
                    name: name.clone(),
                    problem: "modules need tier: wasi".into(),
                },
            ));
        }
        return Ok(Vec::new());
    }
    for t in &raw.tools {
        if PROCESS_ONLY_TOOLS.contains(&t.value.as_str()) {
            return Err(at(
                t.defined,
                Problem::NeedsProcess(format!("tool {:?}", t.value)),
            ));
        }
    }
    for v in &raw.validate {
        if v.value.command.is_some() {
            return Err(at(
                v.defined,
                Problem::NeedsProcess("a command validator".into()),
            ));
        }
    }
    let mut out = Vec::new();
    for (name, m) in &raw.modules {
        let bad = |problem: &str| {
            at(
                m.defined,
                Problem::Module {
                    name: name.clone(),
                    problem: problem.into(),
                },
            )
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(bad("a name is 1-64 characters of a-z, 0-9, - and _"));
        }
        if known_tools.contains(&name.as_str()) || name.starts_with(MCP_PREFIX) {
            return Err(bad("the name of a built-in or MCP tool"));
        }
        if !absolute_normal(&m.value.path) {
            return Err(bad(
                "path must be an absolute host path without '.', '..' or '//'",
            ));
        }
        if !raw.tools.iter().any(|t| &t.value == name) {
            return Err(bad("declared but not listed in tools"));
        }
        out.push(WasmModule {
            name: name.clone(),
            path: m.value.path.clone(),
            description: m.value.description.clone(),
        });
    }
    Ok(out)
}

fn validators(
    raw: &[Spanned<RawValidator>],
    at: &dyn Fn(serde_saphyr::Location, Problem) -> ManifestError,
) -> Result<Vec<Validator>, ManifestError> {
    let mut out = Vec::new();
    for v in raw {
        let bad = |m: String| at(v.defined, Problem::Validator(m));
        let r = &v.value;
        let given = [
            r.command.is_some(),
            r.schema.is_some(),
            r.regex.is_some(),
            r.judge.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(bad(
                "each entry needs exactly one of command, schema, regex and judge".into(),
            ));
        }
        if r.timeout.is_some() && r.command.is_none() {
            return Err(bad("timeout applies to a command only".into()));
        }
        out.push(if let Some(c) = &r.command {
            if c.trim().is_empty() || c.contains('\0') {
                return Err(bad("command must be a non-empty command line".into()));
            }
            let timeout = match &r.timeout {
                Some(t) => parse_duration(&t.value).map_err(|e| at(t.defined, e.into()))?,
                None => Duration::from_secs(300),
            };
            Validator::Command {
                command: c.clone(),
                timeout,
            }
        } else if let Some(schema) = &r.schema {
            jsonschema::validator_for(schema)
                .map_err(|e| bad(format!("schema is not a usable JSON Schema: {e}")))?;
            Validator::Schema(schema.clone())
        } else if let Some(re) = &r.regex {
            regex::Regex::new(re).map_err(|e| bad(format!("regex: {e}")))?;
            Validator::Regex(re.clone())
        } else if let Some(j) = &r.judge {
            if j.rubric.trim().is_empty() {
                return Err(bad("judge.rubric must say what a good result is".into()));
            }
            if !(0.0..=1.0).contains(&j.min_score) {
                return Err(bad("judge.min_score must be between 0 and 1".into()));
            }
            Validator::Judge {
                rubric: j.rubric.clone(),
                min_score: j.min_score,
                model: j.model.clone(),
            }
        } else {
            return Err(bad("empty entry".into()));
        });
    }
    Ok(out)
}

fn mcp_servers(
    raw: &[RawMcpServer],
    at: &dyn Fn(serde_saphyr::Location, Problem) -> ManifestError,
) -> Result<Vec<McpServer>, ManifestError> {
    let mut out: Vec<McpServer> = Vec::new();
    for r in raw {
        let name = &r.name;
        let n = &name.value;
        if n.is_empty()
            || n.len() > 24
            || !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || n.contains("__")
        {
            return Err(at(name.defined, Problem::McpName(n.clone())));
        }
        if out.iter().any(|m| &m.name == n) {
            return Err(at(name.defined, Problem::McpDuplicate(n.clone())));
        }
        let bad = |loc, problem: &str| {
            at(
                loc,
                Problem::McpBad {
                    server: n.clone(),
                    problem: problem.to_owned(),
                },
            )
        };
        let transport = match (&r.command, &r.url) {
            (Some(c), None) => {
                if c.value.is_empty() || c.value[0].is_empty() {
                    return Err(bad(c.defined, "command must name a program"));
                }
                if c.value.iter().any(|a| a.contains('\0')) {
                    return Err(bad(c.defined, "command arguments cannot contain NUL"));
                }
                McpTransport::Stdio {
                    command: c.value.clone(),
                }
            }
            (None, Some(u)) => {
                let v = &u.value;
                let rest = v
                    .strip_prefix("http://")
                    .or_else(|| v.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(bad(u.defined, "url must be an http:// or https:// URL"));
                }
                McpTransport::Http { url: v.clone() }
            }
            _ => return Err(at(name.defined, Problem::McpTransport(n.clone()))),
        };
        let var_ok = |k: &str| {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some(k) = r.env.keys().find(|k| !var_ok(k)) {
            return Err(bad(
                name.defined,
                &format!("env: {k:?} is not a variable name"),
            ));
        }
        for (h, var) in &r.headers_from_env {
            let header_ok = !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
            if !header_ok || !var_ok(var) {
                return Err(bad(
                    name.defined,
                    &format!(
                        "headers_from_env: {h:?}: {var:?} is not a header and a variable name"
                    ),
                ));
            }
        }
        let duration = |d: &Option<Spanned<String>>, default: u64| {
            d.as_ref()
                .map(|t| parse_duration(&t.value).map_err(|e| at(t.defined, e.into())))
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        out.push(McpServer {
            name: n.clone(),
            transport,
            env: r.env.clone(),
            headers_from_env: r.headers_from_env.clone(),
            startup_timeout: duration(&r.startup_timeout, 30)?,
            call_timeout: duration(&r.call_timeout, 60)?,
        });
    }
    Ok(out)
}

/// A glob relative to the workspace: no leading `/`, no `..` component, not empty.
fn valid_glob(g: &str) -> Result<(), GlobError> {
    if g.is_empty() || g.starts_with('/') || g.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(GlobError::NotRelative(g.to_owned()));
    }
    globset::Glob::new(g)
        .map(drop)
        .map_err(|source| GlobError::Invalid {
            glob: g.to_owned(),
            source,
        })
}

/// A network entry: `host`, `*.domain`, optionally `:port[,port…]`.
fn valid_destination(d: &str) -> Result<(), DestinationError> {
    let (host, ports) = d.split_once(':').unwrap_or((d, ""));
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.is_empty()
        || !name.split('.').all(label_ok)
        || name.parse::<std::net::IpAddr>().is_ok()
        || name.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(DestinationError::Host(d.to_owned()));
    }
    if !ports.is_empty()
        && !ports
            .split(',')
            .all(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(DestinationError::Ports {
            entry: d.to_owned(),
            ports: ports.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOOLS: &[&str] = &[
        "shell",
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "grep",
        "finish",
    ];

    fn err(text: &str) -> String {
        parse(Path::new("a.yaml"), text, TOOLS)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            Path::new("a.yaml"),
            "name: coder\ndescription: fixes tests\nprovider: anthropic\ntools: [shell, finish]\nnamespace:\n  workspace: ro\n  mounts:\n    - {target: /data, source: /srv/data}\nlimits: {memory: 2G, pids: 64, cpus: 1.5, timeout: 30m}\nbudget: {tokens: 1000, usd: 2.5}\napproval_required: [shell]\n",
            TOOLS,
        )
        .unwrap();
        assert_eq!(m.name, "coder");
        assert_eq!(m.memory, Some(2 << 30));
        assert_eq!(m.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(m.mounts[0].mode, "ro");
        assert_eq!(m.workspace, "ro");
        assert_eq!(m.approval_required, ["shell"]);
    }

    #[test]
    fn every_error_names_file_line_and_column() {
        let e = err("name: coder\ntools: [shell, shel]\n");
        assert!(e.starts_with("a.yaml:2:16: unknown tool \"shel\""), "{e}");
        let e = err("name: coder\ntools: [finish]\nlimits:\n  memory: 12Q\n");
        assert!(e.starts_with("a.yaml:4:11: unknown size unit"), "{e}");
        let e = err(
            "name: coder\ntools: [finish]\nnamespace:\n  mounts:\n    - {target: data, source: /srv}\n",
        );
        assert!(
            e.starts_with("a.yaml:5:16:") && e.contains("absolute"),
            "{e}"
        );
        let e = err("name: Coder!\ntools: [finish]\n");
        assert!(e.starts_with("a.yaml:1:7:"), "{e}");
        let e = err("name: coder\ntools: [finish]\nteir: process\n");
        assert!(e.starts_with("a.yaml:3:") && e.contains("teir"), "{e}");
        let e = err("name: coder\ntools: [finish\n");
        assert!(e.starts_with("a.yaml:"), "{e}");
        let e = err("name: coder\ntools: [finish]\napproval_required: [shell]\n");
        assert!(
            e.starts_with("a.yaml:3:21:") && e.contains("not in tools"),
            "{e}"
        );
    }

    #[test]
    fn mcp_servers_and_skills_parse_and_bad_ones_are_located() {
        let m = parse(
            Path::new("a.yaml"),
            "name: c\ntools: [mcp__time__*, mcp__git__log, finish]\napproval_required: [mcp__time__set]\nskills: [pdf-forms]\nmcp_servers:\n  - name: time\n    command: [python3, -m, mcp_server_time]\n    env: {TZ: UTC}\n    call_timeout: 5s\n  - name: git\n    command: [mcp-server-git]\n",
            TOOLS,
        )
        .unwrap();
        assert_eq!(m.skills, ["pdf-forms"]);
        assert_eq!(m.mcp_servers.len(), 2);
        assert_eq!(m.mcp_servers[0].call_timeout, Duration::from_secs(5));
        assert_eq!(m.mcp_servers[1].startup_timeout, Duration::from_secs(30));
        assert_eq!(
            m.mcp_servers[0].transport,
            McpTransport::Stdio {
                command: vec!["python3".into(), "-m".into(), "mcp_server_time".into()]
            }
        );
        let server = "mcp_servers:\n  - name: time\n    command: [x]\n";
        for (text, at, what) in [
            (
                format!("name: c\ntools: [mcp__nope__x, finish]\n{server}"),
                "a.yaml:2:9:",
                "does not declare",
            ),
            (
                "name: c\ntools: [finish]\nmcp_servers:\n  - name: time\n    command: [x]\n".into(),
                "a.yaml:1:7:",
                "lists none of its tools",
            ),
            (
                "name: c\ntools: [mcp__time__*]\nmcp_servers:\n  - name: Time\n    command: [x]\n".into(),
                "a.yaml:4:11:",
                "1-24 characters",
            ),
            (
                "name: c\ntools: [mcp__time__*]\nmcp_servers:\n  - name: time\n".into(),
                "a.yaml:4:11:",
                "exactly one of command",
            ),
            (
                "name: c\ntools: [mcp__time__*]\nmcp_servers:\n  - name: time\n    command: []\n".into(),
                "a.yaml:5:14:",
                "must name a program",
            ),
            (
                "name: c\ntools: [mcp__time__*]\nmcp_servers:\n  - name: time\n    command: [x]\n    call_timeout: 5 parsecs\n".into(),
                "a.yaml:6:19:",
                "",
            ),
            (
                format!("name: c\ntools: [mcp__time__*]\n{server}  - name: time\n    command: [y]\n"),
                "a.yaml:6:11:",
                "declared twice",
            ),
            (
                "name: c\ntools: [finish]\nskills: [Bad_Name]\n".into(),
                "a.yaml:3:10:",
                "skill",
            ),
        ] {
            let e = err(&text);
            assert!(e.starts_with(at) && e.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn wasi_manifests_name_their_modules_and_refuse_what_needs_processes() {
        let m = parse(
            Path::new("a.yaml"),
            "name: c\ntier: wasi\ntools: [wc, read_file, finish]\nmodules:\n  wc: {path: /opt/wc.wasm, description: count}\n",
            TOOLS,
        )
        .unwrap();
        assert_eq!(m.tier, "wasi");
        assert_eq!(
            m.modules,
            [WasmModule {
                name: "wc".into(),
                path: "/opt/wc.wasm".into(),
                description: "count".into()
            }]
        );
        let module = "modules:\n  wc: {path: /opt/wc.wasm}\n";
        for (text, at, what) in [
            (
                "name: c\ntier: vm\ntools: [finish]\n".to_owned(),
                "a.yaml:2:7:",
                "process or wasi",
            ),
            (
                format!("name: c\ntier: wasi\ntools: [wc, shell, finish]\n{module}"),
                "a.yaml:3:13:",
                "needs tier: process",
            ),
            (
                format!("name: c\ntools: [wc, finish]\n{module}"),
                "a.yaml:4:7:",
                "need tier: wasi",
            ),
            (
                "name: c\ntier: wasi\ntools: [wc]\nmodules:\n  wc: {path: wc.wasm}\n".into(),
                "a.yaml:5:7:",
                "absolute host path",
            ),
            (
                "name: c\ntier: wasi\ntools: [finish]\nmodules:\n  wc: {path: /x/../wc.wasm}\n"
                    .into(),
                "a.yaml:5:7:",
                "absolute host path",
            ),
            (
                "name: c\ntier: wasi\ntools: [finish]\nmodules:\n  wc: {path: /wc.wasm}\n".into(),
                "a.yaml:5:7:",
                "not listed in tools",
            ),
            (
                "name: c\ntier: wasi\ntools: [finish]\nmodules:\n  finish: {path: /f.wasm}\n"
                    .into(),
                "a.yaml:5:11:",
                "built-in",
            ),
            (
                format!(
                    "name: c\ntier: wasi\ntools: [wc]\n{module}validate:\n  - command: make test\n"
                ),
                "a.yaml:7:5:",
                "command validator",
            ),
            (
                "name: c\ntools: [nope]\n".into(),
                "a.yaml:2:9:",
                "unknown tool",
            ),
        ] {
            let e = err(&text);
            assert!(e.starts_with(at) && e.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn nostr_capabilities_parse_and_bad_ones_are_located() {
        let m = parse(
            Path::new("a.yaml"),
            "name: c\ntools: [finish]\ncapabilities:\n  nostr:\n    relays: [\"ws://relay.test:7777/\"]\n    kinds: [\"1\", \"5000-5999\"]\n",
            TOOLS,
        )
        .unwrap();
        let n = m.nostr.unwrap();
        assert_eq!(n.relays, ["ws://relay.test:7777/"]);
        assert_eq!(n.kinds, [(1, 1), (5000, 5999)]);
        for (text, at) in [
            ("    relays: [\"http://relay.test/\"]\n", "a.yaml:5:14:"),
            ("    relays: [\"ws://u@relay.test/\"]\n", "a.yaml:5:14:"),
            ("    kinds: [\"9-2\"]\n", "a.yaml:5:13:"),
            ("    kinds: [\"70000\"]\n", "a.yaml:5:13:"),
        ] {
            let text = format!("name: c\ntools: [finish]\ncapabilities:\n  nostr:\n{text}");
            let e = err(&text);
            assert!(e.starts_with(at) && e.contains("nostr"), "{text}: {e}");
        }
    }

    #[test]
    fn capabilities_parse_and_bad_ones_are_located() {
        let m = parse(
            Path::new("a.yaml"),
            "name: c\ntools: [finish]\ncapabilities:\n  paths:\n    - {glob: \"src/**\", access: write}\n    - {glob: \"**\", access: read}\n  network: [api.github.com:443, \"*.pypi.org\"]\n",
            TOOLS,
        )
        .unwrap();
        let paths = m.paths.unwrap();
        assert_eq!((paths[0].glob.as_str(), paths[0].write), ("src/**", true));
        assert_eq!(m.network, ["api.github.com:443", "*.pypi.org"]);
        let none = parse(Path::new("a.yaml"), "name: c\ntools: [finish]\n", TOOLS).unwrap();
        assert!(none.paths.is_none() && none.network.is_empty());
        for (text, at, what) in [
            (
                "    - {glob: \"../x\", access: read}\n",
                "a.yaml:5:",
                "relative",
            ),
            (
                "    - {glob: \"/etc/**\", access: read}\n",
                "a.yaml:5:",
                "relative",
            ),
            (
                "    - {glob: \"src\", access: rwx}\n",
                "a.yaml:5:",
                "read or write",
            ),
        ] {
            let e = err(&format!(
                "name: c\ntools: [finish]\ncapabilities:\n  paths:\n{text}"
            ));
            assert!(e.starts_with(at) && e.contains(what), "{e}");
        }
        for bad in [
            "10.0.0.1",
            "*.",
            "a..b",
            "x.com:http",
            "x.com:0",
            "exa mple.com",
        ] {
            let e = err(&format!(
                "name: c\ntools: [finish]\ncapabilities:\n  network: [\"{bad}\"]\n"
            ));
            assert!(e.starts_with("a.yaml:4:"), "{bad}: {e}");
        }
    }
}
