//! Warren's daemon: the HTTP/WebSocket face of the task runtime, for operators running many
//! agents.
//!
//! - [`api`]: the HTTP API (axum), its OpenAPI document, SSE and WebSocket event streams;
//! - [`conn`]: serving a listener with connection limits and timeouts;
//! - [`server`]: the daemon process (lock, unix socket, TCP with a bearer token, signals).
//!
//! Everything a request *does* happens in [`warren_runtime`]: the engine, the scheduler,
//! the task runner, capabilities, the gate, audit. Clients (the `warren task …` commands)
//! talk to the API over the unix socket; see `docs/architecture.md` for the data flow.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod conn;
pub mod server;
