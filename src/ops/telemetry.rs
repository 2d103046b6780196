//! What `tally run` is doing, as numbers: the counters, gauges and
//! histograms the tailer updates where its work happens, the state that
//! readiness depends on (connected, leader, lag), and the short recent-lists
//! the status page shows. [`exposition`](crate::ops::exposition) renders it for
//! Prometheus and as `/status.json`.
//!
//! Invariants: the hot path (one call per change event) touches atomics
//! only, under a read lock that is written once per new label set; every
//! label value is a `&'static str` from a closed set (collections,
//! operations, reject reasons, kinds, causes), so the series are bounded and
//! never carry a user. Times are the real wall clock, not the tailer's
//! (possibly shifted) [`Clock`](crate::service::Clock): lag compares with the
//! server's event wall times.
//!
//! Who calls what: the tailer reports events, writes, rejects, drift,
//! flushes, checkpoints, finalizations, recoveries and the schedule; the
//! HA lease reports the role with [`Telemetry::set_leader`] and
//! [`Telemetry::set_role_known`]; the run loop calls [`Telemetry::turn`]
//! once per turn (liveness and connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use mongodb::change_stream::event::OperationType;

use crate::core::reports::Kind;
use crate::core::source::{RejectReason, SourceId};
use crate::mongo::bulk::WriteStats;
use crate::mongo::{POCKETS, TRANSACTIONS};

mod series;
mod writes;

pub use series::{CounterVec, Histogram};
pub use writes::{restates, WriteMix};

/// How many recent rejects and recoveries the status page lists.
pub const RECENT: usize = 20;
/// How long the events-per-second history reaches back.
pub const RATE_WINDOW: Duration = Duration::from_secs(600);

pub const FLUSH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Source write → flush commit: the 2 s bound of the latency target sits
/// on a bucket edge, so "p99 ≤ 2 s" reads off exactly.
pub const WRITE_LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];
pub const FINALIZATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Why the stream had to be recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The resume token was older than the server's history.
    HistoryLost,
    /// The stream was reopened after the server went away.
    Reconnect,
    /// The whole window was recomputed (a dropped collection, a delete
    /// nothing could locate).
    FullRefresh,
}

impl Recovery {
    pub const ALL: [Recovery; 3] = [
        Recovery::HistoryLost,
        Recovery::Reconnect,
        Recovery::FullRefresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::HistoryLost => "history_lost",
            Recovery::Reconnect => "reconnect",
            Recovery::FullRefresh => "full_refresh",
        }
    }
}

