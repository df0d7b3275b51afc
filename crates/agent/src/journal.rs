//! Durability: every step of a task is recorded before it is acted on, and a resumed task
//! replays what was recorded instead of doing it again.
//!
//! A [`Journal`] (the store's checkpoints, in the daemon) holds a task's [`Step`]s in order,
//! numbered from 0. Per turn the loop records:
//!
//! 1. [`Step::Summary`], when older turns were condensed before the turn (see
//!    [`crate::context`]);
//! 2. [`Step::Model`]: the model's response, before any of its tool calls runs;
//! 3. [`Step::ToolStarted`] for each call that changes things, just before it runs;
//! 4. [`Step::Tool`] for each call's result, as soon as the call ends (before the next call
//!    of the turn starts, and before the model sees it).
//!
//! So a turn of two calls that change things is `model, tool_started, tool, tool_started,
//! tool`: whichever step a crash interrupts, every result that was known is kept and at most
//! one call's effect is unknown.
//!
//! On resume, the [`Replayer`] hands these back in the same order: a recorded model turn is
//! not paid for again, a recorded result is reused instead of running the call again, and a
//! call that was started but has no result (Warren died while it ran) is reported to the
//! model as interrupted, with an unknown effect, rather than repeated blindly. Once the
//! recorded steps are used up, the run is *live* and new steps are recorded after them.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::tools::ToolOutput;

/// One durable step of a task, written before it is acted on (see [`Journal`]).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A model response, recorded before its tool calls run.
    Model {
        /// The response.
        response: warren_llm::ChatResponse,
    },
    /// Older turns were replaced by this summary.
    Summary {
        /// Messages replaced (after the goal).
        replaced: usize,
        /// The summary text.
        text: String,
    },
    /// A tool that changes things is about to run (a crash now leaves its effect unknown).
    ToolStarted {
        /// The call.
        call_id: String,
    },
    /// A tool's result, recorded before the model sees it.
    Tool {
        /// The call.
        call_id: String,
        /// What the model is told.
        content: String,
        /// Failed?
        is_error: bool,
        /// Set by `finish`.
        finished: Option<Value>,
        /// Model usage the call spent for the task (a delegated child's).
        #[serde(default, skip_serializing_if = "is_zero")]
        spent: warren_llm::Usage,
    },
}

fn is_zero(u: &warren_llm::Usage) -> bool {
    *u == warren_llm::Usage::default()
}

/// Where a task's steps are made durable (the store's checkpoints, in the daemon). A task
/// resumed with its journal replays the recorded steps — recorded model turns are not paid
/// for again and completed tool calls are not run again — then continues live.
///
/// Errors are the implementation's reason, as text; the loop wraps them in a
/// [`JournalError`] naming the operation.
pub trait Journal: Send + Sync {
    /// The steps recorded so far, in order.
    fn load(&self) -> Result<Vec<Step>, String>;
    /// Record step number `seq` (0, 1, 2, …) durably before returning.
    fn record(&self, seq: u64, step: &Step) -> Result<(), String>;
}

/// The journal failed, or does not match the run replaying it: the task cannot continue
/// durably.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// [`Journal::load`] failed.
    #[error("cannot load the recorded steps: {reason}")]
    Load {
        /// The journal's reason.
        reason: String,
    },
    /// [`Journal::record`] failed.
    #[error("cannot record step {seq} ({kind}): {reason}")]
    Record {
        /// The step's number.
        seq: u64,
        /// Which kind of step (`model`, `summary`, `tool_started`, `tool`).
        kind: &'static str,
        /// The journal's reason.
        reason: String,
    },
    /// Replaying, the next recorded step is not the model turn the loop is at.
    #[error("journal out of step: expected a model turn, found {found:?}")]
    OutOfStep {
        /// The step found instead.
        found: Box<Step>,
    },
}

impl Step {
    /// The step's tag, as serialized.
    fn kind(&self) -> &'static str {
        match self {
            Step::Model { .. } => "model",
            Step::Summary { .. } => "summary",
            Step::ToolStarted { .. } => "tool_started",
            Step::Tool { .. } => "tool",
        }
    }
}

/// Replays recorded steps, then records new ones.
pub(crate) struct Replayer {
    recorded: VecDeque<Step>,
    journal: Option<Arc<dyn Journal>>,
    seq: u64,
    /// Results of interrupted calls, recorded once the replay has ended.
    interrupted: Vec<Step>,
}

/// What the model is told about a call that was started but has no recorded result.
const INTERRUPTED: &str = "this tool call was interrupted by a restart of Warren while it ran; its effect is unknown. Check the current state before repeating it.";

impl Replayer {
    /// The steps `journal` holds, to replay before going live (none without a journal).
    pub(crate) fn load(journal: Option<Arc<dyn Journal>>) -> Result<Self, JournalError> {
        let recorded = match &journal {
            Some(j) => j.load().map_err(|reason| JournalError::Load { reason })?,
            None => Vec::new(),
        };
        Ok(Replayer {
            recorded: recorded.into(),
            journal,
            seq: 0,
            interrupted: Vec::new(),
        })
    }

