//! The `tally` binary: the command line of [`tally_api::cli`].

fn main() -> std::process::ExitCode {
    tally_api::cli::main()
}
