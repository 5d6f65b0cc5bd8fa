//! The `tally` binary: the command line of [`tally_api::cli`].

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tally_api::cli::main()
}
