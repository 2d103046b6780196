//! Leadership and failures: who is active, how long it may fail, how it
//! stops. The active instance's work itself is [`super::tailer`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use mongodb::Database;
use tracing::{error, info, warn};

use super::backend::{Backend, Mongo};
use super::options::{Counters, RunOptions};
use super::tailer::Tailer;
use crate::mongo::bulk;
use crate::mongo::connect;
use crate::mongo::lease::{self, Fence, LostLease};
use crate::ops::telemetry::{Failure, Recovery, Telemetry};
use crate::Kind;

/// Runs until `shutdown` completes, then flushes, checkpoints and returns
/// (the counters of the last term as the active instance).
///
/// Several instances may run against one database: one is active, holding
/// the lease ([`lease`]); the others stand by and take over from the stored
/// checkpoint when it is released or expires. An instance that loses the
/// lease stops at once, drops its unflushed work (its writes would be
/// rejected anyway: they are fenced) and stands by again.
pub async fn run(
    db: Database,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Counters> {
    run_with(Mongo(db), opts, shutdown).await
}

/// [`run`] on any [`Backend`] (`tests/simulation.rs` runs several
/// instances against an in-memory server).
pub async fn run_with<B: Backend + Clone + 'static>(
    backend: B,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Counters> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::SeqCst);
    });
    let ttl = opts.lease_ttl;
    loop {
        opts.telemetry.set_leader(false);
        let heartbeat = Task::spawn(standby_heartbeat(backend.clone(), opts.telemetry.clone()));
        // A stop ends the wait at once, whatever call it is in.
        let acquired = tokio::select! {
            r = backend.acquire(&opts.owner, ttl, &stop) => r,
            () = raised(&stop) => Ok(None),
        };
        drop(heartbeat);
        let Some(fence) = acquired? else {
            return Ok(Counters::default());
        };
        lease::set_leader(true);
        opts.telemetry.set_leader(true);
        info!(owner = %fence.owner, token = fence.token, "Acquired leadership.");
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (b, fence, lost) = (backend.clone(), fence.clone(), lost.clone());
            Task::spawn(async move { b.keep(fence, ttl, lost).await })
        };
        // The work ends at once when the lease is lost (whatever await it is
        // in: its writes would be refused anyway), and at the latest
        // STOP_GRACE after a stop.
        let result = tokio::select! {
            r = lead(backend.clone(), opts.clone(), Some(fence.clone()), &stop) => r,
            () = raised(&lost) => Err(LostLease { token: fence.token }.into()),
            () = stopped_for(&stop, STOP_GRACE) => {
                warn!("Stopped without the last checkpoint: the last flush did not finish in time; the events since the stored checkpoint replay on the next start.");
                Ok(Counters::default())
            }
        };
        drop(keeper);
        lease::set_leader(false);
        opts.telemetry.set_leader(false);
        match result {
            Err(e) if lease::is_lost(&e) || lost.load(Ordering::SeqCst) => {
                warn!(
                    token = fence.token,
                    "Lost leadership: dropping unflushed work and standing by."
                );
            }
            other => {
                // Within the 10 s a stop may take, at most TEARDOWN after
                // STOP_GRACE: first the transaction a dropped step may have
                // left open (it holds the lease document), then the release.
                let teardown = async {
                    fence.abort_open().await;
                    backend.release(&fence).await
                };
                let released = tokio::time::timeout(TEARDOWN, teardown).await;
                match released {
                    Ok(Ok(_)) => info!(token = fence.token, "Released leadership."),
                    Ok(Err(e)) => {
                        warn!(error = %connect::redact_uri(&format!("{e:#}")), "Could not release the lease; it expires on its own.")
                    }
                    Err(_) => warn!("Could not release the lease in time; it expires on its own."),
                }
                return other;
            }
        }
    }
}

/// A task that ends with its handle: the lease keeper and the heartbeat
/// must not outlive the instance's loop, however that loop ends (a dropped
/// future included).
struct Task(tokio::task::JoinHandle<()>);

