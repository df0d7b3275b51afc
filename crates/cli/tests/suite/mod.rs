mod agents;
mod caps;
mod check;
mod cluster;
mod config;
mod daemon;
mod equivalence;
mod exec;
mod json_output;
mod kill;
mod mcp;
mod mcp_client;
mod memory;
mod own_files;
mod package;
mod plans;
mod policy;
mod resume;
mod run;
mod skills;
mod stop;
mod wasi;

use std::process::{Command, Output};

pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// `warren ARGS…` with a private state dir; returns the output.
pub fn warren(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(WARREN)
        .args(args)
        .env("WARREN_STATE_DIR", state)
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
