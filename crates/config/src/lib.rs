//! Warren's layered configuration.
//!
//! Layers, lowest first: built-in defaults < `/etc/warren/config.toml` <
//! `~/.config/warren/config.toml` < `./.warren/config.toml` < `WARREN__SECTION__KEY`
//! environment variables; command-line flags override all of them at the call site.
//!
//! Two stages, as in the house style: each layer is parsed and checked on its own (so an
//! error names the file, line and column — or the variable — where it was written), then the
//! layers are merged key by key, remembering where each effective value came from, and the
//! result is resolved into the typed [`Config`]. Values are typed when a layer is read:
//! durations are [`Duration`]s and the provider a [`ProviderName`], so `timeout = "10
//! parsecs"` is refused when the configuration loads, naming the file, line and column (or the
//! variable), for `warren run` and the daemon alike, never later by whoever reads the value.
//! Keys are paths, not dotted strings, so a table named with dots (`[models."gpt-4.1"]`)
//! merges like any other. `warren config show` prints that provenance with secrets redacted.
//!
//! The project layer is different: whoever can write the project wrote it. Settings that
//! decide where requests and credentials go ([`project_key`]: the provider, base URLs, and
//! anything not known to be harmless) apply from it only when the user trusted the file
//! ([`trust`]); API keys never apply from it. What is not applied is kept in
//! [`Loaded::ignored`], shown by `warren config show` and summarized in one warning
//! ([`Loaded::warning`]).

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod manifest;
pub mod trust;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built in.
    Default,
    /// A config file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// A configuration error, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be parsed or holds an invalid key or value.
    #[error("{file}:{line}:{column}: {message}")]
    File {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// An environment variable holds an invalid key or value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A file exists but cannot be read.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        message: String,
    },
    /// The layers, each valid on its own, do not merge into a valid configuration.
    #[error("the merged configuration: {message}")]
    Merged {
        /// What is wrong.
        message: String,
    },
}

/// A provider's wire format (`agent.provider`): `openai` (any OpenAI-compatible server) or
/// `anthropic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderName {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl ProviderName {
    /// The name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::OpenAi => "openai",
            ProviderName::Anthropic => "anthropic",
        }
    }
}

impl std::fmt::Display for ProviderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is not `openai` or `anthropic`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {name:?} (use openai or anthropic)")]
pub struct UnknownProvider {
    /// The name as written.
    pub name: String,
}

impl std::str::FromStr for ProviderName {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(ProviderName::OpenAi),
            "anthropic" => Ok(ProviderName::Anthropic),
            other => Err(UnknownProvider { name: other.into() }),
        }
    }
}

impl<'de> Deserialize<'de> for ProviderName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[agent]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// `openai` or `anthropic`.
    pub provider: Option<ProviderName>,
    /// Model name.
    pub model: Option<String>,
    /// Turn limit.
    pub max_turns: Option<u32>,
    /// Token budget.
    pub budget_tokens: Option<u64>,
    /// Wall-clock limit, written e.g. "30m".
    #[serde(default, deserialize_with = "units::de::duration")]
    pub timeout: Option<Duration>,
    /// Answers without a tool call met with a nudge before one more ends the task (default 1).
    pub nudges: Option<u32>,
}

/// `[providers.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Base URL.
    pub base_url: Option<String>,
    /// API key (prefer the provider's usual environment variable).
    pub api_key: Option<String>,
    /// Requests in flight at most.
    pub max_concurrency: Option<u64>,
}

/// `[llm]`: reliability settings shared by providers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// Abandon a silent stream after this long, written e.g. "120s".
    #[serde(default, deserialize_with = "units::de::duration")]
    pub idle_timeout: Option<Duration>,
    /// Backoff base, written e.g. "500ms".
    #[serde(default, deserialize_with = "units::de::duration")]
    pub retry_base: Option<Duration>,
    /// Attempts per request.
    pub max_attempts: Option<u32>,
    /// Override the catalog's context window for the configured model.
    pub context_window: Option<u32>,
}

