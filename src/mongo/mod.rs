//! Everything that talks to MongoDB and is not a whole job: the
//! connection and indexes, errors classified by server code and label,
//! bulk execution of planned writes, reject records, the checkpoint and
//! finalization records, the lease with its fencing, and the fault points
//! the crash tests use.
//!
//! May use: [`crate::core`], [`crate::plan`].

pub mod bulk;
pub mod connect;
pub mod errors;
pub mod inject;
pub mod lease;
pub mod rejects;
pub mod state;

/// The source collections coin writes and tally reads.
pub const TRANSACTIONS: &str = "transactions";
pub const POCKETS: &str = "pockets";
pub const CATEGORIES: &str = "user_categories";
/// One record per invalid source document (`docs/data-contract.md` §5.5).
pub const REJECTS: &str = "tally_rejects";
