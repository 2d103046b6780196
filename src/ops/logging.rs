//! Log output on stderr: human-readable text, or one JSON object per line
//! for log collectors (`--log-format json`). The filter is `TALLY_LOG`
//! (default `info`).
//!
//! What is logged is decided where it happens: one line per meaningful
//! event (start, finalization, recovery, leadership change), never one per
//! change event — those are counted in [`telemetry`](crate::ops::telemetry).
//! Connection strings pass through [`redact_uri`](crate::mongo::connect::redact_uri).
//! Text lines carry colour (ANSI escapes) only when stderr is a terminal and
//! `NO_COLOR` is unset: a file, a pipe or a journal gets plain text.

use std::io::IsTerminal;

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
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
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

/// Whether text lines get ANSI colour: only on a terminal, and never with a
/// non-empty `NO_COLOR` (<https://no-color.org>; tracing-subscriber's own
/// default, which `with_ansi` overrides).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(!colour(false, None), "a file or a pipe gets plain text");
        assert!(colour(true, None));
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
    }
}
