//! tally keeps the reports of the "coin" personal-finance backend right all
//! the time: it computes daily reports, daily balance snapshots and monthly
//! summaries (every number defined in `docs/data-contract.md`) from the
//! `transactions` and `pockets` collections of MongoDB.
//!
//! # Layout
//! Seven folders, each using only those before it (`tests/layers.rs`
//! checks the imports):
//! - [`core`] — money, calendar, source decoding, ledgers, the report
//!   builders, field comparison, the schedule: pure, no I/O, no clock.
//! - [`plan`] — expected vs stored → the writes and their bookkeeping;
//!   fingerprints of stored documents. Pure.
//! - [`mongo`] — connection, errors, bulk execution, rejects, checkpoint
//!   and finalization records, the lease and fencing.
//! - [`ops`] — telemetry, Prometheus/JSON exposition, HTTP, logs, progress.
//! - [`batch`] — the from-scratch scan, backfill, reconcile, the night
//!   steps' work, the seeded dataset.
//! - [`service`] — `tally run`: leadership, change streams, the window in
//!   memory, flushes, checkpoints, recovery.
//! - [`cli`] — commands and configuration; the binary's edge.
//!
//! The numbers are defined in `docs/data-contract.md`; code cites its
//! sections as "contract §N.M" (or `docs/data-contract.md §N.M`).

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
pub mod cli;
pub mod core;
pub mod mongo;
pub mod ops;
pub mod plan;
pub mod service;
