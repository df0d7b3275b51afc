mod escape;
mod host;
mod lifecycle;

pub const PROBE: &str = env!("CARGO_BIN_EXE_warren-probe");
pub const JAIL: &str = env!("CARGO_BIN_EXE_warren-test-jail");
