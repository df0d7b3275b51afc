//! Model providers from configuration: which provider, which key and URL, how patient.
//!
//! Shared by `warren run` (one task) and the daemon (many tasks, one provider per kind, shared
//! so that its concurrency limit holds across tasks).

use warren_config::{Loaded, ProviderName, Source, UnknownProvider};
use warren_llm::ProviderConfig;
use warren_llm::catalog::{Catalog, ModelInfo};

/// A configured value, unless it is only the built-in default.
pub fn configured<'a>(loaded: &'a Loaded, key: &str) -> Option<&'a toml::Value> {
    loaded
        .values
        .get(key)
        .filter(|(_, src)| *src != Source::Default)
        .map(|(v, _)| v)
}

/// A model provider could not be set up for a task.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A flag or manifest names a provider that does not exist.
    #[error(transparent)]
    Unknown(#[from] UnknownProvider),
    /// The provider's client could not be built from its configuration.
    #[error("cannot set up the {kind} provider: {source}")]
    Build {
        /// Which provider.
        kind: ProviderName,
        /// Why.
        source: warren_llm::LlmError,
    },
}

/// The provider kind to use: `chosen` (a flag or a manifest), else `agent.provider`, else
/// anthropic when its key is set, else openai.
pub fn kind(
    chosen: Option<&str>,
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProviderName, UnknownProvider> {
    if let Some(name) = chosen {
        return name.parse();
    }
    Ok(match loaded.config.agent.provider {
        Some(p) => p,
        None if env("ANTHROPIC_API_KEY").is_some()
            || configured(loaded, "providers.anthropic.api_key").is_some() =>
        {
            ProviderName::Anthropic
        }
        None => ProviderName::OpenAi,
    })
}

/// The configuration of provider `kind` (from [`kind`]) and its default model: the provider's
/// usual variables, then the config file's URL and key, then the `[llm]` reliability settings.
pub fn config(
    kind: ProviderName,
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> (ProviderConfig, &'static str) {
    let (mut config, default_model) = match kind {
        ProviderName::Anthropic => (
            ProviderConfig::anthropic_from_env(env),
            "claude-sonnet-4-20250514",
        ),
        ProviderName::OpenAi => (ProviderConfig::openai_from_env(env), "gpt-4o"),
    };
    // A configured URL or key beats the provider's usual variable, which beats the default.
    if let Some(url) =
        configured(loaded, &format!("providers.{kind}.base_url")).and_then(|v| v.as_str())
    {
        config.base_url = url.trim_end_matches('/').to_owned();
    }
    if let Some(key) =
        configured(loaded, &format!("providers.{kind}.api_key")).and_then(|v| v.as_str())
    {
        config.api_key = Some(key.to_owned());
    }
    if let Some(n) = loaded
        .config
        .providers
        .get(kind.as_str())
        .and_then(|p| p.max_concurrency)
    {
        config.max_concurrency = n.clamp(1, 1024) as usize;
    }
    tune(&mut config, &loaded.config.llm);
    (config, default_model)
}

/// Reliability settings of the `[llm]` section (also `WARREN__LLM__*`), typed when the
/// configuration loaded.
fn tune(config: &mut ProviderConfig, llm: &warren_config::LlmSection) {
    if let Some(d) = llm.idle_timeout {
        config.idle_timeout = d;
    }
    if let Some(d) = llm.retry_base {
        config.retry.base = d;
        config.retry.max_delay = config.retry.max_delay.max(d);
    }
    if let Some(n) = llm.max_attempts {
        config.retry.max_attempts = n.clamp(1, 100);
    }
}

/// The model catalog with the `[models.*]` overrides applied.
pub fn catalog(loaded: &Loaded) -> Catalog {
    let overrides = loaded
        .config
        .models
        .iter()
        .map(|(name, m)| {
            let base = Catalog::default().lookup(name);
            let info = ModelInfo {
                context_window: m.context_window.unwrap_or(base.context_window),
                input_per_mtok: m.input_per_mtok.unwrap_or(base.input_per_mtok),
                cached_input_per_mtok: m
                    .cached_input_per_mtok
                    .unwrap_or(base.cached_input_per_mtok),
                output_per_mtok: m.output_per_mtok.unwrap_or(base.output_per_mtok),
            };
            (name.clone(), info)
        })
        .collect();
    Catalog::with_overrides(overrides)
}

/// The context window for `model`: `llm.context_window` when set, else the catalog's.
pub fn context_window(loaded: &Loaded, model: &str) -> u32 {
    loaded
        .config
        .llm
        .context_window
        .filter(|n| *n > 0)
        .unwrap_or_else(|| catalog(loaded).lookup(model).context_window)
}
