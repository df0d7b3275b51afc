//! Model providers from configuration: which provider, which key and URL, how patient.
//!
//! Shared by `warren run` (one task) and the daemon (many tasks, one provider per kind, shared
//! so that its concurrency limit holds across tasks).

use warren_config::{Loaded, Source};
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

/// The provider kind to use: `chosen` (a flag or a manifest), else `agent.provider`, else
/// anthropic when its key is set, else openai.
pub fn kind(
    chosen: Option<&str>,
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<&'static str, String> {
    match chosen.or(loaded.config.agent.provider.map(|p| p.as_str())) {
        Some("openai") => Ok("openai"),
        Some("anthropic") => Ok("anthropic"),
        Some(other) => Err(format!(
            "unknown provider {other:?} (use openai or anthropic)"
        )),
        None if env("ANTHROPIC_API_KEY").is_some()
            || configured(loaded, "providers.anthropic.api_key").is_some() =>
        {
            Ok("anthropic")
        }
        None => Ok("openai"),
    }
}

/// The configuration of provider `kind` (from [`kind`]) and its default model: the provider's
/// usual variables, then the config file's URL and key, then the `[llm]` reliability settings.
pub fn config(
    kind: &str,
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(ProviderConfig, &'static str), String> {
    let (mut config, default_model) = match kind {
        "anthropic" => (
            ProviderConfig::anthropic_from_env(env),
            "claude-sonnet-4-20250514",
        ),
        _ => (ProviderConfig::openai_from_env(env), "gpt-4o"),
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
        .get(kind)
        .and_then(|p| p.max_concurrency)
    {
        config.max_concurrency = n.clamp(1, 1024) as usize;
    }
    tune(&mut config, &loaded.config.llm);
    Ok((config, default_model))
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
