//! Warren's layered configuration.
//!
//! Layers, lowest first: built-in defaults < `/etc/warren/config.toml` <
//! `~/.config/warren/config.toml` < `./.warren/config.toml` < `WARREN__SECTION__KEY`
//! environment variables; command-line flags override all of them at the call site.
//!
//! Two stages, as in the house style: each layer is parsed and checked on its own (so an
//! error names the file, line and column — or the variable — where it was written), then the
//! layers are merged key by key, remembering where each effective value came from, and the
//! result is resolved into the typed [`Config`]. `warren config show` prints that provenance
//! with secrets redacted.

pub mod manifest;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
}

/// `[agent]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// `openai` or `anthropic`.
    pub provider: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Turn limit.
    pub max_turns: Option<u32>,
    /// Token budget.
    pub budget_tokens: Option<u64>,
    /// Wall-clock limit, e.g. "30m".
    pub timeout: Option<String>,
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
    /// Abandon a silent stream after this long, e.g. "120s".
    pub idle_timeout: Option<String>,
    /// Backoff base, e.g. "500ms".
    pub retry_base: Option<String>,
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
    /// Dotted key -> (value, source), for `config show`.
    pub values: BTreeMap<String, (toml::Value, Source)>,
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
# provider = "anthropic"          # or "openai" (any OpenAI-compatible server)
# model = "claude-sonnet-4-20250514"
# max_turns = 30
# budget_tokens = 500000
# timeout = "30m"

# Keys: prefer the provider's usual variable (ANTHROPIC_API_KEY, OPENAI_API_KEY); a key written
# here must not be committed. Keys never enter a cell.
# [providers.openai]
# base_url = "http://localhost:11434/v1"   # e.g. Ollama
# api_key = "…"
# max_concurrency = 8

# [llm]
# idle_timeout = "120s"
# retry_base = "500ms"
# max_attempts = 5

# [models."my-local-model"]
# context_window = 32768
# input_per_mtok = 0.0
# output_per_mtok = 0.0
"#;

fn line_col(text: &str, offset: usize) -> (usize, usize) {
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

fn flatten(
    prefix: &str,
    table: &toml::Table,
    source: &Source,
    out: &mut BTreeMap<String, (toml::Value, Source)>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, source, out),
            other => {
                out.insert(key, (other.clone(), source.clone()));
            }
        }
    }
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

fn unflatten(values: &BTreeMap<String, (toml::Value, Source)>) -> toml::Table {
    let mut root = toml::Table::new();
    for (key, (v, _)) in values {
        let parts: Vec<&str> = key.split('.').collect();
        insert_path(&mut root, &parts, v.clone());
    }
    root
}

/// `WARREN__AGENT__MODEL=x` -> `agent.model = "x"`. Values that parse as TOML numbers or
/// booleans are taken as such; anything else is a string.
fn env_layer(vars: &[(String, String)]) -> Result<Vec<(String, toml::Value, String)>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("WARREN__") else {
            continue;
        };
        let key = rest
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        // Knobs read directly by the runtime, not part of the file schema.
        if key.split('.').any(str::is_empty) {
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
pub fn load(
    cwd: &Path,
    home: Option<&Path>,
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    let mut values = BTreeMap::new();
    let defaults: toml::Table = toml::from_str(DEFAULTS).unwrap_or_default();
    flatten("", &defaults, &Source::Default, &mut values);
    for file in files(cwd, home) {
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
        flatten("", &table, &Source::File(file), &mut values);
    }
    for (key, value, var) in env_layer(env)? {
        // Check the single key against the schema, naming the variable on error.
        let mut one = BTreeMap::new();
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
        .map_err(|e| ConfigError::Env {
            var: "(merged configuration)".into(),
            message: e.message().to_owned(),
        })?;
    Ok(Loaded { config, values })
}

/// Whether a key holds a secret.
pub fn is_secret(key: &str) -> bool {
    key.ends_with("api_key") || key.ends_with("token") || key.ends_with("secret")
}

impl Loaded {
    /// `key = value  # source` lines, secrets redacted.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for (k, (v, src)) in &self.values {
            let shown = if is_secret(k) {
                "\"<redacted>\"".to_owned()
            } else {
                v.to_string()
            };
            out.push_str(&format!("{k} = {shown}  # {src}\n"));
        }
        out
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
            "[agent]\nmodel = \"from-home\"\nmax_turns = 5\n",
        )
        .unwrap();
        let cwd = dir("cwd");
        std::fs::write(
            cwd.join(".warren/config.toml"),
            "[agent]\nmodel = \"from-project\"\n[providers.openai]\napi_key = \"sk-secret\"\n",
        )
        .unwrap();
        let env = vec![
            ("WARREN__AGENT__MAX_TURNS".to_string(), "7".to_string()),
            ("PATH".into(), "/bin".into()),
        ];
        let l = load(&cwd, Some(&home), &env).unwrap();
        assert_eq!(l.config.agent.model.as_deref(), Some("from-project"));
        assert_eq!(l.config.agent.max_turns, Some(7));
        assert_eq!(l.config.agent.timeout.as_deref(), Some("30m"));
        assert_eq!(
            l.values["agent.max_turns"].1,
            Source::Env("WARREN__AGENT__MAX_TURNS".into())
        );
        assert_eq!(
            l.values["agent.model"].1,
            Source::File(cwd.join(".warren/config.toml"))
        );
        let shown = l.show();
        assert!(
            shown.contains("providers.openai.api_key = \"<redacted>\""),
            "{shown}"
        );
        assert!(!shown.contains("sk-secret"));
        assert!(shown.contains("agent.timeout = \"30m\"  # default"));
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
    fn template_is_valid() {
        assert!(parse_file(Path::new("template"), TEMPLATE).is_ok());
        assert!(parse_file(Path::new("defaults"), DEFAULTS).is_ok());
    }
}
