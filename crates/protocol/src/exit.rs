//! Exit codes of `warren exec`.
//!
//! A command's own exit status passes through unchanged (0–255); a command killed by signal
//! `N` exits `128 + N`, as shells report it. Warren's own outcomes use the codes below, chosen
//! to match the conventions of `timeout(1)` and container runtimes where one exists. A command
//! may of course exit with one of these values itself; `--json` output disambiguates.

/// The command ran past its `--timeout` and was killed (as `timeout(1)`).
pub const TIMEOUT: i32 = 124;
/// Warren refused to start the cell or failed to set it up (a missing kernel mechanism,
/// an invalid policy, ...). Nothing ran. (As `docker run`'s 125.)
pub const REFUSED: i32 = 125;
/// The command exists but could not be executed (permission denied, not an executable).
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found inside the cell.
pub const NOT_FOUND: i32 = 127;
/// The command was killed by the kernel's out-of-memory killer inside the cell's memory limit.
pub const OUT_OF_MEMORY: i32 = 123;

/// The command was killed because the copy-on-write workspace grew past its disk limit.
pub const DISK_LIMIT: i32 = 122;

/// The exit code for a process killed by `signal`.
pub fn for_signal(signal: i32) -> i32 {
    128 + signal
}