/// `[models."NAME"]`: catalog overrides.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Context window in tokens.
    pub context_window: Option<u32>,
    /// USD per million input tokens.
    pub input_per_mtok: Option<f64>,
    /// USD per million cached input tokens.
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million output tokens.
    pub output_per_mtok: Option<f64>,
}

/// The whole configuration (every key optional: layers fill it in).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Agent defaults.
    #[serde(default)]
    pub agent: AgentSection,
    /// Providers by name (`openai`, `anthropic`).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    /// Reliability.
    #[serde(default)]
    pub llm: LlmSection,
    /// Model catalog overrides.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSection>,
}

/// The merged configuration with each value's origin.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The typed result.
    pub config: Config,
    /// Dotted key ([`dotted`]) -> (value as written, source), for `config show`.
    pub values: BTreeMap<String, (toml::Value, Source)>,
    /// Settings of the project file that were not applied, and why.
    pub ignored: Vec<Ignored>,
    /// The project file, when there is one.
    pub project: Option<ProjectFile>,
}

/// The project layer (`./.warren/config.toml`) as it was read.
#[derive(Clone, Debug)]
pub struct ProjectFile {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of its content.
    pub sha256: String,
    /// Whether the user trusted exactly this content (`warren trust`).
    pub trusted: bool,
}

/// A project setting that was not applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Ignored {
    /// Dotted key ([`dotted`]).
    pub key: String,
    /// Its value in the file.
    pub value: toml::Value,
    /// The project file.
    pub file: PathBuf,
    /// Why.
    pub why: Why,
}

/// Why a project setting was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// It needs trust, and the file is not trusted (or changed since it was).
    Untrusted,
    /// A key (or another secret): never taken from a project file.
    Secret,
}

/// How a key of a project's `.warren/config.toml` is treated ([`project_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectKey {
    /// Applies from any project file: it changes how much work is done, not where data goes.
    Applies,
    /// Applies only from a trusted project file.
    NeedsTrust,
    /// Never applies from a project file, trusted or not (API keys, tokens, secrets).
    Never,
}

/// The project settings that apply without trust (`*` is any one name). Everything else —
/// `agent.provider`, `providers.*.base_url`, and any key added later until it is listed
/// here — needs `warren trust`; secrets never apply from a project file.
pub const PROJECT_SETTINGS: &[&str] = &[
    "agent.model",
    "agent.max_turns",
    "agent.budget_tokens",
    "agent.nudges",
    "agent.timeout",
    "llm.idle_timeout",
    "llm.retry_base",
    "llm.max_attempts",
    "llm.context_window",
    "models.*.context_window",
    "models.*.input_per_mtok",
    "models.*.cached_input_per_mtok",
    "models.*.output_per_mtok",
    "providers.*.max_concurrency",
];

/// How the key at `path` (its table names, then its own name) of a project file is treated.
pub fn project_key<S: AsRef<str>>(path: &[S]) -> ProjectKey {
    let dotted = path.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".");
    if is_secret(&dotted) {
        return ProjectKey::Never;
    }
    let listed = PROJECT_SETTINGS.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('.').collect();
        pattern.len() == path.len()
            && pattern
                .iter()
                .zip(path)
                .all(|(p, k)| *p == "*" || *p == k.as_ref())
    });
    if listed {
        ProjectKey::Applies
    } else {
        ProjectKey::NeedsTrust
    }
}

/// Built-in defaults, as TOML so they display like any other layer.
pub const DEFAULTS: &str = r#"
[agent]
max_turns = 30
timeout = "30m"

[llm]
idle_timeout = "120s"
retry_base = "500ms"
max_attempts = 5

[providers.openai]
base_url = "https://api.openai.com/v1"
max_concurrency = 8

[providers.anthropic]
base_url = "https://api.anthropic.com"
max_concurrency = 8
"#;

