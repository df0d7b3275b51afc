//! Warren's control plane, for operators running many agents.
//!
//! - [`core`]: the [`core::Daemon`]: tasks from the store, through the [`scheduler`], into
//!   cells, with the store's checkpoints as each agent's journal ([`journal`]) so a killed
//!   daemon loses no task and repeats no step;
//! - [`api`]: the HTTP API (axum), its OpenAPI document, SSE and WebSocket event streams;
//! - [`server`]: the daemon process (lock, unix socket, TCP with a bearer token, signals);
//! - [`policy`]: capabilities (manifest request ∩ operator policy), checked by the
//!   [`gate::TaskGate`] every tool call passes, which also writes the audit log;
//! - [`caphttp`]: `/cap/http`, HTTP requests as files under the task's egress policy;
//! - [`memory`]: memory tools (code search, notes, recall), reflections and episodes;
//! - [`shellcmd`]: the simple commands a shell command line runs (approval rules match each);
//! - [`provider`]: model providers from configuration (shared with `warren run`);
//! - [`taskdir`]: a task's `/task` and `/logs` on the host.
//!
//! Clients (the `warren task …` commands) talk to the API over the unix socket; see
//! `docs/architecture.md` for the data flow.

pub mod api;
pub mod caphttp;
pub mod core;
pub mod gate;
pub mod journal;
pub mod memory;
pub mod policy;
pub mod provider;
pub mod scheduler;
pub mod server;
pub mod shellcmd;
pub mod taskdir;
