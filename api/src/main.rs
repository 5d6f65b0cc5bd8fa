//! The `tally` binary: the command line of [`tally_api::cli`].

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them): freed pages go back to the system
/// after a second, by a background thread, instead of after ten. Under
/// usage batches the server's peak RSS fell from 151 to 126 MB
/// (docs/benchmarks.md).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: ConfString =
    ConfString(b"dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0".as_ptr());

/// A C string for jemalloc: a thin pointer to NUL-terminated bytes.
#[repr(transparent)]
struct ConfString(*const u8);
// SAFETY: it points to an immutable byte string literal.
unsafe impl Sync for ConfString {}

fn main() -> std::process::ExitCode {
    tally_api::cli::main()
}
