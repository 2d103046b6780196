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

pub mod error;
pub use error::{Error, Kind};

pub mod batch;
pub mod cli;
pub mod core;
pub mod mongo;
pub mod ops;
pub mod plan;
pub mod service;
