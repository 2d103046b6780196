//! The `tally` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match tally::config::parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(tally::config::LoadError::Usage(e)) => e.exit(),
        Err(tally::config::LoadError::Invalid(e)) => {
            eprintln!("tally: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| EnvFilter::new(&cli.settings.log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(tally::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tally: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
