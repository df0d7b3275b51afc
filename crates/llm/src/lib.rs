//! LLM providers for Warren. The host talks to models; cells never do.
//!
//! One [`Provider`] trait, streaming through an event callback, with two wire formats behind
//! it: OpenAI Chat Completions (OpenAI, DeepSeek, OpenRouter, Ollama, vLLM, llama.cpp) and
//! Anthropic Messages. Both share one HTTP driver (`client`) that owns the reliability rules:
//!
//! - retries on 429, 5xx, connection errors, timeouts and broken or stalled streams, with
//!   exponential backoff and full jitter, `Retry-After` as a floor ([`retry`]);
//! - a retried stream first tells the consumer to discard what it received
//!   ([`StreamEvent::Restart`]), so output is never duplicated, and the returned
//!   [`ChatResponse`] holds exactly one attempt;
//! - a rejected key (401/403) fails at once, naming the provider and the variable to fix;
//! - at most `max_concurrency` requests in flight per provider.
//!
//! Usage comes from the provider's own fields (cached tokens included); context windows and
//! prices from a [`catalog::Catalog`] with no allowlist. Every exchange can be recorded to a
//! JSONL transcript and replayed deterministically ([`record`]).
//!
//! Design choice: tool-call arguments stay raw JSON text here; validating them against the
//! tool's schema is the agent's job, which must be able to tell the model what was wrong.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod anthropic;
pub mod catalog;
pub mod client;
pub mod error;
pub mod openai;
pub mod provider;
pub mod record;
pub mod retry;
pub mod types;

pub use error::LlmError;
pub use provider::{EventSink, Provider, ProviderConfig, ProviderKind, build};
pub use retry::RetryPolicy;
pub use types::{
    ChatRequest, ChatResponse, Message, StopReason, StreamEvent, ToolCall, ToolSpec, Usage,
};
