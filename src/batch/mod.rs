//! Whole-dataset jobs: the from-scratch scan (the oracle of the live path),
//! `backfill`, `reconcile`, the night steps' work (`finalize`), and the
//! synthetic coin dataset of `tally seed`.
//!
//! May use: [`crate::core`], [`crate::plan`], [`crate::mongo`],
//! [`crate::ops`].

pub mod backfill;
pub mod finalize;
pub mod reconcile;
pub mod scan;
pub mod seed;
