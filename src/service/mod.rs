//! `tally run`: follow the change streams of `transactions` and `pockets`
//! and keep every output document current.
//!
//! How it stays right:
//! - **Recompute, don't guess.** An event only marks a user dirty from the
//!   first day it can affect. A flush recomputes the dirty users' documents
//!   from the source with the very scan backfill uses, and writes what
//!   differs. Replaying an event is therefore harmless.
//! - **Checkpoint after the effect.** The resume token is stored only once
//!   every event before it has been flushed; a `kill -9` at any instant
//!   replays at most the unflushed events, which recompute to the same
//!   content. A first start takes the server's operation time, builds the
//!   window with a backfill and streams from that time.
//! - **The two-write pattern.** A user's days before the earliest day its
//!   recent transaction events touched are past: a change there (a pocket
//!   balance that no transaction explains, or the moment between the API's
//!   transaction write and its balance write) is held until it has
//!   persisted for the settle delay, then written and counted as drift.
//! - **Old values.** With pre-images the old version of a changed document
//!   is in the event; without them tally finds where it counted: in the
//!   window's memory, then through the reports that list it; a recorded
//!   reject counted nowhere and recomputes nothing. A document none of
//!   these knows may still count in year-to-date sums (dated before the
//!   managed days): it recomputes the window.
//!
//! The module family: `options` (clock, options, counters), `run`
//! (leadership, failures, stopping), `tailer` (the active instance's
//! work: stream, window, flushes, steps, checkpoints), `work` (what
//! events left to do: the one set a flush consumes), `event` (change
//! events read in place), [`live`] (the window in memory), [`backend`]
//! (every server call the loop makes).
//!
//! May use: every layer but [`crate::cli`].

pub mod backend;
mod event;
pub mod held;
pub mod live;
mod options;
mod run;
mod tailer;
mod work;

pub use event::Event;
pub use options::{Clock, Counters, RunOptions};
pub use run::{run, run_with, GaveUp};