impl Task {
    fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Task {
        Task(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once `flag` is set.
async fn raised(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves `grace` after `stop` is set.
async fn stopped_for(stop: &AtomicBool, grace: Duration) {
    raised(stop).await;
    tokio::time::sleep(grace).await;
}

/// How long a stop waits for the active instance's last flush and
/// checkpoint before it leaves without them (a stop must fit in 10 s,
/// the lease release included: README).
const STOP_GRACE: Duration = Duration::from_secs(7);

/// The most a stop then spends aborting a transaction left open and
/// releasing the lease, together: STOP_GRACE + TEARDOWN stays under 10 s
/// on a slow server (separate bounds of 1 + 2 s for the abort and 2 s for
/// the release made 12 s: one CI run's instance exited after 10). A
/// release that does not fit leaves the lease to expire on its own.
const TEARDOWN: Duration = Duration::from_secs(2);

/// The longest one step of the active instance may take (a flush, a
/// finalization, a recovery); past it the step counts as failed.
const STEP_LIMIT: Duration = Duration::from_secs(300);

/// The active instance gave up: a failure persisted past `give_up_after`.
#[derive(Debug)]
pub struct GaveUp {
    pub seconds: u64,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gave up after failing for {} s (--give-up-after)",
            self.seconds
        )
    }
}

impl std::error::Error for GaveUp {}

/// The longest a start (or a start again after a failure) may take: it
/// reads the whole window (about a minute at 2,000 users on SecantusDB).
/// Below the 10 minutes after which `/healthz` reports a stalled loop.
const START_LIMIT: Duration = Duration::from_secs(540);

/// A step (or a start) that did not finish within its limit.
#[derive(Debug)]
struct StepTimedOut(Duration);

impl std::fmt::Display for StepTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no progress within {} s", self.0.as_secs())
    }
}

impl std::error::Error for StepTimedOut {}

impl From<StepTimedOut> for crate::Error {
    fn from(t: StepTimedOut) -> crate::Error {
        crate::Error::from_source(Kind::TimedOut, t)
    }
}

/// The active instance's failures in a row: each is counted and retried
/// after a growing pause; one that lasts `give_up_after` ends the service.
struct Failures {
    since: Option<Instant>,
    in_a_row: u32,
    give_up_after: Duration,
    telemetry: Arc<Telemetry>,
}

impl Failures {
    fn new(opts: &RunOptions) -> Failures {
        Failures {
            since: None,
            in_a_row: 0,
            give_up_after: opts.give_up_after,
            telemetry: opts.telemetry.clone(),
        }
    }

    fn cleared(&mut self) {
        self.since = None;
        self.in_a_row = 0;
    }

    /// Counts `e`; the pause before the next try, or [`GaveUp`].
    fn failed(&mut self, e: crate::error::Error, what: &str) -> Result<Duration> {
        let cause = failure_cause(&e);
        self.telemetry.write_failure(cause);
        let since = *self.since.get_or_insert_with(Instant::now);
        self.in_a_row += 1;
        let error = connect::redact_uri(&format!("{e:#}"));
        if since.elapsed() >= self.give_up_after {
            let seconds = self.give_up_after.as_secs();
            error!(%error, cause = cause.as_str(), failures = self.in_a_row, seconds, "Giving up: {what} kept failing; exiting so that a supervisor restarts tally.");
            return Err(e.context(GaveUp { seconds }));
        }
        let backoff = Duration::from_millis(100 * 2_u64.pow(self.in_a_row.min(7)))
            .min(Duration::from_secs(10));
        warn!(%error, cause = cause.as_str(), failures = self.in_a_row, backoff_ms = backoff.as_millis() as u64, "{what} failed; retrying.");
        Ok(backoff)
    }
}

fn failure_cause(e: &crate::Error) -> Failure {
    match e.kind() {
        Kind::TimedOut => Failure::Timeout,
        Kind::Transient => Failure::Unavailable,
        _ if e.find::<mongodb::error::Error>().is_some()
            || e.find::<bulk::WriteErrors>().is_some() =>
        {
            Failure::ServerError
        }
        _ => Failure::Other,
    }
}

