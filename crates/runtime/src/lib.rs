//! Warren's task runtime: the one engine behind `warren run` and the daemon.
//!
//! - [`action`]: every operation as a value ([`action::Action`], [`action::Query`]), handled
//!   in one place that authorizes, audits and maps errors to one error code;
//! - [`engine`]: the [`engine::Engine`]: tasks from the store, through the [`scheduler`], into
//!   cells, with the store's checkpoints as each agent's journal ([`journal`]) so a killed
//!   daemon loses no task and repeats no step;
//! - [`runner`]: one claimed task from its manifest to its end (for the daemon and `warren run`);
//! - [`cells`]: the tier-agnostic source of cells ([`cells::Cells`]); [`fake`] is a recording
//!   fake tier for tests without root;
//! - [`capabilities`]: capabilities (manifest request ∩ operator policy), checked by the
//!   [`gate::TaskGate`] every tool call passes, which also writes the audit log;
//! - [`caphttp`]: `/cap/http`, HTTP requests as files under the task's egress policy;
//! - [`capnostr`]: `/cap/nostr`, a signing identity whose key stays on the host;
//! - [`capws`]: `/cap/ws`, WebSocket connections as files, under the same policy;
//! - [`memory_tools`]: memory tools (code search, notes, recall), reflections and episodes;
//! - [`shellcmd`]: the simple commands a shell command line runs (approval rules match each);
//! - [`provider`]: model providers from configuration;
//! - [`taskdir`]: a task's `/task` and `/logs` on the host;
//! - [`plan`]: plans (a planner's steps as child tasks, executed over the store);
//! - [`delegate`]: the `delegate` tool (a child task with narrowed capabilities);
//! - [`validate`]: a manifest's validators, judging `finish`;
//! - [`wasicell`]: the wasi tier's cells (WebAssembly modules over a namespace the host
//!   serves) and [`wasicell::TieredCells`], which sends each spec to its tier;
//! - [`wasmtools`]: a wasi-tier manifest's modules, offered to the model as tools.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod action;
pub mod capabilities;
pub mod caphttp;
pub mod capnostr;
pub mod capws;
pub mod cells;
pub mod delegate;
pub mod engine;
pub mod fake;
pub mod gate;
pub mod journal;
pub mod memory_tools;
pub mod plan;
pub mod provider;
pub mod runner;
pub mod scheduler;
pub mod shellcmd;
pub mod taskdir;
pub mod validate;
pub mod wasicell;
pub mod wasmtools;