/// The commented config `warren init` writes.
pub const TEMPLATE: &str = r#"# Warren configuration for this project. Layers, lowest first: built-in defaults,
# /etc/warren/config.toml, ~/.config/warren/config.toml, this file, WARREN__SECTION__KEY
# environment variables (e.g. WARREN__AGENT__MODEL=gpt-4o), command-line flags.
# `warren config show` prints the effective values and where each came from.

[agent]
# provider = "anthropic"          # or "openai" (any OpenAI-compatible server); needs `warren trust`
# model = "claude-sonnet-4-20250514"
# max_turns = 30
# budget_tokens = 500000
# timeout = "30m"
# nudges = 1                      # answers without a tool call told to call one, before one more stops

# Where requests go (agent.provider, providers.*.base_url) is only taken from this file once
# you trust it: `warren trust` records this file's SHA-256 in ~/.config/warren/trusted.toml,
# and any change to the file ends the trust. Until then those settings are ignored, with a
# warning; the rest of this file (model, limits, [llm], [models]) applies either way.
# [providers.openai]
# base_url = "http://localhost:11434/v1"   # e.g. Ollama; needs `warren trust`
# max_concurrency = 8

# API keys never go in this file (it is part of the project: whoever can write the project or
# read it could take them). Use the provider's variable (ANTHROPIC_API_KEY, OPENAI_API_KEY) or
# your own ~/.config/warren/config.toml, e.g. [providers.openai] api_key = "…" there.
# Keys never enter a cell.

# [llm]
# idle_timeout = "120s"
# retry_base = "500ms"
# max_attempts = 5

# [models."my-local-model"]
# context_window = 32768
# input_per_mtok = 0.0
# output_per_mtok = 0.0
"#;

/// The 1-based line and column (in characters) of byte `offset` in `text`: where an error
/// report points (`file:line:column`).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    (
        before.matches('\n').count() + 1,
        before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
    )
}

/// Parse and check one file layer.
pub fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let located = |e: toml::de::Error| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigError::File {
            file: path.to_path_buf(),
            line,
            column,
            message: e.message().to_owned(),
        }
    };
    let table: toml::Table = toml::from_str(text).map_err(located)?;
    // Check keys and types against the schema now, where the error can point into the file.
    toml::from_str::<Config>(text).map_err(located)?;
    Ok(table)
}

/// The merged values: key path (table names, then the key) -> (value, source).
type Merged = BTreeMap<Vec<String>, (toml::Value, Source)>;

/// A key path as TOML writes it: segments joined with dots, each quoted unless it is a bare
/// key (`models."gpt-4.1".context_window`), so a name holding a dot stays one segment.
pub fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    path.iter()
        .map(|k| {
            let k = k.as_ref();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                k.to_owned()
            } else {
                toml::Value::String(k.to_owned()).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Merge every leaf of `table` into `out`, over what is there.
fn flatten(table: &toml::Table, source: &Source, out: &mut Merged) {
    walk_leaves(table, &mut Vec::new(), &mut |path, v| {
        out.insert(path.to_vec(), (v.clone(), source.clone()));
    });
}

fn insert_path(t: &mut toml::Table, parts: &[&str], v: toml::Value) {
    match parts {
        [] => {}
        [last] => {
            t.insert((*last).to_owned(), v);
        }
        [first, rest @ ..] => {
            let entry = t
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                insert_path(inner, rest, v);
            }
        }
    }
}

/// Call `f` with the key path and value of every non-table value in `table`.
pub(crate) fn walk_leaves(
    table: &toml::Table,
    path: &mut Vec<String>,
    f: &mut dyn FnMut(&[String], &toml::Value),
) {
    for (k, v) in table {
        path.push(k.clone());
        match v {
            toml::Value::Table(t) => walk_leaves(t, path, f),
            other => f(path, other),
        }
        path.pop();
    }
}

/// A value as `config show` prints it: secrets redacted.
pub(crate) fn shown(key: &str, v: &toml::Value) -> String {
    if is_secret(key) {
        "\"<redacted>\"".to_owned()
    } else {
        v.to_string()
    }
}

fn unflatten(values: &Merged) -> toml::Table {
    let mut root = toml::Table::new();
    for (path, (v, _)) in values {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        insert_path(&mut root, &parts, v.clone());
    }
    root
}

/// A variable's key path, value and name.
type EnvValue = (Vec<String>, toml::Value, String);

/// `WARREN__AGENT__MODEL=x` -> `agent.model = "x"`. Values that parse as TOML numbers or
/// booleans are taken as such; anything else is a string.
fn env_layer(vars: &[(String, String)]) -> Result<Vec<EnvValue>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("WARREN__") else {
            continue;
        };
        let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if key.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty key segment".into(),
            });
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        out.push((key, value, var.clone()));
    }
    Ok(out)
}

