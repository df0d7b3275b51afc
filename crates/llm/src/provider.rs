//! The provider trait and how providers are configured.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LlmError;
use crate::retry::RetryPolicy;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// Receives stream events as they arrive.
pub type EventSink<'a> = &'a mut (dyn FnMut(StreamEvent) + Send);

/// A chat model behind some wire format.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Name for messages and transcripts ("openai", "anthropic", …).
    fn name(&self) -> &str;

    /// Send one request; stream events to `events`; return the complete answer.
    async fn chat(
        &self,
        request: &ChatRequest,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, LlmError>;
}

/// The two wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI Chat Completions, as spoken by OpenAI, DeepSeek, OpenRouter, Ollama, vLLM and
    /// llama.cpp's server.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// Everything needed to talk to one provider.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Name used in messages and transcripts.
    pub name: String,
    /// Wire format.
    pub kind: ProviderKind,
    /// Base URL: for OpenAI-compatible servers including `/v1` (as `OPENAI_BASE_URL`), for
    /// Anthropic without it (as `ANTHROPIC_BASE_URL`).
    pub base_url: String,
    /// API key, if any (local servers often need none).
    pub api_key: Option<String>,
    /// Where to fix the key, named in authentication errors.
    pub key_hint: String,
    /// At most this many requests in flight to this provider.
    pub max_concurrency: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Abandon an attempt whose stream is silent for this long.
    pub idle_timeout: Duration,
    /// Abandon an attempt that has not produced response headers within this long.
    pub connect_timeout: Duration,
}

impl ProviderConfig {
    fn base(
        name: &str,
        kind: ProviderKind,
        base_url: String,
        api_key: Option<String>,
        key_hint: String,
    ) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.filter(|k| !k.is_empty()),
            key_hint,
            max_concurrency: 8,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(60),
        }
    }

    /// OpenAI (or any compatible server) configured from `OPENAI_BASE_URL` and
    /// `OPENAI_API_KEY`, as the official SDKs read them. `env` looks variables up (pass
    /// `|k| std::env::var(k).ok()`).
    pub fn openai_from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        Self::base(
            "openai",
            ProviderKind::OpenAi,
            env("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            env("OPENAI_API_KEY"),
            "OPENAI_API_KEY (or providers.openai.api_key in the config)".into(),
        )
    }

    /// Anthropic configured from `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY`.
    pub fn anthropic_from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        Self::base(
            "anthropic",
            ProviderKind::Anthropic,
            env("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
            env("ANTHROPIC_API_KEY"),
            "ANTHROPIC_API_KEY (or providers.anthropic.api_key in the config)".into(),
        )
    }
}

/// Build the provider a config describes.
pub fn build(config: ProviderConfig) -> Result<Arc<dyn Provider>, LlmError> {
    Ok(match config.kind {
        ProviderKind::OpenAi => Arc::new(crate::client::HttpProvider::new(
            config,
            crate::openai::OpenAi,
        )?),
        ProviderKind::Anthropic => Arc::new(crate::client::HttpProvider::new(
            config,
            crate::anthropic::Anthropic,
        )?),
    })
}

/// A shared provider is a provider (so wrappers such as the recorder can hold either).
#[async_trait::async_trait]
impl Provider for Arc<dyn Provider> {
    fn name(&self) -> &str {
        self.as_ref().name()
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        self.as_ref().chat(request, events).await
    }
}
