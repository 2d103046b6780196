//! What an operator sees: telemetry (counters, gauges, histograms, recent
//! events), its Prometheus and JSON exposition, the HTTP endpoints and
//! status page, log lines, and progress of long commands.
//!
//! May use: [`crate::core`], [`crate::plan`], [`crate::mongo`].

pub mod exposition;
pub mod http;
pub mod logging;
pub mod progress;
pub mod telemetry;
