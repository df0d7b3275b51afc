//! The store's checkpoints as an agent's [`Journal`]: every model turn and tool result is
//! committed to SQLite before the agent acts on it, so a task resumed after a crash replays
//! what was recorded (no model turn paid twice, no tool call run twice) and continues live.

use std::sync::Arc;

use warren_agent::{Journal, Step};
use warren_store::{Checkpoint, CheckpointKind, Store};

/// One task's checkpoints.
pub struct StoreJournal {
    store: Arc<dyn Store>,
    task: String,
}

impl StoreJournal {
    /// The journal of `task` in `store`.
    pub fn new(store: Arc<dyn Store>, task: impl Into<String>) -> Self {
        StoreJournal {
            store,
            task: task.into(),
        }
    }
}

impl Journal for StoreJournal {
    fn load(&self) -> Result<Vec<Step>, String> {
        let cps = self
            .store
            .checkpoints(&self.task)
            .map_err(|e| e.to_string())?;
        cps.into_iter()
            .map(|c| {
                serde_json::from_value(c.payload)
                    .map_err(|e| format!("checkpoint {} of task {}: {e}", c.seq, self.task))
            })
            .collect()
    }

    fn record(&self, seq: u64, step: &Step) -> Result<(), String> {
        let kind = if matches!(step, Step::Model { .. } | Step::Summary { .. }) {
            CheckpointKind::ModelTurn
        } else {
            CheckpointKind::ToolResult
        };
        let payload = serde_json::to_value(step).map_err(|e| e.to_string())?;
        self.store
            .checkpoint(&Checkpoint {
                task: self.task.clone(),
                seq,
                kind,
                payload,
            })
            .map_err(|e| e.to_string())
    }
}
