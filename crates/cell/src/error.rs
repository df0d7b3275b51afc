//! Errors of the host side of a cell.

use std::path::PathBuf;

/// Everything that can go wrong starting, using or stopping a cell.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The cell refused to start: a mechanism is missing or a set-up step failed. Nothing ran.
    #[error("cell refused to start at step '{step}': {reason}")]
    Refused {
        /// The failing step, e.g. `landlock`, `mount /workspace`, `cgroup memory`.
        step: String,
        /// Why, naming the missing mechanism.
        reason: String,
    },
    /// The spec asks for something inconsistent (caught before any kernel call).
    #[error("invalid cell spec: {0}")]
    Spec(String),
    /// Spawning the supervisor failed.
    #[error("starting the cell supervisor {program}: {source}")]
    Spawn {
        /// The jail program.
        program: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Talking to the cell's init failed or it broke the protocol.
    #[error("cell {id}: {what}")]
    Channel {
        /// Cell id.
        id: String,
        /// What happened.
        what: String,
    },
    /// A host-side filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl CellError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> CellError {
        let path = path.into();
        move |source| CellError::Io { op, path, source }
    }
}
