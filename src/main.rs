//! The `tally` binary: parse flags, set up logging, run a command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tally::cli::Cli::parse();
    let log_format = cli.global.log_format;
    tally::logging::init(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            tally::logging::fatal(log_format, &message);
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(tally::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let message = tally::store::redact_uri(&format!("{e:#}"));
            tally::logging::fatal(log_format, &message);
            ExitCode::from(2)
        }
    }
}