/// The config files that exist, lowest layer first.
pub fn files(cwd: &Path, home: Option<&Path>) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/warren/config.toml")];
    if let Some(h) = home {
        v.push(h.join(".config/warren/config.toml"));
    }
    v.push(cwd.join(".warren/config.toml"));
    v
}

/// Load every layer. `env` is the process environment (only `WARREN__*` is read).
///
/// The project layer (`cwd/.warren/config.toml`) is read as hostile input
/// ([`trust::read_project_file`]) and only partly applied unless trusted (see the module
/// documentation); the trust store is consulted only when the file holds a setting that
/// needs it.
pub fn load(
    cwd: &Path,
    home: Option<&Path>,
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    let mut values = Merged::new();
    let defaults: toml::Table = toml::from_str(DEFAULTS).unwrap_or_default();
    flatten(&defaults, &Source::Default, &mut values);
    let mut layers = files(cwd, home);
    layers.pop(); // the project file, below
    for file in layers {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ConfigError::Read {
                    file,
                    message: e.to_string(),
                });
            }
        };
        let table = parse_file(&file, &text)?;
        flatten(&table, &Source::File(file), &mut values);
    }
    let mut ignored = Vec::new();
    let mut project = None;
    let file = cwd.join(trust::PROJECT_FILE);
    if let Some(bytes) = trust::read_project_file(cwd)? {
        let sha256 = trust::sha256_hex(&bytes);
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, column) = line_col(
                &String::from_utf8_lossy(e.as_bytes()),
                e.utf8_error().valid_up_to(),
            );
            ConfigError::File {
                file: file.clone(),
                line,
                column,
                message: "not UTF-8".into(),
            }
        })?;
        let table = parse_file(&file, &text)?;
        let mut needs_trust = false;
        walk_leaves(&table, &mut Vec::new(), &mut |k, _| {
            needs_trust |= project_key(k) == ProjectKey::NeedsTrust;
        });
        let trusted = needs_trust
            && match (home, trust::project_id(cwd)) {
                (Some(h), Ok(id)) => trust::is_trusted(&trust::load_store(h)?, &id, &sha256),
                _ => false,
            };
        let mut kept = toml::Table::new();
        walk_leaves(&table, &mut Vec::new(), &mut |k, v| {
            let why = match project_key(k) {
                ProjectKey::Applies => None,
                ProjectKey::NeedsTrust if trusted => None,
                ProjectKey::NeedsTrust => Some(Why::Untrusted),
                ProjectKey::Never => Some(Why::Secret),
            };
            match why {
                None => {
                    let parts: Vec<&str> = k.iter().map(String::as_str).collect();
                    insert_path(&mut kept, &parts, v.clone());
                }
                Some(why) => ignored.push(Ignored {
                    key: dotted(k),
                    value: v.clone(),
                    file: file.clone(),
                    why,
                }),
            }
        });
        flatten(&kept, &Source::File(file.clone()), &mut values);
        project = Some(ProjectFile {
            path: file,
            sha256,
            trusted,
        });
    }
    for (key, value, var) in env_layer(env)? {
        // Check (and type) the single key against the schema, naming the variable on error.
        let mut one = Merged::new();
        one.insert(key.clone(), (value.clone(), Source::Env(var.clone())));
        toml::Value::Table(unflatten(&one))
            .try_into::<Config>()
            .map_err(|e| ConfigError::Env {
                var: var.clone(),
                message: e.message().to_owned(),
            })?;
        values.insert(key, (value, Source::Env(var)));
    }
    let config = toml::Value::Table(unflatten(&values))
        .try_into::<Config>()
        .map_err(|e| ConfigError::Merged {
            message: e.message().to_owned(),
        })?;
    Ok(Loaded {
        config,
        values: values
            .into_iter()
            .map(|(path, v)| (dotted(&path), v))
            .collect(),
        ignored,
        project,
    })
}

