//! The jail entry point as a stand-alone binary, so `warren-testkit`'s integration tests can
//! start real cells without depending on the `warren` binary.
//!
//! `--warren-test-fault=NAME` (see [`warren_testkit::fault`]) takes one mechanism away before
//! the jail starts, so tests can see the cell refuse to start without it. Only this test
//! binary knows the flag; the production jail entry points do not.
fn main() {
    let (fault, args) = match warren_testkit::fault::take_from_args(std::env::args_os().skip(1)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("warren-test-jail: {e}");
            std::process::exit(2);
        }
    };
    if let Some(fault) = fault
        && let Err(e) = fault.install()
    {
        eprintln!(
            "warren-test-jail: cannot inject fault {}: {e}",
            fault.name()
        );
        std::process::exit(2);
    }
    std::process::exit(warren_jail::main_from_args(args));
}
