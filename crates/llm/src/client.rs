//! The HTTP driver shared by both wire formats: concurrency limit, attempts and retries,
//! status handling, streaming with an idle timeout. A [`Dialect`] supplies what differs.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;

use crate::error::LlmError;
use crate::provider::{EventSink, Provider, ProviderConfig};
use crate::retry::parse_retry_after;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// An answer (a response body or a stream event) that is not in its wire format's documented
/// shape; [`LlmError::Protocol`] carries its message, naming the provider.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// From the OpenAI wire format.
    #[error(transparent)]
    OpenAi(#[from] crate::openai::OpenAiError),
    /// From the Anthropic wire format.
    #[error(transparent)]
    Anthropic(#[from] crate::anthropic::AnthropicError),
}

/// Incremental assembly of one streamed answer.
pub trait StreamState: Send {
    /// Handle one server-sent event. Returns `Ok(true)` once the answer is complete.
    fn on_event(
        &mut self,
        event: &str,
        data: &str,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<bool, AnswerError>;
    /// The assembled answer (called after `on_event` returned `true`).
    fn finish(self: Box<Self>) -> Result<ChatResponse, AnswerError>;
}

/// What differs between wire formats.
pub trait Dialect: Send + Sync + 'static {
    /// URL of the chat endpoint under `base`.
    fn endpoint(&self, base: &str) -> String;
    /// Authentication and version headers.
    fn headers(&self, key: Option<&str>) -> HeaderMap;
    /// The request body.
    fn body(&self, req: &ChatRequest) -> serde_json::Value;
    /// Parse a non-streaming answer.
    fn parse(&self, body: serde_json::Value) -> Result<ChatResponse, AnswerError>;
    /// State for a streaming answer.
    fn stream_state(&self) -> Box<dyn StreamState>;
    /// The human message inside an error body. Both wire formats put it at `error.message`;
    /// anything else is shown as (the start of) the body.
    fn error_message(&self, body: &str) -> String {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(300).collect())
    }
}

/// A provider speaking `D` over HTTP.
pub struct HttpProvider<D> {
    config: ProviderConfig,
    dialect: D,
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
}

struct Failure {
    error: LlmError,
    retry_after: Option<Duration>,
}

impl<D: Dialect> HttpProvider<D> {
    /// A provider for `config`.
    pub fn new(config: ProviderConfig, dialect: D) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| LlmError::Transport {
                provider: config.name.clone(),
                message: e.to_string(),
            })?;
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrency.max(1)));
        Ok(HttpProvider {
            config,
            dialect,
            client,
            slots,
        })
    }

    fn transport(&self, message: impl Into<String>) -> Failure {
        Failure {
            error: LlmError::Transport {
                provider: self.config.name.clone(),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> Failure {
        Failure {
            error: LlmError::Protocol {
                provider: self.config.name.clone(),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    async fn attempt(
        &self,
        body: &serde_json::Value,
        stream: bool,
        sink: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<ChatResponse, Failure> {
        let url = self.dialect.endpoint(&self.config.base_url);
        let send = self
            .client
            .post(&url)
            .headers(self.dialect.headers(self.config.api_key.as_deref()))
            .json(body)
            .send();
        let resp = match tokio::time::timeout(self.config.connect_timeout, send).await {
            Err(_) => {
                return Err(self.transport(format!(
                    "no response from {url} within {:?}",
                    self.config.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(self.transport(format!("request to {url} failed: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = tokio::time::timeout(self.config.idle_timeout, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = self.dialect.error_message(&text);
            let error = if status == 401 || status == 403 {
                LlmError::Auth {
                    provider: self.config.name.clone(),
                    status,
                    message,
                    hint: self.config.key_hint.clone(),
                }
            } else {
                LlmError::Status {
                    provider: self.config.name.clone(),
                    status,
                    message,
                }
            };
            return Err(Failure { error, retry_after });
        }
        if !stream {
            let bytes = match tokio::time::timeout(self.config.idle_timeout, resp.bytes()).await {
                Err(_) => return Err(self.transport("response body stalled")),
                Ok(Err(e)) => return Err(self.transport(format!("reading the response: {e}"))),
                Ok(Ok(b)) => b,
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| self.protocol(format!("body is not JSON: {e}")))?;
            return self
                .dialect
                .parse(v)
                .map_err(|e| self.protocol(e.to_string()));
        }
        let mut state = self.dialect.stream_state();
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = match tokio::time::timeout(self.config.idle_timeout, events.next()).await {
                Err(_) => {
                    return Err(self.transport(format!(
                        "stream stalled: nothing for {:?}",
                        self.config.idle_timeout
                    )));
                }
                Ok(n) => n,
            };
            match next {
                None => return Err(self.transport("stream ended before the answer was complete")),
                Some(Err(e)) => return Err(self.transport(format!("stream broke: {e}"))),
                Some(Ok(ev)) => {
                    if state
                        .on_event(&ev.event, &ev.data, sink)
                        .map_err(|e| self.protocol(e.to_string()))?
                    {
                        return state.finish().map_err(|e| self.protocol(e.to_string()));
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl<D: Dialect> Provider for HttpProvider<D> {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let body = self.dialect.body(request);
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| LlmError::Transport {
                provider: self.config.name.clone(),
                message: e.to_string(),
            })?;
        let policy = &self.config.retry;
        let mut attempt = 1;
        loop {
            // Track whether this attempt emitted anything, so a retry can tell consumers to
            // discard it: the answer never contains output from two attempts.
            let mut emitted = false;
            let mut forward = |e: StreamEvent| {
                emitted = true;
                events(e);
            };
            let result = self.attempt(&body, request.stream, &mut forward).await;
            match result {
                Ok(r) => return Ok(r),
                Err(f) if f.error.retryable() && attempt < policy.max_attempts => {
                    tokio::time::sleep(policy.delay(attempt, f.retry_after)).await;
                    attempt += 1;
                    if emitted {
                        events(StreamEvent::Restart {
                            attempt,
                            reason: f.error.to_string(),
                        });
                    }
                }
                Err(f) => return Err(f.error),
            }
        }
    }
}
