//! What `tally run` is told: its clock, its options; and what it counts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::calendar::Calendar;
use crate::core::schedule::Schedule;
use crate::ops::telemetry::Telemetry;

/// The service's notion of now: real time, optionally shifted (tests and
/// demos start the clock at a chosen instant; it then runs at real speed),
/// or tokio's clock (a simulation with paused time: the service's days and
/// its timers then move together, as fast as the simulation runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    offset: chrono::Duration,
    /// Follows tokio's clock from (its instant, the time it stood for).
    runtime: Option<(tokio::time::Instant, DateTime<Utc>)>,
}

impl Clock {
    pub fn real() -> Clock {
        Clock::default()
    }

    pub fn starting_at(t: DateTime<Utc>) -> Clock {
        Clock {
            offset: t - Utc::now(),
            runtime: None,
        }
    }

    /// Reads `t` now and moves with tokio's clock (paused in simulations).
    pub fn of_runtime(t: DateTime<Utc>) -> Clock {
        Clock {
            offset: chrono::Duration::zero(),
            runtime: Some((tokio::time::Instant::now(), t)),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self.runtime {
            Some((at, t)) => t + chrono::Duration::from_std(at.elapsed()).unwrap_or_default(),
            None => Utc::now() + self.offset,
        }
    }

    /// The real time at which this clock reads `t`.
    pub fn to_real(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self.runtime {
            // Server times in a simulation are the simulation's.
            Some(_) => t,
            None => t - self.offset,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub cal: Calendar,
    pub schedule: Schedule,
    pub clock: Clock,
    /// Flush once no event came for this long…
    pub quiet: Duration,
    /// …or once the oldest unflushed event is this old.
    pub max_delay: Duration,
    /// How long a past difference must persist before it is written (drift).
    pub settle: Duration,
    /// Days before today built on a first start.
    pub initial_days: u64,
    /// Days after today covered (future-dated transactions).
    pub horizon_days: u64,
    /// Identifies this instance in the lease and finalization records.
    pub owner: String,
    /// How long the lease lasts without renewal (renewed every third of
    /// it): a standby takes over within this time of the leader's death.
    pub lease_ttl: Duration,
    /// Enable and use change-stream pre-images (off: locate old values
    /// through the stored reports instead).
    pub pre_images: bool,
    /// Where the tailer reports what it does (metrics, status page).
    pub telemetry: Arc<Telemetry>,
    /// How long failures of the active instance may persist (each retried
    /// after a pause) before `tally run` exits for a supervisor to restart.
    pub give_up_after: Duration,
}

impl RunOptions {
    pub fn new(cal: Calendar) -> RunOptions {
        RunOptions {
            cal,
            schedule: Schedule::default(),
            clock: Clock::real(),
            quiet: Duration::from_millis(200),
            max_delay: Duration::from_millis(500),
            settle: Duration::from_secs(20),
            initial_days: 60,
            horizon_days: 400,
            owner: format!("{}-{}-{:04x}", hostname(), std::process::id(), nonce()),
            lease_ttl: Duration::from_secs(15),
            pre_images: true,
            telemetry: Arc::new(Telemetry::new()),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// 16 random bits (std's randomly keyed hasher), so that two processes
/// with one hostname and pid (containers) are still two lease owners.
fn nonce() -> u16 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u16
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "tally".to_owned())
}

/// Counters of what the service did, for logs and `status`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub events: u64,
    pub flushes: u64,
    pub documents_written: u64,
    pub rejects: u64,
    pub drift_applied: u64,
    pub history_lost: u64,
    pub reconnects: u64,
    pub full_refreshes: u64,
    /// Changed documents without their old version that nothing located.
    pub unlocated: u64,
    pub finalizations: u64,
    /// Dirty users rebuilt from memory, and rescanned from the source.
    pub users_from_memory: u64,
    pub users_rescanned: u64,
}
