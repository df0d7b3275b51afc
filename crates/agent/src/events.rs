//! What a run reports: an [`AgentEvent`] for everything that happens, as it happens, and a
//! [`Report`] at the end.
//!
//! Every event goes to the caller's observer (`warren run --json` prints them as NDJSON; the
//! daemon turns them into task events) and, when the task has a logs directory, is appended
//! to `events.jsonl` there, which the cell sees at `/logs/events.jsonl`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use warren_llm::Usage;

use crate::error::LogsError;

/// What the loop reports as it runs (`warren run --json` prints these as NDJSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A model turn begins.
    Turn {
        /// 1-based.
        turn: u32,
    },
    /// Model text as it streams.
    Text {
        /// The fragment.
        delta: String,
    },
    /// The model answered without calling a tool (or finish) and was told to.
    Nudged {
        /// The turn it answered in.
        turn: u32,
        /// Nudges left before such an answer ends the task.
        remaining: u32,
    },
    /// The model wrote its tool calls as text (a small local model); they are taken as calls,
    /// with ids `text-<turn>-<n>`.
    TextToolCalls {
        /// The turn.
        turn: u32,
        /// How many.
        count: usize,
    },
    /// The provider retried and the text of this turn so far is void.
    Restart {
        /// Why.
        reason: String,
    },
    /// A tool call is about to run.
    ToolCall {
        /// Turn.
        turn: u32,
        /// Tool name.
        name: String,
        /// Raw arguments.
        arguments: String,
    },
    /// A tool call finished.
    ToolResult {
        /// Turn.
        turn: u32,
        /// Tool name.
        name: String,
        /// Failed?
        is_error: bool,
        /// First line of the result.
        summary: String,
        /// Characters of the full result.
        chars: usize,
        /// Where the full result was written, when truncated for the model.
        log: Option<String>,
    },
    /// Tokens used so far.
    Usage {
        /// This turn's usage.
        turn: Usage,
        /// The task's total.
        total: Usage,
    },
    /// Older turns were replaced by a summary written by the model.
    Summarized {
        /// Messages replaced.
        replaced: usize,
        /// Estimated tokens of the request before.
        tokens_before: u64,
        /// Estimated tokens after.
        tokens_after: u64,
    },
    /// The model called `finish`.
    Finished {
        /// What it reported.
        result: Value,
    },
    /// The loop stopped without `finish`.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The model called `finish`.
    Finished(Value),
    /// A limit or guard stopped it.
    Stopped(String),
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Model turns taken.
    pub turns: u32,
    /// Tokens used.
    pub usage: Usage,
}

/// Where one run's events go: the observer, and `events.jsonl` in the task's logs.
pub(crate) struct Events<'a> {
    log: Option<File>,
    observe: &'a mut (dyn FnMut(&AgentEvent) + Send),
}

impl<'a> Events<'a> {
    /// Events for `observe`, also appended to `events.jsonl` in `logs` when given (appended: a
    /// resumed task continues its log).
    pub(crate) fn open(
        logs: Option<&Path>,
        observe: &'a mut (dyn FnMut(&AgentEvent) + Send),
    ) -> Result<Self, LogsError> {
        let log = match logs {
            Some(dir) => {
                let path: PathBuf = dir.join("events.jsonl");
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|source| LogsError::Open { path, source })?,
                )
            }
            None => None,
        };
        Ok(Events { log, observe })
    }

    /// Report `event`. The log is a progress view: a failed write does not stop the task.
    pub(crate) fn emit(&mut self, event: AgentEvent) {
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{}", serde_json::to_string(&event).unwrap_or_default());
        }
        (self.observe)(&event);
    }

    /// The run stops without `finish` after `turns` turns: report why, and the end.
    pub(crate) fn stop(&mut self, reason: String, turns: u32, usage: Usage) -> Report {
        self.emit(AgentEvent::Stopped {
            reason: reason.clone(),
        });
        Report {
            outcome: Outcome::Stopped(reason),
            turns,
            usage,
        }
    }

    /// The model called `finish` in turn `turns`: report it, and the end.
    pub(crate) fn finish(&mut self, result: Value, turns: u32, usage: Usage) -> Report {
        self.emit(AgentEvent::Finished {
            result: result.clone(),
        });
        Report {
            outcome: Outcome::Finished(result),
            turns,
            usage,
        }
    }
}

/// The first two meaningful lines of a result, for progress views ("exit code 0 · Hello").
pub(crate) fn first_line(s: &str) -> String {
    let l = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--- std"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" · ");
    if l.chars().count() > 120 {
        l.chars().take(120).collect::<String>() + "…"
    } else {
        l
    }
}
