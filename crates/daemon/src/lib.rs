//! Warren's control plane for operators running many agents.
//!
//! Built so far: the [`scheduler`]. The daemon process, its HTTP/WebSocket API and the task
//! runner that drives agents from the store (with their journals as checkpoints) come next.

pub mod scheduler;
