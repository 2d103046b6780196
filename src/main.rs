//! The `tally` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

fn main() -> ExitCode {
    malloc_tuning();
    let cli = match tally::cli::config::parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(tally::cli::config::LoadError::Usage(e)) => e.exit(),
        Err(tally::cli::config::LoadError::Invalid(e)) => {
            eprintln!("tally: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let log_format = cli.global.log_format;
    tally::ops::logging::init(log_format, &cli.settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            tally::ops::logging::fatal(log_format, &message);
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(tally::cli::run(cli));
    // Exit without tearing the runtime down: dropping it drops the MongoDB
    // driver's background tasks (pool workers, monitors) one by one, and a
    // task still being polled can then panic on a closed channel — noise on
    // stderr after a clean stop. The work is done; the process just ends.
    std::mem::forget(runtime);
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = tally::mongo::connect::redact_uri(&format!("{e:#}"));
            tally::ops::logging::fatal(log_format, &message);
            ExitCode::from(tally::cli::exit_status(&e))
        }
    }
}

/// Two settings of glibc's malloc, each unless its variable is in the
/// environment (which then wins).
///
/// - **Arenas** (`MALLOC_ARENA_MAX`): glibc gives each thread that
///   allocates its own arena (up to 8 per core), and memory freed in one
///   arena is not reused by another. Loading 2,000 users' window here
///   (BENCHMARKS.md, "Memory"): default 157 MiB peak and 17.7 s of CPU, two
///   arenas 145 MiB and 20.1 s, one arena 131 MiB and 26 s (its lock is
///   contended by the scan's read-ahead tasks). Two keep the peak bounded
///   on machines with many cores at little CPU cost.
/// - **A fixed mmap threshold** of 256 KiB (`MALLOC_MMAP_THRESHOLD_`).
///   glibc raises the threshold each time a mapped block is freed, up to
///   32 MiB, so after the first cursor batch the next ones (buffers of a
///   few MiB) come from the heap; the small allocations a load keeps land
///   between them, and the heap grows by holes only `malloc_trim` gives
///   back. A fixed threshold (which turns the raising off) keeps such
///   buffers in mappings of their own, returned when freed. A first start
///   of `tally run` at 2,000 users: peak RSS 77.2 → 64.2 MiB, RSS once
///   tailing 48.7 → 39.8 MiB (BENCHMARKS.md, issue 13 (4)).
fn malloc_tuning() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 * 1024),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}
