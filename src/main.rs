//! The `tally` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

fn main() -> ExitCode {
    malloc_arenas();
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

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and memory freed in one arena is not reused by another. Loading 2,000
/// users' window here (BENCHMARKS.md, "Memory"): default 157 MiB peak and
/// 17.7 s of CPU, two arenas 145 MiB and 20.1 s, one arena 131 MiB and
/// 26 s (its lock is contended by the scan's read-ahead tasks). Two keep
/// the peak bounded on machines with many cores at little CPU cost.
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
