//! Why a run ended abnormally ([`AgentError`]). Limits are not errors: a run stopped by a
//! budget or a guard ends with [`crate::Outcome::Stopped`]; a tool call that failed or was
//! refused is a result the model is told about ([`crate::CallError`]), not an error of the run.

use std::path::PathBuf;

use warren_llm::LlmError;

use crate::journal::JournalError;

/// Errors that end a run abnormally (limits are not errors: see [`crate::Outcome::Stopped`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model provider failed after its retries.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// Writing the task's logs failed.
    #[error("task logs: {0}")]
    Logs(#[from] LogsError),
    /// The journal could not be read or written (the task cannot continue durably).
    #[error("task journal: {0}")]
    Journal(#[from] JournalError),
}

/// A file in the task's logs directory (the cell's `/logs`) could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Opening the event log (`events.jsonl`) for appending failed.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the full output of a truncated tool result failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
