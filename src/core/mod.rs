//! The pure core: what the numbers are. Money, days and months in the
//! reporting zone, decoding of source documents, per-user ledgers, the
//! builders of the three output documents, field comparison, and the
//! schedule of the night's steps.
//!
//! May use: the standard library and value crates (bson, chrono,
//! rust_decimal). No I/O, no clock ("now" is a parameter), nothing else of
//! tally — `tests/layers.rs` checks it.

pub mod calendar;
pub mod diff;
pub mod ledger;
pub mod money;
pub mod out;
pub mod reports;
pub mod rng;
pub mod schedule;
pub mod source;
pub mod vecmap;
