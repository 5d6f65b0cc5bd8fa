//! The `tally` command line, built in this package so that the crash tests
//! can run it as a separate process (`env!("CARGO_BIN_EXE_tally-under-test")`)
//! and SIGKILL it: the same code as the `tally` binary.

fn main() -> std::process::ExitCode {
    tally_api::cli::main()
}