    fn peek(&self) -> Option<&Step> {
        self.recorded.front()
    }

    fn pop(&mut self) -> Option<Step> {
        let s = self.recorded.pop_front();
        if s.is_some() {
            self.seq += 1;
        }
        s
    }

    /// Every recorded step was replayed: what happens now is new (and is asked of the
    /// model, of the gate and of people, where replayed steps are not).
    pub(crate) fn live(&self) -> bool {
        self.recorded.is_empty()
    }

    /// Make `step` durable as the next step (a no-op without a journal). Results of
    /// interrupted calls still waiting for the replay to end are recorded first.
    pub(crate) fn record(&mut self, step: Step) -> Result<(), JournalError> {
        self.flush()?;
        self.write(step)
    }

    fn write(&mut self, step: Step) -> Result<(), JournalError> {
        if let Some(j) = &self.journal {
            j.record(self.seq, &step)
                .map_err(|reason| JournalError::Record {
                    seq: self.seq,
                    kind: step.kind(),
                    reason,
                })?;
        }
        self.seq += 1;
        Ok(())
    }

    /// The recorded summary that comes next, if any (consuming it).
    pub(crate) fn summary(&mut self) -> Option<(usize, String)> {
        match self.recorded.pop_front()? {
            Step::Summary { replaced, text } => {
                self.seq += 1;
                Some((replaced, text))
            }
            other => {
                self.recorded.push_front(other);
                None
            }
        }
    }

    /// The recorded model response that comes next (consuming it); `None` when live. Any
    /// other recorded step here means the journal is not this task's run.
    pub(crate) fn model(&mut self) -> Result<Option<warren_llm::ChatResponse>, JournalError> {
        match self.recorded.pop_front() {
            None => Ok(None),
            Some(Step::Model { response }) => {
                self.seq += 1;
                Ok(Some(response))
            }
            Some(other) => {
                let found = Box::new(other.clone());
                self.recorded.push_front(other);
                Err(JournalError::OutOfStep { found })
            }
        }
    }

    /// The recorded result of `call_id`, if this call was recorded (consuming it). A call that
    /// was started but has no result was interrupted: its effect is unknown, and that is
    /// what the model is told (and what is recorded for it).
    ///
    /// Journals written before results were recorded one by one hold a turn's marks first
    /// and its results after (`tool_started, tool_started, tool, tool`): the result is looked
    /// for among the rest of the turn's steps, and an interrupted call's result is recorded
    /// only once every recorded step was replayed (its number is the next free one).
    ///
    /// A `resumable` call (a tool that finds its own earlier work by the call's id) that was
    /// started but has no result runs again instead (`None`): its mark is consumed, and the
    /// live run records a new one.
    pub(crate) fn tool(
        &mut self,
        call_id: &str,
        resumable: bool,
    ) -> Result<Option<ToolOutput>, JournalError> {
        match self.peek() {
            Some(Step::ToolStarted { call_id: c }) if c == call_id => {
                self.pop();
                // A resumable call run again after a restart left one mark per life.
                while matches!(self.peek(), Some(Step::ToolStarted { call_id: c }) if c == call_id)
                {
                    self.pop();
                }
                if let Some(at) = self.result_in_turn(call_id) {
                    let step = self.recorded.remove(at);
                    self.seq += 1;
                    return Ok(step.and_then(step_output));
                }
                if resumable {
                    return Ok(None);
                }
                let out = ToolOutput::err(INTERRUPTED);
                self.interrupted.push(Step::Tool {
                    call_id: call_id.into(),
                    content: out.content.clone(),
                    is_error: true,
                    finished: None,
                    spent: warren_llm::Usage::default(),
                });
                if self.live() {
                    self.flush()?;
                }
                Ok(Some(out))
            }
            Some(Step::Tool { call_id: c, .. }) if c == call_id => {
                Ok(self.pop().and_then(step_output))
            }
            _ => Ok(None),
        }
    }

    /// Where the recorded result of `call_id` is among the steps of the current turn.
    fn result_in_turn(&self, call_id: &str) -> Option<usize> {
        self.recorded
            .iter()
            .take_while(|s| !matches!(s, Step::Model { .. } | Step::Summary { .. }))
            .position(|s| matches!(s, Step::Tool { call_id: c, .. } if c == call_id))
    }

    /// Record the results of interrupted calls that wait for the replay to end.
    fn flush(&mut self) -> Result<(), JournalError> {
        for step in std::mem::take(&mut self.interrupted) {
            self.write(step)?;
        }
        Ok(())
    }
}

fn step_output(s: Step) -> Option<ToolOutput> {
    match s {
        Step::Tool {
            content,
            is_error,
            finished,
            spent,
            ..
        } => Some(ToolOutput {
            content,
            is_error,
            full: None,
            finished,
            spent,
        }),
        _ => None,
    }
}
