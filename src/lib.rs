//! tally keeps the reports of the "coin" personal-finance backend right all
//! the time: it computes daily reports, daily balance snapshots and monthly
//! summaries (see `../shared/SPEC.md`, summarized in the README) from the
//! `transactions` and `pockets` collections of MongoDB.
//!
//! # Layout
//! - [`money`] — exact decimal money; BSON conversions at the edges.
//! - [`calendar`] — days and months in the reporting time zone (DST-safe).
//! - [`source`] — decoding of source documents, validity and reject reasons.
//! - [`vecmap`] — a small ordered map as a sorted vector (the ledger's maps).
//! - [`ledger`] — pure per-user sums per day, category and pocket; balances.
//! - [`live`] — the tailer's in-memory window: users' ledgers and stored fingerprints.
//! - [`reports`] — builders of the three output documents (the schema).
//! - [`diff`] — field-by-field comparison of expected and stored documents.
//! - [`errors`] — MongoDB errors classified by server code and label, never by text.
//! - [`store`] — MongoDB connection, indexes, bulk writes, bookkeeping, rejects.
//! - [`scan`] — the from-scratch generator: a user-at-a-time merge of source
//!   and stored documents.
//! - [`batch`] — `backfill` and `reconcile` on top of the scan.
//! - [`state`] — the stream checkpoint and the once-only finalization records.
//! - [`schedule`] — the 23:59 / 00:00 / 00:01 steps: when they are due, what they do.
//! - [`service`] — `tally run`: leadership, change streams, flushes, checkpoints, recovery.
//! - [`inject`] — fault points of `tally run` for the crash-anywhere tests
//!   (`TALLY_INJECT`; off otherwise).
//! - [`lease`] — high availability: the leader lease, its fencing token and
//!   fenced writes (one active `tally run` per database).
//! - [`telemetry`] — counters, gauges, histograms and recent events of `tally run`.
//! - [`exposition`] — telemetry as Prometheus text and as the status page's JSON.
//! - [`http`] — `/healthz`, `/readyz`, `/metrics` and the status page.
//! - [`logging`] — text or JSON log lines on stderr.
//! - [`seed`] — a synthetic coin-shaped dataset, dirt included.
//! - [`progress`] — progress bar on a terminal, log lines elsewhere.
//! - [`cli`] — command-line interface and validated configuration.
//! - [`config`] — the configuration file, precedence (flags > env > file >
//!   defaults) and the effective configuration `tally config` prints.
//!
//! The pure core (`money`, `calendar`, `source`, `ledger`, `reports`,
//! `diff`) does no I/O and never reads the clock: "now" is a parameter.

/// An error no restart can fix: a bad flag, setting or URI. `tally` exits 2
/// on it; every other failure exits 3, so that supervisors restart those
/// and only those (README, "Exit status").
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit status of a command that failed with `e`: 2 for a
/// [`UsageError`], 3 for a runtime failure.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<UsageError>()) {
        2
    } else {
        3
    }
}

pub mod batch;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod diff;
pub mod errors;
pub mod exposition;
pub mod http;
pub mod inject;
pub mod lease;
pub mod ledger;
pub mod live;
pub mod logging;
pub mod money;
pub mod progress;
pub mod reports;
pub mod scan;
pub mod schedule;
pub mod seed;
pub mod service;
pub mod source;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod vecmap;