/// While standing by: tells the health endpoints the process is alive and
/// whether the server answers (a standby is ready when it could take over).
async fn standby_heartbeat<B: Backend>(backend: B, telemetry: Arc<Telemetry>) {
    loop {
        let connected = backend.ping().await;
        telemetry.turn(connected);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The active instance's work, until `stop` (flush and checkpoint, then
/// `Ok`). A failed step is counted and retried: one the server's absence
/// explains keeps the work in memory and reopens the stream; any other
/// starts the work again from what the store holds (the checkpoint and the
/// stored documents: the same path as a restart after `kill -9`). Ends
/// with [`GaveUp`] once failures persist for `give_up_after`, and with
/// [`LostLease`] when a fenced write finds the lease gone.
async fn lead<B: Backend + Clone>(
    backend: B,
    opts: RunOptions,
    fence: Option<Fence>,
    stop: &Arc<AtomicBool>,
) -> Result<Counters> {
    let mut failures = Failures::new(&opts);
    // Set when the server went away: starting again is a recovery by
    // reconnecting (counted like a reopened stream).
    let mut after_outage = false;
    'term: loop {
        let started = Tailer::start(backend.clone(), opts.clone(), fence.clone(), stop.clone());
        let started = match tokio::time::timeout(START_LIMIT, started).await {
            Ok(r) => r,
            Err(_) => Err(StepTimedOut(START_LIMIT).into()),
        };
        let mut tailer = match started {
            Ok(t) => {
                if std::mem::take(&mut after_outage) {
                    opts.telemetry.recovery(Recovery::Reconnect);
                }
                t
            }
            Err(e) if lease::is_lost(&e) => return Err(e),
            Err(e) => {
                let away = e.kind() == Kind::Transient;
                after_outage |= away;
                // Alive, not ready, while failing.
                opts.telemetry.turn(false);
                if e.find::<StepTimedOut>().is_some() {
                    abort_open(&fence).await;
                }
                let backoff = failures.failed(e, "Starting")?;
                pause(backoff, stop).await;
                if stop.load(Ordering::SeqCst) {
                    return Ok(Counters::default());
                }
                continue 'term;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            tailer.opts.telemetry.turn(tailer.stream.is_some());
            let saves = tailer.saves;
            let step = match tokio::time::timeout(STEP_LIMIT, tailer.step()).await {
                Ok(r) => r,
                Err(_) => Err(StepTimedOut(STEP_LIMIT).into()),
            };
            let e = match step {
                Ok(()) => {
                    // Progress is a checkpoint stored with the stream open;
                    // a turn that only did not fail does not end a streak
                    // (a flush that keeps failing, a stream that cannot
                    // open, would never give up).
                    if tailer.stream.is_some() && tailer.saves > saves {
                        failures.cleared();
                    }
                    continue;
                }
                Err(e) if lease::is_lost(&e) => return Err(e),
                Err(e) => e,
            };
            let transient = e.kind() == Kind::Transient;
            if transient {
                tailer.counters.reconnects += 1;
                tailer.stream = None;
            }
            // Not ready while failing.
            tailer.opts.telemetry.turn(false);
            if e.find::<StepTimedOut>().is_some() {
                abort_open(&fence).await;
            }
            let backoff = failures.failed(e, "A step")?;
            pause(backoff, stop).await;
            if !transient {
                // State in memory may be half-updated: start again from
                // the store, exactly as after a crash — or, on a stop,
                // write nothing more (the events since the checkpoint
                // replay on the next start).
                if stop.load(Ordering::SeqCst) {
                    warn!("Stopped without the last flush after a failure; the events since the stored checkpoint replay on the next start.");
                    return Ok(tailer.counters);
                }
                continue 'term;
            }
        }
        return tailer.finish().await;
    }
}

/// Aborts the transaction a dropped step may have left open.
async fn abort_open(fence: &Option<Fence>) {
    if let Some(f) = fence {
        f.abort_open().await;
    }
}

/// Sleeps `d`, or less once `stop` is set.
pub(super) async fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        tokio::time::sleep(
            Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::calendar::Calendar;

    #[test]
    fn failures_back_off_and_give_up_only_once_they_persisted() {
        let mut opts = RunOptions::new(Calendar::from_name("UTC").unwrap());
        opts.give_up_after = Duration::from_millis(300);
        let telemetry = opts.telemetry.clone();
        let mut failures = Failures::new(&opts);
        let first = failures
            .failed(crate::Error::fatal("boom"), "A step")
            .unwrap();
        let second = failures
            .failed(crate::Error::fatal("boom"), "A step")
            .unwrap();
        assert!(second > first, "{second:?} > {first:?}");
        for _ in 0..20 {
            let _ = failures.failed(crate::Error::fatal("boom"), "A step");
        }
        assert_eq!(
            failures.failed(crate::Error::fatal("boom"), "A step").ok(),
            Some(Duration::from_secs(10)),
            "the pause is capped at 10 s"
        );
        // A success clears the streak: the give-up clock starts again.
        failures.cleared();
        std::thread::sleep(Duration::from_millis(350));
        assert!(failures
            .failed(crate::Error::fatal("boom"), "A step")
            .is_ok());
        std::thread::sleep(Duration::from_millis(350));
        let e = failures
            .failed(crate::Error::fatal("boom"), "A step")
            .expect_err("persisted past give_up_after");
        assert_eq!(e.to_string(), GaveUp { seconds: 0 }.to_string(), "{e:#}");
        let other = telemetry.write_failures.values();
        assert!(
            other.contains(&([Failure::Other.as_str()], 25)),
            "every failure is counted: {other:?}"
        );
    }

    #[test]
    fn failures_are_counted_by_cause() {
        let timed_out = crate::error::Error::from(lease::TimedOut("renewing the lease"));
        assert_eq!(failure_cause(&timed_out), Failure::Timeout);
        let step = crate::error::Error::from(StepTimedOut(STEP_LIMIT)).context("flushing");
        assert_eq!(failure_cause(&step), Failure::Timeout);
        assert_eq!(failure_cause(&crate::Error::fatal("a bug")), Failure::Other);
    }
}