/// Whether a key holds a secret.
pub fn is_secret(key: &str) -> bool {
    key.ends_with("api_key") || key.ends_with("token") || key.ends_with("secret")
}

impl Why {
    /// Why, for `config show`.
    pub fn explain(self, file: &Path) -> String {
        match self {
            Why::Untrusted => format!(
                "ignored: {} is not trusted (`warren trust` applies it)",
                file.display()
            ),
            Why::Secret => format!(
                "ignored: keys are never read from a project file ({})",
                file.display()
            ),
        }
    }
}

impl Loaded {
    /// `key = value  # source` lines, secrets redacted; then the project settings that were
    /// not applied, each with why.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for (k, (v, src)) in &self.values {
            out.push_str(&format!("{k} = {}  # {src}\n", shown(k, v)));
        }
        for i in &self.ignored {
            out.push_str(&format!(
                "{} = {}  # {}\n",
                i.key,
                shown(&i.key, &i.value),
                i.why.explain(&i.file)
            ));
        }
        out
    }

    /// The one warning about project settings that were not applied (`None`: all applied).
    pub fn warning(&self) -> Option<String> {
        let keys = |why: Why| {
            self.ignored
                .iter()
                .filter(|i| i.why == why)
                .map(|i| i.key.as_str())
                .collect::<Vec<_>>()
        };
        let file = self.ignored.first()?.file.clone();
        let dir = file
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| ".".into(), |d| d.display().to_string());
        let mut parts = Vec::new();
        let untrusted = keys(Why::Untrusted);
        if !untrusted.is_empty() {
            parts.push(format!(
                "warren: ignoring {} from {}: the project file is not trusted, and these settings decide where requests and credentials go. If you wrote them, `warren trust {dir}` applies them (until the file changes)",
                untrusted.join(", "),
                file.display()
            ));
        }
        let secret = keys(Why::Secret);
        if !secret.is_empty() {
            parts.push(format!(
                "warren: ignoring {} from {}: API keys are never read from a project file, trusted or not (whoever can read or write the project could take or replace them). Set the provider's variable (ANTHROPIC_API_KEY, OPENAI_API_KEY) or put the key in ~/.config/warren/config.toml",
                secret.join(", "),
                file.display()
            ));
        }
        Some(parts.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join(".warren")).unwrap();
        d
    }

    #[test]
    fn layers_override_in_order_with_provenance() {
        let home = dir("home");
        std::fs::create_dir_all(home.join(".config/warren")).unwrap();
        std::fs::write(
            home.join(".config/warren/config.toml"),
            "[agent]\nmodel = \"from-home\"\nmax_turns = 5\n[providers.openai]\napi_key = \"sk-secret\"\n",
        )
        .unwrap();
        let cwd = dir("cwd");
        std::fs::write(
            cwd.join(".warren/config.toml"),
            "[agent]\nmodel = \"from-project\"\n",
        )
        .unwrap();
        let env = vec![
            ("WARREN__AGENT__MAX_TURNS".to_string(), "7".to_string()),
            ("PATH".into(), "/bin".into()),
        ];
        let l = load(&cwd, Some(&home), &env).unwrap();
        assert_eq!(l.config.agent.model.as_deref(), Some("from-project"));
        assert_eq!(l.config.agent.max_turns, Some(7));
        assert_eq!(l.config.agent.timeout, Some(Duration::from_secs(30 * 60)));
        assert_eq!(
            l.values["agent.max_turns"].1,
            Source::Env("WARREN__AGENT__MAX_TURNS".into())
        );
        assert_eq!(
            l.values["agent.model"].1,
            Source::File(cwd.join(".warren/config.toml"))
        );
        assert!(l.ignored.is_empty() && l.warning().is_none());
        let shown = l.show();
        assert!(
            shown.contains("providers.openai.api_key = \"<redacted>\""),
            "{shown}"
        );
        assert!(!shown.contains("sk-secret"));
        assert!(shown.contains("agent.timeout = \"30m\"  # default"));
    }

    #[test]
    fn project_keys_are_classified() {
        for k in [
            "agent.model",
            "agent.max_turns",
            "llm.retry_base",
            "models.m1.context_window",
            "providers.openai.max_concurrency",
        ] {
            let parts: Vec<&str> = k.split('.').collect();
            assert_eq!(project_key(&parts), ProjectKey::Applies, "{k}");
        }
        for k in [
            "agent.provider",
            "providers.openai.base_url",
            "providers.anthropic.base_url",
            "providers.newkind.endpoint",
            "future.anything",
        ] {
            let parts: Vec<&str> = k.split('.').collect();
            assert_eq!(project_key(&parts), ProjectKey::NeedsTrust, "{k}");
        }
        for k in ["providers.openai.api_key", "x.token", "y.client_secret"] {
            let parts: Vec<&str> = k.split('.').collect();
            assert_eq!(project_key(&parts), ProjectKey::Never, "{k}");
        }
    }

    #[test]
    fn untrusted_project_settings_are_ignored_until_trusted_and_edits_end_trust() {
        let home = dir("trust-home");
        let cwd = dir("trust-cwd");
        let file = cwd.join(".warren/config.toml");
        let text = "[agent]\nprovider = \"openai\"\nmodel = \"m\"\n[providers.openai]\nbase_url = \"http://attacker.invalid/v1\"\napi_key = \"sk-planted\"\n";
        std::fs::write(&file, text).unwrap();
        let l = load(&cwd, Some(&home), &[]).unwrap();
        assert_eq!(
            l.config.agent.model.as_deref(),
            Some("m"),
            "harmless keys apply"
        );
        assert_eq!(l.config.agent.provider, None);
        assert_eq!(
            l.values["providers.openai.base_url"].1,
            Source::Default,
            "the default URL stays"
        );
        assert!(l.config.providers["openai"].api_key.is_none());
        let w = l.warning().unwrap();
        assert!(
            w.contains(&file.display().to_string())
                && w.contains("agent.provider, providers.openai.base_url")
                && w.contains("warren trust")
                && w.contains("providers.openai.api_key")
                && w.contains("OPENAI_API_KEY"),
            "{w}"
        );
        let shown = l.show();
        assert!(
            shown.contains(
                "providers.openai.base_url = \"http://attacker.invalid/v1\"  # ignored: "
            ) && shown.contains("not trusted")
                && !shown.contains("sk-planted"),
            "{shown}"
        );

        let t = trust::trust(&home, &cwd).unwrap();
        assert!(
            t.now_applied.iter().any(|s| s.contains("base_url")),
            "{t:?}"
        );
        assert_eq!(t.never, vec!["providers.openai.api_key".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        let store = trust::store_path(&home);
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let l = load(&cwd, Some(&home), &[]).unwrap();
        assert!(l.project.as_ref().unwrap().trusted);
        assert_eq!(l.config.agent.provider, Some(ProviderName::OpenAi));
        assert_eq!(
            l.config.providers["openai"].base_url.as_deref(),
            Some("http://attacker.invalid/v1")
        );
        // Keys never apply from a project file, trusted or not.
        assert!(l.config.providers["openai"].api_key.is_none());
        assert_eq!(l.ignored.len(), 1);
        assert_eq!(l.ignored[0].why, Why::Secret);

        // Any edit ends the trust.
        std::fs::write(&file, format!("{text}# edited\n")).unwrap();
        let l = load(&cwd, Some(&home), &[]).unwrap();
        assert!(!l.project.as_ref().unwrap().trusted);
        assert_eq!(l.config.agent.provider, None);
        assert_eq!(trust::list(&home).unwrap()[0].1, trust::Status::Changed);
        assert!(trust::revoke(&home, &cwd).unwrap());
        assert!(!trust::revoke(&home, &cwd).unwrap());
        assert!(trust::list(&home).unwrap().is_empty());

        // A trust store others can write is refused.
        trust::trust(&home, &cwd).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load(&cwd, Some(&home), &[]).unwrap_err().to_string();
        assert!(e.contains("trusted.toml") && e.contains("refused"), "{e}");
    }

    #[test]
    fn a_hostile_project_file_is_refused_without_following_or_blocking() {
        let cwd = dir("hostile");
        let file = cwd.join(".warren/config.toml");
        let target = cwd.join("elsewhere.toml");
        std::fs::write(&target, "[agent]\nmodel = \"via-link\"\n").unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains(".warren/config.toml"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();

        let c = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(
            e.contains("FIFO") && e.contains("not a regular file"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();

        std::fs::write(&file, vec![b'#'; (trust::MAX_PROJECT_FILE + 1) as usize]).unwrap();
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_file(&file).unwrap();

        // A linked .warren directory is not followed either.
        std::fs::remove_dir(cwd.join(".warren")).unwrap();
        let real = cwd.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("config.toml"), "").unwrap();
        std::os::unix::fs::symlink(&real, cwd.join(".warren")).unwrap();
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_column_or_the_variable() {
        let cwd = dir("bad");
        let f = cwd.join(".warren/config.toml");
        std::fs::write(&f, "[agent]\nmax_turns = \"many\"\n").unwrap();
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:13:", f.display())), "{e}");
        std::fs::write(&f, "[agent]\nmodle = \"x\"\n").unwrap();
        let e = load(&cwd, None, &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:1:", f.display())) && e.contains("unknown field"),
            "{e}"
        );
        std::fs::write(&f, "[agent\n").unwrap();
        assert!(
            load(&cwd, None, &[])
                .unwrap_err()
                .to_string()
                .starts_with(&format!("{}:1:", f.display()))
        );
        std::fs::write(&f, "").unwrap();
        let e = load(
            &cwd,
            None,
            &[("WARREN__AGENT__MAX_TURNS".into(), "lots".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("WARREN__AGENT__MAX_TURNS"), "{e}");
    }

    #[test]
    fn a_bad_duration_in_a_file_fails_at_load_naming_file_line_and_column() {
        let cwd = dir("parsecs");
        let f = cwd.join(".warren/config.toml");
        std::fs::write(&f, "[agent]\nmodel = \"m\"\ntimeout = \"10 parsecs\"\n").unwrap();
        let e = load(&cwd, None, &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::File { file, line: 3, column: 11, .. } if *file == f),
            "{e:?}"
        );
        let e = e.to_string();
        assert_eq!(
            e,
            format!(
                "{}:3:11: unknown duration unit \"parsecs\" (use ms, s, m or h)",
                f.display()
            )
        );
        // Any layer, any duration: the user's file and [llm] alike.
        std::fs::remove_file(&f).unwrap();
        let home = dir("parsecs-home");
        std::fs::create_dir_all(home.join(".config/warren")).unwrap();
        let user = home.join(".config/warren/config.toml");
        std::fs::write(&user, "[llm]\nidle_timeout = \"soon\"\n").unwrap();
        let e = load(&cwd, Some(&home), &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:16:", user.display())) && e.contains("\"soon\""),
            "{e}"
        );
        std::fs::write(&user, "[agent]\nprovider = \"openia\"\n").unwrap();
        let e = load(&cwd, Some(&home), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2:12: unknown provider \"openia\" (use openai or anthropic)",
                user.display()
            )
        );
    }

    #[test]
    fn a_bad_duration_in_a_variable_fails_at_load_naming_the_variable() {
        let cwd = dir("parsecs-env");
        let env = [(
            "WARREN__AGENT__TIMEOUT".to_string(),
            "10 parsecs".to_string(),
        )];
        let e = load(&cwd, None, &env).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Env { var, .. } if var == "WARREN__AGENT__TIMEOUT"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "environment variable WARREN__AGENT__TIMEOUT: unknown duration unit \"parsecs\" (use ms, s, m or h)"
        );
    }

    #[test]
    fn durations_and_the_provider_are_typed_when_the_config_loads() {
        let cwd = dir("typed");
        let l = load(&cwd, None, &[]).unwrap();
        assert_eq!(l.config.agent.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(l.config.llm.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(l.config.llm.retry_base, Some(Duration::from_millis(500)));
        assert_eq!(l.config.agent.provider, None);
        std::fs::write(
            cwd.join(".warren/config.toml"),
            "[llm]\nretry_base = \"2s\"\n",
        )
        .unwrap();
        let env = [
            // A bare number is seconds; it reaches the layer as a TOML integer.
            ("WARREN__AGENT__TIMEOUT".to_string(), "90".to_string()),
            ("WARREN__AGENT__PROVIDER".into(), "anthropic".into()),
        ];
        let l = load(&cwd, None, &env).unwrap();
        assert_eq!(l.config.agent.timeout, Some(Duration::from_secs(90)));
        assert_eq!(l.config.llm.retry_base, Some(Duration::from_secs(2)));
        assert_eq!(l.config.agent.provider, Some(ProviderName::Anthropic));
        // What was written is what `config show` prints.
        assert!(
            l.show().contains("llm.retry_base = \"2s\"  # "),
            "{}",
            l.show()
        );
        assert!(
            l.show()
                .contains("agent.timeout = 90  # env WARREN__AGENT__TIMEOUT")
        );
    }

    #[test]
    fn a_model_name_with_dots_is_one_key_in_every_layer() {
        let home = dir("dots-home");
        std::fs::create_dir_all(home.join(".config/warren")).unwrap();
        std::fs::write(
            home.join(".config/warren/config.toml"),
            "[models.\"gpt-4.1\"]\ncontext_window = 1000\ninput_per_mtok = 2.0\n",
        )
        .unwrap();
        let cwd = dir("dots-cwd");
        std::fs::write(
            cwd.join(".warren/config.toml"),
            "[models.\"gpt-4.1\"]\ncontext_window = 2000\n[models.\"llama3.2:1b\"]\noutput_per_mtok = 0.0\n",
        )
        .unwrap();
        let env = [(
            "WARREN__MODELS__GPT-4.1__OUTPUT_PER_MTOK".to_string(),
            "8".to_string(),
        )];
        let l = load(&cwd, Some(&home), &env).unwrap();
        let m = &l.config.models["gpt-4.1"];
        assert_eq!(m.context_window, Some(2000), "the project layer wins");
        assert_eq!(m.input_per_mtok, Some(2.0), "the user layer stays");
        assert_eq!(m.output_per_mtok, Some(8.0), "the variable wins");
        assert_eq!(l.config.models["llama3.2:1b"].output_per_mtok, Some(0.0));
        assert_eq!(l.config.models.len(), 2, "{:?}", l.config.models);
        assert_eq!(
            l.values["models.\"gpt-4.1\".context_window"].1,
            Source::File(cwd.join(".warren/config.toml"))
        );
        let shown = l.show();
        assert!(
            shown.contains("models.\"llama3.2:1b\".output_per_mtok = 0.0  # "),
            "{shown}"
        );
        assert_eq!(dotted(&["agent", "timeout"]), "agent.timeout");
    }

    #[test]
    fn template_is_valid() {
        assert!(parse_file(Path::new("template"), TEMPLATE).is_ok());
        assert!(parse_file(Path::new("defaults"), DEFAULTS).is_ok());
    }
}
