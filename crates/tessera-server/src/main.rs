//! `tessera`: parse flags, set up logging and signals, hand over to
//! [`tessera_server::run`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tessera_server::cli::Cli;
use tessera_server::{default_log_filter, logging, shutdown};

/// mimalloc instead of glibc malloc: glibc's `_int_malloc`/`unlink_chunk`
/// took ~20% of a meta node's CPU in a 4 KiB PUT run. Measured A/B (same
/// build otherwise, 2 cores): server CPU per 4 KiB PUT 1.65-1.82 -> 1.57 ms,
/// per 1 MiB PUT 16.0-16.8 -> 13.7-16.0 ms, per 1 MiB GET 3.43-3.58 -> 3.18-3.20 ms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log, default_log_filter(&cli.command)) {
        tessera_observe::stderr_line(format_args!("tessera: {e:#}"));
        return ExitCode::FAILURE;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tessera_observe::stderr_line(format_args!(
                "tessera: cannot start the async runtime: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    // `block_on` runs this future on the main thread, which lives as long
    // as the process: `tessera dev` relies on that (see `dev` module).
    let result = runtime.block_on(async {
        let token = shutdown::on_signals()?;
        tessera_server::run(cli, token).await
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            tessera_observe::stderr_line(format_args!("tessera: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process and its children
/// (what `MIMALLOC_ALLOW_THP=0` does).
///
/// mimalloc asks for them on its arenas (`madvise(MADV_HUGEPAGE)`) and
/// gives memory idle for a second back to the kernel; the next touch of
/// such a range faults in a whole 2 MiB page and zeroes it, and so does
/// the first allocation of every new thread (tokio's blocking pool
/// retires idle threads after 10 s and starts new ones under the next
/// burst). Seen on storage nodes collecting garbage after a burst of
/// deletes: 77% of their CPU samples in `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`; the storage CPU of collecting 3600
/// shards was 1.6-1.8 s with huge pages off against 2.5-3.6 s with them
/// on (`benches/compare/README.md`, session 21). PUT and GET cost the
/// same either way, within the noise.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // a flag of this process; nothing of ours is read or written.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