/// Why a step of the active instance failed (it is retried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server could not be reached or stepped down.
    Unavailable,
    /// A call got no answer within its time limit.
    Timeout,
    /// The server answered with an error (a refused commit, a write error).
    ServerError,
    /// Anything else (a bug, a document tally could not encode).
    Other,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Unavailable,
        Failure::Timeout,
        Failure::ServerError,
        Failure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Timeout => "timeout",
            Failure::ServerError => "server_error",
            Failure::Other => "other",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RejectNote {
    pub at: DateTime<Utc>,
    pub collection: &'static str,
    pub id: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct RecoveryNote {
    pub at: DateTime<Utc>,
    pub cause: &'static str,
}

/// One finalization kind on the schedule.
#[derive(Clone, Debug, Default)]
pub struct ScheduleRow {
    pub last_period: Option<NaiveDate>,
    pub last_at: Option<DateTime<Utc>>,
    pub next_period: Option<NaiveDate>,
    pub next_due: Option<DateTime<Utc>>,
}

/// Shared by the tailer (writer) and the HTTP endpoint (reader).
pub struct Telemetry {
    pub(crate) leader: AtomicBool,
    pub(crate) role_known: AtomicBool,
    /// The leader's change streams are open: its start (the window's
    /// backfill and load, the first comparison) is over.
    pub(crate) tailing: AtomicBool,
    pub(crate) connected: AtomicBool,
    /// Millis of the last run-loop turn; 0 before the first.
    pub(crate) last_turn: AtomicI64,
    /// Wall time (server) of the last change event seen, millis; 0: none.
    pub(crate) last_event_wall: AtomicI64,
    /// No event waits: the stream is drained and everything flushed.
    pub(crate) caught_up: AtomicBool,
    /// Millis of the last checkpoint save; 0: none yet.
    pub(crate) last_checkpoint: AtomicI64,
    pub events: CounterVec<2>,
    pub documents: CounterVec<1>,
    pub restatements: AtomicU64,
    pub rejects: CounterVec<1>,
    pub drift: AtomicU64,
    pub finalizations: CounterVec<2>,
    pub finalization_duration: Vec<(&'static str, Histogram)>,
    pub recoveries: CounterVec<1>,
    /// Failed steps of the active instance, by cause ([`Failure`]).
    pub write_failures: CounterVec<1>,
    /// Events for a period already finalized when they arrived, by kind.
    pub late_events: CounterVec<1>,
    /// Change events tally could not read (skipped after being counted).
    pub unreadable_events: AtomicU64,
    pub flush_duration: Histogram,
    /// Per change event that queued work: its server wall time to the
    /// commit of the flush that wrote it.
    pub write_latency: Histogram,
    /// With `--command-stats`: commands sent to MongoDB, by command and
    /// collection, and their round trips summed, in microseconds.
    pub commands: CounterVec<2>,
    pub command_micros: CounterVec<2>,
    pub(crate) recent_rejects: Mutex<VecDeque<RejectNote>>,
    pub(crate) recent_recoveries: Mutex<VecDeque<RecoveryNote>>,
    pub(crate) schedule: Mutex<Vec<(&'static str, ScheduleRow)>>,
    /// (millis, events total) sampled every few seconds, [`RATE_WINDOW`] long.
    pub(crate) rate: Mutex<VecDeque<(i64, u64)>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_recent<T>(list: &Mutex<VecDeque<T>>, item: T) {
    let mut list = lock(list);
    if list.len() == RECENT {
        list.pop_front();
    }
    list.push_back(item);
}

/// The static label of a collection tally reads.
pub fn collection_label(coll: &str) -> &'static str {
    match coll {
        TRANSACTIONS => TRANSACTIONS,
        POCKETS => POCKETS,
        _ => "other",
    }
}

pub fn operation_label(op: &OperationType) -> &'static str {
    match op {
        OperationType::Insert => "insert",
        OperationType::Update => "update",
        OperationType::Replace => "replace",
        OperationType::Delete => "delete",
        OperationType::Drop => "drop",
        OperationType::Rename => "rename",
        OperationType::DropDatabase => "drop_database",
        OperationType::Invalidate => "invalidate",
        _ => "other",
    }
}

/// Records a finalization's outcome: `done()` on success; dropped without
/// it (an error returned with `?`), it records `failed`.
pub struct Finalization<'a> {
    telemetry: &'a Telemetry,
    kind: &'static str,
    period: NaiveDate,
    started: std::time::Instant,
    finished: bool,
}

impl Finalization<'_> {
    pub fn done(mut self) {
        self.finished = true;
        let t = self.telemetry;
        t.finished(self.kind, "done", self.started.elapsed());
        let mut schedule = lock(&t.schedule);
        if let Some((_, row)) = schedule.iter_mut().find(|(k, _)| *k == self.kind) {
            row.last_period = Some(self.period);
            row.last_at = Some(Utc::now());
        }
    }
}

