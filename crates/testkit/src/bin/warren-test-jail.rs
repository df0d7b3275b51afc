//! The jail entry point as a stand-alone binary, so `warren-testkit`'s integration tests can
//! start real cells without depending on the `warren` binary.
fn main() {
    std::process::exit(warren_jail::main_from_args(std::env::args_os().skip(1)));
}
