//! Log output on stderr: human-readable text, or one JSON object per line
//! for log collectors (`--log-format json`). The filter is `TALLY_LOG`
//! (default `info`).
//!
//! What is logged is decided where it happens: one line per meaningful
//! event (start, finalization, recovery, leadership change), never one per
//! change event — those are counted in [`telemetry`](crate::ops::telemetry).
//! Connection strings pass through [`redact_uri`](crate::mongo::connect::redact_uri).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields.
    Json,
}

/// Installs the global subscriber; call once, first thing.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// The last word of a failed command, in the log's format.
pub fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("tally: error: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "target": "tally",
                "message": message,
            })
        ),
    }
}
