//! Record and replay: every exchange can be written to a JSONL transcript, and a transcript
//! can stand in for the provider, deterministically.
//!
//! A transcript line is one exchange: `{"provider", "request", "response"}`. Requests carry
//! no credentials (keys travel in headers, which are not recorded). Replay compares each new
//! request with the recorded one and fails with a unified diff when they differ, so a changed
//! prompt or tool schema is caught instead of silently replaying stale answers.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::LlmError;
use crate::provider::{EventSink, Provider};
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// One recorded exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// Provider name.
    pub provider: String,
    /// What was asked.
    pub request: ChatRequest,
    /// What came back.
    pub response: ChatResponse,
}

/// Wraps a provider and appends every successful exchange to a transcript.
pub struct Recorder<P> {
    inner: P,
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn transcript_err(path: &Path, e: impl std::fmt::Display) -> LlmError {
    LlmError::Transcript {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl<P: Provider> Recorder<P> {
    /// Record `inner`'s exchanges to `path` (created or truncated).
    pub fn new(inner: P, path: impl Into<PathBuf>) -> Result<Self, LlmError> {
        let path = path.into();
        let file = std::fs::File::create(&path).map_err(|e| transcript_err(&path, e))?;
        Ok(Recorder {
            inner,
            path,
            file: Mutex::new(file),
        })
    }
}

#[async_trait::async_trait]
impl<P: Provider> Provider for Recorder<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let response = self.inner.chat(request, events).await?;
        let ex = Exchange {
            provider: self.inner.name().to_owned(),
            request: request.clone(),
            response: response.clone(),
        };
        let mut line = serde_json::to_vec(&ex).map_err(|e| transcript_err(&self.path, e))?;
        line.push(b'\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| transcript_err(&self.path, "lock poisoned"))?;
        f.write_all(&line)
            .and_then(|()| f.flush())
            .map_err(|e| transcript_err(&self.path, e))?;
        Ok(response)
    }
}

/// Plays a transcript back, in order.
pub struct Replay {
    name: String,
    path: PathBuf,
    exchanges: Vec<Exchange>,
    next: Mutex<usize>,
}

impl Replay {
    /// Load a transcript.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, LlmError> {
        let path = path.into();
        let f = std::fs::File::open(&path).map_err(|e| transcript_err(&path, e))?;
        let mut exchanges = Vec::new();
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| transcript_err(&path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let ex: Exchange = serde_json::from_str(&line)
                .map_err(|e| transcript_err(&path, format!("line {}: {e}", n + 1)))?;
            exchanges.push(ex);
        }
        let name = exchanges
            .first()
            .map_or_else(|| "replay".to_owned(), |e| e.provider.clone());
        Ok(Replay {
            name,
            path,
            exchanges,
            next: Mutex::new(0),
        })
    }

    /// The model named in the first recorded request.
    pub fn first_model(&self) -> Option<String> {
        self.exchanges.first().map(|e| e.request.model.clone())
    }

    /// How many exchanges were played.
    pub fn played(&self) -> usize {
        self.next.lock().map_or(0, |n| *n)
    }
}

fn pretty(r: &ChatRequest) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default() + "\n"
}

#[async_trait::async_trait]
impl Provider for Replay {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let index = {
            let mut n = self
                .next
                .lock()
                .map_err(|_| transcript_err(&self.path, "lock poisoned"))?;
            let i = *n;
            *n += 1;
            i
        };
        let path = self.path.display().to_string();
        let ex = self.exchanges.get(index).ok_or(LlmError::ReplayExhausted {
            path: path.clone(),
            index,
        })?;
        if &ex.request != request {
            let (recorded, actual) = (pretty(&ex.request), pretty(request));
            let diff = similar::TextDiff::from_lines(&recorded, &actual)
                .unified_diff()
                .context_radius(2)
                .header("recorded", "actual")
                .to_string();
            return Err(LlmError::ReplayDivergence { path, index, diff });
        }
        if !ex.response.text.is_empty() {
            events(StreamEvent::TextDelta(ex.response.text.clone()));
        }
        for c in &ex.response.tool_calls {
            events(StreamEvent::ToolCallStarted {
                id: c.id.clone(),
                name: c.name.clone(),
            });
        }
        Ok(ex.response.clone())
    }
}
