//! Errors of LLM calls, classified so callers (and the retry loop) know what to do.

/// An LLM call failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The key was rejected (401/403). Not retried: fix the key.
    #[error("{provider} rejected the API key (HTTP {status}): {message}. Set {hint}")]
    Auth {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
        /// Where the key comes from (variable and config key).
        hint: String,
    },
    /// The provider answered with an error status after all retries (or a non-retryable one).
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
    },
    /// Connection, timeout or stream failure after all retries.
    #[error("{provider}: {message}")]
    Transport {
        /// Provider name.
        provider: String,
        /// What happened.
        message: String,
    },
    /// The provider sent something that is not its documented format.
    #[error("{provider} sent an invalid response: {message}")]
    Protocol {
        /// Provider name.
        provider: String,
        /// What was wrong.
        message: String,
    },
    /// A replayed request differs from the recording.
    #[error("replay diverged at exchange {index} of {path}:\n{diff}")]
    ReplayDivergence {
        /// Transcript path.
        path: String,
        /// 0-based exchange index.
        index: usize,
        /// Unified diff, recorded vs actual request.
        diff: String,
    },
    /// The transcript has no more exchanges.
    #[error("replay transcript {path} has no exchange {index}")]
    ReplayExhausted {
        /// Transcript path.
        path: String,
        /// 0-based exchange index.
        index: usize,
    },
    /// Reading or writing a transcript failed.
    #[error("transcript {path}: {message}")]
    Transcript {
        /// Transcript path.
        path: String,
        /// What happened.
        message: String,
    },
}

impl LlmError {
    /// Whether the retry loop may try again.
    pub fn retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Transport { .. } | LlmError::Protocol { .. } => true,
            _ => false,
        }
    }
}