impl Drop for Finalization<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.telemetry
                .finished(self.kind, "failed", self.started.elapsed());
        }
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let t = Telemetry {
            leader: AtomicBool::new(false),
            role_known: AtomicBool::new(false),
            tailing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            last_turn: AtomicI64::new(0),
            last_event_wall: AtomicI64::new(0),
            caught_up: AtomicBool::new(true),
            last_checkpoint: AtomicI64::new(0),
            events: CounterVec::new(),
            documents: CounterVec::new(),
            restatements: AtomicU64::new(0),
            rejects: CounterVec::new(),
            drift: AtomicU64::new(0),
            finalizations: CounterVec::new(),
            finalization_duration: Kind::ALL
                .iter()
                .map(|k| (k.cli_name(), Histogram::new(FINALIZATION_BUCKETS)))
                .collect(),
            recoveries: CounterVec::new(),
            write_failures: CounterVec::new(),
            late_events: CounterVec::new(),
            unreadable_events: AtomicU64::new(0),
            flush_duration: Histogram::new(FLUSH_BUCKETS),
            write_latency: Histogram::new(WRITE_LATENCY_BUCKETS),
            commands: CounterVec::new(),
            command_micros: CounterVec::new(),
            recent_rejects: Mutex::new(VecDeque::new()),
            recent_recoveries: Mutex::new(VecDeque::new()),
            schedule: Mutex::new(
                Kind::ALL
                    .iter()
                    .map(|k| (k.cli_name(), ScheduleRow::default()))
                    .collect(),
            ),
            rate: Mutex::new(VecDeque::new()),
        };
        // Series that exist from the start read 0 instead of being absent.
        for coll in [TRANSACTIONS, POCKETS] {
            for op in ["insert", "update", "replace", "delete"] {
                t.events.add([coll, op], 0);
            }
        }
        for kind in Kind::ALL {
            t.documents.add([kind.collection()], 0);
            for outcome in ["done", "taken", "failed"] {
                t.finalizations.add([kind.cli_name(), outcome], 0);
            }
        }
        for r in RejectReason::ALL {
            t.rejects.add([r.as_str()], 0);
        }
        for c in Recovery::ALL {
            t.recoveries.add([c.as_str()], 0);
        }
        for c in Failure::ALL {
            t.write_failures.add([c.as_str()], 0);
        }
        for kind in Kind::ALL {
            t.late_events.add([kind.cli_name()], 0);
        }
        t
    }

    // --- role and connection (the HA lease sets the role) ---------------

    /// Whether this instance leads (writes). The lease loop logs the
    /// changes that matter ("Acquired leadership.", "Standing by", "Lost
    /// leadership", "Released leadership."), so this only records the role.
    /// A change of role ends tailing: a new leader starts first.
    pub fn set_leader(&self, leader: bool) {
        self.tailing.store(false, Ordering::SeqCst);
        self.leader.store(leader, Ordering::SeqCst);
        self.role_known.store(true, Ordering::SeqCst);
    }

    /// The leader's start is over and its change streams are open.
    pub fn set_tailing(&self) {
        self.tailing.store(true, Ordering::SeqCst);
    }

    /// Whether leader/standby is decided yet (false: not ready).
    pub fn set_role_known(&self, known: bool) {
        self.role_known.store(known, Ordering::SeqCst);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
    }

    /// One turn of the run loop: the loop is alive; `connected` is whether
    /// it holds an open change stream.
    pub fn turn(&self, connected: bool) {
        self.last_turn.store(millis(Utc::now()), Ordering::SeqCst);
        self.set_connected(connected);
    }

    // --- the stream -------------------------------------------------------

    /// A change event was read; `wall` is its server wall time, if any.
    pub fn change_event(&self, collection: &str, op: &OperationType, wall: Option<i64>) {
        self.events
            .add([collection_label(collection), operation_label(op)], 1);
        let wall = wall.unwrap_or_else(|| millis(Utc::now()));
        self.last_event_wall.store(wall, Ordering::Relaxed);
        self.caught_up.store(false, Ordering::Relaxed);
    }

    /// The stream is drained and nothing waits for a flush: lag is 0.
    pub fn caught_up(&self) {
        self.caught_up.store(true, Ordering::Relaxed);
    }

    pub fn checkpoint_saved(&self) {
        self.last_checkpoint
            .store(millis(Utc::now()), Ordering::Relaxed);
    }

    /// One command's round trip (`--command-stats`).
    pub fn command(&self, command: &'static str, collection: &'static str, took: Duration) {
        self.commands.add([command, collection], 1);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.command_micros.add([command, collection], micros);
    }

    pub fn flushed(&self, took: Duration) {
        self.flush_duration.observe(took);
    }

    /// A flush committed the writes of events written at `walls` (server
    /// wall times, ms): each one's latency from source write to output.
    pub fn written_after(&self, walls: &[i64]) {
        let now = millis(Utc::now());
        for &wall in walls {
            let ms = u64::try_from(now - wall).unwrap_or(0);
            self.write_latency.observe(Duration::from_millis(ms));
        }
    }

    /// Writes done after [`WriteMix::of`] planned them. With conflicts or
    /// errors the total is `stats.changed()`, spread over the kinds in order.
    pub fn written(&self, mix: &WriteMix, stats: &WriteStats) {
        let mut left = stats.changed();
        for (kind, planned) in Kind::ALL.iter().zip(mix.by_kind) {
            let n = planned.min(left);
            left -= n;
            if n > 0 {
                self.documents.add([kind.collection()], n);
            }
        }
        if stats.conflicts + stats.errors == 0 {
            self.restatements
                .fetch_add(mix.restatements, Ordering::Relaxed);
        }
    }

    /// Documents written where only the total is known (a backfill of the
    /// window, a finalization of one kind).
    pub fn written_to(&self, kind: Kind, n: u64) {
        if n > 0 {
            self.documents.add([kind.collection()], n);
        }
    }

    pub fn reject(&self, collection: &str, id: &SourceId, reason: RejectReason) {
        self.rejects.add([reason.as_str()], 1);
        let id = match id {
            SourceId::Oid(o) => o.to_hex(),
            SourceId::Other(b) => b.to_string(),
        };
        push_recent(
            &self.recent_rejects,
            RejectNote {
                at: Utc::now(),
                collection: collection_label(collection),
                id: id.chars().take(64).collect(),
                reason: reason.as_str(),
            },
        );
    }

    pub fn drift_applied(&self) {
        self.drift.fetch_add(1, Ordering::Relaxed);
    }

    /// A step failed: counted by cause. Until the stream drains again the
    /// service no longer knows it is caught up, so lag counts from the last
    /// event seen (it grows while the failure lasts instead of reading 0).
    pub fn write_failure(&self, cause: Failure) {
        self.write_failures.add([cause.as_str()], 1);
        self.caught_up.store(false, Ordering::Relaxed);
    }

    pub fn late_event(&self, kind: Kind) {
        self.late_events.add([kind.cli_name()], 1);
    }

    pub fn unreadable_event(&self) {
        self.unreadable_events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn recovery(&self, cause: Recovery) {
        self.recoveries.add([cause.as_str()], 1);
        push_recent(
            &self.recent_recoveries,
            RecoveryNote {
                at: Utc::now(),
                cause: cause.as_str(),
            },
        );
    }

    // --- the schedule -----------------------------------------------------

    /// Starts timing a finalization this instance claimed.
    pub fn finalization(&self, kind: Kind, period: NaiveDate) -> Finalization<'_> {
        Finalization {
            telemetry: self,
            kind: kind.cli_name(),
            period,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    /// Another instance holds or did the finalization.
    pub fn finalization_taken(&self, kind: Kind) {
        self.finalizations.add([kind.cli_name(), "taken"], 1);
    }

    fn finished(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.finalizations.add([kind, outcome], 1);
        if let Some((_, h)) = self.finalization_duration.iter().find(|(k, _)| *k == kind) {
            h.observe(took);
        }
    }

    /// The last period of `kind` finalized (by anyone) and when.
    pub fn schedule_last(&self, kind: Kind, period: NaiveDate, at: DateTime<Utc>) {
        self.schedule_row(kind, |row| {
            row.last_period = Some(period);
            row.last_at = Some(at);
        });
    }

    /// The next period of `kind` to finalize and when it is due.
    pub fn schedule_next(&self, kind: Kind, period: NaiveDate, due: DateTime<Utc>) {
        self.schedule_row(kind, |row| {
            row.next_period = Some(period);
            row.next_due = Some(due);
        });
    }

    fn schedule_row(&self, kind: Kind, f: impl FnOnce(&mut ScheduleRow)) {
        let mut schedule = lock(&self.schedule);
        if let Some((_, row)) = schedule.iter_mut().find(|(k, _)| *k == kind.cli_name()) {
            f(row);
        }
    }

    // --- reading ------------------------------------------------------------

    /// Seconds behind the server: now − wall time of the last event seen
    /// while events wait; 0 when caught up.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> f64 {
        if self.caught_up.load(Ordering::Relaxed) {
            return 0.0;
        }
        let wall = self.last_event_wall.load(Ordering::Relaxed);
        ((millis(now) - wall).max(0) as f64) / 1000.0
    }

    /// Seconds since the last checkpoint save; `None` before the first.
    pub fn checkpoint_age_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        match self.last_checkpoint.load(Ordering::Relaxed) {
            0 => None,
            t => Some(((millis(now) - t).max(0) as f64) / 1000.0),
        }
    }

    /// Seconds since the run loop's last turn; `None` before the first.
    pub fn since_last_turn(&self, now: DateTime<Utc>) -> Option<f64> {
        match self.last_turn.load(Ordering::SeqCst) {
            0 => None,
            t => Some(((millis(now) - t).max(0) as f64) / 1000.0),
        }
    }

    /// `Ok` when this instance can serve: connected, role known, lag at
    /// most `max_lag`; otherwise a short reason.
    pub fn readiness(&self, now: DateTime<Utc>, max_lag: Duration) -> Result<(), String> {
        if self.since_last_turn(now).is_none() {
            return Err("starting".to_owned());
        }
        if !self.connected.load(Ordering::SeqCst) {
            return Err("not connected to the server".to_owned());
        }
        if !self.role_known.load(Ordering::SeqCst) {
            return Err("leader/standby state not known yet".to_owned());
        }
        if self.is_leader() && !self.tailing.load(Ordering::SeqCst) {
            // Until then no change reaches the reports, and the lag, read
            // from events, says nothing.
            return Err("leading, starting: the stream is not open yet".to_owned());
        }
        let lag = self.lag_seconds(now);
        if lag > max_lag.as_secs_f64() {
            return Err(format!(
                "stream lag {lag:.1} s exceeds {} s",
                max_lag.as_secs_f64()
            ));
        }
        Ok(())
    }

    pub fn events_total(&self) -> u64 {
        self.events.sum()
    }

    /// Adds a sample to the events-per-second history.
    pub fn sample_rate(&self, now: DateTime<Utc>) {
        let total = self.events_total();
        let mut rate = lock(&self.rate);
        rate.push_back((millis(now), total));
        let oldest = millis(now) - RATE_WINDOW.as_millis() as i64;
        // Keep one sample at or before the window's start: its first rate.
        while rate.len() > 2 && rate[1].0 <= oldest {
            rate.pop_front();
        }
    }

    /// (end of interval in millis, events per second over it).
    pub fn rates(&self) -> Vec<(i64, f64)> {
        let rate = lock(&self.rate);
        rate.iter()
            .zip(rate.iter().skip(1))
            .map(|((t0, n0), (t1, n1))| {
                let secs = ((t1 - t0).max(1) as f64) / 1000.0;
                (*t1, n1.saturating_sub(*n0) as f64 / secs)
            })
            .collect()
    }
}

