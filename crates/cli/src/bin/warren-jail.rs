//! `warren-jail`: the cell's supervisor and init, and the fork server, on their own.
//!
//! The host executes this small binary (found next to `warren`) for every cell instead of
//! `warren __jail`, so starting a cell never loads the whole CLI — its HTTP, SQLite, async
//! runtime and their relocations — twice. It links `warren-jail` only; `main` hands its
//! arguments over before anything else runs, in a fresh single-threaded process.
fn main() {
    std::process::exit(warren_jail::main_from_args(std::env::args_os().skip(1)));
}
