//! Pure planning: expected against stored documents becomes the writes that
//! repair them, with their bookkeeping (revision, restatements, created_at,
//! final flags; `docs/data-contract.md` §5.1, §6), and the fingerprints
//! that let the live path compare without reading stored documents back.
//!
//! May use: [`crate::core`]. No I/O — `tests/layers.rs` checks it.

pub mod compare;
pub mod fingerprint;
pub mod write;