/// A copy of the schedule rows, in `Kind::ALL` order.
pub(crate) fn lock_schedule(t: &Telemetry) -> Vec<(&'static str, ScheduleRow)> {
    lock(&t.schedule).clone()
}

/// The recent rejects, oldest first.
pub(crate) fn recent_rejects(t: &Telemetry) -> Vec<RejectNote> {
    lock(&t.recent_rejects).iter().cloned().collect()
}

/// The recent recoveries, oldest first.
pub(crate) fn recent_recoveries(t: &Telemetry) -> Vec<RecoveryNote> {
    lock(&t.recent_recoveries).iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_one_series_per_label_set() {
        let t = Telemetry::new();
        t.change_event("transactions", &OperationType::Insert, None);
        t.change_event("transactions", &OperationType::Insert, None);
        t.change_event("something_else", &OperationType::Insert, None);
        let v = t.events.values();
        assert!(v.contains(&(["transactions", "insert"], 2)));
        assert!(v.contains(&(["other", "insert"], 1)));
        assert_eq!(t.events_total(), 3);
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_grows_while_events_wait() {
        let t = Telemetry::new();
        let now = Utc::now();
        t.change_event("pockets", &OperationType::Update, Some(millis(now) - 5_000));
        assert!((t.lag_seconds(now) - 5.0).abs() < 1e-9);
        t.caught_up();
        assert_eq!(t.lag_seconds(now), 0.0);
        t.write_failure(Failure::Unavailable);
        assert!(
            (t.lag_seconds(now) - 5.0).abs() < 1e-9,
            "a failure ends caught-up"
        );
    }

    #[test]
    fn readiness_needs_a_turn_a_connection_a_role_an_open_stream_and_little_lag() {
        let t = Telemetry::new();
        let now = Utc::now();
        let max = Duration::from_secs(30);
        assert_eq!(t.readiness(now, max), Err("starting".into()));
        t.turn(false);
        assert!(t.readiness(now, max).unwrap_err().contains("not connected"));
        t.turn(true);
        assert!(t.readiness(now, max).unwrap_err().contains("leader"));
        // A leader, twice: a new leader starts again.
        for standby_between in [true, false] {
            t.set_leader(true);
            assert!(t
                .readiness(now, max)
                .unwrap_err()
                .contains("stream is not open"));
            t.set_tailing();
            assert_eq!(t.readiness(now, max), Ok(()));
            if standby_between {
                t.set_leader(false);
                assert_eq!(t.readiness(now, max), Ok(()), "a standby is ready");
            }
        }
        t.change_event(
            "transactions",
            &OperationType::Insert,
            Some(millis(now) - 60_000),
        );
        assert!(t.readiness(now, max).unwrap_err().contains("lag"));
    }

    #[test]
    fn a_finalization_dropped_without_done_counts_as_failed() {
        let t = Telemetry::new();
        let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        t.finalization(Kind::Snapshot, day).done();
        drop(t.finalization(Kind::Monthly, day));
        let v = t.finalizations.values();
        assert!(v.contains(&(["snapshots", "done"], 1)));
        assert!(v.contains(&(["monthly", "failed"], 1)));
        let schedule = lock(&t.schedule);
        let row = &schedule.iter().find(|(k, _)| *k == "snapshots").unwrap().1;
        assert_eq!(row.last_period, Some(day));
    }

    #[test]
    fn the_rate_history_keeps_ten_minutes() {
        let t = Telemetry::new();
        let start = Utc::now();
        for i in 0..300 {
            for _ in 0..i % 3 {
                t.change_event("transactions", &OperationType::Insert, None);
            }
            t.sample_rate(start + chrono::Duration::seconds(5 * i));
        }
        let rates = t.rates();
        assert!(rates.len() <= 121, "{}", rates.len());
        assert!(rates.len() >= 119, "{}", rates.len());
        assert!(rates.iter().all(|(_, r)| *r <= 0.4 + 1e-9));
    }
}
